//! Speed of a VGG-style block on the CPU, as a plain harness (`cargo bench --bench conv`):
//! conv 3×3, 64→64 channels, padding 1, on a 32×32 input, batch 32, then a 2×2 max-pool.
//! Forward alone, and forward plus backward with gradients for the weight, the bias and the
//! input; median over 10 runs after warm-up, for the CPU fast path and the composed path.
//! The goal is within 2× of PyTorch's CPU forward+backward (`scripts/torch_conv_bench.py`, the
//! same block, gradients for weight, bias and input, 2 threads). On the 2-core Zen 4 dev VM
//! (AVX-512) while it was quiet (load ≈ 1), medians of 5 interleaved runs: PyTorch 2.15
//! forward 20–25 ms, forward+backward 51.5 ms (35 ms without the input gradient); cfpipe
//! forward 22 ms, forward+backward 69.8 ms (1.36×). Under load (≈ 5) PyTorch's OpenMP threads
//! slow down far more than rayon's (PyTorch 255 ms, cfpipe 139–179 ms). A later quiet rerun
//! (load ≈ 1, after the merge): PyTorch forward+backward 59.5 and 60.8 ms, cfpipe 54.9 and
//! 57.0 ms (0.92–0.96×); the VGG-16 32×32 training step at batch 32 took cfpipe 628–640 ms and
//! PyTorch 357 ms (1.76×).
//! `CFPIPE_CONV_NO_AVX512=1` times the fast path with the AVX2 micro-kernel, as on CPUs without
//! AVX-512 (same bits, other speed).
//! Then a whole VGG-16 in its 32×32 (CIFAR) form — 13 conv layers with ReLU and 5 max-pools,
//! then 512→512→512→10 — forward and backward on a batch of 32, extrapolated to one epoch of
//! CIFAR's 50,000 training images (`cargo bench --bench conv -- vgg` runs only that).
//! Finally a whole training step (forward, backward, masked Adam step) of the pipeline's own
//! model type (`DeviceModel` with a conv `Arch`): the `small_cnn` preset on 1×28×28, batch 64,
//! and VGG-16's 32×32 form, batch 32 (`cargo bench --bench conv -- model`), with the Adam
//! update's own median beside VGG's step. `-- profile` runs twenty VGG-16 steps alone, for
//! `perf record` (`-- profile-small`: the small CNN);
//! `-- layers` times each of VGG-16's thirteen convolutions alone, forward and backward, which
//! is how the Winograd path's thresholds were chosen (`CFPIPE_BENCH_LAYER="512->512 at  4"`
//! times only the layers whose line contains the text).

use cfpipe::nn::conv::{self, composed};
use cfpipe::nn::tensor::Tensor4;
use cfpipe::nn::tensor::{Matrix, Vector};
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

/// CPU time of the whole process (all threads) so far. Wall times on a machine shared with
/// other jobs swing with its load; CPU time with `RAYON_NUM_THREADS=1` barely does, so it
/// compares versions of the code between runs (with more threads it includes rayon's spinning).
fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Median wall time and median process CPU time of one call, in ms.
struct Timing {
    wall: f64,
    cpu: f64,
}

fn time(warmup: usize, runs: usize, mut f: impl FnMut()) -> Timing {
    for _ in 0..warmup {
        f();
    }
    let (wall, cpu): (Vec<_>, Vec<_>) = (0..runs)
        .map(|_| {
            let (t, c) = (Instant::now(), process_cpu_time());
            f();
            (t.elapsed(), process_cpu_time() - c)
        })
        .unzip();
    Timing {
        wall: median(wall),
        cpu: median(cpu),
    }
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

/// VGG-16's conv configuration (`M` = 2×2 max-pool).
const VGG16: [Option<usize>; 18] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];

