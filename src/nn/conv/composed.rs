//! Implementations from public dfdx ops only: they run on any [`Device`], CUDA included, and
//! dfdx derives their backward passes. [`conv2d`](super::conv2d) and the pools dispatch here
//! on every device but the CPU; they are public so the CPU can be checked against them.

use super::*;

/// [`super::conv2d`] as one gather (im2col) and one matmul.
pub fn conv2d<D, T, TX>(
    x: Tensor4<D, TX>,
    weight: Tensor4<D, T>,
    bias: Vector<D, T>,
    stride: usize,
    padding: usize,
) -> Tensor4<D, T>
where
    D: Device<f32>,
    T: Tape<f32, D> + Merge<TX>,
    TX: Tape<f32, D>,
{
    let g = ConvGeom::new(*x.shape(), *weight.shape(), bias.shape().0, stride, padding);
    conv2d_geom(x, weight, bias, g)
}

/// [`super::max_pool2d`] as a gather of every window and a max over it.
pub fn max_pool2d<D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    kernel: usize,
    stride: usize,
) -> Tensor4<D, T> {
    let g = PoolGeom::windows(*x.shape(), kernel, stride);
    pool(x, g, PoolKind::Max)
}

/// [`super::avg_pool2d`] as a gather of every window, a sum and a scale.
pub fn avg_pool2d<D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    kernel: usize,
    stride: usize,
) -> Tensor4<D, T> {
    let g = PoolGeom::windows(*x.shape(), kernel, stride);
    pool(x, g, PoolKind::Avg)
}

/// [`super::adaptive_avg_pool2d`]; bins of unequal size are padded with a zero element
/// and scaled by their own size.
pub fn adaptive_avg_pool2d<D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    out_h: usize,
    out_w: usize,
) -> Tensor4<D, T> {
    let g = PoolGeom::adaptive(*x.shape(), out_h, out_w);
    pool(x, g, PoolKind::Avg)
}

pub(super) fn conv2d_geom<D, T, TX>(
    x: Tensor4<D, TX>,
    weight: Tensor4<D, T>,
    bias: Vector<D, T>,
    g: ConvGeom,
) -> Tensor4<D, T>
where
    D: Device<f32>,
    T: Tape<f32, D> + Merge<TX>,
    TX: Tape<f32, D>,
{
    let dev = x.device().clone();
    let (n, o, p, k) = (g.n, g.o, g.p(), g.k());
    let chw = g.c * g.h * g.w;
    // Each sample's row gets a 0 (read by padding) and a 1 (multiplies the bias).
    let ext = dev.tensor_from_vec([0.0, 1.0].repeat(n), (n, 2));
    let xe = (x.reshape_like(&(n, chw)), ext).concat_along(Axis::<1>);
    let idx = dev
        .tensor_from_vec(conv_index(&g), (p * (k + 1),))
        .broadcast_like::<_, Axis<0>>(&(n, p * (k + 1)));
    let cols = xe
        .gather::<(usize, usize), _>(idx)
        .reshape_like(&(n * p, k + 1));
    let wb = (weight.reshape_like(&(o, k)), bias.reshape_like(&(o, 1))).concat_along(Axis::<1>);
    // The traced parameters stay on the left so their tape absorbs the input's.
    wb.matmul(cols.permute::<_, Axes2<1, 0>>())
        .reshape_like(&(o, n, p))
        .permute::<_, Axes3<1, 0, 2>>()
        .reshape_like(&(n, o, g.ho, g.wo))
}

/// im2col gather indices into a sample row `[x (C·H·W) | 0 | 1]`: for each output pixel,
/// its receptive field in `(c, ki, kj)` order, then the bias's constant one.
fn conv_index(g: &ConvGeom) -> Vec<usize> {
    let chw = g.c * g.h * g.w;
    let mut idx = Vec::with_capacity(g.p() * (g.k() + 1));
    for oy in 0..g.ho {
        for ox in 0..g.wo {
            for c in 0..g.c {
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        idx.push(match (g.src(oy, ki, g.h), g.src(ox, kj, g.w)) {
                            (Some(iy), Some(ix)) => (c * g.h + iy) * g.w + ix,
                            _ => chw,
                        });
                    }
                }
            }
            idx.push(chw + 1);
        }
    }
    idx
}

pub(super) fn pool<D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    g: PoolGeom,
    kind: PoolKind,
) -> Tensor4<D, T> {
    let dev = x.device().clone();
    let (nc, hw, p, kmax) = (g.n * g.c, g.h * g.w, g.p(), g.bh.widest() * g.bw.widest());
    let out = g.out_shape();
    // Cells narrower than the widest read slot `hw`, a zero appended to every plane; only
    // adaptive bins have such cells, and only averages use them (max windows are uniform).
    let mut idx = Vec::with_capacity(p * kmax);
    let mut inv = Vec::with_capacity(p);
    for (i, j) in g.cells() {
        let before = idx.len();
        idx.extend(g.cell(i, j));
        inv.push(1.0 / (idx.len() - before) as f32);
        idx.resize(before + kmax, hw);
    }
    let idx = dev
        .tensor_from_vec(idx, (p * kmax,))
        .broadcast_like::<_, Axis<0>>(&(nc, p * kmax));
    let planes = x.reshape_like(&(nc, hw));
    match kind {
        PoolKind::Max => planes
            .gather::<(usize, usize), _>(idx)
            .reshape_like(&(nc, p, kmax))
            .max::<(usize, usize), Axis<2>>(),
        PoolKind::Avg => {
            let zero = dev.zeros_like(&(nc, 1));
            let inv = dev
                .tensor_from_vec(inv, (p,))
                .broadcast_like::<_, Axis<0>>(&(nc, p));
            (planes, zero)
                .concat_along(Axis::<1>)
                .gather::<(usize, usize), _>(idx)
                .reshape_like(&(nc, p, kmax))
                .sum::<(usize, usize), Axis<2>>()
                * inv
        }
    }
    .reshape_like(&out)
}
