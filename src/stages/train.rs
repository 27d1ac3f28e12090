//! `train`: train the model on one task, through the outputs its scenario gives it
//! (`model.heads`, see `nn::scenario`): a new head of its own (task-incremental, the default),
//! the one shared head, or the new task's outputs added to the one class-incremental head
//! (labels then move to the task's offset among all classes).
//!
//! Task 1 starts from a seeded initialisation; later tasks start from the previous task's model
//! (never from a pruned copy: pruning is only ever evaluated on a masked view, so "restoring the
//! pruned connections" is exact by construction). With a `mask` input, the incoming weights and
//! bias of every frozen unit get learning rate × `lr_frozen`; the optimizer masks the *update*
//! (see `nn::optim`), so Adam's moments and L2 cannot move them. Under per-task heads, only the
//! current task's head and the trunk receive updates: other heads are left bit-identical.
//!
//! **Freezing under a shared or class-incremental head.** Freezing a unit fixes exactly what it
//! fixes under per-task heads: the unit's incoming weights and bias, hence its activation on any
//! input whose own inputs are frozen too. The head is not a unit: its weights, including the
//! ones leaving frozen units, keep training on every task, because the head is what the new
//! task's classes are read from. So a shared head can forget an old task even when every unit
//! that task relies on is frozen (the ablation in `docs/reproduction.md` measures how much), and
//! a class-incremental head's old outputs move as the new classes push them down.
//!
//! A training also records synaptic intelligence's path integral per trained parameter
//! (`si.safetensors`) where a stage reads it (`score.method: si`, EWC with SI importance, a
//! correlation with `si`), so those need no second pass; elsewhere (`record_si: false`) it is
//! neither computed nor stored.
//!
//! With `ewc_lambda` and a `penalty` input (EWC), the gradient of `λ Σ A (θ − θ̂)²` over the
//! trunk is added to the task loss's gradient before the optimizer step, so frozen units (if
//! any) stay masked as usual. λ = 0 adds exact zeros and trains bit-identically to no penalty.
//!
//! With `joint: true` (the upper baseline), tasks `0..=task_index` are trained at once from a
//! fresh model: each batch is drawn from the union of their training sets, every sample goes
//! through its own task's head, and the loss is the sample-weighted mean over the batch.
//!
//! The data protocol (`spec::protocol`): with `sampling` other than `none`, each epoch draws as
//! many samples as the task has, with replacement, classes uniformly (`balanced`) or by their
//! frequencies (`empirical`), from a seed of (seed, task, epoch), and logs the drawn class
//! counts; with `augment`, every sample of a batch is cropped and mirrored by an RNG of
//! (seed, task, epoch, batch) (see `views::train_view`). A split that stores images larger than
//! the model's input needs a crop of the input size.

use super::artifacts::{self, json_bytes, SplitData};
use super::consolidate::Penalty;
use super::views::{train_view, Geometry};
use super::{check_task, on_device, rng_for};
use crate::data::resample::{empirical, resample_indices, ClassWeights};
use crate::exec::{Artifact, Stage, StageContext, StageError};
use crate::nn::model::{DeviceModel, ModelParams};
use crate::nn::optim::{MaskedOptimizer, OptimizerConfig, PathIntegral};
use crate::nn::tensor::Vector;
use crate::spec::protocol::{CropSpec, SamplingSpec};
use crate::spec::{ModelSpec, OptimizerSpec, TrainingSpec};
use dfdx::prelude::*;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub struct Train;

/// The data-file role of torchvision weights that replace task 1's initialisation.
pub const PRETRAINED_FILE: &str = "pretrained";

