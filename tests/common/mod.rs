//! Test harness: tiny fixture datasets written as real IDX files, pipeline files in a temp
//! dir, and helpers that run either the library executor (to assert which stages ran) or the
//! real `cfpipe` binary (to assert exit codes and messages).
#![allow(dead_code)]

use cfpipe::cache::Cache;
use cfpipe::data::idx::write_idx;
use cfpipe::exec::{ExecOptions, Executor, RunReport};
use cfpipe::spec::DataCheck;
use std::path::{Path, PathBuf};
use std::process::Output;

mod process;
pub use process::*;

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

/// 4 classes of 8×8 images: each class lights a different quadrant, plus seeded noise, so a
/// tiny MLP learns them in a few steps but not perfectly.
pub fn write_dataset(dir: &Path, per_class: usize) {
    let (mut px, mut lb) = (Vec::new(), Vec::new());
    let mut state = 12345u64;
    let mut noise = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % 256) as u8
    };
    for i in 0..per_class * 4 {
        let c = (i % 4) as u8;
        for r in 0..8 {
            for col in 0..8 {
                let quadrant = (r / 4) * 2 + col / 4;
                let signal = if quadrant == c as usize { 60u16 } else { 0 };
                px.push((signal + noise() as u16 / 2).min(255) as u8);
            }
        }
        lb.push(c);
    }
    write_idx(&dir.join("img.gz"), &[per_class * 4, 8, 8], &px, true).unwrap();
    write_idx(&dir.join("lbl.gz"), &[per_class * 4], &lb, true).unwrap();
}

pub const PIPELINE: &str = r#"name: tiny
dataset:
  format: idx
  images: IMG
  labels: LBL
  test_fraction: 0.25
  split_seed: 0
tasks: [[0, 1], [2, 3]]
model:
  kind: mlp
  hidden: [16, 12]
training:
  optimizer: adam
  lr: 0.01
  batch_size: 16
  epochs: 3
  weight_decay: 0.001
seeds: [0]
strategies:
  naive:
    freeze: none
  rnf:
    freeze: until_threshold
    score:
      method: lrp
      rule: epsilon
      epsilon: 1.0e-6
      reference_size: 20
    prune:
      threshold: 0.3
      step_ratio: 0.1
    lr_frozen: 0.0
"#;

/// Two EWC strategies under `strategies:` (MAS importance on 20 training samples): `ewc_zero`
/// with λ = 0, which must train as naive does, and `ewc_strong` with λ = 1000.
pub const EWC_ZERO_AND_STRONG: &str = r#"  ewc_zero:
    freeze: none
    ewc:
      lambda: 0.0
      importance: {method: mas, reference_size: 20, reference_split: train}
  ewc_strong:
    freeze: none
    ewc:
      lambda: 1000.0
      importance: {method: mas, reference_size: 20, reference_split: train}
"#;

impl Fixture {
    pub fn new() -> Fixture {
        Self::with_pipeline(PIPELINE)
    }

    pub fn with_pipeline(text: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 60);
        let f = Fixture { dir };
        f.write_pipeline(text);
        f
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn pipeline(&self) -> PathBuf {
        self.path().join("pipeline.yaml")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.path().join("cache")
    }

    pub fn write_pipeline(&self, text: &str) {
        let t = text
            .replace("IMG", &self.path().join("img.gz").display().to_string())
            .replace("LBL", &self.path().join("lbl.gz").display().to_string());
        std::fs::write(self.pipeline(), t).unwrap();
    }

    /// Run through the library; returns the executor's report.
    pub fn run(&self, set: &[&str]) -> RunReport {
        self.run_in(&self.cache_dir(), set, 2)
    }

    pub fn run_in(&self, cache: &Path, set: &[&str], jobs: usize) -> RunReport {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let (_, dag) = cfpipe::load(&self.pipeline(), &set, DataCheck::Required).unwrap();
        run_dag(&dag, cache, jobs)
    }

    /// Looks up cached entries by stage id in the cache at `cache` (each must be cached there).
    pub fn entries_in(&self, cache: &Path) -> impl Fn(&str) -> cfpipe::cache::Entry {
        let (_, dag) = cfpipe::load(&self.pipeline(), &[], DataCheck::Required).unwrap();
        let cache = Cache::open(cache).unwrap();
        let res = cfpipe::exec::resolve::resolve(&dag, &cache);
        move |id: &str| {
            let n = dag.find(id).unwrap_or_else(|| panic!("no stage {id}"));
            res.iter()
                .find(|r| r.node == n)
                .unwrap()
                .entry
                .clone()
                .unwrap_or_else(|| panic!("{id} is not cached"))
        }
    }

    /// The trained model in the cached output of stage `id`.
    pub fn model_of(&self, id: &str) -> cfpipe::nn::model::ModelParams {
        model_at(&self.entries()(id))
    }

    /// [`Fixture::entries_in`] the fixture's cache.
    pub fn entries(&self) -> impl Fn(&str) -> cfpipe::cache::Entry {
        self.entries_in(&self.cache_dir())
    }

    /// The bytes of `file` in the cached output of stage `id` in the cache at `cache` (the
    /// stage must be cached there).
    pub fn output_in(&self, cache: &Path, id: &str, file: &str) -> Vec<u8> {
        std::fs::read(self.entries_in(cache)(id).output_path(file)).unwrap()
    }

