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
//! Submissions are gathered: stages that become ready within `array_window_s` of each other
//! (the five seeds' `train` after a shared `split`, say) go to `sbatch` together, as one job
//! array per stage kind, and `sbatch` is called at most `max_submits_per_min` times a minute
//! (after a burst), so a wide DAG neither floods the controller with submissions nor waits on
//! one `sbatch` per stage. A lone ready stage is a plain job.
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
use std::sync::{mpsc, Arc, Condvar, Mutex};
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
    /// While submissions follow each other, the seconds between `sbatch` calls in which ready
    /// stages gather into one call (a job array per stage kind). After a quiet spell a stage
    /// goes at once (with the siblings ready in the same instant), so a chain of dependent
    /// stages pays none of it.
    pub array_window_s: f64,
    /// The most stages in one job array (Slurm's `MaxArraySize` is 1001 by default).
    pub max_array_size: usize,
    /// The most `sbatch` calls in any minute, after a burst of [`SUBMIT_BURST`].
    pub max_submits_per_min: f64,
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
            array_window_s: 0.5,
            max_array_size: 1000,
            max_submits_per_min: 120.0,
            sbatch: "sbatch".into(),
            squeue: "squeue".into(),
            scancel: "scancel".into(),
        }
    }
}

/// Queue reads that may follow each other at the short interval before the rate limit of
/// `max_queries_per_min` spaces them out.
pub const QUERY_BURST: f64 = 2.0;

/// How long a stage that finds the submitter idle waits for siblings released by the same
/// input: they are dispatched within microseconds of each other, so this is ample.
const SETTLE: Duration = Duration::from_millis(50);

/// `sbatch` calls that may follow each other at once before `max_submits_per_min` spaces
/// them out.
pub const SUBMIT_BURST: f64 = 10.0;

/// A token bucket over calls of one command: `burst` tokens, refilled at `per_min - burst` a
/// minute, so that any 60 seconds hold at most `per_min` calls (the burst plus a minute's
/// refill).
struct QueryBudget {
    burst: f64,
    tokens: f64,
    per_s: f64,
    at: Instant,
}

impl QueryBudget {
    fn new(per_min: f64, burst: f64) -> Self {
        QueryBudget {
            burst,
            tokens: burst,
            // At least one call a minute beyond the burst, or a run could never learn of
            // failures (or submit its next stage).
            per_s: (per_min - burst).max(1.0) / 60.0,
            at: Instant::now(),
        }
    }

