//! The executor: for each stage in dependency order, derive its key from the content of its
//! inputs, serve it from the cache or run it, and publish the result. Independent stages run
//! in parallel on `jobs` worker threads. A failed stage publishes nothing; stages downstream of
//! it are skipped, everything else still finishes.
//!
//! The same `run_one` path serves `cfpipe exec-stage KEY`: before running, the executor writes a
//! request file naming the stage and the entries of its inputs, so another process (a Slurm job,
//! say) can run exactly that stage against the shared cache.

pub mod detach;
pub mod progress;
pub mod resolve;
pub mod resources;
pub mod slurm;
pub mod stage;
pub mod sync;

use crate::cache::remote::{Pulled, Remote};
use crate::cache::{filehash::FileHasher, Cache, Entry, Lookup, NewEntry, RunInfo, StageRecord};
use crate::digest::{ContentHash, KeyMaterial, StageKey, KEY_SCHEME};
use crate::graph::Dag;
use petgraph::graph::NodeIndex;
pub use resources::Resources;
use serde::{Deserialize, Serialize};
pub use stage::{Artifact, NoProgress, Progress, Registry, Stage, StageContext, StageError};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

/// What happened to one stage.
#[derive(Debug, Clone)]
pub enum Outcome {
    Cached,
    /// Missing locally; downloaded from the remote cache, verified and published.
    Pulled {
        bytes: u64,
        wall_s: f64,
    },
    Ran {
        wall_s: f64,
        replaced_corrupt: Option<String>,
    },
    Failed {
        error: String,
    },
    /// Stopped by the run's cancel flag (a signal) before it finished; nothing was stored.
    Cancelled,
    /// Not attempted because an input failed or was cancelled.
    Skipped {
        failed_input: String,
    },
}

#[derive(Debug, Clone)]
pub struct StageEvent {
    pub id: String,
    pub aliases: Vec<String>,
    pub kind: String,
    pub key: Option<StageKey>,
    pub outcome: Outcome,
}

/// The result of executing a DAG.
#[derive(Debug, Default)]
pub struct RunReport {
    pub events: Vec<StageEvent>,
    pub wall_s: f64,
    pub interrupted: bool,
    pub entries: HashMap<NodeIndex, Entry>,
    /// Stages served by the verified-entry memo's check before scheduling (see
    /// [`Executor::memo_hits`]); the other cached stages were checked when reached.
    pub prechecked: usize,
}

impl RunReport {
    fn count_where(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.events.iter().filter(|e| f(&e.outcome)).count()
    }
    fn ids_where(&self, f: impl Fn(&Outcome) -> bool) -> BTreeSet<String> {
        self.events
            .iter()
            .filter(|e| f(&e.outcome))
            .map(|e| e.id.clone())
            .collect()
    }
    /// Primary ids of the stages that actually computed.
    pub fn ran(&self) -> BTreeSet<String> {
        self.ids_where(|o| matches!(o, Outcome::Ran { .. }))
    }
    /// Every id (aliases included) of the stages that actually computed.
    pub fn ran_all_ids(&self) -> BTreeSet<String> {
        self.events
            .iter()
            .filter(|e| matches!(e.outcome, Outcome::Ran { .. }))
            .flat_map(|e| std::iter::once(e.id.clone()).chain(e.aliases.iter().cloned()))
            .collect()
    }
    pub fn cached(&self) -> BTreeSet<String> {
        self.ids_where(|o| matches!(o, Outcome::Cached))
    }
    /// Primary ids of the stages served by the remote cache.
    pub fn pulled(&self) -> BTreeSet<String> {
        self.ids_where(|o| matches!(o, Outcome::Pulled { .. }))
    }
    pub fn failed(&self) -> Vec<&StageEvent> {
        self.events
            .iter()
            .filter(|e| matches!(e.outcome, Outcome::Failed { .. }))
            .collect()
    }
    pub fn skipped(&self) -> BTreeSet<String> {
        self.ids_where(|o| matches!(o, Outcome::Skipped { .. }))
    }
    /// Primary ids of the stages a cancel stopped (or kept from starting their computation).
    pub fn cancelled(&self) -> BTreeSet<String> {
        self.ids_where(|o| matches!(o, Outcome::Cancelled))
    }
    /// The line `run` prints after a signal, in place of one line per stopped stage.
    pub fn interrupted_line(&self) -> String {
        format!(
            "interrupted: {} stage{} cancelled, {} not started; completed stages are cached",
            self.cancelled().len(),
            if self.cancelled().len() == 1 { "" } else { "s" },
            self.skipped().len()
        )
    }
    pub fn ok(&self) -> bool {
        !self.interrupted
            && self.events.iter().all(|e| {
                matches!(
                    e.outcome,
                    Outcome::Cached | Outcome::Pulled { .. } | Outcome::Ran { .. }
                )
            })
    }
    /// The last line `run` prints, in exactly this form (`, N pulled` only when a remote
    /// served stages).
    pub fn summary_line(&self) -> String {
        // Counted, not collected: a cached rerun of thousands of stages prints this line.
        let pulled = self.count_where(|o| matches!(o, Outcome::Pulled { .. }));
        format!(
            "{} stages: {} ran, {} cached{} ({:.2} s)",
            self.events.len(),
            self.count_where(|o| matches!(o, Outcome::Ran { .. })),
            self.count_where(|o| matches!(o, Outcome::Cached)),
            if pulled > 0 {
                format!(", {pulled} pulled")
            } else {
                String::new()
            },
            self.wall_s
        )
    }
}