    /// The bytes of `file` in the cached output of stage `id` in the fixture's cache.
    pub fn output(&self, id: &str, file: &str) -> Vec<u8> {
        self.output_in(&self.cache_dir(), id, file)
    }

    /// A JSON file from the cached output of stage `id` (which must be cached).
    pub fn json_of(&self, id: &str, file: &str) -> serde_json::Value {
        serde_json::from_slice(&self.output(id, file)).unwrap()
    }

    /// Start the real binary with `args` on the fixture's cache, output captured, for a test
    /// that acts on the run while it goes.
    pub fn start(&self, args: &[&str]) -> std::process::Child {
        let mut c = cfpipe();
        c.args(args).arg("--cache").arg(self.cache_dir());
        spawn(c)
    }

    /// Start `cfpipe run` on the fixture with `epochs` of training and `extra` arguments, and
    /// return once the first stage (the split) is published: the signal handlers are then in
    /// place and a train stage is under way, however loaded the machine.
    pub fn start_long_run(&self, epochs: u32, extra: &[&str]) -> std::process::Child {
        let p = self.pipeline();
        let epochs = format!("training.epochs={epochs}");
        let mut args = vec!["run", p.to_str().unwrap(), "--set", &epochs];
        args.extend(extra);
        let mut child = self.start(&args);
        wait_for_entries(&mut child, &self.cache_dir(), 1);
        child
    }

    /// The fixture's pipeline, with the `--set` overrides `set`, must be rejected before any
    /// work (exit 2), with `expect` in the message and a location in the pipeline file.
    pub fn assert_rejected(&self, set: &[&str], expect: &str) {
        let pipeline = self.pipeline();
        let mut args = vec!["dag", pipeline.to_str().unwrap()];
        for s in set {
            args.extend(["--set", s]);
        }
        let o = self.cli(&args);
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{set:?}, expecting `{expect}`: {err}"
        );
        assert!(err.contains(expect), "{set:?}, expecting `{expect}`: {err}");
        assert!(err.contains("pipeline.yaml:"), "{set:?}: {err}");
    }

    /// Run the real binary with `args`, cache in the fixture.
    pub fn cli(&self, args: &[&str]) -> Output {
        cfpipe()
            .args(args)
            .arg("--cache")
            .arg(self.cache_dir())
            .output()
            .unwrap()
    }
}

/// The fixture pipeline plus `strategy` (YAML under `strategies:`) must be rejected before any
/// work (exit 2), with `expect` in the message and a file location.
pub fn assert_rejected(strategy: &str, expect: &str) {
    Fixture::with_pipeline(&format!("{PIPELINE}{strategy}")).assert_rejected(&[], expect);
}

/// `f` on a pool of its own with `threads` threads: results that must not depend on the thread
/// count are compared across pools.
pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
        .install(f)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `a` ⊆ ids, and the report of mismatches if not.
pub fn set(items: &[&str]) -> std::collections::BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// (stages, ran) from the summary line `N stages: R ran, C cached (…)`.
pub fn summary(o: &Output) -> (usize, usize) {
    let out = stdout(o);
    assert!(!out.trim().is_empty(), "no summary: {}", stderr(o));
    summary_of(&out)
}

/// (stages, ran) from the last line of `out`, a run's stdout.
pub fn summary_of(out: &str) -> (usize, usize) {
    let line = out
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no summary: {out}"));
    let n = line.split(" stages:").next().unwrap().parse().unwrap();
    let ran = line
        .split("stages: ")
        .nth(1)
        .unwrap()
        .split(" ran")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (n, ran)
}

/// The trained model of a cached train stage.
pub fn model_at(e: &cfpipe::cache::Entry) -> cfpipe::nn::model::ModelParams {
    cfpipe::stages::artifacts::read_model(&e.output_path(""), "model").unwrap()
}

/// Layer `layer`'s unit flags (frozen, or kept by a prune) in a cached mask or prune stage.
pub fn unit_flags(e: &cfpipe::cache::Entry, layer: usize) -> Vec<bool> {
    use cfpipe::nn::tensorio::TensorMapExt;
    let mut m =
        cfpipe::nn::tensorio::decode(&std::fs::read(e.output_path("units.safetensors")).unwrap())
            .unwrap();
    m.take_u8(&format!("layer{layer}"))
        .unwrap()
        .1
        .into_iter()
        .map(|b| b != 0)
        .collect()
}

/// Run a pipeline file of the repo through the library with `--set` overrides, two jobs, and
/// assert nothing failed; returns the executor's report (to assert which stages ran). Data
/// paths in the repo's pipelines are relative to the repo root, where cargo runs tests.
pub fn run_repo_pipeline(pipeline: &str, set: &[&str], cache: &Path) -> RunReport {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    let (_, dag) = cfpipe::load(&root.join(pipeline), &set, DataCheck::Required).unwrap();
    run_dag(&dag, cache, 2)
}

/// Run `dag` through the library executor on the cache at `cache` with `jobs` workers, and
/// assert nothing failed; returns the report, to assert which stages ran.
pub fn run_dag(dag: &cfpipe::graph::Dag, cache: &Path, jobs: usize) -> RunReport {
    let cache = Cache::open(cache).unwrap();
    let registry = cfpipe::stages::registry();
    let opts = ExecOptions {
        jobs,
        ..ExecOptions::default()
    };
    let report = Executor::new(&cache, &registry, opts).run(dag);
    assert!(
        report.failed().is_empty(),
        "failures: {:?}",
        report.failed()
    );
    report
}
