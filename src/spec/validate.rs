//! Raw pipeline → checked [`Pipeline`]. Collects every problem with its location instead of
//! stopping at the first.

use super::images::{self, ImageData, ImageTask, TaskClasses};
use super::numbers::checked;
use super::raw::*;
use super::{DataCheck, Locator, SpecError, SpecErrors};
use crate::data::ImageDatasetSpec;
use crate::nn::torchvision::PretrainedHead;
use crate::stages::prune::SearchKind;
use crate::xai::importance::{EwcMode, FisherLabels, GradientMode, UnitRule};
use crate::xai::lrp::{AbsMode, LrpRule};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const START: super::Pos = super::Pos { line: 1, col: 1 };

pub(super) struct Ctx {
    pub file: PathBuf,
    pub locator: Locator,
    /// (key path, the `--set` argument) of every override.
    pub overridden: Vec<(String, String)>,
}

impl Ctx {
    pub fn error(&self, path: &str, message: impl Into<String>) -> SpecError {
        self.error_at(path, message, false)
    }

    /// Like `error`, but points at the key rather than its value (for unknown keys).
    pub fn error_at(&self, path: &str, message: impl Into<String>, at_key: bool) -> SpecError {
        let from_override = self
            .overridden
            .iter()
            .find(|(k, _)| path == k || path.starts_with(&format!("{k}.")))
            .map(|(_, o)| o.clone());
        SpecError {
            file: self.file.clone(),
            // A path the locator cannot place (an empty file) is the file's start.
            pos: match (&from_override, at_key) {
                (Some(_), _) => None,
                (None, true) => self.locator.key(path).or(Some(START)),
                (None, false) => self.locator.value(path).or(Some(START)),
            },
            path: path.to_string(),
            message: message.into(),
            from_override,
        }
    }
}

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

/// The LRP rule choice of a score spec, with only the parameters of the rules in use.
struct ChosenRules {
    dense: LrpRule,
    conv: Option<LrpRule>,
    first: Option<LrpRule>,
    alpha: Option<f64>,
    beta: Option<f64>,
    gamma: Option<f64>,
    low: Option<f64>,
    high: Option<f64>,
}

fn lrp_rules(sc: &RawScore, base: &str, e: &mut dyn FnMut(&str, String)) -> ChosenRules {
    use crate::spec::raw::Composite as C;
    let (dense, conv, first) = match sc.composite {
        None => (
            sc.rule.unwrap_or(LrpRule::Epsilon),
            sc.conv_rule,
            sc.first_layer,
        ),
        Some(c) => {
            for (field, set) in [
                ("rule", sc.rule.is_some()),
                ("conv_rule", sc.conv_rule.is_some()),
                ("first_layer", sc.first_layer.is_some()),
            ] {
                if set {
                    e(
                        &format!("{base}.{field}"),
                        format!("`composite: {c:?}` already sets the rules; drop `{field}` or the composite"),
                    );
                }
            }
            let (conv, first) = match c {
                C::EpsilonPlus => (LrpRule::Zplus, None),
                C::EpsilonPlusFlat => (LrpRule::Zplus, Some(LrpRule::Flat)),
                C::EpsilonAlpha2Beta1 => (LrpRule::AlphaBeta, None),
                C::EpsilonAlpha2Beta1Flat => (LrpRule::AlphaBeta, Some(LrpRule::Flat)),
                C::EpsilonGammaBox => (LrpRule::Gamma, Some(LrpRule::ZBox)),
            };
            (LrpRule::Epsilon, Some(conv), first)
        }
    };
    let used = |r: LrpRule| dense == r || conv == Some(r) || first == Some(r);
    let mut param = |name: &str, v: Option<f64>, rule: LrpRule, default: f64| -> Option<f64> {
        if !used(rule) {
            if v.is_some() {
                e(
                    &format!("{base}.{name}"),
                    format!("only used when a layer's rule is `{rule:?}`"),
                );
            }
            return None;
        }
        let v = v.unwrap_or(default);
        checked(e, &format!("{base}.{name}"), v, true, "a finite number");
        Some(v)
    };
    let alpha = param("alpha", sc.alpha, LrpRule::AlphaBeta, 2.0);
    let beta = param("beta", sc.beta, LrpRule::AlphaBeta, 1.0);
    let gamma = param("gamma", sc.gamma, LrpRule::Gamma, 0.25);
    let low = param("low", sc.low, LrpRule::ZBox, 0.0);
    let high = param("high", sc.high, LrpRule::ZBox, 1.0);
    if let (Some(a), Some(b)) = (alpha, beta) {
        if b < 0.0 || (a - b - 1.0).abs() > 1e-9 {
            e(
                &format!("{base}.alpha"),
                format!(
                    "αβ needs β >= 0 and α − β = 1 to conserve relevance, found α = {a}, β = {b}"
                ),
            );
        }
    }
    if let Some(g) = gamma {
        if g <= 0.0 {
            e(
                &format!("{base}.gamma"),
                format!("expected γ > 0, found {g}"),
            );
        }
    }
    if let (Some(l), Some(h)) = (low, high) {
        if l >= h {
            e(
                &format!("{base}.low"),
                format!("expected low < high, found {l} >= {h}"),
            );
        }
    }
    ChosenRules {
        dense,
        conv,
        first,
        alpha,
        beta,
        gamma,
        low,
        high,
    }
}

