//! The checked pipeline: what `validate` resolves the raw YAML into, and what the plan builds
//! stage parameters from. Everything serialised from here into stage parameters is part of
//! keys, so a field's serde attributes are part of the key contract.

use super::images::ImageData;
use super::raw::{Normalize, ReferenceSplit};
use crate::stages::prune::SearchKind;
use crate::xai::importance::{EwcMode, FisherLabels, GradientMode, UnitRule};
use crate::xai::lrp::{AbsMode, LrpBias, LrpMaxPool, LrpRule};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A checked pipeline. Everything serialised from here into stage parameters is part of keys.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub source: PathBuf,
    pub data: DataSource,
    /// Class groups per task (global dataset labels) of an IDX dataset; image tasks are in
    /// [`DataSource::Images`].
    pub tasks: Vec<Vec<u16>>,
    /// Seed of the per-task pixel permutations (permuted tasks), if any.
    pub permute_seed: Option<u64>,
    pub model: ModelSpec,
    pub training: TrainingSpec,
    /// `evaluation.crops`: how test accuracy is measured (evaluate and prune stages).
    pub test_crops: super::protocol::TestCrops,
    /// `evaluation.selection`: which samples the prune search and importance references use.
    pub selection: super::protocol::Selection,
    /// Each task's share of training samples held out for validation (with `selection:
    /// validation` only).
    pub validation_fraction: Option<f64>,
    /// `evaluation.forward_transfer`: every task is also trained alone from a fresh start.
    pub forward_transfer: bool,
    pub seeds: Vec<u64>,
    pub strategies: Vec<Strategy>,
    /// `resources:`: what each stage kind's cluster jobs ask for, by kind (or `default`).
    /// In no key: where a stage runs never changes what it computes.
    pub resources: BTreeMap<String, crate::exec::slurm::JobResources>,
}

/// Where the tasks' samples come from.
#[derive(Debug, Clone)]
pub enum DataSource {
    Idx(DatasetSpec),
    Images(ImageData),
}

impl Pipeline {
    pub fn task_count(&self) -> usize {
        match &self.data {
            DataSource::Idx(_) => self.tasks.len(),
            DataSource::Images(d) => d.tasks.len(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetSpec {
    pub format: &'static str,
    #[serde(skip)]
    pub images: PathBuf,
    #[serde(skip)]
    pub labels: PathBuf,
    #[serde(skip)]
    pub test_files: Option<(PathBuf, PathBuf)>,
    /// Share of the pooled data held out for testing, when no test files are given.
    pub test_fraction: Option<f64>,
    pub split_seed: u64,
}

/// The model, as the `train` stage reads it from its parameters (`stages::train::Params`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSpec {
    pub kind: String,
    pub hidden: Vec<usize>,
    /// 0 = ReLU (then not keyed, so older keys stay as they were), else leaky ReLU's negative
    /// slope.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub negative_slope: f64,
    /// A conv model's complete architecture; absent for the MLP, whose keys stay as they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<crate::nn::arch::Arch>,
    /// A conv model's revision of the conv CPU kernels ([`crate::nn::conv::CONV_KERNELS`]), so
    /// that a change in their rounding gives conv models new keys and leaves the MLP's as
    /// they are; absent for the MLP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv_kernels: Option<u32>,
    /// Torchvision weights for task 1 (`vgg16`); a data file of the task-1 training, keyed by
    /// content, so its path is not a parameter.
    #[serde(skip)]
    pub pretrained: Option<PathBuf>,
    /// `drop`: only the trunk is loaded and every task gets a fresh head; absent for the
    /// default (`task1`, classifier.6 is task 1's head), so older keys stay as they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretrained_head: Option<crate::nn::torchvision::PretrainedHead>,
    /// `model.heads` (and `class_outputs`): how tasks share output units. Absent for
    /// `per_task`, so task-incremental keys stay as they were.
    #[serde(
        default,
        skip_serializing_if = "crate::nn::scenario::Scenario::is_per_task"
    )]
    pub scenario: crate::nn::scenario::Scenario,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// The optimizer and its settings, as the `train` stage reads them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "optimizer", rename_all = "snake_case")]
pub enum OptimizerSpec {
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

/// Training settings, as the `train` stage reads them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingSpec {
    #[serde(flatten)]
    pub optimizer: OptimizerSpec,
    pub batch_size: usize,
    pub epochs: usize,
    pub weight_decay: f64,
    /// Left out of the key when absent, like `sampling: none`, so older pipelines keep theirs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub augment: Option<super::protocol::AugmentSpec>,
    /// Left out for `none` (older keys stay as they were), which is then read back as default.
    #[serde(
        default,
        skip_serializing_if = "super::protocol::SamplingSpec::is_none"
    )]
    pub sampling: super::protocol::SamplingSpec,
    /// Trainings store `replay_initial.safetensors` and `replay.json` beside the model; left
    /// out of the key when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record_replay: bool,
}

