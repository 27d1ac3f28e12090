//! Winograd's minimal filtering F(2×2, 3×3) (Lavin and Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016) for the CPU path's wide 3×3, stride-1 convolutions
//! (see [`applies_to`]: in VGG-16's 32×32 form, the six layers from 128→256 at 8×8 to
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
use super::add_into;
use crate::nn::gemm::{gemm, Mat};
use rayon::prelude::*;

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

/// Whether the convolution `g` takes this path (see [`applies_to`]).
pub(super) fn applies(g: &ConvGeom) -> bool {
    applies_to(g.c, g.o, (g.kh, g.kw), g.stride, (g.ho, g.wo))
}

/// Whether a convolution of `c` to `o` channels with this kernel and stride, giving outputs of
/// `out` rows and columns, takes this path. The choice depends on the layer's shape alone,
/// not on the batch, so a sample's output does not depend on its batch's size.
pub(crate) fn applies_to(
    c: usize,
    o: usize,
    kernel: (usize, usize),
    stride: usize,
    out: (usize, usize),
) -> bool {
    kernel == (3, 3)
        && stride == 1
        && c * o >= MIN_MACS_PER_VALUE * (c + o)
        && out.0 >= MIN_OUTPUT_SIDE
        && out.1 >= MIN_OUTPUT_SIDE
}

/// Tile counts of one sample: rows, columns.
fn tiles(g: &ConvGeom) -> (usize, usize) {
    (g.ho.div_ceil(2), g.wo.div_ceil(2))
}

/// Samples per chunk: the largest count whose transformed input and output fit the budget.
fn chunk(g: &ConvGeom) -> usize {
    let (th, tw) = tiles(g);
    (CHUNK_BUDGET / (POS * g.c.max(g.o) * th * tw)).clamp(1, g.n.max(1))
}

/// A `[16, rows, len]` buffer as `rows` groups of its 16 rows of length `len` (one per
/// position), so that one task can write everything of one channel.
fn by_row(buf: &mut [f32], rows: usize, len: usize) -> Vec<Vec<&mut [f32]>> {
    let mut out: Vec<Vec<&mut [f32]>> = (0..rows).map(|_| Vec::with_capacity(POS)).collect();
    for pos in buf.chunks_mut(rows * len) {
        for (r, row) in pos.chunks_mut(len).enumerate() {
            out[r].push(row);
        }
    }
    out
}

/// `U = G g Gᵀ` of every filter: `[16, O, C]` from the weight `[O, C, 3, 3]`. Filter by
/// filter, a channel's nine taps are first gathered tap-major (`[9, C]`), so that every step
/// below is one element-wise pass over the channels.
fn kernel_transform(ws: &[f32], g: &ConvGeom) -> Vec<f32> {
    let mut u = vec![0.0; POS * g.o * g.c];
    by_row(&mut u, g.o, g.c)
        .into_par_iter()
        .enumerate()
        .for_each(|(o, mut rows)| {
            let taps = tap_major(&ws[o * g.c * 9..][..g.c * 9], g.c);
            let tap = |i: usize| &taps[i * g.c..][..g.c];
            // G down the columns: column x's three taps give four rows.
            let mut cols = vec![0.0f32; 12 * g.c];
            for x in 0..3 {
                let (k0, k1, k2) = (tap(x), tap(3 + x), tap(6 + x));
                let [c0, c1, c2, c3] = four(&mut cols[4 * x * g.c..][..4 * g.c], g.c);
                for i in 0..g.c {
                    [c0[i], c1[i], c2[i], c3[i]] = g_rows(k0[i], k1[i], k2[i]);
                }
            }
            // Then along the rows: row r's three entries give positions 4r..4r+4.
            for r in 0..4 {
                let col = |x: usize| &cols[(4 * x + r) * g.c..][..g.c];
                let (k0, k1, k2) = (col(0), col(1), col(2));
                let [u0, u1, u2, u3] = &mut rows[4 * r..4 * r + 4] else {
                    unreachable!("four positions per row");
                };
                for i in 0..g.c {
                    [u0[i], u1[i], u2[i], u3[i]] = g_rows(k0[i], k1[i], k2[i]);
                }
            }
        });
    u
}

