//! The data transforms a few tile rows at a time, in registers, for maps whose tile rows are
//! 2, 4, 8 or 16 tiles wide (VGG's 4×4 to 32×32 maps, see [`group`]). The general transforms in
//! the parent module make each 1-D step one element-wise pass over a channel's tiles,
//! through buffers: the input transform gathers a tile row's 16 entries into runs, then
//! passes down the columns, then along the rows, each pass a load and a store of every
//! value. Here the entries of `L / W` tile rows of `W` tiles are `[f32; L]` values, one
//! vector of `L` tiles (16 on 8×8 and 32×32 maps, 8 on 16×16 ones, and on 4×4 maps the
//! tiles of four samples), and all of a tile's steps run on them before anything is stored:
//! each transformed value is written once and each input read once, with no loop over a run
//! of unknown length.
//!
//! Every element goes through the same operations in the same order as in the parent
//! module's transforms (down the columns, then along the rows, for each transform as there;
//! the input gradient's overlapping blocks added in the same order), so both give the same
//! bits; `tests` checks that on every vector width this CPU has. Each kernel is compiled
//! three times, for AVX-512, AVX2 and the baseline, and the copy is chosen at run time: the
//! widths are fixed, so no run falls into a scalar remainder (the reason AVX-512 copies of
//! the general transforms ran slower, docs/performance.md).

use super::{a_adjoint, a_rows, b_adjoint, b_rows, POS};
use crate::nn::gemm::blocked::Isa;

/// The instruction set of the kernels that take one plane's rows ([`split`], [`add_split`])
/// for rows of `tw` tiles (`2·tw` floats), or `None`.
pub(super) fn for_planes(tw: usize) -> Option<Isa> {
    group(tw)?;
    #[cfg(test)]
    if let Some(choice) = tests::CHOICE.get() {
        return choice;
    }
    Some(Isa::detect())
}

/// Tile rows of `tw` tiles that one vector holds: 16 lanes on rows of 2 and 4 tiles (VGG's
/// 4×4 and 8×8 maps; a row at a time ran no faster than the general transforms, whose passes
/// run over all of a chunk's tiles at once), one row of 8 or 16; `None` for other widths.
fn group(tw: usize) -> Option<usize> {
    match tw {
        2 => Some(8),
        4 => Some(4),
        8 | 16 => Some(1),
        _ => None,
    }
}

/// Where these kernels run a transform over a grid of `rows` tile rows of `tw` tiles in each
/// of `ns` planes: the instruction set, and how many planes each call takes (so that a call's
/// tile rows fill whole vectors: one plane, or on 4×4 maps four planes of two rows); `None`
/// where the general transforms run.
pub(super) fn choose(tw: usize, rows: usize, ns: usize) -> Option<(Isa, usize)> {
    let group = group(tw)?;
    let planes = if rows.is_multiple_of(group) {
        1
    } else if group.is_multiple_of(rows) && ns.is_multiple_of(group / rows) {
        group / rows
    } else {
        return None;
    };
    #[cfg(test)]
    if let Some(choice) = tests::CHOICE.get() {
        return choice.map(|isa| (isa, planes));
    }
    Some((Isa::detect(), planes))
}

/// `f` applied lane by lane: `out[k][t] = f(src[0][t], …)[k]` for each of the `W` tiles.
#[inline(always)]
fn lanes<const I: usize, const O: usize, const W: usize>(
    src: [[f32; W]; I],
    f: impl Fn([f32; I]) -> [f32; O],
) -> [[f32; W]; O] {
    let mut out = [[0.0; W]; O];
    for t in 0..W {
        let mut x = [0.0; I];
        for k in 0..I {
            x[k] = src[k][t];
        }
        let o = f(x);
        for k in 0..O {
            out[k][t] = o[k];
        }
    }
    out
}