#[derive(Clone)]
pub struct ExecOptions {
    pub jobs: usize,
    /// The name of the device, recorded in each manifest (see [`StageContext::device`]).
    pub device: String,
    /// Handles shared by every stage of the run (see [`Resources`]).
    pub resources: Resources,
    pub show_progress: bool,
    pub cancel: Arc<AtomicBool>,
    /// Registers the keys this run reaches as a gc root, if set.
    pub roots: Option<Arc<crate::cache::roots::RootRecorder>>,
    /// Told when a stage starts computing and when each stage is settled (log lines).
    pub observer: Option<Arc<dyn Observer>>,
    /// Compute stages as Slurm jobs instead of in this process (`jobs` then caps the jobs in
    /// flight).
    pub slurm: Option<Arc<slurm::SlurmRunner>>,
    /// How often a job that failed for a cause in the cluster is submitted again.
    pub retries: u32,
}

/// Follows a run as it happens, e.g. to print one line per stage into a batch log.
pub trait Observer: Send + Sync {
    /// A stage's inputs are ready, it is not cached, and it starts computing now.
    fn started(&self, id: &str, kind: &str);
    /// A stage is settled (ran, cached, pulled, failed, cancelled or skipped).
    fn finished(&self, event: &StageEvent);
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            jobs: 1,
            device: "cpu".into(),
            resources: Resources::new(),
            show_progress: false,
            cancel: Arc::new(AtomicBool::new(false)),
            roots: None,
            observer: None,
            slurm: None,
            retries: 1,
        }
    }
}

/// Everything needed to run one stage in any process: written to `requests/<key>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRequest {
    pub key: StageKey,
    pub id: String,
    pub kind: String,
    pub version: u32,
    pub params: serde_json::Value,
    /// Input slot → (key of the producing entry, its content hash).
    pub inputs: BTreeMap<String, (StageKey, ContentHash)>,
    /// File role → (path, content hash).
    pub files: BTreeMap<String, (PathBuf, ContentHash)>,
}

impl StageRequest {
    /// Input slot → content hash, as entries and stage records keep them.
    pub fn input_hashes(&self) -> BTreeMap<String, ContentHash> {
        self.inputs
            .iter()
            .map(|(s, (_, h))| (s.clone(), *h))
            .collect()
    }

    /// File role → content hash, as entries and stage records keep them.
    pub fn file_hashes(&self) -> BTreeMap<String, ContentHash> {
        self.files
            .iter()
            .map(|(r, (_, h))| (r.clone(), *h))
            .collect()
    }
}

/// A stage's inputs' and files' content hashes, by slot and by role.
type Hashes = (BTreeMap<String, ContentHash>, BTreeMap<String, ContentHash>);

/// What [`Executor::memo_hits`] found before scheduling: the stages the verified-entry memo
/// serves, and the content hashes of every stage's data files, hashed once for the run (a
/// stage that is not served keys its request with them, rather than hashing, say, an image
/// folder a second time).
#[derive(Default)]
struct Precheck {
    hits: HashMap<NodeIndex, MemoHit>,
    files: HashMap<NodeIndex, BTreeMap<String, ContentHash>>,
}

/// A stage the verified-entry memo serves: its key, its entry, and the content hashes of its
/// inputs and files the key was derived from.
struct MemoHit {
    key: StageKey,
    entry: Entry,
    inputs: BTreeMap<String, ContentHash>,
    files: BTreeMap<String, ContentHash>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("no stage implementation registered for kind `{0}`")]
    UnknownKind(String),
    #[error("stage `{id}`: reading input file `{role}` at {path}: {source}")]
    InputFile {
        id: String,
        role: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stage `{id}`: {source}")]
    Cache {
        id: String,
        source: crate::cache::CacheError,
    },
    #[error("stage `{id}` ({kind}) failed: {source}")]
    Stage {
        id: String,
        kind: String,
        source: StageError,
    },
    #[error("stage `{id}`: input `{slot}` ({key}) is not in the cache or does not verify")]
    InputMissing {
        id: String,
        slot: String,
        key: StageKey,
    },
    #[error("no request for key {0} in this cache (run `cfpipe run` with the same cache first)")]
    NoRequest(String),
    /// A detached job started before its input was published (its job must have failed).
    #[error("stage `{id}`: its input `{input}` is not in the cache (did that stage's job fail?)")]
    InputNotCached { id: String, input: String },
    #[error("stage `{id}`: {source}")]
    Slurm {
        id: String,
        source: slurm::SlurmError,
    },
    /// A Slurm job that left the queue without publishing its stage's entry.
    #[error(
        "Slurm job {job} {state}{}; log: {}",
        last.as_ref().map(|l| format!(": {l}")).unwrap_or_default(),
        log.display()
    )]
    Job {
        id: String,
        job: String,
        state: slurm::JobEnd,
        log: PathBuf,
        /// The log's last line, where cfpipe says why.
        last: Option<String>,
    },
}