fn score_spec(sc: &RawScore, base: &str, e: &mut dyn FnMut(&str, String)) -> Option<ScoreSpec> {
    let m = sc.method;
    let mut only = |field: &str, set: bool, methods: &str| {
        if set {
            e(
                &format!("{base}.{field}"),
                format!("only used with `method: {methods}`"),
            );
        }
    };
    for (field, set) in [
        ("rule", sc.rule.is_some()),
        ("conv_rule", sc.conv_rule.is_some()),
        ("first_layer", sc.first_layer.is_some()),
        ("composite", sc.composite.is_some()),
        ("alpha", sc.alpha.is_some()),
        ("beta", sc.beta.is_some()),
        ("gamma", sc.gamma.is_some()),
        ("low", sc.low.is_some()),
        ("high", sc.high.is_some()),
    ] {
        only(field, set && m != ScoreMethod::Lrp, "lrp");
    }
    only(
        "epsilon",
        sc.epsilon.is_some() && m != ScoreMethod::Lrp,
        "lrp",
    );
    only(
        "aggregate.abs",
        sc.aggregate.abs != AbsMode::None
            && !matches!(m, ScoreMethod::Lrp | ScoreMethod::GradientXInput),
        "lrp` or `gradient_x_input",
    );
    only(
        "labels",
        sc.labels.is_some() && m != ScoreMethod::Fisher,
        "fisher",
    );
    only(
        "gradients",
        sc.gradients.is_some() && m != ScoreMethod::Fisher,
        "fisher",
    );
    only(
        "batch_size",
        sc.batch_size.is_some() && sc.gradients != Some(GradientMode::PerBatch),
        "fisher` with `gradients: per_batch",
    );
    let weight_level = matches!(
        m,
        ScoreMethod::Fisher | ScoreMethod::Mas | ScoreMethod::Sig | ScoreMethod::Si
    );
    only(
        "unit_rule",
        sc.unit_rule.is_some() && !weight_level,
        "fisher`, `mas`, `sig` or `si",
    );
    only(
        "damping",
        sc.damping.is_some() && m != ScoreMethod::Si,
        "si",
    );
    let sal = m == ScoreMethod::Saliency;
    only("similarity", sc.similarity.is_some() && !sal, "saliency");
    for (field, set) in [
        ("class_aggregate", sc.class_aggregate.is_some()),
        ("dense", sc.dense.is_some()),
        ("fullgrad_normalize", sc.fullgrad_normalize.is_some()),
        ("visualize", sc.visualize.is_some()),
    ] {
        only(field, set && !sal, "saliency");
    }
    let uses_reference = !matches!(
        m,
        ScoreMethod::Magnitude | ScoreMethod::Random | ScoreMethod::Si
    );
    only(
        "reference_size",
        sc.reference_size.is_some() && !uses_reference,
        "lrp`, `gradient_x_input`, `fisher`, `mas`, `sig` or `saliency",
    );
    only(
        "reference_split",
        sc.reference_split.is_some() && !uses_reference,
        "lrp`, `gradient_x_input`, `fisher`, `mas`, `sig` or `saliency",
    );
    let reference_size = match sc.reference_size {
        None if uses_reference => {
            e(
                &format!("{base}.reference_size"),
                "required: reference samples per task, e.g. 100".into(),
            );
            1
        }
        Some(r) if r < 1 => {
            e(
                &format!("{base}.reference_size"),
                format!("expected an integer >= 1, found {r}"),
            );
            1
        }
        Some(r) => r as usize,
        None => 0,
    };
    let reference_split = sc.reference_split.unwrap_or_default();
    let unit_rule = sc.unit_rule.unwrap_or_default();
    let normalize = sc.aggregate.normalize;
    Some(match m {
        ScoreMethod::Lrp => {
            let epsilon = sc.epsilon.unwrap_or(1e-6);
            checked(
                e,
                &format!("{base}.epsilon"),
                epsilon,
                epsilon > 0.0,
                "a number > 0",
            );
            let r = lrp_rules(sc, base, e);
            ScoreSpec::Lrp {
                rule: r.dense,
                conv_rule: r.conv,
                first_layer: r.first,
                alpha: r.alpha,
                beta: r.beta,
                gamma: r.gamma,
                low: r.low,
                high: r.high,
                epsilon,
                reference_size,
                reference_split,
                abs: sc.aggregate.abs,
                normalize,
            }
        }
        ScoreMethod::Magnitude => ScoreSpec::Magnitude { normalize },
        ScoreMethod::Fisher => {
            let gradients = sc.gradients.unwrap_or(GradientMode::PerSample);
            let batch_size = match (gradients, sc.batch_size) {
                (GradientMode::PerSample, _) => 1,
                (GradientMode::PerBatch, None) => {
                    e(
                        &format!("{base}.batch_size"),
                        "required with `gradients: per_batch`".into(),
                    );
                    1
                }
                (GradientMode::PerBatch, Some(b)) if b < 1 => {
                    e(
                        &format!("{base}.batch_size"),
                        format!("expected an integer >= 1, found {b}"),
                    );
                    1
                }
                (GradientMode::PerBatch, Some(b)) => b as usize,
            };
            ScoreSpec::Fisher {
                labels: sc.labels.unwrap_or(FisherLabels::GroundTruth),
                gradients,
                batch_size,
                reference_size,
                reference_split,
                unit_rule,
                normalize,
            }
        }
        ScoreMethod::Mas => ScoreSpec::Mas {
            reference_size,
            reference_split,
            unit_rule,
            normalize,
        },
        ScoreMethod::Sig => ScoreSpec::Sig {
            reference_size,
            reference_split,
            unit_rule,
            normalize,
        },
        ScoreMethod::Random => {
            if normalize != Normalize::None {
                e(
                    &format!("{base}.aggregate.normalize"),
                    "random scores are not normalised".into(),
                );
            }
            ScoreSpec::Random {}
        }
        ScoreMethod::Si => {
            let damping = sc.damping.unwrap_or(1e-3);
            checked(
                e,
                &format!("{base}.damping"),
                damping,
                damping > 0.0,
                "a damping ξ > 0",
            );
            ScoreSpec::Si {
                damping,
                unit_rule,
                normalize,
            }
        }
        ScoreMethod::GradientXInput => ScoreSpec::GradientXInput {
            reference_size,
            reference_split,
            abs: sc.aggregate.abs,
            normalize,
        },
        ScoreMethod::Saliency => {
            if normalize != Normalize::None {
                e(
                    &format!("{base}.aggregate.normalize"),
                    "saliency scores are similarities, compared within a layer; they are not normalised".into(),
                );
            }
            let similarity = sc.similarity.unwrap_or_else(|| {
                e(
                    &format!("{base}.similarity"),
                    "required with `method: saliency`: mse or pearson".into(),
                );
                crate::xai::saliency::Similarity::Mse
            });
            let visualize = sc.visualize.unwrap_or_default();
            if visualize.steps < 1 {
                e(
                    &format!("{base}.visualize.steps"),
                    "expected an integer >= 1".into(),
                );
            }
            for (field, v) in [("lr", visualize.lr), ("init_scale", visualize.init_scale)] {
                checked(
                    e,
                    &format!("{base}.visualize.{field}"),
                    v,
                    v > 0.0,
                    "a number > 0",
                );
            }
            ScoreSpec::Saliency {
                reference_size,
                reference_split,
                options: crate::xai::saliency::SaliencyOptions {
                    similarity,
                    class_aggregate: sc.class_aggregate.unwrap_or_default(),
                    dense: sc.dense.unwrap_or_default(),
                    fullgrad_normalize: sc.fullgrad_normalize.unwrap_or_default(),
                    visualize,
                },
            }
        }
    })
}

