//! Convolution, pooling, flatten and dropout on run-time-sized NCHW tensors, with PyTorch's
//! layouts and semantics, for convolutional models (VGG-style). dfdx 0.13 ships `conv2d` and
//! `pool2d` only on nightly Rust, so cfpipe owns these ops.
//!
//! Each of `conv2d`, `max_pool2d`, `avg_pool2d` and `adaptive_avg_pool2d` has two
//! implementations behind one function, chosen by the device type:
//! - the **composed** path ([`composed`]) uses public dfdx ops only, so it runs on every device,
//!   CUDA included, and dfdx derives its backward pass. im2col and pooling windows are one
//!   `gather` from the flattened input through a precomputed index tensor (broadcast over the
//!   batch, so the index costs one sample's worth of memory); padding reads an extra zero
//!   element appended to each row, and the convolution bias rides along as an extra constant-one
//!   column, so a convolution is a single matmul with the weight viewed as `[O, C·kh·kw + 1]`.
//! - the **CPU fast path**, taken when the device is dfdx's `Cpu`, computes on host buffers and
//!   records its own backward op on the tape (`Tape::add_backward_op`). dfdx's CPU `gather`
//!   walks N-d indices one element at a time and costs more than the gemm it feeds, and dfdx's
//!   gemm stops at AVX2 on stable Rust. Here im2col and col2im are strided loops, the products
//!   run on a packed AVX-512 kernel where the CPU has one (dfdx's matmul otherwise, so any CPU
//!   works), and each thread takes a span of the batch with its own buffers. Columns are built
//!   per chunk of samples and rebuilt in the backward pass rather than kept, so a layer holds
//!   little beyond a copy of its input between the passes. For stride 1 and at least 64 input
//!   channels the input gradient is computed as what it is, a convolution (of the output gradient, with the kernel rotated and its channel
//!   axes swapped), one product over `O·kh·kw` with no col2im scatter; other strides take
//!   col2im. Sums over threads are added in a fixed order, so results are bit-identical from
//!   run to run. The kernel is the module's only `unsafe` code.
//!
//! Tapes: outputs carry the parameters' tape `T`, which absorbs the input's tape `TX`
//! (`T: Merge<TX>`). Parameters are traced in training; an untraced input (`NoneTape`, the first
//! layer) gets no gradient and the fast path then skips the col2im half of the backward pass.
//! Like the MLP code, parameters may live as flat 1-D tensors: `w.reshape_like(&(o, c, kh, kw))`
//! of a contiguous tensor keeps its id, so `grads.get(&flat_w)` still finds the gradient.
//!
//! Every backward pass, composed or hand-written, is checked against finite differences in
//! `tests/conv_ops.rs`: dfdx 0.13 has had wrong gradients on non-contiguous inputs
//! (`log_softmax`), and the composed convolution relies on a permute followed by a copy.

use super::mlp::{Matrix, Vector};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::any::{Any, TypeId};
use std::ops::Range;

/// `[N, C, H, W]`, row-major (NCHW), like PyTorch.
pub type Tensor4<D, T = NoneTape> = Tensor<(usize, usize, usize, usize), f32, D, T>;

/// Whether the ops in this module take the host fast path on device `D` (dfdx's `Cpu`).
pub fn uses_cpu_fast_path<D: 'static>() -> bool {
    TypeId::of::<D>() == TypeId::of::<Cpu>()
}

/// 2-D convolution (cross-correlation, as in PyTorch's `F.conv2d`): `x [N, C, H, W]`,
/// `weight [O, C, kh, kw]`, `bias [O]`, the same `stride` and zero `padding` on both spatial
/// axes. Returns `[N, O, Ho, Wo]` with `Ho = (H + 2·padding − kh) / stride + 1` (floored).
///
/// Panics on mismatched shapes, `stride == 0` or a kernel larger than the padded input.
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
    if uses_cpu_fast_path::<D>() {
        host::conv2d(x, weight, bias, g)
    } else {
        composed::conv2d_geom(x, weight, bias, g)
    }
}

/// Max pooling over `kernel × kernel` windows every `stride` pixels, no padding; output sizes
/// floor like PyTorch's (`(H − kernel) / stride + 1`). Gradients go to the first maximum of a
/// window on the CPU path (as in PyTorch) and to every tied maximum on the composed path.
pub fn max_pool2d<D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    kernel: usize,
    stride: usize,
) -> Tensor4<D, T> {
    let g = PoolGeom::windows(*x.shape(), kernel, stride);
    if uses_cpu_fast_path::<D>() {
        host::pool(x, g, PoolKind::Max)
    } else {
        composed::pool(x, g, PoolKind::Max)
    }
}

/// Average pooling over `kernel × kernel` windows every `stride` pixels, no padding, floored
/// output sizes (PyTorch's `F.avg_pool2d` with its defaults).
pub fn avg_pool2d<D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    kernel: usize,
    stride: usize,
) -> Tensor4<D, T> {
    let g = PoolGeom::windows(*x.shape(), kernel, stride);
    if uses_cpu_fast_path::<D>() {
        host::pool(x, g, PoolKind::Avg)
    } else {
        composed::pool(x, g, PoolKind::Avg)
    }
}

/// PyTorch's `F.adaptive_avg_pool2d`: output cell `i` of an axis of length `L` averages input
/// rows `floor(i·L/out) .. ceil((i+1)·L/out)`, so bins may differ in size and overlap (and an
/// output larger than the input repeats values).
pub fn adaptive_avg_pool2d<D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    out_h: usize,
    out_w: usize,
) -> Tensor4<D, T> {
    let g = PoolGeom::adaptive(*x.shape(), out_h, out_w);
    if uses_cpu_fast_path::<D>() {
        host::pool(x, g, PoolKind::Avg)
    } else {
        composed::pool(x, g, PoolKind::Avg)
    }
}

/// `[N, C, H, W] → [N, C·H·W]` in PyTorch's order (`torch.flatten(x, 1)`). Free for
/// contiguous inputs: the result shares data and gradient id with `x`.
pub fn flatten<D: Device<f32>, T: Tape<f32, D>>(x: Tensor4<D, T>) -> Matrix<D, T> {
    let (n, c, h, w) = *x.shape();
    x.reshape_like(&(n, c * h * w))
}