/// Compute a stage's key from its resolved inputs and files.
pub fn stage_key(
    kind: &str,
    version: u32,
    params: &serde_json::Value,
    inputs: &BTreeMap<String, ContentHash>,
    files: &BTreeMap<String, ContentHash>,
) -> StageKey {
    KeyMaterial {
        scheme: KEY_SCHEME,
        kind,
        version,
        params,
        inputs,
        files,
    }
    .key()
}

pub(crate) fn hash_files(
    hasher: &FileHasher,
    id: &str,
    files: &BTreeMap<String, PathBuf>,
) -> Result<BTreeMap<String, ContentHash>, ExecError> {
    files
        .iter()
        .map(|(role, path)| {
            hasher
                .hash(path)
                .map(|h| (role.clone(), h))
                .map_err(|source| ExecError::InputFile {
                    id: id.to_string(),
                    role: role.clone(),
                    path: path.clone(),
                    source,
                })
        })
        .collect()
}

pub struct Executor<'a> {
    pub cache: &'a Cache,
    pub registry: &'a Registry,
    pub opts: ExecOptions,
    hasher: FileHasher,
    remote: Option<&'a Remote>,
    /// Set at the first transport failure: one unreachable remote costs one timeout, not one
    /// per stage.
    remote_down: AtomicBool,
}

impl<'a> Executor<'a> {
    pub fn new(cache: &'a Cache, registry: &'a Registry, opts: ExecOptions) -> Self {
        let hasher = cache.file_hasher();
        Executor {
            cache,
            registry,
            opts,
            hasher,
            remote: None,
            remote_down: AtomicBool::new(false),
        }
    }

    /// Read through `remote` (pull a missing stage before computing it) and push what is
    /// computed, as its settings say. Only stages missing locally ever contact it.
    pub fn with_remote(mut self, remote: Option<&'a Remote>) -> Self {
        self.remote = remote;
        self
    }

