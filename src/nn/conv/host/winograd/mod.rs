//! Winograd's minimal filtering F(2×2, 3×3) (Lavin and Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016) for the CPU path's wide 3×3, stride-1 convolutions
//! (see [`applies`]: in VGG-16's 32×32 form, the six layers from 128→256 at 8×8 to
//! 512→512 at 4×4). Each 2×2 block of outputs ("tile") reads a 4×4 block of input; in the
//! transformed domain the convolution is an element-wise product per position of the 4×4
//! block, summed over channels: sixteen matrix products `[O, C] · [C, tiles]`, with 16
//! multiplications per tile and channel pair where the direct convolution has 36 (2.25×
//! fewer). The transforms:
//! - input `V = Bᵀ d B`, kernel `U = G g Gᵀ`, output `Y = Aᵀ (U ⊙ V) A` (forward);
//! - their adjoints give the exact gradient of that computation: `∂M = A ∂Y Aᵀ`,
//!   `∂V = Uᵀ ∂M` then `∂d = B ∂V Bᵀ` (scattered onto overlapping input blocks), and
//!   `∂U = ∂M Vᵀ` then `∂g = Gᵀ ∂U G`.
//!
//! F(2×2, 3×3)'s transforms hold only 0, ±1 and ±½, so its rounding error stays at the
//! direct convolution's order (larger tiles, F(4×4, 3×3), cut more multiplications but lose
//! digits in f32). The order of every sum is fixed by the shapes, so results are the same bits
//! on every run, CPU and thread count, like the rest of the path.
//!
//! Buffers in the transformed domain are `[16, rows, T]`: for each of the 16 positions, a
//! row-major matrix whose columns are the chunk's tiles (`T = samples · tiles`), ready to be a
//! product's operand. The transforms run channel by channel (or filter by filter) over the
//! pool, each step one element-wise pass over all `T` tiles: a VGG layer's maps are 4×4 or
//! 8×8, so a pass over one plane's tiles, or one tile at a time, spent more on loop overhead
//! than on arithmetic (measured on VGG's six layers: plane by plane took 1.5× as long,
//! tile by tile longer still; docs/performance.md).

use super::super::geom::ConvGeom;
use super::{
    activated, add_by_filter, add_channel_major, add_into, by_row, fresh_by_row, prefetch,
    relu_in_place, tap_major, Layer,
};
use crate::nn::gemm::blocked::Isa;
use crate::nn::gemm::{gemm_here, Mat};
use crate::nn::host::{grow_zeroed, zeros, Fresh, Piece};
use rayon::prelude::*;

pub(super) mod banded;
mod rows;

/// Positions of a transformed 4×4 block.
const POS: usize = 16;

/// How many multiply-adds each transformed value must feed for a convolution to take this
/// path. The sixteen products do `16·C·O` multiply-adds per tile, over `16·(C + O)` values
/// the transforms write or read, so the ratio is `C·O / (C + O)`. With fewer the products
/// are too thin to run at the kernel's speed and the transforms, which stream through
/// memory, cost more than the multiplications saved. Measured layer by layer on VGG-16
/// (`cargo bench --bench conv -- layers`): 64→128 (43) and 128→128 (64) ran slower than the
/// direct path, 128→256 (85) and wider ran faster.
const MIN_MACS_PER_VALUE: usize = 80;

/// Output rows and columns from which this path is taken. At 2×2 a sample is one tile whose
/// 4×4 block is mostly padding, and the transformed kernel (16/9 of the weight) is written
/// and read for a few columns only: VGG-16's 2×2 layers ran 10-20% slower on this path.
const MIN_OUTPUT_SIDE: usize = 3;

/// Floats of one transformed-domain buffer per chunk of samples: 16 MiB.
const CHUNK_BUDGET: usize = 1 << 22;

/// Whether the convolution `g` takes the whole-batch path: a 3×3 stride-1 layer with outputs
/// of 3×3 or more and `C·O/(C + O)` of at least [`MIN_MACS_PER_VALUE`]. The choice depends
/// on the layer's shape alone, not on the batch, so a sample's output does not depend on its
/// batch's size.
pub(super) fn applies(g: &ConvGeom) -> bool {
    fits(g, MIN_MACS_PER_VALUE)
}

/// A 3×3 stride-1 layer with outputs of at least [`MIN_OUTPUT_SIDE`] on each side whose
/// `C·O/(C + O)` is at least `min_macs`.
fn fits(g: &ConvGeom, min_macs: usize) -> bool {
    (g.kh, g.kw) == (3, 3)
        && g.stride == 1
        && g.c * g.o >= min_macs * (g.c + g.o)
        && g.ho >= MIN_OUTPUT_SIDE
        && g.wo >= MIN_OUTPUT_SIDE
}

/// Tile counts of one sample: rows, columns.
fn tiles(g: &ConvGeom) -> (usize, usize) {
    (g.ho.div_ceil(2), g.wo.div_ceil(2))
}

/// The tiles a transform covers: tile rows `rows` (of [`tiles`]' rows) of every sample, each
/// row `tw` tiles wide. The whole-batch path takes every row; the banded path ([`banded`])
/// bands of a few rows, so that a band's transformed data stays in a core's cache.
#[derive(Debug, Clone)]
struct Grid {
    rows: std::ops::Range<usize>,
    tw: usize,
}

