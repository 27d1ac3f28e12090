//! `score`: importance of every hidden unit for one task.
//!
//! `method: magnitude` scores a unit by the L2 norm of its incoming weights and bias (the
//! classic pruning baseline). `method: lrp` uses LRP on a reference set: the reference set is `reference_size` samples drawn (seeded, without replacement) from the
//! task's *test* split, as in the RNF paper. Relevance is taken w.r.t. the ground-truth logit
//! of the task's head. A unit's score aggregates its per-sample relevance by the explicit,
//! keyed choices `abs` (signed sum, sum of |R|, or |sum R|) and `normalize` (none, or per layer
//! by max |score| or sum |score|).

use super::artifacts::{self, json_bytes, TaskData};
use super::{on_device, rng_for, split_and_model};
use crate::exec::{Artifact, Stage, StageContext, StageError};
use crate::nn::model::DeviceModel;
use crate::nn::model::ModelParams;
use crate::nn::tensor::Matrix;
use crate::spec::raw::{Normalize, ReferenceSplit};
use crate::spec::ScoreSpec;
use crate::xai::importance;
use crate::xai::lrp::{AbsMode, LrpRule, LrpRules, Relevance};
use dfdx::prelude::*;
use rand::seq::index::sample;
use rand::Rng;
use serde::{Deserialize, Serialize};

pub struct Score;

/// The score stage's parameters: the checked score spec, tagged by `method`, beside the task
/// and the seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub task_index: usize,
    pub seed: u64,
    #[serde(flatten)]
    pub method: ScoreSpec,
}

#[derive(Debug, Serialize)]
struct ScoreReport {
    task_index: usize,
    method: String,
    reference_samples: usize,
    /// Mean explained logit over the reference set (LRP only).
    mean_explained: f64,
    /// Per layer: sum of the unit scores before normalisation.
    layer_totals: Vec<f64>,
}

pub const SCORE_JSON: &str = "score.json";
const LRP_BATCH: usize = 256;
/// Reference images per FullGrad pass (a batch's tape holds every layer's activations).
const SALIENCY_BATCH: usize = 64;
pub const SALIENCY_TENSORS: &str = "saliency.safetensors";

impl Stage for Score {
    fn kind(&self) -> &'static str {
        "score"
    }
    fn version(&self) -> u32 {
        super::keyed_version(1, super::Numerics::Kernels)
    }
    fn run(&self, ctx: &StageContext) -> Result<Artifact, StageError> {
        on_device!(ctx, run_on)
    }
}

/// Aggregate per-sample relevance `[batch, units]` into per-unit sums, by `abs`.
pub fn aggregate(per_sample: &[f32], units: usize, abs: AbsMode, acc: &mut [f64]) {
    for row in per_sample.chunks_exact(units) {
        for (a, &r) in acc.iter_mut().zip(row) {
            *a += match abs {
                AbsMode::BeforeSum => (r as f64).abs(),
                AbsMode::None | AbsMode::AfterSum => r as f64,
            };
        }
    }
}

/// Finish aggregation: `abs: after_sum` and per-layer normalisation.
pub fn finish(mut layer: Vec<f64>, abs: AbsMode, normalize: Normalize) -> Vec<f32> {
    if abs == AbsMode::AfterSum {
        layer.iter_mut().for_each(|v| *v = v.abs());
    }
    let denom = match normalize {
        Normalize::None => 1.0,
        Normalize::LayerMax => layer.iter().fold(0f64, |m, v| m.max(v.abs())),
        Normalize::LayerSum => layer.iter().map(|v| v.abs()).sum(),
    };
    let denom = if denom > 0.0 { denom } else { 1.0 };
    layer.into_iter().map(|v| (v / denom) as f32).collect()
}

