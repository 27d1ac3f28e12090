//! What the command line adds to the Slurm back end: `run --detach`, which submits a whole
//! DAG and exits, and the jobs of detached runs as `status` reports them.

use super::output::out;
use super::{CacheLoc, PipelineArgs};
use crate::config::Config;
use crate::error::CliError;
use crate::exec::resolve;
use std::collections::HashMap;

/// `run --executor slurm --detach`: submit the DAG and exit. Each job computes its stage with
/// `exec-stage --pipeline P --set … --stage ID`, deriving the key on its node.
pub(super) fn detach(
    p: &PipelineArgs,
    name: &str,
    dag: &crate::graph::Dag,
    cache: &crate::cache::Cache,
    s: &crate::exec::slurm::SlurmRunner,
    c: &CacheLoc,
) -> Result<(), CliError> {
    let pipeline = std::path::absolute(&p.pipeline)?;
    let stage_args = |n: &crate::graph::StageNode| {
        let mut a = vec!["--pipeline".to_string(), pipeline.display().to_string()];
        for v in &p.set {
            a.extend(["--set".to_string(), v.clone()]);
        }
        for v in &p.sweep {
            a.extend(["--sweep".to_string(), v.clone()]);
        }
        a.extend(["--stage".to_string(), n.id.clone()]);
        a
    };
    let context = serde_json::json!({
        "pipeline": pipeline,
        "name": name,
        "set": p.set,
        "sweep": p.sweep,
    });
    let record = crate::exec::detach::submit_detached(dag, cache, s, &stage_args, context)?;
    out!(
        "submitted {} jobs as {} ({} stages cached); follow them with `{}` or `squeue --name {}`",
        record.jobs.len(),
        record.job_name,
        record.cached,
        c.command("status", p),
        record.job_name
    );
    Ok(())
}

/// A detached run's job for one stage, as `status` shows it.
pub(super) struct StageJob {
    pub(super) id: String,
    /// The run's job name.
    pub(super) name: String,
    /// Its state in the queue; `None` when it is no longer there.
    pub(super) state: Option<String>,
}

impl StageJob {
    /// Still waiting to run, or running: the stage will be computed without another `run`.
    pub(super) fn live(&self) -> bool {
        self.state
            .as_deref()
            .is_some_and(|s| !crate::exec::slurm::is_terminal(s))
    }
}

/// For each stage that is not cached, the newest job a detached run submitted for it, with
/// its state from one `squeue` call for all those runs.
pub(super) fn detached_jobs(
    p: &PipelineArgs,
    cache: &crate::cache::Cache,
    dag: &crate::graph::Dag,
    res: &[resolve::Resolved],
) -> Result<HashMap<String, StageJob>, CliError> {
    let waiting: std::collections::HashSet<&str> = res
        .iter()
        .filter(|r| !r.cached())
        .map(|r| dag.node(r.node).id.as_str())
        .collect();
    let mut jobs: HashMap<String, StageJob> = HashMap::new();
    if waiting.is_empty() {
        return Ok(jobs);
    }
    // Oldest first, so the newest run's job for a stage wins.
    for rec in crate::exec::detach::records(cache) {
        for (stage, job) in rec
            .jobs
            .iter()
            .filter(|(s, _)| waiting.contains(s.as_str()))
        {
            jobs.insert(
                stage.clone(),
                StageJob {
                    id: job.clone(),
                    name: rec.job_name.clone(),
                    state: None,
                },
            );
        }
    }
    if jobs.is_empty() {
        return Ok(jobs);
    }
    let names: std::collections::BTreeSet<&str> = jobs.values().map(|j| j.name.as_str()).collect();
    let cfg = Config::for_pipelines(std::slice::from_ref(&p.pipeline))?.slurm;
    match crate::exec::slurm::queue_states(&cfg, &names.into_iter().collect::<Vec<_>>()) {
        Ok(states) => {
            for j in jobs.values_mut() {
                j.state = states.get(&j.id).cloned();
            }
        }
        Err(e) => eprintln!("warning: reading the Slurm queue for the detached runs' jobs: {e}"),
    }
    Ok(jobs)
}
