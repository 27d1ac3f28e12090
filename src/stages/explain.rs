//! `explain`: LRP input relevance of chosen test images of a trained model (`xai::explain`).
//! `cfpipe explain` adds this stage on top of a pipeline's cached train stage and runs it
//! through the executor, so the result is cached under a key like any other and `--device`
//! applies to it; the command never trains, and draws the heatmaps from the entry.
//!
//! Inputs `split` (the train stage's split) and `model` (the train stage). Artifact:
//! [`EXPLAINED`], the input bytes and the relevance of every pixel, and the explained logits.
//! (Version 2 also stored a PNG per image; the figures are the command's now, so their style
//! can change without invalidating a relevance.)

use super::artifacts::{self, SplitData};
use super::{on_device, views};
use crate::exec::{Artifact, Stage, StageContext, StageError};
use crate::graph::StageDecl;
use crate::xai::explain::{self, ExplainedFile};
use crate::xai::lrp::LrpRules;
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

pub use crate::xai::explain::EXPLAINED;

pub struct Explain;

/// What to explain: everything the heatmaps depend on besides the model and the split.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// 0-based task whose head explains.
    pub head: usize,
    /// Indices into that task's test split.
    pub images: Vec<usize>,
    pub rules: LrpRules,
}

impl Stage for Explain {
    fn kind(&self) -> &'static str {
        "explain"
    }
    fn version(&self) -> u32 {
        super::keyed_version(2, super::Numerics::Kernels)
    }
    fn run(&self, ctx: &StageContext) -> Result<Artifact, StageError> {
        on_device!(ctx, run_on)
    }
}

/// The explain stage `id` of `params` on the model of train stage `train` and its split
/// `split`.
pub fn declare(id: String, train: &str, split: &str, params: &Params) -> StageDecl {
    super::plan::decl(
        id,
        &Explain,
        params,
        vec![("split", split.to_string()), ("model", train.to_string())],
    )
}

fn run_on<D: Device<f32>>(dev: &D, ctx: &StageContext) -> Result<Artifact, StageError> {
    let p: Params = ctx.params()?;
    let split = SplitData::load(ctx, "split")?;
    let host = artifacts::load_model(ctx, "model")?;
    // Test images larger than the model's input are explained on their centre crop, the view
    // reference sets use.
    let split = if p.head < split.tasks.len() {
        views::centered(split, p.head, &host)?
    } else {
        split
    };
    // The images and head come straight from the command line: a bad one is bad input.
    let chosen = explain::select(&split, &host, p.head, &p.images)
        .map_err(|e| StageError::invalid(e.to_string()))?;
    let shown = explain::explain(dev, &host, &chosen, &p.rules);
    if let Some(e) = shown
        .iter()
        .find(|e| !e.logit.is_finite() || e.relevance.iter().any(|r| !r.is_finite()))
    {
        return Err(StageError::failed(format!(
            "the relevance of test image {} is not finite (logit {})",
            e.index, e.logit
        )));
    }
    let mut art = Artifact::new();
    for e in &shown {
        ctx.log(format!(
            "test image {}: logit {:.4}, relevance sum {:.4}",
            e.index, e.logit, e.relevance_sum
        ));
    }
    let file = ExplainedFile::new(p.head, &p.rules, host.arch.is_some(), shown);
    art.insert(
        EXPLAINED,
        serde_json::to_vec_pretty(&file).expect("plain data"),
    );
    Ok(art)
}