/// Inverted dropout: with `training`, each element is zeroed with probability `p` and the
/// survivors are scaled by `1/(1−p)`, so the expectation is unchanged; without it, identity.
/// The mask is a pure function of `seed` and the element count ([`dropout_mask`]), so a run is
/// reproducible whatever the device's own RNG state.
pub fn dropout<S: Shape, D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor<S, f32, D, T>,
    p: f32,
    seed: u64,
    training: bool,
) -> Tensor<S, f32, D, T> {
    assert!(
        (0.0..=1.0).contains(&p),
        "dropout probability {p} outside [0, 1]"
    );
    if !training || p == 0.0 {
        return x;
    }
    let shape = *x.shape();
    let mask = x
        .device()
        .tensor_from_vec(dropout_mask(shape.num_elements(), p, seed), shape);
    x * mask
}

/// The multiplier [`dropout`] applies, element by element in row-major order: `0` (dropped)
/// or `1/(1−p)`.
pub fn dropout_mask(len: usize, p: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // p = 1 drops everything; 1/(1−p) would be infinite and turn 0·∞ into NaN downstream.
    let keep = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    (0..len)
        .map(|_| if rng.gen::<f32>() < p { 0.0 } else { keep })
        .collect()
}

/// Sizes of one convolution, checked once up front.
#[derive(Debug, Clone, Copy)]
struct ConvGeom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

/// Floats of im2col columns the CPU path materialises at once per thread: 4 MiB, big enough
/// for an efficient gemm, small enough to stay cache-friendly and to bound memory on large
/// batches.
const COLS_BUDGET: usize = 1 << 20;

/// Revision of the conv CPU kernels' rounding, in every conv model's train key (see
/// CHANGELOG.md): absent (revision 1) until the blocked kernel became the only one and the
/// batch split stopped depending on the thread count; 2 since.
pub const CONV_KERNELS: u32 = 2;

/// How many spans the CPU path cuts a batch into at most (see [`ConvGeom::split`]).
const SPANS: usize = 8;

/// Input channels from which the CPU path computes a stride-1 input gradient as a transposed
/// convolution rather than by col2im. That product has only `C` rows, so each element of its
/// (im2col'd, packed) right operand is reused `C` times; with few channels packing dominates
/// and col2im's product (`C·kh·kw` rows, inner dimension `O`) is faster. Measured with
/// `cargo bench --bench conv`: slower at 16 channels (`small_cnn`), faster at 64.
const TRANSPOSED_MIN_CHANNELS: usize = 64;

impl ConvGeom {
    fn new(
        (n, c, h, w): (usize, usize, usize, usize),
        (o, wc, kh, kw): (usize, usize, usize, usize),
        bias_len: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        assert_eq!(
            wc, c,
            "conv2d: weight [O, C, kh, kw] has C = {wc}, input has {c} channels"
        );
        assert_eq!(
            bias_len, o,
            "conv2d: bias has {bias_len} entries for {o} filters"
        );
        assert!(c > 0 && h > 0 && w > 0, "conv2d: empty input {c}×{h}×{w}");
        assert!(stride > 0, "conv2d: stride must be positive");
        assert!(kh > 0 && kw > 0, "conv2d: empty kernel");
        assert!(
            h + 2 * pad >= kh && w + 2 * pad >= kw,
            "conv2d: kernel {kh}×{kw} larger than padded input {}×{}",
            h + 2 * pad,
            w + 2 * pad
        );
        let ho = (h + 2 * pad - kh) / stride + 1;
        let wo = (w + 2 * pad - kw) / stride + 1;
        ConvGeom {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            stride,
            pad,
            ho,
            wo,
        }
    }

    /// The convolution that computes this one's input gradient from its output gradient, where
    /// that is a plain convolution: stride 1, a square kernel and `padding < kernel`. It reads
    /// the output gradient `[N, O, Ho, Wo]` padded by `kernel − 1 − padding`, and its weight is
    /// this one's rotated by 180° with the channel axes swapped. Every input pixel then gathers
    /// its gradient in one product over `O·kh·kw`, instead of a product over `O` followed by
    /// col2im's scattered adds.
    fn transposed(&self) -> Option<ConvGeom> {
        (self.stride == 1 && self.kh == self.kw && self.pad < self.kh).then(|| ConvGeom {
            c: self.o,
            h: self.ho,
            w: self.wo,
            o: self.c,
            pad: self.kh - 1 - self.pad,
            ho: self.h,
            wo: self.w,
            ..*self
        })
    }

    /// Length of one receptive field, `C·kh·kw`.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output pixels per sample.
    fn p(&self) -> usize {
        self.ho * self.wo
    }

    /// Input position read by output position `o` along an axis for kernel offset `k`, if it is
    /// inside the unpadded input of length `len`.
    fn src(&self, o: usize, k: usize, len: usize) -> Option<usize> {
        (o * self.stride + k)
            .checked_sub(self.pad)
            .filter(|&i| i < len)
    }

    /// Output columns `lo..hi` whose input column for kernel offset `kj` is inside the input.
    fn valid_cols(&self, kj: usize) -> Range<usize> {
        let lo = self.pad.saturating_sub(kj).div_ceil(self.stride);
        let hi = if self.w + self.pad > kj {
            ((self.w + self.pad - kj - 1) / self.stride + 1).min(self.wo)
        } else {
            0
        };
        lo..hi.max(lo)
    }

    /// How the CPU path splits the batch: `(chunk, span)` samples, where a chunk's columns fit
    /// the budget, and each thread takes one span of whole chunks.
    ///
    /// The weight gradient is summed per span, then over spans in order, so the split fixes
    /// its rounding: it depends on the shapes only, never on the thread count, or a 2-core
    /// laptop and a 16-core cluster node would train different bits from the same seed.
    /// [`SPANS`] spans keep that many threads busy.
    fn split(&self) -> (usize, usize) {
        let fit = COLS_BUDGET / (self.k() * self.p()).max(1);
        let chunk = fit.min(self.n.div_ceil(SPANS)).max(1);
        (chunk, self.n.div_ceil(chunk).div_ceil(SPANS).max(1) * chunk)
    }
}