/// How units are scored; serialised (tagged by `method`) into the score stage's parameters,
/// which deserialises it back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum ScoreSpec {
    Lrp {
        rule: LrpRule,
        epsilon: f64,
        // Rule choices and parameters beyond the original ε-only form are keyed only when in
        // use, so earlier keys stay valid.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conv_rule: Option<LrpRule>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_layer: Option<LrpRule>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alpha: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        beta: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gamma: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        low: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        high: Option<f64>,
        #[serde(default, skip_serializing_if = "LrpBias::is_ignore")]
        bias: LrpBias,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stabilizer: Option<f64>,
        #[serde(default, skip_serializing_if = "LrpMaxPool::is_proportional")]
        max_pool: LrpMaxPool,
        reference_size: usize,
        // Absent means `test` (the paper's choice), so keys of earlier runs stay valid.
        #[serde(default, skip_serializing_if = "ReferenceSplit::is_test")]
        reference_split: ReferenceSplit,
        abs: AbsMode,
        normalize: Normalize,
    },
    Magnitude {
        normalize: Normalize,
    },
    Fisher {
        labels: FisherLabels,
        gradients: GradientMode,
        batch_size: usize,
        reference_size: usize,
        reference_split: ReferenceSplit,
        unit_rule: UnitRule,
        normalize: Normalize,
    },
    Mas {
        reference_size: usize,
        reference_split: ReferenceSplit,
        unit_rule: UnitRule,
        normalize: Normalize,
    },
    Sig {
        reference_size: usize,
        reference_split: ReferenceSplit,
        unit_rule: UnitRule,
        normalize: Normalize,
    },
    Random {},
    Si {
        damping: f64,
        unit_rule: UnitRule,
        normalize: Normalize,
    },
    GradientXInput {
        reference_size: usize,
        reference_split: ReferenceSplit,
        abs: AbsMode,
        normalize: Normalize,
    },
    Saliency {
        reference_size: usize,
        reference_split: ReferenceSplit,
        #[serde(flatten)]
        options: crate::xai::saliency::SaliencyOptions,
    },
}

impl ScoreSpec {
    /// This spec under `selection`: with `validation`, reference samples that would come from
    /// the test split come from the validation split instead (a choice of which units to keep
    /// must not see the samples its result is tested on); `train` references are kept.
    pub fn with_selection(mut self, selection: super::protocol::Selection) -> ScoreSpec {
        if selection == super::protocol::Selection::Validation {
            match &mut self {
                ScoreSpec::Lrp {
                    reference_split, ..
                }
                | ScoreSpec::Fisher {
                    reference_split, ..
                }
                | ScoreSpec::Mas {
                    reference_split, ..
                }
                | ScoreSpec::Sig {
                    reference_split, ..
                }
                | ScoreSpec::GradientXInput {
                    reference_split, ..
                }
                | ScoreSpec::Saliency {
                    reference_split, ..
                } if *reference_split == ReferenceSplit::Test => {
                    *reference_split = ReferenceSplit::Validation;
                }
                _ => {}
            }
        }
        self
    }
}

/// Experience replay (Chaudhry et al. 2019's ER), as the `train` stage reads it.
///
/// The buffer holds `per_class` training samples of every class of every earlier task, drawn
/// without replacement by a seeded shuffle per task (`buffer: class_balanced`; all of a class's
/// samples when it has fewer). Every batch is `round(ratio × batch_size)` samples drawn from the
/// buffer with replacement (seeded per epoch and batch) and `batch_size` minus that many of the
/// current task's, which set the epoch's length. Each sample trains its own task's head, and
/// the loss is the batch mean over all of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplaySpec {
    pub per_class: usize,
    pub ratio: f64,
    pub buffer: ReplayBuffer,
}

