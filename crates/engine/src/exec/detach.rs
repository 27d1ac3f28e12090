//! Detached Slurm runs (`run --executor slurm --detach`): every stage that is not cached is
//! submitted at once, each job held until its inputs' jobs have completed well (`afterok`, and
//! `--kill-on-invalid-dep=yes`, so that a failure cancels what depends on it rather than
//! leaving it pending forever), and the driver exits, so the login session may end.
//!
//! A stage's key depends on its inputs' content, which is not known before they have run, so
//! a job cannot be handed its key as an attached run's jobs are: it derives it on the node from
//! the DAG, which the binary rebuilds from arguments it chose (for cfpipe, the pipeline file,
//! its overrides and the stage id). [`Executor::run_from_cache`] is that second half: it
//! resolves the stage's inputs against the cache and computes (or serves) the stage, leased and
//! published like any other.
//!
//! A record of each detached run (stage id → job id) is kept under the cache in
//! `runs/slurm/`, so that `status` can say which stages are queued or running, as which job,
//! with one `squeue` call.

use super::resolve::resolve;
use super::slurm::{Job, SlurmError, SlurmRunner};
use super::{ExecError, Executor, Outcome};
use crate::cache::{Cache, Entry};
use crate::graph::{Dag, StageNode};
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// What a detached submission did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The job name all of this run's jobs share (`squeue --name …`).
    pub job_name: String,
    /// Seconds since the Unix epoch at submission.
    pub submitted_unix: u64,
    /// What the binary wants to remember about the run (for cfpipe: pipeline and overrides).
    pub context: serde_json::Value,
    /// Stage id → Slurm job id, for every stage submitted.
    pub jobs: BTreeMap<String, String>,
    /// Stages that were cached already and got no job.
    pub cached: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    #[error("submitting stage `{id}`: {source} (the {cancelled} jobs submitted before it were cancelled)")]
    Submit {
        id: String,
        source: SlurmError,
        cancelled: usize,
    },
    #[error("writing the run record {path}: {source}")]
    Record {
        path: String,
        source: crate::cache::CacheError,
    },
}

fn records_dir(cache: &Cache) -> std::path::PathBuf {
    cache.root().join("runs").join("slurm")
}

/// Submit every stage of `dag` that is not cached as a job of `runner`, in topological order,
/// each after the jobs of its inputs. `stage_args(node)` gives the arguments after
/// `exec-stage` that make the binary compute that stage from the cache on a node. If a
/// submission fails, the jobs already submitted are cancelled: half a DAG in the queue would
/// only compute what no one asked for.
pub fn submit_detached(
    dag: &Dag,
    cache: &Cache,
    runner: &SlurmRunner,
    stage_args: &dyn Fn(&StageNode) -> Vec<String>,
    context: serde_json::Value,
) -> Result<RunRecord, DetachError> {
    let resolved: HashMap<NodeIndex, bool> = resolve(dag, cache)
        .into_iter()
        .map(|r| (r.node, r.cached()))
        .collect();
    let mut jobs: HashMap<NodeIndex, Job> = HashMap::new();
    let mut record = RunRecord {
        job_name: runner.job_name.clone(),
        submitted_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        context,
        jobs: BTreeMap::new(),
        cached: 0,
    };
    for &n in dag.topo_order() {
        if resolved.get(&n).copied().unwrap_or(false) {
            record.cached += 1;
            continue;
        }
        let node = dag.node(n);
        let after: Vec<String> = node
            .inputs
            .values()
            .filter_map(|i| jobs.get(i).map(|j| j.id.clone()))
            .collect();
        let stem = format!("{}-detached", node.id.replace('/', "-"));
        match runner.submit_job(&node.id, &node.kind, &stem, &stage_args(node), &after) {
            Ok(job) => {
                record.jobs.insert(node.id.clone(), job.id.clone());
                jobs.insert(n, job);
            }
            Err(source) => {
                for j in jobs.values() {
                    runner.cancel(j);
                }
                return Err(DetachError::Submit {
                    id: node.id.clone(),
                    source,
                    cancelled: jobs.len(),
                });
            }
        }
    }
    let path = records_dir(cache).join(format!("{}.json", record.job_name));
    let _ = cache.perms().create_dir_all(&records_dir(cache));
    cache
        .write_atomic(
            &path,
            &serde_json::to_vec_pretty(&record).expect("a record is plain data"),
        )
        .map_err(|source| DetachError::Record {
            path: path.display().to_string(),
            source,
        })?;
    Ok(record)
}

/// Every detached run recorded in `cache`, oldest first.
pub fn records(cache: &Cache) -> Vec<RunRecord> {
    let mut out: Vec<RunRecord> = std::fs::read_dir(records_dir(cache))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    out.sort_by(|a, b| (a.submitted_unix, &a.job_name).cmp(&(b.submitted_unix, &b.job_name)));
    out
}

impl Executor<'_> {
    /// Serve or compute stage `n` of `dag` from its inputs' entries in the cache, as a detached
    /// job does on its node: the inputs must be published (their jobs completed well).
    pub fn run_from_cache(&self, dag: &Dag, n: NodeIndex) -> Result<(Entry, Outcome), ExecError> {
        let part = Dag::build(dag.decls(&dag.upstream(n))).expect("part of a checked DAG");
        let id = &dag.node(n).id;
        let at = part.find(id).expect("the stage is in its own upstream");
        let res = resolve(&part, self.cache);
        let entry = |i: NodeIndex| {
            res.iter()
                .find(|r| r.node == i)
                .and_then(|r| r.entry.clone())
        };
        let mut inputs = BTreeMap::new();
        for (slot, &i) in &part.node(at).inputs {
            let Some(e) = entry(i) else {
                return Err(ExecError::InputNotCached {
                    id: id.clone(),
                    input: part.node(i).id.clone(),
                });
            };
            inputs.insert(slot.clone(), e);
        }
        self.run_stage(&part, at, &inputs)
    }
}