/// Forward + backward of VGG-16 (32×32 form, 10 classes) on one batch; returns ms per batch.
fn bench_vgg16(dev: &Cpu, batch: usize, runs: usize) -> f64 {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut uniform =
        |n: usize, a: f32| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-a..a)).collect() };
    let mut convs = Vec::new();
    let mut c = 3;
    for v in VGG16.iter().flatten() {
        let bound = 1.0 / ((c * 9) as f32).sqrt();
        let w: Tensor4<Cpu> = dev.tensor_from_vec(uniform(v * c * 9, bound), (*v, c, 3, 3));
        let b = dev.tensor_from_vec(uniform(*v, bound), (*v,));
        convs.push((w, b));
        c = *v;
    }
    let dense: Vec<(Matrix<Cpu>, Vector<Cpu>)> = [(512, 512), (512, 512), (10, 512)]
        .iter()
        .map(|&(o, i)| {
            let bound = 1.0 / (i as f32).sqrt();
            (
                dev.tensor_from_vec(uniform(o * i, bound), (o, i)),
                dev.tensor_from_vec(uniform(o, bound), (o,)),
            )
        })
        .collect();
    let x: Tensor4<Cpu> =
        dev.tensor_from_vec(uniform(batch * 3 * 32 * 32, 1.0), (batch, 3, 32, 32));
    time(1, runs, || {
        let mut it = convs.iter();
        let mut h: Option<Tensor4<Cpu, OwnedTape<f32, Cpu>>> = None;
        for layer in VGG16 {
            h = Some(match (layer, h.take()) {
                (Some(_), prev) => {
                    let (w, b) = it.next().expect("a conv per entry");
                    let y = match prev {
                        None => conv::conv2d(x.clone(), w.leaky_trace(), b.leaky_trace(), 1, 1),
                        Some(p) => conv::conv2d(p, w.leaky_trace(), b.leaky_trace(), 1, 1),
                    };
                    y.relu()
                }
                (None, Some(p)) => conv::max_pool2d(p, 2, 2),
                (None, None) => unreachable!("VGG starts with a conv"),
            });
        }
        let mut a = conv::flatten(h.expect("features"));
        for (k, (w, b)) in dense.iter().enumerate() {
            let (n, o) = (a.shape().0, w.shape().0);
            let z = a.matmul(w.leaky_trace().permute::<_, Axes2<1, 0>>())
                + b.leaky_trace().broadcast_like::<_, Axis<0>>(&(n, o));
            a = if k + 1 < dense.len() { z.relu() } else { z };
        }
        let grads = a.sum::<(), _>().backward();
        std::hint::black_box(grads);
    })
    .wall
}

/// Each convolution of VGG-16's 32×32 form alone: forward, then backward of a sum with the
/// input traced (as every layer but the first is in training); prints ms per layer.
fn bench_vgg_layers(dev: &Cpu, size: usize, batch: usize, runs: usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let (mut c, mut hw, mut total) = (3, size, 0.0);
    for layer in VGG16 {
        let Some(o) = layer else {
            hw /= 2;
            continue;
        };
        let name = format!("conv {c:>3}->{o:>3} at {hw:>2}x{hw:<2}");
        if !std::env::var("CFPIPE_BENCH_LAYER").map_or(true, |only| name.contains(&only)) {
            c = o;
            continue;
        }
        let mut u = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect() };
        let x: Tensor4<Cpu> = dev.tensor_from_vec(u(batch * c * hw * hw), (batch, c, hw, hw));
        let w: Tensor4<Cpu> = dev.tensor_from_vec(u(o * c * 9), (o, c, 3, 3));
        let b = dev.tensor_from_vec(u(o), (o,));
        let t = time(2, runs, || {
            let g = conv::conv2d(x.leaky_trace(), w.leaky_trace(), b.leaky_trace(), 1, 1)
                .sum::<(), _>()
                .backward();
            std::hint::black_box(g);
        });
        println!("{name}: {:.2} ms ({:.2} ms CPU)", t.wall, t.cpu);
        total += t.wall;
        c = o;
    }
    println!("all convolutions: {total:.1} ms");
}

/// One training step of the pipeline's model (`train`'s inner loop, on a pool worker as the
/// stage runs it: `on_pool`): medians of the whole step and of its optimizer update alone,
/// in ms.
fn bench_model_step(
    dev: &Cpu,
    a: &cfpipe::nn::arch::Arch,
    batch: usize,
    runs: usize,
) -> (f64, f64) {
    let (step, update, _) = bench_model_steps(dev, a, batch, runs, |_| true);
    (step, update)
}

