//! Speed and memory of the core paths, as a plain harness (`cargo bench`):
//! - one training step of the paper's MLP (784-400-400, batch 128, Adam) on the CPU, beside
//!   PyTorch's (`scripts/torch_step_bench.py`) in three interleaved rounds,
//! - naive split-MNIST with one seed as a cold process, beside PyTorch's
//!   (`scripts/torch_split_mnist.py`): wall time and each child's own peak RSS,
//! - the whole bundled `mnist_split` pipeline from an empty cache (wall time, peak RSS),
//! - a fully cached rerun of it (the goal is under 25 ms),
//! - the cost of a fully cached rerun against the number of stages, up to a few thousand
//!   (a 1-epoch, 32-unit variant of `mnist_split` with more seeds and a threshold sweep, so
//!   that filling the caches takes seconds), beside a no-op `dvc repro` when `dvc` is on the
//!   PATH,
//! - the cost of every score method on 100 reference samples, relative to one training epoch
//!   of a split-MNIST task (1,600 samples), and of SI's per-step bookkeeping.
//!
//! PyTorch runs where `CFPIPE_TORCH_PYTHON` (default `python3`) imports torch; without it the
//! PyTorch columns say so. `CFPIPE_BENCH_ONLY=step|score|noop|cold` runs one part.
//! Figures go in the issue notes; tests never depend on timing.

use cfpipe::nn::model::{DeviceModel, ModelParams};
use cfpipe::nn::optim::{MaskedOptimizer, OptimizerConfig, PathIntegral};
use cfpipe::nn::tensor::images_to_tensor;
use cfpipe::xai::{importance, lrp};
use dfdx::prelude::*;
use rand::SeedableRng;
use std::process::Command;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The split-MNIST MLP of the RNF paper (784-400-400, one 2-way head) and its Adam settings.
fn paper_mlp() -> (ModelParams, OptimizerConfig) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut host = ModelParams::init(784, &[400, 400], &mut rng);
    host.push_head(2, &mut rng);
    let cfg = OptimizerConfig::Adam {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    (host, cfg)
}