/// L2 norm of each hidden unit's incoming weights and bias, per layer.
pub fn magnitude_scores(host: &ModelParams) -> Vec<Vec<f64>> {
    host.trunk
        .iter()
        .map(|l| {
            l.weight
                .chunks_exact(l.in_dim)
                .zip(&l.bias)
                .map(|(row, &b)| {
                    (row.iter().map(|&w| (w as f64).powi(2)).sum::<f64>() + (b as f64).powi(2))
                        .sqrt()
                })
                .collect()
        })
        .collect()
}

/// Per-unit sums (by `abs`) of a per-sample attribution over the reference set, in batches,
/// and the mean explained logit.
#[allow(clippy::too_many_arguments)]
fn per_sample_units<D: Device<f32>>(
    dev: &D,
    ctx: &StageContext,
    host: &ModelParams,
    x_all: &[u8],
    y_all: &[crate::nn::tensor::Label],
    dim: usize,
    abs: AbsMode,
    phase: &str,
    attribute: impl Fn(&DeviceModel<D>, &Matrix<D>, &[crate::nn::tensor::Label]) -> Relevance,
) -> Result<(Vec<Vec<f64>>, f64), StageError> {
    let model = DeviceModel::from_host(dev, host);
    let sizes = host.hidden_sizes();
    let mut sums: Vec<Vec<f64>> = sizes.iter().map(|&u| vec![0f64; u]).collect();
    let mut explained = 0f64;
    let batch = model.batch_within(LRP_BATCH, 1, true);
    ctx.progress
        .phase(phase, y_all.len().div_ceil(batch) as u64);
    for (xb, yb) in x_all.chunks(batch * dim).zip(y_all.chunks(batch)) {
        ctx.check_cancel()?;
        let x = model.input(xb);
        let r = attribute(&model, &x, yb);
        for (l, h) in r.hidden.iter().enumerate() {
            aggregate(h, sizes[l], abs, &mut sums[l]);
        }
        explained += r.explained.iter().map(|&v| v as f64).sum::<f64>();
        ctx.progress.inc(1);
    }
    Ok((sums, explained / y_all.len().max(1) as f64))
}

/// The reference samples of a task: `size` drawn seeded, without replacement, from the chosen
/// split, in index order, as `(pixels, local labels)`.
pub fn reference_samples(
    task: &TaskData,
    dim: usize,
    size: usize,
    from: ReferenceSplit,
    seed: u64,
    task_index: usize,
) -> Result<(Vec<u8>, Vec<crate::nn::tensor::Label>), StageError> {
    let samples = match from {
        ReferenceSplit::Test => &task.test,
        ReferenceSplit::Train => &task.train,
        ReferenceSplit::Validation => task.validation(task_index)?,
    };
    let n = size.min(samples.len());
    let mut idx = sample(
        &mut rng_for(seed, task_index, "reference"),
        samples.len(),
        n,
    )
    .into_vec();
    idx.sort_unstable();
    let mut xb = Vec::with_capacity(n * dim);
    let mut yb = Vec::with_capacity(n);
    for &i in &idx {
        xb.extend_from_slice(&samples.x[i * dim..(i + 1) * dim]);
        yb.push(samples.y[i]);
    }
    Ok((xb, yb))
}