impl Grid {
    fn whole(g: &ConvGeom) -> Grid {
        let (th, tw) = tiles(g);
        Grid { rows: 0..th, tw }
    }

    /// Tiles of one sample in the grid.
    fn tiles(&self) -> usize {
        self.rows.len() * self.tw
    }

    /// Rows and columns of the zero-bordered input the grid's tiles read: each tile's 4×4
    /// block starts two rows below the previous row's.
    fn padded(&self) -> (usize, usize) {
        (2 * self.rows.len() + 2, 2 * self.tw + 2)
    }

    /// The row of the zero-bordered input that holds input row `y`, if the grid reads it.
    fn padded_row(&self, g: &ConvGeom, y: usize) -> Option<usize> {
        let row = (y + g.pad).checked_sub(2 * self.rows.start)?;
        (row < self.padded().0).then_some(row)
    }

    /// Where each tile's four outputs sit in an output plane, output by output (`2·dy + dx`)
    /// and tile by tile; `usize::MAX` past the plane's edge (odd output sizes end in partial
    /// tiles).
    fn output_places(&self, g: &ConvGeom) -> Vec<usize> {
        let place = |i: usize, t: usize| {
            let oy = 2 * (self.rows.start + t / self.tw) + i / 2;
            let ox = 2 * (t % self.tw) + i % 2;
            if oy < g.ho && ox < g.wo {
                oy * g.wo + ox
            } else {
                usize::MAX
            }
        };
        (0..4)
            .flat_map(|i| (0..self.tiles()).map(move |t| place(i, t)))
            .collect()
    }
}

/// Where a transform's channels (or filters) run: over the pool, or one after another on the
/// calling thread (the banded path, whose tasks already take one thread each) with that
/// task's buffers for this transform, kept from band to band of one layer.
#[derive(Debug)]
enum Threads<'a> {
    Pool,
    Here(&'a mut Scratch),
}

/// Buffers a transform reuses from channel to channel (each task's own).
type Scratch = [Vec<f32>; 3];

/// `f(scratch, i, group)` for every group of `runs` (`groups` of them, see [`by_row`]),
/// over the pool or on this thread.
fn each(
    mut runs: Vec<&mut [f32]>,
    groups: usize,
    threads: Threads,
    f: impl Fn(&mut Scratch, usize, &mut [&mut [f32]]) + Sync + Send,
) {
    let per = runs.len() / groups;
    match threads {
        Threads::Pool => runs
            .par_chunks_mut(per)
            .enumerate()
            .for_each_init(Scratch::default, |s, (i, group)| f(s, i, group)),
        Threads::Here(s) => {
            for (i, group) in runs.chunks_mut(per).enumerate() {
                f(s, i, group);
            }
        }
    }
}

/// The plane a transform's task reads after plane `(j, c)` (sample, channel or filter) of a
/// chunk of `ns` samples: the channel's next sample, or the next channel's first. Its rows
/// are fetched ([`prefetch`]) while this plane's are transformed: a band's rows of a plane
/// are a few kilobytes, a plane's size apart, and the hardware's prefetcher lagged behind
/// (the input transform of VGG's 64→64 layer waited on them for a tenth of the layer).
fn next_plane(j: usize, c: usize, ns: usize, channels: usize) -> Option<(usize, usize)> {
    if j + 1 < ns {
        Some((j + 1, c))
    } else {
        (c + 1 < channels).then_some((0, c + 1))
    }
}

