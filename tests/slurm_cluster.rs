//! The test cluster itself (scripts/slurm-local.sh): cfpipe runs as a batch job on it, with
//! the same results as on the login node, and a GPU request reaches the scheduler. These are
//! the ground the Slurm executor's tests stand on. Without Slurm (`SLURM_CONF` unset or
//! `sinfo` failing) they skip loudly; when `CI` is set, a missing Slurm is a failure.

mod common;
use common::{entry_keys, slurm_up, stderr, stdout, Fixture};
use std::process::Command;

/// Submit `script` with `args` and wait for it to end; returns (job id, sbatch output).
fn sbatch_wait(args: &[&str], script: &str) -> (String, std::process::Output) {
    let o = common::without_cfpipe_settings(&mut Command::new("sbatch"))
        .args(["--wait", "--parsable"])
        .args(args)
        .arg("--wrap")
        .arg(script)
        .output()
        .unwrap();
    let id = stdout(&o)
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    (id, o)
}

#[test]
fn a_pipeline_run_as_a_batch_job_gives_the_same_entries_as_a_local_run() {
    if !slurm_up() {
        return;
    }
    let f = Fixture::new();
    let p = f.pipeline();
    let local = f.cli(&["run", p.to_str().unwrap(), "--quiet"]);
    assert!(local.status.success(), "{}", stderr(&local));

    let job_cache = f.path().join("job-cache");
    let log = f.path().join("job.log");
    let script = format!(
        "{} run {} --cache {}",
        env!("CARGO_BIN_EXE_cfpipe"),
        p.display(),
        job_cache.display()
    );
    let (id, o) = sbatch_wait(
        &["-c", "2", "-t", "10", "-o", log.to_str().unwrap()],
        &script,
    );
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(o.status.success(), "job {id}: {}{out}", stderr(&o));
    // Not a terminal: one plain line per stage, then the summary, so a job log is never empty.
    let n = entry_keys(&f.cache_dir()).len();
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.contains(&format!("{n} stages: {n} ran, 0 cached"))),
        "{out}"
    );
    assert!(out.lines().count() > n, "{out}");
    assert_eq!(entry_keys(&job_cache), entry_keys(&f.cache_dir()));
}

#[test]
fn a_gpu_request_reaches_the_scheduler_on_the_fake_gpus() {
    if !slurm_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gpu.log");
    let (id, o) = sbatch_wait(
        &["--gres=gpu:1", "-t", "1", "-o", log.to_str().unwrap()],
        "echo visible=$CUDA_VISIBLE_DEVICES",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(out.contains("visible=0"), "{out}");
    let show = Command::new("scontrol")
        .args(["show", "job", &id])
        .output()
        .unwrap();
    assert!(stdout(&show).contains("gres:gpu:1"), "{}", stdout(&show));
}
