//! `prune`: RNF's prune-until-threshold search (Algorithm 1).
//!
//! Candidates are the hidden units not frozen by earlier tasks, ranked globally by score
//! (ascending; ties by layer then index, so the order is deterministic). Each step prunes the
//! next `ceil(step_ratio · candidates)` of them, i.e. zeroes their outgoing connections, which is
//! evaluated as a 0/1 mask on the units' activations of a *copy*: the model itself is never
//! modified. Accuracy is measured on the task's test split (as in the paper). The search stops
//! before the first step whose accuracy is more than `threshold` (absolute) below the unpruned
//! accuracy; the last accepted step defines the pruned set. Every evaluated point is recorded.

use super::artifacts::{self, json_bytes, SplitData};
use super::{accuracy, check_task, on_device};
use crate::exec::{Artifact, Stage, StageContext, StageError};
use crate::nn::mlp::{DeviceMlp, Vector};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

pub struct Prune;

#[derive(Debug, Deserialize)]
struct Params {
    task_index: usize,
    threshold: f64,
    step_ratio: f64,
    search: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CurvePoint {
    pub pruned: usize,
    /// Share of the candidate units pruned.
    pub share: f64,
    pub accuracy: f64,
}

/// The `prune.json` artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PruneReport {
    pub task_index: usize,
    pub threshold: f64,
    pub candidates: usize,
    pub step: usize,
    pub baseline_accuracy: f64,
    pub accepted_pruned: usize,
    pub accepted_accuracy: f64,
    pub evaluations: usize,
    pub curve: Vec<CurvePoint>,
}

pub const PRUNE_JSON: &str = "prune.json";

impl Stage for Prune {
    fn kind(&self) -> &'static str {
        "prune"
    }
    fn version(&self) -> u32 {
        1
    }
    fn run(&self, ctx: &StageContext) -> Result<Artifact, StageError> {
        on_device!(ctx, run_on)
    }
}

/// Candidate units `(layer, unit)` sorted by ascending score.
pub fn rank_candidates(scores: &[Vec<f32>], frozen: Option<&[Vec<bool>]>) -> Vec<(usize, usize)> {
    let mut c: Vec<(usize, usize)> = scores
        .iter()
        .enumerate()
        .flat_map(|(l, s)| (0..s.len()).map(move |j| (l, j)))
        .filter(|&(l, j)| !frozen.is_some_and(|f| f[l][j]))
        .collect();
    c.sort_by(|a, b| scores[a.0][a.1].total_cmp(&scores[b.0][b.1]).then(a.cmp(b)));
    c
}

/// Linear search: returns the curve and the accepted number of pruned candidates. `eval(k)`
/// gives the accuracy with the first `k` candidates pruned.
pub fn linear_search(
    candidates: usize,
    step: usize,
    threshold: f64,
    mut eval: impl FnMut(usize) -> Result<f64, StageError>,
) -> Result<(f64, Vec<CurvePoint>, usize), StageError> {
    let base = eval(0)?;
    let share = |k: usize| {
        if candidates == 0 {
            0.0
        } else {
            k as f64 / candidates as f64
        }
    };
    let mut curve = vec![CurvePoint {
        pruned: 0,
        share: 0.0,
        accuracy: base,
    }];
    let mut accepted = 0;
    let mut k = 0;
    while k < candidates {
        k = (k + step).min(candidates);
        let acc = eval(k)?;
        curve.push(CurvePoint {
            pruned: k,
            share: share(k),
            accuracy: acc,
        });
        if base - acc > threshold {
            break;
        }
        accepted = k;
    }
    Ok((base, curve, accepted))
}