/// G's rows applied to three taps: `(a, (a + b + c)/2, (a − b + c)/2, c)`.
#[inline(always)]
fn g_rows(a: f32, b: f32, c: f32) -> [f32; 4] {
    [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c]
}

/// Gᵀ applied to four positions, G's adjoint: `(u0 + (u1 + u2)/2, (u1 − u2)/2, (u1 + u2)/2 + u3)`.
#[inline(always)]
fn g_adjoint(u0: f32, u1: f32, u2: f32, u3: f32) -> [f32; 3] {
    let (s, d) = (0.5 * (u1 + u2), 0.5 * (u1 - u2));
    [u0 + s, d, s + u3]
}

/// Aᵀ's rows applied to four values: `(m0 + m1 + m2, m1 − m2 − m3)`.
#[inline(always)]
fn a_rows(m0: f32, m1: f32, m2: f32, m3: f32) -> [f32; 2] {
    [m0 + m1 + m2, m1 - m2 - m3]
}

/// A applied to a pair, Aᵀ's adjoint: `(y0, y0 + y1, y0 − y1, −y1)`.
#[inline(always)]
fn a_adjoint(y0: f32, y1: f32) -> [f32; 4] {
    [y0, y0 + y1, y0 - y1, -y1]
}

/// Bᵀ's rows applied to four values: `(d0 − d2, d1 + d2, d2 − d1, d1 − d3)`.
#[inline(always)]
fn b_rows(d0: f32, d1: f32, d2: f32, d3: f32) -> [f32; 4] {
    [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
}

/// B applied to four values, Bᵀ's adjoint: `(v0, v1 − v2 + v3, v1 + v2 − v0, −v3)`.
#[inline(always)]
fn b_adjoint(v0: f32, v1: f32, v2: f32, v3: f32) -> [f32; 4] {
    [v0, v1 - v2 + v3, v1 + v2 - v0, -v3]
}

/// Runs `x`, `4 + x`, `8 + x` and `12 + x` of the 16 in `runs`: column `x` of a 4×4 block's
/// positions.
fn column<'a, T: ?Sized + 'a>(runs: impl Iterator<Item = &'a mut T>, x: usize) -> [&'a mut T; 4] {
    let mut column = runs.skip(x).step_by(4);
    std::array::from_fn(|_| column.next().expect("16 positions"))
}

/// Four consecutive runs of `len` in `buf`.
fn four(buf: &mut [f32], len: usize) -> [&mut [f32]; 4] {
    let (a, rest) = buf.split_at_mut(len);
    let (b, rest) = rest.split_at_mut(len);
    let (c, d) = rest.split_at_mut(len);
    [a, b, c, &mut d[..len]]
}

/// One filter's taps `[C, 9]` as `[9, C]`.
fn tap_major(filter: &[f32], c: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; 9 * c];
    for (i, taps) in filter.chunks_exact(9).enumerate() {
        for (k, &v) in taps.iter().enumerate() {
            t[k * c + i] = v;
        }
    }
    t
}

