//! Host buffers of dfdx's `Cpu` tensors, for the CPU fast paths (`conv`, `dense`, `optim`).
//! A fast path reads its operands and updates parameters in place ([`host_slice`], through
//! the patch of dfdx in `vendor/dfdx`, whose published 0.13 keeps a tensor's storage private),
//! computes on plain slices, and writes gradients straight into the gradient buffers dfdx
//! allocated ([`host_vec`]). Every entry point is generic over the
//! device so the dispatching code compiles for CUDA too; only [`uses_cpu_fast_path`] devices
//! reach the downcasts. The bias gradients of the dense and conv paths share one ordered sum
//! ([`add_row_sums`]), and their large scratch buffers start as zeros written over the pool
//! ([`zeros`]).

use dfdx::prelude::*;
use rayon::prelude::*;
use std::any::{Any, TypeId};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
        // One arena, the main one, for every thread: a stage that runs on a pool worker
        // ([`on_pool`]) allocates from that worker's arena otherwise, whose heaps glibc
        // sizes and hands back by its own rules (the thresholds above are the main arena's
        // behaviour): a VGG-16 step on a worker took 6K more page faults, and two processes
        // of twelve ran those steps 5–9% slower than from the calling thread (none of 16 with
        // one arena). Small blocks still come from each thread's cache without a lock.
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Runs `f` on one of rayon's workers instead of the calling thread, for work that goes to
/// the pool many times in a row: a VGG-16 training step opens about 260 parallel regions.
/// From outside the pool, each region wakes the workers and puts the caller to sleep until
/// the region ends, and on a VM a vCPU that went idle takes tens of microseconds to wake (a
/// region of two 50 µs tasks took 148 µs here after an idle millisecond, 89 µs from a
/// worker): on a worker, the caller works on its own share while the other worker wakes.
/// Steps of VGG-16 alternating in one process took 0.96–0.97 of the time this way, whole
/// processes of the small CNN's steps 0.83 (issue 19, docs/performance.md).
///
/// One caller at a time: a worker that waits inside a region runs whatever job it finds
/// meanwhile, and a second such caller's `f` would then run to its end inside the first's
/// region (why the executor runs stages on plain threads). Any other caller, and a caller
/// already on a worker, runs `f` where it is. Results never depend on the thread: the
/// parallel code's sums follow the shapes only.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    on_pool_taking(&TAKEN, f)
}

/// [`on_pool`] with `taken` saying whether a caller has the pool.
fn on_pool_taking<R: Send>(taken: &AtomicBool, f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() || taken.swap(true, Ordering::Acquire) {
        return f();
    }
    /// Gives the pool back to the next caller, however `f` ends (a panic included).
    struct Release<'a>(&'a AtomicBool);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
    let _release = Release(taken);
    // From outside the pool, `join` runs both closures on a worker and waits for them.
    rayon::join(f, || ()).0
}

/// Floats from which [`zeros`] writes over the pool (1 MiB): below, one thread's `memset` is
/// over before the pool would be awake.
const POOL_ZEROS: usize = 1 << 18;

/// Floats each of [`zeros`]' tasks writes.
const ZEROS_PER_TASK: usize = 1 << 16;

/// `len` zeros, written over the pool when there are many. The fast paths allocate their
/// large buffers afresh in every pass (a wide layer's transformed kernel and data, its
/// products, its gradients: up to 16 MiB each), from memory the allocator keeps
/// ([`keep_freed_memory`]) and so has to zero itself: on the calling thread, while the pool
/// waited, that was a tenth of a VGG-16 step's wall time on two threads (perf, issue 19).
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    if len < POOL_ZEROS {
        return vec![0.0; len];
    }
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(ZEROS_PER_TASK)
        // SAFETY: `c` is valid for writes of its length; all-zero bits are 0.0. As `memset`,
        // which `fill` did not become, its stores need not read the lines they fill first.
        .for_each(|c| unsafe { std::ptr::write_bytes(c.as_mut_ptr(), 0, c.len()) });
    // SAFETY: the capacity is at least `len`, and its first `len` floats were written above.
    unsafe { v.set_len(len) };
    v
}

/// `v` grown to `len` floats with zeros ([`zeros`]' pool when it starts empty, as the fast
/// paths' scratch vectors do in each pass).
pub(crate) fn grow_zeroed(v: &mut Vec<f32>, len: usize) {
    if v.is_empty() {
        *v = zeros(len);
    } else {
        v.resize(len, 0.0);
    }
}

/// A buffer of `len` floats that parallel tasks write piece by piece, each piece zeroed by
/// the task that writes it just before it does ([`Piece::zeroed`]): in that task's cache,
/// where [`zeros`] first makes a pass over the whole buffer through memory (a wide layer's
/// transformed kernel, its products and their gradients, 16 MiB each: those passes were 7%
/// of a VGG-16 step's samples on two threads, perf, issue 19). [`Fresh::into_vec`] checks
/// that every piece was zeroed, so no float is ever read unwritten.
pub(crate) struct Fresh {
    buf: Vec<f32>,
    len: usize,
    zeroed: AtomicUsize,
    /// Whether the pieces were handed out: once only, or a float zeroed twice could stand in
    /// for one never written in the count `into_vec` checks.
    cut: bool,
}

/// One piece of a [`Fresh`] buffer, not yet written.
pub(crate) struct Piece<'a> {
    run: &'a mut [MaybeUninit<f32>],
    zeroed: &'a AtomicUsize,
}

impl Fresh {
    pub(crate) fn new(len: usize) -> Fresh {
        Fresh {
            buf: Vec::with_capacity(len),
            len,
            zeroed: AtomicUsize::new(0),
            cut: false,
        }
    }

