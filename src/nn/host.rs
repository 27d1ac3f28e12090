//! Host buffers of dfdx's `Cpu` tensors, for the CPU fast paths (`conv`, `dense`, `optim`).
//! dfdx 0.13 keeps a tensor's storage private, so a fast path copies a tensor's contents out
//! ([`host_copy`]), computes on plain slices, and writes gradients straight into the
//! gradient buffers dfdx allocated ([`host_vec`]). Every entry point is generic over the
//! device so the dispatching code compiles for CUDA too; only [`uses_cpu_fast_path`] devices
//! reach the downcasts.

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

/// Logical contents of a contiguous tensor (`copy_into` copies physical memory).
pub(crate) fn host_copy<S: Shape, D: Device<f32>>(t: &Tensor<S, f32, D>) -> Vec<f32> {
    let mut v = vec![0.0; t.shape().num_elements()];
    t.copy_into(&mut v);
    v
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
/// A training step allocates and frees the same few buffers (gradients, activations, copies of
/// weights) every step; glibc returns large blocks with `munmap`/`brk` and the next step takes
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