/// Weight-level importance of the path of `head` by a weight-level method (`fisher`, `mas`,
/// `sig` on the method's reference samples; `si` from the path integral that trained the model
/// in input slot `model`), with the number of reference samples; `None` for unit-level methods.
#[allow(clippy::too_many_arguments)]
pub fn weight_importance<D: Device<f32>>(
    ctx: &StageContext,
    dev: &D,
    spec: &ScoreSpec,
    host: &ModelParams,
    task: &TaskData,
    dim: usize,
    seed: u64,
    task_index: usize,
) -> Result<Option<(importance::WeightImportance, usize)>, StageError> {
    let head = host.scenario.head(task_index);
    let reference = |size, from| reference_samples(task, dim, size, from, seed, task_index);
    let model = || DeviceModel::from_host(dev, host);
    let (imp, n) = match *spec {
        ScoreSpec::Fisher {
            labels,
            gradients,
            batch_size,
            reference_size,
            reference_split,
            ..
        } => {
            let (x, y) = reference(reference_size, reference_split)?;
            let b = importance::Batch { x: &x, y: &y, dim };
            let imp = importance::fisher(&model(), &b, head, labels, gradients, batch_size);
            (imp, y.len())
        }
        ScoreSpec::Mas {
            reference_size,
            reference_split,
            ..
        } => {
            let (x, y) = reference(reference_size, reference_split)?;
            let imp = importance::mas(&model(), &importance::Batch { x: &x, y: &y, dim }, head);
            (imp, y.len())
        }
        ScoreSpec::Sig {
            reference_size,
            reference_split,
            ..
        } => {
            let (x, y) = reference(reference_size, reference_split)?;
            let imp = importance::sig(&model(), &importance::Batch { x: &x, y: &y, dim }, head);
            (imp, y.len())
        }
        ScoreSpec::Si { damping, .. } => {
            let si = artifacts::load_si(ctx, "model")?;
            (si_importance(&si, host, head, damping)?, 0)
        }
        _ => return Ok(None),
    };
    Ok(Some((imp, n)))
}

/// Weight-level importance Ω of the path of `head` by any method, for EWC, with the number of
/// reference samples. Weight-level methods give theirs (`weight_importance`). A unit-level
/// method (`lrp`, `gradient_x_input`, `magnitude`, `random`) gives every trunk parameter the
/// |score| of the unit it belongs to, the score as the score stage stores it (`aggregate`
/// applied): all of unit j's incoming weights (its row; a filter's `C·kh·kw` values) and its
/// bias get |s_j|. Absolute, because a negative Ω would make the penalty concave. The head
/// gets 0: its units are the logits, which no unit score covers, and consolidation does not
/// penalise heads.
#[allow(clippy::too_many_arguments)]
pub fn ewc_importance<D: Device<f32>>(
    ctx: &StageContext,
    dev: &D,
    spec: &ScoreSpec,
    host: &ModelParams,
    task: &TaskData,
    dim: usize,
    seed: u64,
    task_index: usize,
) -> Result<(importance::WeightImportance, usize), StageError> {
    if let Some(w) = weight_importance(ctx, dev, spec, host, task, dim, seed, task_index)? {
        return Ok(w);
    }
    let u = unit_scores(ctx, dev, spec, host, task, dim, seed, task_index, None)?;
    let head = host.scenario.head(task_index);
    let h = host
        .heads
        .get(head)
        .ok_or_else(|| StageError::invalid(format!("model has no head {head}")))?;
    let mut shapes = Vec::new();
    let mut layers = Vec::new();
    for (l, s) in host.trunk.iter().zip(u.finished()) {
        // A unit scored −∞ (saliency's `dense: free`) is one the method leaves free: Ω = 0.
        let s: Vec<f64> = s
            .iter()
            .map(|&v| if v.is_finite() { (v as f64).abs() } else { 0.0 })
            .collect();
        let w = s
            .iter()
            .flat_map(|&v| std::iter::repeat_n(v, l.in_dim))
            .collect();
        shapes.push((l.out_dim, l.in_dim));
        layers.push((w, s));
    }
    shapes.push((h.out_dim, h.in_dim));
    layers.push((vec![0.0; h.out_dim * h.in_dim], vec![0.0; h.out_dim]));
    Ok((
        importance::WeightImportance { shapes, layers },
        u.reference_samples,
    ))
}