/// [`bench_model_step`], with `on_worker(i)` saying whether step `i` runs on a pool worker or
/// from the calling thread; also the medians of the steps of each kind (NaN where none).
fn bench_model_steps(
    dev: &Cpu,
    a: &cfpipe::nn::arch::Arch,
    batch: usize,
    runs: usize,
    on_worker: impl Fn(usize) -> bool,
) -> (f64, f64, [f64; 2]) {
    use cfpipe::nn::model::{DeviceModel, ModelParams};
    use cfpipe::nn::optim::{MaskedOptimizer, OptimizerConfig};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let mut p = ModelParams::init_arch(a, &mut rng);
    p.push_head(10, &mut rng);
    let mut m = DeviceModel::from_host(dev, &p);
    let cfg = OptimizerConfig::Adam {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut opt = MaskedOptimizer::new(dev, cfg, &m.params, vec![None; m.params.len()]);
    let pixels: Vec<u8> = (0..batch * a.input_len()).map(|_| rng.gen()).collect();
    let labels: Vec<u16> = (0..batch).map(|i| (i % 10) as u16).collect();
    let x = m.input(&pixels);
    let (mut update, mut i, mut kinds) = (Vec::new(), 0, [Vec::new(), Vec::new()]);
    let step = time(1, runs, || {
        let mut step = || {
            m.dropout_seed = Some(1);
            let (_, grads) = m.loss_and_grads(&x, &labels, 0);
            let t = Instant::now();
            opt.step(&mut m.params, grads);
            update.push(t.elapsed());
        };
        let (t, worker) = (Instant::now(), on_worker(i));
        if worker {
            cfpipe::nn::host::on_pool(step);
        } else {
            step();
        }
        // The first step is the warm-up, which `time` does not count either.
        if i > 0 {
            kinds[usize::from(!worker)].push(t.elapsed());
        }
        i += 1;
    })
    .wall;
    let [w, c] = kinds.map(|k| if k.is_empty() { f64::NAN } else { median(k) });
    // `time` runs one step more than it times, the first.
    (step, median(update.split_off(1)), [w, c])
}

/// The CPU, as far as Linux says: model name, family and model, L1d size. Two VMs that both
/// call themselves "AMD EPYC" were Zen 5 and Zen 4 (48 and 32 KiB of L1d), whose AVX-512
/// runs at full and half width: ratios beside PyTorch differ between them (issue 19), so
/// every figure carries the machine it came from.
fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| "?".into())
    };
    let l1d = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cache/index0/size")
        .map_or_else(|_| "?".into(), |s| s.trim().to_string());
    format!(
        "{}, family {} model {}, L1d {l1d}",
        field("model name"),
        field("cpu family"),
        field("model")
    )
}