/// The train stage's parameters; `model` and `training` are the checked spec's own types, so
/// the plan passes them on as they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub task_index: usize,
    pub seed: u64,
    pub model: ModelSpec,
    pub training: TrainingSpec,
    /// Learning-rate multiplier of frozen units; only with a `mask` input, and left out
    /// otherwise so existing keys are preserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_frozen: Option<f64>,
    /// Train tasks `0..=task_index` at once (the joint upper baseline); left out when false,
    /// preserving existing keys.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joint: bool,
    /// Train task `task_index` alone from a fresh start (every earlier head initialised as in
    /// the sequence, untrained): the reference of forward transfer. Left out when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub alone: bool,
    /// PackNet's retraining of task `task_index` on the units its mask keeps (input slot
    /// `keep`; the others are silenced and still), from that task's trained model. Left out
    /// when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retrain: bool,
    /// Experience replay of tasks `0..task_index`; left out when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<crate::spec::ReplaySpec>,
    /// Learning without Forgetting on the old heads; left out when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lwf: Option<crate::spec::LwfSpec>,
    /// EWC strength λ; the quadratic comes from the `penalty` input (see `consolidate`). Only
    /// with a `penalty` input, and left out otherwise so existing keys are preserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ewc_lambda: Option<f64>,
    /// Record SI's path integral (`si.safetensors`). The planner sets it false where no stage
    /// reads it (`plan::drop_unread_si`), which saves two thirds of the entry and the per-step
    /// bookkeeping; the trained weights are the same either way. Left out when true, so the
    /// keys of trainings that record it are those they always had.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub record_si: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(v: &bool) -> bool {
    *v
}

#[derive(Debug, Serialize)]
struct EpochLog {
    epoch: usize,
    /// Mean task loss (cross-entropy), without the EWC penalty.
    mean_loss: f64,
    train_accuracy: f64,
    /// λ times the EWC penalty at the end of the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    ewc_penalty: Option<f64>,
    /// With resampling: how often each class was drawn this epoch (classes of the trained
    /// tasks in head order, task after task).
    #[serde(skip_serializing_if = "Option::is_none")]
    class_counts: Option<Vec<usize>>,
}

#[derive(Debug, Serialize)]
struct TrainReport {
    task_index: usize,
    steps: usize,
    frozen_units: Vec<usize>,
    epochs: Vec<EpochLog>,
}

pub const TRAIN_JSON: &str = "train.json";
/// With `training.record_replay`: the model as the first step finds it (every head included).
pub const REPLAY_INITIAL: &str = "replay_initial.safetensors";
/// With `training.record_replay`: what a replay needs besides the data and the initial weights.
pub const REPLAY_JSON: &str = "replay.json";

/// `replay.json`: a training as another framework would replay it (`scripts/torch_crosscheck.py`).
#[derive(Debug, Serialize)]
struct Replay {
    task_index: usize,
    /// The head trained (the task's own, or head 0 when all tasks share one).
    head: usize,
    negative_slope: f32,
    optimizer: OptimizerSpec,
    weight_decay: f64,
    /// Learning-rate multiplier of frozen units (0: they do not move, nor do their moments).
    lr_frozen: f32,
    /// Per hidden layer, which units are frozen (their incoming weights and bias); empty
    /// without a mask.
    frozen: Vec<Vec<bool>>,
    /// Whether anything but the task loss shaped the steps (EWC, several tasks at once,
    /// dropout, silenced units) or the labels are not the split's (class-incremental
    /// offsets): then a plain replay cannot reproduce them.
    plain: bool,
    /// Every step's samples, as indices into the task's training set, in batch order.
    steps: Vec<Vec<u32>>,
}