/// Which reduction a pooling window applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolKind {
    Max,
    Avg,
}

/// Per-axis pooling bins: output index `i` covers input indices `start[i]..end[i]`.
#[derive(Debug, Clone)]
struct Bins {
    start: Vec<usize>,
    end: Vec<usize>,
}

impl Bins {
    fn windows(len: usize, kernel: usize, stride: usize) -> Self {
        assert!(
            kernel > 0 && stride > 0,
            "pooling: kernel and stride must be positive"
        );
        assert!(
            len >= kernel,
            "pooling: kernel {kernel} larger than input side {len}"
        );
        let out = (len - kernel) / stride + 1;
        let start: Vec<usize> = (0..out).map(|i| i * stride).collect();
        let end = start.iter().map(|s| s + kernel).collect();
        Bins { start, end }
    }

    fn adaptive(len: usize, out: usize) -> Self {
        assert!(out > 0, "adaptive pooling: output size must be positive");
        assert!(len > 0, "adaptive pooling: empty input");
        Bins {
            start: (0..out).map(|i| i * len / out).collect(),
            end: (0..out).map(|i| ((i + 1) * len).div_ceil(out)).collect(),
        }
    }

    fn len(&self) -> usize {
        self.start.len()
    }

    fn range(&self, i: usize) -> Range<usize> {
        self.start[i]..self.end[i]
    }

    fn widest(&self) -> usize {
        (0..self.len())
            .map(|i| self.range(i).len())
            .max()
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
struct PoolGeom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    bh: Bins,
    bw: Bins,
}

impl PoolGeom {
    fn windows((n, c, h, w): (usize, usize, usize, usize), kernel: usize, stride: usize) -> Self {
        PoolGeom {
            n,
            c,
            h,
            w,
            bh: Bins::windows(h, kernel, stride),
            bw: Bins::windows(w, kernel, stride),
        }
    }

    fn adaptive((n, c, h, w): (usize, usize, usize, usize), oh: usize, ow: usize) -> Self {
        PoolGeom {
            n,
            c,
            h,
            w,
            bh: Bins::adaptive(h, oh),
            bw: Bins::adaptive(w, ow),
        }
    }

    fn out_shape(&self) -> (usize, usize, usize, usize) {
        (self.n, self.c, self.bh.len(), self.bw.len())
    }

    /// Output cells per plane.
    fn p(&self) -> usize {
        self.bh.len() * self.bw.len()
    }

    /// Input elements of output cell `(i, j)` in one plane, row-major.
    fn cell(&self, i: usize, j: usize) -> impl Iterator<Item = usize> + '_ {
        self.cell_rows(i, j).flatten()
    }

    /// Output cells `(i, j)` of a plane, row-major.
    fn cells(&self) -> impl Iterator<Item = (usize, usize)> {
        let ow = self.bw.len();
        (0..self.bh.len()).flat_map(move |i| (0..ow).map(move |j| (i, j)))
    }

    /// The same elements as [`Self::cell`], one contiguous range per input row.
    fn cell_rows(&self, i: usize, j: usize) -> impl Iterator<Item = Range<usize>> + '_ {
        let (w, cols) = (self.w, self.bw.range(j));
        self.bh
            .range(i)
            .map(move |y| y * w + cols.start..y * w + cols.end)
    }
}

/// Implementations from public dfdx ops only: they run on any [`Device`], CUDA included, and
/// dfdx derives their backward passes. [`conv2d`](super::conv2d) and the pools dispatch here
/// on every device but the CPU; they are public so the CPU can be checked against them.
pub mod composed {
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
}

/// The CPU fast path: loops and matrix products on host buffers, with backward ops written by
/// hand. Only reached when `D` is `Cpu` (checked by [`uses_cpu_fast_path`]); the entry points
/// stay generic over `D` so that the dispatching functions compile for every device.
mod host {
    use super::*;

    /// A CPU gradient buffer as a `Vec`. dfdx exposes gradients only as `D::Vec`; on `Cpu`
    /// that is a vector wrapper that derefs to `Vec<f32>`.
    fn host_vec<D: Storage<f32>>(v: &mut D::Vec) -> &mut Vec<f32> {
        let any: &mut dyn Any = v;
        let cpu_vec = any
            .downcast_mut::<<Cpu as Storage<f32>>::Vec>()
            .expect("the CPU fast path runs on the Cpu device only");
        cpu_vec
    }

    /// Logical contents of a contiguous tensor (`copy_into` copies physical memory).
    fn host_copy<S: Shape, D: Device<f32>>(t: &Tensor<S, f32, D>) -> Vec<f32> {
        let mut v = vec![0.0; t.shape().num_elements()];
        t.copy_into(&mut v);
        v
    }

    fn add_into(dst: &mut [f32], src: &[f32]) {
        dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
    }