/// The first `len` floats of a reused buffer (grown with zeros when short).
fn at_least(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// Samples per chunk: the largest count whose transformed input and output fit the budget.
fn chunk(g: &ConvGeom) -> usize {
    let (th, tw) = tiles(g);
    (CHUNK_BUDGET / (POS * g.c.max(g.o) * th * tw)).clamp(1, g.n.max(1))
}

/// `U = G g Gᵀ` of every filter: `[16, O, C]` from the weight `[O, C, 3, 3]`. Filter by
/// filter, a channel's nine taps are first gathered tap-major (`[9, C]`), so that every step
/// below is one element-wise pass over the channels.
fn kernel_transform(ws: &[f32], g: &ConvGeom) -> Vec<f32> {
    fresh_by_row(
        POS * g.o,
        g.o,
        g.c,
        Scratch::default,
        |[taps, cols, _], o, rows| {
            let taps = at_least(taps, 9 * g.c);
            let mut dst: Vec<&mut [f32]> = taps.chunks_exact_mut(g.c).collect();
            tap_major(&ws[o * g.c * 9..][..g.c * 9], &mut dst);
            let tap = |i: usize| &taps[i * g.c..][..g.c];
            // G down the columns: column x's three taps give four rows.
            let cols = at_least(cols, 12 * g.c);
            for x in 0..3 {
                let dst = runs(&mut cols[4 * x * g.c..], g.c);
                map([tap(x), tap(3 + x), tap(6 + x)], dst, g_rows);
            }
            // Then along the rows: row r's three entries give positions 4r..4r+4.
            for r in 0..4 {
                let col = |x: usize| &cols[(4 * x + r) * g.c..][..g.c];
                map(
                    [col(0), col(1), col(2)],
                    pick(positions(rows), 4 * r, 1),
                    g_rows,
                );
            }
        },
    )
}

/// G's rows applied to three taps: `(a, (a + b + c)/2, (a − b + c)/2, c)`.
#[inline(always)]
fn g_rows([a, b, c]: [f32; 3]) -> [f32; 4] {
    [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c]
}

/// Gᵀ applied to four positions, G's adjoint: `(u0 + (u1 + u2)/2, (u1 − u2)/2, (u1 + u2)/2 + u3)`.
#[inline(always)]
fn g_adjoint([u0, u1, u2, u3]: [f32; 4]) -> [f32; 3] {
    let (s, d) = (0.5 * (u1 + u2), 0.5 * (u1 - u2));
    [u0 + s, d, s + u3]
}

/// Aᵀ's rows applied to four values: `(m0 + m1 + m2, m1 − m2 − m3)`.
#[inline(always)]
fn a_rows([m0, m1, m2, m3]: [f32; 4]) -> [f32; 2] {
    [m0 + m1 + m2, m1 - m2 - m3]
}

/// A applied to a pair, Aᵀ's adjoint: `(y0, y0 + y1, y0 − y1, −y1)`.
#[inline(always)]
fn a_adjoint([y0, y1]: [f32; 2]) -> [f32; 4] {
    [y0, y0 + y1, y0 - y1, -y1]
}

/// Bᵀ's rows applied to four values: `(d0 − d2, d1 + d2, d2 − d1, d1 − d3)`.
#[inline(always)]
fn b_rows([d0, d1, d2, d3]: [f32; 4]) -> [f32; 4] {
    [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
}

/// B applied to four values, Bᵀ's adjoint: `(v0, v1 − v2 + v3, v1 + v2 − v0, −v3)`.
#[inline(always)]
fn b_adjoint([v0, v1, v2, v3]: [f32; 4]) -> [f32; 4] {
    [v0, v1 - v2 + v3, v1 + v2 - v0, -v3]
}

/// One element-wise pass of a transform's 1-D step: `dst[k][t] = f(src[0][t], …)[k]` for
/// every `t` (runs of equal length; every transform below is made of such passes).
#[inline(always)]
fn map<const I: usize, const O: usize>(
    src: [&[f32]; I],
    dst: [&mut [f32]; O],
    f: impl Fn([f32; I]) -> [f32; O],
) {
    let n = dst[0].len();
    // Cut to one length, so that the loop runs without bounds checks and vectorises.
    let src = src.map(|s| &s[..n]);
    let mut dst = dst.map(|d| &mut d[..n]);
    for t in 0..n {
        let out = f(std::array::from_fn(|k| src[k][t]));
        for (d, v) in dst.iter_mut().zip(out) {
            d[t] = v;
        }
    }
}

/// `N` of `runs`, every `step`-th from `first`: a row (`4r`, step 1) or a column (`x`, step
/// 4) of a 4×4 block's 16 positions, or consecutive runs of a buffer.
fn pick<'a, const N: usize>(
    runs: impl Iterator<Item = &'a mut [f32]>,
    first: usize,
    step: usize,
) -> [&'a mut [f32]; N] {
    let mut runs = runs.skip(first).step_by(step);
    std::array::from_fn(|_| runs.next().expect("enough runs"))
}

/// `N` consecutive runs of `len` at the start of `buf`.
fn runs<const N: usize>(buf: &mut [f32], len: usize) -> [&mut [f32]; N] {
    pick(buf.chunks_exact_mut(len), 0, 1)
}

/// The runs of a channel's 16 positions (see [`by_row`]) as plain slices, for [`pick`].
fn positions<'a, 'b: 'a>(
    rows: &'a mut [&'b mut [f32]],
) -> impl Iterator<Item = &'a mut [f32]> + use<'a, 'b> {
    rows.iter_mut().map(|r| &mut **r)
}

/// `∂g += Gᵀ ∂U G` of every filter: the weight gradient `[O, C, 3, 3]` from `∂U [16, O, C]`.
fn kernel_adjoint(du: &[f32], g: &ConvGeom, gw: &mut Vec<f32>) {
    let oc = g.o * g.c;
    add_by_filter(
        gw,
        g.o,
        g.c * 9,
        Scratch::default,
        |[rows, taps, _], o, filters| {
            let at = |pos: usize| &du[pos * oc + o * g.c..][..g.c];
            // Gᵀ along the rows (positions 4r..4r+4 → three columns), then down the columns,
            // channel-wise; the taps come out tap-major.
            let rows = at_least(rows, 12 * g.c);
            for r in 0..4 {
                let src = [at(4 * r), at(4 * r + 1), at(4 * r + 2), at(4 * r + 3)];
                map(src, runs(&mut rows[3 * r * g.c..], g.c), g_adjoint);
            }
            let taps = at_least(taps, 9 * g.c);
            for x in 0..3 {
                let row = |r: usize| &rows[(3 * r + x) * g.c..][..g.c];
                let dst = pick(taps.chunks_exact_mut(g.c), x, 3);
                map([row(0), row(1), row(2), row(3)], dst, g_adjoint);
            }
            add_channel_major(std::array::from_fn(|t| &taps[t * g.c..][..g.c]), filters);
        },
    );
}

/// Where a plane row's even columns (0, 2, …) and its odd ones start in its padded row split
/// into the padded row's even columns, then its odd ones (`half` each): plane column `x` is
/// padded column `x + pad`.
fn split_runs(pad: usize, half: usize) -> [usize; 2] {
    [0, 1].map(|x0| (x0 + pad) % 2 * half + (x0 + pad) / 2)
}