fn main() {
    // As the binary does (its allocator settings are part of its speed).
    if std::env::var_os("CFPIPE_BENCH_GLIBC_DEFAULTS").is_none() {
        cfpipe::nn::host::keep_freed_memory();
    }
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
         fast-path products on {}; {})",
        rayon::current_num_threads(),
        if avx512 {
            "the AVX-512 kernel"
        } else {
            "the AVX2 micro-kernel"
        },
        cpu()
    );
    // `cargo bench --bench conv -- fast` (or `composed`) runs one path only.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    // `-- profile`: twenty VGG-16 training steps alone, for `perf record` (no PyTorch, past
    // the first steps' page faults); `-- profile-small`: 500 steps of the small CNN.
    if only.iter().any(|o| o == "profile") {
        let (vgg, update) = bench_model_step(&dev, &cfpipe::nn::arch::vgg16(32, 1, 3), 32, 20);
        println!(
            "vgg16 (32x32 form) training step, batch 32: median {vgg:.0} ms over 20 steps, of \
             which the Adam update {update:.1} ms"
        );
        return;
    }
    // `-- layers`: each of VGG-16's convolutions (32×32 form, batch 32) alone, forward and
    // backward with the input traced; ms per layer. `-- layers224`: the ImageNet form's,
    // batch 2, 3 runs each.
    if only.iter().any(|o| o == "layers") {
        bench_vgg_layers(&dev, 32, 32, 10);
        return;
    }
    if only.iter().any(|o| o == "layers224") {
        bench_vgg_layers(&dev, 224, 2, 3);
        return;
    }
    // `-- pool`: forty VGG-16 steps, every other one from the calling thread instead of a
    // pool worker (`on_pool`), in one process so that the machine's drift touches both.
    if only.iter().any(|o| o == "pool") {
        let vgg = cfpipe::nn::arch::vgg16(32, 1, 3);
        let (_, _, [w, c]) = bench_model_steps(&dev, &vgg, 32, 40, |i| i % 2 == 1);
        println!(
            "vgg16 (32x32 form) training step, batch 32, alternating: median {w:.1} ms on a \
             pool worker, {c:.1} ms from the calling thread, ratio {:.3}",
            w / c
        );
        return;
    }
    if only.iter().any(|o| o == "profile-small") {
        let (small, _) = bench_model_step(&dev, &cfpipe::nn::arch::small_cnn([1, 28, 28]), 64, 500);
        println!("small_cnn 1x28x28 training step, batch 64: median {small:.2} ms over 500 steps");
        return;
    }
    if only.iter().any(|o| o == "model") || only.is_empty() {
        use cfpipe::nn::arch;
        // PyTorch beside each (2 threads), interleaved, when it is importable.
        let py = std::env::var("CFPIPE_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
        let torch = |script: &str, args: &[&str], field: &str| -> Option<f64> {
            let out = std::process::Command::new(&py)
                .arg(script)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())?;
            let v: serde_json::Value =
                serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).ok()?;
            v[field].as_f64()
        };
        let beside = |ours: f64, theirs: Option<f64>| match theirs {
            Some(t) => format!("PyTorch {t:.1} ms, ratio {:.2}", ours / t),
            None => "PyTorch not importable (set CFPIPE_TORCH_PYTHON)".into(),
        };
        for _ in 0..2 {
            let (small, _) = bench_model_step(&dev, &arch::small_cnn([1, 28, 28]), 64, 10);
            let theirs = torch(
                "scripts/torch_step_bench.py",
                &["--model", "small_cnn", "--threads", "2"],
                "step_ms_median",
            );
            println!(
                "small_cnn 1x28x28 training step, batch 64: median {small:.1} ms; {}",
                beside(small, theirs)
            );
            let (vgg, update) = bench_model_step(&dev, &arch::vgg16(32, 1, 3), 32, 10);
            let args = [
                "--device",
                "cpu",
                "--size",
                "32",
                "--batch",
                "32",
                "--classes",
                "10",
                "--steps",
                "10",
                "--warmup",
                "1",
                "--threads",
                "2",
            ];
            let theirs = torch("scripts/torch_vgg_bench.py", &args, "step_ms_median");
            println!(
                "vgg16 (32x32 form) training step, batch 32: median {vgg:.0} ms (Adam update \
                 {update:.1} ms); {}; one CIFAR epoch ≈ {:.1} min",
                beside(vgg, theirs),
                vgg * 50_000.0 / 32.0 / 60_000.0
            );
        }
        if only.iter().any(|o| o == "model") {
            return;
        }
    }
    if only.iter().any(|o| o == "vgg") || only.is_empty() {
        let batch = 32;
        let ms = bench_vgg16(&dev, batch, 3);
        let batches = 50_000f64 / batch as f64;
        println!(
            "VGG-16 (32x32 form) forward+backward, batch {batch}: median {ms:.0} ms; one CIFAR epoch \
             (50,000 images) ≈ {:.1} min",
            ms * batches / 60_000.0
        );
        if only.iter().any(|o| o == "vgg") {
            return;
        }
    }
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
            "{name:>14}: forward median {:7.1} ms (cpu {:7.1} ms), forward+backward median {:7.1} ms \
             (cpu {:7.1} ms) ({runs} runs)",
            fwd.wall, fwd.cpu, fwd_bwd.wall, fwd_bwd.cpu
        );
    }
}
