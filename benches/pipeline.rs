//! Speed and memory of the core paths, as a plain harness (`cargo bench`):
//! - one training step of the paper's MLP (784-400-400, batch 128, Adam) on the CPU,
//! - the whole bundled `mnist_split` pipeline from an empty cache (wall time, peak RSS),
//! - a fully cached rerun of it (the goal is under 25 ms),
//! - the cost of a fully cached rerun against the number of stages, up to a few thousand
//!   (a 1-epoch, 32-unit variant of `mnist_split` with more seeds and a threshold sweep, so
//!   that filling the caches takes seconds), beside a no-op `dvc repro` when `dvc` is on the
//!   PATH,
//! - the cost of every score method on 100 reference samples, relative to one training epoch
//!   of a split-MNIST task (1,600 samples), and of SI's per-step bookkeeping.
//!
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

fn bench_train_step() {
    let dev = Cpu::default();
    let (host, cfg) = paper_mlp();
    let mut model = DeviceModel::from_host(&dev, &host);
    let scales = vec![None; model.params.len()];
    let mut opt = MaskedOptimizer::new(&dev, cfg, &model.params, scales);
    let pixels: Vec<u8> = (0..128 * 784).map(|i| (i * 31 % 251) as u8).collect();
    let labels: Vec<u16> = (0..128).map(|i| (i % 2) as u16).collect();
    let x = images_to_tensor(&dev, &pixels, 784);
    let mut times = Vec::new();
    for i in 0..60 {
        let t = Instant::now();
        let (_, grads) = model.loss_and_grads(&x, &labels, 0);
        opt.step(&mut model.params, grads);
        if i >= 10 {
            times.push(t.elapsed());
        }
    }
    println!(
        "train step (MLP 784-400-400, batch 128, Adam): median {:.2} ms",
        median(times).as_secs_f64() * 1e3
    );
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

/// Run the cfpipe binary; returns (wall, peak RSS so far of any child, in KiB).
fn run_cfpipe(bin: &str, cache: &std::path::Path, extra: &[&str]) -> (Duration, u64, String) {
    let t = Instant::now();
    let out = Command::new(bin)
        .args(["run", "pipelines/mnist_split.yaml", "--quiet", "--cache"])
        .arg(cache)
        .args(extra)
        .output()
        .expect("run cfpipe");
    let wall = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    (wall, peak_rss_children_kib(), summary)
}

fn peak_rss_children_kib() -> u64 {
    // ru_maxrss of waited-for children, in KiB on Linux.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss as u64
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let bin = env!("CARGO_BIN_EXE_cfpipe");
    if std::env::var_os("CFPIPE_BENCH_ONLY_NOOP").is_some() {
        bench_noop_curve(bin);
        return;
    }
    bench_train_step();
    bench_score_methods();
    bench_noop_curve(bin);
    let dir = tempfile::tempdir().unwrap();
    let one = ["--set", "seeds=[0]"];
    let (cold, rss, summary) = run_cfpipe(bin, dir.path(), &one);
    println!(
        "mnist_split, seed 0, from an empty cache [{summary}]: {:.2} s, peak RSS {:.1} MiB",
        cold.as_secs_f64(),
        rss as f64 / 1024.0
    );
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
