//! `prune`: RNF's prune-until-threshold search (Algorithm 1).
//!
//! Candidates are the hidden units not frozen by earlier tasks, ranked globally by score
//! (ascending; ties by layer then index, so the order is deterministic). Each step prunes the
//! next `ceil(step_ratio · candidates)` of them, i.e. zeroes their outgoing connections, which is
//! evaluated as a 0/1 mask on the units' activations of a *copy*: the model itself is never
//! modified. Accuracy is measured on the task's test split (as in the paper). The search stops
//! before the first step whose accuracy is more than `threshold` (absolute) below the unpruned
//! accuracy; the last accepted step defines the pruned set. Every evaluated point is recorded.
//! Accuracy follows the test protocol (`crops`: the centre window or the ten-crop mean softmax,
//! see `views`), so the threshold compares the numbers `evaluate` reports: through the head the
//! model's scenario gives the task, and under a class-incremental head over all its outputs,
//! without the task id.

use super::artifacts::{self, json_bytes, SplitData};
use super::views::{accuracy_with, center_samples, Geometry};
use super::{accuracy, check_task, flags_to_masks, on_device, scenario_labels};
use crate::exec::{Artifact, Stage, StageContext, StageError};
use crate::nn::model::DeviceModel;
use crate::nn::tensor::Vector;
use crate::spec::protocol::{Selection, TestCrops};
use crate::spec::PruneSpec;
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

pub struct Prune;

/// How the prune search walks the steps (`prune.search`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SearchKind {
    /// Steps of `step_ratio` until the threshold is exceeded (the paper).
    #[default]
    Linear,
    /// Binary search over the same steps; equal to `linear` on monotone curves.
    Bisect,
}

/// The prune stage's parameters: the checked `prune` settings of the strategy (flattened, so
/// `threshold`, `step_ratio` and `search` sit beside the task as they always have).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub task_index: usize,
    #[serde(flatten)]
    pub prune: PruneSpec,
    /// The test protocol of the accuracies compared; left out for the centre crop so
    /// pipelines without `evaluation:` keep their existing keys (and read back as the default).
    #[serde(default, skip_serializing_if = "TestCrops::is_center")]
    pub crops: TestCrops,
    /// The samples the search compares accuracies on: the task's test split (the paper's
    /// choice, left out of the key) or its validation split.
    #[serde(default, skip_serializing_if = "Selection::is_test")]
    pub selection: Selection,
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
    pub search: SearchKind,
    /// Accuracy rose somewhere along the evaluated points.
    pub non_monotone: bool,
    pub curve: Vec<CurvePoint>,
}

pub const PRUNE_JSON: &str = "prune.json";

