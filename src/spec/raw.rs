//! The pipeline file as written: serde types with no logic beyond defaults. Unknown keys are
//! rejected everywhere. `validate` turns these into a checked `Pipeline`.

use crate::stages::prune::SearchKind;
use crate::xai::importance::EwcMode;
use crate::xai::lrp::{AbsMode, LrpRule};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    /// Free text for humans; not part of any key.
    #[serde(default)]
    pub name: Option<String>,
    /// One dataset: IDX (`format: idx`, [`RawDataset`]) or a colour-image format
    /// ([`crate::data::ImageDatasetSpec`]); parsed by `validate`, which knows the key paths.
    #[serde(default)]
    pub dataset: Option<serde_yaml::Value>,
    /// Named colour-image datasets for tasks drawn from several datasets
    /// (`tasks: [{dataset: NAME, classes: all}, …]`).
    #[serde(default)]
    pub datasets: Option<BTreeMap<String, serde_yaml::Value>>,
    /// Class groups, one per task, e.g. `[[0, 1], [2, 3]]`, `permuted: {…}`, or one
    /// `{dataset: NAME, classes: all | [..]}` per task.
    pub tasks: RawTasks,
    pub model: RawModel,
    pub training: RawTraining,
    /// How test accuracy is measured (`crops: center | ten`); see `spec::protocol`.
    #[serde(default)]
    pub evaluation: Option<RawEvaluation>,
    pub seeds: Vec<i64>,
    pub strategies: BTreeMap<String, RawStrategy>,
    /// What each stage kind's cluster jobs ask for (`run --executor slurm`), by kind or
    /// `default`; see `spec::resources`. Never part of a key.
    #[serde(default)]
    pub resources: Option<BTreeMap<String, RawResources>>,
}

/// One entry of `resources:`. Memory and time are Slurm's strings; a bare number is
/// megabytes or minutes, as Slurm reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResources {
    #[serde(default)]
    pub cpus: Option<i64>,
    #[serde(default)]
    pub gpus: Option<i64>,
    #[serde(default)]
    pub mem: Option<serde_yaml::Value>,
    #[serde(default)]
    pub time: Option<serde_yaml::Value>,
}