    pub(super) fn conv2d<D, T, TX>(
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
        let (x, tx) = x.contiguous().split_tape();
        let (w, tw) = weight.contiguous().split_tape();
        let (b, tb) = bias.contiguous().split_tape();
        let dev = x.device().clone();
        let cpu = as_cpu(&dev).clone();
        let (o, p, k, chw) = (g.o, g.p(), g.k(), g.c * g.h * g.w);
        let (chunk, span) = g.split();
        let xs = host_copy(&x);
        let bs = host_copy(&b);
        let ws = host_copy(&w);

        // Each thread takes a span of samples, chunk by chunk, with its own buffers; the ops
        // inside are parallel too, which rayon folds into the same thread when all are busy.
        let mut out = vec![0.0; g.n * o * p];
        out.par_chunks_mut(span * o * p)
            .zip(xs.par_chunks(span * chw))
            .for_each(|(out, xs)| {
                let mut sc = Scratch::default();
                for (out, xs) in out.chunks_mut(chunk * o * p).zip(xs.chunks(chunk * chw)) {
                    let ns = xs.len() / chw;
                    let m = ns * p;
                    im2col(xs, &g, ns, &mut sc.cols);
                    let w = Mat::new(&ws, o, k);
                    let cols = Mat::new(&sc.cols, k, m);
                    if ns == 1 {
                        // One sample's y is its output plane stack already: start from the
                        // bias and add the product in place.
                        for (row, &b) in out.chunks_exact_mut(p).zip(&bs) {
                            row.fill(b);
                        }
                        gemm(&cpu, w, cols, out, true, &mut sc.packed);
                        continue;
                    }
                    sc.y.resize(o * m, 0.0);
                    gemm(&cpu, w, cols, &mut sc.y, false, &mut sc.packed);
                    // y is [O, samples·P]; the output wants [samples, O, P], plus the bias.
                    for (j, dst) in out.chunks_exact_mut(o * p).enumerate() {
                        for (oc, row) in dst.chunks_exact_mut(p).enumerate() {
                            let src = &sc.y[oc * m + j * p..][..p];
                            row.iter_mut().zip(src).for_each(|(d, v)| *d = v + bs[oc]);
                        }
                    }
                }
            });
        let out: Tensor4<D> = dev.tensor_from_vec(out, (g.n, o, g.ho, g.wo));

        let mut tape = tw.merge(tb).merge(tx);
        let (x_id, w_id, b_id, out_id) = (x.ghost(), w.ghost(), b.ghost(), out.ghost());
        let need_x = TX::OWNS_TAPE;
        tape.add_backward_op(move |grads| {
            // Moved out (and back) so the other gradients can be borrowed meanwhile.
            let gout = std::mem::take(host_vec::<D>(grads.get_or_alloc_mut(&out_id)?));
            let gb = host_vec::<D>(grads.get_or_alloc_mut(&b_id)?);
            for (i, plane) in gout.chunks_exact(p).enumerate() {
                gb[i % o] += plane.iter().sum::<f32>();
            }
            let spans = g.n.div_ceil(span);
            let gx_spans: Vec<Option<&mut [f32]>> = if need_x {
                let gx = host_vec::<D>(grads.get_or_alloc_mut(&x_id)?);
                gx.chunks_mut(span * chw).map(Some).collect()
            } else {
                (0..spans).map(|_| None).collect()
            };
            // dX through the transposed convolution where the geometry allows (see
            // `ConvGeom::transposed`), with the kernel rotated by 180° and its channel axes
            // swapped: `[C, O·kh·kw]`.
            let gt = g.transposed().filter(|_| g.c >= TRANSPOSED_MIN_CHANNELS);
            let wrot: Vec<f32> = match gt {
                Some(_) if need_x => {
                    let (kk, kh, kw) = (g.kh * g.kw, g.kh, g.kw);
                    let mut r = vec![0.0; g.c * o * kk];
                    for (ci, row) in r.chunks_exact_mut(o * kk).enumerate() {
                        for (oc, taps) in row.chunks_exact_mut(kk).enumerate() {
                            let src = &ws[(oc * g.c + ci) * kk..][..kk];
                            for (t, v) in taps.iter_mut().enumerate() {
                                let (ki, kj) = (t / kw, t % kw);
                                *v = src[(kh - 1 - ki) * kw + (kw - 1 - kj)];
                            }
                        }
                    }
                    r
                }
                _ => Vec::new(),
            };
            // Each thread sums its span's weight gradient; the sums are added at the end, in
            // span order, so the result does not depend on how rayon schedules the spans.
            let gws: Vec<Vec<f32>> = gx_spans
                .into_par_iter()
                .enumerate()
                .map(|(si, mut gx)| {
                    let (mut sc, mut gw) = (Scratch::default(), vec![0.0; o * k]);
                    let samples = si * span..(si * span + span).min(g.n);
                    for s0 in samples.clone().step_by(chunk) {
                        let s = s0..(s0 + chunk).min(samples.end);
                        let m = s.len() * p;
                        im2col(&xs[s.start * chw..s.end * chw], &g, s.len(), &mut sc.cols);
                        // The output gradient laid out like y: [O, samples·P] (one sample's
                        // is a slice of gout as it is).
                        let gs = &gout[s.start * o * p..s.end * o * p];
                        let g2 = if s.len() == 1 {
                            Mat::new(gs, o, m)
                        } else {
                            {
                                sc.y.clear();
                                for oc in 0..o {
                                    for n in 0..s.len() {
                                        sc.y.extend_from_slice(&gs[(n * o + oc) * p..][..p]);
                                    }
                                }
                            };
                            Mat::new(&sc.y, o, m)
                        };
                        let cols = Mat::new(&sc.cols, k, m).t();
                        gemm(&cpu, g2, cols, &mut gw, true, &mut sc.packed);
                        let Some(gx) = gx.as_deref_mut() else {
                            continue;
                        };
                        let offset = (s.start - samples.start) * chw;
                        let gx = &mut gx[offset..offset + s.len() * chw];
                        if let Some(gt) = &gt {
                            let (kt, mt) = (gt.k(), s.len() * gt.p());
                            im2col(gs, gt, s.len(), &mut sc.cols);
                            let wr = Mat::new(&wrot, g.c, kt);
                            let cols = Mat::new(&sc.cols, kt, mt);
                            if s.len() == 1 {
                                gemm(&cpu, wr, cols, gx, true, &mut sc.packed);
                            } else {
                                // [C, samples·H·W] → gx's [samples, C, H·W].
                                sc.dcols.resize(g.c * mt, 0.0);
                                gemm(&cpu, wr, cols, &mut sc.dcols, false, &mut sc.packed);
                                let hw = g.h * g.w;
                                for (j, gx) in gx.chunks_exact_mut(chw).enumerate() {
                                    for (ci, gx) in gx.chunks_exact_mut(hw).enumerate() {
                                        add_into(gx, &sc.dcols[ci * mt + j * hw..][..hw]);
                                    }
                                }
                            }
                        } else {
                            sc.dcols.resize(k * m, 0.0);
                            let wt = Mat::new(&ws, o, k).t();
                            gemm(&cpu, wt, g2, &mut sc.dcols, false, &mut sc.packed);
                            col2im(&sc.dcols, &g, s.len(), gx);
                        }
                    }
                    gw
                })
                .collect();
            let gw_host = host_vec::<D>(grads.get_or_alloc_mut(&w_id)?);
            for gw in &gws {
                add_into(gw_host, gw);
            }
            *host_vec::<D>(grads.get_or_alloc_mut(&out_id)?) = gout;
            Ok(())
        });
        out.put_tape(tape)
    }