/// `∂g += Gᵀ ∂U G` of every filter: the weight gradient `[O, C, 3, 3]` from `∂U [16, O, C]`.
fn kernel_adjoint(du: &[f32], g: &ConvGeom, gw: &mut [f32]) {
    let oc = g.o * g.c;
    gw.par_chunks_mut(g.c * 9)
        .enumerate()
        .for_each(|(o, filters)| {
            let at = |pos: usize| &du[pos * oc + o * g.c..][..g.c];
            // Gᵀ along the rows (positions 4r..4r+4 → three columns), then down the columns,
            // channel-wise; the taps come out tap-major.
            let mut rows = vec![0.0f32; 12 * g.c];
            for r in 0..4 {
                let (u0, u1, u2, u3) = (at(4 * r), at(4 * r + 1), at(4 * r + 2), at(4 * r + 3));
                let (dst, _) = rows[3 * r * g.c..].split_at_mut(3 * g.c);
                let (k0, rest) = dst.split_at_mut(g.c);
                let (k1, k2) = rest.split_at_mut(g.c);
                for i in 0..g.c {
                    [k0[i], k1[i], k2[i]] = g_adjoint(u0[i], u1[i], u2[i], u3[i]);
                }
            }
            let mut taps = vec![0.0f32; 9 * g.c];
            for x in 0..3 {
                let row = |r: usize| &rows[(3 * r + x) * g.c..][..g.c];
                let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                for i in 0..g.c {
                    let col = g_adjoint(r0[i], r1[i], r2[i], r3[i]);
                    for (y, v) in col.into_iter().enumerate() {
                        taps[(3 * y + x) * g.c + i] = v;
                    }
                }
            }
            for (i, k) in filters.chunks_exact_mut(9).enumerate() {
                for (t, d) in k.iter_mut().enumerate() {
                    *d += taps[t * g.c + i];
                }
            }
        });
}

/// `V = Bᵀ d B` of every tile of the `ns` samples in `xs` (`[ns, C, H, W]`), written over
/// `v` as `[16, C, ns·tiles]`. Channel by channel: each plane is copied into a zero-bordered
/// buffer (padding reads as zero), the 16 entries of every tile's 4×4 block are gathered into
/// 16 runs over the chunk's tiles, and the transform is element-wise over those runs.
fn input_transform(xs: &[f32], g: &ConvGeom, ns: usize, v: &mut Vec<f32>) {
    let (th, tw) = tiles(g);
    let (hw, tiles) = (g.h * g.w, th * tw);
    let t_len = ns * tiles;
    let (hp, wp) = (2 * th + 2, 2 * tw + 2);
    v.resize(POS * g.c * t_len, 0.0);
    by_row(v, g.c, t_len)
        .into_par_iter()
        .enumerate()
        .for_each(|(c, mut rows)| {
            // The border is never written, so it stays zero from plane to plane.
            let mut pad = vec![0.0f32; hp * wp];
            let mut d = vec![0.0f32; POS * t_len];
            for j in 0..ns {
                let plane = &xs[(j * g.c + c) * hw..][..hw];
                for (y, src) in plane.chunks_exact(g.w).enumerate() {
                    pad[(y + g.pad) * wp + g.pad..][..g.w].copy_from_slice(src);
                }
                for i in 0..POS {
                    let (r, s) = (i / 4, i % 4);
                    let dst = &mut d[i * t_len + j * tiles..][..tiles];
                    for (ti, dst) in dst.chunks_exact_mut(tw).enumerate() {
                        let src = pad[(2 * ti + r) * wp + s..].iter().step_by(2);
                        for (d, v) in dst.iter_mut().zip(src) {
                            *d = *v;
                        }
                    }
                }
            }
            // Bᵀ down the columns: column x of the blocks gives e[x], e[4 + x], ...
            let mut e = vec![0.0f32; POS * t_len];
            for x in 0..4 {
                let col = |r: usize| &d[(4 * r + x) * t_len..][..t_len];
                let (d0, d1, d2, d3) = (col(0), col(1), col(2), col(3));
                let [e0, e1, e2, e3] = column(e.chunks_exact_mut(t_len), x);
                for t in 0..t_len {
                    [e0[t], e1[t], e2[t], e3[t]] = b_rows(d0[t], d1[t], d2[t], d3[t]);
                }
            }
            // Then B along the rows: row r of e gives positions 4r..4r+4.
            for r in 0..4 {
                let row = |s: usize| &e[(4 * r + s) * t_len..][..t_len];
                let (e0, e1, e2, e3) = (row(0), row(1), row(2), row(3));
                let [v0, v1, v2, v3] = &mut rows[4 * r..4 * r + 4] else {
                    unreachable!("four positions per row");
                };
                for t in 0..t_len {
                    [v0[t], v1[t], v2[t], v3[t]] = b_rows(e0[t], e1[t], e2[t], e3[t]);
                }
            }
        });
}

