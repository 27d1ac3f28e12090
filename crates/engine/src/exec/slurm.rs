//! The Slurm back end of the executor: a stage that is not cached is computed by a batch job
//! that runs `cfpipe exec-stage KEY` on a compute node, against the same cache. The cache is
//! where results meet: a job has succeeded when its entry is published there and verifies,
//! whatever Slurm says, so the driver never reads a job's output and a teammate without Slurm
//! shares the same entries.
//!
//! The driver learns of successes by looking for the entry (a stat per waiting stage, cheap and
//! local to the cache) and of failures from the queue. The queue is read by one `squeue` call
//! per interval for every job of the run, which share one job name, never one call per job,
//! and never `sacct`: the load that per-job polling puts on the controller is the most common
//! complaint against other workflow tools. The interval starts short after a submission and
//! backs off to `poll_max`.
//!
//! Infrastructure failures (node failure, preemption, time limit, out of memory, a job
//! cancelled by someone else) are retried `retries` times. A stage's own error (the job exits
//! 1, Slurm state FAILED) is not: the same inputs would fail the same way.

use crate::digest::StageKey;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Cluster-local settings (`[slurm]` in the config file).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Extra `sbatch` arguments, e.g. `["--constraint=a100"]`.
    pub sbatch_args: Vec<String>,
    /// Shell lines run in the job before cfpipe, e.g. `module load cuda/12`.
    pub setup: Vec<String>,
    /// Seconds between queue reads once the run has settled (the longest interval).
    pub poll_max_s: f64,
    /// Seconds between queue reads right after a submission.
    pub poll_min_s: f64,
    /// Seconds a job that ended may take to show its entry (slow shared filesystems).
    pub grace_s: f64,
    /// The most queue reads in any minute, however many jobs the run has: the short interval
    /// after a submission draws on a burst of [`QUERY_BURST`], refilled at the rest of this
    /// rate, so a run that submits all the time does not poll every `poll_min_s`.
    pub max_queries_per_min: f64,
    /// The Slurm commands, for clusters that wrap them (and for stand-ins in benchmarks).
    pub sbatch: String,
    pub squeue: String,
    pub scancel: String,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            partition: None,
            account: None,
            qos: None,
            sbatch_args: Vec::new(),
            setup: Vec::new(),
            poll_max_s: 5.0,
            poll_min_s: 0.5,
            grace_s: 30.0,
            max_queries_per_min: 12.0,
            sbatch: "sbatch".into(),
            squeue: "squeue".into(),
            scancel: "scancel".into(),
        }
    }
}

/// Queue reads that may follow each other at the short interval before the rate limit of
/// `max_queries_per_min` spaces them out.
pub const QUERY_BURST: f64 = 2.0;

/// A token bucket over queue reads: [`QUERY_BURST`] tokens, refilled at `per_min - burst` a
/// minute, so that any 60 seconds hold at most `per_min` reads (the burst plus a minute's
/// refill).
struct QueryBudget {
    tokens: f64,
    per_s: f64,
    at: Instant,
}

impl QueryBudget {
    fn new(per_min: f64) -> Self {
        QueryBudget {
            tokens: QUERY_BURST,
            // At least one read a minute beyond the burst, or a run could never learn of failures.
            per_s: (per_min - QUERY_BURST).max(1.0) / 60.0,
            at: Instant::now(),
        }
    }

    /// How long to wait from `now` before the next read may be taken.
    fn wait(&mut self, now: Instant) -> Duration {
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.per_s).min(QUERY_BURST);
        self.at = now;
        Duration::from_secs_f64(((1.0 - self.tokens) / self.per_s).max(0.0))
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

/// What one stage kind's jobs ask for. Never part of a key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResources {
    pub cpus: Option<u32>,
    /// In Slurm's syntax, e.g. `32G` (checked by whoever builds this).
    pub mem: Option<String>,
    /// In Slurm's syntax, e.g. `4:00:00`.
    pub time: Option<String>,
    pub gpus: Option<u32>,
}

