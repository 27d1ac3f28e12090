//! Host buffers of dfdx's `Cpu` tensors, for the CPU fast paths (`conv`, `dense`, `optim`).
//! A fast path reads its operands and updates parameters in place ([`host_slice`], through
//! the patch of dfdx in `vendor/dfdx`, whose published 0.13 keeps a tensor's storage private),
//! computes on plain slices, and writes gradients straight into the gradient buffers dfdx
//! allocated ([`host_vec`]). Every entry point is generic over the
//! device so the dispatching code compiles for CUDA too; only [`uses_cpu_fast_path`] devices
//! reach the downcasts. The bias gradients of the dense and conv paths share one ordered sum
//! ([`add_row_sums`]).

use dfdx::prelude::*;
use std::any::{Any, TypeId};

/// Whether the ops of `nn` take their host fast path on device `D` (dfdx's `Cpu`).
pub fn uses_cpu_fast_path<D: 'static>() -> bool {
    TypeId::of::<D>() == TypeId::of::<Cpu>()
}

/// A CPU gradient buffer as a `Vec`. dfdx exposes gradients only as `D::Vec`; on `Cpu`
/// that is a vector wrapper that derefs to `Vec<f32>`.
pub(crate) fn host_vec<D: Storage<f32>>(v: &mut D::Vec) -> &mut Vec<f32> {
    let any: &mut dyn Any = v;
    let cpu_vec = any
        .downcast_mut::<<Cpu as Storage<f32>>::Vec>()
        .expect("the CPU fast path runs on the Cpu device only");
    cpu_vec
}

/// A contiguous CPU tensor's elements, in place (dfdx patched: `vendor/dfdx/PATCH.md`).
/// Before, every fast path copied its operands out of dfdx and the optimizer copied each
/// parameter and gradient out and back: 12% of an MLP step (perf, issue 19). Panics for a
/// permuted or broadcast layout; callers make their operands `contiguous()` first, which
/// costs nothing for a tensor already laid out so.
pub(crate) fn host_slice<S: Shape, D: Device<f32>>(t: &Tensor<S, f32, D>) -> &[f32] {
    let any: &dyn Any = t;
    any.downcast_ref::<Tensor<S, f32, Cpu>>()
        .expect("the CPU fast path runs on the Cpu device only")
        .as_contiguous_slice()
        .expect("host_slice: the tensor is not laid out contiguously")
}

/// [`host_slice`] for writing. Storage shared with a clone of the tensor (a copy kept for
/// later, such as SI's parameters before a step) is copied first, so the clone keeps its
/// values.
pub(crate) fn host_slice_mut<S: Shape, D: Device<f32>>(t: &mut Tensor<S, f32, D>) -> &mut [f32] {
    let any: &mut dyn Any = t;
    any.downcast_mut::<Tensor<S, f32, Cpu>>()
        .expect("the CPU fast path runs on the Cpu device only")
        .as_contiguous_mut_slice()
        .expect("host_slice_mut: the tensor is not laid out contiguously")
}

/// The gradient of `t` out of `grads`: on the CPU the buffer itself, moved (the gradients are
/// dropped after a step anyway), elsewhere a copy. A buffer that is not exactly `t`'s logical
/// size (a broadcast tensor's) is copied instead, and left in place. `t` must be laid out
/// contiguously, as every parameter dfdx allocates is: dfdx keeps a gradient in its tensor's
/// storage order and does not expose the strides to check it.
pub fn take_grad<S: Shape, D: Device<f32>>(
    grads: &mut Gradients<f32, D>,
    t: &Tensor<S, f32, D>,
) -> Tensor<S, f32, D> {
    let n = t.shape().num_elements();
    if uses_cpu_fast_path::<D>() {
        if let Ok(v) = grads.get_or_alloc_mut(t) {
            let v = host_vec::<D>(v);
            if v.len() == n {
                return t.device().tensor_from_vec(std::mem::take(v), *t.shape());
            }
        }
    }
    grads.get(t)
}

/// Keep freed memory in the process for reuse instead of handing it back to the kernel.
/// A training step allocates and frees the same few buffers (gradients, activations, im2col
/// columns) every step; glibc returns large blocks with `munmap`/`brk` and the next step takes
/// a page fault on every 4 KiB of them again, a fifth of an MLP step's time (perf, issue 19).
/// Fixed thresholds keep blocks up to 256 MiB in the heap where glibc accepts that (older
/// glibc caps the mmap threshold at 32 MiB, which is then used); peak memory is what the
/// largest step needs, as before. The trim threshold is raised only once a fixed mmap
/// threshold is in place: setting it alone would switch off glibc's dynamic threshold and
/// leave large blocks mapped and unmapped every step. Called once at start by the binary and
/// the benches; a no-op elsewhere than glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread
    // exists. It returns 1 on success and 0 for a value it rejects.
    unsafe {
        let mmap_set = libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20) == 1
            || libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1;
        if mmap_set {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
        }
    }
}

/// Adds to `out[r]` the sum of row `r` of `rows` (rows of `len`), each summed in element order
/// from -0.0 as `Iterator::sum` does, eight rows at a time so that their chains of dependent
/// additions overlap (one row's sum waits on each addition: the bias gradient of a 400-unit
/// layer was 1% of an MLP step, and a convolution's, one sum per output plane, 3% of a
/// VGG-16 step). The bias gradients of the dense and conv fast paths.
pub(crate) fn add_row_sums(rows: &[f32], len: usize, out: &mut [f32]) {
    const ROWS: usize = 8;
    for (out, block) in out.chunks_mut(ROWS).zip(rows.chunks(ROWS * len.max(1))) {
        let mut acc = [-0.0f32; ROWS];
        for k in 0..len {
            for (r, a) in acc.iter_mut().enumerate().take(out.len()) {
                *a += block[r * len + k];
            }
        }
        out.iter_mut().zip(acc).for_each(|(o, a)| *o += a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_slice_leaves_a_clone_of_the_tensor_as_it_was() {
        let dev = Cpu::default();
        let mut a: Tensor<(usize,), f32, Cpu> = dev.tensor_from_vec(vec![1.0, 2.0, 3.0], (3,));
        let kept = a.clone();
        host_slice_mut(&mut a)[1] = 7.0;
        assert_eq!(host_slice(&a), &[1.0, 7.0, 3.0]);
        assert_eq!(
            kept.as_vec(),
            vec![1.0, 2.0, 3.0],
            "the clone's storage was copied first"
        );
    }

    #[test]
    #[should_panic(expected = "not laid out contiguously")]
    fn a_permuted_tensor_has_no_slice() {
        let dev = Cpu::default();
        let a: Tensor<(usize, usize), f32, Cpu> =
            dev.tensor_from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3));
        host_slice(&a.permute::<_, Axes2<1, 0>>());
    }

    #[test]
    fn row_sums_eight_at_a_time_give_each_rows_own_sum_bit_for_bit() {
        // 13 rows (a block of eight and a partial one) of 37 values spanning magnitudes, so
        // that any other order of additions rounds differently.
        let (rows, len) = (13, 37);
        let m: Vec<f32> = (0..rows * len)
            .map(|i| ((i * 7919) % 1000) as f32 * 10f32.powi((i % 7) as i32 - 3) - 1.5)
            .collect();
        let mut out = vec![0.25f32; rows];
        add_row_sums(&m, len, &mut out);
        for (r, got) in out.iter().enumerate() {
            let want = 0.25 + m[r * len..][..len].iter().sum::<f32>();
            assert_eq!(got.to_bits(), want.to_bits(), "row {r}");
        }
    }
}
