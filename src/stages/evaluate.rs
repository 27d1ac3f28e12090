//! `evaluate`: test accuracy of every task seen so far, each with its own head (task-IL).
//!
//! With `isolate`, old task `j` is evaluated with only the units frozen after task `j` (its
//! mask arrives in slot `isolate{j}`); every other unit's activation is zeroed, which removes
//! exactly the connections that were pruned at task `j` or trained later. With frozen units at
//! `lr_frozen: 0`, nothing the old task still uses can change, so its accuracy stays at the
//! value the prune search accepted. The current task is always evaluated whole.
//!
//! `crops` is the test protocol (`evaluation.crops`): each sample's centre window of the
//! model's input size, or the mean softmax of its ten crops (see `views`).
//!
//! Besides each task's accuracy, the report holds each task's confusion matrix (true class ×
//! predicted class, in the task's own class order), from which `report` reads per-class
//! accuracy.

use super::artifacts::{self, json_bytes, SplitData};
use super::views::{predictions_with, Geometry};
use super::{flags_to_masks, on_device};
use crate::exec::{Artifact, Stage, StageContext, StageError};
use crate::nn::model::DeviceModel;
use crate::nn::tensor::Vector;
use crate::spec::protocol::TestCrops;
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

pub struct Evaluate;

/// The evaluate stage's parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    /// Tasks `0..tasks_seen` are evaluated.
    pub tasks_seen: usize,
    /// Left out when false (no old task isolated), preserving existing keys, so such an
    /// evaluation is shared with the non-isolated strategy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub isolate: bool,
    /// Left out for the centre crop, so pipelines without `evaluation:` keep their existing
    /// keys.
    #[serde(default, skip_serializing_if = "TestCrops::is_center")]
    pub crops: TestCrops,
}

/// The input slot holding the mask that isolates old task `j`.
pub fn isolate_slot(j: usize) -> String {
    format!("isolate{j}")
}

/// The `eval.json` artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    pub tasks_seen: usize,
    /// Test accuracy per task, in [0, 1].
    pub accuracy: Vec<f64>,
    pub n_test: Vec<usize>,
    /// `confusion[t][true][predicted]`: test samples of task `t` by true and predicted class,
    /// both indices into the task's classes (revision 2; empty in older entries).
    #[serde(default)]
    pub confusion: Vec<Vec<Vec<u64>>>,
}

pub const EVAL_JSON: &str = "eval.json";

impl Stage for Evaluate {
    fn kind(&self) -> &'static str {
        "evaluate"
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
    let host = artifacts::load_model(ctx, "model")?;
    if p.tasks_seen > host.heads.len() || p.tasks_seen > split.tasks.len() {
        return Err(StageError::invalid(format!(
            "cannot evaluate {} tasks: model has {} heads, split {} tasks",
            p.tasks_seen,
            host.heads.len(),
            split.tasks.len()
        )));
    }
    let model = DeviceModel::from_host(dev, &host);
    let isolation: Vec<Vec<Vector<D>>> = if p.isolate {
        let hidden = host.hidden_sizes();
        (0..p.tasks_seen.saturating_sub(1))
            .map(|j| {
                let flags = artifacts::load_unit_flags(ctx, &isolate_slot(j), hidden.len())?;
                artifacts::check_unit_counts("isolation mask", &flags, &hidden)?;
                Ok(flags_to_masks(dev, &flags))
            })
            .collect::<Result<_, StageError>>()?
    } else {
        Vec::new()
    };
    let geometry = Geometry::new(&split.sample_shape, &host)?;
    let mut acc = Vec::new();
    let mut n_test = Vec::new();
    let mut confusion = Vec::new();
    for t in 0..p.tasks_seen {
        ctx.check_cancel()?;
        let task = split.task(t)?;
        let predicted = predictions_with(
            &model,
            &task.test,
            &geometry,
            p.crops,
            t,
            isolation.get(t).map(Vec::as_slice),
        )?;
        let a = super::share_correct(&predicted, &task.test.y);
        let k = task.classes.len();
        let mut m = vec![vec![0u64; k]; k];
        for (&y, &p) in task.test.y.iter().zip(&predicted) {
            // A label beyond the task's classes (a broken split) stays out of the matrix.
            if let Some(row) = m.get_mut(y as usize) {
                if let Some(c) = row.get_mut(p) {
                    *c += 1;
                }
            }
        }
        confusion.push(m);
        ctx.log(format!(
            "task {}: accuracy {:.4} on {} test samples",
            t + 1,
            a,
            task.test.len()
        ));
        acc.push(a);
        n_test.push(task.test.len());
    }
    let report = EvalReport {
        tasks_seen: p.tasks_seen,
        accuracy: acc,
        n_test,
        confusion,
    };
    Ok(Artifact::new().with(EVAL_JSON, json_bytes(&report)))
}