/// One entry of `strategies:`, checked: its freezing, EWC, correlation and schedule options
/// against each other and against the model (`saliency` needs conv layers). `all` is every
/// strategy, for `like:` references.
fn strategy(
    name: &str,
    s: &RawStrategy,
    all: &BTreeMap<String, RawStrategy>,
    model: &ModelSpec,
    e: &mut dyn FnMut(&str, String),
    ek: &mut dyn FnMut(&str, String, bool),
) -> Strategy {
    let base = format!("strategies.{name}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        ek(
            &base,
            "strategy names may use letters, digits, '_' and '-' only".into(),
            true,
        );
    }
    // Saliency compares filter visualisations with saliency maps: no filters, no method.
    let has_conv = model.arch.as_ref().is_some_and(|a| {
        a.layers
            .iter()
            .any(|l| matches!(l, crate::nn::arch::Op::Conv { .. }))
    });
    let saliency_at = [
        ("score", s.score.as_ref()),
        ("ewc.importance", s.ewc.as_ref().map(|w| &w.importance)),
    ];
    for (field, sc) in saliency_at {
        if !has_conv && sc.is_some_and(|sc| sc.method == ScoreMethod::Saliency) {
            e(
                &format!("{base}.{field}.method"),
                format!("`saliency` needs conv layers, but `model.kind: {}` has none; use `cnn`, `small_cnn` or `vgg16`, or another method", model.kind),
            );
        }
    }
    let only_with = |field: &str, set: bool, kind: &str, e: &mut dyn FnMut(&str, String)| {
        if set {
            e(
                &format!("{base}.{field}"),
                format!("only used with `freeze: {kind}`"),
            );
        }
    };
    // The score a freezing policy ranks units by: required, and checked.
    let required_score = |kind: &str, e: &mut dyn FnMut(&str, String)| match &s.score {
        None => {
            e(
                &format!("{base}.score"),
                format!("required with `freeze: {kind}`"),
            );
            None
        }
        Some(sc) => score_spec(sc, &format!("{base}.score"), e),
    };
    let lr_frozen = s.lr_frozen.unwrap_or(0.0);
    checked(
        e,
        &format!("{base}.lr_frozen"),
        lr_frozen,
        (0.0..=1.0).contains(&lr_frozen),
        "a multiplier in [0, 1]",
    );
    if s.schedule == Schedule::Joint && s.freeze != FreezeKind::None {
        e(
            &format!("{base}.freeze"),
            "a joint schedule trains once on all tasks; use `freeze: none`".into(),
        );
    }
    let ewc = s.ewc.as_ref().and_then(|w| {
        let eb = format!("{base}.ewc");
        if s.schedule == Schedule::Joint {
            e(
                &eb,
                "a joint schedule has no earlier tasks to consolidate".into(),
            );
        }
        checked(
            e,
            &format!("{eb}.lambda"),
            w.lambda,
            w.lambda >= 0.0,
            "a penalty strength >= 0",
        );
        let decay = match (w.mode, w.decay) {
            (EwcMode::Separate, Some(_)) => {
                e(
                    &format!("{eb}.decay"),
                    "only used with `mode: online`".into(),
                );
                None
            }
            (EwcMode::Separate, None) => None,
            (EwcMode::Online, d) => {
                let d = d.unwrap_or(1.0);
                checked(
                    e,
                    &format!("{eb}.decay"),
                    d,
                    d > 0.0 && d <= 1.0,
                    "a decay in (0, 1]",
                );
                Some(d)
            }
        };
        // Any method: unit-level scores become weight-level by the rule of
        // `score::ewc_importance`.
        let ib = format!("{eb}.importance");
        let importance = score_spec(&w.importance, &ib, e)?;
        Some(EwcSpec {
            lambda: w.lambda,
            mode: w.mode,
            decay,
            importance,
        })
    });
    let correlate = s.correlate.as_ref().map(|c| {
        let cb = format!("{base}.correlate");
        if s.schedule == Schedule::Joint {
            e(
                &cb,
                "correlations are taken after each task; a joint schedule has one".into(),
            );
        }
        if c.methods.len() + c.squared.len() < 2 {
            e(
                &format!("{cb}.methods"),
                "expected at least two methods to correlate".into(),
            );
        }
        let mut methods = std::collections::BTreeMap::new();
        for (name, m) in &c.methods {
            let mb = format!("{cb}.methods.{name}");
            if name.contains('^') || name.contains('/') {
                e(&mb, "method names may not contain '^' or '/'".into());
            }
            if !matches!(
                m.method,
                ScoreMethod::Fisher
                    | ScoreMethod::Mas
                    | ScoreMethod::Sig
                    | ScoreMethod::Si
                    | ScoreMethod::Random
            ) {
                e(
                    &format!("{mb}.method"),
                    "expected a weight-level method: fisher, mas, sig, si or random".into(),
                );
                continue;
            }
            if let Some(spec) = score_spec(m, &mb, e) {
                methods.insert(name.clone(), spec);
            }
        }
        for (i, q) in c.squared.iter().enumerate() {
            if !c.methods.contains_key(q) {
                e(
                    &format!("{cb}.squared.{i}"),
                    format!(
                        "no method `{q}`; expected one of {:?}",
                        c.methods.keys().collect::<Vec<_>>()
                    ),
                );
            }
        }
        CorrelateSpec {
            methods,
            squared: c.squared.clone(),
            accumulate: c.accumulate,
        }
    });
    if s.final_mask.is_some() && s.freeze == FreezeKind::None {
        e(
            &format!("{base}.final_mask"),
            "only meaningful with a freezing policy (`freeze: until_threshold`, `top_share` or `random`): without one nothing is scored or masked".into(),
        );
    }
    if let (FreezeKind::Random, Some(like)) = (s.freeze, &s.like) {
        let like_final = all.get(like).is_none_or(|o| o.final_mask.unwrap_or(true));
        if s.final_mask.unwrap_or(true) && !like_final {
            e(
                &format!("{base}.like"),
                format!("strategy `{like}` has `final_mask: false`, so it has no mask after the last task to match; give this strategy `final_mask: false` too"),
            );
        }
    }
    if s.isolate && s.freeze == FreezeKind::None {
        e(
            &format!("{base}.isolate"),
            "isolation masks old tasks down to their frozen units; it needs `freeze: until_threshold`, `top_share` or `random`".into(),
        );
    }
    if s.freeze != FreezeKind::TopShare {
        only_with("share", s.share.is_some(), "top_share", e);
    }
    let freeze = match s.freeze {
        FreezeKind::TopShare => {
            only_with("prune", s.prune.is_some(), "until_threshold", e);
            only_with("like", s.like.is_some(), "random", e);
            let share = match s.share {
                Some(v)
                    if checked(
                        e,
                        &format!("{base}.share"),
                        v,
                        v > 0.0 && v <= 1.0,
                        "a share in (0, 1]",
                    ) =>
                {
                    v
                }
                Some(_) => 1.0,
                None => {
                    e(
                        &format!("{base}.share"),
                        "required with `freeze: top_share`, e.g. 0.5".into(),
                    );
                    1.0
                }
            };
            let score = required_score("top_share", e);
            match score {
                Some(score) => FreezeSpec::TopShare {
                    score,
                    share,
                    lr_frozen,
                },
                None => FreezeSpec::None,
            }
        }
        FreezeKind::None => {
            only_with("score", s.score.is_some(), "until_threshold", e);
            only_with("prune", s.prune.is_some(), "until_threshold", e);
            only_with(
                "lr_frozen",
                s.lr_frozen.is_some(),
                "until_threshold` or `freeze: random",
                e,
            );
            only_with("like", s.like.is_some(), "random", e);
            FreezeSpec::None
        }
        FreezeKind::Random => {
            only_with("score", s.score.is_some(), "until_threshold", e);
            only_with("prune", s.prune.is_some(), "until_threshold", e);
            match &s.like {
                None => {
                    e(
                        &format!("{base}.like"),
                        "required with `freeze: random`: the strategy whose frozen counts to match"
                            .into(),
                    );
                    FreezeSpec::None
                }
                Some(like) => {
                    match all.get(like) {
                        Some(o)
                            if matches!(
                                o.freeze,
                                FreezeKind::UntilThreshold | FreezeKind::TopShare
                            ) => {}
                        Some(_) => e(
                            &format!("{base}.like"),
                            format!("strategy `{like}` must use `freeze: until_threshold` or `freeze: top_share`"),
                        ),
                        None => e(
                            &format!("{base}.like"),
                            format!(
                                "no strategy `{like}`; expected one of {:?}",
                                all.keys().collect::<Vec<_>>()
                            ),
                        ),
                    }
                    FreezeSpec::Random {
                        like: like.clone(),
                        lr_frozen,
                    }
                }
            }
        }
        FreezeKind::UntilThreshold => {
            only_with("like", s.like.is_some(), "random", e);
            let score = required_score("until_threshold", e);
            let prune = match &s.prune {
                None => {
                    e(
                        &format!("{base}.prune"),
                        "required with `freeze: until_threshold`".into(),
                    );
                    None
                }
                Some(p) => {
                    checked(
                        e,
                        &format!("{base}.prune.threshold"),
                        p.threshold,
                        p.threshold > 0.0 && p.threshold < 1.0,
                        "an accuracy drop in (0, 1)",
                    );
                    checked(
                        e,
                        &format!("{base}.prune.step_ratio"),
                        p.step_ratio,
                        p.step_ratio > 0.0 && p.step_ratio <= 1.0,
                        "a share in (0, 1]",
                    );
                    Some(PruneSpec {
                        threshold: p.threshold,
                        step_ratio: p.step_ratio,
                        search: p.search,
                    })
                }
            };
            match (score, prune) {
                (Some(score), Some(prune)) => FreezeSpec::UntilThreshold {
                    score,
                    prune,
                    lr_frozen,
                },
                _ => FreezeSpec::None,
            }
        }
    };
    Strategy {
        name: name.to_string(),
        freeze,
        joint: s.schedule == Schedule::Joint,
        isolate: s.isolate,
        final_mask: s.final_mask.unwrap_or(true),
        ewc,
        correlate,
    }
}

