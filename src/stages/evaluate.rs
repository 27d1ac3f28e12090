//! `evaluate`: test accuracy of every task seen so far, through the head the model's scenario
//! gives it (`nn::scenario`): its own head (task-incremental), the shared head, or, under a
//! class-incremental scenario, the argmax over every output of the one head without the task
//! id, with the task-aware accuracy (the argmax over the task's own outputs) beside it.
//!
//! With `isolate`, old task `j` is evaluated with only the units frozen after task `j` (its
//! mask arrives in slot `isolate{j}`); every other unit's activation is zeroed, which removes
//! exactly the connections that were pruned at task `j` or trained later. With frozen units at
//! `lr_frozen: 0`, nothing the old task still uses can change, so its accuracy stays at the
//! value the prune search accepted. The current task is evaluated whole, except after PackNet's
//! retraining (`retrain`), which trained it on its own mask: then that mask (slot
//! `isolate{t}`) isolates it too.
//!
//! `crops` is the test protocol (`evaluation.crops`): each sample's centre window of the
//! model's input size, or the mean softmax of its ten crops (see `views`).
//!
//! Besides each task's accuracy, the report holds each task's confusion matrix (true class ×
//! predicted class, in the task's own class order), from which `report` reads per-class
//! accuracy.

use super::artifacts::{self, json_bytes, Samples, SplitData};
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EvalReport {
    pub tasks_seen: usize,
    /// Test accuracy per task, in [0, 1].
    pub accuracy: Vec<f64>,
    pub n_test: Vec<usize>,
    /// `confusion[t][true][predicted]`: test samples of task `t` by true class (an index into
    /// the task's classes) and predicted output of its head (the task's classes too, except
    /// under a class-incremental scenario, where every output of the head is a column and the
    /// task's class `c` is column `class_offset[t] + c`). Revision 2; empty in older entries.
    #[serde(default)]
    pub confusion: Vec<Vec<Vec<u64>>>,
    /// Class-incremental only: the accuracy when the task is told, i.e. the argmax over the
    /// task's own outputs (`accuracy` is the argmax over all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_aware_accuracy: Vec<f64>,
    /// Class-incremental only: the output of each task's class 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_offset: Vec<usize>,
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
    let mut split = SplitData::load(ctx, "split")?;
    let host = artifacts::load_model(ctx, "model")?;
    let scenario = host.scenario;
    if p.tasks_seen > split.tasks.len() {
        return Err(StageError::invalid(format!(
            "cannot evaluate {} tasks: the split has {}",
            p.tasks_seen,
            split.tasks.len()
        )));
    }
    // Every seen task's outputs must exist (and the labels move into the head's outputs).
    if p.tasks_seen > 0 {
        super::scenario_labels(&mut split, &host, p.tasks_seen - 1)?;
    }
    if p.isolate && scenario.is_class_incremental() {
        return Err(StageError::invalid(
            "isolation picks an old task's mask by its task id, which class-incremental evaluation does not have",
        ));
    }
    let model = DeviceModel::from_host(dev, &host);
    let isolation: Vec<Vec<Vector<D>>> = if p.isolate {
        let hidden = host.hidden_sizes();
        // Every old task has its mask; the current one only after PackNet's retraining,
        // which trained it on its mask.
        let current = p.tasks_seen.saturating_sub(1);
        (0..p.tasks_seen)
            .filter(|&j| j < current || ctx.input_opt(&isolate_slot(j)).is_some())
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
    let counts = split.class_counts();
    let mut report = EvalReport {
        tasks_seen: p.tasks_seen,
        ..EvalReport::default()
    };
    for t in 0..p.tasks_seen {
        ctx.check_cancel()?;
        let task = split.task(t)?;
        let offset = scenario.offset(&counts, t);
        let e = evaluate_task(
            &model,
            &task.test,
            &geometry,
            p.crops,
            scenario.head(t),
            offset..offset + task.classes.len(),
            isolation.get(t).map(Vec::as_slice),
        )?;
        let mut line = format!("task {}: accuracy {:.4}", t + 1, e.accuracy);
        if scenario.is_class_incremental() {
            // Where the head holds only this task's outputs, telling the task changes nothing.
            let aware = e.task_aware.unwrap_or(e.accuracy);
            line += &format!(" (task-aware {aware:.4})");
            report.task_aware_accuracy.push(aware);
            report.class_offset.push(offset);
        }
        ctx.log(format!("{line} on {} test samples", task.test.len()));
        report.accuracy.push(e.accuracy);
        report.n_test.push(task.test.len());
        report.confusion.push(e.confusion);
    }
    Ok(Artifact::new().with(EVAL_JSON, json_bytes(&report)))
}

/// One task's evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEval {
    /// The argmax over every output of the head (for a class-incremental head: over all classes
    /// seen, without the task).
    pub accuracy: f64,
    /// Where the head has outputs besides the task's own (`own`): the argmax over those only.
    pub task_aware: Option<f64>,
    /// See [`confusion`].
    pub confusion: Vec<Vec<u64>>,
}

