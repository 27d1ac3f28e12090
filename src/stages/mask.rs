//! `mask`: which hidden units are frozen for all later tasks, accumulated across tasks.
//!
//! - `policy: keep_unpruned` (RNF): after task t's pruning search, every unit that was not
//!   pruned is frozen (units frozen by earlier tasks were never candidates, so they stay frozen).
//! - `policy: top_share`: in each layer, freeze the `round(share · units)` highest-scoring
//!   units that are still free (fewer if fewer are free; ties go to the lower index); units
//!   scored −∞ are never frozen (saliency's `dense: free`).
//! - `policy: random` (baseline): freeze, in each layer, as many units as the `like` mask newly
//!   froze at this task, drawn uniformly (seeded) from this strategy's own free units.
//!
//! Free capacity is the share of hidden units never frozen.

use super::artifacts::{self, json_bytes};
use crate::exec::{Artifact, Stage, StageContext, StageError};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

pub struct Mask;

/// Freeze the `round(share · units)` highest-scoring free units of one layer.
pub fn freeze_top(scores: &[f32], prev: &[bool], share: f64) -> Vec<bool> {
    let want = (share * scores.len() as f64).round() as usize;
    // A unit scored −∞ is one its method never freezes (saliency's `dense: free`).
    let mut free: Vec<usize> = (0..scores.len())
        .filter(|&j| !prev[j] && scores[j] != f32::NEG_INFINITY)
        .collect();
    free.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut f = prev.to_vec();
    for &j in free.iter().take(want) {
        f[j] = true;
    }
    f
}

/// The mask stage's parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub task_index: usize,
    /// Hidden layer sizes (for shape checks).
    pub hidden: Vec<usize>,
    pub policy: Policy,
}

/// Which units a task freezes (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Policy {
    KeepUnpruned,
    Random { seed: u64 },
    TopShare { share: f64 },
}

/// The `mask.json` artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MaskReport {
    pub task_index: usize,
    pub frozen_per_layer: Vec<usize>,
    pub newly_frozen_per_layer: Vec<usize>,
    pub units_per_layer: Vec<usize>,
    /// Share of hidden units not frozen, in [0, 1].
    pub free_capacity: f64,
}

pub const MASK_JSON: &str = "mask.json";

impl Stage for Mask {
    fn kind(&self) -> &'static str {
        "mask"
    }
    fn version(&self) -> u32 {
        super::keyed_version(2, super::Numerics::Exact)
    }
    fn run(&self, ctx: &StageContext) -> Result<Artifact, StageError> {
        let p: Params = ctx.params()?;
        let layers = p.hidden.len();
        let prev = match ctx.input_opt("mask") {
            Some(_) => artifacts::load_unit_flags(ctx, "mask", layers)?,
            None => p.hidden.iter().map(|&u| vec![false; u]).collect(),
        };
        let frozen: Vec<Vec<bool>> = match p.policy {
            Policy::KeepUnpruned => {
                let pruned = artifacts::load_unit_flags(ctx, "prune", layers)?;
                (0..layers)
                    .map(|l| {
                        if pruned[l].len() != p.hidden[l] || prev[l].len() != p.hidden[l] {
                            return Err(StageError::invalid(format!(
                                "layer {l}: unit counts disagree"
                            )));
                        }
                        Ok(pruned[l]
                            .iter()
                            .zip(&prev[l])
                            .map(|(&pr, &was)| was || !pr)
                            .collect())
                    })
                    .collect::<Result<_, _>>()?
            }
            Policy::TopShare { share } => {
                let scores = artifacts::load_unit_f32(ctx, "score", layers)?;
                (0..layers)
                    .map(|l| {
                        if scores[l].len() != p.hidden[l] {
                            return Err(StageError::invalid(format!(
                                "score layer {l} has the wrong size"
                            )));
                        }
                        Ok(freeze_top(&scores[l], &prev[l], share))
                    })
                    .collect::<Result<_, _>>()?
            }
            Policy::Random { seed } => {
                let like: MaskReport = artifacts::read_json(ctx, "like", MASK_JSON)?;
                if like.newly_frozen_per_layer.len() != layers {
                    return Err(StageError::invalid(
                        "`like` mask has a different number of layers",
                    ));
                }
                let mut rng = super::rng_for(seed, p.task_index, "random_freeze");
                (0..layers)
                    .map(|l| {
                        let free: Vec<usize> = (0..p.hidden[l]).filter(|&j| !prev[l][j]).collect();
                        let want = like.newly_frozen_per_layer[l];
                        if want > free.len() {
                            ctx.log(format!(
                                "layer {l}: {want} to freeze but only {} free; freezing all",
                                free.len()
                            ));
                        }
                        let mut f = prev[l].clone();
                        for &j in free.choose_multiple(&mut rng, want.min(free.len())) {
                            f[j] = true;
                        }
                        f
                    })
                    .collect()
            }
        };
        let newly: Vec<usize> = frozen
            .iter()
            .zip(&prev)
            .map(|(f, p)| f.iter().zip(p).filter(|(&now, &was)| now && !was).count())
            .collect();
        let total: usize = p.hidden.iter().sum();
        let frozen_per_layer: Vec<usize> = frozen
            .iter()
            .map(|l| l.iter().filter(|&&b| b).count())
            .collect();
        let n_frozen: usize = frozen_per_layer.iter().sum();
        let report = MaskReport {
            task_index: p.task_index,
            frozen_per_layer,
            newly_frozen_per_layer: newly,
            units_per_layer: p.hidden.clone(),
            free_capacity: 1.0 - n_frozen as f64 / total.max(1) as f64,
        };
        ctx.log(format!(
            "frozen {n_frozen}/{total}, free capacity {:.4}",
            report.free_capacity
        ));
        let mut art = Artifact::new();
        artifacts::save_unit_flags(&mut art, &frozen);
        art.insert(MASK_JSON, json_bytes(&report));
        Ok(art)
    }
}

#[cfg(test)]
mod tests {
    use super::freeze_top;

    #[test]
    fn top_share_half_freezes_exactly_half_of_a_layer_by_score() {
        let scores = [0.1, 0.9, 0.5, 0.3, 0.8, 0.2];
        let f = freeze_top(&scores, &[false; 6], 0.5);
        assert_eq!(f, vec![false, true, true, false, true, false]);
        // Later tasks freeze among the free units only; frozen ones stay frozen.
        let g = freeze_top(&scores, &f, 0.5);
        assert_eq!(g, vec![true; 6]);
        assert_eq!(
            freeze_top(&scores, &[false; 6], 0.25)
                .iter()
                .filter(|&&b| b)
                .count(),
            2
        );
    }

    #[test]
    fn units_scored_minus_infinity_are_never_frozen() {
        let scores = [f32::NEG_INFINITY, 0.2, f32::NEG_INFINITY, -5.0];
        let f = freeze_top(&scores, &[false; 4], 1.0);
        assert_eq!(f, vec![false, true, false, true]);
    }
}