    /// Execute every stage of the DAG.
    pub fn run(&self, dag: &Dag) -> RunReport {
        let t0 = Instant::now();
        let total = dag.len();
        let bars = progress::Bars::new(self.opts.show_progress, total as u64);
        let mut report = RunReport::default();
        let mut remaining: HashMap<NodeIndex, usize> = dag
            .topo_order()
            .iter()
            .map(|&n| (n, dag.node(n).inputs.len()))
            .collect();
        let mut failed_root: HashMap<NodeIndex, String> = HashMap::new();
        let mut entries: HashMap<NodeIndex, Entry> = HashMap::new();
        let jobs = self.opts.jobs.max(1);

        type Done = (
            NodeIndex,
            Option<StageKey>,
            Result<(Entry, Outcome), ExecError>,
        );
        // A stage, its inputs, and its request where the scheduling thread made it already.
        type Work = (
            NodeIndex,
            BTreeMap<String, Entry>,
            Option<Box<StageRequest>>,
        );
        let (work_tx, work_rx) = mpsc::channel::<Work>();
        let work_rx = Mutex::new(work_rx);
        let (done_tx, done_rx) = mpsc::channel::<Done>();

        // Stages run on plain scoped threads, not rayon tasks: stage internals (dfdx's gemm)
        // use rayon, and a rayon worker waiting in a `join` may steal a queued *stage* and run
        // it to completion inside another stage's matmul, serialising unrelated work. (A
        // stage may still move its own compute onto a worker, if no other stage has: the
        // stages' side decides, as cfpipe's CPU stages do.)
        std::thread::scope(|scope| {
            if let Some(s) = &self.opts.slurm {
                scope.spawn(|| s.poll_until_stopped());
                scope.spawn(|| s.submit_until_stopped());
            }
            for _ in 0..jobs.min(total.max(1)) {
                let done_tx = done_tx.clone();
                let work_rx = &work_rx;
                let bars = &bars;
                scope.spawn(move || loop {
                    let msg = work_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((n, inputs, prepared)) = msg else {
                        break;
                    };
                    let node = dag.node(n);
                    let sink = bars.stage(&node.id);
                    let mut key = None;
                    let res = self.process(dag, n, &inputs, &sink, &mut key, prepared);
                    sink.finish();
                    if done_tx.send((n, key, res)).is_err() {
                        break;
                    }
                });
            }
            drop(done_tx);

            // Memo hits are served here, on this thread, into `ready`; everything else goes
            // to the workers.
            let mut ready: std::collections::VecDeque<Done> = Default::default();
            let Precheck {
                mut hits,
                mut files,
            } = self.memo_hits(dag);
            // What killed processes left behind is cleaned by the next run. Their temp files
            // on a thread of its own, beside the scheduling below: it scans directories that
            // hold a file per stage, which would otherwise add to a cached rerun. Leases at
            // the end (see `clean_dead_leases`).
            scope.spawn(|| self.cache.clean_dead_temps());
            let mut prechecked: HashSet<NodeIndex> = HashSet::new();
            let mut dispatch =
                |n: NodeIndex,
                 entries: &HashMap<NodeIndex, Entry>,
                 ready: &mut std::collections::VecDeque<Done>| {
                    let node_inputs = &dag.node(n).inputs;
                    // Served from the check before scheduling only when reached at once: every
                    // input was served the same way (so nothing ran meanwhile) and holds what
                    // the key was derived from. After an input computed (for hours, maybe) the
                    // stage takes `recall`, which marks the entry used and checks it again.
                    let fresh = node_inputs.values().all(|i| prechecked.contains(i));
                    let hit = hits.remove(&n).filter(|h| {
                        fresh
                            && h.inputs.len() == node_inputs.len()
                            && node_inputs.iter().all(|(slot, from)| {
                                h.inputs.get(slot) == Some(&entries[from].content_hash())
                            })
                    });
                    if let Some(hit) = hit {
                        prechecked.insert(n);
                        self.record(dag, n, &hit.key, || (hit.inputs.clone(), hit.files.clone()));
                        bars.stage(&dag.node(n).id).finish();
                        ready.push_back((n, Some(hit.key), Ok((hit.entry, Outcome::Cached))));
                        return;
                    }
                    let inputs: BTreeMap<String, Entry> = node_inputs
                        .iter()
                        .map(|(slot, from)| (slot.clone(), entries[from].clone()))
                        .collect();
                    match self.recall(dag, n, &inputs, files.remove(&n)) {
                        Ok((key, entry)) => {
                            bars.stage(&dag.node(n).id).finish();
                            ready.push_back((n, Some(key), Ok((entry, Outcome::Cached))));
                        }
                        Err(prepared) => {
                            let _ = work_tx.send((n, inputs, prepared));
                        }
                    }
                };
            for &n in dag.topo_order() {
                if remaining[&n] == 0 {
                    dispatch(n, &entries, &mut ready);
                }
            }
            let mut finished = 0;
            while finished < total {
                let next = match ready.pop_front() {
                    Some(done) => Ok(done),
                    None => done_rx.recv(),
                };
                let Ok((n, key, res)) = next else {
                    break;
                };
                let node = dag.node(n);
                finished += 1;
                bars.stage_done();
                let outcome = match res {
                    Ok((entry, outcome)) => {
                        if let Some(r) = &self.opts.roots {
                            r.record(entry.key(), matches!(outcome, Outcome::Ran { .. }));
                        }
                        entries.insert(n, entry);
                        outcome
                    }
                    Err(ExecError::Stage {
                        source: StageError::Cancelled,
                        ..
                    }) => {
                        failed_root.insert(n, node.id.clone());
                        report.interrupted = true;
                        Outcome::Cancelled
                    }
                    Err(e) => {
                        failed_root.insert(n, node.id.clone());
                        Outcome::Failed {
                            error: e.to_string(),
                        }
                    }
                };
                let event = StageEvent {
                    id: node.id.clone(),
                    aliases: node.aliases.clone(),
                    kind: node.kind.clone(),
                    key,
                    outcome,
                };
                if let Some(o) = &self.opts.observer {
                    o.finished(&event);
                }
                report.events.push(event);
                // Release consumers; those with a failed input are skipped, transitively.
                let mut worklist = vec![n];
                while let Some(x) = worklist.pop() {
                    for c in dag.consumers(x) {
                        // A consumer may read the same producer through two slots.
                        let edges = dag.node(c).inputs.values().filter(|&&f| f == x).count();
                        let cnt = remaining.get_mut(&c).expect("every node is counted");
                        *cnt -= edges.min(*cnt);
                        if *cnt > 0 {
                            continue;
                        }
                        let cn = dag.node(c);
                        match cn.inputs.values().find_map(|f| failed_root.get(f).cloned()) {
                            None => dispatch(c, &entries, &mut ready),
                            Some(root) => {
                                finished += 1;
                                bars.stage_done();
                                failed_root.insert(c, root.clone());
                                let event = StageEvent {
                                    id: cn.id.clone(),
                                    aliases: cn.aliases.clone(),
                                    kind: cn.kind.clone(),
                                    key: None,
                                    outcome: Outcome::Skipped { failed_input: root },
                                };
                                if let Some(o) = &self.opts.observer {
                                    o.finished(&event);
                                }
                                report.events.push(event);
                                worklist.push(c);
                            }
                        }
                    }
                }
            }
            drop(work_tx);
            report.prechecked = prechecked.len();
            if let Some(s) = &self.opts.slurm {
                s.stop();
            }
        });
        bars.finish();
        let _ = self.hasher.save();
        let _ = self.cache.save_verified();
        if let Some(r) = &self.opts.roots {
            let complete = !report.interrupted
                && report.events.iter().all(|e| {
                    matches!(
                        e.outcome,
                        Outcome::Cached | Outcome::Ran { .. } | Outcome::Pulled { .. }
                    )
                });
            if let Err(e) = r.finish(complete) {
                eprintln!("warning: could not register this pipeline's gc root: {e}");
            }
        }
        self.cache.clean_dead_leases();
        report.entries = entries;
        report.wall_s = t0.elapsed().as_secs_f64();
        report
    }