impl Stage for Train {
    fn kind(&self) -> &'static str {
        "train"
    }
    fn version(&self) -> u32 {
        super::keyed_version(2, super::Numerics::Kernels)
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

    // A retraining continues its own task's model, whose outputs exist already.
    let first_new_head = if p.joint || p.alone {
        0
    } else if p.retrain {
        p.task_index + 1
    } else {
        p.task_index
    };
    let mut host = match (ctx.input_opt("model"), &p.model.arch) {
        (Some(_), _) => artifacts::load_model(ctx, "model")?,
        (None, None) => {
            if p.model.kind != "mlp" {
                return Err(StageError::invalid(format!(
                    "unknown model kind `{}`",
                    p.model.kind
                )));
            }
            let mut m = ModelParams::init(dim, &p.model.hidden, &mut rng_for(p.seed, 0, "init"));
            m.negative_slope = p.model.negative_slope as f32;
            m
        }
        (None, Some(arch)) => {
            arch.features()
                .map_err(|e| StageError::invalid(format!("model: {e}")))?;
            let mut m = match ctx.file(PRETRAINED_FILE) {
                Ok(path) => {
                    let classes = split.task(0)?.classes.len();
                    crate::nn::torchvision::load_vgg16(
                        path,
                        arch,
                        Some(classes),
                        p.model.pretrained_head.unwrap_or_default(),
                    )
                    .map_err(|e| StageError::invalid(format!("model.pretrained: {e}")))?
                }
                Err(_) => ModelParams::init_arch(arch, &mut rng_for(p.seed, 0, "init")),
            };
            m.negative_slope = p.model.negative_slope as f32;
            m
        }
    };
    let geometry = Geometry::new(&split.sample_shape, &host)?;
    let augment = p.training.augment.as_ref();
    if !geometry.is_identity() && !matches!(augment.and_then(|a| a.crop), Some(CropSpec::Size(_))) {
        return Err(StageError::invalid(format!(
            "the split stores samples of shape {:?}, larger than the model's input {:?}; train on random crops of the input size (training.augment.crop.size)",
            geometry.stored, geometry.input
        )));
    }
    // The scenario is the model's: a later task continues its predecessor's.
    let scenario = p.model.scenario;
    if ctx.input_opt("model").is_some() && host.scenario != scenario {
        return Err(StageError::invalid(format!(
            "the input model was trained under {:?}, this training is {scenario:?}",
            host.scenario
        )));
    }
    host.scenario = scenario;
    let counts = split.class_counts();
    scenario.check(&counts).map_err(StageError::invalid)?;
    // Each task's first output in its head, as a label (checked: a task's labels plus its
    // offset stay 16-bit).
    let offsets = split.label_offsets(scenario)?;
    // Pretrained weights bring task 1's outputs along.
    let pretrained = ctx.input_opt("model").is_none() && !host.heads.is_empty();
    let before = match first_new_head {
        0 => vec![],
        t => scenario.head_widths(&counts, t - 1),
    };
    if p.retrain && ctx.input_opt("model").is_none() {
        return Err(StageError::invalid(
            "a retraining needs its task's trained model (input slot `model`)",
        ));
    }
    let widths = |m: &ModelParams| m.heads.iter().map(|h| h.out_dim).collect::<Vec<_>>();
    if !pretrained && widths(&host) != before {
        return Err(StageError::invalid(format!(
            "the model's heads have {:?} outputs; training task index {} needs {before:?} before it",
            widths(&host),
            p.task_index
        )));
    }
    for t in first_new_head + usize::from(pretrained)..=p.task_index {
        scenario.add_outputs(&mut host, &counts, t, &mut rng_for(p.seed, t, "head"));
    }
    if widths(&host) != scenario.head_widths(&counts, p.task_index) {
        return Err(StageError::invalid(format!(
            "the model's heads have {:?} outputs where task index {} needs {:?} (pretrained weights bring task 1's head)",
            widths(&host),
            p.task_index,
            scenario.head_widths(&counts, p.task_index)
        )));
    }

    // Per-element learning-rate multipliers for frozen units' incoming weights and biases.
    let hidden = host.hidden_sizes();
    let frozen = match ctx.input_opt("mask") {
        Some(_) => Some(artifacts::load_unit_flags(ctx, "mask", hidden.len())?),
        None => None,
    };
    // A retraining's kept units: the others are silenced, and do not move either.
    let keep = match (p.retrain, ctx.input_opt("keep")) {
        (true, Some(_)) => {
            let k = artifacts::load_unit_flags(ctx, "keep", hidden.len())?;
            artifacts::check_unit_counts("kept units", &k, &hidden)?;
            Some(k)
        }
        (false, None) => None,
        _ => {
            return Err(StageError::invalid(
                "a retraining needs the units its task keeps (input slot `keep`), and only a retraining reads them",
            ))
        }
    };
    let lr_frozen = p.lr_frozen.unwrap_or(0.0) as f32;
    let mut scales: Vec<Option<Vec<f32>>> = Vec::new();
    for (l, layer) in host.layers().enumerate() {
        let flags = frozen.as_ref().and_then(|f| f.get(l));
        let kept = keep.as_ref().and_then(|k| k.get(l));
        let none = Vec::new();
        match (flags, kept) {
            (f, k)
                if l < hidden.len()
                    && (f.is_some_and(|f| f.iter().any(|&b| b))
                        || k.is_some_and(|k| k.iter().any(|&b| !b))) =>
            {
                let f = f.unwrap_or(&none);
                if !f.is_empty() && f.len() != layer.out_dim {
                    return Err(StageError::invalid(format!(
                        "mask layer {l} has {} units, model {}",
                        f.len(),
                        layer.out_dim
                    )));
                }
                let row = |j: usize| {
                    if f.get(j).copied().unwrap_or(false) {
                        lr_frozen
                    } else if k.is_some_and(|k| !k[j]) {
                        0.0
                    } else {
                        1.0
                    }
                };
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
        OptimizerSpec::Adam {
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
        OptimizerSpec::Sgd { lr, momentum } => OptimizerConfig::Sgd {
            lr: lr as f32,
            momentum: momentum as f32,
            weight_decay: t.weight_decay as f32,
        },
    };
    let mut model = DeviceModel::from_host(dev, &host);
    model.train_masks = keep.as_ref().map(|k| super::flags_to_masks(dev, k));
    let mut opt = MaskedOptimizer::new(dev, cfg, &model.params, scales);
    // The tensors EWC pulls: the trunk's, and a head every task trains.
    let n_penalised = super::consolidate::penalised_tensors(&host);
    let ewc = match (ctx.input_opt("penalty"), p.ewc_lambda) {
        (Some(_), Some(lambda)) => {
            let sizes: Vec<usize> = model.params[..n_penalised]
                .iter()
                .map(|t| t.shape().0)
                .collect();
            let pen = Penalty::load(ctx, "penalty", &sizes, host.scenario.grows())?;
            let a: Vec<Vector<D>> = pen
                .a
                .iter()
                .map(|v| dev.tensor_from_vec(v.clone(), (v.len(),)))
                .collect();
            let b: Vec<Vector<D>> = pen
                .b
                .iter()
                .map(|v| dev.tensor_from_vec(v.clone(), (v.len(),)))
                .collect();
            Some((lambda, pen, a, b))
        }
        (None, None) => None,
        _ => {
            return Err(StageError::invalid(
                "EWC needs both `ewc_lambda` and a `penalty` input",
            ))
        }
    };
    // Training samples as (task, index) pairs: one task normally, all of them when joint.
    let tasks: Vec<usize> = if p.joint {
        (0..=p.task_index).collect()
    } else {
        vec![p.task_index]
    };
    // Experience replay: the buffer of earlier tasks' samples, and how many of each batch it
    // fills (at least one sample of the current task stays in every batch).
    let er = match &p.replay {
        Some(r) if p.task_index > 0 => {
            let buffer = replay_buffer(&split, p.task_index, r.per_class, p.seed)?;
            let take = ((r.ratio * t.batch_size as f64).round() as usize)
                .min(t.batch_size.saturating_sub(1));
            Some((buffer, take))
        }
        _ => None,
    };
    // The tasks a batch can hold: the current one, every one so far when joint or replaying.
    let trained: Vec<usize> = if er.is_some() {
        (0..=p.task_index).collect()
    } else {
        tasks.clone()
    };
    let mut order: Vec<(usize, usize)> = Vec::new();
    // Each sample's class among all trained tasks' classes (task after task), for resampling.
    let mut classes_of: Vec<u16> = Vec::new();
    let mut class_total = 0usize;
    for &t in &tasks {
        let task = split.task(t)?;
        order.extend((0..task.train.len()).map(|i| (t, i)));
        for &y in &task.train.y {
            let c = class_total + y as usize;
            classes_of.push(u16::try_from(c).map_err(|_| {
                StageError::invalid(
                    "resampling supports at most 65536 classes over the trained tasks",
                )
            })?);
        }
        class_total += task.classes.len();
    }
    if let Some((lambda, ..)) = &ewc {
        // The pull 2λ(Aθ − B) is computed in f32: a λ beyond f32's range turns every trunk
        // parameter into NaN at the first step.
        if !(2.0 * *lambda as f32).is_finite() {
            return Err(StageError::failed(format!(
                "the EWC term overflows: 2·λ = 2 × {lambda:e} is beyond f32's range; lower the strategy's `lambda`"
            )));
        }
    }
    let all_samples = order.clone();
    let n = order.len();
    let mut rng = rng_for(
        p.seed,
        p.task_index,
        match (p.joint, p.retrain) {
            (true, _) => "shuffle_joint",
            (_, true) => "shuffle_retrain",
            _ => "shuffle",
        },
    );
    // Synaptic intelligence (Zenke et al. 2017): ω = −Σ g·Δθ over the steps, with g the task
    // loss's gradient (without any EWC term) and Δθ the update actually applied.
    let theta_start = model.params.clone();
    // LwF's teacher: the model as the task found it (its old heads' outputs are the targets).
    let teacher = p
        .lwf
        .as_ref()
        .filter(|l| p.task_index > 0 && l.lambda > 0.0)
        .map(|l| {
            (
                l.lambda as f32,
                l.temperature as f32,
                DeviceModel::from_host(dev, &host),
            )
        });
    let mut replay = t.record_replay.then(|| {
        let mut art = Artifact::new();
        let initial = artifacts::save_model(&mut art, &host).map(|()| art);
        (initial, Vec::<Vec<u32>>::new())
    });
    let mut si = PathIntegral::default();
    let mut epochs = Vec::new();
    let mut steps = 0;
    let batch_size = t.batch_size.max(1);
    // With replay, each batch holds this many of the current task's samples.
    let new_per_batch = batch_size - er.as_ref().map_or(0, |(_, take)| *take);
    let batches = n.div_ceil(new_per_batch);
    // One phase for the whole stage, so that its bar's ETA is the stage's.
    ctx.progress.phase("train", (t.epochs * batches) as u64);
    for epoch in 0..t.epochs {
        let mut class_counts = None;
        if p.training.sampling.is_none() {
            order.shuffle(&mut rng);
        } else {
            let weights = match p.training.sampling {
                SamplingSpec::Balanced => ClassWeights::Uniform,
                _ => ClassWeights::Given(empirical(&classes_of, class_total)),
            };
            let seed = rng_for(p.seed, p.task_index, &format!("sampling/epoch{epoch}")).gen();
            let drawn = resample_indices(&classes_of, &weights, n, seed).map_err(|e| {
                StageError::invalid(format!("training.sampling: task {}: {e}", p.task_index + 1))
            })?;
            let mut counts = vec![0usize; class_total];
            for &i in &drawn {
                counts[classes_of[i] as usize] += 1;
            }
            class_counts = Some(counts);
            order = drawn.into_iter().map(|i| all_samples[i]).collect();
        }
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        for (batch_no, new) in order.chunks(new_per_batch).enumerate() {
            ctx.check_cancel()?;
            let mixed: Vec<(usize, usize)>;
            let chunk = match &er {
                None => new,
                Some((buffer, take)) => {
                    let mut draw = rng_for(
                        p.seed,
                        p.task_index,
                        &format!("replay/epoch{epoch}/batch{batch_no}"),
                    );
                    mixed = new
                        .iter()
                        .copied()
                        .chain((0..*take).map(|_| buffer[draw.gen_range(0..buffer.len())]))
                        .collect();
                    &mixed[..]
                }
            };
            if let Some((_, steps)) = &mut replay {
                steps.push(chunk.iter().map(|&(_, i)| i as u32).collect());
            }
            let mut view_rng = rng_for(
                p.seed,
                p.task_index,
                &format!("augment/epoch{epoch}/batch{batch_no}"),
            );
            let mut grads: Vec<(usize, crate::nn::tensor::Vector<D>)> = Vec::new();
            let mut batch_loss = 0f64;
            for &task in &trained {
                let data = &split.task(task)?.train;
                let head = scenario.head(task);
                let offset = offsets[task];
                let idx: Vec<usize> = chunk
                    .iter()
                    .filter(|(t, _)| *t == task)
                    .map(|&(_, i)| i)
                    .collect();
                if idx.is_empty() {
                    continue;
                }
                let mut xb = Vec::with_capacity(idx.len() * geometry.input_len());
                let mut yb = Vec::with_capacity(idx.len());
                for &i in &idx {
                    let stored = &data.x[i * dim..(i + 1) * dim];
                    match augment {
                        Some(aug) => xb.extend(train_view(stored, &geometry, aug, &mut view_rng)?),
                        None => xb.extend_from_slice(stored),
                    }
                    yb.push(data.y[i] + offset);
                }
                let x = model.input(&xb);
                model.dropout_seed =
                    Some(steps as u64 ^ (p.seed << 32) ^ ((p.task_index as u64) << 48));
                let (loss, g, pass_logits) = model.loss_grads_and_logits(&x, &yb, head);
                let w = idx.len() as f32 / chunk.len() as f32;
                batch_loss += loss as f64 * w as f64;
                grads = if trained.len() == 1 {
                    g
                } else {
                    accumulate(grads, g, w)
                };
                if let (Some((lambda, temp, old)), true) = (&teacher, task == p.task_index) {
                    for h in scenario.heads_of(p.task_index) {
                        let classes = old.outputs(h);
                        let probs = soft_targets(&old.logits(&x, h, None).as_vec(), classes, *temp);
                        let objective = crate::nn::model::Objective::SoftTargets {
                            probs: &probs,
                            temperature: *temp,
                            scale: lambda * temp * temp * w,
                        };
                        let (_, gk) = model.grads_of(&x, h, objective);
                        grads = accumulate(grads, gk, 1.0);
                    }
                }
                model.dropout_seed = None;
                // Training accuracy is the model's, without dropout, before the step: the
                // pass's own logits unless it dropped units.
                let logits = if model.has_dropout() {
                    model
                        .logits(&x, head, model.train_masks.as_deref())
                        .as_vec()
                } else {
                    pass_logits
                };
                let classes = model.outputs(head);
                correct += crate::nn::tensor::argmax_rows(&logits, classes)
                    .iter()
                    .zip(&yb)
                    .filter(|(a, y)| **a == **y as usize)
                    .count();
            }
            if !batch_loss.is_finite() {
                let at = format!(
                    "at epoch {}, batch {} of task {}",
                    epoch + 1,
                    batch_no + 1,
                    p.task_index + 1
                );
                // With EWC, the usual cause is the penalty's pull: name it, with its size.
                return Err(StageError::failed(match &ewc {
                    Some((lambda, pen, _, _)) => {
                        let theta: Vec<Vec<f32>> = model.params[..n_penalised]
                            .iter()
                            .map(|t| t.as_vec())
                            .collect();
                        format!(
                            "loss is {batch_loss} {at}, after the EWC penalty λ·Σ F·(θ − θ*)² grew to {:e} (λ = {lambda:e}); lower the strategy's `lambda` (or training.lr)",
                            lambda * pen.value(&theta)
                        )
                    }
                    None => {
                        format!("loss is {batch_loss} {at}; lower training.lr or check the data")
                    }
                }));
            }
            // SI's inputs: the task gradient and the parameters before the step (only kept
            // where the path integral is recorded; it only observes the step).
            let observed = p.record_si.then(|| {
                let before: Vec<Vector<D>> = grads
                    .iter()
                    .map(|(i, _)| model.params[*i].clone())
                    .collect();
                (grads.clone(), before)
            });
            if let Some((lambda, _, a, b)) = &ewc {
                // ∂/∂θ λ(Aθ² − 2Bθ + C) = 2λ(Aθ − B), on the trunk only.
                grads = grads
                    .into_iter()
                    .map(|(i, g)| {
                        if i < n_penalised {
                            let pull = a[i].clone() * model.params[i].clone() - b[i].clone();
                            (i, g + pull * (2.0 * *lambda as f32))
                        } else {
                            (i, g)
                        }
                    })
                    .collect();
                // One reduction per trunk tensor, only with EWC: an overflowing pull is named
                // here, before it turns the parameters (and then the loss) into NaN.
                let pull_sum: f32 = grads[..]
                    .iter()
                    .filter(|(i, _)| *i < n_penalised)
                    .map(|(_, g)| g.clone().sum::<(), _>().as_vec()[0])
                    .sum();
                if !pull_sum.is_finite() {
                    return Err(StageError::failed(format!(
                        "the EWC term's gradient 2λ·F·(θ − θ*) is {pull_sum} at epoch {}, batch {} of task {} (λ = {lambda:e}): it overflows f32; lower the strategy's `lambda`",
                        epoch + 1,
                        batch_no + 1,
                        p.task_index + 1
                    )));
                }
            }
            opt.step(&mut model.params, grads);
            if let Some((task_grads, before)) = observed {
                si.record(task_grads, before, &model.params);
            }
            steps += 1;
            loss_sum += batch_loss * chunk.len() as f64;
            seen += chunk.len();
            ctx.progress.inc(1);
            ctx.progress.metric(
                &format!("epoch {}/{} loss", epoch + 1, t.epochs),
                loss_sum / seen as f64,
            );
        }
        let log = EpochLog {
            epoch: epoch + 1,
            mean_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            ewc_penalty: ewc.as_ref().map(|(lambda, pen, _, _)| {
                let theta: Vec<Vec<f32>> = model.params[..n_penalised]
                    .iter()
                    .map(|t| t.as_vec())
                    .collect();
                lambda * pen.value(&theta)
            }),
            class_counts,
        };
        check_objective(
            &log,
            &model,
            host.trunk.len(),
            ewc.as_ref().map(|e| e.0),
            p.task_index,
        )?;
        ctx.log(format!(
            "epoch {}: loss {:.5}, train accuracy {:.4}{}",
            log.epoch,
            log.mean_loss,
            log.train_accuracy,
            log.ewc_penalty
                .map(|v| format!(", EWC penalty {v:.5}"))
                .unwrap_or_default()
        ));
        epochs.push(log);
    }
    let mut art = Artifact::new();
    artifacts::save_model(&mut art, &model.to_host())?;
    let si: Vec<(usize, Vec<f32>, Vec<f32>)> = si
        .omega
        .into_iter()
        .map(|(i, w)| {
            let delta = (model.params[i].clone() - theta_start[i].clone()).as_vec();
            (i, w.as_vec(), delta)
        })
        .collect();
    if p.record_si {
        artifacts::save_si(&mut art, host.trunk.len(), &si)?;
    }
    if let Some((initial, steps)) = replay {
        let initial = initial?;
        art.insert(
            REPLAY_INITIAL,
            initial.files[artifacts::MODEL_TENSORS].clone(),
        );
        art.insert(
            REPLAY_JSON,
            json_bytes(&Replay {
                task_index: p.task_index,
                head: scenario.head(p.task_index),
                negative_slope: host.negative_slope,
                optimizer: t.optimizer.clone(),
                weight_decay: t.weight_decay,
                lr_frozen,
                frozen: frozen.clone().unwrap_or_default(),
                plain: ewc.is_none()
                    && !p.joint
                    && !p.retrain
                    && !scenario.is_class_incremental()
                    && er.is_none()
                    && teacher.is_none()
                    && !model.has_dropout(),
                steps,
            }),
        );
    }
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

/// `softmax(logits / t)` per row of `classes`, computed in f64 from the division on (unlike
/// `transforms::mean_softmax`, which subtracts in f32; LwF's trained bits follow this one).
fn soft_targets(logits: &[f32], classes: usize, t: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(classes.max(1)) {
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64 / t as f64));
        let e: Vec<f64> = row
            .iter()
            .map(|&v| (v as f64 / t as f64 - max).exp())
            .collect();
        let sum: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| (v / sum) as f32));
    }
    out
}

