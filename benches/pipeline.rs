//! Speed and memory of the core paths, as a plain harness (`cargo bench`):
//! - one training step of the paper's MLP (784-400-400, batch 128, Adam) on the CPU,
//! - the whole bundled `mnist_split` pipeline from an empty cache (wall time, peak RSS),
//! - a fully cached rerun of it (the goal is under 25 ms).
//!
//! Figures go in the issue notes; tests never depend on timing.

use cfpipe::nn::mlp::{images_to_tensor, DeviceMlp, MlpParams};
use cfpipe::nn::optim::{MaskedOptimizer, OptimizerConfig};
use dfdx::prelude::*;
use rand::SeedableRng;
use std::process::Command;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench_train_step() {
    let dev = Cpu::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut host = MlpParams::init(784, &[400, 400], &mut rng);
    host.push_head(2, &mut rng);
    let mut model = DeviceMlp::from_host(&dev, &host);
    let cfg = OptimizerConfig::Adam {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let scales = vec![None; model.params.len()];
    let mut opt = MaskedOptimizer::new(&dev, cfg, &model.params, scales);
    let pixels: Vec<u8> = (0..128 * 784).map(|i| (i * 31 % 251) as u8).collect();
    let labels: Vec<u8> = (0..128).map(|i| (i % 2) as u8).collect();
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
    bench_train_step();
    let bin = env!("CARGO_BIN_EXE_cfpipe");
    let dir = tempfile::tempdir().unwrap();
    let (cold, rss, summary) = run_cfpipe(bin, dir.path(), &[]);
    println!(
        "mnist_split from an empty cache [{summary}]: {:.2} s, peak RSS {:.1} MiB",
        cold.as_secs_f64(),
        rss as f64 / 1024.0
    );
    let mut warm = Vec::new();
    for _ in 0..20 {
        warm.push(run_cfpipe(bin, dir.path(), &[]).0);
    }
    println!(
        "mnist_split fully cached rerun (process start to exit): median {:.1} ms",
        median(warm).as_secs_f64() * 1e3
    );
    let dir5 = tempfile::tempdir().unwrap();
    let (five, rss5, summary) = run_cfpipe(bin, dir5.path(), &["--set", "seeds=[0,1,2,3,4]"]);
    println!(
        "mnist_split with 5 seeds [{summary}]: {:.2} s, peak RSS {:.1} MiB",
        five.as_secs_f64(),
        rss5 as f64 / 1024.0
    );
}