pub(super) fn validate(
    raw: RawPipeline,
    ctx: &Ctx,
    data: DataCheck,
) -> Result<Pipeline, SpecErrors> {
    // Errors at a key path's value, or (`ek`, for unknown keys and names) at the key.
    let errs: RefCell<Vec<SpecError>> = RefCell::new(Vec::new());
    let mut e = |p: &str, m: String| errs.borrow_mut().push(ctx.error(p, m));
    let mut ek =
        |p: &str, m: String, at_key: bool| errs.borrow_mut().push(ctx.error_at(p, m, at_key));

    // Dataset: IDX, or colour images (one `dataset:` or named `datasets:`).
    let source = parse_data(&raw, &mut ek);
    let idx = match &source {
        Some(ParsedData::Idx(d)) => Some(d),
        _ => None,
    };
    let test_files = match idx.map(|d| (&d.test_images, &d.test_labels)) {
        None | Some((None, None)) => None,
        Some((Some(i), Some(l))) => Some((i.clone(), l.clone())),
        Some((Some(_), None)) => {
            e(
                "dataset.test_labels",
                "required when `test_images` is given".into(),
            );
            None
        }
        Some((None, Some(_))) => {
            e(
                "dataset.test_images",
                "required when `test_labels` is given".into(),
            );
            None
        }
    };
    let test_fraction = match (idx, &test_files, idx.and_then(|d| d.test_fraction)) {
        (None, _, _) => None,
        (_, Some(_), Some(_)) => {
            e(
                "dataset.test_fraction",
                "not allowed with test files: the split is given".into(),
            );
            None
        }
        (_, None, None) => {
            e(
                "dataset",
                "expected `test_fraction` (a number in (0, 1)) or `test_images` and `test_labels`"
                    .into(),
            );
            None
        }
        (_, None, Some(f))
            if !checked(
                &mut e,
                "dataset.test_fraction",
                f,
                f > 0.0 && f < 1.0,
                "a number in (0, 1)",
            ) =>
        {
            None
        }
        (_, _, f) => f,
    };

    // Tasks.
    let mut tasks: Vec<Vec<u16>> = Vec::new();
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    let mut image_tasks: Vec<(ImageTask, String)> = Vec::new();
    let mut task_epochs: Vec<Option<usize>> = Vec::new();
    let (groups, permute_seed, group_path): (Vec<Vec<i64>>, Option<u64>, &str) = match &raw.tasks {
        RawTasks::Groups(g) => (g.clone(), None, "tasks"),
        RawTasks::Permuted(p) => {
            if !(1..=1000).contains(&p.count) {
                e(
                    "tasks.permuted.count",
                    format!("expected a task count in 1..=1000, found {}", p.count),
                );
            }
            if matches!(source, Some(ParsedData::Images { .. })) {
                e(
                    "tasks.permuted",
                    "permuted tasks need an IDX dataset (`format: idx`)".into(),
                );
            }
            (
                vec![p.classes.clone(); p.count.clamp(1, 1000) as usize],
                Some(p.seed),
                "tasks.permuted.classes",
            )
        }
        RawTasks::FromDatasets(list) => {
            match &source {
                Some(ParsedData::Images { single: false, .. }) => {}
                Some(_) => e(
                    "tasks",
                    "tasks of the form `{dataset: NAME, classes: ..}` name datasets under `datasets:`; with one `dataset:`, give class groups like [[0, 1], [2, 3]]".into(),
                ),
                None => {}
            }
            for (t, task) in list.iter().enumerate() {
                let path = format!("tasks.{t}");
                // A dataset whose block has errors is still named: no follow-up error here.
                if let Some(ParsedData::Images {
                    names,
                    single: false,
                    ..
                }) = &source
                {
                    if !names.contains(&task.dataset) {
                        e(
                            &format!("{path}.dataset"),
                            format!(
                                "no dataset `{}` under `datasets:` (named: {})",
                                task.dataset,
                                names.iter().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        );
                    }
                }
                task_epochs.push(match task.epochs {
                    None => None,
                    Some(0)
                        if t > 0
                            || raw.model.pretrained.is_none()
                            || raw.model.pretrained_head == Some(PretrainedHead::Drop) =>
                    {
                        e(
                            &format!("{path}.epochs"),
                            "0 epochs only for task 1 with `model.pretrained` and its head kept (`pretrained_head: task1`): keep the loaded weights".into(),
                        );
                        None
                    }
                    Some(n) if n < 0 => {
                        e(&format!("{path}.epochs"), format!("expected an integer >= 0, found {n}"));
                        None
                    }
                    Some(n) => Some(n as usize),
                });
                let classes = match &task.classes {
                    RawClasses::All => TaskClasses::All,
                    RawClasses::List(l) => {
                        TaskClasses::List(images::labels(l, &format!("{path}.classes"), &mut e))
                    }
                };
                image_tasks.push((
                    ImageTask {
                        dataset: task.dataset.clone(),
                        classes,
                    },
                    format!("{path}.classes"),
                ));
            }
            (Vec::new(), None, "tasks")
        }
    };
    if groups.is_empty() && image_tasks.is_empty() {
        e(
            "tasks",
            "expected at least one class group, e.g. `[[0, 1], [2, 3]]`".into(),
        );
    }
    let image_source = matches!(source, Some(ParsedData::Images { .. }));
    if image_source {
        if let (RawTasks::Groups(g), Some(ParsedData::Images { single, .. })) =
            (&raw.tasks, &source)
        {
            if !*single {
                e(
                    "tasks",
                    "with `datasets:`, each task names its dataset: `- {dataset: NAME, classes: all | [..]}`".into(),
                );
            }
            for (t, group) in g.iter().enumerate() {
                let path = format!("tasks.{t}");
                image_tasks.push((
                    ImageTask {
                        dataset: images::SINGLE.to_string(),
                        classes: TaskClasses::List(images::labels(group, &path, &mut e)),
                    },
                    path,
                ));
            }
        }
    }
    for (t, group) in groups.iter().enumerate().filter(|_| !image_source) {
        let gpath = if permute_seed.is_some() {
            group_path.to_string()
        } else {
            format!("tasks.{t}")
        };
        if permute_seed.is_some() && t > 0 {
            // Permuted tasks repeat one class group by construction.
            tasks.push(tasks[0].clone());
            continue;
        }
        if group.len() < 2 {
            e(
                &gpath,
                format!("a task needs at least two classes, found {}", group.len()),
            );
        }
        let mut g = Vec::new();
        for (i, &c) in group.iter().enumerate() {
            let p = format!("{gpath}.{i}");
            if !(0..=65535).contains(&c) {
                e(
                    &p,
                    format!("expected a class label in 0..=65535, found {c}"),
                );
                continue;
            }
            if let Some(prev) = seen.insert(c, t) {
                if prev == t {
                    e(&p, format!("class {c} appears twice in task {t}"));
                } else {
                    e(
                        &p,
                        format!(
                            "class {c} is already in task {prev}; class groups must not overlap"
                        ),
                    );
                }
            }
            g.push(c as u16);
        }
        tasks.push(g);
    }

    // Model.
    let model = super::model::validate_model(&raw.model, &mut e);

    // Training.
    let t = &raw.training;
    checked(
        &mut e,
        "training.lr",
        t.lr,
        t.lr > 0.0,
        "a learning rate > 0",
    );
    if t.batch_size < 1 {
        e(
            "training.batch_size",
            format!("expected an integer >= 1, found {}", t.batch_size),
        );
    }
    if t.epochs < 1 {
        e(
            "training.epochs",
            format!("expected an integer >= 1, found {}", t.epochs),
        );
    }
    checked(
        &mut e,
        "training.weight_decay",
        t.weight_decay,
        t.weight_decay >= 0.0,
        "a number >= 0",
    );
    let optimizer = match t.optimizer {
        OptimizerKind::Adam => {
            for (i, &b) in t.betas.iter().enumerate() {
                checked(
                    &mut e,
                    &format!("training.betas.{i}"),
                    b,
                    (0.0..1.0).contains(&b),
                    "a number in [0, 1)",
                );
            }
            checked(&mut e, "training.eps", t.eps, t.eps > 0.0, "a number > 0");
            if t.momentum != 0.0 {
                e(
                    "training.momentum",
                    "only used with `optimizer: sgd`".into(),
                );
            }
            OptimizerSpec::Adam {
                lr: t.lr,
                beta1: t.betas[0],
                beta2: t.betas[1],
                eps: t.eps,
            }
        }
        OptimizerKind::Sgd => {
            checked(
                &mut e,
                "training.momentum",
                t.momentum,
                (0.0..1.0).contains(&t.momentum),
                "a number in [0, 1)",
            );
            OptimizerSpec::Sgd {
                lr: t.lr,
                momentum: t.momentum,
            }
        }
    };

    // Seeds.
    let mut seeds = Vec::new();
    if raw.seeds.is_empty() {
        e("seeds", "expected at least one seed, e.g. `[0]`".into());
    }
    for (i, &s) in raw.seeds.iter().enumerate() {
        if s < 0 {
            e(
                &format!("seeds.{i}"),
                format!("expected a seed >= 0, found {s}"),
            );
        } else if seeds.contains(&(s as u64)) {
            e(&format!("seeds.{i}"), format!("seed {s} is listed twice"));
        } else {
            seeds.push(s as u64);
        }
    }

    // Strategies.
    let mut strategies = Vec::new();
    if raw.strategies.is_empty() {
        e(
            "strategies",
            "expected at least one strategy, e.g. `naive: {freeze: none}`".into(),
        );
    }
    for (name, s) in &raw.strategies {
        strategies.push(strategy(name, s, &raw.strategies, &model, &mut e, &mut ek));
    }

    if let (DataCheck::Required, Some(w)) = (data, &raw.model.pretrained) {
        if !w.is_file() {
            e(
                "model.pretrained",
                format!(
                    "weights file {} does not exist; convert torchvision's VGG-16 with the one-line Python command in README.md (\"VGG-16\")",
                    w.display()
                ),
            );
        }
    }

    // Data files (headers, counts, shapes), and the classes the tasks name.
    if let (DataCheck::Required, Some(d)) = (data, idx) {
        let input = model.arch.as_ref().map(|a| super::idx_data::ModelInput {
            shape: a.input,
            key: if raw.model.input_shape.is_some() {
                "model.input_shape"
            } else if raw.model.input_size.is_some() {
                "model.input_size"
            } else {
                "model.kind"
            },
            crop: raw
                .training
                .augment
                .as_ref()
                .and_then(|a| a.crop.as_ref())
                .and_then(|c| c.size)
                .and_then(|s| usize::try_from(s).ok()),
        });
        let pairs = super::idx_data::pairs(&d.images, &d.labels, test_files.as_ref());
        let present = super::idx_data::check(&pairs, input, &mut e);
        if let Some(present) = present {
            for (t, group) in groups.iter().enumerate().take(if permute_seed.is_some() {
                1
            } else {
                usize::MAX
            }) {
                let gpath = if permute_seed.is_some() {
                    group_path.to_string()
                } else {
                    format!("tasks.{t}")
                };
                for (i, &c) in group.iter().enumerate() {
                    if (0..=65535).contains(&c) && !present.iter().any(|&p| p as i64 == c) {
                        e(
                            &format!("{gpath}.{i}"),
                            format!(
                                "class {c} does not occur in the dataset (its classes are {:?})",
                                present
                            ),
                        );
                    }
                }
            }
        }
    }

    let image_data = match &source {
        Some(ParsedData::Images {
            datasets, single, ..
        }) => {
            let mut d = check_images(datasets, *single, &image_tasks, data, &mut e);
            d.epochs = task_epochs.clone();
            d.epochs.resize(d.tasks.len(), None);
            Some(d)
        }
        _ => None,
    };

    let single = matches!(&source, Some(ParsedData::Images { single: true, .. }));
    let protocol = super::protocol::check(
        t.augment.as_ref(),
        t.sampling.as_ref(),
        raw.evaluation.as_ref(),
        image_data
            .as_ref()
            .map(|d| d.sample_shape)
            .filter(|s| s[1] > 0),
        model.arch.as_ref().map(|a| a.input),
        match image_data.as_ref().and_then(|d| d.datasets.values().next()) {
            Some(ImageDatasetSpec::Cifar10(_) | ImageDatasetSpec::Cifar100(_)) if single => {
                "dataset"
            }
            _ if single => "dataset.size",
            _ => "datasets",
        },
        &mut e,
    );

    let resources = super::resources::check(
        raw.resources.as_ref(),
        &crate::stages::registry().kinds(),
        &mut ek,
    );

    let errs = errs.into_inner();
    if !errs.is_empty() {
        return Err(SpecErrors(errs));
    }
    Ok(Pipeline {
        name: raw.name.unwrap_or_else(|| {
            ctx.file
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default()
        }),
        source: ctx.file.clone(),
        data: match (image_data, idx) {
            (Some(images), _) => DataSource::Images(images),
            (None, Some(d)) => DataSource::Idx(DatasetSpec {
                format: match d.format {
                    DataFormat::Idx => "idx",
                },
                images: d.images.clone(),
                labels: d.labels.clone(),
                test_files,
                test_fraction,
                split_seed: d.split_seed,
            }),
            (None, None) => unreachable!("no errors means a dataset was parsed"),
        },
        tasks,
        permute_seed,
        model,
        training: TrainingSpec {
            optimizer,
            batch_size: t.batch_size as usize,
            epochs: t.epochs as usize,
            weight_decay: t.weight_decay,
            augment: protocol.augment,
            sampling: protocol.sampling,
        },
        test_crops: protocol.crops,
        seeds,
        strategies,
        resources,
    })
}

enum ParsedData {
    Idx(RawDataset),
    Images {
        /// The datasets whose blocks deserialized.
        datasets: BTreeMap<String, ImageDatasetSpec>,
        /// Every name under `datasets:`, also those whose blocks have errors.
        names: BTreeSet<String>,
        /// From one `dataset:` (named [`images::SINGLE`]) rather than `datasets:`.
        single: bool,
    },
}

/// Deserialize an IDX dataset block, collecting every error inside it with its key path.
fn parse_idx(
    v: &serde_yaml::Value,
    path: &str,
    e: &mut dyn FnMut(&str, String, bool),
) -> Option<RawDataset> {
    let c = super::collect::deserialize::<RawDataset>(v.clone(), path);
    for f in c.errors {
        e(&f.path, f.message, f.at_key);
    }
    c.value.filter(|_| c.clean)
}

fn is_idx(v: &serde_yaml::Value) -> bool {
    v.get("format").and_then(|f| f.as_str()) == Some("idx")
}

fn parse_data(raw: &RawPipeline, e: &mut dyn FnMut(&str, String, bool)) -> Option<ParsedData> {
    match (&raw.dataset, &raw.datasets) {
        (Some(_), Some(_)) => {
            e(
                "datasets",
                "give either one `dataset:` or named `datasets:`, not both".into(),
                false,
            );
            None
        }
        (None, None) => {
            e(
                "dataset",
                "missing: expected `dataset:` (one dataset) or `datasets:` (named datasets, one per task)".into(),
                false,
            );
            None
        }
        (Some(v), None) if is_idx(v) => parse_idx(v, "dataset", e).map(ParsedData::Idx),
        (Some(v), None) => {
            let spec = images::parse_dataset(v, "dataset", true, e)?;
            Some(ParsedData::Images {
                datasets: [(images::SINGLE.to_string(), spec)].into(),
                names: [images::SINGLE.to_string()].into(),
                single: true,
            })
        }
        (None, Some(map)) => {
            let mut datasets = BTreeMap::new();
            if map.is_empty() {
                e(
                    "datasets",
                    "expected at least one named dataset".into(),
                    false,
                );
            }
            for (name, v) in map {
                let path = format!("datasets.{name}");
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    e(&path, "dataset names use only [A-Za-z0-9_-]".into(), true);
                }
                if is_idx(v) {
                    e(
                        &format!("{path}.format"),
                        "IDX data is only supported as the single `dataset:`; named datasets are cifar10 | cifar100 | image_folder | adience".into(),
                        false,
                    );
                    continue;
                }
                if let Some(spec) = images::parse_dataset(v, &path, false, e) {
                    datasets.insert(name.clone(), spec);
                }
            }
            Some(ParsedData::Images {
                datasets,
                names: map.keys().cloned().collect(),
                single: false,
            })
        }
    }
}