/// A plane row `src` copied into its padded row `row`, split (see [`split_runs`]): a
/// deinterleaving the compiler turns into shuffles (a strided loop per parity copied a float
/// at a time, a tenth of a banded layer's time).
fn split_row(src: &[f32], row: &mut [f32], pad: usize, half: usize) {
    let [evens, odds] = split_runs(pad, half);
    let (ne, no) = (src.len().div_ceil(2), src.len() / 2);
    let (e, o) = if evens < odds {
        let (lo, hi) = row.split_at_mut(odds);
        (&mut lo[evens..][..ne], &mut hi[..no])
    } else {
        let (lo, hi) = row.split_at_mut(evens);
        (&mut hi[..ne], &mut lo[odds..][..no])
    };
    let pairs = src.chunks_exact(2);
    if let [last] = pairs.remainder() {
        e[no] = *last;
    }
    for ((e, o), pair) in e.iter_mut().zip(o.iter_mut()).zip(pairs) {
        *e = pair[0];
        *o = pair[1];
    }
}

/// `dst += ` a split padded row's interior, [`split_row`]'s adjoint.
fn add_split_row(row: &[f32], dst: &mut [f32], pad: usize, half: usize) {
    let [evens, odds] = split_runs(pad, half);
    let (ne, no) = (dst.len().div_ceil(2), dst.len() / 2);
    let (e, o) = (&row[evens..][..ne], &row[odds..][..no]);
    let mut pairs = dst.chunks_exact_mut(2);
    for ((pair, e), o) in pairs.by_ref().zip(e).zip(o) {
        pair[0] += e;
        pair[1] += o;
    }
    if let [last] = pairs.into_remainder() {
        *last += e[no];
    }
}

/// Runs of a buffer, one every `stride` floats from its start.
struct Runs<B> {
    buf: B,
    stride: usize,
}

impl<B> Runs<B> {
    fn new(buf: B, stride: usize) -> Self {
        Runs { buf, stride }
    }
}

/// `f(d, s)` for each element of the first `count` runs of `w` floats of `dst` and of
/// `src`, pair by pair. A tile row's runs are a few floats (`w` is 2 on a 4×4 map, 4 on an
/// 8×8 one), where a loop with a remainder, or a libc call per copy, costs more than the
/// work: the common widths get a body of fixed size, a few vector instructions per run.
#[inline(always)]
fn zip_runs(
    dst: Runs<&mut [f32]>,
    src: Runs<&[f32]>,
    count: usize,
    w: usize,
    f: impl Fn(&mut f32, f32),
) {
    match w {
        2 => zip_fixed::<2>(dst, src, count, f),
        4 => zip_fixed::<4>(dst, src, count, f),
        _ => {
            for i in 0..count {
                let d = &mut dst.buf[i * dst.stride..][..w];
                d.iter_mut()
                    .zip(&src.buf[i * src.stride..][..w])
                    .for_each(|(d, &v)| f(d, v));
            }
        }
    }
}

#[inline(always)]
fn zip_fixed<const W: usize>(
    dst: Runs<&mut [f32]>,
    src: Runs<&[f32]>,
    count: usize,
    f: impl Fn(&mut f32, f32),
) {
    for i in 0..count {
        let d: &mut [f32; W] = (&mut dst.buf[i * dst.stride..][..W]).try_into().expect("W");
        let s: &[f32; W] = src.buf[i * src.stride..][..W].try_into().expect("W");
        d.iter_mut().zip(s).for_each(|(d, &v)| f(d, v));
    }
}