impl JobResources {
    fn sbatch_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(c) = self.cpus {
            a.push(format!("--cpus-per-task={c}"));
        }
        if let Some(m) = &self.mem {
            a.push(format!("--mem={m}"));
        }
        if let Some(t) = &self.time {
            a.push(format!("--time={t}"));
        }
        if let Some(g) = self.gpus.filter(|&g| g > 0) {
            a.push(format!("--gres=gpu:{g}"));
        }
        a
    }
}

/// How a job left the queue, as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// A terminal Slurm state (COMPLETED, FAILED, TIMEOUT, …).
    State(String),
    /// Gone from the queue without a terminal state seen (purged after MinJobAge).
    Vanished,
}

impl JobEnd {
    /// Whether the cause lies in the cluster, not in the stage, so a retry may succeed.
    pub fn is_infrastructure(&self) -> bool {
        match self {
            JobEnd::State(s) => matches!(
                s.as_str(),
                "NODE_FAIL"
                    | "PREEMPTED"
                    | "TIMEOUT"
                    | "OUT_OF_MEMORY"
                    | "BOOT_FAIL"
                    | "CANCELLED"
                    | "DEADLINE"
                    | "REVOKED"
            ),
            JobEnd::Vanished => true,
        }
    }
}

impl std::fmt::Display for JobEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Slurm says OUT_OF_MEMORY; users say OOM.
            JobEnd::State(s) if s == "OUT_OF_MEMORY" => write!(f, "OOM"),
            JobEnd::State(s) => write!(f, "{s}"),
            JobEnd::Vanished => write!(f, "VANISHED (left the queue without a final state)"),
        }
    }
}

fn is_terminal(state: &str) -> bool {
    !matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "REQUEUED"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
            | "RESIZING"
            | "SUSPENDED"
            | "STOPPED"
            | "SIGNALING"
            | "STAGE_OUT"
            | "RESV_DEL_HOLD"
            | "SPECIAL_EXIT"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error(
        "`{command}` could not be run: {source} (is Slurm installed, and `{command}` on PATH?)"
    )]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
}

/// One submitted job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub log: PathBuf,
    submitted: Instant,
}

/// The queue as the last `squeue` saw it.
#[derive(Default)]
struct Snapshot {
    states: HashMap<String, String>,
    /// When the call that produced it started; a job submitted before that and missing from
    /// it has left the queue.
    taken: Option<Instant>,
}

/// Submits the jobs of one run and follows them.
pub struct SlurmRunner {
    cfg: SlurmConfig,
    /// The job name every job of this run shares, so one `squeue --name` follows them all.
    pub job_name: String,
    /// The cfpipe binary the jobs run (the driver's own, by absolute path).
    binary: PathBuf,
    cache_dir: PathBuf,
    device: String,
    resources: BTreeMap<String, JobResources>,
    snapshot: Mutex<Snapshot>,
    changed: Condvar,
    /// Set on a submission, so the poller goes back to its short interval.
    fresh: AtomicBool,
    stop: AtomicBool,
    /// How many times each command was called (reported by benches).
    pub submits: AtomicU64,
    pub queries: AtomicU64,
    pub cancels: AtomicU64,
}

impl SlurmRunner {
    /// `resources` maps a stage kind to its request; the key `default` serves the rest.
    pub fn new(
        cfg: SlurmConfig,
        binary: PathBuf,
        cache_dir: &Path,
        device: &str,
        resources: BTreeMap<String, JobResources>,
    ) -> Arc<Self> {
        let run_id = blake3::hash(
            format!(
                "{}:{}:{:?}",
                std::process::id(),
                cache_dir.display(),
                std::time::SystemTime::now()
            )
            .as_bytes(),
        )
        .to_hex()[..10]
            .to_string();
        Arc::new(SlurmRunner {
            cfg,
            job_name: format!("cfpipe-{run_id}"),
            binary,
            cache_dir: std::path::absolute(cache_dir).unwrap_or_else(|_| cache_dir.to_path_buf()),
            device: device.to_string(),
            resources,
            snapshot: Mutex::new(Snapshot::default()),
            changed: Condvar::new(),
            fresh: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            submits: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            cancels: AtomicU64::new(0),
        })
    }

    pub fn grace(&self) -> Duration {
        Duration::from_secs_f64(self.cfg.grace_s.max(0.0))
    }