/// The planes of a `[ns, rows, plane]` buffer grouped by row: group `r` holds plane `r` of
/// every sample, in sample order.
fn planes_by_row(buf: &mut [f32], rows: usize, plane: usize) -> Vec<Vec<&mut [f32]>> {
    let mut out: Vec<Vec<&mut [f32]>> = (0..rows).map(|_| Vec::new()).collect();
    for (i, p) in buf.chunks_mut(plane).enumerate() {
        out[i % rows].push(p);
    }
    out
}

/// `y = Aᵀ M A + bias` of every tile: the chunk's output `[ns, O, Ho, Wo]` from
/// `M [16, O, ns·tiles]`. Filter by filter, over all the chunk's tiles at once (each step one
/// element-wise pass over `ns·tiles` values), then each tile's 2×2 outputs to their places.
fn output_transform(m: &[f32], g: &ConvGeom, bs: &[f32], out: &mut [f32]) {
    let (th, tw) = tiles(g);
    let (p, tiles) = (g.p(), th * tw);
    let t_len = out.len() / (g.o * p) * tiles;
    planes_by_row(out, g.o, p)
        .into_par_iter()
        .enumerate()
        .for_each(|(o, planes)| {
            let at = |pos: usize| &m[(pos * g.o + o) * t_len..][..t_len];
            // Aᵀ down the columns: column s gives rows q[s] (top) and q[4 + s] (bottom).
            let mut q = vec![0.0f32; 8 * t_len];
            for s in 0..4 {
                let (m0, m1, m2, m3) = (at(s), at(4 + s), at(8 + s), at(12 + s));
                let (top, bottom) = q[2 * s * t_len..][..2 * t_len].split_at_mut(t_len);
                for t in 0..t_len {
                    [top[t], bottom[t]] = a_rows(m0[t], m1[t], m2[t], m3[t]);
                }
            }
            // Then along the rows: y[2·dy + dx] for the tile's output (dy, dx).
            let mut y = vec![0.0f32; 4 * t_len];
            for dy in 0..2 {
                let col = |s: usize| &q[(2 * s + dy) * t_len..][..t_len];
                let (c0, c1, c2, c3) = (col(0), col(1), col(2), col(3));
                let (left, right) = y[2 * dy * t_len..][..2 * t_len].split_at_mut(t_len);
                for t in 0..t_len {
                    [left[t], right[t]] = a_rows(c0[t], c1[t], c2[t], c3[t]);
                }
            }
            let b = bs[o];
            for (j, plane) in planes.into_iter().enumerate() {
                for i in 0..4 {
                    let ys = &y[i * t_len + j * tiles..][..tiles];
                    let (dy, dx) = (i / 2, i % 2);
                    for ti in 0..th {
                        let oy = 2 * ti + dy;
                        if oy >= g.ho {
                            break;
                        }
                        let row = &mut plane[oy * g.wo..][..g.wo];
                        let dst = row[dx..].iter_mut().step_by(2);
                        for (d, v) in dst.zip(&ys[ti * tw..][..tw]) {
                            *d = v + b;
                        }
                    }
                }
            }
        });
}