/// `V = Bᵀ d B` of every tile of the `ns` samples in `xs` (`[ns, C, H, W]`), written over
/// `v` as `[16, C, ns·tiles]`. Channel by channel: each plane is copied into a zero-bordered
/// buffer (padding reads as zero) whose rows hold their even columns, then their odd ones,
/// so that each of a tile row's 16 entries is one run of `tw` floats (tiles start every
/// second column); those runs are gathered into 16 runs over the chunk's tiles, and the
/// transform is element-wise over those runs. Where [`rows`] has kernels for the grid, they
/// transform the buffer's tile rows a few at a time in registers instead (the same bits).
fn input_transform(
    xs: &[f32],
    g: &ConvGeom,
    ns: usize,
    grid: &Grid,
    threads: Threads,
    v: &mut Vec<f32>,
) {
    let (hw, tiles, tw) = (g.h * g.w, grid.tiles(), grid.tw);
    let t_len = ns * tiles;
    let (hp, wp) = grid.padded();
    let half = wp / 2;
    grow_zeroed(v, POS * g.c * t_len);
    let in_rows = rows::choose(tw, grid.rows.len(), ns);
    let (q, plane, bases) = tile_rows(grid, in_rows);
    // Rows of the zero-bordered planes that no input row fills: zeroed for each channel, as
    // a task's buffer may come from another band of the layer, whose planes filled them.
    // The border columns are never written (this buffer serves the input transforms of one
    // layer only, see `Threads`), so they stay zero from plane to plane.
    let (ys, py0) = rows_in(g, grid);
    let filled = py0..py0 + ys.len();
    let border: Vec<usize> = (0..hp).filter(|py| !filled.contains(py)).collect();
    let [evens, odds] = split_runs(g.pad, half);
    let split = rows::for_planes(tw).filter(|_| g.w == 2 * tw);
    let held = ys.start * g.w..ys.end * g.w;
    each(
        by_row(v, g.c, t_len),
        g.c,
        threads,
        |[pad, d, e], c, rows| {
            let pad = at_least(pad, q * plane);
            for pad in pad.chunks_exact_mut(plane) {
                for &py in &border {
                    pad[py * wp..][..wp].fill(0.0);
                }
            }
            let d = at_least(d, POS * t_len);
            let rows_of = |j: usize, c: usize| &xs[(j * g.c + c) * hw..][..hw][held.clone()];
            for j0 in (0..ns).step_by(q) {
                for (k, pad) in pad.chunks_exact_mut(plane).enumerate() {
                    let j = j0 + k;
                    if let Some((j, c)) = next_plane(j, c, ns, g.c) {
                        prefetch(rows_of(j, c));
                    }
                    let (src, dst) = (rows_of(j, c), &mut pad[py0 * wp..]);
                    match split {
                        Some(isa) => rows::split(isa, tw, src, dst, wp, evens, odds),
                        None => {
                            for (src, row) in src.chunks_exact(g.w).zip(dst.chunks_mut(wp)) {
                                split_row(src, row, g.pad, half);
                            }
                        }
                    }
                }
                if let Some((isa, _)) = in_rows {
                    let layout = rows::Split { wp, half };
                    rows::input(isa, tw, &bases, pad, layout, rows, j0 * tiles);
                    continue;
                }
                for i in 0..POS {
                    let (r, s) = (i / 4, i % 4);
                    let dst = Runs::new(&mut d[i * t_len + j0 * tiles..], tw);
                    let src = Runs::new(&pad[r * wp + s % 2 * half + s / 2..], 2 * wp);
                    zip_runs(dst, src, grid.rows.len(), tw, |d, v| *d = v);
                }
            }
            if in_rows.is_some() {
                return;
            }
            // Bᵀ down the columns: column x of the blocks gives e[x], e[4 + x], ...
            let e = at_least(e, POS * t_len);
            for x in 0..4 {
                let col = |r: usize| &d[(4 * r + x) * t_len..][..t_len];
                let dst = pick(e.chunks_exact_mut(t_len), x, 4);
                map([col(0), col(1), col(2), col(3)], dst, b_rows);
            }
            // Then B along the rows: row r of e gives positions 4r..4r+4.
            for r in 0..4 {
                let row = |s: usize| &e[(4 * r + s) * t_len..][..t_len];
                let dst = pick(positions(rows), 4 * r, 1);
                map([row(0), row(1), row(2), row(3)], dst, b_rows);
            }
        },
    );
}

/// `y = Aᵀ M A + bias` of every tile (then ReLU where `relu` says): the chunk's output
/// `[ns, O, Ho, Wo]` from `M [16, O, ns·tiles]`. Filter by filter, over all the chunk's tiles
/// at once (each step one element-wise pass over `ns·tiles` values), then each tile's 2×2
/// outputs to their places; or, where [`rows`] has kernels for the grid, a few tile rows at a
/// time in registers.
fn output_transform(
    m: &[f32],
    g: &ConvGeom,
    grid: &Grid,
    threads: Threads,
    bs: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    let (p, tiles) = (g.p(), grid.tiles());
    let t_len = out.len() / (g.o * p) * tiles;
    let in_rows = in_rows(g, grid, t_len / tiles);
    // Only the general transform places outputs one by one.
    let places = match in_rows {
        Some(_) => Vec::new(),
        None => grid.output_places(g),
    };
    each(by_row(out, g.o, p), g.o, threads, |[q, y, _], o, planes| {
        let at = |pos: usize| &m[(pos * g.o + o) * t_len..][..t_len];
        if let Some((isa, q)) = in_rows {
            let ms: [&[f32]; POS] = std::array::from_fn(at);
            let (n, first, tw) = (grid.rows.len(), 2 * grid.rows.start * g.wo, grid.tw);
            // Each tile row's two output rows, in every plane.
            let mut out: Vec<&mut [f32]> = planes
                .iter_mut()
                .flat_map(|p| p[first..].chunks_exact_mut(4 * tw).take(n))
                .collect();
            for (k, out) in out.chunks_mut(q * n).enumerate() {
                rows::output(isa, tw, &ms, k * q * tiles, bs[o], out);
                if relu {
                    out.iter_mut().for_each(|row| relu_in_place(row));
                }
            }
            return;
        }
        // Aᵀ down the columns: column s gives rows q[s] (top) and q[4 + s] (bottom).
        let q = at_least(q, 8 * t_len);
        for s in 0..4 {
            let dst = runs(&mut q[2 * s * t_len..], t_len);
            map([at(s), at(4 + s), at(8 + s), at(12 + s)], dst, a_rows);
        }
        // Then along the rows: y[2·dy + dx] for the tile's output (dy, dx).
        let y = at_least(y, 4 * t_len);
        for dy in 0..2 {
            let col = |s: usize| &q[(2 * s + dy) * t_len..][..t_len];
            let dst = runs(&mut y[2 * dy * t_len..], t_len);
            map([col(0), col(1), col(2), col(3)], dst, a_rows);
        }
        let b = bs[o];
        for (j, plane) in planes.iter_mut().enumerate() {
            for (i, at) in places.chunks_exact(tiles).enumerate() {
                let ys = &y[i * t_len + j * tiles..][..tiles];
                for (&k, v) in at.iter().zip(ys) {
                    if let Some(d) = plane.get_mut(k) {
                        *d = activated(v + b, relu);
                    }
                }
            }
        }
    });
}

