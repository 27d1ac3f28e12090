//! Speed of a VGG-style block on the CPU, as a plain harness (`cargo bench --bench conv`):
//! conv 3×3, 64→64 channels, padding 1, on a 32×32 input, batch 32, then a 2×2 max-pool.
//! Forward alone, and forward plus backward with gradients for the weight, the bias and the
//! input; median over 10 runs after warm-up, for the CPU fast path and the composed path.
//! The goal is at most 50 ms forward+backward on the fast path (PyTorch's CPU takes ~25 ms).
//! `CFPIPE_CONV_NO_AVX512=1` times the fast path with dfdx's gemm, as on CPUs without AVX-512.

use cfpipe::nn::conv::{self, composed, Tensor4};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

const N: usize = 32;
const C: usize = 64;
const O: usize = 64;
const HW: usize = 32;

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn time(warmup: usize, runs: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Fast,
    Composed,
}

fn block<T: Tape<f32, Cpu> + Merge<TX>, TX: Tape<f32, Cpu>>(
    path: Path,
    x: Tensor4<Cpu, TX>,
    w: Tensor4<Cpu, T>,
    b: Tensor<(usize,), f32, Cpu, T>,
) -> Tensor4<Cpu, T> {
    match path {
        Path::Fast => conv::max_pool2d(conv::conv2d(x, w, b, 1, 1), 2, 2),
        Path::Composed => composed::max_pool2d(composed::conv2d(x, w, b, 1, 1), 2, 2),
    }
}

fn main() {
    let dev = Cpu::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut uniform =
        |n: usize, a: f32| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-a..a)).collect() };
    let x: Tensor4<Cpu> = dev.tensor_from_vec(uniform(N * C * HW * HW, 1.0), (N, C, HW, HW));
    let bound = 1.0 / ((C * 9) as f32).sqrt();
    let w: Tensor4<Cpu> = dev.tensor_from_vec(uniform(O * C * 9, bound), (O, C, 3, 3));
    let b = dev.tensor_from_vec(uniform(O, bound), (O,));
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::is_x86_feature_detected!("avx512f")
        && std::env::var_os("CFPIPE_CONV_NO_AVX512").is_none();
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    println!(
        "conv 3x3 {C}->{O} pad 1 on {N}x{C}x{HW}x{HW}, then max-pool 2x2 ({} rayon threads, \
         fast-path products on {})",
        rayon::current_num_threads(),
        if avx512 {
            "the AVX-512 kernel"
        } else {
            "dfdx's gemm"
        }
    );
    // `cargo bench --bench conv -- fast` (or `composed`) runs one path only.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (path, name, runs) in [
        (Path::Fast, "cpu fast path", 10),
        (Path::Composed, "composed", 3),
    ] {
        if !only.is_empty() && !only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        let fwd = time(2, runs, || {
            let out = block(path, x.clone(), w.clone(), b.clone());
            std::hint::black_box(out);
        });
        let fwd_bwd = time(2, runs, || {
            let out = block(path, x.leaky_trace(), w.leaky_trace(), b.leaky_trace());
            let grads = out.sum::<(), _>().backward();
            std::hint::black_box(grads);
        });
        println!(
            "{name:>14}: forward median {fwd:7.1} ms, forward+backward median {fwd_bwd:7.1} ms ({runs} runs)"
        );
    }
}