impl Stage for Prune {
    fn kind(&self) -> &'static str {
        "prune"
    }
    fn version(&self) -> u32 {
        super::keyed_version(2, super::Numerics::Kernels)
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

/// The accepted number of pruned candidates, found by `kind`, with every evaluated point
/// (sorted by share). `eval(k)` is the accuracy with the first `k` candidates pruned; steps are
/// `k = min(m · step, candidates)` for `m = 0, 1, …`.
///
/// - `linear` (the paper): walk the steps until the first one that drops more than `threshold`
///   below the unpruned accuracy; accept the step before it.
/// - `bisect`: binary search for the last step within the threshold. It returns the same step as
///   `linear` whenever accuracy does not increase with more pruning, in O(log steps)
///   evaluations; on a non-monotone curve it may stop elsewhere (the report flags the curve).
pub fn search(
    kind: SearchKind,
    candidates: usize,
    step: usize,
    threshold: f64,
    mut eval: impl FnMut(usize) -> Result<f64, StageError>,
) -> Result<(f64, Vec<CurvePoint>, usize), StageError> {
    let step = step.max(1);
    let steps = candidates.div_ceil(step);
    let k_of = |m: usize| (m * step).min(candidates);
    let share = |k: usize| {
        if candidates == 0 {
            0.0
        } else {
            k as f64 / candidates as f64
        }
    };
    let base = eval(0)?;
    let mut curve = vec![CurvePoint {
        pruned: 0,
        share: 0.0,
        accuracy: base,
    }];
    let mut point = |m: usize, curve: &mut Vec<CurvePoint>| -> Result<bool, StageError> {
        let k = k_of(m);
        let acc = eval(k)?;
        curve.push(CurvePoint {
            pruned: k,
            share: share(k),
            accuracy: acc,
        });
        Ok(base - acc <= threshold)
    };
    let accepted_step = match kind {
        SearchKind::Linear => {
            let mut last_ok = 0;
            for m in 1..=steps {
                if !point(m, &mut curve)? {
                    break;
                }
                last_ok = m;
            }
            last_ok
        }
        SearchKind::Bisect => {
            // Invariant: step `lo` is within the threshold, step `hi` is not (or is past the end).
            let (mut lo, mut hi) = (0, steps + 1);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if point(mid, &mut curve)? {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            lo
        }
    };
    curve.sort_by_key(|c| c.pruned);
    Ok((base, curve, k_of(accepted_step)))
}

/// Whether accuracy ever rises as more units are pruned (then `bisect` may disagree with
/// `linear`, and the prune-curve figure shows it).
pub fn non_monotone(curve: &[CurvePoint]) -> bool {
    curve.windows(2).any(|w| w[1].accuracy > w[0].accuracy)
}

fn run_on<D: Device<f32>>(dev: &D, ctx: &StageContext) -> Result<Artifact, StageError> {
    let p: Params = ctx.params()?;
    let mut split = SplitData::load(ctx, "split")?;
    check_task(p.task_index, split.tasks.len())?;
    let host = artifacts::load_model(ctx, "model")?;
    scenario_labels(&mut split, &host, p.task_index)?;
    let task = split.task(p.task_index)?;
    let head = host.scenario.head(p.task_index);
    let sizes = host.hidden_sizes();
    let scores = artifacts::load_unit_f32(ctx, "score", sizes.len())?;
    let frozen = match ctx.input_opt("mask") {
        Some(_) => Some(artifacts::load_unit_flags(ctx, "mask", sizes.len())?),
        None => None,
    };
    artifacts::check_unit_counts("score", &scores, &sizes)?;
    let order = rank_candidates(&scores, frozen.as_deref());
    let step = ((p.prune.step_ratio * order.len() as f64).ceil() as usize).max(1);
    let model = DeviceModel::from_host(dev, &host);
    let geometry = Geometry::new(&split.sample_shape, &host)?;
    // Centre windows are cut once, not at every step of the search.
    let selected = match p.selection {
        Selection::Test => &task.test,
        Selection::Validation => task.validation(p.task_index)?,
    };
    let centred = match p.crops {
        TestCrops::Center => Some(center_samples(selected, &geometry)?),
        TestCrops::Ten => None,
    };
    let masks_for = |k: usize| -> Vec<Vector<D>> {
        let mut keep: Vec<Vec<bool>> = sizes.iter().map(|&u| vec![true; u]).collect();
        for &(l, j) in &order[..k] {
            keep[l][j] = false;
        }
        flags_to_masks(dev, &keep)
    };
    ctx.progress
        .phase("prune", order.len().div_ceil(step) as u64 + 1);
    let mut evaluations = 0;
    let (base, curve, accepted) =
        search(p.prune.search, order.len(), step, p.prune.threshold, |k| {
            ctx.check_cancel()?;
            evaluations += 1;
            ctx.progress.inc(1);
            let masks = masks_for(k);
            let masks = if k == 0 { None } else { Some(masks.as_slice()) };
            match &centred {
                Some(test) => Ok(accuracy(&model, test, geometry.input_len(), head, masks)),
                None => accuracy_with(&model, selected, &geometry, p.crops, head, masks),
            }
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
        threshold: p.prune.threshold,
        candidates: order.len(),
        step,
        baseline_accuracy: base,
        accepted_pruned: accepted,
        accepted_accuracy,
        evaluations,
        search: p.prune.search,
        non_monotone: non_monotone(&curve),
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

    fn run(
        kind: SearchKind,
        n: usize,
        step: usize,
        t: f64,
        f: impl Fn(usize) -> f64,
    ) -> (Vec<CurvePoint>, usize, usize) {
        let mut evals = 0;
        let (_, curve, acc) = search(kind, n, step, t, |k| {
            evals += 1;
            Ok(f(k))
        })
        .unwrap();
        (curve, acc, evals)
    }

    #[test]
    fn linear_search_stops_before_the_threshold_is_exceeded() {
        // Accuracy falls by 0.01 per pruned unit from 0.9.
        let (curve, accepted, _) = run(SearchKind::Linear, 10, 2, 0.035, |k| 0.9 - 0.01 * k as f64);
        // k=2 (drop .02) ok, k=4 (drop .04) exceeds: accept 2.
        assert_eq!(accepted, 2);
        assert_eq!(
            curve.iter().map(|c| c.pruned).collect::<Vec<_>>(),
            vec![0, 2, 4]
        );
        // Never exceeding: everything is pruned, the last step clipped to the candidate count.
        let (curve, all, _) = run(SearchKind::Linear, 5, 2, 0.5, |_| 0.9);
        assert_eq!(all, 5);
        assert_eq!(curve.last().unwrap().pruned, 5);
    }

    #[test]
    fn bisect_agrees_with_linear_on_monotone_curves_in_fewer_evaluations() {
        // A smooth monotone curve: accuracy holds, then falls off a cliff around 70% pruned.
        let f = |k: usize| 0.98 - 0.3 / (1.0 + (-(k as f64 - 700.0) / 40.0).exp());
        for t in [0.005, 0.02, 0.1, 0.25, 0.5] {
            for step in [1, 7, 50] {
                let (_, lin, lin_evals) = run(SearchKind::Linear, 1000, step, t, f);
                let (curve, bis, bis_evals) = run(SearchKind::Bisect, 1000, step, t, f);
                assert_eq!(lin, bis, "t={t} step={step}");
                assert!(!non_monotone(&curve));
                if step == 1 {
                    assert!(bis_evals <= 12, "bisect used {bis_evals} evaluations");
                    assert!(lin_evals > 100, "linear used {lin_evals}");
                }
            }
        }
    }

    #[test]
    fn non_monotone_curves_are_flagged_and_may_split_the_searches() {
        // A dip within the threshold that recovers: the linear curve shows the rise.
        let shallow = |k: usize| if (3..5).contains(&k) { 0.85 } else { 0.9 };
        let (curve, lin, _) = run(SearchKind::Linear, 10, 1, 0.1, shallow);
        assert_eq!(lin, 10);
        assert!(non_monotone(&curve));
        // A dip beyond the threshold: linear stops before it, bisect jumps past it.
        let deep = |k: usize| if (3..5).contains(&k) { 0.5 } else { 0.9 };
        let (_, lin, _) = run(SearchKind::Linear, 10, 1, 0.1, deep);
        let (_, bis, _) = run(SearchKind::Bisect, 10, 1, 0.1, deep);
        assert_eq!((lin, bis), (2, 10));
    }
}