    /// The batch script that runs `exec-stage` with `args` after it: setup lines, then the
    /// binary replaces the shell (`exec`), so Slurm's SIGTERM on cancellation, time limit or
    /// preemption reaches cfpipe itself, which releases its lease and stores nothing partial.
    fn script(&self, args: &[String]) -> String {
        let mut s = String::from("#!/bin/sh\n");
        for line in &self.cfg.setup {
            s.push_str(line);
            s.push('\n');
        }
        s.push_str(&format!(
            "exec {} exec-stage",
            quote(&self.binary.display().to_string())
        ));
        for a in args
            .iter()
            .map(String::as_str)
            .chain(["--cache", &self.cache_dir.display().to_string()])
            .chain(["--device", &self.device])
        {
            s.push(' ');
            s.push_str(&quote(a));
        }
        s.push('\n');
        s
    }

    /// Submit the job that computes stage `id` (kind `kind`, key `key`), whose inputs are
    /// all published.
    pub fn submit(&self, id: &str, kind: &str, key: &StageKey) -> Result<Job, SlurmError> {
        self.submit_job(
            id,
            kind,
            &format!("{}-{}", id.replace('/', "-"), &key.to_hex()[..12]),
            &[key.to_hex()],
            &[],
        )
    }

    /// Submit a job for stage `id` of kind `kind` that runs `exec-stage ARGS`, after the jobs
    /// `after` have completed well (`afterok`; if one of them fails, Slurm cancels this one:
    /// `--kill-on-invalid-dep=yes`). `stem` names its script and log.
    pub fn submit_job(
        &self,
        id: &str,
        kind: &str,
        stem: &str,
        args: &[String],
        after: &[String],
    ) -> Result<Job, SlurmError> {
        let dir = self.log_dir();
        let _ = std::fs::create_dir_all(&dir);
        let script = dir.join(format!("{stem}.sh"));
        // Atomic: a second driver on the same cache writes the same script for the same stage,
        // and a plain write's truncation can meet this sbatch's read ("Batch script is empty").
        crate::cache::atomic_write(&script, self.script(args).as_bytes()).map_err(|source| {
            SlurmError::Spawn {
                command: format!("writing {}", script.display()),
                source,
            }
        })?;
        let log_pattern = dir.join(format!("{stem}-%j.log"));
        let mut c = Command::new(&self.cfg.sbatch);
        c.arg("--parsable")
            .arg(format!("--job-name={}", self.job_name))
            .arg(format!("--output={}", log_pattern.display()))
            // Time to store nothing partial and release the lease before a time limit's kill.
            .arg("--signal=TERM@60");
        if !after.is_empty() {
            c.arg(format!("--dependency=afterok:{}", after.join(":")))
                .arg("--kill-on-invalid-dep=yes");
        }
        for (flag, v) in [
            ("--partition", &self.cfg.partition),
            ("--account", &self.cfg.account),
            ("--qos", &self.cfg.qos),
        ] {
            if let Some(v) = v {
                c.arg(format!("{flag}={v}"));
            }
        }
        let res = self
            .resources
            .get(kind)
            .or_else(|| self.resources.get("default"));
        if let Some(r) = res {
            c.args(r.sbatch_args());
        }
        c.args(&self.cfg.sbatch_args).arg(&script);
        self.submits.fetch_add(1, Ordering::Relaxed);
        let out = run(&mut c, &self.cfg.sbatch).map_err(|e| match e {
            SlurmError::Command { command, stderr } => SlurmError::Command {
                command,
                stderr: format!("{stderr} (submitting `{id}`)"),
            },
            e => e,
        })?;
        // `--parsable` prints `id` or `id;cluster`.
        let job_id = out.trim().split(';').next().unwrap_or("").to_string();
        if job_id.is_empty() {
            return Err(SlurmError::Command {
                command: self.cfg.sbatch.clone(),
                stderr: format!("no job id in its output `{}`", out.trim()),
            });
        }
        self.fresh.store(true, Ordering::Relaxed);
        self.changed.notify_all();
        Ok(Job {
            log: dir.join(format!("{stem}-{job_id}.log")),
            id: job_id,
            submitted: Instant::now(),
        })
    }