    /// Serve or compute the one stage `n` of `dag`, whose input entries (slot → entry) the
    /// caller already holds: a stage added on top of a pipeline's cached results (as `cfpipe
    /// explain` adds one), keyed, leased and published like any other.
    pub fn run_stage(
        &self,
        dag: &Dag,
        n: NodeIndex,
        inputs: &BTreeMap<String, Entry>,
    ) -> Result<(Entry, Outcome), ExecError> {
        self.process(dag, n, inputs, &NoProgress, &mut None, None)
    }

    fn process(
        &self,
        dag: &Dag,
        n: NodeIndex,
        inputs: &BTreeMap<String, Entry>,
        progress: &dyn Progress,
        key_out: &mut Option<StageKey>,
        prepared: Option<Box<StageRequest>>,
    ) -> Result<(Entry, Outcome), ExecError> {
        let req = match prepared {
            Some(req) => *req,
            None => self.request(dag, n, inputs, None)?,
        };
        *key_out = Some(req.key);
        let res = match &self.opts.slurm {
            Some(s) => self.run_as_job(s, &req),
            None => self.run_one(&req, inputs, progress),
        };
        if res.is_ok() {
            self.record(dag, n, &req.key, || (req.input_hashes(), req.file_hashes()));
        }
        res
    }

    /// A cached rerun's shortcut: stage `n` served by the verified-entry memo on the calling
    /// thread, with what [`Self::process`] records for it. Each hit saves the handoff to a
    /// worker thread and back, which is most of a memo hit's cost. `files` are the stage's data
    /// files' content hashes where this run hashed them already. Otherwise nothing is served:
    /// the request when it was made (no memo hit), for the worker to go on with, or none (a
    /// Slurm executor, data files not yet hashed this run, a request that failed and that the
    /// worker makes again to report).
    fn recall(
        &self,
        dag: &Dag,
        n: NodeIndex,
        inputs: &BTreeMap<String, Entry>,
        files: Option<BTreeMap<String, ContentHash>>,
    ) -> Result<(StageKey, Entry), Option<Box<StageRequest>>> {
        // Hashing data files is the worker's job: it may take a while.
        if self.opts.slurm.is_some() || (files.is_none() && !dag.node(n).files.is_empty()) {
            return Err(None);
        }
        let req = self.request(dag, n, inputs, files).map_err(|_| None)?;
        self.cache.mark_used(&req.key);
        match self.cache.recall(&req.key) {
            Some(entry) => {
                self.record(dag, n, &req.key, || (req.input_hashes(), req.file_hashes()));
                Ok((req.key, entry))
            }
            None => Err(Some(Box::new(req))),
        }
    }

    /// Stage `n`'s request: its key from its kind, version, parameters, inputs' content and
    /// files' content (`files`, hashed here when not given), and what a worker or a job needs
    /// to compute it.
    fn request(
        &self,
        dag: &Dag,
        n: NodeIndex,
        inputs: &BTreeMap<String, Entry>,
        files: Option<BTreeMap<String, ContentHash>>,
    ) -> Result<StageRequest, ExecError> {
        let node = dag.node(n);
        let files = match files {
            Some(f) => f,
            None => hash_files(&self.hasher, &node.id, &node.files)?,
        };
        let req = StageRequest {
            key: stage_key(
                &node.kind,
                node.version,
                &node.params,
                &inputs
                    .iter()
                    .map(|(s, e)| (s.clone(), e.content_hash()))
                    .collect(),
                &files,
            ),
            id: node.id.clone(),
            kind: node.kind.clone(),
            version: node.version,
            params: node.params.clone(),
            inputs: inputs
                .iter()
                .map(|(s, e)| (s.clone(), (e.key(), e.content_hash())))
                .collect(),
            files: node
                .files
                .iter()
                .map(|(r, p)| (r.clone(), (p.clone(), files[r])))
                .collect(),
        };
        Ok(req)
    }

    /// Records, under every id of stage `n`, what produced its entry (for `status` and the
    /// rerun reasons): `hashes` gives its inputs' and files' content hashes. A cached rerun
    /// finds every record current in the scope's index, and builds none.
    fn record(&self, dag: &Dag, n: NodeIndex, key: &StageKey, hashes: impl Fn() -> Hashes) {
        for id in dag
            .node(n)
            .all_ids()
            .filter(|id| !self.cache.stage_record_is(dag.scope(), id, key))
        {
            let (inputs, files) = hashes();
            let _ = self.cache.put_stage_record(
                dag.scope(),
                &StageRecord {
                    id: id.to_string(),
                    key: *key,
                    params: dag.node(n).params.clone(),
                    inputs,
                    files,
                },
            );
        }
    }