    /// How long to wait from `now` before the next call may be made.
    fn wait(&mut self, now: Instant) -> Duration {
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.per_s).min(self.burst);
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

/// Whether a job in `state` (as `squeue` prints it, `CANCELLED by 0` already cut to
/// `CANCELLED`) has left the running: neither waiting, nor running, nor being requeued.
pub fn is_terminal(state: &str) -> bool {
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
    #[error("the run stopped before the stage was submitted")]
    Stopped,
}

impl SlurmError {
    /// This error as told to one stage of a group submitted together.
    fn clone_for(&self, id: &str) -> SlurmError {
        match self {
            SlurmError::Spawn { command, source } => SlurmError::Spawn {
                command: command.clone(),
                source: std::io::Error::new(source.kind(), format!("{source} (stage `{id}`)")),
            },
            SlurmError::Command { command, stderr } => SlurmError::Command {
                command: command.clone(),
                stderr: stderr.clone(),
            },
            SlurmError::Stopped => SlurmError::Stopped,
        }
    }
}

/// A stage waiting for the submitter, and where its job is to be handed.
struct Pending {
    id: String,
    kind: String,
    key: StageKey,
    reply: mpsc::Sender<Result<Job, SlurmError>>,
}

/// One submitted job (or one task of a job array: id `ARRAY_TASK`, as `squeue --array` and
/// `scancel` name it).
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
    /// Job names of other runs whose queued jobs this run adopted, read with its own.
    adopted_runs: Mutex<std::collections::BTreeSet<String>>,
    /// Stages gathered for the next `sbatch` call.
    pending: Mutex<Vec<Pending>>,
    pending_changed: Condvar,
    /// How many times each command was called (reported by benches); `arrays` counts the
    /// `sbatch` calls that submitted a job array, `staged` the stages submitted in all.
    pub submits: AtomicU64,
    pub arrays: AtomicU64,
    pub staged: AtomicU64,
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
            adopted_runs: Mutex::new(Default::default()),
            pending: Mutex::new(Vec::new()),
            pending_changed: Condvar::new(),
            submits: AtomicU64::new(0),
            arrays: AtomicU64::new(0),
            staged: AtomicU64::new(0),
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
        self.script_after("", &args.iter().map(|a| quote(a)).collect::<Vec<_>>())
    }

    /// The script of a job array over `keys`: each task picks its stage's key by its index
    /// (into a variable, not `$1`, which a setup line such as `module load` may reset).
    fn array_script(&self, keys: &[StageKey]) -> String {
        let mut pick = String::from("case \"$SLURM_ARRAY_TASK_ID\" in\n");
        for (i, k) in keys.iter().enumerate() {
            pick.push_str(&format!("{i}) key={} ;;\n", k.to_hex()));
        }
        pick.push_str(
            "*) echo \"cfpipe: array task $SLURM_ARRAY_TASK_ID has no stage\" >&2; exit 2 ;;\nesac\n",
        );
        self.script_after(&pick, &["\"$key\"".to_string()])
    }

    /// `#!/bin/sh`, `pick`, the setup lines, then `exec cfpipe exec-stage WORDS…` against this
    /// run's cache and device (`words` are shell words, already quoted).
    fn script_after(&self, pick: &str, words: &[String]) -> String {
        let mut s = format!("#!/bin/sh\n{pick}");
        for line in &self.cfg.setup {
            s.push_str(line);
            s.push('\n');
        }
        s.push_str(&format!(
            "exec {} exec-stage",
            quote(&self.binary.display().to_string())
        ));
        for w in words.iter().cloned().chain(
            [
                "--cache",
                &self.cache_dir.display().to_string(),
                "--device",
                &self.device,
            ]
            .map(quote),
        ) {
            s.push(' ');
            s.push_str(&w);
        }
        s.push('\n');
        s
    }

    /// Have a job compute stage `id` (kind `kind`, key `key`), whose inputs are all published:
    /// the stage joins the next `sbatch` call of [`Self::submit_until_stopped`], which must be
    /// running, and this returns once that call has given it a job.
    pub fn submit(&self, id: &str, kind: &str, key: &StageKey) -> Result<Job, SlurmError> {
        let (reply, answer) = mpsc::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Pending {
                id: id.to_string(),
                kind: kind.to_string(),
                key: *key,
                reply,
            });
        self.pending_changed.notify_all();
        answer.recv().unwrap_or(Err(SlurmError::Stopped))
    }

    /// Submit gathered stages until `stop`: once one is waiting, wait `array_window_s` for
    /// others, then submit them by stage kind, a plain job for a lone stage and a job array for
    /// several, each `sbatch` call drawing on the `max_submits_per_min` budget.
    pub fn submit_until_stopped(&self) {
        let window = Duration::from_secs_f64(self.cfg.array_window_s.max(0.0));
        let mut budget = QueryBudget::new(self.cfg.max_submits_per_min, SUBMIT_BURST);
        let mut last_call: Option<Instant> = None;
        loop {
            let mut q = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            while q.is_empty() && !self.stop.load(Ordering::Relaxed) {
                q = self
                    .pending_changed
                    .wait_timeout(q, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if self.stop.load(Ordering::Relaxed) {
                for p in q.drain(..) {
                    let _ = p.reply.send(Err(SlurmError::Stopped));
                }
                return;
            }
            drop(q);
            // After a quiet spell, go at once (a settle of `SETTLE` catches the siblings that
            // one finished input released together), so a chain of dependent stages pays no
            // window; while submissions follow each other, gather until `window` after the
            // last, so a busy run makes one call per kind per window.
            let now = Instant::now();
            let until = match last_call {
                Some(t) if now < t + window => t + window,
                _ => now + SETTLE.min(window),
            };
            self.sleep_unless_stopped(until.saturating_duration_since(now));
            let batch =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
            let mut by_kind: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
            for p in batch {
                by_kind.entry(p.kind.clone()).or_default().push(p);
            }
            for (kind, group) in by_kind {
                let mut group = group.into_iter().peekable();
                while group.peek().is_some() {
                    let part: Vec<Pending> = group
                        .by_ref()
                        .take(self.cfg.max_array_size.max(1))
                        .collect();
                    self.sleep_unless_stopped(budget.wait(Instant::now()));
                    budget.wait(Instant::now());
                    budget.take();
                    last_call = Some(Instant::now());
                    match self.submit_group(&kind, &part) {
                        Ok(jobs) => {
                            for (p, job) in part.into_iter().zip(jobs) {
                                self.claim(&p.key, &job);
                                let _ = p.reply.send(Ok(job));
                            }
                        }
                        Err(e) => {
                            for p in part {
                                let _ = p.reply.send(Err(e.clone_for(&p.id)));
                            }
                        }
                    }
                }
            }
        }
    }

    fn sleep_unless_stopped(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
        }
    }

    /// One `sbatch` call for stages of one kind: a plain job for one, an array for more.
    fn submit_group(&self, kind: &str, part: &[Pending]) -> Result<Vec<Job>, SlurmError> {
        if let [p] = part {
            return Ok(vec![self.submit_job(
                &p.id,
                kind,
                &format!("{}-{}", p.id.replace('/', "-"), &p.key.to_hex()[..12]),
                &[p.key.to_hex()],
                &[],
            )?]);
        }
        let keys: Vec<StageKey> = part.iter().map(|p| p.key).collect();
        let mut h = blake3::Hasher::new();
        for k in &keys {
            h.update(k.to_hex().as_bytes());
        }
        // Named after the kind and its stages' keys: `train-x5-<hash>.sh`, logs
        // `train-x5-<hash>-<array>_<task>.log`.
        let stem = format!("{kind}-x{}-{}", keys.len(), &h.finalize().to_hex()[..12]);
        let (dir, script) = self.write_script(&stem, &self.array_script(&keys))?;
        let mut c = self.sbatch(kind, &dir.join(format!("{stem}-%A_%a.log")));
        c.arg(format!("--array=0-{}", keys.len() - 1)).arg(&script);
        let what = format!("{} and {} more", part[0].id, part.len() - 1);
        let array = self.call_sbatch(&mut c, &what, keys.len())?;
        self.arrays.fetch_add(1, Ordering::Relaxed);
        let submitted = Instant::now();
        Ok((0..keys.len())
            .map(|i| Job {
                id: format!("{array}_{i}"),
                log: dir.join(format!("{stem}-{array}_{i}.log")),
                submitted,
            })
            .collect())
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
        let (dir, script) = self.write_script(stem, &self.script(args))?;
        let mut c = self.sbatch(kind, &dir.join(format!("{stem}-%j.log")));
        if !after.is_empty() {
            c.arg(format!("--dependency=afterok:{}", after.join(":")))
                .arg("--kill-on-invalid-dep=yes");
        }
        c.arg(&script);
        let job_id = self.call_sbatch(&mut c, id, 1)?;
        Ok(Job {
            log: dir.join(format!("{stem}-{job_id}.log")),
            id: job_id,
            submitted: Instant::now(),
        })
    }

    /// Write the script `stem.sh` into the log directory: atomically, since a second driver on
    /// the same cache writes the same script for the same stage, and a plain write's truncation
    /// can meet this `sbatch`'s read ("Batch script is empty").
    fn write_script(&self, stem: &str, text: &str) -> Result<(PathBuf, PathBuf), SlurmError> {
        let dir = self.log_dir();
        let _ = std::fs::create_dir_all(&dir);
        let script = dir.join(format!("{stem}.sh"));
        crate::cache::atomic_write(&script, text.as_bytes()).map_err(|source| {
            SlurmError::Spawn {
                command: format!("writing {}", script.display()),
                source,
            }
        })?;
        Ok((dir, script))
    }

    /// `sbatch` with the run's job name, the log pattern, the cluster's settings and the
    /// resources of stage kind `kind`; the caller adds its own flags and the script.
    fn sbatch(&self, kind: &str, log_pattern: &Path) -> Command {
        let mut c = Command::new(&self.cfg.sbatch);
        c.arg("--parsable")
            .arg(format!("--job-name={}", self.job_name))
            .arg(format!("--output={}", log_pattern.display()))
            // Time to store nothing partial and release the lease before a time limit's kill.
            .arg("--signal=TERM@60");
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
        c.args(&self.cfg.sbatch_args);
        c
    }

    /// Run a prepared `sbatch` for `stages` stages (`what` names them in an error): the job id.
    fn call_sbatch(
        &self,
        c: &mut Command,
        what: &str,
        stages: usize,
    ) -> Result<String, SlurmError> {
        self.submits.fetch_add(1, Ordering::Relaxed);
        let out = run(c, &self.cfg.sbatch).map_err(|e| match e {
            SlurmError::Command { command, stderr } => SlurmError::Command {
                command,
                stderr: format!("{stderr} (submitting `{what}`)"),
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
        self.staged.fetch_add(stages as u64, Ordering::Relaxed);
        self.fresh.store(true, Ordering::Relaxed);
        self.changed.notify_all();
        Ok(job_id)
    }

    /// The note of the job last submitted for `key` (job name, job id, log), which lets a
    /// later driver adopt it while it is still queued.
    fn claim_path(&self, key: &StageKey) -> PathBuf {
        self.log_dir().join("claims").join(key.to_hex())
    }

    fn claim(&self, key: &StageKey, job: &Job) {
        let path = self.claim_path(key);
        let _ = std::fs::create_dir_all(path.parent().expect("a claim has a directory"));
        let text = format!("{}\n{}\n{}\n", self.job_name, job.id, job.log.display());
        // Only an optimisation: without it a later driver submits its own job, and the lease
        // still keeps the stage from being computed twice.
        let _ = crate::cache::atomic_write(&path, text.as_bytes());
    }

    /// Forget the claim on `key` once its entry is published.
    pub fn release_claim(&self, key: &StageKey) {
        let _ = std::fs::remove_file(self.claim_path(key));
    }

    /// A job that another run (a driver that died, or one still alive) submitted for `key` and
    /// that is still queued or running: this run follows it instead of submitting its own, so a
    /// rerun after the login session died spends no slot twice. Running jobs are also found by
    /// their lease; this finds the pending ones. It waits for one queue read that includes the
    /// other run's jobs, so adoption draws on the same `max_queries_per_min` budget.
    pub fn adopt(&self, key: &StageKey) -> Option<Job> {
        let text = std::fs::read_to_string(self.claim_path(key)).ok()?;
        let mut lines = text.lines();
        let (name, id, log) = (lines.next()?, lines.next()?, lines.next()?);
        if name == self.job_name || !name.starts_with("cfpipe-") || id.is_empty() {
            return None;
        }
        let since = Instant::now();
        self.adopted_runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
        self.fresh.store(true, Ordering::Relaxed);
        let mut snap = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        while snap.taken.is_none_or(|t| t <= since) {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            snap = self
                .changed
                .wait_timeout(snap, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        match snap.states.get(id) {
            Some(st) if !is_terminal(st) => Some(Job {
                id: id.to_string(),
                log: PathBuf::from(log),
                submitted: since,
            }),
            _ => None,
        }
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
        let mut budget = QueryBudget::new(self.cfg.max_queries_per_min, QUERY_BURST);
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
            let mut names = vec![self.job_name.clone()];
            names.extend(
                self.adopted_runs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned(),
            );
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            match queue_states(&self.cfg, &names) {
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
        self.pending_changed.notify_all();
    }
}

/// One `squeue` call: the state of every job under any of the job names `names` (finished
/// ones too, until Slurm purges them), by job id.
pub fn queue_states(
    cfg: &SlurmConfig,
    names: &[&str],
) -> Result<HashMap<String, String>, SlurmError> {
    let mut c = Command::new(&cfg.squeue);
    // `--array`: one line per array task (`123_4`), pending ones too, not `123_[0-9]`.
    c.args(["--noheader", "--array", "--states=all", "--format=%i|%T"])
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
        let dir = tempfile::tempdir().unwrap();
        let sbatch = dir.path().join("sbatch");
        stand_in(
            &sbatch,
            "for a; do s=$a; done\n[ -s \"$s\" ] || { echo empty >&2; exit 1; }\necho 7\n",
        );
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

    /// An executable shell script at `path`.
    fn stand_in(path: &Path, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn stages_ready_together_go_as_one_array_per_kind_and_each_task_runs_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let (sbatch, calls) = (dir.path().join("sbatch"), dir.path().join("calls"));
        // Records each call's arguments on a line, answers job id 7.
        stand_in(
            &sbatch,
            &format!("echo \"$*\" >> {}\necho 7\n", calls.display()),
        );
        let binary = dir.path().join("cfpipe");
        stand_in(&binary, "echo \"$@\"\n");
        let cfg = SlurmConfig {
            sbatch: sbatch.display().to_string(),
            array_window_s: 0.3,
            ..SlurmConfig::default()
        };
        let runner = SlurmRunner::new(cfg, binary, dir.path(), "cpu", BTreeMap::new());
        let key = |i: u8| StageKey::from_hex(&format!("{i:02x}").repeat(32)).unwrap();
        let jobs: Vec<(u8, Job)> = std::thread::scope(|s| {
            s.spawn(|| runner.submit_until_stopped());
            let waiting: Vec<_> = (0..6u8)
                .map(|i| {
                    let runner = &runner;
                    s.spawn(move || {
                        let kind = if i < 5 { "train" } else { "score" };
                        let job = runner
                            .submit(&format!("s{i}/{kind}"), kind, &key(i))
                            .unwrap();
                        (i, job)
                    })
                })
                .collect();
            let jobs = waiting.into_iter().map(|w| w.join().unwrap()).collect();
            runner.stop();
            jobs
        });
        let calls = std::fs::read_to_string(&calls).unwrap();
        assert_eq!(calls.lines().count(), 2, "one sbatch per kind: {calls}");
        assert_eq!(calls.matches("--array=0-4").count(), 1, "{calls}");
        assert_eq!(runner.arrays.load(Ordering::Relaxed), 1);
        assert_eq!(runner.staged.load(Ordering::Relaxed), 6);
        let mut tasks: Vec<String> = Vec::new();
        for (i, job) in &jobs {
            if *i == 5 {
                assert_eq!(job.id, "7", "a lone stage is a plain job");
                continue;
            }
            tasks.push(job.id.clone());
            // The array's script, run as Slurm runs task `t`, computes this stage's key.
            let t = job.id.strip_prefix("7_").unwrap();
            let script = calls
                .lines()
                .find(|l| l.contains("--array"))
                .and_then(|l| l.split_whitespace().last())
                .unwrap();
            let out = Command::new("sh")
                .arg(script)
                .env("SLURM_ARRAY_TASK_ID", t)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                said.starts_with(&format!("exec-stage {} --cache", key(*i).to_hex())),
                "task {t} of stage s{i}: {said}"
            );
            assert!(job
                .log
                .display()
                .to_string()
                .ends_with(&format!("-{}.log", job.id)));
        }
        tasks.sort();
        assert_eq!(tasks, ["7_0", "7_1", "7_2", "7_3", "7_4"]);
    }

    #[test]
    fn the_query_budget_allows_a_burst_then_spaces_reads_to_the_rate() {
        let t0 = Instant::now();
        let mut b = QueryBudget::new(12.0, QUERY_BURST);
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
