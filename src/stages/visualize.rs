//! `visualize`: activation maximisation of every conv filter of a trained model (the filter
//! visualisations of the `saliency` score method, `xai::saliency::visualize_filters`).
//!
//! A stage of its own because the visualisations depend only on the model (input slot
//! `model`), the `visualize` options, the seed and the task index (which seed the noise
//! images), and on nothing a score's `similarity`, `class_aggregate`, `dense`,
//! `fullgrad_normalize` or reference set says: scores that differ only there read one cached
//! visualisation (in the saliency pipeline the MSE and the Pearson scores of the same model),
//! and activation maximisation is by far the dearest part of a saliency score.
//!
//! Artifact `visualize.safetensors`, per conv layer `L` (weighted-layer index, as the score's
//! `layer{L}` and `visualizations.L`): `images.L` `[O, C, H, W]` in the model's input space
//! (after normalisation), and `before.L`, `after.L` `[O]`, each filter's mean pre-activation on
//! its noise image and on the result.

use super::{artifacts, on_device, rng_for};
use crate::exec::{Artifact, Stage, StageContext, StageError};
use crate::nn::model::DeviceModel;
use crate::nn::tensorio::{self, HostTensor, TensorMapExt};
use crate::xai::saliency::{self, Visualization, Visualizations, Visualize as Options};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub struct Visualize;

pub const VISUALIZE_TENSORS: &str = "visualize.safetensors";

/// The visualize stage's parameters: everything the visualisations depend on besides the
/// model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub task_index: usize,
    pub seed: u64,
    pub visualize: Options,
}

impl Stage for Visualize {
    fn kind(&self) -> &'static str {
        "visualize"
    }
    fn version(&self) -> u32 {
        super::keyed_version(1, super::Numerics::Kernels)
    }
    fn run(&self, ctx: &StageContext) -> Result<Artifact, StageError> {
        on_device!(ctx, run_on)
    }
}

/// The noise stream of task `task_index`'s visualisations; the score stage drew from the same
/// stream when it visualised inline, so its scores keep their bits.
pub fn visualize_rng(seed: u64, task_index: usize) -> rand_chacha::ChaCha8Rng {
    rng_for(seed, task_index, "saliency_visualize")
}

fn run_on<D: Device<f32>>(dev: &D, ctx: &StageContext) -> Result<Artifact, StageError> {
    let p: Params = ctx.params()?;
    let host = artifacts::load_model(ctx, "model")?;
    let head = host.scenario.head(p.task_index);
    if host.heads.len() <= head {
        return Err(StageError::invalid(format!(
            "model has no head for task index {}",
            p.task_index
        )));
    }
    let model = DeviceModel::from_host(dev, &host);
    let convs = host.arch.as_ref().map_or(0, |a| {
        a.weighted().iter().filter(|w| w.conv.is_some()).count()
    });
    ctx.progress.phase("visualize", convs as u64);
    let mut rng = visualize_rng(p.seed, p.task_index);
    let vis = saliency::visualize_filters(&model, head, &p.visualize, &mut rng, || {
        ctx.progress.inc(1);
        ctx.check_cancel()
    })?
    .map_err(|e| StageError::invalid(e.to_string()))?;
    for (l, v) in &vis {
        ctx.log(format!(
            "conv layer {l}: mean visualised activation {:.4e} -> {:.4e}",
            mean(&v.before),
            mean(&v.after)
        ));
    }
    let [c, h, w] = host
        .arch
        .as_ref()
        .expect("visualised, so a conv model")
        .input;
    let mut art = Artifact::new();
    art.insert(VISUALIZE_TENSORS, encode(&vis, [c, h, w]));
    Ok(art)
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
}

/// `visualize.safetensors` of visualisations of `[C, H, W]` inputs.
pub fn encode(vis: &Visualizations, input: [usize; 3]) -> Vec<u8> {
    let mut m = BTreeMap::new();
    for (l, v) in vis {
        let o = v.before.len();
        let mut shape = vec![o];
        shape.extend(input);
        m.insert(
            format!("images.{l}"),
            HostTensor::f32(shape, v.images.clone()),
        );
        m.insert(
            format!("before.{l}"),
            HostTensor::f32(vec![o], v.before.clone()),
        );
        m.insert(
            format!("after.{l}"),
            HostTensor::f32(vec![o], v.after.clone()),
        );
    }
    tensorio::encode(&m)
}

/// Visualisations back from `visualize.safetensors`; shapes against the model are checked by
/// the scoring (`saliency_scores_with`).
pub fn decode(bytes: &[u8]) -> Result<Visualizations, String> {
    let mut m = tensorio::decode(bytes).map_err(|e| e.to_string())?;
    let layers: Vec<usize> = m
        .keys()
        .filter_map(|k| k.strip_prefix("images.")?.parse().ok())
        .collect();
    let mut out = BTreeMap::new();
    for l in layers {
        let mut take = |k: &str| {
            m.take_f32(&format!("{k}.{l}"))
                .map(|(_, v)| v)
                .map_err(|e| e.to_string())
        };
        let images = take("images")?;
        let before = take("before")?;
        let after = take("after")?;
        out.insert(
            l,
            Visualization {
                images,
                before,
                after,
            },
        );
    }
    if let Some(k) = m.keys().next() {
        return Err(format!("unexpected tensor `{k}`"));
    }
    Ok(out)
}

/// The visualisations in input slot `slot`.
pub fn load(ctx: &StageContext, slot: &str) -> Result<Visualizations, StageError> {
    decode(&ctx.read_input(slot, VISUALIZE_TENSORS)?)
        .map_err(|e| StageError::invalid(format!("{VISUALIZE_TENSORS}: {e}")))
}