/// `∂M = A ∂Y Aᵀ` of every tile, written over `dm` as `[16, O, ns·tiles]`, from the chunk's
/// output gradient `[ns, O, Ho, Wo]` (zero beyond the output's edge). Filter by filter: each
/// tile's 2×2 gradients gathered into four runs over the chunk's tiles, then element-wise;
/// or, where [`rows`] has kernels for the grid, a few tile rows at a time in registers.
fn output_adjoint(
    gout: &[f32],
    g: &ConvGeom,
    ns: usize,
    grid: &Grid,
    threads: Threads,
    dm: &mut Vec<f32>,
) {
    let (p, tiles) = (g.p(), grid.tiles());
    let t_len = ns * tiles;
    grow_zeroed(dm, POS * g.o * t_len);
    let in_rows = in_rows(g, grid, ns);
    // Only the general transform gathers gradients one by one.
    let at = match in_rows {
        Some(_) => Vec::new(),
        None => grid.output_places(g),
    };
    each(
        by_row(dm, g.o, t_len),
        g.o,
        threads,
        |[dys, q, _], o, rows| {
            if let Some((isa, q)) = in_rows {
                let held = 2 * grid.rows.start * g.wo..2 * grid.rows.end * g.wo;
                let rows_of = |j: usize, o: usize| &gout[(j * g.o + o) * p..][..p][held.clone()];
                // Each tile row's two rows of gradients, in every plane.
                let gouts: Vec<&[f32]> = (0..ns)
                    .flat_map(|j| rows_of(j, o).chunks_exact(4 * grid.tw))
                    .collect();
                let per = gouts.len() / ns * q;
                for (k, gout) in gouts.chunks(per).enumerate() {
                    if let Some((j, o)) = next_plane(k * q + q - 1, o, ns, g.o) {
                        prefetch(rows_of(j, o));
                    }
                    rows::output_adjoint(isa, grid.tw, gout, rows, k * q * tiles);
                }
                return;
            }
            // dy[2·dy + dx] over the tiles (zero past the edge).
            let dys = at_least(dys, 4 * t_len);
            for j in 0..ns {
                let plane = &gout[(j * g.o + o) * p..][..p];
                for (i, at) in at.chunks_exact(tiles).enumerate() {
                    let dst = &mut dys[i * t_len + j * tiles..][..tiles];
                    for (d, &k) in dst.iter_mut().zip(at) {
                        *d = plane.get(k).copied().unwrap_or(0.0);
                    }
                }
            }
            // A along the rows: the top pair gives q[0..4], the bottom pair q[4..8].
            let q = at_least(q, 8 * t_len);
            for dy in 0..2 {
                let pair = |i: usize| &dys[(2 * dy + i) * t_len..][..t_len];
                map(
                    [pair(0), pair(1)],
                    runs(&mut q[4 * dy * t_len..], t_len),
                    a_adjoint,
                );
            }
            // Then down the columns: column s's pair gives positions s, 4 + s, 8 + s, 12 + s.
            for s in 0..4 {
                let (top, bottom) = (&q[s * t_len..][..t_len], &q[(4 + s) * t_len..][..t_len]);
                map([top, bottom], pick(positions(rows), s, 4), a_adjoint);
            }
        },
    );
}