    /// The stages of `dag` that the verified-entry memo serves as the cache stands, found
    /// before scheduling so that their file checks run in parallel (a cached rerun of
    /// thousands of stages is mostly these `stat`s, one stage after another otherwise).
    /// Data files are hashed first (through the file memo, in parallel); then, in dependency
    /// order and without touching the disk, each stage's key is derived from its inputs'
    /// content hashes as the memo remembers them; then every such key is marked used and
    /// its entry's files are checked against the memo's stamp, in parallel, exactly as
    /// [`Cache::recall`] does for one. A stage is served from here only if its inputs' content
    /// hashes, when the scheduler reaches it, are those its key was derived from; anything
    /// else (a stamp that no longer matches, an input that ran) takes the usual path.
    fn memo_hits(&self, dag: &Dag) -> Precheck {
        use rayon::prelude::*;
        if self.opts.slurm.is_some() {
            return Precheck::default();
        }
        let files: HashMap<NodeIndex, BTreeMap<String, ContentHash>> = dag
            .topo_order()
            .par_iter()
            .filter(|&&n| !dag.node(n).files.is_empty())
            .filter_map(|&n| {
                let node = dag.node(n);
                let hashes = hash_files(&self.hasher, &node.id, &node.files).ok()?;
                Some((n, hashes))
            })
            .collect();
        let mut content: HashMap<NodeIndex, ContentHash> = HashMap::new();
        let mut candidates = Vec::new();
        for &n in dag.topo_order() {
            let node = dag.node(n);
            let files = match (node.files.is_empty(), files.get(&n)) {
                (true, _) => BTreeMap::new(),
                (false, Some(f)) => f.clone(),
                (false, None) => continue,
            };
            let inputs: Option<BTreeMap<String, ContentHash>> = node
                .inputs
                .iter()
                .map(|(slot, from)| content.get(from).map(|h| (slot.clone(), *h)))
                .collect();
            let Some(inputs) = inputs else { continue };
            let key = stage_key(&node.kind, node.version, &node.params, &inputs, &files);
            let Some(hash) = self.cache.remembered_content_hash(&key) else {
                continue;
            };
            content.insert(n, hash);
            candidates.push((n, key, inputs, files));
        }
        // Stages that differ in their declarations may still derive one key (a prune whose
        // mask came out the same at two thresholds, and everything after it): each entry is
        // checked once.
        let mut keys: Vec<StageKey> = candidates.iter().map(|c| c.1).collect();
        keys.sort_unstable();
        keys.dedup();
        let entries: HashMap<StageKey, Entry> = keys
            .into_par_iter()
            .filter_map(|key| {
                // Marked before the check, as `recall` is, so a concurrent gc either sees the
                // use or the entry is gone and the check fails.
                self.cache.mark_used(&key);
                Some((key, self.cache.recall(&key)?))
            })
            .collect();
        let hits = candidates
            .into_iter()
            .filter_map(|(n, key, inputs, files)| {
                let entry = entries.get(&key)?.clone();
                Some((
                    n,
                    MemoHit {
                        key,
                        entry,
                        inputs,
                        files,
                    },
                ))
            })
            .collect();
        Precheck { hits, files }
    }

