//! The banded path of F(2×2, 3×3), for 3×3 stride-1 layers whose maps are large and whose
//! channels are few (VGG-16's 64→64 at 32×32, 64→128 and 128→128 at 16×16; at 224×224,
//! 112×112 and 112×112 in its ImageNet form). The whole-batch
//! path streams each transformed operand through memory once per product: with 64 channels
//! the sixteen products are thin and the transformed input and output (16/4 and 16/4 of the
//! maps, tens of MiB) cost more than the multiplications saved (docs/performance.md). Here
//! each sample is cut into bands of a few tile rows, and each band goes through the input
//! transform, the sixteen products and the output transform on one core while its data
//! stays in that core's cache; the transformed kernel, small on these layers, is packed once
//! for all the bands.
//!
//! The weight gradient is summed band by band within each of a fixed number of spans of
//! samples, then over the spans in order: the cuts follow the shapes only, so the bits are
//! the same for any thread count. A band's input gradient is added onto its rows (two rows
//! overlap the next band's) band after band.

use super::*;
use crate::nn::gemm::{gemm_here, PackedA};

/// Floats of a band's transformed input and output together: 512 KiB, half of a Zen 5
/// core's L2, so that they stay there beside the products' packed panels.
const BAND_BUDGET: usize = 1 << 17;

/// Spans of samples whose weight gradients are summed apart, then in order.
const SPANS: usize = 8;

/// Floats of the spans' sums that one task adds up (64 KiB).
const SUM_BLOCK: usize = 1 << 14;

/// How many multiply-adds each transformed value must feed for a layer below the
/// whole-batch path's [`MIN_MACS_PER_VALUE`] to take this path (see [`applies`]). Measured
/// against the direct path on VGG-16 (`cargo bench --bench conv -- layers`, batch 32, and
/// `-- layers224`, batch 2): 64→64 (32) 23.6–24.2 against 25.6–25.9 ms at 32×32 and 73–80
/// against 245–249 ms at 224×224; 64→128 (43) and 128→128 (64) at 16×16 about a fifth
/// faster.
const MIN_MACS_PER_VALUE_BANDED: usize = 32;

/// Tiles a sample must have: a band's products have one column per tile, and fewer than the
/// kernel's 32-column panel leave it part empty (VGG's 8×8 and 4×4 maps have 16 and 4; the
/// whole-batch path's products have the chunk's tiles side by side).
const MIN_TILES: usize = 32;

/// Whether the convolution `g` takes the banded path: a 3×3 stride-1 layer with outputs of
/// 3×3 or more (as for the whole-batch path), narrower than the whole-batch path takes but
/// with `C·O/(C + O)` of at least [`MIN_MACS_PER_VALUE_BANDED`], and with at least
/// [`MIN_TILES`] tiles per sample.
pub(in super::super) fn applies(g: &ConvGeom) -> bool {
    let (th, tw) = tiles(g);
    fits(g, MIN_MACS_PER_VALUE_BANDED) && !super::applies(g) && th * tw >= MIN_TILES
}

/// The bands of tile rows each sample is cut into: as many rows as fit [`BAND_BUDGET`],
/// evened out over the sample.
fn bands(g: &ConvGeom) -> Vec<Grid> {
    let (th, tw) = tiles(g);
    let fit = (BAND_BUDGET / (POS * (g.c + g.o) * tw)).clamp(1, th);
    let count = th.div_ceil(fit);
    let rows = th.div_ceil(count);
    (0..th)
        .step_by(rows)
        .map(|r| Grid {
            rows: r..(r + rows).min(th),
            tw,
        })
        .collect()
}

/// `U`'s sixteen positions packed as the products' left operands: `[O, C]` each, or
/// transposed (`[C, O]`, for the input gradient).
fn packed(u: &[f32], g: &ConvGeom, transposed: bool) -> Vec<PackedA> {
    let oc = g.o * g.c;
    (0..POS)
        .into_par_iter()
        .map(|pos| {
            let up = Mat::new(&u[pos * oc..][..oc], g.o, g.c);
            PackedA::new(if transposed { up.t() } else { up })
        })
        .collect()
}

