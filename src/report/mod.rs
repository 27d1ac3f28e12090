//! Results read back from the cache (never computed here): accuracy matrices, free capacity
//! and pruning searches per strategy and seed. `show` prints them; `summary` aggregates them
//! over seeds with the metrics of `metrics`; `correlations` does the same for the importance
//! correlations of `correlate` stages; `write` renders `cfpipe report` (markdown, CSV, JSON,
//! and figures via `figures`); `compare` sets strategies, sweep variants and pipelines side by
//! side; `tensorboard` writes the curves and metrics as TensorBoard event files.

pub mod compare;
pub mod correlations;
pub mod figures;
pub mod metrics;
pub mod perclass;
pub mod summary;
pub mod tensorboard;
pub mod write;

use crate::cache::Entry;
use crate::exec::resolve::Resolved;
use crate::graph::Dag;
use crate::spec::{FreezeSpec, Pipeline};
use crate::stages::correlate::{CorrelateReport, CORRELATE_JSON};
use crate::stages::evaluate::{EvalReport, EVAL_JSON};
use crate::stages::mask::{MaskReport, MASK_JSON};
use crate::stages::plan::stage_id;
use crate::stages::prune::{PruneReport, PRUNE_JSON};
use serde::Serialize;
use std::collections::HashMap;

/// One (strategy, seed) run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub strategy: String,
    pub seed: u64,
    /// `accuracy[i][j]`: accuracy on task j+1 after training task i+1 (`None` if not cached).
    pub accuracy: Vec<Option<Vec<f64>>>,
    /// Free capacity after each task (`None` where not cached, or after the last task of a
    /// strategy with `final_mask: false`, which never computes it).
    pub free_capacity: Vec<Option<f64>>,
    /// False for a freezing strategy with `final_mask: false`: no mask (and no free capacity)
    /// after the last task, by design rather than missing.
    pub final_mask: bool,
    /// Stage ids whose results are not in the cache.
    pub missing: Vec<String>,
    /// Trained on all tasks at once: only the last row of `accuracy` exists.
    pub joint: bool,
    /// The pruning search after each task (RNF-style strategies only).
    pub prune: Vec<Option<PruneReport>>,
    /// The importance correlations after each task (strategies with `correlate` only; empty
    /// otherwise, and then left out of the JSON).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub correlate: Vec<Option<CorrelateReport>>,
    /// Each task's training curve, from its train stage (one entry for joint training); `None`
    /// where the train stage is not cached.
    pub curves: Vec<Option<Vec<EpochPoint>>>,
    /// The final evaluation's confusion matrix per task (`[task][true][predicted]`); `None`
    /// where it is not cached or predates them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confusion: Option<Vec<Vec<Vec<u64>>>>,
    /// Class-incremental only: the output of each task's class 0, where its confusion
    /// matrix has a column per output of the head; empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub class_offset: Vec<usize>,
    /// Class-incremental only: the final evaluation's task-aware accuracy per task (told the
    /// task, the argmax over its own outputs); `None` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_aware: Option<Vec<f64>>,
    /// With `evaluation.forward_transfer`: each task's accuracy trained alone from a fresh
    /// start (index 0 stays `None`; the sequence's own task-1 training is that); empty
    /// otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alone: Vec<Option<f64>>,
}

/// One epoch of a train stage's curve (its `train.json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct EpochPoint {
    pub epoch: usize,
    /// Mean cross-entropy over the epoch's batches (without any EWC penalty).
    pub mean_loss: f64,
    pub train_accuracy: f64,
}

/// The part of a train stage's `train.json` a curve needs.
#[derive(serde::Deserialize)]
struct TrainLog {
    epochs: Vec<EpochPoint>,
}

/// One CSV field, quoted where it holds a comma, a quote or a newline (RFC 4180).
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A train stage's curve, from its `train.json`.
pub fn curve(e: Option<&Entry>) -> Option<Vec<EpochPoint>> {
    read_json::<TrainLog>(e?, crate::stages::train::TRAIN_JSON).map(|l| l.epochs)
}