/// The rows of a zero-bordered plane, each `wp` floats: its even columns, then its odd ones
/// (`half` each), as the parent's [`super::input_transform`] lays them out.
#[derive(Debug, Clone, Copy)]
pub(super) struct Split {
    pub(super) wp: usize,
    pub(super) half: usize,
}

/// `W` floats of `buf` from `at`.
#[inline(always)]
fn load<const W: usize>(buf: &[f32], at: usize) -> [f32; W] {
    let mut out = [0.0; W];
    out.copy_from_slice(&buf[at..][..W]);
    out
}

/// A kernel over the tile rows of one plane, with a body for each width and a copy for each
/// instruction set: `$name(isa, tw, args…)` runs `$name::<W, L>`'s body compiled for `isa`,
/// with `W = tw` tiles a row and `L` lanes (`L / W` tile rows, see [`group`]) a vector.
macro_rules! kernel {
    ($(#[$doc:meta])* fn $name:ident<const W: usize, const L: usize>($($a:ident: $t:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        pub(super) fn $name(isa: Isa, tw: usize, $($a: $t),*) {
            #[inline(always)]
            fn body<const W: usize, const L: usize>($($a: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512<const W: usize, const L: usize>($($a: $t),*) {
                body::<W, L>($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            unsafe fn avx2<const W: usize, const L: usize>($($a: $t),*) {
                body::<W, L>($($a),*)
            }
            fn on<const W: usize, const L: usize>(isa: Isa, $($a: $t),*) {
                assert!(isa.runs_here(), "{isa:?} does not run on this CPU");
                // The widths below and `group`, which callers plan with, must agree.
                debug_assert_eq!(group(W), Some(L / W), "tile rows a vector of {W} tiles");
                match isa {
                    // SAFETY: the CPU has the instruction set, checked just above.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => unsafe { avx512::<W, L>($($a),*) },
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => unsafe { avx2::<W, L>($($a),*) },
                    _ => body::<W, L>($($a),*),
                }
            }
            match tw {
                2 => on::<2, 16>(isa, $($a),*),
                4 => on::<4, 16>(isa, $($a),*),
                8 => on::<8, 8>(isa, $($a),*),
                16 => on::<16, 16>(isa, $($a),*),
                _ => unreachable!("tile rows of {tw} tiles have no kernel (see `group`)"),
            }
        }
    };
}

/// `L` floats: `L / W` runs of `W`, from `buf[bases[g] + at..]` for run `g`.
#[inline(always)]
fn gather<const W: usize, const L: usize>(buf: &[f32], bases: &[usize], at: usize) -> [f32; L] {
    let mut out = [0.0; L];
    for (run, &base) in out.chunks_exact_mut(W).zip(bases) {
        run.copy_from_slice(&buf[base + at..][..W]);
    }
    out
}

kernel! {
    /// `V = Bᵀ d B` of tile rows of zero-bordered, split planes in `pad` (`layout`): tile
    /// row `k`'s first padded row starts at `pad[bases[k]..]`, and its tiles go to
    /// `v[i][at + k·W..]`, `W` floats, for each position `i`.
    fn input<const W: usize, const L: usize>(
        bases: &[usize],
        pad: &[f32],
        layout: Split,
        v: &mut [&mut [f32]],
        at: usize,
    ) {
        let Split { wp, half } = layout;
        let v: &mut [&mut [f32]; POS] = v.try_into().expect("16 positions");
        for (i, bases) in bases.chunks_exact(L / W).enumerate() {
            // Entry (y, s) of the tiles' 4×4 blocks: padded row 2r + y, columns 2t + s.
            // Bᵀ down the columns, then along the rows.
            let mut cols = [[[0.0; L]; 4]; 4];
            for (s, col) in cols.iter_mut().enumerate() {
                let mut d = [[0.0; L]; 4];
                for (y, d) in d.iter_mut().enumerate() {
                    *d = gather::<W, L>(pad, bases, y * wp + s % 2 * half + s / 2);
                }
                *col = lanes(d, b_rows);
            }
            for y in 0..4 {
                let out = lanes([cols[0][y], cols[1][y], cols[2][y], cols[3][y]], b_rows);
                for (s, o) in out.iter().enumerate() {
                    v[4 * y + s][at + i * L..][..L].copy_from_slice(o);
                }
            }
        }
    }
}

kernel! {
    /// `y = Aᵀ M A + b` of tile rows of output planes (`2·W` columns, whole tiles): tile row
    /// `k`'s `M` is `m[i][at + k·W..]`, `W` floats, for each position `i`, and its outputs
    /// go to `out[k]`, its two output rows.
    fn output<const W: usize, const L: usize>(
        m: &[&[f32]],
        at: usize,
        bias: f32,
        out: &mut [&mut [f32]],
    ) {
        let m: &[&[f32]; POS] = m.try_into().expect("16 positions");
        for (i, out) in out.chunks_exact_mut(L / W).enumerate() {
            // Aᵀ down the columns (top and bottom row of each column), then along the rows.
            let mut cols = [[[0.0; L]; 2]; 4];
            for (s, col) in cols.iter_mut().enumerate() {
                let mut mp = [[0.0; L]; 4];
                for (y, mp) in mp.iter_mut().enumerate() {
                    *mp = load(m[4 * y + s], at + i * L);
                }
                *col = lanes(mp, a_rows);
            }
            let ys = [0, 1].map(|dy| lanes([cols[0][dy], cols[1][dy], cols[2][dy], cols[3][dy]], a_rows));
            for (g, out) in out.iter_mut().enumerate() {
                for ([y0, y1], row) in ys.iter().zip(out.chunks_exact_mut(2 * W)) {
                    for (t, pair) in row.chunks_exact_mut(2).enumerate() {
                        pair[0] = y0[g * W + t] + bias;
                        pair[1] = y1[g * W + t] + bias;
                    }
                }
            }
        }
    }
}

kernel! {
    /// `∂M = A ∂Y Aᵀ` of tile rows of output planes' gradients (`2·W` columns, whole
    /// tiles): tile row `k`'s two rows are `gout[k]`, and its transform goes to
    /// `dm[i][at + k·W..]`, `W` floats, for each position `i`.
    fn output_adjoint<const W: usize, const L: usize>(
        gout: &[&[f32]],
        dm: &mut [&mut [f32]],
        at: usize,
    ) {
        let dm: &mut [&mut [f32]; POS] = dm.try_into().expect("16 positions");
        for (i, gout) in gout.chunks_exact(L / W).enumerate() {
            // The tiles' 2×2 gradients: row dy's even columns (dx = 0), then its odd ones.
            let mut dy = [[[0.0; L]; 2]; 2];
            for (g, gout) in gout.iter().enumerate() {
                for (pair, row) in dy.iter_mut().zip(gout.chunks_exact(2 * W)) {
                    for (t, v) in row.chunks_exact(2).enumerate() {
                        pair[0][g * W + t] = v[0];
                        pair[1][g * W + t] = v[1];
                    }
                }
            }
            // A along the rows, then down the columns.
            let q = [lanes(dy[0], a_adjoint), lanes(dy[1], a_adjoint)];
            for s in 0..4 {
                let col = lanes([q[0][s], q[1][s]], a_adjoint);
                for (y, c) in col.iter().enumerate() {
                    dm[4 * y + s][at + i * L..][..L].copy_from_slice(c);
                }
            }
        }
    }
}

kernel! {
    /// `∂d = B ∂V Bᵀ` of tile rows, added onto `acc`, zero-bordered planes laid out as
    /// [`input`]'s `pad`: tile row `k`'s first padded row starts at `acc[bases[k]..]`, and
    /// its `∂V` is `dv[i][at + k·W..]`, `W` floats, for each position `i`. The overlapping
    /// blocks are added in the parent's order ([`super::input_adjoint`]): a block row's
    /// entries 2 and 3 before 0 and 1 (those overlap the tile row below's 0 and 1), and in
    /// each the entries from the tile to the left (2 and 3) before the tile's own (0 and 1);
    /// tile rows in order.
    fn input_adjoint<const W: usize, const L: usize>(
        bases: &[usize],
        dv: &[&[f32]],
        at: usize,
        acc: &mut [f32],
        layout: Split,
    ) {
        let Split { wp, half } = layout;
        let dv: &[&[f32]; POS] = dv.try_into().expect("16 positions");
        for (i, bases) in bases.chunks_exact(L / W).enumerate() {
            // B along the rows, then down the columns.
            let mut e = [[[0.0; L]; 4]; 4];
            for (y, e) in e.iter_mut().enumerate() {
                let mut p = [[0.0; L]; 4];
                for (s, p) in p.iter_mut().enumerate() {
                    *p = load(dv[4 * y + s], at + i * L);
                }
                *e = lanes(p, b_adjoint);
            }
            let mut d = [[[0.0; L]; 4]; 4];
            for (s, d) in d.iter_mut().enumerate() {
                *d = lanes([e[0][s], e[1][s], e[2][s], e[3][s]], b_adjoint);
            }
            for y in [2, 3, 0, 1] {
                for s in [2, 3, 0, 1] {
                    for (g, &base) in bases.iter().enumerate() {
                        let dst = &mut acc[base + y * wp + s % 2 * half + s / 2..][..W];
                        let src = &d[s][y][g * W..][..W];
                        dst.iter_mut().zip(src).for_each(|(a, v)| *a += v);
                    }
                }
            }
        }
    }
}

kernel! {
    /// Plane rows of `2·W` floats (`src`) copied into the zero-bordered rows of `pad` (`wp`
    /// floats each), split: each row's even columns to `evens`, its odd ones to `odds` (see
    /// [`super::split_runs`]).
    fn split<const W: usize, const L: usize>(
        src: &[f32],
        pad: &mut [f32],
        wp: usize,
        evens: usize,
        odds: usize,
    ) {
        for (src, row) in src.chunks_exact(2 * W).zip(pad.chunks_mut(wp)) {
            let (mut e, mut o) = ([0.0; W], [0.0; W]);
            for t in 0..W {
                e[t] = src[2 * t];
                o[t] = src[2 * t + 1];
            }
            row[evens..][..W].copy_from_slice(&e);
            row[odds..][..W].copy_from_slice(&o);
        }
    }
}

kernel! {
    /// [`split`]'s adjoint: rows of `2·W` floats of `dst` plus the split rows of `acc` (`wp`
    /// floats each).
    fn add_split<const W: usize, const L: usize>(
        acc: &[f32],
        wp: usize,
        evens: usize,
        odds: usize,
        dst: &mut [f32],
    ) {
        for (row, dst) in acc.chunks(wp).zip(dst.chunks_exact_mut(2 * W)) {
            let (e, o) = (load::<W>(row, evens), load::<W>(row, odds));
            for t in 0..W {
                dst[2 * t] += e[t];
                dst[2 * t + 1] += o[t];
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::super::super::geom::ConvGeom;
    use super::super::{
        input_adjoint, input_transform, output_adjoint, output_transform, Grid, Scratch, Threads,
    };
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// This thread's path, for these tests: `Some(None)` the general transforms,
        /// `Some(Some(isa))` the kernels here on `isa`; unset, as in use ([`choose`]).
        pub(in super::super) static CHOICE: Cell<Option<Option<Isa>>> = const { Cell::new(None) };
    }

    /// Floats from a fixed sequence, varied in sign and size.
    fn floats(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 20_001) as f32 / 1000.0 - 10.0
            })
            .collect()
    }

    /// The four data transforms of `g` over `grid` on this thread: the transformed input, the
    /// output, the transformed output gradient and the input gradient, as bits.
    fn transforms(g: &ConvGeom, grid: &Grid) -> [Vec<u32>; 4] {
        let (ns, t_len) = (g.n, g.n * grid.tiles());
        let xs = floats(g.n * g.c * g.h * g.w, 1);
        let m = floats(16 * g.o * t_len, 2);
        let bs = floats(g.o, 3);
        let gout = floats(g.n * g.o * g.p(), 4);
        let dv = floats(16 * g.c * t_len, 5);
        let mut s = Scratch::default();
        let mut v = Vec::new();
        input_transform(&xs, g, ns, grid, Threads::Here(&mut s), &mut v);
        let mut out = floats(g.n * g.o * g.p(), 6);
        output_transform(&m, g, grid, Threads::Here(&mut s), &bs, false, &mut out);
        let mut dm = Vec::new();
        output_adjoint(&gout, g, ns, grid, Threads::Here(&mut s), &mut dm);
        let mut gx = floats(xs.len(), 7);
        input_adjoint(&dv, g, grid, Threads::Here(&mut s), &mut gx);
        [v, out, dm, gx].map(|b| b.iter().map(|x| x.to_bits()).collect())
    }

    /// On tile rows of 2, 4, 8 and 16 tiles (of 4 tiles, four rows at a time: one group and
    /// two; of 2, four samples' rows at a time: one call and two), whole and cut into bands,
    /// with whole and partial tiles and paddings 0 to 2, every instruction set this CPU has
    /// gives the general transforms' bits for the input, the output and both adjoints.
    #[test]
    fn every_instruction_set_gives_the_general_transforms_bits() {
        let layers = [
            ((2, 3, 32, 32), 2, 1),
            ((3, 2, 16, 16), 3, 1),
            ((2, 2, 15, 16), 2, 1),
            ((1, 2, 16, 17), 3, 0),
            ((2, 1, 14, 14), 2, 2),
            ((2, 3, 8, 8), 2, 1),
            ((1, 2, 16, 8), 3, 1),
            ((4, 3, 4, 4), 2, 1),
            ((8, 2, 4, 4), 3, 1),
            ((4, 2, 6, 6), 2, 0),
            ((4, 1, 2, 2), 2, 2),
        ];
        let isas = [Isa::Avx512, Isa::Avx2, Isa::Scalar];
        let mut checked = 0;
        for ((n, c, h, w), o, pad) in layers {
            let g = ConvGeom::new((n, c, h, w), (o, c, 3, 3), o, 1, pad);
            let whole = Grid::whole(&g);
            let rows = whole.rows.len();
            CHOICE.set(None);
            let fits = choose(whole.tw, rows, n).is_some();
            assert!(fits, "{g:?}: {rows} tile rows of {}", whole.tw);
            // Bands of two tile rows: from the second row, and the last two.
            let th = whole.rows.end;
            let bands = [1..3, th - 2..th].map(|rows| Grid {
                rows,
                ..whole.clone()
            });
            let grids = std::iter::once(whole).chain(bands.into_iter().filter(|_| th >= 4));
            for grid in grids {
                CHOICE.set(Some(None));
                let general = transforms(&g, &grid);
                for isa in isas.into_iter().filter(|i| i.runs_here()) {
                    CHOICE.set(Some(Some(isa)));
                    let here = transforms(&g, &grid);
                    for (what, (a, b)) in ["input", "output", "output adjoint", "input adjoint"]
                        .iter()
                        .zip(here.iter().zip(&general))
                    {
                        assert!(
                            a == b,
                            "{isa:?}, {g:?}, rows {:?}: {what} differs",
                            grid.rows
                        );
                    }
                    checked += 1;
                }
            }
        }
        CHOICE.set(None);
        assert!(checked >= 15, "only {checked} cases ran");
    }
}
