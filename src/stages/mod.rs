//! Stage kinds, one file each. Every stage is a pure function of its parameters, input
//! artifacts and input files (see `exec::Stage`); none of them touches the cache.
//!
//! `plan` compiles a checked pipeline into stage declarations for the engine.

pub mod artifacts;
pub mod consolidate;
pub mod correlate;
pub mod device;
pub mod evaluate;
pub mod explain;
pub mod mask;
pub mod plan;
pub mod prune;
pub mod score;
pub mod split;
pub mod train;
pub mod views;
pub mod visualize;

use crate::exec::{Registry, StageError};
use crate::nn::model::DeviceModel;
use crate::nn::tensor::{argmax_rows, Vector};
use artifacts::Samples;
pub(crate) use device::on_device;
pub use device::{Backend, DeviceChoice, DeviceError};
use dfdx::prelude::*;
use std::sync::Arc;

/// Which numeric code a stage's output depends on, besides its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numerics {
    /// It runs nn's kernels (forward and backward passes, conv, pooling, gemm), so their
    /// rounding is part of its result.
    Kernels,
    /// Bookkeeping only (data selection, masks from scores): no float kernel touches it.
    Exact,
}

/// The revision of the numeric kernels. Bump it when their rounding changes (a new gemm, a
/// reordered sum); every stage declared [`Numerics::Kernels`] then gets new keys, so none can be
/// forgotten. History in CHANGELOG.md: 1, the first kernels; 2, ff04d62's conv CPU kernels;
/// 3, dense layers on the CPU through `nn::dense` (the blocked sgemm, fused bias and
/// activation) instead of dfdx's gemm.
pub const KERNELS: u32 = 3;

/// The version a stage is keyed under: its own revision `own` plus, for a stage that runs the
/// kernels, every kernel revision since the first. Both parts only ever grow, one step at a
/// time, so every change of either gives a version never used before: no two states of a
/// stage share a key.
pub const fn keyed_version(own: u32, numerics: Numerics) -> u32 {
    match numerics {
        Numerics::Kernels => own + (KERNELS - 1),
        Numerics::Exact => own,
    }
}

/// All stage kinds cfpipe knows.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(split::Split));
    r.register(Arc::new(train::Train));
    r.register(Arc::new(score::Score));
    r.register(Arc::new(prune::Prune));
    r.register(Arc::new(mask::Mask));
    r.register(Arc::new(evaluate::Evaluate));
    r.register(Arc::new(consolidate::Consolidate));
    r.register(Arc::new(correlate::Correlate));
    r.register(Arc::new(visualize::Visualize));
    r.register(Arc::new(explain::Explain));
    r
}

/// Evaluation batch size for small models; large because there is no tape.
const EVAL_BATCH: usize = 1000;

/// The class `head` predicts for each of `samples`, optionally with hidden units masked out,
/// once per range of outputs in `within`: the argmax over those outputs only (still numbered
/// among all of them). `0..outputs` is the plain argmax; a task's own outputs give the
/// task-aware evaluation of a class-incremental head. One forward pass serves every range.
pub fn predictions<D: Device<f32>>(
    model: &DeviceModel<D>,
    samples: &Samples,
    dim: usize,
    head: usize,
    unit_masks: Option<&[Vector<D>]>,
    within: &[std::ops::Range<usize>],
) -> Vec<Vec<usize>> {
    let classes = model.outputs(head);
    let mut out = vec![Vec::with_capacity(samples.len()); within.len()];
    let batch = model.batch_within(EVAL_BATCH, 1, false);
    for start in (0..samples.len()).step_by(batch) {
        let end = (start + batch).min(samples.len());
        let x = model.input(&samples.x[start * dim..end * dim]);
        let logits = model.logits(&x, head, unit_masks).as_vec();
        extend_argmax_within(&mut out, &logits, classes, within);
    }
    out
}

/// Per row of `classes` scores, the index of the largest (the first of equals) among the
/// columns of each range of `within` (numbered among all columns), appended to `out`, a list
/// per range.
pub fn extend_argmax_within(
    out: &mut [Vec<usize>],
    rows: &[f32],
    classes: usize,
    within: &[std::ops::Range<usize>],
) {
    for (out, r) in out.iter_mut().zip(within) {
        if *r == (0..classes) {
            out.extend(argmax_rows(rows, classes));
            continue;
        }
        let sub: Vec<f32> = rows
            .chunks_exact(classes.max(1))
            .flat_map(|row| row[r.clone()].iter().copied())
            .collect();
        out.extend(argmax_rows(&sub, r.len()).into_iter().map(|i| r.start + i));
    }
}

