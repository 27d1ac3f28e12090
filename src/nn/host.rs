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

/// Logical contents of a contiguous tensor (`copy_into` copies physical memory), in a buffer
/// that a training step reuses: a step copies the same shapes (inputs, weights) every time,
/// and a fresh buffer is zeroed before it is overwritten, a tenth of an MLP step's time
/// (perf, issue 19). The buffer goes back to its thread's pool when dropped.
pub(crate) fn host_copy<S: Shape, D: Device<f32>>(t: &Tensor<S, f32, D>) -> HostBuf {
    let n = t.shape().num_elements();
    let reused = FREED.with(|f| {
        let mut f = f.borrow_mut();
        let i = f.iter().position(|v| v.len() == n)?;
        Some(f.swap_remove(i))
    });
    // A reused buffer has exactly `n` initialised elements, all overwritten here.
    let mut v = reused.unwrap_or_else(|| vec![0.0; n]);
    t.copy_into(&mut v);
    HostBuf(v)
}

thread_local! {
    /// Host copies freed on this thread, kept for the next copy of the same length; at most
    /// [`POOL_BYTES`] of them, so a large model's activations are not held on to.
    static FREED: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

const POOL_BYTES: usize = 64 << 20;

/// A host copy of a tensor ([`host_copy`]), returned to its thread's pool when dropped.
pub(crate) struct HostBuf(Vec<f32>);

impl std::ops::Deref for HostBuf {
    type Target = Vec<f32>;
    fn deref(&self) -> &Vec<f32> {
        &self.0
    }
}

impl<'a> IntoIterator for &'a HostBuf {
    type Item = &'a f32;
    type IntoIter = std::slice::Iter<'a, f32>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        // During thread teardown the pool may be gone; the buffer is then simply freed.
        let _ = FREED.try_with(|f| {
            let mut f = f.borrow_mut();
            let held: usize = f.iter().map(|v| v.len() * 4).sum();
            if held + v.len() * 4 <= POOL_BYTES {
                f.push(v);
            }
        });
    }
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

#[cfg(test)]
mod pool_tests {
    use super::*;

    #[test]
    fn a_reused_host_buffer_holds_exactly_the_new_tensors_contents() {
        let dev = Cpu::default();
        let a: Tensor<(usize,), f32, Cpu> = dev.tensor_from_vec(vec![1.0, 2.0, 3.0], (3,));
        let b: Tensor<(usize,), f32, Cpu> = dev.tensor_from_vec(vec![7.0, 8.0, 9.0], (3,));
        let first = host_copy(&a);
        let ptr = first.as_ptr();
        assert_eq!(&first[..], &[1.0, 2.0, 3.0]);
        drop(first);
        // The freed buffer of the same length is taken again and fully overwritten.
        let second = host_copy(&b);
        assert_eq!(second.as_ptr(), ptr, "the buffer is reused");
        assert_eq!(&second[..], &[7.0, 8.0, 9.0]);
        // Another length gets its own buffer.
        let c: Tensor<(usize,), f32, Cpu> = dev.tensor_from_vec(vec![4.0, 5.0], (2,));
        assert_eq!(&host_copy(&c)[..], &[4.0, 5.0]);
    }
}
