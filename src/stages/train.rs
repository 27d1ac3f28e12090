//! `train`: train the model on one task, with its own new head.
//!
//! Task 1 starts from a seeded initialisation; later tasks start from the previous task's model
//! (never from a pruned copy: pruning is only ever evaluated on a masked view, so "restoring the
//! pruned connections" is exact by construction). With a `mask` input, the incoming weights and
//! bias of every frozen unit get learning rate × `lr_frozen`; the optimizer masks the *update*
//! (see `nn::optim`), so Adam's moments and L2 cannot move them. Only the current task's head
//! and the trunk receive updates: other heads are left bit-identical.
//!
//! With `joint: true` (the upper baseline), tasks `0..=task_index` are trained at once from a
//! fresh model: each batch is drawn from the union of their training sets, every sample goes
//! through its own task's head, and the loss is the sample-weighted mean over the batch.

use super::artifacts::{self, json_bytes, SplitData};
use super::{check_task, on_device, rng_for};
use crate::exec::{Artifact, Stage, StageContext, StageError};
use crate::nn::mlp::{images_to_tensor, DeviceMlp, MlpParams};
use crate::nn::optim::{MaskedOptimizer, OptimizerConfig};
use dfdx::prelude::*;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub struct Train;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "optimizer", rename_all = "snake_case")]
pub enum OptParams {
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
    },
    Sgd {
        lr: f64,
        momentum: f64,
    },
}

#[derive(Debug, Clone, Deserialize)]
pub struct TrainingParams {
    #[serde(flatten)]
    pub optimizer: OptParams,
    pub batch_size: usize,
    pub epochs: usize,
    pub weight_decay: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelParams {
    pub kind: String,
    pub hidden: Vec<usize>,
}

#[derive(Debug, Deserialize)]
struct Params {
    task_index: usize,
    seed: u64,
    model: ModelParams,
    training: TrainingParams,
    #[serde(default)]
    lr_frozen: Option<f64>,
    /// Train tasks `0..=task_index` at once (the joint upper baseline).
    #[serde(default)]
    joint: bool,
}

#[derive(Debug, Serialize)]
struct EpochLog {
    epoch: usize,
    mean_loss: f64,
    train_accuracy: f64,
}

#[derive(Debug, Serialize)]
struct TrainReport {
    task_index: usize,
    steps: usize,
    frozen_units: Vec<usize>,
    epochs: Vec<EpochLog>,
}

pub const TRAIN_JSON: &str = "train.json";

impl Stage for Train {
    fn kind(&self) -> &'static str {
        "train"
    }
    fn version(&self) -> u32 {
        1
    }
    fn run(&self, ctx: &StageContext) -> Result<Artifact, StageError> {
        on_device!(ctx, run_on)
    }
}

