//! The one matrix product of the CPU fast paths (`conv`, `dense`): a packed-panel sgemm with
//! AVX-512, AVX2 and scalar micro-kernels that round alike ([`blocked`]), over [`Mat`] views
//! of host buffers (a transposed operand is a free view). The dense layers and the
//! convolutions share it so that a model trains the same bits on every x86 CPU and thread
//! count, which a team cache filed by content needs.

pub use blocked::{Lhs, PackedA};

/// A matrix in a host buffer: row-major `[rows, cols]`, or with `transposed` the transpose
/// of a row-major `[cols, rows]` buffer (a free view, as the backward pass needs).
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
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

    /// A `[rows, cols]` matrix stored row-major, or, with `transposed`, stored as its
    /// row-major transpose `[cols, rows]`.
    pub fn laid_out(data: &'a [f32], rows: usize, cols: usize, transposed: bool) -> Self {
        if transposed {
            Mat::new(data, cols, rows).t()
        } else {
            Mat::new(data, rows, cols)
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
    pub(crate) fn to_tensor(
        self,
        dev: &dfdx::prelude::Cpu,
    ) -> crate::nn::tensor::Matrix<dfdx::prelude::Cpu> {
        use dfdx::prelude::*;
        if self.transposed {
            dev.tensor_from_vec(self.data.to_vec(), (self.cols, self.rows))
                .permute::<_, Axes2<1, 0>>()
        } else {
            dev.tensor_from_vec(self.data.to_vec(), (self.rows, self.cols))
        }
    }
}

/// `c = a · b`, or `c += a · b` with `accumulate`; `c` is row-major. Always the blocked kernel of [`blocked`], whose rounding
/// is the same on every CPU: its AVX-512, AVX2 and scalar micro-kernels do the same fused
/// multiply-adds in the same order, so a teammate's machine, or a cluster node with other
/// instructions, computes the same bits. (dfdx's gemm blocks by the cache sizes cpuid
/// reports and picks its micro-kernel by the CPU, so its rounding follows the machine; gemm
/// 0.19 does the same. Their speed against this kernel is in docs/performance.md.)
pub fn gemm(a: Mat, b: Mat, c: &mut [f32], accumulate: bool) {
    gemm_on(a, b, c, accumulate, rayon::current_num_threads());
}

/// [`gemm`] on the calling thread alone (the same bits), with `a` a matrix or packed
/// beforehand ([`PackedA`]): for callers that already run one task per thread, whose data
/// stays in that core's cache.
pub fn gemm_here<'a>(a: impl Into<Lhs<'a>>, b: Mat, c: &mut [f32], accumulate: bool) {
    gemm_on(a, b, c, accumulate, 1);
}

fn gemm_on<'a>(a: impl Into<Lhs<'a>>, b: Mat, c: &mut [f32], accumulate: bool, threads: usize) {
    let a = a.into();
    let (rows, cols) = a.shape();
    assert_eq!(cols, b.rows, "gemm: inner dimensions differ");
    assert_eq!(c.len(), rows * b.cols, "gemm: output size");
    blocked::sgemm_on(a, b, c, accumulate, blocked::Isa::detect(), threads);
}

