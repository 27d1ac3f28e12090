//! `mask`: after task t's pruning search, every unit that was not pruned is frozen for all
//! later tasks (units frozen by earlier tasks were never candidates, so they stay frozen).
//! Free capacity is the share of hidden units never frozen.

use super::artifacts::{self, json_bytes};
use crate::exec::{Artifact, Stage, StageContext, StageError};
use serde::{Deserialize, Serialize};

pub struct Mask;

#[derive(Debug, Deserialize)]
struct Params {
    task_index: usize,
    /// Hidden layer sizes (for shape checks).
    hidden: Vec<usize>,
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
        1
    }
    fn run(&self, ctx: &StageContext) -> Result<Artifact, StageError> {
        let p: Params = ctx.params()?;
        let layers = p.hidden.len();
        let pruned = artifacts::load_unit_flags(ctx, "prune", layers)?;
        let prev = match ctx.input_opt("mask") {
            Some(_) => artifacts::load_unit_flags(ctx, "mask", layers)?,
            None => p.hidden.iter().map(|&u| vec![false; u]).collect(),
        };
        let mut frozen = Vec::new();
        let mut newly = Vec::new();
        for l in 0..layers {
            if pruned[l].len() != p.hidden[l] || prev[l].len() != p.hidden[l] {
                return Err(StageError::invalid(format!(
                    "layer {l}: unit counts disagree"
                )));
            }
            let f: Vec<bool> = pruned[l]
                .iter()
                .zip(&prev[l])
                .map(|(&pr, &was)| was || !pr)
                .collect();
            newly.push(
                f.iter()
                    .zip(&prev[l])
                    .filter(|(&now, &was)| now && !was)
                    .count(),
            );
            frozen.push(f);
        }
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
