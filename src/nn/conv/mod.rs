//! Convolution, pooling, flatten, ReLU and dropout on run-time-sized NCHW tensors, with PyTorch's
//! layouts and semantics, for convolutional models (VGG-style). dfdx 0.13 ships `conv2d` and
//! `pool2d` only on nightly Rust, so cfpipe owns these ops. The layout follows dfdx's own ops:
//! the API here, the sizes in `geom`, the composed path in `composed`, and the CPU kernel in
//! `host` (its products on the packed sgemm of [`crate::nn::gemm`]).
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
//!   run on [`crate::nn::gemm`]'s packed kernel (AVX-512, AVX2 or scalar micro-kernels that
//!   round alike, so any x86 CPU gives the same bits), and each thread takes a span of the batch with its own buffers. Columns are built
//!   per chunk of samples and rebuilt in the backward pass rather than kept, so a layer holds
//!   little beyond a copy of its input between the passes (where the whole batch's columns are
//!   one chunk, at most 16 MiB, the backward pass reads the forward pass's). For stride 1 and at least 64 input
//!   channels the input gradient is computed as what it is, a convolution (of the output gradient, with the kernel rotated and its channel
//!   axes swapped), one product over `O·kh·kw` with no col2im scatter; other strides take
//!   col2im. Wide 3×3 stride-1 layers (VGG's from 128→256 channels, maps of 3×3 and more)
//!   take Winograd's F(2×2, 3×3) instead (`host::winograd`): 2.25× fewer multiplications in
//!   sixteen products between input, kernel and output transforms; narrower ones on large
//!   maps (VGG's 64 and 128 channels) take the same transforms band by band on each core
//!   (`host::winograd::banded`), and wide layers on maps of a few pixels (VGG's 2×2) sum over
//!   the taps that land inside the map (`host::pairs`). A model is keyed by the latest of its
//!   layers' paths ([`kernel_revision`]). Sums over threads are added in a fixed order, so results
//!   are bit-identical from run to run. The module has no `unsafe` code; the kernel's is in
//!   `nn::gemm`.
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

use super::tensor::{Matrix, Tensor4, Vector};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

pub use super::host::uses_cpu_fast_path;

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
    conv2d_fused(x, weight, bias, stride, padding, false)
}

