//! Convolutions of maps so small that most of im2col's columns would be padding (VGG-16's
//! 2×2 layers in its 32×32 form: a 3×3 kernel with padding 1 on a 2×2 map reads 36 taps per
//! sample, of which 20 fall on the border), computed over the taps that do land inside the
//! map. Each such tap joins an output pixel `p` to an input pixel `q`; output pixel `p` is
//! the sum over its pairs of `W_t [O, C] · X_q [C, N]`, with `W_t` the weight's tap `t` for
//! every filter and channel and `X_q` the input pixel `q` of every channel and sample.
//!
//! The products are grouped by tap, so that each tap's weight is packed once per pass: tap
//! `t` multiplies the input pixels of all its pairs side by side (`W_t · [X_q1 | X_q2 | …]`),
//! and each output pixel then adds its pairs' blocks, in the order of [`pairs`]. The
//! backward pass is the same per tap: `W_tᵀ · [∂Y_p1 | ∂Y_p2 | …]` gives the input
//! gradients' blocks, and `∂W_t = [∂Y_p1 | …] · [X_q1 | …]ᵀ` sums over pairs and samples in
//! one product. On VGG's 2×2 layers that is 16/36 of the direct path's multiplications, with
//! no transforms: Winograd's F(2×2, 3×3) also does 16 there, but its 4×4 blocks are mostly
//! padding and its transformed kernel is 16/9 of the weight.
//!
//! Every sum's order follows the shapes only (taps in order; blocks added in pair order), so
//! results are the same bits on every run, CPU and thread count, and a sample's output does
//! not depend on the batch it came in.

use super::super::geom::ConvGeom;
use super::{activated, add_by_filter, add_channel_major, add_into, Layer};
use crate::nn::gemm::{gemm_here, Mat, PackedA};
use crate::nn::host::zeros;
use rayon::prelude::*;

/// One tap that lands inside the map: output pixel `p`, input pixel `q` (flat in-plane
/// indices) and the kernel's tap `t` (flat, row-major) that joins them.
#[derive(Debug, Clone, Copy)]
struct Pair {
    p: usize,
    q: usize,
    t: usize,
}

/// Every pair of the convolution `g`, output pixel by output pixel, taps in order.
fn pairs(g: &ConvGeom) -> Vec<Pair> {
    let mut out = Vec::new();
    for (oy, ox) in (0..g.ho).flat_map(|y| (0..g.wo).map(move |x| (y, x))) {
        for (ki, kj) in (0..g.kh).flat_map(|i| (0..g.kw).map(move |j| (i, j))) {
            if let (Some(iy), Some(ix)) = (g.src(oy, ki, g.h), g.src(ox, kj, g.w)) {
                let (p, q, t) = (oy * g.wo + ox, iy * g.w + ix, ki * g.kw + kj);
                out.push(Pair { p, q, t });
            }
        }
    }
    out
}

/// Input pixels a map may have for this path: each pair is a product, and each tap's weight
/// is gathered and packed once per pass, which pays only while the taps are few per pixel.
const MAX_PIXELS: usize = 16;

/// How wide a layer must be, as `C·O/(C + O)`, for this path to pay: it trades the direct
/// path's wasted multiplications for a gather of the weight by tap, a scatter of its gradient
/// back, and a few products per tap, each thin (as many columns as samples). Measured on
/// VGG-16's 2×2 layers at batch 32 (`cargo bench --bench conv -- layers`, and at a half,
/// quarter and eighth of the width): 512→512 (256) took 5.6–5.9 ms against the direct path's
/// 9.7–10.6; 256→256 (128) 2.8–3.3 against 3.0; 128→128 and 64→64 were slower.
const MIN_MACS_PER_VALUE: usize = 192;

/// Whether the convolution `g` takes this path: at most half of im2col's entries land inside
/// the map (the rest would be multiplications by padding), on a map of at most
/// [`MAX_PIXELS`], in a layer wide enough (see [`MIN_MACS_PER_VALUE`]).
pub(super) fn applies(g: &ConvGeom) -> bool {
    g.h * g.w <= MAX_PIXELS
        && g.c * g.o >= MIN_MACS_PER_VALUE * (g.c + g.o)
        && 2 * pairs(g).len() <= g.p() * g.kh * g.kw
}

/// What the forward pass keeps for the backward pass: the input pixel-major (`[H·W, C, N]`).
pub(super) struct Saved {
    pixels: Vec<f32>,
}