/// `∂d += B ∂V Bᵀ` of every tile, added onto the chunk's input gradient `gx`
/// (`[ns, C, H, W]`) from `∂V [16, C, ns·tiles]`. Channel by channel: the blocks of all the
/// chunk's tiles element-wise, then each sample's plane sums its tiles' overlapping blocks in
/// a padded buffer, tile by tile in order, and adds the buffer's interior. Where [`rows`] has
/// kernels for the grid, they compute and sum the blocks a few tile rows at a time in
/// registers, in the same order.
fn input_adjoint(dv: &[f32], g: &ConvGeom, grid: &Grid, threads: Threads, gx: &mut [f32]) {
    let (hw, tiles, tw) = (g.h * g.w, grid.tiles(), grid.tw);
    let t_len = gx.len() / (g.c * hw) * tiles;
    let wp = grid.padded().1;
    let in_rows = rows::choose(tw, grid.rows.len(), t_len / tiles);
    let (q, plane, bases) = tile_rows(grid, in_rows);
    each(
        by_row(gx, g.c, hw),
        g.c,
        threads,
        |[e, d, acc], c, planes| {
            let at = |pos: usize| &dv[(pos * g.c + c) * t_len..][..t_len];
            let acc = at_least(acc, q * plane);
            let half = wp / 2;
            if let Some((isa, q)) = in_rows {
                let dvs: [&[f32]; POS] = std::array::from_fn(at);
                let layout = rows::Split { wp, half };
                for (k, planes) in planes.chunks_mut(q).enumerate() {
                    acc.fill(0.0);
                    rows::input_adjoint(isa, tw, &bases, &dvs, k * q * tiles, acc, layout);
                    for (acc, plane) in acc.chunks_exact(plane).zip(planes) {
                        add_interior(acc, g, grid, plane);
                    }
                }
                return;
            }
            // Along the rows: row r of ∂V gives e[4r..4r+4].
            let e = at_least(e, POS * t_len);
            for r in 0..4 {
                let src = [at(4 * r), at(4 * r + 1), at(4 * r + 2), at(4 * r + 3)];
                map(src, runs(&mut e[4 * r * t_len..], t_len), b_adjoint);
            }
            // Down the columns: column x of e gives d[x], d[4 + x], d[8 + x], d[12 + x].
            let d = at_least(d, POS * t_len);
            for x in 0..4 {
                let col = |r: usize| &e[(4 * r + x) * t_len..][..t_len];
                let dst = pick(d.chunks_exact_mut(t_len), x, 4);
                map([col(0), col(1), col(2), col(3)], dst, b_adjoint);
            }
            // The blocks summed into a zero-bordered buffer whose rows hold their even columns,
            // then their odd ones (as the input transform's), so that one entry of a tile row's
            // blocks is one run of `tw` floats. Every element takes its tiles' terms in tile
            // order: within a tile row, a column's term from the tile to its left (entries 2
            // and 3 of a block's row) comes before the one from the tile it starts (0 and 1).
            for (j, plane) in planes.iter_mut().enumerate() {
                acc.fill(0.0);
                // Rows 2 and 3 of every tile row's blocks before rows 0 and 1, which overlap
                // them (the tile row above's 2 and 3 come first), and in each row the entries
                // from the tile to the left before the tile's own: the order above, element by
                // element, in passes of whole tile columns.
                for (r, s) in [2, 3, 0, 1]
                    .into_iter()
                    .flat_map(|r| [2, 3, 0, 1].map(|s| (r, s)))
                {
                    let src = Runs::new(&d[(4 * r + s) * t_len + j * tiles..], tw);
                    let dst = Runs::new(&mut acc[r * wp + s % 2 * half + s / 2..], 2 * wp);
                    zip_runs(dst, src, grid.rows.len(), tw, |d, v| *d += v);
                }
                add_interior(acc, g, grid, plane);
            }
        },
    );
}

/// `plane += ` the interior of `acc`, a zero-bordered plane whose rows hold their even
/// columns, then their odd ones (the input adjoint's sums over overlapping blocks).
fn add_interior(acc: &[f32], g: &ConvGeom, grid: &Grid, plane: &mut [f32]) {
    let wp = grid.padded().1;
    let half = wp / 2;
    if let Some(isa) = rows::for_planes(grid.tw).filter(|_| g.w == 2 * grid.tw) {
        let ([evens, odds], (ys, py)) = (split_runs(g.pad, half), rows_in(g, grid));
        let (src, dst) = (&acc[py * wp..], &mut plane[ys.start * g.w..ys.end * g.w]);
        rows::add_split(isa, grid.tw, src, wp, evens, odds, dst);
        return;
    }
    for (y, dst) in plane.chunks_exact_mut(g.w).enumerate() {
        if let Some(py) = grid.padded_row(g, y) {
            add_split_row(&acc[py * wp..][..wp], dst, g.pad, half);
        }
    }
}

/// The zero-bordered planes a call of [`rows`]' kernels takes (`choice`'s count, or one for
/// the general transforms), each in its own part of the buffer: their count, the floats of
/// one, and where each of their tile rows starts (the kernels' `bases`: plane by plane,
/// every second padded row).
fn tile_rows(grid: &Grid, choice: Option<(Isa, usize)>) -> (usize, usize, Vec<usize>) {
    let (hp, wp) = grid.padded();
    let (q, per, plane) = (choice.map_or(1, |(_, q)| q), grid.rows.len(), hp * wp);
    let bases = (0..q * per)
        .map(|k| k / per * plane + 2 * (k % per) * wp)
        .collect();
    (q, plane, bases)
}

/// The input rows a grid's zero-bordered planes hold, and the padded row of the first.
fn rows_in(g: &ConvGeom, grid: &Grid) -> (std::ops::Range<usize>, usize) {
    let mut ys = (0..g.h).filter_map(|y| Some((y, grid.padded_row(g, y)?)));
    let Some((first, py)) = ys.next() else {
        return (0..0, 0);
    };
    let last = ys.next_back().map_or(first, |(y, _)| y);
    (first..last + 1, py)
}

/// [`rows`]' choice for a grid of `ns` planes' tiles, where its tiles are whole (the output
/// kernels write and read both rows and both columns of every tile); `None` where the
/// general transforms run.
fn in_rows(g: &ConvGeom, grid: &Grid, ns: usize) -> Option<(Isa, usize)> {
    rows::choose(grid.tw, grid.rows.len(), ns)
        .filter(|_| g.wo == 2 * grid.tw && 2 * grid.rows.end <= g.ho)
}