/// Learning without Forgetting (Li & Hoiem 2017), as the `train` stage reads it.
///
/// Before training task `t`, the model's old heads `0..t` are run on each batch (the model as
/// it was before the task, without dropout); the loss adds, per old head,
/// `lambda · T² · mean_i CE(softmax(old_i / T), softmax(new_i / T))`, so the old heads' outputs
/// on the new data are kept while the trunk moves. The T² keeps the term's gradient scale
/// independent of T (Hinton et al.).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LwfSpec {
    pub lambda: f64,
    pub temperature: f64,
}

/// PackNet's retraining (Mallya & Lazebnik 2018): once a task's mask has chosen the units it
/// keeps, the task trains again for `epochs` with every other free unit silenced (its
/// activation 0, its weights still), so that the kept units learn to do without the pruned
/// ones before they freeze. Earlier tasks' frozen units stay frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrainSpec {
    pub epochs: usize,
}

/// How the replay buffer chooses its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayBuffer {
    /// `per_class` samples of each class, chosen by a seeded shuffle.
    ClassBalanced,
}

impl Strategy {
    /// This strategy under `selection` (see [`ScoreSpec::with_selection`]): the scores its
    /// freezing ranks units by and its EWC importances. Correlations only analyse, and keep
    /// their references.
    pub fn with_selection(mut self, selection: super::protocol::Selection) -> Strategy {
        if let FreezeSpec::UntilThreshold { score, .. } | FreezeSpec::TopShare { score, .. } =
            &mut self.freeze
        {
            *score = score.clone().with_selection(selection);
        }
        if let Some(w) = &mut self.ewc {
            w.importance = w.importance.clone().with_selection(selection);
        }
        self
    }
}

/// The prune search's settings, carried from `strategies.NAME.prune` into
/// `stages::prune::Params`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneSpec {
    pub threshold: f64,
    pub step_ratio: f64,
    pub search: SearchKind,
}

#[derive(Debug, Clone)]
pub enum FreezeSpec {
    None,
    UntilThreshold {
        score: ScoreSpec,
        prune: PruneSpec,
        lr_frozen: f64,
    },
    /// Match `like`'s per-layer frozen counts at each task, with units drawn at random.
    Random {
        like: String,
        lr_frozen: f64,
    },
    /// Freeze the top `share` of each layer's units (by score) among the free ones, per task.
    TopShare {
        score: ScoreSpec,
        share: f64,
        lr_frozen: f64,
    },
}

#[derive(Debug, Clone)]
pub struct Strategy {
    pub name: String,
    pub freeze: FreezeSpec,
    /// Train on all tasks at once instead of in sequence.
    pub joint: bool,
    /// Evaluate old task `j` with only the units frozen after task `j` (the rest masked out).
    pub isolate: bool,
    /// Score and mask after the last task too (`final_mask`, default true); `false` leaves
    /// those stages out (nothing trains after the last task) and the final free capacity
    /// uncomputed.
    pub final_mask: bool,
    pub ewc: Option<EwcSpec>,
    pub correlate: Option<CorrelateSpec>,
    /// Experience replay while training tasks 2.. (`None`: none).
    pub replay: Option<ReplaySpec>,
    /// Learning without Forgetting while training tasks 2.. (`None`: none).
    pub lwf: Option<LwfSpec>,
    /// PackNet's retraining after each task's mask (`None`: none).
    pub retrain: Option<RetrainSpec>,
    /// A sweep variant's point: (axis name, value) of every axis that names it, as in
    /// `rnf@threshold=0.05`; empty outside a sweep. In no key (the values are in the stages'
    /// parameters already).
    pub point: Vec<(String, String)>,
}

/// Importance correlations after every task, carried into `stages::correlate::Params`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CorrelateSpec {
    pub methods: std::collections::BTreeMap<String, ScoreSpec>,
    pub squared: Vec<String>,
    pub accumulate: bool,
}

/// EWC-regularised training (see `stages::consolidate`).
#[derive(Debug, Clone)]
pub struct EwcSpec {
    pub lambda: f64,
    pub mode: EwcMode,
    /// Only for online mode.
    pub decay: Option<f64>,
    pub importance: ScoreSpec,
}