/// SI importance `max(ω, 0) / (Δθ² + ξ)` of the path of `head`, from the training that produced
/// the model. A parameter that training never touched (another task's head) has none; the path
/// integral is only ever negative through noise, and a negative importance would make an EWC
/// penalty concave, so it is clipped at 0.
pub fn si_importance(
    si: &std::collections::BTreeMap<String, crate::nn::tensorio::HostTensor>,
    host: &ModelParams,
    head: usize,
    damping: f64,
) -> Result<importance::WeightImportance, StageError> {
    let n_trunk = host.trunk.len();
    let path: Vec<usize> = (0..n_trunk).chain([n_trunk + head]).collect();
    let layers_all: Vec<&crate::nn::model::DenseParams> = host.layers().collect();
    let mut shapes = Vec::new();
    let mut layers = Vec::new();
    for &l in &path {
        let layer = layers_all.get(l).ok_or_else(|| {
            StageError::invalid(format!("model has no layer {l} for head {head}"))
        })?;
        shapes.push((layer.out_dim, layer.in_dim));
        let part = |i: usize, n: usize| -> Result<Vec<f64>, StageError> {
            let name = artifacts::param_name(i, n_trunk);
            let get = |k: &str| {
                si.get(&format!("{k}/{name}"))
                    .and_then(|t| t.as_f32())
                    .filter(|v| v.len() == n)
                    .ok_or_else(|| {
                        StageError::invalid(format!(
                            "{}: no {k} of {n} values for `{name}` (the model was not trained on task {})",
                            artifacts::SI_TENSORS,
                            head + 1
                        ))
                    })
            };
            let (omega, delta) = (get("omega")?, get("delta")?);
            Ok(omega
                .iter()
                .zip(delta)
                .map(|(&w, &d)| (w as f64).max(0.0) / ((d as f64).powi(2) + damping))
                .collect())
        };
        let w = part(2 * l, layer.out_dim * layer.in_dim)?;
        let b = part(2 * l + 1, layer.out_dim)?;
        layers.push((w, b));
    }
    Ok(importance::WeightImportance { shapes, layers })
}

/// Raw per-unit scores of one method, before `finish`: per hidden layer, the sums that the
/// score stage aggregates, with the `abs` and `normalize` that finish them.
pub struct UnitScores {
    pub sums: Vec<Vec<f64>>,
    pub abs: AbsMode,
    pub normalize: Normalize,
    pub reference_samples: usize,
    /// Mean explained logit over the reference set (LRP, gradient × input, saliency).
    pub explained: f64,
    pub method: &'static str,
    /// Maps a method keeps for inspection (saliency: class maps and filter visualisations),
    /// stored as `saliency.safetensors`.
    pub maps: Option<std::collections::BTreeMap<String, crate::nn::tensorio::HostTensor>>,
}

impl UnitScores {
    /// The score stage's unit scores: `abs: after_sum` and normalisation applied per layer.
    pub fn finished(&self) -> Vec<Vec<f32>> {
        self.sums
            .iter()
            .map(|l| finish(l.clone(), self.abs, self.normalize))
            .collect()
    }
}