    /// The `Cpu` behind a device type that is `Cpu` (see [`uses_cpu_fast_path`]).
    fn as_cpu<D: 'static>(dev: &D) -> &Cpu {
        let any: &dyn Any = dev;
        any.downcast_ref::<Cpu>()
            .expect("the CPU fast path runs on the Cpu device only")
    }

    /// One thread's buffers for a convolution, reused across its chunks.
    #[derive(Default)]
    struct Scratch {
        cols: Vec<f32>,
        /// The output `[O, samples·P]`, or its gradient in the backward pass.
        y: Vec<f32>,
        dcols: Vec<f32>,
        packed: (Vec<f32>, Vec<f32>),
    }

    /// A matrix in a host buffer: row-major `[rows, cols]`, or with `transposed` the transpose
    /// of a row-major `[cols, rows]` buffer (a free view, as the backward pass needs).
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Mat<'a> {
        pub data: &'a [f32],
        pub rows: usize,
        pub cols: usize,
        pub transposed: bool,
    }

    impl<'a> Mat<'a> {
        pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
            assert_eq!(data.len(), rows * cols);
            Mat {
                data,
                rows,
                cols,
                transposed: false,
            }
        }

        pub fn t(self) -> Self {
            Mat {
                rows: self.cols,
                cols: self.rows,
                transposed: !self.transposed,
                ..self
            }
        }

        /// Strides of the logical `(row, col)` in `data`.
        pub fn strides(&self) -> (usize, usize) {
            if self.transposed {
                (1, self.rows)
            } else {
                (self.cols, 1)
            }
        }

        #[cfg(test)]
        fn to_tensor(self, dev: &Cpu) -> Matrix<Cpu> {
            if self.transposed {
                dev.tensor_from_vec(self.data.to_vec(), (self.cols, self.rows))
                    .permute::<_, Axes2<1, 0>>()
            } else {
                dev.tensor_from_vec(self.data.to_vec(), (self.rows, self.cols))
            }
        }
    }

    /// `c = a · b`, or `c += a · b` with `accumulate`; `c` is row-major; `packed` holds the
    /// packing buffers between calls. Always the blocked kernel of [`blocked`], whose rounding
    /// is the same on every CPU: its AVX-512, AVX2 and scalar micro-kernels do the same fused
    /// multiply-adds in the same order, so a teammate's machine, or a cluster node with other
    /// instructions, computes the same bits. (dfdx's gemm, used before for CPUs without
    /// AVX-512, blocks by the cache sizes cpuid reports, and rounds differently.)
    pub(super) fn gemm(
        _cpu: &Cpu,
        a: Mat,
        b: Mat,
        c: &mut [f32],
        accumulate: bool,
        packed: &mut (Vec<f32>, Vec<f32>),
    ) {
        assert_eq!(a.cols, b.rows, "gemm: inner dimensions differ");
        assert_eq!(c.len(), a.rows * b.cols, "gemm: output size");
        blocked::sgemm(a, b, c, accumulate, packed, blocked::Isa::detect());
    }

    /// dfdx's matmul, for comparisons in tests and benches.
    #[cfg(test)]
    pub(super) fn dfdx_gemm(dev: &Cpu, a: Mat, b: Mat, c: &mut [f32], accumulate: bool) {
        let prod = a.to_tensor(dev).matmul(b.to_tensor(dev));
        if accumulate {
            add_into(c, &host_copy(&prod));
        } else {
            prod.copy_into(c);
        }
    }

    /// Packed-panel sgemm (BLIS-style) over 8×32 tiles of `c`: for each block of KC inner
    /// steps both operands are repacked into panels that the micro-kernel streams through
    /// contiguously, and the tiles run in parallel. Every element of `c` is, for each block,
    /// `acc = 0; acc = fma(a, b, acc)` over the block's steps in order, then `c = acc` (first
    /// block, no accumulation) or `c = acc + c`: the partition into blocks and tiles depends
    /// on the shapes only, never on the thread count or the CPU, and each micro-kernel keeps
    /// that order exactly, so all of them give the same bits.
    pub(super) mod blocked {
        use super::Mat;
        use rayon::prelude::*;

        const MR: usize = 8;
        const NR: usize = 32;
        /// Inner steps per block: a 32-column panel of `b` (KC·NR floats, 32 KiB) stays in L1
        /// while the row panels of `a` pass over it.
        const KC: usize = 256;

        /// Which micro-kernel runs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Isa {
            Avx512,
            Avx2,
            Scalar,
        }

        impl Isa {
            /// The fastest this CPU has; `CFPIPE_CONV_NO_AVX512` stops at AVX2 (to compare, in
            /// benches, with CPUs without AVX-512).
            pub fn detect() -> Isa {
                static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
                *ISA.get_or_init(|| {
                    #[cfg(target_arch = "x86_64")]
                    {
                        if is_x86_feature_detected!("avx512f")
                            && std::env::var_os("CFPIPE_CONV_NO_AVX512").is_none()
                        {
                            return Isa::Avx512;
                        }
                        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                            return Isa::Avx2;
                        }
                    }
                    Isa::Scalar
                })
            }

            /// Whether this CPU can run `self`.
            pub fn runs_here(self) -> bool {
                match self {
                    Isa::Scalar => true,
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => is_x86_feature_detected!("avx512f"),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => {
                        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    _ => false,
                }
            }
        }

        /// `c = a · b` (or `+=`), `c` row-major, packing into the `packed` buffers, with the
        /// micro-kernel of `isa`. Panics if this CPU cannot run it.
        pub fn sgemm(
            a: Mat,
            b: Mat,
            c: &mut [f32],
            accumulate: bool,
            (pa, pb): &mut (Vec<f32>, Vec<f32>),
            isa: Isa,
        ) {
            assert!(isa.runs_here(), "sgemm: this CPU cannot run {isa:?}");
            let (m, k, n) = (a.rows, a.cols, b.cols);
            assert!(b.rows == k && c.len() == m * n, "sgemm: shapes");
            if k == 0 && !accumulate {
                c.fill(0.0);
            }
            if m == 0 || n == 0 || k == 0 {
                return;
            }
            let (mp, np) = (m.div_ceil(MR), n.div_ceil(NR));
            // Stale contents are harmless: packing overwrites every lane that is stored.
            pa.resize(pa.len().max(mp * MR * KC.min(k)), 0.0);
            pb.resize(pb.len().max(np * NR * KC.min(k)), 0.0);
            let out = SharedOut(c.as_mut_ptr());
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                pack(&mut pa[..mp * MR * kc], a, MR, p0, kc);
                pack(&mut pb[..np * NR * kc], b.t(), NR, p0, kc);
                let overwrite = !accumulate && p0 == 0;
                let (pa, pb) = (&pa[..], &pb[..]);
                // Consecutive tasks share a panel of `b`, which stays in cache.
                (0..mp * np).into_par_iter().with_min_len(mp).for_each(|t| {
                    let (i, j) = (t % mp, t / mp);
                    let rows = MR.min(m - i * MR);
                    let cols = NR.min(n - j * NR);
                    let (a, b) = (&pa[i * MR * kc..][..MR * kc], &pb[j * NR * kc..][..NR * kc]);
                    let c = out.at(i * MR * n + j * NR);
                    // SAFETY: this CPU runs `isa` (asserted above). The panels hold kc·MR and
                    // kc·NR floats. Tile (i, j) is the `rows`×`cols` block of `c` at row i·MR,
                    // column j·NR, inside `c`; each task writes its own tile only, and `c`
                    // outlives the loop.
                    unsafe {
                        match isa {
                            #[cfg(target_arch = "x86_64")]
                            Isa::Avx512 => kernel_avx512(
                                kc,
                                a.as_ptr(),
                                b.as_ptr(),
                                c,
                                n,
                                rows,
                                cols,
                                overwrite,
                            ),
                            #[cfg(target_arch = "x86_64")]
                            Isa::Avx2 => {
                                kernel_avx2(kc, a.as_ptr(), b.as_ptr(), c, n, rows, cols, overwrite)
                            }
                            _ => kernel_scalar(kc, a, b, c, n, rows, cols, overwrite),
                        }
                    }
                });
            }
        }

        /// The output pointer shared by the tile tasks, which write disjoint tiles.
        #[derive(Clone, Copy)]
        struct SharedOut(*mut f32);
        // SAFETY: only used by `sgemm`, whose tasks never write the same element.
        unsafe impl Send for SharedOut {}
        unsafe impl Sync for SharedOut {}

        impl SharedOut {
            fn at(self, offset: usize) -> *mut f32 {
                self.0.wrapping_add(offset)
            }
        }

        /// Panels of `w` rows of `s` over inner steps `p0..p0 + kc`: panel `q` holds
        /// `s[q·w + r][p0 + kk]` at `(q·kc + kk)·w + r`. Lanes past the last row keep stale
        /// values: they only feed accumulators that the kernel never stores.
        fn pack(dst: &mut [f32], s: Mat, w: usize, p0: usize, kc: usize) {
            let (rs, cs) = s.strides();
            dst.par_chunks_mut(kc * w)
                .enumerate()
                .for_each(|(q, panel)| {
                    let live = w.min(s.rows - q * w);
                    if cs == 1 {
                        // A transpose: eight rows at a time, so each step writes eight
                        // consecutive floats.
                        let row = |r: usize| &s.data[(q * w + r) * rs + p0..][..kc];
                        let mut r0 = 0;
                        while r0 + 8 <= live {
                            let rows: [&[f32]; 8] = std::array::from_fn(|t| row(r0 + t));
                            for (kk, dst) in panel.chunks_exact_mut(w).enumerate() {
                                for (d, r) in dst[r0..r0 + 8].iter_mut().zip(&rows) {
                                    *d = r[kk];
                                }
                            }
                            r0 += 8;
                        }
                        for r in r0..live {
                            for (kk, &v) in row(r).iter().enumerate() {
                                panel[kk * w + r] = v;
                            }
                        }
                    } else {
                        for kk in 0..kc {
                            let src = &s.data[(p0 + kk) * cs + q * w * rs..][..live];
                            panel[kk * w..][..live].copy_from_slice(src);
                        }
                    }
                });
        }

        /// The order every micro-kernel keeps, one element at a time.
        ///
        /// # Safety
        /// `c` must point at a `rows`×`cols` tile (row stride `ldc`) no one else writes.
        #[allow(clippy::too_many_arguments)]
        unsafe fn kernel_scalar(
            kc: usize,
            a: &[f32],
            b: &[f32],
            c: *mut f32,
            ldc: usize,
            rows: usize,
            cols: usize,
            overwrite: bool,
        ) {
            for r in 0..rows {
                for j in 0..cols {
                    let mut acc = 0.0f32;
                    for kk in 0..kc {
                        acc = a[kk * MR + r].mul_add(b[kk * NR + j], acc);
                    }
                    let p = c.add(r * ldc + j);
                    *p = if overwrite { acc } else { acc + *p };
                }
            }
        }

        /// [`kernel_scalar`]'s order on AVX2 with FMA: the 8×32 tile as four 4×16 blocks, eight
        /// accumulators each, so they stay in the 16 registers.
        ///
        /// # Safety
        /// AVX2 and FMA must be available; the panels hold `kc`·MR and `kc`·NR floats; `c` as
        /// for [`kernel_scalar`].
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn kernel_avx2(
            kc: usize,
            a: *const f32,
            b: *const f32,
            c: *mut f32,
            ldc: usize,
            rows: usize,
            cols: usize,
            overwrite: bool,
        ) {
            use std::arch::x86_64::*;
            for r0 in (0..rows).step_by(4) {
                for c0 in (0..cols).step_by(16) {
                    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                    for kk in 0..kc {
                        let b0 = _mm256_loadu_ps(b.add(kk * NR + c0));
                        let b1 = _mm256_loadu_ps(b.add(kk * NR + c0 + 8));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let av = _mm256_set1_ps(*a.add(kk * MR + r0 + r));
                            acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                            acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                        }
                    }
                    let width = (cols - c0).min(16);
                    for (r, acc) in acc.iter().enumerate().take(rows - r0) {
                        let mut lanes = [0.0f32; 16];
                        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[0]);
                        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[1]);
                        let row = c.add((r0 + r) * ldc + c0);
                        for (j, &v) in lanes.iter().enumerate().take(width) {
                            let p = row.add(j);
                            *p = if overwrite { v } else { v + *p };
                        }
                    }
                }
            }
        }

        /// `c[..rows][..cols] (+)= a_panel · b_panel` over `kc` steps, accumulators in the 16
        /// registers of an 8×32 tile; masked loads and stores clip the edge tiles.
        ///
        /// # Safety
        /// AVX-512F must be available; otherwise as for [`kernel_avx2`].
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn kernel_avx512(
            kc: usize,
            a: *const f32,
            b: *const f32,
            c: *mut f32,
            ldc: usize,
            rows: usize,
            cols: usize,
            overwrite: bool,
        ) {
            use std::arch::x86_64::*;
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            for kk in 0..kc {
                let b0 = _mm512_loadu_ps(b.add(kk * NR));
                let b1 = _mm512_loadu_ps(b.add(kk * NR + 16));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.add(kk * MR + r));
                    acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
                }
            }
            let mask = |n: usize| -> __mmask16 {
                if n >= 16 {
                    0xffff
                } else {
                    ((1u32 << n) - 1) as __mmask16
                }
            };
            let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
            for (r, acc) in acc.iter().enumerate().take(rows) {
                let (p, q) = (c.add(r * ldc), c.add(r * ldc).wrapping_add(16));
                let (mut v0, mut v1) = (acc[0], acc[1]);
                if !overwrite {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, p));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, q));
                }
                _mm512_mask_storeu_ps(p, m0, v0);
                _mm512_mask_storeu_ps(q, m1, v1);
            }
        }
    }

    /// Columns `[C·kh·kw, samples·Ho·Wo]` of the `ns` samples in `xs`, written over `cols`
    /// (reused across chunks, so padding is written as zeros rather than assumed).
    fn im2col(xs: &[f32], g: &ConvGeom, ns: usize, cols: &mut Vec<f32>) {
        let (p, hw) = (g.p(), g.h * g.w);
        let m = ns * p;
        cols.resize(g.k() * m, 0.0);
        cols.par_chunks_mut(m).enumerate().for_each(|(row, dst)| {
            let (c, ki, kj) = (row / (g.kh * g.kw), row / g.kw % g.kh, row % g.kw);
            let ox = g.valid_cols(kj);
            for j in 0..ns {
                let plane = &xs[(j * g.c + c) * hw..][..hw];
                for oy in 0..g.ho {
                    let dst = &mut dst[j * p + oy * g.wo..][..g.wo];
                    let iy = match g.src(oy, ki, g.h) {
                        Some(iy) if !ox.is_empty() => iy,
                        _ => {
                            dst.fill(0.0);
                            continue;
                        }
                    };
                    dst[..ox.start].fill(0.0);
                    dst[ox.end..].fill(0.0);
                    let src = &plane[iy * g.w..][..g.w];
                    let ix0 = ox.start * g.stride + kj - g.pad;
                    if g.stride == 1 {
                        dst[ox.clone()].copy_from_slice(&src[ix0..ix0 + ox.len()]);
                    } else {
                        for (d, v) in dst[ox.clone()]
                            .iter_mut()
                            .zip(src[ix0..].iter().step_by(g.stride))
                        {
                            *d = *v;
                        }
                    }
                }
            }
        });
    }

    /// Adds the columns' gradients `[C·kh·kw, samples·Ho·Wo]` of `ns` samples back onto their
    /// input gradient `gx`.
    fn col2im(dcols: &[f32], g: &ConvGeom, ns: usize, gx: &mut [f32]) {
        let (p, hw, kk) = (g.p(), g.h * g.w, g.kh * g.kw);
        let m = ns * p;
        // One task per (sample, channel) plane: the planes are disjoint, so no two tasks write
        // the same element.
        gx[..ns * g.c * hw]
            .par_chunks_mut(hw)
            .enumerate()
            .for_each(|(plane_i, plane)| {
                let (j, c) = (plane_i / g.c, plane_i % g.c);
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        let src = &dcols[(c * kk + ki * g.kw + kj) * m + j * p..][..p];
                        let ox = g.valid_cols(kj);
                        if ox.is_empty() {
                            continue;
                        }
                        for oy in 0..g.ho {
                            let Some(iy) = g.src(oy, ki, g.h) else {
                                continue;
                            };
                            let row = &src[oy * g.wo..][ox.clone()];
                            let ix0 = ox.start * g.stride + kj - g.pad;
                            let dst = &mut plane[iy * g.w..][..g.w];
                            if g.stride == 1 {
                                add_into(&mut dst[ix0..ix0 + row.len()], row);
                            } else {
                                for (d, v) in dst[ix0..].iter_mut().step_by(g.stride).zip(row) {
                                    *d += v;
                                }
                            }
                        }
                    }
                }
            });
    }

    pub(super) fn pool<D: Device<f32>, T: Tape<f32, D>>(
        x: Tensor4<D, T>,
        g: PoolGeom,
        kind: PoolKind,
    ) -> Tensor4<D, T> {
        let (x, mut tape) = x.contiguous().split_tape();
        let dev = x.device().clone();
        let (hw, p) = (g.h * g.w, g.p());
        let xs = host_copy(&x);
        let mut out = vec![0.0; g.n * g.c * p];
        // Flat in-plane index of each output's maximum, for the backward pass.
        let mut arg = vec![0u32; if kind == PoolKind::Max { out.len() } else { 0 }];
        match kind {
            PoolKind::Max => out
                .par_chunks_mut(p)
                .zip(arg.par_chunks_mut(p))
                .zip(xs.par_chunks(hw))
                .for_each(|((out, arg), x)| {
                    // Output row by output row, one window offset `(dy, dx)` at a time (in the
                    // window's row-major order) across the whole row: the row's running maxima
                    // are independent of each other, so the comparisons pipeline instead of
                    // waiting on one chain per window. Max windows are uniform (`Bins::windows`).
                    let (ow, kx) = (g.bw.len(), g.bw.widest());
                    for i in 0..g.bh.len() {
                        let rows = g.bh.range(i);
                        let out = &mut out[i * ow..][..ow];
                        let arg = &mut arg[i * ow..][..ow];
                        let xr = &x[rows.start * g.w..][..g.w];
                        for (j, (o, a)) in out.iter_mut().zip(arg.iter_mut()).enumerate() {
                            let first = g.bw.start[j];
                            (*o, *a) = (xr[first], (rows.start * g.w + first) as u32);
                        }
                        for y in rows {
                            let xr = &x[y * g.w..][..g.w];
                            for dx in 0..kx {
                                let cells = out.iter_mut().zip(arg.iter_mut());
                                for ((o, a), &s0) in cells.zip(&g.bw.start) {
                                    let v = xr[s0 + dx];
                                    // Like PyTorch: the first maximum wins, and NaN propagates.
                                    let better = v > *o || (v.is_nan() && !o.is_nan());
                                    if better {
                                        (*o, *a) = (v, (y * g.w + s0 + dx) as u32);
                                    }
                                }
                            }
                        }
                    }
                }),
            PoolKind::Avg => out
                .par_chunks_mut(p)
                .zip(xs.par_chunks(hw))
                .for_each(|(out, x)| {
                    for ((i, j), o) in g.cells().zip(out.iter_mut()) {
                        let (mut sum, mut cnt) = (0.0, 0usize);
                        for r in g.cell_rows(i, j) {
                            cnt += r.len();
                            sum += x[r].iter().sum::<f32>();
                        }
                        *o = sum / cnt as f32;
                    }
                }),
        }
        let out: Tensor4<D> = dev.tensor_from_vec(out, g.out_shape());
        let (x_id, out_id) = (x.ghost(), out.ghost());
        tape.add_backward_op(move |grads| {
            let gout = std::mem::take(host_vec::<D>(grads.get_or_alloc_mut(&out_id)?));
            let gx = host_vec::<D>(grads.get_or_alloc_mut(&x_id)?);
            let planes = gx.par_chunks_mut(hw).zip(gout.par_chunks(p));
            match kind {
                PoolKind::Max => planes.zip(arg.par_chunks(p)).for_each(|((gx, gout), arg)| {
                    for (&go, &a) in gout.iter().zip(arg) {
                        gx[a as usize] += go;
                    }
                }),
                PoolKind::Avg => planes.for_each(|(gx, gout)| {
                    for ((i, j), &go) in g.cells().zip(gout) {
                        let share = go / (g.bh.range(i).len() * g.bw.range(j).len()) as f32;
                        for r in g.cell_rows(i, j) {
                            gx[r].iter_mut().for_each(|v| *v += share);
                        }
                    }
                }),
            }
            *host_vec::<D>(grads.get_or_alloc_mut(&out_id)?) = gout;
            Ok(())
        });
        out.put_tape(tape)
    }
}