    /// The buffer's pieces of `run` floats in order (the last one shorter where `run` does
    /// not divide the length).
    ///
    /// # Panics
    ///
    /// When called a second time.
    pub(crate) fn pieces(&mut self, run: usize) -> Vec<Piece<'_>> {
        assert!(!self.cut, "a fresh buffer's pieces are handed out once");
        self.cut = true;
        let zeroed = &self.zeroed;
        self.buf.spare_capacity_mut()[..self.len]
            .chunks_mut(run.max(1))
            .map(|run| Piece { run, zeroed })
            .collect()
    }

    /// The buffer, once every piece is written.
    ///
    /// # Panics
    ///
    /// Where some piece was not zeroed: a caller's bug, caught before any float is read.
    pub(crate) fn into_vec(mut self) -> Vec<f32> {
        let zeroed = self.zeroed.into_inner();
        assert_eq!(zeroed, self.len, "pieces of a fresh buffer left unwritten");
        // SAFETY: the pieces, handed out once, partition the first `len` floats (`pieces`),
        // each is zeroed at most once (`Piece::zeroed` takes it by value), and the zeroed
        // lengths add up to `len`, so every float was written.
        unsafe { self.buf.set_len(self.len) };
        self.buf
    }
}

impl<'a> Piece<'a> {
    /// The piece, zeroed, for its task to write.
    pub(crate) fn zeroed(self) -> &'a mut [f32] {
        let len = self.run.len();
        let ptr = self.run.as_mut_ptr().cast::<f32>();
        // SAFETY: `ptr` is valid for writes of `len` floats (the piece), and all-zero bits
        // are 0.0; once written, they are initialised floats, borrowed for the piece's life.
        let run = unsafe {
            std::ptr::write_bytes(ptr, 0, len);
            std::slice::from_raw_parts_mut(ptr, len)
        };
        self.zeroed.fetch_add(len, Ordering::Relaxed);
        run
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
    fn work_handed_to_the_pool_runs_on_a_worker_and_gives_the_pool_back() {
        let taken = AtomicBool::new(false);
        // A plain thread, as the executor's stage threads are.
        let ((outer, inner), after) = std::thread::spawn(move || {
            let ran = on_pool_taking(&taken, || {
                let outer = rayon::current_thread_index();
                // Already on a worker: runs where it is, without waiting for the pool.
                let inner = on_pool_taking(&taken, rayon::current_thread_index);
                (outer, inner)
            });
            (ran, taken.load(Ordering::Acquire))
        })
        .join()
        .expect("no panic");
        assert!(outer.is_some(), "ran on the calling thread");
        assert_eq!(inner, outer, "the nested call moved");
        assert!(!after, "the pool stays taken");
    }

    #[test]
    fn a_second_caller_runs_where_it_is_while_the_pool_is_taken() {
        let taken = AtomicBool::new(true);
        let on = std::thread::spawn(move || on_pool_taking(&taken, rayon::current_thread_index));
        assert_eq!(on.join().expect("no panic"), None);
    }

    #[test]
    fn the_pool_is_given_back_when_the_work_panics() {
        let taken = AtomicBool::new(false);
        let panicked = std::panic::catch_unwind(|| on_pool_taking(&taken, || panic!("stage")));
        assert!(panicked.is_err());
        assert!(!taken.load(Ordering::Acquire), "the pool stays taken");
        assert!(on_pool_taking(&taken, rayon::current_thread_index).is_some());
    }

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
    fn zeros_over_the_pool_are_zeros_even_in_memory_the_allocator_reuses() {
        // Lengths below, at and past the pool's threshold, the last task's piece partial.
        for len in [
            5,
            POOL_ZEROS - 1,
            POOL_ZEROS,
            POOL_ZEROS + ZEROS_PER_TASK / 3 + 1,
        ] {
            // Memory full of ones, freed: the allocator keeps it and likely hands it back.
            drop(vec![1.0f32; len + ZEROS_PER_TASK]);
            let z = zeros(len);
            assert_eq!(z.len(), len);
            assert!(z.iter().all(|x| x.to_bits() == 0), "{len} floats");
            let mut v = Vec::new();
            grow_zeroed(&mut v, len);
            grow_zeroed(&mut v, len + 3);
            assert!(v.len() == len + 3 && v.iter().all(|x| x.to_bits() == 0));
        }
    }

    #[test]
    fn a_fresh_buffer_holds_what_its_pieces_tasks_wrote() {
        // Ten floats in pieces of four: 4, 4 and a shorter 2, written over the pool.
        let mut buf = Fresh::new(10);
        let pieces = buf.pieces(4);
        assert_eq!(
            pieces.iter().map(|p| p.run.len()).collect::<Vec<_>>(),
            [4, 4, 2]
        );
        pieces.into_par_iter().enumerate().for_each(|(i, p)| {
            let run = p.zeroed();
            assert!(run.iter().all(|x| x.to_bits() == 0), "zeroed before use");
            run[0] = i as f32 + 1.0;
        });
        assert_eq!(
            buf.into_vec(),
            [1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 0.0]
        );
    }

    #[test]
    #[should_panic(expected = "handed out once")]
    fn a_fresh_buffer_cut_twice_is_refused() {
        // Half of the pieces zeroed twice would add up to the length.
        let mut buf = Fresh::new(8);
        for _ in 0..2 {
            for p in buf.pieces(4).into_iter().take(1) {
                p.zeroed();
            }
        }
        buf.into_vec();
    }

    #[test]
    #[should_panic(expected = "pieces of a fresh buffer left unwritten")]
    fn a_fresh_buffer_with_a_piece_left_unwritten_is_refused() {
        let mut buf = Fresh::new(10);
        for p in buf.pieces(4).into_iter().take(2) {
            p.zeroed();
        }
        buf.into_vec();
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