/// Unit scores of the path of `head` by any method, exactly as the score stage computes them.
/// `saliency` scores from `visualizations` when given (the score stage's `visualize` input),
/// and otherwise visualises the filters here from the same seeded stream, which gives the
/// same bits (EWC's consolidation does this: its importance has no stage of its own).
#[allow(clippy::too_many_arguments)]
pub fn unit_scores<D: Device<f32>>(
    ctx: &StageContext,
    dev: &D,
    spec: &ScoreSpec,
    host: &ModelParams,
    task: &TaskData,
    dim: usize,
    seed: u64,
    task_index: usize,
    visualizations: Option<&crate::xai::saliency::Visualizations>,
) -> Result<UnitScores, StageError> {
    let head = host.scenario.head(task_index);
    let reference = |size: usize, from: ReferenceSplit| {
        reference_samples(task, dim, size, from, seed, task_index)
    };
    let mut maps = None;
    let (sums, abs, normalize, n_ref, explained, method) = match *spec {
        ScoreSpec::Magnitude { normalize } => (
            magnitude_scores(host),
            AbsMode::None,
            normalize,
            0,
            0.0,
            "magnitude-l2-incoming",
        ),
        ScoreSpec::Random {} => {
            let mut rng = rng_for(seed, task_index, "random_scores");
            let s = host
                .hidden_sizes()
                .iter()
                .map(|&u| (0..u).map(|_| rng.gen::<f64>()).collect())
                .collect();
            (s, AbsMode::None, Normalize::None, 0, 0.0, "random")
        }
        ScoreSpec::Fisher {
            unit_rule,
            normalize,
            ..
        }
        | ScoreSpec::Mas {
            unit_rule,
            normalize,
            ..
        }
        | ScoreSpec::Sig {
            unit_rule,
            normalize,
            ..
        }
        | ScoreSpec::Si {
            unit_rule,
            normalize,
            ..
        } => {
            let (imp, n) = weight_importance(ctx, dev, spec, host, task, dim, seed, task_index)?
                .expect("a weight-level method");
            let name = match spec {
                ScoreSpec::Fisher { .. } => "fisher",
                ScoreSpec::Mas { .. } => "mas",
                ScoreSpec::Si { .. } => "si",
                _ => "sig",
            };
            (
                importance::to_units(&imp, unit_rule),
                AbsMode::None,
                normalize,
                n,
                0.0,
                name,
            )
        }
        ScoreSpec::Lrp {
            rule,
            conv_rule,
            first_layer,
            alpha,
            beta,
            gamma,
            low,
            high,
            bias,
            stabilizer,
            max_pool,
            epsilon,
            reference_size,
            reference_split,
            abs,
            normalize,
        } => {
            let mut rules = LrpRules::epsilon(epsilon as f32);
            rules.bias = bias;
            rules.max_pool = max_pool;
            if let Some(s) = stabilizer {
                rules.stabilizer = s as f32;
            }
            rules.dense = rule;
            rules.conv = conv_rule.unwrap_or(LrpRule::Zplus);
            rules.first = first_layer;
            let set = |slot: &mut f32, v: Option<f64>| {
                if let Some(v) = v {
                    *slot = v as f32;
                }
            };
            set(&mut rules.alpha, alpha);
            set(&mut rules.beta, beta);
            set(&mut rules.gamma, gamma);
            set(&mut rules.low, low);
            set(&mut rules.high, high);
            let name = if rules == LrpRules::epsilon(epsilon as f32) {
                "lrp-epsilon"
            } else {
                "lrp"
            };
            let (x, y) = reference(reference_size, reference_split)?;
            let (sums, explained) =
                per_sample_units(dev, ctx, host, &x, &y, dim, abs, "lrp", |m, xb, yb| {
                    crate::xai::lrp::lrp(m, xb, yb, head, &rules)
                })?;
            (sums, abs, normalize, y.len(), explained, name)
        }
        ScoreSpec::GradientXInput {
            reference_size,
            reference_split,
            abs,
            normalize,
        } => {
            let (x, y) = reference(reference_size, reference_split)?;
            let (sums, explained) = per_sample_units(
                dev,
                ctx,
                host,
                &x,
                &y,
                dim,
                abs,
                "gradient_x_input",
                |m, xb, yb| crate::xai::lrp::gradient_x_input(m, xb, yb, head),
            )?;
            (sums, abs, normalize, y.len(), explained, "gradient_x_input")
        }
        ScoreSpec::Saliency {
            reference_size,
            reference_split,
            options,
        } => {
            let (x, y) = reference(reference_size, reference_split)?;
            let model = DeviceModel::from_host(dev, host);
            let layers = host.hidden_sizes().len() as u64;
            let batch = model.batch_within(SALIENCY_BATCH, 1, true);
            let tick = || {
                ctx.progress.inc(1);
                ctx.check_cancel()
            };
            let r = match visualizations {
                Some(vis) => {
                    ctx.progress
                        .phase("saliency", y.len().div_ceil(batch) as u64 + layers);
                    crate::xai::saliency::saliency_scores_with(
                        &model, &x, &y, head, &options, batch, vis, tick,
                    )
                }
                None => {
                    // One more tick per conv layer: its visualisation.
                    ctx.progress
                        .phase("saliency", y.len().div_ceil(batch) as u64 + 2 * layers);
                    let mut rng = super::visualize::visualize_rng(seed, task_index);
                    crate::xai::saliency::saliency_scores(
                        &model, &x, &y, head, &options, batch, &mut rng, tick,
                    )
                }
            }?
            .map_err(|e| StageError::invalid(e.to_string()))?;
            for (l, (before, after)) in r.activation_gain.iter().enumerate() {
                ctx.log(format!(
                    "conv layer {l}: mean visualised activation {before:.4e} -> {after:.4e}"
                ));
            }
            maps = Some(r.maps);
            (
                r.scores,
                AbsMode::None,
                Normalize::None,
                y.len(),
                r.explained,
                "saliency",
            )
        }
    };
    Ok(UnitScores {
        sums,
        abs,
        normalize,
        reference_samples: n_ref,
        explained,
        method,
        maps,
    })
}