#[cfg(test)]
mod tests {
    use super::host::{self, Mat};
    use super::*;

    /// Every host matrix product the CPU path may take (the AVX-512 kernel where this CPU has
    /// it, dfdx's matmul otherwise) against a naive loop: edge tiles, transposed operands,
    /// several KC blocks, accumulation.
    #[test]
    fn host_gemm_matches_a_naive_product() {
        let cpu = Cpu::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut uniform =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect() };
        for (m, k, n) in [
            (1, 1, 1),
            (7, 13, 5),
            (8, 256, 32),
            (9, 300, 33),
            (64, 577, 70),
            (17, 3, 100),
        ] {
            for (ta, tb, acc) in (0..8).map(|b| (b & 1 == 1, b & 2 == 2, b & 4 == 4)) {
                let (ad, bd, c0) = (uniform(m * k), uniform(k * n), uniform(m * n));
                let a = if ta {
                    Mat::new(&ad, k, m).t()
                } else {
                    Mat::new(&ad, m, k)
                };
                let b = if tb {
                    Mat::new(&bd, n, k).t()
                } else {
                    Mat::new(&bd, k, n)
                };
                let at = |i: usize, l: usize| if ta { ad[l * m + i] } else { ad[i * k + l] };
                let bt = |l: usize, j: usize| if tb { bd[j * k + l] } else { bd[l * n + j] };
                let want: Vec<f64> = (0..m * n)
                    .map(|ij| {
                        let (i, j) = (ij / n, ij % n);
                        let base = if acc { c0[ij] as f64 } else { 0.0 };
                        base + (0..k)
                            .map(|l| at(i, l) as f64 * bt(l, j) as f64)
                            .sum::<f64>()
                    })
                    .collect();
                let mut runs: Vec<(&str, Vec<f32>)> = Vec::new();
                let mut c = c0.clone();
                host::gemm(&cpu, a, b, &mut c, acc, &mut Default::default());
                runs.push(("dispatched", c));
                let mut c = c0.clone();
                host::dfdx_gemm(&cpu, a, b, &mut c, acc);
                runs.push(("dfdx", c));
                use host::blocked::Isa;
                let mut bits = Vec::new();
                for isa in [Isa::Avx512, Isa::Avx2, Isa::Scalar] {
                    if !isa.runs_here() {
                        continue;
                    }
                    let mut c = c0.clone();
                    // Stale packing buffers must not leak into the result.
                    let mut packed = (vec![f32::NAN; 100_000], vec![f32::NAN; 100_000]);
                    host::blocked::sgemm(a, b, &mut c, acc, &mut packed, isa);
                    bits.push((isa, c.iter().map(|v| v.to_bits()).collect::<Vec<_>>()));
                    runs.push(("blocked", c));
                }
                // Every micro-kernel rounds alike: the same bits on every CPU.
                for (isa, b) in &bits[1..] {
                    assert!(
                        *b == bits[0].1,
                        "{isa:?} differs from {:?} at {m}×{k}×{n} ta={ta} tb={tb} acc={acc}",
                        bits[0].0
                    );
                }
                for (name, got) in runs {
                    for (ij, (&g, &w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{name} {m}×{k}×{n} ta={ta} tb={tb} acc={acc} [{ij}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