/// One product for [`gemm_pair`]: `(a, b, c, accumulate)`.
pub type Product<'a, 'c> = (Mat<'a>, Mat<'a>, &'c mut [f32], bool);

/// Two independent products, each as [`gemm`] computes it (the same bits). Where both are
/// large enough to split over the pool, they run side by side instead, each on one thread:
/// one parallel region where there were two (each wakes the pool from a stage's thread), and
/// no operand packed twice (a product split over two threads packs its shared operand in
/// each half). A dense layer's backward pass has such a pair, `∂W` and `∂x`.
pub fn gemm_pair(p: Product, q: Product) {
    let large = |(a, b, _, _): &Product| blocked::is_parallel(a.rows, a.cols, b.cols);
    if rayon::current_num_threads() >= 2 && large(&p) && large(&q) {
        rayon::join(
            || gemm_on(p.0, p.1, p.2, p.3, 1),
            || gemm_on(q.0, q.1, q.2, q.3, 1),
        );
    } else {
        gemm(p.0, p.1, p.2, p.3);
        gemm(q.0, q.1, q.2, q.3);
    }
}

/// dfdx's matmul, for comparisons in tests and benches.
#[cfg(test)]
pub(crate) fn dfdx_gemm(dev: &dfdx::prelude::Cpu, a: Mat, b: Mat, c: &mut [f32], accumulate: bool) {
    use dfdx::prelude::*;
    let prod = a.to_tensor(dev).matmul(b.to_tensor(dev));
    if accumulate {
        let prod = crate::nn::host::host_slice(&prod);
        c.iter_mut().zip(prod).for_each(|(d, s)| *d += s);
    } else {
        prod.copy_into(c);
    }
}

pub mod blocked;

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn a_pair_of_products_gives_each_products_own_bits() {
        // Both large enough to run side by side (each on one thread), one transposed and one
        // accumulating, as a dense layer's ∂W and ∂x: the bits of each alone through `gemm`.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut v = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect() };
        let (m, k, n) = (100, 64, 50);
        assert!(blocked::is_parallel(m, k, n) && blocked::is_parallel(k, m, n));
        let (a1, b1, a2, b2) = (v(m * k), v(k * n), v(m * k), v(m * n));
        let (c1, c2) = (v(m * n), v(k * n));
        let p = (Mat::new(&a1, m, k), Mat::new(&b1, k, n));
        let q = (Mat::new(&a2, m, k).t(), Mat::new(&b2, m, n));
        let (mut alone1, mut alone2) = (c1.clone(), c2.clone());
        gemm(p.0, p.1, &mut alone1, false);
        gemm(q.0, q.1, &mut alone2, true);
        let (mut pair1, mut pair2) = (c1, c2);
        gemm_pair((p.0, p.1, &mut pair1, false), (q.0, q.1, &mut pair2, true));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&pair1) == bits(&alone1), "the first product differs");
        assert!(bits(&pair2) == bits(&alone2), "the second product differs");
    }

    #[test]
    fn matrices_packed_together_multiply_as_each_alone() {
        // Three matrices interleaved in one buffer, as a weight's taps: element (r, c) of
        // matrix t at (r·cols + c)·3 + t. Rows past a panel and columns past a KC block, as
        // they lie and transposed; each gathered one times a matrix gives the bits of the
        // matrix itself packed as the product runs.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let mut v = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect() };
        let (rows, cols, n, count) = (13, 300, 40, 3);
        let both = v(rows * cols * count);
        let b = v(cols * n);
        let bt = v(rows * n);
        let alone =
            |t: usize| -> Vec<f32> { (0..rows * cols).map(|rc| both[rc * count + t]).collect() };
        let gathered = PackedA::interleaved(&both, count, (rows, cols), (cols * count, count));
        let transposed = PackedA::interleaved(&both, count, (cols, rows), (count, cols * count));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for t in 0..count {
            let a = alone(t);
            let a = Mat::new(&a, rows, cols);
            let (mut want, mut got) = (vec![0.0; rows * n], vec![0.0; rows * n]);
            gemm_here(a, Mat::new(&b, cols, n), &mut want, false);
            gemm_here(&gathered[t], Mat::new(&b, cols, n), &mut got, false);
            assert!(bits(&got) == bits(&want), "matrix {t} differs");
            let (mut want, mut got) = (vec![0.0; cols * n], vec![0.0; cols * n]);
            gemm_here(a.t(), Mat::new(&bt, rows, n), &mut want, false);
            gemm_here(&transposed[t], Mat::new(&bt, rows, n), &mut got, false);
            assert!(bits(&got) == bits(&want), "matrix {t} transposed differs");
        }
        // No rows, or no columns: empty matrices, and products with them.
        for shape in [(0, 5), (5, 0)] {
            let none = PackedA::interleaved(&[], 2, shape, (shape.1, 1));
            assert!(none.len() == 2 && none.iter().all(|a| a.shape() == shape));
            let mut c = vec![1.0; shape.0 * 3];
            gemm_here(
                &none[1],
                Mat::new(&vec![0.5; shape.1 * 3], shape.1, 3),
                &mut c,
                false,
            );
            assert!(c.iter().all(|&x| x == 0.0));
        }
    }

    /// Every host matrix product the CPU paths take (the micro-kernel this CPU selects)
    /// against a naive loop: edge tiles, transposed operands, several KC, MC and NC blocks,
    /// accumulation, products split over the pool, left operands packed beforehand.
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
            // More rows than an MC block and more columns than an NC block.
            (390, 20, 2050),
        ] {
            for (ta, tb, acc) in (0..8).map(|b| (b & 1 == 1, b & 2 == 2, b & 4 == 4)) {
                let (ad, bd, c0) = (uniform(m * k), uniform(k * n), uniform(m * n));
                let (a, b) = (Mat::laid_out(&ad, m, k, ta), Mat::laid_out(&bd, k, n, tb));
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
                gemm(a, b, &mut c, acc);
                // A left operand packed beforehand, on one thread: the same bits.
                let mut packed = c0.clone();
                gemm_here(&PackedA::new(a), b, &mut packed, acc);
                assert!(
                    packed
                        .iter()
                        .map(|v| v.to_bits())
                        .eq(c.iter().map(|v| v.to_bits())),
                    "packed beforehand differs at {m}×{k}×{n} ta={ta} tb={tb} acc={acc}"
                );
                runs.push(("dispatched", c));
                let mut c = c0.clone();
                dfdx_gemm(&cpu, a, b, &mut c, acc);
                runs.push(("dfdx", c));
                use blocked::Isa;
                let mut bits = Vec::new();
                for isa in [Isa::Avx512, Isa::Avx2, Isa::Scalar] {
                    if !isa.runs_here() {
                        continue;
                    }
                    let mut c = c0.clone();
                    // Stale packing buffers must not leak into the result: every thread's
                    // are poisoned, the pool's too (its tasks pack into their own).
                    let poison = || {
                        let nan = vec![f32::NAN; 200_000];
                        blocked::PACKED.set((nan.clone(), nan));
                    };
                    poison();
                    rayon::broadcast(|_| poison());
                    blocked::sgemm(a, b, &mut c, acc, isa);
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