/// Each tap's weight `W_t [O, C]` of the weight `ws [O, C, kh, kw]` packed for the products
/// (with `transposed`, `W_tᵀ [C, O]`): all taps in one pass over the weight, each filter's
/// taps read side by side, where copying the weight out tap by tap and packing each tap
/// again took two passes, a fifth of a 2×2 layer's samples (perf, issue 19).
fn packed_taps(ws: &[f32], g: &ConvGeom, transposed: bool) -> Vec<PackedA> {
    let kk = g.kh * g.kw;
    let (filter, channel) = (g.c * kk, kk);
    match transposed {
        false => PackedA::interleaved(ws, kk, (g.o, g.c), (filter, channel)),
        true => PackedA::interleaved(ws, kk, (g.c, g.o), (channel, filter)),
    }
}

/// The columns of each tap's product: its pairs' blocks `[X_q1 | X_q2 | …]` (`[C, pairs·N]`)
/// from pixel-major blocks `[H·W, rows, N]` (or the output gradient's `[P, O, N]` with `by`
/// picking `p`).
fn side_by_side(
    blocks: &[f32],
    rows: usize,
    n: usize,
    pairs: &[Pair],
    by: fn(&Pair) -> usize,
) -> Vec<f32> {
    let width = pairs.len() * n;
    let mut out = zeros(rows * width);
    // Rows over the pool: on the calling thread these copies were a tenth of a 2×2 layer.
    out.par_chunks_exact_mut(width)
        .enumerate()
        .for_each(|(r, dst)| {
            for (dst, pair) in dst.chunks_exact_mut(n).zip(pairs) {
                dst.copy_from_slice(&blocks[(by(pair) * rows + r) * n..][..n]);
            }
        });
    out
}

/// `[N, rows, pixels]` (a batch of planes) as `[pixels, rows, N]`.
fn pixel_major(planes: &[f32], rows: usize, pixels: usize) -> Vec<f32> {
    let n = planes.len() / (rows * pixels);
    let mut out = zeros(planes.len());
    // Pixel by pixel over the pool, each task gathering its pixel of every row and sample.
    out.par_chunks_exact_mut(rows * n)
        .enumerate()
        .for_each(|(q, dst)| {
            for (r, dst) in dst.chunks_exact_mut(n).enumerate() {
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = planes[(j * rows + r) * pixels + q];
                }
            }
        });
    out
}

/// The pairs of each tap, in order.
fn by_tap(g: &ConvGeom) -> Vec<Vec<Pair>> {
    let mut taps = vec![Vec::new(); g.kh * g.kw];
    for pair in pairs(g) {
        taps[pair.t].push(pair);
    }
    taps
}

/// `blocks[i]` is the `[rows, N]` result of pair `i` of each tap (columns side by side as in
/// [`side_by_side`]); adds them onto the pixel-major `[pixels, rows, N]` sums `dst`, each
/// pixel's blocks in [`pairs`]' order, picked by `by`.
fn add_blocks(
    results: &[Vec<f32>],
    taps: &[Vec<Pair>],
    rows: usize,
    n: usize,
    by: fn(&Pair) -> usize,
    dst: &mut [f32],
) {
    let order = {
        let mut order: Vec<(usize, usize, usize)> = taps
            .iter()
            .enumerate()
            .flat_map(|(t, pairs)| pairs.iter().enumerate().map(move |(i, pr)| (by(pr), t, i)))
            .collect();
        // Pixel by pixel, and within a pixel in `pairs`' order (taps ascending).
        order.sort_unstable();
        order
    };
    dst.par_chunks_mut(rows * n)
        .enumerate()
        .for_each(|(pixel, sums)| {
            let mine = order.iter().filter(|&&(px, ..)| px == pixel);
            for (first, &(_, t, i)) in mine.enumerate() {
                let width = taps[t].len() * n;
                for (r, dst) in sums.chunks_exact_mut(n).enumerate() {
                    let src = &results[t][r * width + i * n..][..n];
                    if first == 0 {
                        dst.copy_from_slice(src);
                    } else {
                        add_into(dst, src);
                    }
                }
            }
        });
}