/// `∂M = A ∂Y Aᵀ` of every tile, written over `dm` as `[16, O, ns·tiles]`, from the chunk's
/// output gradient `[ns, O, Ho, Wo]` (zero beyond the output's edge). Filter by filter: each
/// tile's 2×2 gradients gathered into four runs over the chunk's tiles, then element-wise.
fn output_adjoint(gout: &[f32], g: &ConvGeom, ns: usize, dm: &mut Vec<f32>) {
    let (th, tw) = tiles(g);
    let (p, tiles) = (g.p(), th * tw);
    let t_len = ns * tiles;
    dm.resize(POS * g.o * t_len, 0.0);
    by_row(dm, g.o, t_len)
        .into_par_iter()
        .enumerate()
        .for_each(|(o, mut rows)| {
            // dy[2·dy + dx] over the tiles (zero past the edge, as the buffer starts).
            let mut dys = vec![0.0f32; 4 * t_len];
            for j in 0..ns {
                let plane = &gout[(j * g.o + o) * p..][..p];
                for i in 0..4 {
                    let (dy, dx) = (i / 2, i % 2);
                    let dst = &mut dys[i * t_len + j * tiles..][..tiles];
                    for ti in 0..th {
                        let oy = 2 * ti + dy;
                        if oy >= g.ho {
                            break;
                        }
                        let src = plane[oy * g.wo..][..g.wo][dx..].iter().step_by(2);
                        for (d, v) in dst[ti * tw..][..tw].iter_mut().zip(src) {
                            *d = *v;
                        }
                    }
                }
            }
            // A along the rows: the top pair gives q[0..4], the bottom pair q[4..8].
            let mut q = vec![0.0f32; 8 * t_len];
            for dy in 0..2 {
                let (y0, y1) = (
                    &dys[2 * dy * t_len..][..t_len],
                    &dys[(2 * dy + 1) * t_len..][..t_len],
                );
                let [q0, q1, q2, q3] = four(&mut q[4 * dy * t_len..][..4 * t_len], t_len);
                for t in 0..t_len {
                    [q0[t], q1[t], q2[t], q3[t]] = a_adjoint(y0[t], y1[t]);
                }
            }
            // Then down the columns: column s's pair gives positions s, 4 + s, 8 + s, 12 + s.
            for s in 0..4 {
                let (top, bottom) = (&q[s * t_len..][..t_len], &q[(4 + s) * t_len..][..t_len]);
                let [r0, r1, r2, r3] = column(rows.iter_mut(), s);
                for t in 0..t_len {
                    [r0[t], r1[t], r2[t], r3[t]] = a_adjoint(top[t], bottom[t]);
                }
            }
        });
}

/// `∂d += B ∂V Bᵀ` of every tile, added onto the chunk's input gradient `gx`
/// (`[ns, C, H, W]`) from `∂V [16, C, ns·tiles]`. Channel by channel: the blocks of all the
/// chunk's tiles element-wise, then each sample's plane sums its tiles' overlapping blocks in
/// a padded buffer, tile by tile in order, and adds the buffer's interior.
fn input_adjoint(dv: &[f32], g: &ConvGeom, gx: &mut [f32]) {
    let (th, tw) = tiles(g);
    let (hw, tiles) = (g.h * g.w, th * tw);
    let t_len = gx.len() / (g.c * hw) * tiles;
    let wp = 2 * tw + 2;
    let hp = 2 * th + 2;
    planes_by_row(gx, g.c, hw)
        .into_par_iter()
        .enumerate()
        .for_each(|(c, planes)| {
            let at = |pos: usize| &dv[(pos * g.c + c) * t_len..][..t_len];
            // Along the rows: row r of ∂V gives e[4r..4r+4].
            let mut e = vec![0.0f32; POS * t_len];
            for r in 0..4 {
                let (v0, v1, v2, v3) = (at(4 * r), at(4 * r + 1), at(4 * r + 2), at(4 * r + 3));
                let [e0, e1, e2, e3] = four(&mut e[4 * r * t_len..][..4 * t_len], t_len);
                for t in 0..t_len {
                    [e0[t], e1[t], e2[t], e3[t]] = b_adjoint(v0[t], v1[t], v2[t], v3[t]);
                }
            }
            // Down the columns: column x of e gives d[x], d[4 + x], d[8 + x], d[12 + x].
            let mut d = vec![0.0f32; POS * t_len];
            for x in 0..4 {
                let col = |r: usize| &e[(4 * r + x) * t_len..][..t_len];
                let (c0, c1, c2, c3) = (col(0), col(1), col(2), col(3));
                let [d0, d1, d2, d3] = column(d.chunks_exact_mut(t_len), x);
                for t in 0..t_len {
                    [d0[t], d1[t], d2[t], d3[t]] = b_adjoint(c0[t], c1[t], c2[t], c3[t]);
                }
            }
            let mut acc = vec![0.0f32; hp * wp];
            for (j, plane) in planes.into_iter().enumerate() {
                acc.fill(0.0);
                for ti in 0..th {
                    for tj in 0..tw {
                        let t = j * tiles + ti * tw + tj;
                        let base = 2 * ti * wp + 2 * tj;
                        for i in 0..POS {
                            acc[base + i / 4 * wp + i % 4] += d[i * t_len + t];
                        }
                    }
                }
                for (y, dst) in plane.chunks_exact_mut(g.w).enumerate() {
                    add_into(dst, &acc[(y + g.pad) * wp + g.pad..][..g.w]);
                }
            }
        });
}