/// Where a product goes: a fresh piece, which it writes, or an earlier chunk's sum, which it
/// adds to.
enum Dst<'a> {
    Fresh(Piece<'a>),
    Add(&'a mut [f32]),
}

impl<'a> Dst<'a> {
    /// The floats, and whether the product adds to them.
    fn open(self) -> (&'a mut [f32], bool) {
        match self {
            Dst::Fresh(piece) => (piece.zeroed(), false),
            Dst::Add(sum) => (sum, true),
        }
    }
}

/// What the forward pass keeps for the backward pass: the transformed kernel `U` (the weight
/// is the same then) and, where the whole batch is one chunk, its transformed input `V`,
/// which the backward pass would otherwise compute again (a tenth of a wide layer's time;
/// a batch of several chunks recomputes it rather than hold all of them).
pub(super) struct Saved {
    u: Vec<f32>,
    v: Option<Vec<f32>>,
}

/// The forward pass: `[N, O, Ho, Wo]` from `xs [N, C, H, W]`, the weight and the bias (then
/// ReLU where `relu` says), and what the backward pass reads.
pub(super) fn forward(layer: Layer) -> (Vec<f32>, Saved) {
    let (xs, ws, bs, g, relu) = layer.parts();
    let (th, tw) = tiles(g);
    let (chw, op) = (g.c * g.h * g.w, g.o * g.p());
    let u = kernel_transform(ws, g);
    let whole = Grid::whole(g);
    let mut v = Vec::new();
    let mut out = zeros(g.n * op);
    let ns = chunk(g);
    for (out, xs) in out.chunks_mut(ns * op).zip(xs.chunks(ns * chw)) {
        let ns = xs.len() / chw;
        let t_len = ns * th * tw;
        input_transform(xs, g, ns, &whole, Threads::Pool, &mut v);
        let mut m = Fresh::new(POS * g.o * t_len);
        // The sixteen products side by side, each on one thread (the same bits as one
        // product over the pool): one wake of the pool where there were sixteen, and no
        // operand packed once per thread.
        m.pieces(g.o * t_len)
            .into_par_iter()
            .enumerate()
            .for_each(|(pos, m)| {
                let a = Mat::new(&u[pos * g.o * g.c..][..g.o * g.c], g.o, g.c);
                let b = Mat::new(&v[pos * g.c * t_len..][..g.c * t_len], g.c, t_len);
                gemm_here(a, b, m.zeroed(), false);
            });
        output_transform(&m.into_vec(), g, &whole, Threads::Pool, bs, relu, out);
    }
    let v = (ns >= g.n).then_some(v);
    (out, Saved { u, v })
}

/// The backward pass from the output gradient `gout`, with what the forward pass kept: adds
/// the weight gradient onto `gw` and, when given, the input gradient onto `gx`. The bias
/// gradient is the caller's.
pub(super) fn backward(
    xs: &[f32],
    saved: &Saved,
    gout: &[f32],
    g: &ConvGeom,
    gw: &mut Vec<f32>,
    mut gx: Option<&mut [f32]>,
) {
    let (th, tw) = tiles(g);
    let (chw, op) = (g.c * g.h * g.w, g.o * g.p());
    let (oc, ns) = (g.o * g.c, chunk(g));
    let mut du = Vec::new();
    let u = &saved.u;
    let whole = Grid::whole(g);
    let (mut v_here, mut dm) = (Vec::new(), Vec::new());
    for (ci, (xs, gout)) in xs.chunks(ns * chw).zip(gout.chunks(ns * op)).enumerate() {
        let ns_here = xs.len() / chw;
        let t_len = ns_here * th * tw;
        let v = match &saved.v {
            Some(v) => v,
            None => {
                input_transform(xs, g, ns_here, &whole, Threads::Pool, &mut v_here);
                &v_here
            }
        };
        output_adjoint(gout, g, ns_here, &whole, Threads::Pool, &mut dm);
        // The first chunk's products start ∂U; later chunks' add to it.
        let mut du_first = (ci == 0).then(|| Fresh::new(POS * oc));
        let dus: Vec<Dst> = match &mut du_first {
            Some(du) => du.pieces(oc).into_iter().map(Dst::Fresh).collect(),
            None => du.chunks_mut(oc).map(Dst::Add).collect(),
        };
        let mut dv = gx.is_some().then(|| Fresh::new(POS * g.c * t_len));
        let dvs: Vec<Option<Piece>> = match &mut dv {
            Some(dv) => dv.pieces(g.c * t_len).into_iter().map(Some).collect(),
            None => (0..POS).map(|_| None).collect(),
        };
        // Each position's two products on one thread, as in the forward pass.
        dus.into_par_iter()
            .zip(dvs)
            .enumerate()
            .for_each(|(pos, (du, dv))| {
                let dmp = Mat::new(&dm[pos * g.o * t_len..][..g.o * t_len], g.o, t_len);
                let vp = Mat::new(&v[pos * g.c * t_len..][..g.c * t_len], g.c, t_len);
                // Chunk by chunk, in order: a fixed sum.
                let (du, add) = du.open();
                gemm_here(dmp, vp.t(), du, add);
                if let Some(dv) = dv {
                    let up = Mat::new(&u[pos * oc..][..oc], g.o, g.c);
                    gemm_here(up.t(), dmp, dv.zeroed(), false);
                }
            });
        if let Some(first) = du_first {
            du = first.into_vec();
        }
        let (Some(gx), Some(dv)) = (gx.as_deref_mut(), dv) else {
            continue;
        };
        input_adjoint(
            &dv.into_vec(),
            g,
            &whole,
            Threads::Pool,
            &mut gx[ci * ns * chw..][..ns_here * chw],
        );
    }
    kernel_adjoint(&du, g, gw);
}