/// Experience replay's buffer for training task `task_index`: `per_class` training samples of
/// every class of every earlier task, as (task, index), chosen by a seeded shuffle of each
/// class's samples (all of them when it has fewer).
pub fn replay_buffer(
    split: &SplitData,
    task_index: usize,
    per_class: usize,
    seed: u64,
) -> Result<Vec<(usize, usize)>, StageError> {
    let mut buffer = Vec::new();
    for j in 0..task_index {
        let task = split.task(j)?;
        for c in 0..task.classes.len() {
            let mut of_class: Vec<usize> = (0..task.train.len())
                .filter(|&i| task.train.y[i] as usize == c)
                .collect();
            of_class.shuffle(&mut rng_for(seed, j, &format!("replay_buffer/class{c}")));
            of_class.truncate(per_class);
            of_class.sort_unstable();
            buffer.extend(of_class.into_iter().map(|i| (j, i)));
        }
    }
    if buffer.is_empty() {
        return Err(StageError::invalid(format!(
            "replay for task {}: the earlier tasks hold no training samples",
            task_index + 1
        )));
    }
    Ok(buffer)
}

/// After each epoch, every term of the objective and every parameter must be finite. The loss
/// is checked per batch; this catches what the loss cannot show, an overflowing EWC penalty or
/// an update that diverged, and names the term, so that a model full of NaN is never cached as
/// a result.
fn check_objective<D: Device<f32>>(
    log: &EpochLog,
    model: &DeviceModel<D>,
    n_trunk: usize,
    ewc_lambda: Option<f64>,
    task_index: usize,
) -> Result<(), StageError> {
    let at = format!("at epoch {} of task {}", log.epoch, task_index + 1);
    if let (Some(v), Some(lambda)) = (log.ewc_penalty, ewc_lambda) {
        if !v.is_finite() {
            return Err(StageError::failed(format!(
                "the EWC penalty λ·Σ F·(θ − θ*)² is {v} {at} (λ = {lambda:e}): it overflows; lower the strategy's `lambda`"
            )));
        }
    }
    for (i, t) in model.params.iter().enumerate() {
        if let Some(v) = t.as_vec().into_iter().find(|v| !v.is_finite()) {
            let term = if ewc_lambda.is_some() {
                "the update (task loss + EWC pull) diverged; lower training.lr or the strategy's `lambda`"
            } else {
                "the update diverged; lower training.lr"
            };
            return Err(StageError::failed(format!(
                "parameter `{}` holds {v} {at}: {term}",
                artifacts::param_name(i, n_trunk)
            )));
        }
    }
    Ok(())
}