/// The share of `predicted` that equals `labels` (0 for no sample).
pub fn share_correct(predicted: &[usize], labels: &[crate::nn::tensor::Label]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let correct = predicted
        .iter()
        .zip(labels)
        .filter(|(p, y)| **p == **y as usize)
        .count();
    correct as f64 / labels.len() as f64
}

/// Accuracy of `head` on `samples`, optionally with hidden units masked out.
pub fn accuracy<D: Device<f32>>(
    model: &DeviceModel<D>,
    samples: &Samples,
    dim: usize,
    head: usize,
    unit_masks: Option<&[Vector<D>]>,
) -> f64 {
    let all = 0..model.outputs(head);
    let p = predictions(model, samples, dim, head, unit_masks, &[all]);
    share_correct(&p[0], &samples.y)
}

/// 0/1 activation masks on the device: 1 where `keep` is set.
pub fn flags_to_masks<D: Device<f32>>(dev: &D, keep: &[Vec<bool>]) -> Vec<Vector<D>> {
    keep.iter()
        .map(|l| {
            let v: Vec<f32> = l.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
            dev.tensor_from_vec(v, (l.len(),))
        })
        .collect()
}

/// The split and the trained model a per-task analysis stage reads (slots `split` and
/// `model`), checked to hold task `t` and its outputs, with labels as the model's scenario
/// outputs them ([`scenario_labels`]). Task `t`'s samples come centre-cropped to the model's
/// input where the split stores larger images (reference sets use the centre crop, paper A.5);
/// see [`views::centered`].
pub(crate) fn split_and_model(
    ctx: &crate::exec::StageContext,
    t: usize,
) -> Result<(artifacts::SplitData, crate::nn::model::ModelParams), StageError> {
    let mut split = artifacts::SplitData::load(ctx, "split")?;
    check_task(t, split.tasks.len())?;
    let host = artifacts::load_model(ctx, "model")?;
    scenario_labels(&mut split, &host, t)?;
    let split = views::centered(split, t, &host)?;
    Ok((split, host))
}

/// Checks that `host` has the outputs of tasks `0..=t` under its scenario, and relabels
/// `split` into its heads' output space (see [`artifacts::SplitData::relabel`]). After this,
/// task `t`'s samples go through head `host.scenario.head(t)` and their labels are that
/// head's outputs.
pub(crate) fn scenario_labels(
    split: &mut artifacts::SplitData,
    host: &crate::nn::model::ModelParams,
    t: usize,
) -> Result<(), StageError> {
    let s = host.scenario;
    let counts = split.class_counts();
    let head = s.head(t);
    let needed = s.offset(&counts, t) + counts.get(t).copied().unwrap_or(0);
    match host.heads.get(head) {
        Some(h) if h.out_dim >= needed => {}
        Some(h) => {
            return Err(StageError::invalid(format!(
                "head {head} has {} outputs; task index {t} needs {needed} ({s:?})",
                h.out_dim
            )))
        }
        None => {
            return Err(StageError::invalid(format!(
                "model has no head for task index {t} ({s:?})"
            )))
        }
    }
    split.relabel(s)
}

/// A stage-parameter helper: the task index must exist in the split.
pub(crate) fn check_task(t: usize, n: usize) -> Result<(), StageError> {
    if t >= n {
        return Err(StageError::invalid(format!(
            "task index {t} out of range ({n} tasks)"
        )));
    }
    Ok(())
}

/// Seeded RNG for one purpose of one stage: distinct streams per (seed, task, purpose), so
/// adding a use of randomness in one place never shifts another.
pub fn rng_for(seed: u64, task: usize, purpose: &str) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&(task as u64).to_le_bytes());
    h.update(purpose.as_bytes());
    rand_chacha::ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_versions_follow_the_kernel_revision_and_only_the_kernel_stages_moved() {
        // The versions entries were filed under before versions were derived, plus one per
        // kernel revision since (3: the dense CPU path) for the stages that run the kernels;
        // `split` and `mask` kept theirs. `visualize` was missed by ff04d62's kernel bump and
        // was fixed to 2 before this revision.
        let before = [
            ("split", 1),
            ("train", 4),
            ("score", 3),
            ("prune", 4),
            ("mask", 2),
            // 3 before its own revision 2 (the confusion matrices, issue 18).
            ("evaluate", 4),
            ("consolidate", 3),
            ("correlate", 3),
            ("visualize", 3),
            // 3 before this revision: the entry no longer holds PNGs (the command draws the
            // figures).
            ("explain", 4),
        ];
        let r = registry();
        assert_eq!(
            r.kinds().len(),
            before.len(),
            "a new kind belongs in this table"
        );
        for (kind, v) in before {
            assert_eq!(r.get(kind).unwrap().version(), v, "{kind}");
        }
    }
}