fn run_on<D: Device<f32>>(dev: &D, ctx: &StageContext) -> Result<Artifact, StageError> {
    let p: Params = ctx.params()?;
    let (split, host) = split_and_model(ctx, p.task_index)?;
    let task = split.task(p.task_index)?;
    // Saliency reads its filter visualisations from the `visualize` stage (input slot
    // `visualize`), which scores of other similarities share.
    let vis = match p.method {
        ScoreSpec::Saliency { .. } => Some(super::visualize::load(ctx, "visualize")?),
        _ => None,
    };
    let u = unit_scores(
        ctx,
        dev,
        &p.method,
        &host,
        task,
        split.dim(),
        p.seed,
        p.task_index,
        vis.as_ref(),
    )?;
    let scores = u.finished();
    let UnitScores {
        sums,
        reference_samples: n_ref,
        explained,
        method,
        maps,
        ..
    } = u;
    // Units a method never lets freeze (saliency's `dense: free`, −∞) add nothing to a total.
    let layer_totals: Vec<f64> = sums
        .iter()
        .map(|l| l.iter().filter(|v| v.is_finite()).fold(0.0, |a, v| a + v))
        .collect();
    for (l, t) in layer_totals.iter().enumerate() {
        ctx.log(format!("layer {l}: total score {t:.4}"));
    }
    let mut art = Artifact::new();
    artifacts::save_unit_f32(&mut art, &scores);
    if let Some(m) = maps {
        art.insert(SALIENCY_TENSORS, crate::nn::tensorio::encode(&m));
    }
    art.insert(
        SCORE_JSON,
        json_bytes(&ScoreReport {
            task_index: p.task_index,
            method: method.into(),
            reference_samples: n_ref,
            mean_explained: explained,
            layer_totals,
        }),
    );
    Ok(art)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abs_modes_differ_as_documented() {
        // Two samples, one unit: relevance +2 then -3.
        let rows = [2.0f32, -3.0];
        let mut a = vec![0f64];
        aggregate(&rows, 1, AbsMode::None, &mut a);
        assert_eq!(finish(a, AbsMode::None, Normalize::None), vec![-1.0]);
        let mut a = vec![0f64];
        aggregate(&rows, 1, AbsMode::BeforeSum, &mut a);
        assert_eq!(finish(a, AbsMode::BeforeSum, Normalize::None), vec![5.0]);
        let mut a = vec![0f64];
        aggregate(&rows, 1, AbsMode::AfterSum, &mut a);
        assert_eq!(finish(a, AbsMode::AfterSum, Normalize::None), vec![1.0]);
    }

    #[test]
    fn normalisation_per_layer() {
        assert_eq!(
            finish(vec![1.0, -4.0, 2.0], AbsMode::None, Normalize::LayerMax),
            vec![0.25, -1.0, 0.5]
        );
        assert_eq!(
            finish(vec![1.0, -1.0, 2.0], AbsMode::None, Normalize::LayerSum),
            vec![0.25, -0.25, 0.5]
        );
        assert_eq!(
            finish(vec![0.0, 0.0], AbsMode::None, Normalize::LayerMax),
            vec![0.0, 0.0]
        );
    }
}
