//! Speed of the one CPU matrix product (`nn::gemm`) on the shapes the models run, as a plain
//! harness (`cargo bench --bench gemm`): the MLP step's five products (784-400-400, batch 128)
//! and the im2col products of two VGG-16 (32×32, batch 32) layers, each in GFLOP/s, median of
//! many calls after warm-up, with every micro-kernel this CPU runs (they give the same bits,
//! at different speeds), and gemm 0.19 (`x86-v4`) on the same operands. With
//! `CFPIPE_TORCH_PYTHON` set, PyTorch's `torch.mm` on the same
//! shapes and layouts (`scripts/torch_gemm_bench.py`, which gets them from here as JSON,
//! 2 threads) is printed beside it.

use cfpipe::nn::gemm::{blocked, Mat};
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// (name, m, k, n, a transposed, b transposed)
const SHAPES: &[(&str, usize, usize, usize, bool, bool)] = &[
    ("mlp fwd W1·xT", 400, 784, 128, false, true),
    ("mlp fwd W2·h", 400, 400, 128, false, false),
    ("mlp bwd dW1=g·x", 400, 128, 784, false, false),
    ("mlp bwd dW2=g·hT", 400, 128, 400, false, true),
    ("mlp bwd dx2=W2T·g", 400, 400, 128, true, false),
    ("vgg 64ch 32x32 fwd", 64, 576, 32 * 1024, false, false),
    ("vgg 64ch 1 sample fwd", 64, 576, 1024, false, false),
    ("vgg 64ch 1 sample dW", 64, 1024, 576, false, true),
    ("vgg 512ch 4x4 fwd", 512, 4608, 32 * 16, false, false),
    ("vgg 512ch 4x4 dW", 512, 512, 4608, false, true),
];

fn main() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let torch = std::env::var("CFPIPE_TORCH_PYTHON").ok().and_then(|py| {
        // The same shapes, handed over as JSON so that one list serves both.
        let shapes = serde_json::to_string(SHAPES).expect("plain data");
        let out = std::process::Command::new(py)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/torch_gemm_bench.py"
            ))
            .arg(shapes)
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(v)
    });
    // `CFPIPE_GEMM_ONLY=mlp` times the shapes whose name contains it (for a profiler).
    let only = std::env::var("CFPIPE_GEMM_ONLY").unwrap_or_default();
    for &(name, m, k, n, ta, tb) in SHAPES.iter().filter(|s| s.0.contains(&*only)) {
        let ad: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let bd: Vec<f32> = (0..k * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let (a, b) = (Mat::laid_out(&ad, m, k, ta), Mat::laid_out(&bd, k, n, tb));
        let mut c = vec![0.0f32; m * n];
        let flop = 2.0 * (m * k * n) as f64;
        let reps = ((2e10 / flop) as usize).clamp(5, 2000);
        let mut line = format!("{name:<20} {m}×{k}×{n}:");
        let mut time = |label: &str, f: &dyn Fn(&mut [f32])| {
            for _ in 0..3 {
                f(&mut c);
            }
            let mut times: Vec<f64> = (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    f(&mut c);
                    t.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let t = times[reps / 2];
            line += &format!(" {label} {:.3} ms {:.0} GFLOP/s;", t * 1e3, flop / t / 1e9);
        };
        for isa in [blocked::Isa::Avx512, blocked::Isa::Avx2] {
            if isa.runs_here() {
                time(&format!("{isa:?}"), &|c| {
                    blocked::sgemm(a, b, c, false, isa)
                });
            }
        }
        // gemm 0.19, which picks its kernel and blocking by the CPU (so its bits follow the
        // machine): the library the issue proposed, for comparison.
        let threads = rayon::current_num_threads();
        time("gemm-0.19", &|c| {
            let ((ars, acs), (brs, bcs)) = (a.strides(), b.strides());
            // SAFETY: the pointers and strides describe `a` (m×k), `b` (k×n) and the
            // row-major m×n `c`, all valid for the call; `c` is not read (beta-free overwrite).
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.data.as_ptr(),
                    acs as isize,
                    ars as isize,
                    b.data.as_ptr(),
                    bcs as isize,
                    brs as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                )
            }
        });
        if let Some(ms) = torch.as_ref().and_then(|v| v[name].as_f64()) {
            line += &format!(" PyTorch {ms:.3} ms {:.0} GFLOP/s", flop / (ms / 1e3) / 1e9);
        }
        println!("{line}");
    }
}