/// [`conv2d`], then [`relu`] where `relu` says: the same values and gradients bit for bit. On
/// the CPU path in one operation: each method applies ReLU where it writes its outputs (in
/// cache), and the backward pass masks the output gradient in place in the same pass that
/// sums the bias gradient, where apart they wrote a second activation and its zeroed
/// gradient (a pass of zeros, a copy and a read-modify-write through memory per layer).
pub fn conv2d_fused<D, T, TX>(
    x: Tensor4<D, TX>,
    weight: Tensor4<D, T>,
    bias: Vector<D, T>,
    stride: usize,
    padding: usize,
    relu: bool,
) -> Tensor4<D, T>
where
    D: Device<f32>,
    T: Tape<f32, D> + Merge<TX>,
    TX: Tape<f32, D>,
{
    let g = ConvGeom::new(*x.shape(), *weight.shape(), bias.shape().0, stride, padding);
    if uses_cpu_fast_path::<D>() {
        return host::conv2d(x, weight, bias, g, relu);
    }
    let y = composed::conv2d_geom(x, weight, bias, g);
    match relu {
        true => y.relu(),
        false => y,
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

/// ReLU, with dfdx's own arithmetic (`max(x, 0)` forward; `∂x += (x > 0 ? 1 : 0) · ∂y`
/// backward, so NaN, infinities and signed zeros come out bit for bit as dfdx gives them), over
/// the pool's threads on the CPU. dfdx's CPU element-wise ops run on the calling thread while
/// the other cores wait: a small CNN's step spent 6% of its samples, and more of its wall
/// time, in dfdx's ReLU.
pub fn relu<S: Shape, D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor<S, f32, D, T>,
) -> Tensor<S, f32, D, T> {
    if uses_cpu_fast_path::<D>() {
        host::relu(x)
    } else {
        x.relu()
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

/// Revision of the conv CPU kernels' rounding, in every conv model's train key (see
/// CHANGELOG.md): absent (revision 1) until the blocked kernel became the only one and the
/// batch split stopped depending on the thread count; 2 since. A model with a layer on the
/// Winograd path is keyed [`WINOGRAD_KERNELS`] instead, one with a layer on the small-map
/// path [`SMALL_MAP_KERNELS`], one with a banded layer [`BANDED_WINOGRAD_KERNELS`] (the
/// latest of its layers': [`kernel_revision`]).
pub const CONV_KERNELS: u32 = 2;

/// The revision of a model one of whose convolutions the CPU path computes with Winograd's
/// F(2×2, 3×3) transforms, which round otherwise than the direct product (2026-12-07).
pub const WINOGRAD_KERNELS: u32 = 3;

/// The revision of a model one of whose convolutions the CPU path computes over the taps that
/// land inside a small map (`host::pairs`), which sums in another order than the direct
/// product (2026-12-07).
pub const SMALL_MAP_KERNELS: u32 = 4;

/// The revision of a model one of whose convolutions the CPU path computes with F(2×2, 3×3)
/// band by band (`host::winograd::banded`), which rounds otherwise than the direct product
/// (2026-12-07).
pub const BANDED_WINOGRAD_KERNELS: u32 = 5;

/// The conv kernels' revision a model is keyed under: the latest of its convolutions' paths'
/// ([`CONV_KERNELS`] for the direct path, [`WINOGRAD_KERNELS`], [`SMALL_MAP_KERNELS`],
/// [`BANDED_WINOGRAD_KERNELS`]), so
/// that the models whose rounding did not change when a path was added (the small CNN, narrow
/// VGGs) keep their keys. An architecture whose geometry does not check is keyed
/// [`CONV_KERNELS`]; it never trains.
pub fn kernel_revision(arch: &super::arch::Arch) -> u32 {
    use super::arch::{Feature, Op};
    let Ok(features) = arch.features() else {
        return CONV_KERNELS;
    };
    let revision = |i: usize, op: &Op| {
        let Op::Conv {
            kernel,
            stride,
            padding,
            ..
        } = *op
        else {
            return CONV_KERNELS;
        };
        let (Feature::Map(c, h, w), Feature::Map(o, ..)) = (features[i], features[i + 1]) else {
            return CONV_KERNELS;
        };
        let g = ConvGeom::new((1, c, h, w), (o, c, kernel, kernel), o, stride, padding);
        match host::Method::of(&g) {
            host::Method::Direct => CONV_KERNELS,
            host::Method::Winograd => WINOGRAD_KERNELS,
            host::Method::WinogradBanded => BANDED_WINOGRAD_KERNELS,
            host::Method::Pairs => SMALL_MAP_KERNELS,
        }
    };
    let layers = arch.layers.iter().enumerate();
    layers
        .map(|(i, op)| revision(i, op))
        .max()
        .unwrap_or(CONV_KERNELS)
}

pub mod composed;
mod geom;
mod host;

use geom::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::arch::{small_cnn, vgg16};

    #[test]
    fn only_models_with_a_layer_on_a_newer_path_change_revision() {
        // VGG-16 at 32×32: 128→256 and wider at 8×8 and 4×4 take the whole-batch transforms,
        // its three 512→512 layers at 2×2 the small-map path, and 64→64 at 32×32, 64→128 and
        // 128→128 at 16×16 the banded transforms, the latest.
        assert_eq!(kernel_revision(&vgg16(32, 1, 3)), BANDED_WINOGRAD_KERNELS);
        // ImageNet's 224×224 form: its first 64→64 and its 112×112 layers are banded.
        assert_eq!(kernel_revision(&vgg16(224, 1, 3)), BANDED_WINOGRAD_KERNELS);
        // At half width, 64→64 at 16×16 is banded.
        assert_eq!(kernel_revision(&vgg16(32, 2, 3)), BANDED_WINOGRAD_KERNELS);
        // A quarter-width VGG (16 to 128 channels; its 64-channel maps are 8×8 and smaller)
        // and the small CNN keep their keys.
        assert_eq!(kernel_revision(&vgg16(32, 4, 3)), CONV_KERNELS);
        assert_eq!(kernel_revision(&small_cnn([1, 28, 28])), CONV_KERNELS);
    }
}