    /// Serve one stage from the cache or compute and publish it. Holds the key's lease while
    /// computing so concurrent processes (on any machine sharing the cache) compute each key
    /// once; the others wait for the lease and then find the entry.
    pub fn run_one(
        &self,
        req: &StageRequest,
        inputs: &BTreeMap<String, Entry>,
        progress: &dyn Progress,
    ) -> Result<(Entry, Outcome), ExecError> {
        let cache_err = |source| ExecError::Cache {
            id: req.id.clone(),
            source,
        };
        let mut replaced_corrupt = None;
        // Set when the remote's copy of this key failed verification on pull: every later pull
        // would reject it too, so the entry computed here replaces it.
        let mut remote_rejected = false;
        // Marked before the lookup, so a concurrent gc either sees the use or restores the entry.
        self.cache.mark_used(&req.key);
        match self.cache.lookup(&req.key) {
            Lookup::Hit(e) => return Ok((*e, Outcome::Cached)),
            Lookup::Missing => {}
            Lookup::Corrupt { .. } => {}
        }
        let cancel = &self.opts.cancel;
        let _lease = self
            .cache
            .lock_key(&req.key, &req.id, &|| {
                cancel.load(std::sync::atomic::Ordering::Relaxed)
            })
            .map_err(|e| match e {
                crate::cache::CacheError::Cancelled => ExecError::Stage {
                    id: req.id.clone(),
                    kind: req.kind.clone(),
                    source: StageError::Cancelled,
                },
                e => cache_err(e),
            })?;
        match self.cache.lookup(&req.key) {
            Lookup::Hit(e) => return Ok((*e, Outcome::Cached)),
            Lookup::Missing => {}
            Lookup::Corrupt { file, reason } => {
                eprintln!(
                    "warning: cache entry of `{}` is corrupt ({file}: {reason}); recomputing",
                    req.id
                );
                self.cache.evict(&req.key).map_err(cache_err)?;
                replaced_corrupt = Some(file);
            }
        }
        if let Some(r) = self.live_remote().filter(|r| r.read_through()) {
            let t = Instant::now();
            match r.pull(self.cache, &req.key) {
                Ok(Pulled::Fetched { entry, bytes }) => {
                    let wall_s = t.elapsed().as_secs_f64();
                    return Ok((*entry, Outcome::Pulled { bytes, wall_s }));
                }
                Ok(Pulled::Local(entry)) => return Ok((*entry, Outcome::Cached)),
                Ok(Pulled::Absent) => {}
                // The remote only saves time: whatever went wrong, compute locally.
                Err(e) => {
                    use crate::cache::remote::RemoteError;
                    remote_rejected = matches!(
                        e,
                        RemoteError::Mismatch { .. } | RemoteError::BadManifest { .. }
                    );
                    self.remote_failed(&req.id, "computing it locally", &e)
                }
            }
        }
        if self.opts.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ExecError::Stage {
                id: req.id.clone(),
                kind: req.kind.clone(),
                source: StageError::Cancelled,
            });
        }
        let stage = self
            .registry
            .get(&req.kind)
            .ok_or_else(|| ExecError::UnknownKind(req.kind.clone()))?;
        self.write_request(req);
        let files: BTreeMap<String, PathBuf> = req
            .files
            .iter()
            .map(|(r, (p, _))| (r.clone(), p.clone()))
            .collect();
        let ctx = StageContext::new(
            &req.id,
            &req.params,
            inputs,
            &files,
            &self.opts.device,
            &self.opts.resources,
            progress,
            &self.opts.cancel,
        );
        if let Some(o) = &self.opts.observer {
            o.started(&req.id, &req.kind);
        }
        let t = Instant::now();
        let started_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        // A panic inside a stage is a bug, but it must fail that stage, not the whole run.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage.run(&ctx)))
            .unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(StageError::failed(format!("internal error (panic): {msg}")))
            });
        let artifact = result.map_err(|source| ExecError::Stage {
            id: req.id.clone(),
            kind: req.kind.clone(),
            source,
        })?;
        let wall_s = t.elapsed().as_secs_f64();
        let entry = self
            .cache
            .publish(NewEntry {
                key: req.key,
                stage_id: req.id.clone(),
                kind: req.kind.clone(),
                version: req.version,
                params: req.params.clone(),
                inputs: req.input_hashes(),
                files: req.file_hashes(),
                outputs: artifact.files,
                aux: [("log.txt".to_string(), ctx.take_log().into_bytes())].into(),
                run: RunInfo {
                    wall_s,
                    device: self.opts.device.clone(),
                    started_unix_ms,
                    host: hostname(),
                    pid: std::process::id(),
                    cfpipe_version: env!("CARGO_PKG_VERSION").to_string(),
                },
            })
            .map_err(cache_err)?;
        match self.live_remote() {
            Some(r) if r.push_on_run() => match r.push_entry(&entry) {
                Ok(crate::cache::remote::Pushed::Replaced { .. }) => eprintln!(
                    "note: stage `{}`: replaced the remote's rejected copy with this result",
                    req.id
                ),
                Ok(_) => {}
                Err(e) => self.remote_failed(&req.id, "not pushed", &e),
            },
            Some(_) if remote_rejected => eprintln!(
                "note: stage `{}`: the remote's copy was rejected and this remote is not pushed \
                 to on run; `cfpipe cache push` replaces it",
                req.id
            ),
            _ => {}
        }
        Ok((
            entry,
            Outcome::Ran {
                wall_s,
                replaced_corrupt,
            },
        ))
    }

    fn live_remote(&self) -> Option<&'a Remote> {
        self.remote
            .filter(|_| !self.remote_down.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn remote_failed(&self, id: &str, what: &str, e: &crate::cache::remote::RemoteError) {
        use crate::cache::remote::RemoteError;
        let down = matches!(e, RemoteError::Store { .. } | RemoteError::Config { .. });
        let first = down
            && !self
                .remote_down
                .swap(true, std::sync::atomic::Ordering::Relaxed);
        if !down || first {
            eprintln!("warning: stage `{id}`: {what}: {e}");
        }
        if first {
            eprintln!("warning: remote cache unusable; not using it for the rest of this run");
        }
    }

    /// Serve one stage from the cache or have a Slurm job compute it: write its request, submit
    /// `exec-stage`, and wait until its entry is published (success) or the job leaves the
    /// queue without one (failure; an infrastructure failure is submitted again). The job, not
    /// the driver, takes the key's lease, so a teammate's or a second driver's run of the same
    /// key waits on it as on any other process.
    fn run_as_job(
        &self,
        s: &slurm::SlurmRunner,
        req: &StageRequest,
    ) -> Result<(Entry, Outcome), ExecError> {
        let cancelled = || ExecError::Stage {
            id: req.id.clone(),
            kind: req.kind.clone(),
            source: StageError::Cancelled,
        };
        self.cache.mark_used(&req.key);
        if let Lookup::Hit(e) = self.cache.lookup(&req.key) {
            return Ok((*e, Outcome::Cached));
        }
        self.write_request(req);
        let published = |e: Box<Entry>| {
            s.release_claim(&req.key);
            // A published entry holds its manifest: this reads nothing.
            let wall_s = e.manifest().map_or(0.0, |m| m.run.wall_s);
            Ok((
                *e,
                Outcome::Ran {
                    wall_s,
                    replaced_corrupt: None,
                },
            ))
        };
        let mut attempt = 0;
        loop {
            // A job of another driver, alive or dead, may be computing it already: wait for
            // that job instead of submitting a second one.
            let mut told = false;
            while let Some(holder) = self.cache.computing_elsewhere(&req.key) {
                if self.opts.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(cancelled());
                }
                if !told {
                    eprintln!("waiting for `{}`: {holder} is computing it", req.id);
                    told = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            if let Lookup::Hit(e) = self.cache.lookup(&req.key) {
                return Ok((*e, Outcome::Cached));
            }
            if self.opts.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(cancelled());
            }
            let job = match s.adopt(&req.key) {
                Some(job) => {
                    eprintln!(
                        "note: stage `{}`: following Slurm job {}, which an earlier run submitted",
                        req.id, job.id
                    );
                    job
                }
                None => {
                    s.submit(&req.id, &req.kind, &req.key)
                        .map_err(|source| ExecError::Slurm {
                            id: req.id.clone(),
                            source,
                        })?
                }
            };
            if let Some(o) = &self.opts.observer {
                o.started(&req.id, &req.kind);
            }
            let end = loop {
                if self.opts.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                    s.cancel(&job);
                    return Err(cancelled());
                }
                if self.cache.contains(&req.key) {
                    if let Lookup::Hit(e) = self.cache.lookup(&req.key) {
                        return published(e);
                    }
                }
                if let Some(end) = s.ended(&job) {
                    break end;
                }
                s.wait_for_news(std::time::Duration::from_millis(250));
            };
            // A job that ended well may take a while to show its entry on a slow shared
            // filesystem; one that failed has nothing coming.
            let deadline = Instant::now() + s.grace();
            while matches!(&end, slurm::JobEnd::State(st) if st == "COMPLETED")
                && Instant::now() < deadline
            {
                if let Lookup::Hit(e) = self.cache.lookup(&req.key) {
                    return published(e);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            if let Lookup::Hit(e) = self.cache.lookup(&req.key) {
                return published(e);
            }
            if end.is_infrastructure() && attempt < self.opts.retries {
                attempt += 1;
                eprintln!(
                    "note: stage `{}`: Slurm job {} ended {end}; submitting it again ({attempt} of {})",
                    req.id, job.id, self.opts.retries
                );
                continue;
            }
            return Err(ExecError::Job {
                id: req.id.clone(),
                last: slurm::last_log_line(&job.log),
                job: job.id,
                state: end,
                log: job.log,
            });
        }
    }

    fn write_request(&self, req: &StageRequest) {
        let _ = self.cache.write_atomic(
            &self
                .cache
                .root()
                .join("requests")
                .join(format!("{}.json", req.key.to_hex())),
            &serde_json::to_vec_pretty(req).expect("request is plain data"),
        );
    }

    /// Run one stage from its request file (`cfpipe exec-stage KEY`).
    pub fn exec_request(&self, key_hex: &str) -> Result<(Entry, Outcome), ExecError> {
        let path = self
            .cache
            .root()
            .join("requests")
            .join(format!("{key_hex}.json"));
        let req: StageRequest = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ExecError::NoRequest(key_hex.to_string()))?;
        let mut inputs = BTreeMap::new();
        for (slot, (key, hash)) in &req.inputs {
            self.cache.mark_used(key);
            match self.cache.lookup(key) {
                Lookup::Hit(e) if e.content_hash() == *hash => {
                    inputs.insert(slot.clone(), *e);
                }
                _ => {
                    return Err(ExecError::InputMissing {
                        id: req.id.clone(),
                        slot: slot.clone(),
                        key: *key,
                    })
                }
            }
        }
        for (role, (path, hash)) in &req.files {
            let h = self
                .hasher
                .hash(path)
                .map_err(|source| ExecError::InputFile {
                    id: req.id.clone(),
                    role: role.clone(),
                    path: path.clone(),
                    source,
                })?;
            if h != *hash {
                return Err(ExecError::InputFile {
                    id: req.id.clone(),
                    role: role.clone(),
                    path: path.clone(),
                    source: std::io::Error::other("file changed since the request was written"),
                });
            }
        }
        self.run_one(&req, &inputs, &NoProgress)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