    /// Where job scripts and logs are kept: under the cache, which every node sees.
    pub fn log_dir(&self) -> PathBuf {
        self.cache_dir.join("logs").join("slurm")
    }

    /// Cancel one job (Ctrl-C on the driver, or a job no longer wanted).
    pub fn cancel(&self, job: &Job) {
        self.cancels.fetch_add(1, Ordering::Relaxed);
        let _ = Command::new(&self.cfg.scancel)
            .arg(&job.id)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }

    /// Whether `job` has left the queue, by the latest queue read: its final state, if it has.
    pub fn ended(&self, job: &Job) -> Option<JobEnd> {
        let snap = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        match snap.states.get(&job.id) {
            Some(s) if is_terminal(s) => Some(JobEnd::State(s.clone())),
            Some(_) => None,
            None => match snap.taken {
                Some(t) if t > job.submitted => Some(JobEnd::Vanished),
                _ => None,
            },
        }
    }

    /// Wait up to `d` for the next queue read (or a submission).
    pub fn wait_for_news(&self, d: Duration) {
        let snap = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.changed.wait_timeout(snap, d);
    }

    /// Read the queue until `stop`: one `squeue` for every job of the run, at intervals that
    /// start at `poll_min_s` after each submission and double up to `poll_max_s`, and never
    /// more than `max_queries_per_min` in any minute.
    pub fn poll_until_stopped(&self) {
        let min = Duration::from_secs_f64(self.cfg.poll_min_s.max(0.05));
        let max = Duration::from_secs_f64(self.cfg.poll_max_s.max(self.cfg.poll_min_s));
        let mut interval = min;
        let mut budget = QueryBudget::new(self.cfg.max_queries_per_min);
        while !self.stop.load(Ordering::Relaxed) {
            if self.fresh.swap(false, Ordering::Relaxed) {
                interval = min;
            }
            let until = Instant::now() + budget.wait(Instant::now());
            while !self.stop.load(Ordering::Relaxed) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            budget.wait(Instant::now());
            budget.take();
            let taken = Instant::now();
            self.queries.fetch_add(1, Ordering::Relaxed);
            match queue_states(&self.cfg, &[self.job_name.as_str()]) {
                Ok(states) => {
                    let mut snap = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
                    *snap = Snapshot {
                        states,
                        taken: Some(taken),
                    };
                    drop(snap);
                    self.changed.notify_all();
                }
                // A controller that does not answer is waited out, not treated as a failure.
                Err(e) => eprintln!("warning: reading the Slurm queue: {e}"),
            }
            let until = taken + interval;
            while !self.stop.load(Ordering::Relaxed) && Instant::now() < until {
                if self.fresh.load(Ordering::Relaxed) && interval > min {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20).min(interval));
            }
            interval = (interval * 2).min(max);
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.changed.notify_all();
    }
}

/// One `squeue` call: the state of every job under any of the job names `names` (finished
/// ones too, until Slurm purges them), by job id.
pub fn queue_states(
    cfg: &SlurmConfig,
    names: &[&str],
) -> Result<HashMap<String, String>, SlurmError> {
    let mut c = Command::new(&cfg.squeue);
    c.args(["--noheader", "--states=all", "--format=%i|%T"])
        .arg(format!("--name={}", names.join(",")));
    Ok(run(&mut c, &cfg.squeue)?
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(id, st)| (id.trim().to_string(), base_state(st)))
        .collect())
}

/// `CANCELLED by 0` → `CANCELLED`.
fn base_state(s: &str) -> String {
    s.split_whitespace().next().unwrap_or("").to_string()
}

/// As sh reads it: bare when only safe characters, else single-quoted.
fn quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:=@%+,-".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn run(c: &mut Command, name: &str) -> Result<String, SlurmError> {
    let o = c.output().map_err(|source| SlurmError::Spawn {
        command: name.to_string(),
        source,
    })?;
    if !o.status.success() {
        return Err(SlurmError::Command {
            command: name.to_string(),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&o.stdout).to_string())
}