/// The forward pass, as [`super::forward`]: sample by sample over the pool, band by band.
pub(in super::super) fn forward(layer: Layer) -> (Vec<f32>, Saved) {
    let (xs, ws, bs, g, relu) = layer.parts();
    let (chw, op) = (g.c * g.h * g.w, g.o * g.p());
    let u = kernel_transform(ws, g);
    let pu = packed(&u, g, false);
    let grids = bands(g);
    let mut out = zeros(g.n * op);
    out.par_chunks_mut(op)
        .zip(xs.par_chunks(chw))
        .for_each(|(out, x)| {
            let (mut v, mut m) = (Vec::new(), Vec::new());
            // Each transform's own buffers, kept from band to band.
            let [mut s_in, mut s_out] = [(); 2].map(|_| Scratch::default());
            for grid in &grids {
                let t_len = grid.tiles();
                input_transform(x, g, 1, grid, Threads::Here(&mut s_in), &mut v);
                m.resize(POS * g.o * t_len, 0.0);
                for (pos, a) in pu.iter().enumerate() {
                    let b = Mat::new(&v[pos * g.c * t_len..][..g.c * t_len], g.c, t_len);
                    gemm_here(a, b, &mut m[pos * g.o * t_len..][..g.o * t_len], false);
                }
                output_transform(&m, g, grid, Threads::Here(&mut s_out), bs, relu, out);
            }
        });
    (out, Saved { u, v: None })
}

/// The backward pass, as [`super::backward`]: spans of samples over the pool, each sample
/// band by band.
pub(in super::super) fn backward(
    xs: &[f32],
    saved: &Saved,
    gout: &[f32],
    g: &ConvGeom,
    gw: &mut Vec<f32>,
    gx: Option<&mut [f32]>,
) {
    let (chw, op, oc) = (g.c * g.h * g.w, g.o * g.p(), g.o * g.c);
    let grids = bands(g);
    let put = match gx {
        Some(_) => packed(&saved.u, g, true),
        None => Vec::new(),
    };
    let span = g.n.div_ceil(SPANS).max(1);
    let spans = g.n.div_ceil(span);
    let gx_spans: Vec<Option<&mut [f32]>> = match gx {
        Some(gx) => gx.chunks_mut(span * chw).map(Some).collect(),
        None => (0..spans).map(|_| None).collect(),
    };
    let dus: Vec<Vec<f32>> = gx_spans
        .into_par_iter()
        .enumerate()
        .map(|(si, mut gx)| {
            let mut du = vec![0.0; POS * oc];
            let (mut v, mut dm, mut dv) = (Vec::new(), Vec::new(), Vec::new());
            let [mut s_in, mut s_dm, mut s_dx] = [(); 3].map(|_| Scratch::default());
            let samples = si * span..(si * span + span).min(g.n);
            for (k, j) in samples.clone().enumerate() {
                let (x, dy) = (&xs[j * chw..][..chw], &gout[j * op..][..op]);
                for (b, grid) in grids.iter().enumerate() {
                    let t_len = grid.tiles();
                    input_transform(x, g, 1, grid, Threads::Here(&mut s_in), &mut v);
                    output_adjoint(dy, g, 1, grid, Threads::Here(&mut s_dm), &mut dm);
                    let first = k == 0 && b == 0;
                    for pos in 0..POS {
                        let dmp = Mat::new(&dm[pos * g.o * t_len..][..g.o * t_len], g.o, t_len);
                        let vp = Mat::new(&v[pos * g.c * t_len..][..g.c * t_len], g.c, t_len);
                        gemm_here(dmp, vp.t(), &mut du[pos * oc..][..oc], !first);
                    }
                    let Some(gx) = gx.as_deref_mut() else {
                        continue;
                    };
                    dv.resize(POS * g.c * t_len, 0.0);
                    for (pos, a) in put.iter().enumerate() {
                        let dmp = Mat::new(&dm[pos * g.o * t_len..][..g.o * t_len], g.o, t_len);
                        gemm_here(a, dmp, &mut dv[pos * g.c * t_len..][..g.c * t_len], false);
                    }
                    let gx = &mut gx[k * chw..][..chw];
                    input_adjoint(&dv, g, grid, Threads::Here(&mut s_dx), gx);
                }
            }
            du
        })
        .collect();
    // The spans' sums added in span order, blocks of floats over the pool (the same order
    // for every float; on the calling thread this was half a millisecond of a VGG-16 step).
    let mut dus = dus.into_iter();
    let mut du = dus.next().unwrap_or_else(|| vec![0.0; POS * oc]);
    let rest: Vec<Vec<f32>> = dus.collect();
    du.par_chunks_mut(SUM_BLOCK).enumerate().for_each(|(i, d)| {
        for r in &rest {
            add_into(d, &r[i * SUM_BLOCK..][..d.len()]);
        }
    });
    kernel_adjoint(&du, g, gw);
}