/// Sum per-head gradients, each weighted by its share of the batch.
fn accumulate<D: Device<f32>>(
    acc: Vec<(usize, crate::nn::tensor::Vector<D>)>,
    g: Vec<(usize, crate::nn::tensor::Vector<D>)>,
    w: f32,
) -> Vec<(usize, crate::nn::tensor::Vector<D>)> {
    let mut m: BTreeMap<usize, crate::nn::tensor::Vector<D>> = acc.into_iter().collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::artifacts::{Samples, TaskData};

    /// Two tasks of two classes; task 1 has 10 samples of class 0 and 4 of class 1.
    fn split() -> SplitData {
        let task = |y: Vec<u16>| TaskData {
            classes: vec![0, 1],
            train: Samples {
                x: vec![0; y.len()],
                y: y.clone(),
            },
            test: Samples {
                x: vec![],
                y: vec![],
            },
            val: None,
        };
        let mut y0 = vec![0u16; 10];
        y0.extend([1; 4]);
        SplitData {
            sample_shape: vec![1],
            tasks: vec![task(y0), task(vec![0, 1, 0, 1])],
        }
    }

    #[test]
    fn the_replay_buffer_holds_k_per_class_of_earlier_tasks_and_is_seeded() {
        let s = split();
        let b = replay_buffer(&s, 1, 3, 7).unwrap();
        let of = |c: u16| {
            b.iter()
                .filter(|&&(_, i)| s.tasks[0].train.y[i] == c)
                .count()
        };
        assert_eq!((of(0), of(1)), (3, 3));
        assert!(b.iter().all(|&(t, _)| t == 0), "only earlier tasks");
        assert_eq!(replay_buffer(&s, 1, 3, 7).unwrap(), b, "seeded");
        assert_ne!(replay_buffer(&s, 1, 3, 8).unwrap(), b);
        // A class with fewer samples than asked gives all of them.
        let all = replay_buffer(&s, 1, 5, 7).unwrap();
        assert_eq!(all.len(), 5 + 4);
    }
}