fn run_on<D: Device<f32>>(dev: &D, ctx: &StageContext) -> Result<Artifact, StageError> {
    let p: Params = ctx.params()?;
    if p.search != "linear" {
        return Err(StageError::invalid(format!(
            "unsupported search `{}`",
            p.search
        )));
    }
    let split = SplitData::load(ctx, "split")?;
    check_task(p.task_index, split.tasks.len())?;
    let task = split.task(p.task_index)?;
    let host = artifacts::load_model(ctx, "model")?;
    let sizes = host.hidden_sizes();
    let scores = artifacts::load_unit_f32(ctx, "score", sizes.len())?;
    let frozen = match ctx.input_opt("mask") {
        Some(_) => Some(artifacts::load_unit_flags(ctx, "mask", sizes.len())?),
        None => None,
    };
    for (l, s) in scores.iter().enumerate() {
        if s.len() != sizes[l] {
            return Err(StageError::invalid(format!(
                "score layer {l} has {} units, model {}",
                s.len(),
                sizes[l]
            )));
        }
    }
    let order = rank_candidates(&scores, frozen.as_deref());
    let step = ((p.step_ratio * order.len() as f64).ceil() as usize).max(1);
    let model = DeviceMlp::from_host(dev, &host);
    let dim = split.dim();
    let masks_for = |k: usize| -> Vec<Vector<D>> {
        let mut m: Vec<Vec<f32>> = sizes.iter().map(|&u| vec![1f32; u]).collect();
        for &(l, j) in &order[..k] {
            m[l][j] = 0.0;
        }
        m.into_iter()
            .map(|v| dev.tensor_from_vec(v.clone(), (v.len(),)))
            .collect()
    };
    ctx.progress
        .phase("prune", order.len().div_ceil(step) as u64 + 1);
    let mut evaluations = 0;
    let (base, curve, accepted) = linear_search(order.len(), step, p.threshold, |k| {
        ctx.check_cancel()?;
        evaluations += 1;
        ctx.progress.inc(1);
        let masks = masks_for(k);
        Ok(accuracy(
            &model,
            &task.test,
            dim,
            p.task_index,
            if k == 0 { None } else { Some(&masks) },
        ))
    })?;
    let accepted_accuracy = curve
        .iter()
        .find(|c| c.pruned == accepted)
        .map(|c| c.accuracy)
        .unwrap_or(base);
    ctx.log(format!(
        "baseline {base:.4}; accepted {accepted}/{} pruned at accuracy {accepted_accuracy:.4} after {evaluations} evaluations",
        order.len()
    ));
    let mut pruned: Vec<Vec<bool>> = sizes.iter().map(|&u| vec![false; u]).collect();
    for &(l, j) in &order[..accepted] {
        pruned[l][j] = true;
    }
    let report = PruneReport {
        task_index: p.task_index,
        threshold: p.threshold,
        candidates: order.len(),
        step,
        baseline_accuracy: base,
        accepted_pruned: accepted,
        accepted_accuracy,
        evaluations,
        curve,
    };
    let mut art = Artifact::new();
    artifacts::save_unit_flags(&mut art, &pruned);
    art.insert(PRUNE_JSON, json_bytes(&report));
    Ok(art)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_skips_frozen_units_and_breaks_ties_by_position() {
        let scores = vec![vec![0.5, 0.1, 0.1], vec![0.0, 0.3]];
        let frozen = vec![vec![false, false, true], vec![false, false]];
        assert_eq!(
            rank_candidates(&scores, Some(&frozen)),
            vec![(1, 0), (0, 1), (1, 1), (0, 0)]
        );
    }

    #[test]
    fn linear_search_stops_before_the_threshold_is_exceeded() {
        // Accuracy falls by 0.01 per pruned unit from 0.9.
        let acc = |k: usize| Ok(0.9 - 0.01 * k as f64);
        let (base, curve, accepted) = linear_search(10, 2, 0.035, acc).unwrap();
        assert_eq!(base, 0.9);
        // k=2 (drop .02) ok, k=4 (drop .04) exceeds: accept 2.
        assert_eq!(accepted, 2);
        assert_eq!(
            curve.iter().map(|c| c.pruned).collect::<Vec<_>>(),
            vec![0, 2, 4]
        );
        // Never exceeding: everything is pruned.
        let (_, _, all) = linear_search(5, 2, 0.5, |_| Ok(0.9)).unwrap();
        assert_eq!(all, 5);
    }
}