/// The Python that has PyTorch: `CFPIPE_TORCH_PYTHON`, else `python3` if it imports torch.
fn torch_python() -> Option<String> {
    let py = std::env::var("CFPIPE_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

/// One cfpipe MLP step's median over 200 steps (after 20 of warm-up), in ms, on a pool
/// worker as the train stage runs them (`on_pool`).
fn cfpipe_step_ms() -> f64 {
    let dev = Cpu::default();
    let (host, cfg) = paper_mlp();
    let mut model = DeviceModel::from_host(&dev, &host);
    let scales = vec![None; model.params.len()];
    let mut opt = MaskedOptimizer::new(&dev, cfg, &model.params, scales);
    let pixels: Vec<u8> = (0..128 * 784).map(|i| (i * 31 % 251) as u8).collect();
    let labels: Vec<u16> = (0..128).map(|i| (i % 2) as u16).collect();
    let x = images_to_tensor(&dev, &pixels, 784);
    let times = cfpipe::nn::host::on_pool(|| {
        let mut times = Vec::new();
        for i in 0..220 {
            let t = Instant::now();
            let (_, grads) = model.loss_and_grads(&x, &labels, 0);
            opt.step(&mut model.params, grads);
            if i >= 20 {
                times.push(t.elapsed());
            }
        }
        times
    });
    median(times).as_secs_f64() * 1e3
}

/// PyTorch's step (`scripts/torch_step_bench.py --model mlp`, 2 threads), in ms.
fn torch_step_ms(py: &str) -> Option<f64> {
    let out = Command::new(py)
        .args([
            "scripts/torch_step_bench.py",
            "--model",
            "mlp",
            "--threads",
            "2",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    v["step_ms_median"].as_f64()
}

/// The MLP step, cfpipe and PyTorch interleaved over three rounds, with their ratio.
fn bench_train_step() {
    let py = torch_python();
    let mut rows = Vec::new();
    for _ in 0..3 {
        let ours = cfpipe_step_ms();
        let theirs = py.as_deref().and_then(torch_step_ms);
        rows.push((ours, theirs));
    }
    for (ours, theirs) in &rows {
        match theirs {
            Some(t) => println!(
                "train step (MLP 784-400-400, batch 128, Adam): cfpipe {ours:.2} ms, PyTorch {t:.2} ms, ratio {:.2}",
                ours / t
            ),
            None => println!(
                "train step (MLP 784-400-400, batch 128, Adam): cfpipe {ours:.2} ms (PyTorch not importable: set CFPIPE_TORCH_PYTHON)"
            ),
        }
    }
}

fn time_it(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    median(times).as_secs_f64()
}

fn bench_score_methods() {
    let dev = Cpu::default();
    let (host, cfg) = paper_mlp();
    let model = DeviceModel::from_host(&dev, &host);
    let pixels: Vec<u8> = (0..1600 * 784).map(|i| (i * 31 % 251) as u8).collect();
    let labels: Vec<u16> = (0..1600).map(|i| (i % 2) as u16).collect();
    // One epoch: 13 Adam steps of batch 128 (the last one partial), with and without SI.
    let epoch = |with_si: bool| {
        let mut m = DeviceModel::from_host(&dev, &host);
        let mut opt = MaskedOptimizer::new(&dev, cfg, &m.params, vec![None; m.params.len()]);
        let mut si = PathIntegral::default();
        for (xb, yb) in pixels.chunks(128 * 784).zip(labels.chunks(128)) {
            let x = images_to_tensor(&dev, xb, 784);
            let (_, grads) = m.loss_and_grads(&x, yb, 0);
            let before: Vec<_> = grads.iter().map(|(i, _)| m.params[*i].clone()).collect();
            let kept = if with_si { grads.clone() } else { Vec::new() };
            opt.step(&mut m.params, grads);
            if with_si {
                si.record(kept, before, &m.params);
            }
        }
    };
    let plain = time_it(5, || epoch(false));
    let with_si = time_it(5, || epoch(true));
    println!(
        "one epoch (1,600 samples): {:.1} ms; with SI bookkeeping {:.1} ms (+{:.0}%)",
        plain * 1e3,
        with_si * 1e3,
        (with_si / plain - 1.0) * 100.0
    );
    let (rx, ry) = (&pixels[..100 * 784], &labels[..100]);
    let x = images_to_tensor(&dev, rx, 784);
    let batch = importance::Batch {
        x: rx,
        y: ry,
        dim: 784,
    };
    type Method<'a> = (&'static str, Box<dyn Fn() + 'a>);
    let methods: Vec<Method> = vec![
        (
            "lrp (epsilon)",
            Box::new(|| drop(lrp::lrp_epsilon(&model, &x, ry, 0, 1e-6))),
        ),
        (
            "gradient_x_input",
            Box::new(|| drop(lrp::gradient_x_input(&model, &x, ry, 0))),
        ),
        (
            "fisher (per sample)",
            Box::new(|| {
                drop(importance::fisher(
                    &model,
                    &batch,
                    0,
                    importance::FisherLabels::GroundTruth,
                    importance::GradientMode::PerSample,
                    1,
                ))
            }),
        ),
        ("mas", Box::new(|| drop(importance::mas(&model, &batch, 0)))),
        ("sig", Box::new(|| drop(importance::sig(&model, &batch, 0)))),
    ];
    for (name, f) in methods {
        let t = time_it(5, f);
        println!(
            "score {name} on 100 samples: {:.2} ms = {:.3} epochs",
            t * 1e3,
            t / plain
        );
    }
}

/// The summary line's stage count (`N stages: …`).
fn stage_count(summary: &str) -> usize {
    summary
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A no-op `dvc repro` of a linear pipeline of `n` `cp` stages, timed as a process (median
/// of 5), or `None` without `dvc`.
fn dvc_noop(n: usize) -> Option<Duration> {
    let dir = tempfile::tempdir().ok()?;
    let d = dir.path();
    let run = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .current_dir(d)
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    run(&["git", "init", "-q"])?;
    run(&["dvc", "init", "-q"])?;
    std::fs::write(d.join("s0.txt"), "x").ok()?;
    let mut yaml = String::from("stages:\n");
    for i in 1..=n {
        yaml.push_str(&format!(
            "  s{i}:\n    cmd: cp s{}.txt s{i}.txt\n    deps: [s{}.txt]\n    outs: [s{i}.txt]\n",
            i - 1,
            i - 1
        ));
    }
    std::fs::write(d.join("dvc.yaml"), yaml).ok()?;
    run(&["dvc", "repro", "-q"])?;
    let mut t = Vec::new();
    for _ in 0..5 {
        let s = Instant::now();
        run(&["dvc", "repro", "-q"])?;
        t.push(s.elapsed());
    }
    Some(median(t))
}

/// Cached-rerun cost against stage count; cfpipe and DVC interleaved per size.
fn bench_noop_curve(bin: &str) {
    let seeds = |n: usize| {
        format!(
            "seeds=[{}]",
            (0..n).map(|s| s.to_string()).collect::<Vec<_>>().join(",")
        )
    };
    let sweep = |n: usize| {
        let v: Vec<String> = (1..=n).map(|i| format!("{:.2}", 0.01 * i as f64)).collect();
        format!("strategies.rnf.prune.threshold={}", v.join(","))
    };
    println!("cached rerun against stage count (1-epoch, 32-unit mnist_split):");
    println!(
        "| stages | cfpipe no-op (median of 7) | per stage | dvc repro no-op, same stage count |"
    );
    println!("|---|---|---|---|");
    for (n_seeds, points) in [(1, 0), (5, 0), (10, 0), (10, 3), (10, 9), (10, 15)] {
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "--set",
            "training.epochs=1",
            "--set",
            "model.hidden=[32, 32]",
            "--set",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(seeds(n_seeds));
        if points >= 2 {
            args.push("--sweep".into());
            args.push(sweep(points));
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (_, _, summary) = run_cfpipe(bin, dir.path(), &a);
        let stages = stage_count(&summary);
        let mut warm = Vec::new();
        for _ in 0..7 {
            warm.push(run_cfpipe(bin, dir.path(), &a).0);
        }
        let t = median(warm);
        // DVC's first repro of a few hundred stages takes minutes: compared up to 200.
        let dvc = if stages > 200 {
            "–".to_string()
        } else {
            dvc_noop(stages).map_or("dvc not installed".into(), |d| {
                format!("{:.0} ms", d.as_secs_f64() * 1e3)
            })
        };
        println!(
            "| {stages} | {:.1} ms | {:.1} µs | {dvc} |",
            t.as_secs_f64() * 1e3,
            t.as_secs_f64() * 1e6 / stages.max(1) as f64
        );
    }
}

/// Run the cfpipe binary; returns (wall, the child's peak RSS in KiB, its summary line).
// The child is reaped by `wait4` (for its own rusage), not `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run_cfpipe(bin: &str, cache: &std::path::Path, extra: &[&str]) -> (Duration, u64, String) {
    let mut cmd = Command::new(bin);
    cmd.args(["run", "pipelines/mnist_split.yaml", "--quiet", "--cache"])
        .arg(cache)
        .args(extra)
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run cfpipe");
    let t = Instant::now();
    // --quiet prints one line, which the pipe holds until the child has been reaped.
    let (status, rss) = wait_rss(child.id() as libc::pid_t);
    let wall = t.elapsed();
    let mut out = String::new();
    use std::io::Read as _;
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)
        .expect("cfpipe's output");
    assert!(status == 0, "cfpipe exited with {status}");
    let summary = out.lines().last().unwrap_or("").to_string();
    (wall, rss, summary)
}

/// Spawn `cmd`, wait for it; its wall time and peak RSS in KiB, or `None` if it failed.
#[allow(clippy::zombie_processes)]
fn timed_child(cmd: &mut Command) -> Option<(Duration, u64)> {
    let child = cmd.spawn().ok()?;
    let t = Instant::now();
    let (status, rss) = wait_rss(child.id() as libc::pid_t);
    (status == 0).then(|| (t.elapsed(), rss))
}

/// Wait for child `pid`; its exit status and its own peak RSS in KiB (wait4's rusage, so one
/// child's figure is not the largest of all children so far).
fn wait_rss(pid: libc::pid_t) -> (i32, u64) {
    let mut status = 0;
    // SAFETY: plain libc calls with valid out-pointers; `pid` is our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // A signal (the terminal's, a profiler's) interrupts the wait; anything else means the
    // child is not ours to reap, and its figures would be zeros.
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert!(
            r == -1 && err.kind() == std::io::ErrorKind::Interrupted,
            "wait4({pid}): {err}"
        );
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, usage.ru_maxrss as u64)
}

fn main() {
    // As the binary does (its allocator settings are part of its speed).
    if std::env::var_os("CFPIPE_BENCH_GLIBC_DEFAULTS").is_none() {
        cfpipe::nn::host::keep_freed_memory();
    }
    // `cargo bench` passes `--bench`; ignore arguments.
    let bin = env!("CARGO_BIN_EXE_cfpipe");
    // `CFPIPE_BENCH_ONLY=step|score|noop|cold` runs one part (`CFPIPE_BENCH_ONLY_NOOP=1` is
    // the older spelling of `noop`).
    let only = std::env::var("CFPIPE_BENCH_ONLY")
        .ok()
        .or_else(|| std::env::var_os("CFPIPE_BENCH_ONLY_NOOP").map(|_| "noop".to_string()));
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if part("step") {
        bench_train_step();
    }
    if part("score") {
        bench_score_methods();
    }
    if part("noop") {
        bench_noop_curve(bin);
    }
    if part("cold") {
        bench_cold(bin);
    }
}

/// The whole job from an empty cache beside PyTorch's, then cached reruns.
fn bench_cold(bin: &str) {
    let one = [
        "--set",
        "seeds=[0]",
        "--set",
        "strategies={naive: {freeze: none}}",
    ];
    let py = torch_python();
    // Whole naive split-MNIST, one seed, cold: cfpipe from an empty cache and PyTorch's
    // script, interleaved, with wall time and peak RSS (each child's own, from wait4).
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let (cold, rss, summary) = run_cfpipe(bin, dir.path(), &one);
        let theirs = py.as_deref().and_then(|py| {
            let mut cmd = Command::new(py);
            cmd.args(["scripts/torch_split_mnist.py", "data/mnist"])
                .stdout(std::process::Stdio::null());
            timed_child(&mut cmd)
        });
        let (t, r) = theirs.map_or((f64::NAN, f64::NAN), |(t, r)| {
            (t.as_secs_f64(), r as f64 / 1024.0)
        });
        println!(
            "naive split-MNIST, seed 0, cold [{summary}]: cfpipe {:.2} s, {:.1} MiB; PyTorch {t:.2} s, {r:.1} MiB; ratio {:.2} time, {:.3} RSS",
            cold.as_secs_f64(),
            rss as f64 / 1024.0,
            cold.as_secs_f64() / t,
            rss as f64 / 1024.0 / r
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let one = ["--set", "seeds=[0]"];
    run_cfpipe(bin, dir.path(), &one);
    let mut warm = Vec::new();
    for _ in 0..20 {
        warm.push(run_cfpipe(bin, dir.path(), &one).0);
    }
    println!(
        "mnist_split, seed 0, fully cached rerun (process start to exit): median {:.1} ms",
        median(warm).as_secs_f64() * 1e3
    );
    let dir5 = tempfile::tempdir().unwrap();
    let (five, rss5, summary) = run_cfpipe(bin, dir5.path(), &[]);
    println!(
        "mnist_split as shipped, 5 seeds, from an empty cache [{summary}]: {:.2} s, peak RSS {:.1} MiB",
        five.as_secs_f64(),
        rss5 as f64 / 1024.0
    );
    let mut warm5 = Vec::new();
    for _ in 0..10 {
        warm5.push(run_cfpipe(bin, dir5.path(), &[]).0);
    }
    println!(
        "mnist_split as shipped, fully cached rerun: median {:.1} ms",
        median(warm5).as_secs_f64() * 1e3
    );
}