/// The last non-empty line of a job's log (where cfpipe says why a stage failed), if any.
pub fn last_log_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infrastructure_failures_are_retried_and_a_stages_own_failure_is_not() {
        for s in [
            "NODE_FAIL",
            "PREEMPTED",
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "CANCELLED",
        ] {
            assert!(JobEnd::State(s.into()).is_infrastructure(), "{s}");
        }
        assert!(!JobEnd::State("FAILED".into()).is_infrastructure());
        assert!(!JobEnd::State("COMPLETED".into()).is_infrastructure());
        assert_eq!(JobEnd::State("OUT_OF_MEMORY".into()).to_string(), "OOM");
        assert!(is_terminal("COMPLETED") && is_terminal("FAILED"));
        assert!(!is_terminal("PENDING") && !is_terminal("RUNNING"));
        assert_eq!(base_state("CANCELLED by 0"), "CANCELLED");
    }

    #[test]
    fn two_drivers_submitting_one_stage_never_hand_sbatch_an_empty_script() {
        // Two drivers on one cache write the same stage's script; sbatch must read a whole one.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sbatch = dir.path().join("sbatch");
        std::fs::write(
            &sbatch,
            "#!/bin/sh\nfor a; do s=$a; done\n[ -s \"$s\" ] || { echo empty >&2; exit 1; }\necho 7\n",
        )
        .unwrap();
        std::fs::set_permissions(&sbatch, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = SlurmConfig {
            sbatch: sbatch.display().to_string(),
            ..SlurmConfig::default()
        };
        let args: Vec<String> = (0..2000).map(|i| format!("arg{i}")).collect();
        let drivers: Vec<_> = (0..2)
            .map(|_| {
                SlurmRunner::new(
                    cfg.clone(),
                    "cfpipe".into(),
                    dir.path(),
                    "cpu",
                    BTreeMap::new(),
                )
            })
            .collect();
        std::thread::scope(|s| {
            for d in &drivers {
                s.spawn(|| {
                    for _ in 0..100 {
                        d.submit_job("a/train", "train", "a-train", &args, &[])
                            .unwrap();
                    }
                });
            }
        });
    }

    #[test]
    fn the_query_budget_allows_a_burst_then_spaces_reads_to_the_rate() {
        let t0 = Instant::now();
        let mut b = QueryBudget::new(12.0);
        // Reads as fast as the budget allows for ten minutes of simulated time.
        let (mut now, mut reads) = (t0, Vec::new());
        while now < t0 + Duration::from_secs(600) {
            now += b.wait(now);
            b.wait(now);
            b.take();
            reads.push(now);
            now += Duration::from_millis(1);
        }
        assert!(reads[1] - reads[0] < Duration::from_millis(10), "the burst");
        // Any 60 s window holds at most 12 reads; a steady run takes one every 6 s.
        for (i, r) in reads.iter().enumerate() {
            let within = reads[i..]
                .iter()
                .take_while(|&&x| x < *r + Duration::from_secs(60))
                .count();
            assert!(within <= 12, "{within} reads in the minute from read {i}");
        }
        let per_min = reads.len() as f64 / 10.0;
        assert!((9.0..=12.0).contains(&per_min), "{per_min} a minute");
    }

    #[test]
    fn resources_become_sbatch_flags_and_the_script_execs_cfpipe() {
        let r = JobResources {
            cpus: Some(8),
            mem: Some("32G".into()),
            time: Some("4:00:00".into()),
            gpus: Some(1),
        };
        assert_eq!(
            r.sbatch_args(),
            [
                "--cpus-per-task=8",
                "--mem=32G",
                "--time=4:00:00",
                "--gres=gpu:1"
            ]
        );
        let cfg = SlurmConfig {
            setup: vec!["module load cuda".into()],
            ..SlurmConfig::default()
        };
        let s = SlurmRunner::new(
            cfg,
            "/opt/it's/cfpipe".into(),
            Path::new("/shared/cache"),
            "cuda",
            BTreeMap::new(),
        );
        let key = StageKey::from_hex(&"ab".repeat(32)).unwrap();
        let script = s.script(&[key.to_hex()]);
        assert!(script.starts_with(
            "#!/bin/sh\nmodule load cuda\nexec '/opt/it'\\''s/cfpipe' exec-stage abab"
        ));
        assert!(
            script.ends_with("--cache /shared/cache --device cuda\n"),
            "{script}"
        );
        assert!(s.job_name.starts_with("cfpipe-"));
    }
}