/// The test accuracy of one task whose samples go through `head`, their labels numbered
/// among its outputs, the task's own being the outputs `own`.
pub fn evaluate_task<D: Device<f32>>(
    model: &DeviceModel<D>,
    test: &Samples,
    geometry: &Geometry,
    crops: TestCrops,
    head: usize,
    own: std::ops::Range<usize>,
    unit_masks: Option<&[Vector<D>]>,
) -> Result<TaskEval, StageError> {
    let outputs = model.outputs(head);
    // Over all outputs and, where the head has others besides the task's, over its own: one
    // forward pass for both.
    let all = 0..outputs;
    let within = if own.len() < outputs {
        &[all, own.clone()][..]
    } else {
        &[all][..]
    };
    let mut lists = predictions_with(model, test, geometry, crops, head, unit_masks, within)?;
    let task_aware = (lists.len() == 2).then(|| super::share_correct(&lists[1], &test.y));
    let predicted = lists.swap_remove(0);
    Ok(TaskEval {
        accuracy: super::share_correct(&predicted, &test.y),
        task_aware,
        confusion: confusion(&test.y, &predicted, &own, outputs),
    })
}

/// Test samples of one task by true class (a row per class of the task, `labels` numbered
/// among the head's outputs from `own.start`) and predicted output (a column per output of
/// the head, `outputs` of them). A label outside `own` (a broken split) stays out.
pub fn confusion(
    labels: &[crate::nn::tensor::Label],
    predicted: &[usize],
    own: &std::ops::Range<usize>,
    outputs: usize,
) -> Vec<Vec<u64>> {
    let mut m = vec![vec![0u64; outputs]; own.len()];
    for (&y, &p) in labels.iter().zip(predicted) {
        let row = (y as usize)
            .checked_sub(own.start)
            .and_then(|r| m.get_mut(r));
        if let Some(c) = row.and_then(|row| row.get_mut(p)) {
            *c += 1;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::model::{DenseParams, ModelParams};
    use crate::nn::scenario::{ClassOutputs, Scenario};

    #[test]
    fn class_incremental_accuracy_on_a_hand_built_head_is_the_hand_computation() {
        // Two inputs a, b (pixel / 255) pass an identity ReLU layer into one head over four
        // classes: outputs a, b, 2a − 0.6, 2b − 0.6. Task 2 owns outputs 2 and 3.
        let dense = |out_dim, in_dim, weight: Vec<f32>, bias: Vec<f32>| DenseParams {
            out_dim,
            in_dim,
            weight,
            bias,
        };
        let host = ModelParams {
            trunk: vec![dense(2, 2, vec![1., 0., 0., 1.], vec![0., 0.])],
            heads: vec![dense(
                4,
                2,
                vec![1., 0., 0., 1., 2., 0., 0., 2.],
                vec![0., 0., -0.6, -0.6],
            )],
            negative_slope: 0.0,
            arch: None,
            scenario: Scenario::ClassIncremental {
                outputs: ClassOutputs::Grow,
            },
        };
        let dev = dfdx::prelude::Cpu::default();
        let model = DeviceModel::from_host(&dev, &host);
        // (a, b) = (1, 0): outputs [1, 0, 1.4, −0.6], argmax 2 overall and among 2..4.
        // (0.4, 0): [0.4, 0, 0.2, −0.6]: 0 overall (task 1's class), 2 among task 2's.
        // (0, 0.4): [0, 0.4, −0.6, 0.2]: 1 overall, 3 among task 2's.
        // (0, 1): [0, 1, −0.6, 1.4]: 3 both ways.
        let test = Samples {
            x: vec![255, 0, 102, 0, 0, 102, 0, 255],
            y: vec![2, 2, 3, 2],
        };
        let g = Geometry::new(&[2], &host).unwrap();
        let e = evaluate_task(&model, &test, &g, TestCrops::Center, 0, 2..4, None).unwrap();
        // Overall: only the first sample is right. Told the task: all but the last.
        assert_eq!(e.accuracy, 1.0 / 4.0);
        assert_eq!(e.task_aware, Some(3.0 / 4.0));
        assert_eq!(e.confusion, vec![vec![1, 0, 1, 1], vec![0, 1, 0, 0]]);
        // A head over the task's classes only has no separate task-aware accuracy.
        let own = evaluate_task(&model, &test, &g, TestCrops::Center, 0, 0..4, None).unwrap();
        assert_eq!(own.task_aware, None);
    }

    #[test]
    fn class_incremental_confusion_rows_are_the_task_and_columns_every_output() {
        // Task 2 of a head over 4 classes (its own are outputs 2 and 3): a sample of each
        // own class classified right, one of class 3 taken for task 1's class 0.
        let m = confusion(&[2, 3, 3], &[2, 3, 0], &(2..4), 4);
        assert_eq!(m, vec![vec![0, 0, 1, 0], vec![1, 0, 0, 1]]);
    }
}