fn run_on<D: Device<f32>>(dev: &D, ctx: &StageContext) -> Result<Artifact, StageError> {
    let p: Params = ctx.params()?;
    let split = SplitData::load(ctx, "split")?;
    check_task(p.task_index, split.tasks.len())?;
    let dim = split.dim();

    let mut host = match ctx.input_opt("model") {
        Some(_) => artifacts::load_model(ctx, "model")?,
        None => {
            if p.model.kind != "mlp" {
                return Err(StageError::invalid(format!(
                    "unknown model kind `{}`",
                    p.model.kind
                )));
            }
            MlpParams::init(dim, &p.model.hidden, &mut rng_for(p.seed, 0, "init"))
        }
    };
    if host.input_dim() != dim {
        return Err(StageError::invalid(format!(
            "model takes {} inputs, data has {dim}",
            host.input_dim()
        )));
    }
    let first_new_head = if p.joint { 0 } else { p.task_index };
    if host.heads.len() != first_new_head {
        return Err(StageError::invalid(format!(
            "model has {} heads; training task index {} needs exactly {first_new_head} earlier heads",
            host.heads.len(),
            p.task_index
        )));
    }
    for t in first_new_head..=p.task_index {
        host.push_head(
            split.task(t)?.classes.len(),
            &mut rng_for(p.seed, t, "head"),
        );
    }

    // Per-element learning-rate multipliers for frozen units' incoming weights and biases.
    let hidden = host.hidden_sizes();
    let frozen = match ctx.input_opt("mask") {
        Some(_) => Some(artifacts::load_unit_flags(ctx, "mask", hidden.len())?),
        None => None,
    };
    let lr_frozen = p.lr_frozen.unwrap_or(0.0) as f32;
    let mut scales: Vec<Option<Vec<f32>>> = Vec::new();
    for (l, layer) in host.layers().enumerate() {
        let flags = frozen.as_ref().and_then(|f| f.get(l));
        match flags {
            Some(f) if l < hidden.len() && f.iter().any(|&b| b) => {
                if f.len() != layer.out_dim {
                    return Err(StageError::invalid(format!(
                        "mask layer {l} has {} units, model {}",
                        f.len(),
                        layer.out_dim
                    )));
                }
                let row = |j: usize| if f[j] { lr_frozen } else { 1.0 };
                scales.push(Some(
                    (0..layer.out_dim * layer.in_dim)
                        .map(|k| row(k / layer.in_dim))
                        .collect(),
                ));
                scales.push(Some((0..layer.out_dim).map(row).collect()));
            }
            _ => {
                scales.push(None);
                scales.push(None);
            }
        }
    }
    let frozen_units: Vec<usize> = match &frozen {
        Some(f) => f.iter().map(|l| l.iter().filter(|&&b| b).count()).collect(),
        None => vec![0; hidden.len()],
    };

    let t = &p.training;
    let cfg = match t.optimizer {
        OptParams::Adam {
            lr,
            beta1,
            beta2,
            eps,
        } => OptimizerConfig::Adam {
            lr: lr as f32,
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            eps: eps as f32,
            weight_decay: t.weight_decay as f32,
        },
        OptParams::Sgd { lr, momentum } => OptimizerConfig::Sgd {
            lr: lr as f32,
            momentum: momentum as f32,
            weight_decay: t.weight_decay as f32,
        },
    };
    let mut model = DeviceMlp::from_host(dev, &host);
    let mut opt = MaskedOptimizer::new(dev, cfg, &model.params, scales);
    // Training samples as (task, index) pairs: one task normally, all of them when joint.
    let tasks: Vec<usize> = if p.joint {
        (0..=p.task_index).collect()
    } else {
        vec![p.task_index]
    };
    let mut order: Vec<(usize, usize)> = Vec::new();
    for &t in &tasks {
        order.extend((0..split.task(t)?.train.len()).map(|i| (t, i)));
    }
    let n = order.len();
    let mut rng = rng_for(
        p.seed,
        p.task_index,
        if p.joint { "shuffle_joint" } else { "shuffle" },
    );
    let mut epochs = Vec::new();
    let mut steps = 0;
    let batch_size = t.batch_size.max(1);
    let batches = n.div_ceil(batch_size);
    for epoch in 0..t.epochs {
        ctx.progress
            .phase(&format!("epoch {}/{}", epoch + 1, t.epochs), batches as u64);
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0f64, 0usize);
        for (b, chunk) in order.chunks(batch_size).enumerate() {
            ctx.check_cancel()?;
            let mut grads: Vec<(usize, crate::nn::mlp::Vector<D>)> = Vec::new();
            let mut batch_loss = 0f64;
            for &head in &tasks {
                let data = &split.task(head)?.train;
                let idx: Vec<usize> = chunk
                    .iter()
                    .filter(|(t, _)| *t == head)
                    .map(|&(_, i)| i)
                    .collect();
                if idx.is_empty() {
                    continue;
                }
                let mut xb = Vec::with_capacity(idx.len() * dim);
                let mut yb = Vec::with_capacity(idx.len());
                for &i in &idx {
                    xb.extend_from_slice(&data.x[i * dim..(i + 1) * dim]);
                    yb.push(data.y[i]);
                }
                let x = images_to_tensor(dev, &xb, dim);
                let (loss, g) = model.loss_and_grads(&x, &yb, head);
                let w = idx.len() as f32 / chunk.len() as f32;
                batch_loss += loss as f64 * w as f64;
                grads = if tasks.len() == 1 {
                    g
                } else {
                    accumulate(grads, g, w)
                };
                let logits = model.logits(&x, head, None).as_vec();
                let classes = split.task(head)?.classes.len();
                correct += crate::nn::mlp::argmax_rows(&logits, classes)
                    .iter()
                    .zip(&yb)
                    .filter(|(a, y)| **a == **y as usize)
                    .count();
            }
            if !batch_loss.is_finite() {
                return Err(StageError::failed(format!(
                    "loss is {batch_loss} at epoch {}, batch {} of task {}; lower training.lr or check the data",
                    epoch + 1,
                    b + 1,
                    p.task_index + 1
                )));
            }
            opt.step(&mut model.params, grads);
            steps += 1;
            loss_sum += batch_loss * chunk.len() as f64;
            ctx.progress.inc(1);
        }
        let log = EpochLog {
            epoch: epoch + 1,
            mean_loss: loss_sum / n as f64,
            train_accuracy: correct as f64 / n as f64,
        };
        ctx.log(format!(
            "epoch {}: loss {:.5}, train accuracy {:.4}",
            log.epoch, log.mean_loss, log.train_accuracy
        ));
        epochs.push(log);
    }
    let mut art = Artifact::new();
    artifacts::save_model(&mut art, &model.to_host());
    art.insert(
        TRAIN_JSON,
        json_bytes(&TrainReport {
            task_index: p.task_index,
            steps,
            frozen_units,
            epochs,
        }),
    );
    Ok(art)
}

/// Sum per-head gradients, each weighted by its share of the batch.
fn accumulate<D: Device<f32>>(
    acc: Vec<(usize, crate::nn::mlp::Vector<D>)>,
    g: Vec<(usize, crate::nn::mlp::Vector<D>)>,
    w: f32,
) -> Vec<(usize, crate::nn::mlp::Vector<D>)> {
    let mut m: BTreeMap<usize, crate::nn::mlp::Vector<D>> = acc.into_iter().collect();
    for (i, gi) in g {
        let gi = gi * w;
        let sum = match m.remove(&i) {
            Some(prev) => prev + gi,
            None => gi,
        };
        m.insert(i, sum);
    }
    m.into_iter().collect()
}