/// Options, classes, one sample shape, and (with data required) the files of image datasets.
fn check_images(
    datasets: &BTreeMap<String, ImageDatasetSpec>,
    single: bool,
    tasks: &[(ImageTask, String)],
    data: DataCheck,
    e: &mut dyn FnMut(&str, String),
) -> ImageData {
    let path = |name: &str| images::dataset_path(name, single);
    let mut valid = BTreeSet::new();
    for (name, spec) in datasets {
        match spec.validate() {
            Ok(()) => {
                valid.insert(name.clone());
            }
            Err(crate::data::DataError::Invalid { field, msg }) => {
                e(&format!("{}.{field}", path(name)), msg)
            }
            Err(err) => e(&path(name), err.to_string()),
        }
    }
    let plain: Vec<ImageTask> = tasks.iter().map(|(t, _)| t.clone()).collect();
    for name in images::unused(datasets, &plain) {
        e(&path(&name), "not used by any task".into());
    }
    let mut shapes = datasets.iter().map(|(n, s)| (n, s.sample_shape()));
    let first = shapes.next();
    if let Some((n0, s0)) = first {
        for (n, s) in shapes {
            if s != s0 {
                e(
                    &path(n),
                    format!(
                        "decodes to samples of shape {s:?}, but dataset `{n0}` to {s0:?}; every task feeds one model, so give every dataset the same `size` (CIFAR is fixed at 32)"
                    ),
                );
            }
        }
    }
    let mut counts: BTreeMap<String, usize> = datasets
        .iter()
        .filter_map(|(n, s)| images::known_class_count(s).map(|c| (n.clone(), c)))
        .collect();
    let mut files = BTreeMap::new();
    if data == DataCheck::Required {
        for (name, spec) in datasets.iter().filter(|(n, _)| valid.contains(*n)) {
            if let ImageDatasetSpec::ImageFolder(crate::data::image_set::ImageFolderSpec {
                train,
                ..
            }) = spec
            {
                match crate::data::image_folder::class_folders(train) {
                    Ok(c) => {
                        counts.insert(name.clone(), c.len());
                    }
                    Err(err) => {
                        e(&path(name), err.to_string());
                        continue;
                    }
                }
            }
            match images::declared_files(name, spec) {
                Ok(f) => files.extend(f),
                Err(err) => e(&path(name), err.to_string()),
            }
        }
    }
    images::check_tasks(tasks, &|d| counts.get(d).copied(), e);
    ImageData {
        datasets: datasets.clone(),
        tasks: plain,
        files,
        sample_shape: first.map_or([3, 0, 0], |(_, s)| s),
        epochs: Vec::new(),
    }
}