/// The forward pass: `[N, O, Ho, Wo]` from `xs [N, C, H, W]`, the weight and the bias, and
/// what the backward pass needs.
pub(super) fn forward(layer: Layer) -> (Vec<f32>, Saved) {
    let (xs, ws, bs, g, relu) = layer.parts();
    let (n, p) = (g.n, g.p());
    let taps = packed_taps(ws, g, false);
    let pixels = pixel_major(xs, g.c, g.h * g.w);
    let groups = by_tap(g);
    // Tap by tap, the taps side by side, each product on one thread (the same bits as over
    // the pool): `W_t · [X_q1 | X_q2 | …]`. One wake of the pool where there were one per
    // tap, and each packed weight read by one core.
    let results: Vec<Vec<f32>> = groups
        .par_iter()
        .zip(&taps)
        .map(|(pairs, w)| {
            let width = pairs.len() * n;
            let mut y = vec![0.0; g.o * width];
            if !pairs.is_empty() {
                let cols = side_by_side(&pixels, g.c, n, pairs, |pr| pr.q);
                gemm_here(w, Mat::new(&cols, g.c, width), &mut y, false);
            }
            y
        })
        .collect();
    let mut ys = zeros(p * g.o * n);
    add_blocks(&results, &groups, g.o, n, |pr| pr.p, &mut ys);
    // `[P, O, N]` → `[N, O, P]`, plus the bias.
    let mut out = zeros(n * g.o * p);
    out.par_chunks_mut(g.o * p)
        .enumerate()
        .for_each(|(j, sample)| {
            for (o, plane) in sample.chunks_exact_mut(p).enumerate() {
                for (px, v) in plane.iter_mut().enumerate() {
                    *v = activated(ys[(px * g.o + o) * n + j] + bs[o], relu);
                }
            }
        });
    (out, Saved { pixels })
}

/// The backward pass from the output gradient `gout`, the weight `ws` and what the forward
/// pass saved: adds the weight gradient onto `gw` and, when given, the input gradient onto
/// `gx`. The bias gradient is the caller's.
pub(super) fn backward(
    saved: &Saved,
    ws: &[f32],
    gout: &[f32],
    g: &ConvGeom,
    gw: &mut Vec<f32>,
    gx: Option<&mut [f32]>,
) {
    let (n, kk) = (g.n, g.kh * g.kw);
    let dys = pixel_major(gout, g.o, g.p());
    let groups = by_tap(g);
    let taps = match gx {
        Some(_) => packed_taps(ws, g, true),
        None => Vec::new(),
    };
    // Tap by tap, side by side as in the forward pass: `∂W_t` and, for the input gradient,
    // `W_tᵀ · [∂Y_p1 | …]`.
    let (dtaps, dxs): (Vec<Vec<f32>>, Vec<Vec<f32>>) = groups
        .par_iter()
        .enumerate()
        .map(|(t, pairs)| {
            // ∂W_t is zero for a tap without pairs (on maps of one row or column).
            let mut dw = vec![0.0; g.o * g.c];
            if pairs.is_empty() {
                return (dw, Vec::new());
            }
            let width = pairs.len() * n;
            let dy = side_by_side(&dys, g.o, n, pairs, |pr| pr.p);
            let x = side_by_side(&saved.pixels, g.c, n, pairs, |pr| pr.q);
            // ∂W_t = [∂Y_p1 | …] · [X_q1 | …]ᵀ: over pairs, then samples, in one sum.
            gemm_here(
                Mat::new(&dy, g.o, width),
                Mat::new(&x, g.c, width).t(),
                &mut dw,
                false,
            );
            let mut dx = Vec::new();
            if let Some(w) = taps.get(t) {
                dx = vec![0.0; g.c * width];
                gemm_here(w, Mat::new(&dy, g.o, width), &mut dx, false);
            }
            (dw, dx)
        })
        .unzip();
    // The weight's taps back to `[O, C, kh, kw]`: 3×3 kernels in blocks of channels (an
    // element at a time, at a stride of the whole weight, took a fifth of a 2×2 layer).
    let tap = |t: usize, o: usize| &dtaps[t][o * g.c..][..g.c];
    add_by_filter(
        gw,
        g.o,
        g.c * kk,
        || (),
        |_, o, filters| {
            if kk == 9 {
                return add_channel_major(std::array::from_fn(|t| tap(t, o)), filters);
            }
            for (c, k) in filters.chunks_exact_mut(kk).enumerate() {
                for (t, d) in k.iter_mut().enumerate() {
                    *d += tap(t, o)[c];
                }
            }
        },
    );
    let Some(gx) = gx else {
        return;
    };
    let hw = g.h * g.w;
    let mut sums = zeros(hw * g.c * n);
    add_blocks(&dxs, &groups, g.c, n, |pr| pr.q, &mut sums);
    gx.par_chunks_mut(g.c * hw)
        .enumerate()
        .for_each(|(j, sample)| {
            for (c, plane) in sample.chunks_exact_mut(hw).enumerate() {
                for (q, v) in plane.iter_mut().enumerate() {
                    *v += sums[(q * g.c + c) * n + j];
                }
            }
        });
}