/// How the data is cut into tasks.
#[derive(Debug)]
pub enum RawTasks {
    /// One class group per task (split MNIST).
    Groups(Vec<Vec<i64>>),
    /// The same classes in every task; task 1 as is, tasks 2.. with a fixed, seeded
    /// permutation of the input pixels each (permuted MNIST).
    Permuted(RawPermuted),
    /// One entry per task, each naming a dataset under `datasets:` and its classes.
    FromDatasets(Vec<RawDatasetTask>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatasetTask {
    pub dataset: String,
    pub classes: RawClasses,
    /// Overrides `training.epochs` for this task; 0 keeps a pretrained task 1 as loaded.
    #[serde(default)]
    pub epochs: Option<i64>,
}

/// `all` (every class of the dataset, in label order) or a list of labels.
#[derive(Debug, Clone)]
pub enum RawClasses {
    All,
    List(Vec<i64>),
}

impl<'de> Deserialize<'de> for RawClasses {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(s) if s == "all" => Ok(RawClasses::All),
            v @ serde_yaml::Value::Sequence(_) => serde_yaml::from_value(v)
                .map(RawClasses::List)
                .map_err(|e| D::Error::custom(format!("expected a list of class labels: {e}"))),
            _ => Err(D::Error::custom(
                "expected `all` or a list of class labels like [0, 2, 4]",
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPermuted {
    pub count: i64,
    pub classes: Vec<i64>,
    #[serde(default)]
    pub seed: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermutedWrapper {
    permuted: RawPermuted,
}

impl<'de> Deserialize<'de> for RawTasks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_yaml::Value::deserialize(d)?;
        match v {
            serde_yaml::Value::Sequence(ref items)
                if items.first().is_some_and(|i| i.is_mapping()) =>
            {
                serde_yaml::from_value(v).map(RawTasks::FromDatasets).map_err(|e| {
                    D::Error::custom(format!(
                        "expected one `{{dataset: NAME, classes: all | [..]}}` per task: {e}"
                    ))
                })
            }
            serde_yaml::Value::Sequence(_) => serde_yaml::from_value(v).map(RawTasks::Groups).map_err(|e| {
                D::Error::custom(format!("expected a list of class groups like [[0, 1], [2, 3]]: {e}"))
            }),
            serde_yaml::Value::Mapping(_) => serde_yaml::from_value::<PermutedWrapper>(v)
                .map(|w| RawTasks::Permuted(w.permuted))
                .map_err(|e| D::Error::custom(format!("expected `permuted: {{count: N, classes: [..], seed: S}}`: {e}"))),
            _ => Err(D::Error::custom(
                "expected a list of class groups like [[0, 1], [2, 3]], or `permuted: {count: N, classes: [..], seed: S}`",
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    Idx,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataset {
    pub format: DataFormat,
    /// Images file (IDX, raw or gzipped). Without `test_images`, the test set is carved out of
    /// this one by `test_fraction`.
    pub images: PathBuf,
    pub labels: PathBuf,
    #[serde(default)]
    pub test_images: Option<PathBuf>,
    #[serde(default)]
    pub test_labels: Option<PathBuf>,
    #[serde(default)]
    pub test_fraction: Option<f64>,
    #[serde(default)]
    pub split_seed: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Mlp,
    /// Layers spelled out in `layers`.
    Cnn,
    /// [`crate::nn::arch::small_cnn`] on `input_shape`.
    SmallCnn,
    /// VGG-16 in torchvision's layout ([`crate::nn::arch::vgg16`]).
    Vgg16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub kind: ModelKind,
    /// MLP only: hidden layer sizes.
    #[serde(default)]
    pub hidden: Option<Vec<i64>>,
    /// `cnn` only: the trunk's layers, e.g. `- conv: {out_channels: 8, kernel: 3}`,
    /// `- max_pool: {kernel: 2}`, `- flatten`, `- dense: {units: 64}`.
    #[serde(default)]
    pub layers: Option<Vec<RawLayer>>,
    /// `cnn` and `small_cnn`: `[C, H, W]` of one sample (default `[1, 28, 28]`, MNIST).
    #[serde(default)]
    pub input_shape: Option<Vec<i64>>,
    /// `vgg16` only: 224 (torchvision's) or 32 (CIFAR form).
    #[serde(default)]
    pub input_size: Option<i64>,
    /// `vgg16` only: input channels (default 3).
    #[serde(default)]
    pub input_channels: Option<i64>,
    /// `vgg16` only: every width divided by this (default 1, the real VGG-16).
    #[serde(default)]
    pub width_divisor: Option<i64>,
    /// `vgg16` only: a safetensors file with torchvision's state dict, loaded for task 1.
    #[serde(default)]
    pub pretrained: Option<PathBuf>,
    /// With `pretrained`: what becomes of torchvision's 1000-way `classifier.6` (default `task1`).
    #[serde(default)]
    pub pretrained_head: Option<crate::nn::torchvision::PretrainedHead>,
    /// Conv models: per-channel normalisation of the `[0, 1]` pixels.
    #[serde(default)]
    pub normalize: Option<RawNormalize>,
    /// Hidden activation.
    #[serde(default)]
    pub activation: Activation,
    /// Leaky ReLU's slope for negative inputs (default 0.01, as PyTorch).
    #[serde(default)]
    pub negative_slope: Option<f64>,
    /// The continual-learning scenario: how tasks share output units (`nn::scenario`).
    #[serde(default)]
    pub heads: HeadsKind,
    /// `heads: class_incremental` only: `grow` (default) or `upfront`.
    #[serde(default)]
    pub class_outputs: Option<crate::nn::scenario::ClassOutputs>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeadsKind {
    /// A head per task (task-incremental).
    #[default]
    PerTask,
    /// One head over every task's local classes (domain-incremental).
    Shared,
    /// One head over all classes, evaluated without the task.
    ClassIncremental,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNormalize {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// One trunk layer of a `cnn` model: a one-key map (`conv: {…}`) or a bare name (`flatten`).
#[derive(Debug)]
pub enum RawLayer {
    Conv(RawConv),
    Dense(RawDense),
    MaxPool(RawPool),
    AvgPool(RawPool),
    AdaptiveAvgPool(RawAdaptive),
    Flatten,
    Dropout(RawDropout),
}

impl<'de> Deserialize<'de> for RawLayer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use serde_yaml::Value;
        const EXPECTED: &str = "expected one of `conv: {out_channels, kernel, stride, padding}`, `dense: {units}`, `max_pool: {kernel, stride}`, `avg_pool: {kernel, stride}`, `adaptive_avg_pool: {size: [h, w]}`, `dropout: {p}`, `flatten`";
        let v = Value::deserialize(d)?;
        let (name, body) = match v {
            Value::String(s) => (s, None),
            Value::Mapping(m) if m.len() == 1 => {
                let (k, body) = m.into_iter().next().expect("one entry");
                match k {
                    Value::String(s) => (s, Some(body)),
                    _ => return Err(D::Error::custom(EXPECTED)),
                }
            }
            _ => return Err(D::Error::custom(EXPECTED)),
        };
        fn body_of<T: serde::de::DeserializeOwned, E: Error>(
            name: &str,
            body: Option<Value>,
        ) -> Result<T, E> {
            let body = body.ok_or_else(|| {
                E::custom(format!("`{name}` needs its settings, e.g. `{name}: {{…}}`"))
            })?;
            serde_yaml::from_value(body).map_err(|e| E::custom(format!("{name}: {e}")))
        }
        Ok(match name.as_str() {
            "conv" => RawLayer::Conv(body_of(&name, body)?),
            "dense" => RawLayer::Dense(body_of(&name, body)?),
            "max_pool" => RawLayer::MaxPool(body_of(&name, body)?),
            "avg_pool" => RawLayer::AvgPool(body_of(&name, body)?),
            "adaptive_avg_pool" => RawLayer::AdaptiveAvgPool(body_of(&name, body)?),
            "dropout" => RawLayer::Dropout(body_of(&name, body)?),
            "flatten" if matches!(body, None | Some(Value::Null)) => RawLayer::Flatten,
            "flatten" => return Err(D::Error::custom("`flatten` takes no settings")),
            other => {
                return Err(D::Error::custom(format!(
                    "unknown layer `{other}`; {EXPECTED}"
                )))
            }
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConv {
    pub out_channels: i64,
    pub kernel: i64,
    #[serde(default)]
    pub stride: Option<i64>,
    #[serde(default)]
    pub padding: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDense {
    pub units: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub kernel: i64,
    /// Default: the kernel size (PyTorch's default).
    #[serde(default)]
    pub stride: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdaptive {
    pub size: Vec<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDropout {
    pub p: f64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Relu,
    LeakyRelu,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adam,
    Sgd,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTraining {
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub batch_size: i64,
    pub epochs: i64,
    /// L2 penalty added to the gradient (PyTorch `weight_decay` semantics).
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_adam_eps")]
    pub eps: f64,
    #[serde(default)]
    pub momentum: f64,
    /// Training-time augmentation (random crop, random mirror); see `spec::protocol`.
    #[serde(default)]
    pub augment: Option<RawAugment>,
    /// Which samples an epoch draws (`kind: none | empirical | balanced`).
    #[serde(default)]
    pub sampling: Option<RawSampling>,
    /// Store what a replay of each training in another framework needs: the initial weights
    /// and every step's samples (`scripts/torch_crosscheck.py`).
    #[serde(default)]
    pub record_replay: bool,
}

/// `training.augment`: `{crop: {size: N} | {padding: P}, hflip: true}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAugment {
    #[serde(default)]
    pub crop: Option<RawCrop>,
    #[serde(default)]
    pub hflip: bool,
}

/// `training.augment.crop`: exactly one of `size` (a random `size`×`size` window of a larger
/// stored image) and `padding` (zero padding, then a random window of the stored size).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCrop {
    #[serde(default)]
    pub size: Option<i64>,
    #[serde(default)]
    pub padding: Option<i64>,
}

/// `training.sampling`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSampling {
    pub kind: super::protocol::SamplingSpec,
}

/// `evaluation:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvaluation {
    #[serde(default)]
    pub crops: super::protocol::TestCrops,
    /// Which samples choices (the prune search, importance references) are made on.
    #[serde(default)]
    pub selection: super::protocol::Selection,
    /// With `selection: validation`: each task's share of training samples held out.
    #[serde(default)]
    pub validation_fraction: Option<f64>,
    /// Also train every task alone from a fresh start, for forward transfer in the report.
    #[serde(default)]
    pub forward_transfer: bool,
}

fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_adam_eps() -> f64 {
    1e-8
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FreezeKind {
    /// Naive finetuning: nothing is frozen.
    None,
    /// RNF: score, prune until the threshold, freeze what is left.
    UntilThreshold,
    /// Baseline: freeze as many units per layer as the strategy named by `like` froze at each
    /// task, chosen at random among the free ones.
    Random,
    /// Freeze a fixed `share` of each layer's units per task, the highest-scoring free ones
    /// (the saliency paper's policy).
    TopShare,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// One task after another (continual learning).
    #[default]
    Sequential,
    /// Upper baseline: one training on all tasks at once (each sample through its task's head).
    Joint,
}

/// The keys of [`RawStrategy`], for the hint that one of them, dedented, was read as a
/// strategy name (`tests/spec_errors.rs` checks the list against the struct).
pub const STRATEGY_KEYS: [&str; 14] = [
    "freeze",
    "schedule",
    "score",
    "prune",
    "lr_frozen",
    "like",
    "share",
    "isolate",
    "final_mask",
    "ewc",
    "correlate",
    "replay",
    "lwf",
    "retrain",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStrategy {
    pub freeze: FreezeKind,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub score: Option<RawScore>,
    #[serde(default)]
    pub prune: Option<RawPrune>,
    /// Learning-rate multiplier of frozen units; 0 freezes them exactly.
    #[serde(default)]
    pub lr_frozen: Option<f64>,
    /// For `freeze: random`: whose per-layer frozen counts to match.
    #[serde(default)]
    pub like: Option<String>,
    /// For `freeze: top_share`: share of each layer's units frozen per task, in (0, 1].
    #[serde(default)]
    pub share: Option<f64>,
    /// Evaluate (and serve) each old task with only the units frozen up to and including it,
    /// so later training cannot reach it (PackNet-style). Requires a freezing policy.
    #[serde(default)]
    pub isolate: bool,
    /// Whether to score and mask after the last task too (default true). Nothing trains after
    /// the last task, so only the report's final free capacity reads that mask; `false` skips
    /// those stages and the report shows that capacity as not computed. Requires a freezing
    /// policy.
    #[serde(default)]
    pub final_mask: Option<bool>,
    /// EWC-regularised training: a quadratic penalty from earlier tasks' importances.
    #[serde(default)]
    pub ewc: Option<RawEwc>,
    /// After every task, correlate the weight importances of several methods (Kutalev).
    #[serde(default)]
    pub correlate: Option<RawCorrelate>,
    /// Experience replay: a buffer of earlier tasks' samples mixed into every batch.
    #[serde(default)]
    pub replay: Option<RawReplay>,
    /// Learning without Forgetting: distil the old heads' outputs while training a new task.
    #[serde(default)]
    pub lwf: Option<RawLwf>,
    /// PackNet's retraining: after each task's mask, train the task again on its kept units
    /// only (the pruned ones silenced), before they freeze.
    #[serde(default)]
    pub retrain: Option<RawRetrain>,
}

/// `strategies.NAME.retrain`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetrain {
    /// Epochs of the retraining (PackNet: a few; the task's own training has `training.epochs`).
    pub epochs: i64,
}

/// `strategies.NAME.lwf`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLwf {
    /// Weight λ of the distillation term.
    pub lambda: f64,
    /// Softmax temperature T of both sides (default 2, Li & Hoiem's).
    #[serde(default)]
    pub temperature: Option<f64>,
}

/// `strategies.NAME.replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplay {
    /// Samples kept per class of every earlier task.
    pub per_class: i64,
    /// Share of every batch drawn from the buffer, in [0, 1).
    pub ratio: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCorrelate {
    /// Named weight-level methods (`fisher`, `mas`, `sig`, `si`, `random`) with their options.
    pub methods: std::collections::BTreeMap<String, RawScore>,
    /// Methods whose element-wise square joins as another method (`mas^2`).
    #[serde(default)]
    pub squared: Vec<String>,
    /// Sum each method's trunk importances over the tasks so far (Kutalev) or not.
    #[serde(default = "yes")]
    pub accumulate: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEwc {
    /// Penalty strength λ >= 0.
    pub lambda: f64,
    #[serde(default)]
    pub mode: EwcMode,
    /// Online mode: decay γ of earlier importance, in (0, 1].
    #[serde(default)]
    pub decay: Option<f64>,
    /// The importance Ω: any score method, with its options (see `score::ewc_importance`).
    pub importance: RawScore,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScoreMethod {
    /// Layer-wise relevance propagation on a reference set (RNF).
    Lrp,
    /// L2 norm of each unit's incoming weights (and bias).
    Magnitude,
    /// Diagonal Fisher information (EWC), aggregated to units.
    Fisher,
    /// Memory-aware synapses: gradient of the squared output norm, aggregated to units.
    Mas,
    /// Signal passed, |w|·mean|a| (Kutalev), aggregated to units.
    Sig,
    /// Uniformly random scores (seeded): a sanity baseline.
    Random,
    /// Activation times the gradient of the true-class logit w.r.t. it, per unit.
    GradientXInput,
    /// Synaptic intelligence (Zenke et al.): the path integral recorded while training.
    Si,
    /// Similarity of each filter's visualisation to the classes' FullGrad saliency maps
    /// (conv models only; see `xai::saliency`).
    Saliency,
}

/// Which split of the task the reference samples come from.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceSplit {
    /// The task's test split, as in the RNF paper.
    #[default]
    Test,
    /// The task's training split, as EWC-style methods usually do.
    Train,
    /// The task's validation split, held out of its training data. Not written in a pipeline:
    /// `evaluation.selection: validation` puts it where `test` would be (see `with_selection`).
    Validation,
}

impl ReferenceSplit {
    pub fn is_test(&self) -> bool {
        *self == ReferenceSplit::Test
    }
}

/// Whose conventions LRP's rules follow: cfpipe's (the bias left out of z⁺, αβ and w², a
/// stabilizer of 1e-9, max-pooling like any layer), or zennit 0.5.1's (the bias counted,
/// 1e-6, max-pooling by the gradient).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LrpConvention {
    Cfpipe,
    Zennit,
}

/// Named LRP composites, spelled as in zennit. Each fixes the dense, conv and first-layer rules;
/// with `convention: zennit` they also compute as zennit's do.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Composite {
    /// ε for dense layers, z⁺ for conv layers (RNF's choice).
    EpsilonPlus,
    /// `EpsilonPlus` with the flat rule on the first layer.
    EpsilonPlusFlat,
    /// ε for dense layers, α2β1 for conv layers.
    EpsilonAlpha2Beta1,
    /// `EpsilonAlpha2Beta1` with the flat rule on the first layer.
    EpsilonAlpha2Beta1Flat,
    /// ε for dense layers, γ for conv layers, zᴮ on the first layer.
    EpsilonGammaBox,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScore {
    pub method: ScoreMethod,
    /// LRP: the rule of dense layers.
    #[serde(default)]
    pub rule: Option<LrpRule>,
    /// LRP: the rule of conv layers.
    #[serde(default)]
    pub conv_rule: Option<LrpRule>,
    /// LRP: the rule of the layer that reads the input, overriding `rule`/`conv_rule`.
    #[serde(default)]
    pub first_layer: Option<LrpRule>,
    /// LRP: a named composite instead of `rule`, `conv_rule` and `first_layer`.
    #[serde(default)]
    pub composite: Option<Composite>,
    /// LRP: whose conventions the rules follow (bias and stabilizer together).
    #[serde(default)]
    pub convention: Option<LrpConvention>,
    /// LRP: whether z⁺, αβ and w² count the bias in their denominators.
    #[serde(default)]
    pub bias: Option<crate::xai::lrp::LrpBias>,
    /// LRP: the stabilizer of every denominator but ε's.
    #[serde(default)]
    pub stabilizer: Option<f64>,
    /// LRP: how relevance passes a max-pooling layer (`proportional` or `gradient`).
    #[serde(default)]
    pub max_pool: Option<crate::xai::lrp::LrpMaxPool>,
    #[serde(default)]
    pub epsilon: Option<f64>,
    /// LRP αβ: α − β = 1.
    #[serde(default)]
    pub alpha: Option<f64>,
    #[serde(default)]
    pub beta: Option<f64>,
    /// LRP γ.
    #[serde(default)]
    pub gamma: Option<f64>,
    /// LRP zᴮ: the input's lower and upper bound.
    #[serde(default)]
    pub low: Option<f64>,
    #[serde(default)]
    pub high: Option<f64>,
    /// Reference samples per task (all methods but magnitude and random).
    #[serde(default)]
    pub reference_size: Option<i64>,
    #[serde(default)]
    pub reference_split: Option<ReferenceSplit>,
    /// Fisher: ground-truth or predicted labels.
    #[serde(default)]
    pub labels: Option<crate::xai::importance::FisherLabels>,
    /// Fisher: per-sample or per-batch gradients.
    #[serde(default)]
    pub gradients: Option<crate::xai::importance::GradientMode>,
    /// Fisher with per-batch gradients: the batch size.
    #[serde(default)]
    pub batch_size: Option<i64>,
    /// SI: the damping ξ in ω / (Δθ² + ξ).
    #[serde(default)]
    pub damping: Option<f64>,
    /// Weight-level methods: how weight importances become unit scores.
    #[serde(default)]
    pub unit_rule: Option<crate::xai::importance::UnitRule>,
    #[serde(default)]
    pub aggregate: RawAggregate,
    /// Saliency: `mse` (score −MSE) or `pearson`, visualisation against class map.
    #[serde(default)]
    pub similarity: Option<crate::xai::saliency::Similarity>,
    /// Saliency: how a filter's per-class similarities combine (`mean`, `max`).
    #[serde(default)]
    pub class_aggregate: Option<crate::xai::saliency::ClassAggregate>,
    /// Saliency: dense units' scores (`free`: never frozen by top_share; `fullgrad`).
    #[serde(default)]
    pub dense: Option<crate::xai::saliency::DensePolicy>,
    /// Saliency: FullGrad's min-max region (`per_layer`, `per_channel`).
    #[serde(default)]
    pub fullgrad_normalize: Option<crate::xai::saliency::MapNormalize>,
    /// Saliency: activation maximisation (`steps`, `lr`, `init_scale`).
    #[serde(default)]
    pub visualize: Option<crate::xai::saliency::Visualize>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// Scores are compared across layers as they are.
    #[default]
    None,
    /// Divide each layer's scores by that layer's largest |score|.
    LayerMax,
    /// Divide each layer's scores by the sum of that layer's |scores|.
    LayerSum,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAggregate {
    #[serde(default)]
    pub abs: AbsMode,
    #[serde(default)]
    pub normalize: Normalize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrune {
    /// Largest accepted drop in test accuracy (absolute, as a fraction), in (0, 1).
    pub threshold: f64,
    /// Share of the prunable units removed per step, in (0, 1].
    pub step_ratio: f64,
    #[serde(default)]
    pub search: SearchKind,
}
