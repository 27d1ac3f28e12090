//! `cfpipe run --executor slurm` on the real single-node Slurm of scripts/slurm-local.sh: every
//! stage that runs is one batch job of `cfpipe exec-stage`, cached stages are never submitted,
//! results are bit-identical to a local run's, and a failed job is reported with its id, state
//! and log. Without Slurm these skip loudly; with `CI` set, a missing Slurm is a failure.

mod common;
use common::{entry_keys, slurm_up, stderr, stdout, summary, Fixture};
use std::process::Output;

/// `cfpipe run --executor slurm` on the fixture with `set` overrides.
fn run_on_slurm(f: &Fixture, cache: &str, set: &[&str]) -> Output {
    let p = f.pipeline();
    let cache = f.path().join(cache);
    let mut args = vec![
        "run",
        p.to_str().unwrap(),
        "--quiet",
        "--executor",
        "slurm",
        "--cache",
        cache.to_str().unwrap(),
    ];
    for s in set {
        args.extend(["--set", s]);
    }
    common::cfpipe().args(&args).output().unwrap()
}

/// The jobs Slurm knows under the run's job name (printed by the driver).
fn jobs_of(o: &Output) -> Vec<String> {
    let err = stderr(o);
    let name = err
        .split("Slurm jobs are named ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job name in: {err}"));
    let q = std::process::Command::new("squeue")
        .args(["--noheader", "--states=all", "--format=%i"])
        .arg(format!("--name={name}"))
        .output()
        .unwrap();
    stdout(&q).lines().map(|l| l.trim().to_string()).collect()
}

/// Content hash of every entry in the cache at `dir`, by key.
fn contents(dir: &std::path::Path) -> Vec<(String, String)> {
    let cache = cfpipe::cache::Cache::open(dir).unwrap();
    entry_keys(dir)
        .into_iter()
        .map(|k| {
            let key = cfpipe::digest::StageKey::from_hex(&k).unwrap();
            match cache.lookup(&key) {
                cfpipe::cache::Lookup::Hit(e) => (k, e.content_hash().to_hex()),
                _ => panic!("entry {k} does not verify"),
            }
        })
        .collect()
}

#[test]
fn every_stage_that_runs_is_one_job_cached_ones_are_never_submitted_and_results_match_local() {
    if !slurm_up() {
        return;
    }
    let f = Fixture::new();
    let local = f.cli(&["run", f.pipeline().to_str().unwrap(), "--quiet"]);
    assert!(local.status.success(), "{}", stderr(&local));

    let first = run_on_slurm(&f, "slurm-cache", &[]);
    assert!(
        first.status.success(),
        "{}{}",
        stdout(&first),
        stderr(&first)
    );
    let (n, ran) = summary(&first);
    assert_eq!(ran, n, "{}", stdout(&first));
    assert_eq!(jobs_of(&first).len(), ran, "one job per stage that ran");
    // The same keys and the same bytes as on the login node.
    assert_eq!(
        contents(&f.path().join("slurm-cache")),
        contents(&f.cache_dir())
    );

    // Everything cached: nothing is submitted.
    let again = run_on_slurm(&f, "slurm-cache", &[]);
    assert_eq!(summary(&again), (n, 0), "{}", stdout(&again));
    assert_eq!(jobs_of(&again), Vec::<String>::new());

    // A threshold change submits exactly rnf's prune, mask and what follows them.
    let changed = run_on_slurm(&f, "slurm-cache", &["strategies.rnf.prune.threshold=0.05"]);
    assert!(changed.status.success(), "{}", stderr(&changed));
    let (_, ran) = summary(&changed);
    let local = f.run(&["strategies.rnf.prune.threshold=0.05"]);
    assert!(
        ran > 0 && ran == local.ran().len(),
        "{ran} vs {:?}",
        local.ran()
    );
    assert!(
        local.ran().iter().all(|id| id.starts_with("rnf/")),
        "{:?}",
        local.ran()
    );
    assert_eq!(jobs_of(&changed).len(), ran);
}

#[test]
fn a_failed_job_names_the_stage_job_state_and_log_and_its_dependants_are_skipped() {
    if !slurm_up() {
        return;
    }
    let f = Fixture::new();
    let o = run_on_slurm(&f, "cache", &["training.lr=1e38"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.starts_with("FAILED naive/seed0/task1/train"))
        .unwrap_or_else(|| panic!("no FAILED line: {err}"));
    let jobs = jobs_of(&o);
    assert!(
        jobs.iter()
            .any(|j| line.contains(&format!("Slurm job {j} FAILED"))),
        "{line} / jobs {jobs:?}"
    );
    // The stage's own error, from the job's log, and the log's path, which exists.
    assert!(line.contains("loss is"), "{line}");
    let log = line.rsplit("log: ").next().unwrap();
    assert!(std::path::Path::new(log).is_file(), "{log}");
    // A stage's own error is not retried: split and the failed train, two jobs.
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(err.contains("skipped naive/seed0/task2/train"), "{err}");
    assert!(stdout(&o).contains("1 ran"), "{}", stdout(&o));
}