/// The forward pass: `[N, O, Ho, Wo]` from `xs [N, C, H, W]`, the weight and the bias, and
/// the transformed kernel `U` (kept for the backward pass: the weight is the same then).
pub(super) fn forward(xs: &[f32], ws: &[f32], bs: &[f32], g: &ConvGeom) -> (Vec<f32>, Vec<f32>) {
    let (th, tw) = tiles(g);
    let (chw, op) = (g.c * g.h * g.w, g.o * g.p());
    let u = kernel_transform(ws, g);
    let (mut v, mut m) = (Vec::new(), Vec::new());
    let mut out = vec![0.0; g.n * op];
    let ns = chunk(g);
    for (out, xs) in out.chunks_mut(ns * op).zip(xs.chunks(ns * chw)) {
        let ns = xs.len() / chw;
        let t_len = ns * th * tw;
        input_transform(xs, g, ns, &mut v);
        m.resize(POS * g.o * t_len, 0.0);
        for pos in 0..POS {
            let a = Mat::new(&u[pos * g.o * g.c..][..g.o * g.c], g.o, g.c);
            let b = Mat::new(&v[pos * g.c * t_len..][..g.c * t_len], g.c, t_len);
            gemm(a, b, &mut m[pos * g.o * t_len..][..g.o * t_len], false);
        }
        output_transform(&m, g, bs, out);
    }
    (out, u)
}

/// The backward pass from the output gradient `gout`, with the forward pass's `U`: adds the
/// weight gradient onto `gw` and, when given, the input gradient onto `gx`. The bias
/// gradient is the caller's.
pub(super) fn backward(
    xs: &[f32],
    u: &[f32],
    gout: &[f32],
    g: &ConvGeom,
    gw: &mut [f32],
    mut gx: Option<&mut [f32]>,
) {
    let (th, tw) = tiles(g);
    let (chw, op) = (g.c * g.h * g.w, g.o * g.p());
    let (oc, ns) = (g.o * g.c, chunk(g));
    let mut du = vec![0.0; POS * oc];
    let (mut v, mut dm, mut dv) = (Vec::new(), Vec::new(), Vec::new());
    for (ci, (xs, gout)) in xs.chunks(ns * chw).zip(gout.chunks(ns * op)).enumerate() {
        let ns_here = xs.len() / chw;
        let t_len = ns_here * th * tw;
        input_transform(xs, g, ns_here, &mut v);
        output_adjoint(gout, g, ns_here, &mut dm);
        for pos in 0..POS {
            let dmp = Mat::new(&dm[pos * g.o * t_len..][..g.o * t_len], g.o, t_len);
            let vp = Mat::new(&v[pos * g.c * t_len..][..g.c * t_len], g.c, t_len);
            // Chunk by chunk, in order: a fixed sum.
            gemm(dmp, vp.t(), &mut du[pos * oc..][..oc], ci > 0);
        }
        let Some(gx) = gx.as_deref_mut() else {
            continue;
        };
        dv.resize(POS * g.c * t_len, 0.0);
        for pos in 0..POS {
            let up = Mat::new(&u[pos * oc..][..oc], g.o, g.c);
            let dmp = Mat::new(&dm[pos * g.o * t_len..][..g.o * t_len], g.o, t_len);
            gemm(
                up.t(),
                dmp,
                &mut dv[pos * g.c * t_len..][..g.c * t_len],
                false,
            );
        }
        input_adjoint(&dv, g, &mut gx[ci * ns * chw..][..ns_here * chw]);
    }
    kernel_adjoint(&du, g, gw);
}