impl RunResult {
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// Mean accuracy over all tasks after the last one (`None` where that row is missing).
    pub fn final_mean_accuracy(&self) -> Option<f64> {
        let row = self.accuracy.last()?.as_ref()?;
        Some(row.iter().sum::<f64>() / row.len().max(1) as f64)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(e: &Entry, file: &str) -> Option<T> {
    serde_json::from_slice(&std::fs::read(e.output_path(file)).ok()?).ok()
}

pub fn collect(p: &Pipeline, dag: &Dag, resolved: &[Resolved]) -> Vec<RunResult> {
    let by_node: HashMap<_, _> = resolved.iter().map(|r| (r.node, r)).collect();
    let entry = |id: &str| {
        dag.find(id)
            .and_then(|n| by_node.get(&n))
            .and_then(|r| r.entry.as_ref())
    };
    let mut out = Vec::new();
    for s in &p.strategies {
        for &seed in &p.seeds {
            let mut r = RunResult {
                strategy: s.name.clone(),
                seed,
                accuracy: vec![],
                free_capacity: vec![],
                missing: vec![],
                joint: s.joint,
                prune: vec![],
                correlate: vec![],
                curves: vec![],
                final_mask: s.final_mask || matches!(s.freeze, FreezeSpec::None),
                confusion: None,
                class_offset: vec![],
                task_aware: None,
                alone: vec![],
            };
            let confusion = |e: &EvalReport| Some(e.confusion.clone()).filter(|c| !c.is_empty());
            let last_eval = |r: &mut RunResult, e: Option<&EvalReport>| {
                r.confusion = e.and_then(confusion);
                r.class_offset = e.map(|e| e.class_offset.clone()).unwrap_or_default();
                r.task_aware = e
                    .map(|e| e.task_aware_accuracy.clone())
                    .filter(|v| !v.is_empty());
            };
            if s.joint {
                let eid = format!("{}/seed{seed}/evaluate", s.name);
                let eval = entry(&eid).and_then(|e| read_json::<EvalReport>(e, EVAL_JSON));
                last_eval(&mut r, eval.as_ref());
                let acc = eval.map(|e| e.accuracy);
                if acc.is_none() {
                    r.missing.push(eid);
                }
                r.accuracy = vec![None; p.task_count()];
                r.accuracy[p.task_count() - 1] = acc;
                r.free_capacity = vec![Some(1.0); p.task_count()];
                r.curves = vec![curve(entry(&format!("{}/seed{seed}/train", s.name)))];
                out.push(r);
                continue;
            }
            for t in 0..p.task_count() {
                r.curves
                    .push(curve(entry(&stage_id(&s.name, seed, t, "train"))));
                let eid = stage_id(&s.name, seed, t, "evaluate");
                let eval = entry(&eid).and_then(|e| read_json::<EvalReport>(e, EVAL_JSON));
                if t + 1 == p.task_count() {
                    last_eval(&mut r, eval.as_ref());
                }
                let acc = eval.map(|e| e.accuracy);
                if acc.is_none() {
                    r.missing.push(eid);
                }
                r.accuracy.push(acc);
                if p.forward_transfer {
                    let aid = stage_id(&s.name, seed, t, crate::stages::plan::ALONE_EVALUATE);
                    let alone = (t > 0).then(|| {
                        entry(&aid)
                            .and_then(|e| read_json::<EvalReport>(e, EVAL_JSON))
                            .and_then(|e| e.accuracy.get(t).copied())
                    });
                    if alone == Some(None) {
                        r.missing.push(aid);
                    }
                    r.alone.push(alone.flatten());
                }
                // Stages the plan never declares (see `plan`): not missing, not computed.
                let unmasked = t + 1 == p.task_count() && !r.final_mask;
                let cap = match s.freeze {
                    FreezeSpec::None => Some(1.0),
                    _ if unmasked => None,
                    FreezeSpec::UntilThreshold { .. }
                    | FreezeSpec::Random { .. }
                    | FreezeSpec::TopShare { .. } => {
                        let mid = stage_id(&s.name, seed, t, "mask");
                        let c = entry(&mid)
                            .and_then(|e| read_json::<MaskReport>(e, MASK_JSON))
                            .map(|m| m.free_capacity);
                        if c.is_none() {
                            r.missing.push(mid);
                        }
                        c
                    }
                };
                r.free_capacity.push(cap);
                let prune = match s.freeze {
                    FreezeSpec::UntilThreshold { .. } if !unmasked => {
                        let pid = stage_id(&s.name, seed, t, "prune");
                        let pr = entry(&pid).and_then(|e| read_json::<PruneReport>(e, PRUNE_JSON));
                        if pr.is_none() {
                            r.missing.push(pid);
                        }
                        pr
                    }
                    _ => None,
                };
                r.prune.push(prune);
                if s.correlate.is_some() {
                    let cid = stage_id(&s.name, seed, t, "correlate");
                    let c =
                        entry(&cid).and_then(|e| read_json::<CorrelateReport>(e, CORRELATE_JSON));
                    if c.is_none() {
                        r.missing.push(cid);
                    }
                    r.correlate.push(c);
                }
            }
            out.push(r);
        }
    }
    out
}

/// The accuracy matrix as a text table, in percent.
pub fn render_matrix(r: &RunResult) -> String {
    let n = r.accuracy.len();
    let mut s = format!("{} / seed {}\n", r.strategy, r.seed);
    s.push_str("after   ");
    for j in 0..n {
        s.push_str(&format!("{:>8}", format!("T{}", j + 1)));
    }
    s.push_str(&format!("{:>8}{:>8}\n", "mean", "free"));
    for (i, row) in r.accuracy.iter().enumerate() {
        if r.joint && row.is_none() {
            continue;
        }
        s.push_str(&if r.joint {
            "joint   ".to_string()
        } else {
            format!("task {:<3}", i + 1)
        });
        match row {
            Some(row) => {
                for j in 0..n {
                    match row.get(j) {
                        Some(a) => s.push_str(&format!("{:>8.2}", a * 100.0)),
                        None => s.push_str(&format!("{:>8}", "")),
                    }
                }
                let mean = row.iter().sum::<f64>() / row.len().max(1) as f64;
                s.push_str(&format!("{:>8.2}", mean * 100.0));
            }
            None => s.push_str(&format!("{:>w$}", "(not computed)", w = 8 * (n + 1))),
        }
        match r.free_capacity.get(i).copied().flatten() {
            Some(c) => s.push_str(&format!("{:>7.1}%", c * 100.0)),
            None if !r.final_mask && i + 1 == n => s.push_str(&format!("{:>8}", "n/c")),
            None => s.push_str(&format!("{:>8}", "?")),
        }
        s.push('\n');
    }
    if !r.final_mask {
        s.push_str(&format!(
            "free capacity after task {n}: not computed (final_mask: false)\n"
        ));
    }
    s
}
