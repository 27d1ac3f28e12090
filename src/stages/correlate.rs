//! `correlate`: layer-by-layer correlations between the weight importances of several methods
//! (Kutalev's study), after one task.
//!
//! Every named method (`fisher`, `mas`, `sig`, `si`, `random`, with their options) gives one
//! importance per weight of the task's path at the trained parameters. With
//! `accumulate: true` (Kutalev: importances "calculated and accumulated" after each task), a
//! trunk layer's importances are summed over this and every earlier task, carried in
//! `importances.safetensors` from the previous `correlate`; under per-task heads the head layer
//! is the current task's own head, and under a shared or class-incremental head (`model.heads`)
//! the head's importances accumulate too (a grown head's earlier outputs are its first rows, so
//! the sum covers those and its new rows start from this task's). `squared` adds a method's element-wise square as one more method
//! (`mas^2`), for Kutalev's FIS ~ MAS² observation. Then, per layer and for every pair of
//! methods, Pearson's r and Spearman's ρ (ties get their average rank) over the layer's weights
//! (biases are left out, as in the paper).

use super::artifacts::json_bytes;
use super::{on_device, rng_for, score, split_and_model};
use crate::exec::{Artifact, Stage, StageContext, StageError};
use crate::nn::tensorio::{self, HostTensor, TensorMapExt};
use crate::spec::{CorrelateSpec, ScoreSpec};
use dfdx::prelude::*;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub struct Correlate;

/// The correlate stage's parameters: the strategy's checked `correlate` settings (flattened,
/// so `methods`, `squared` and `accumulate` sit beside the task and the seed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub task_index: usize,
    pub seed: u64,
    #[serde(flatten)]
    pub correlate: CorrelateSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PairCorrelation {
    pub a: String,
    pub b: String,
    pub pearson: f64,
    pub spearman: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerCorrelations {
    /// 0 reads the input; the last is the task's head.
    pub layer: usize,
    pub head: bool,
    /// `[out, in]`.
    pub shape: (usize, usize),
    pub pairs: Vec<PairCorrelation>,
}

/// The `correlate.json` artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CorrelateReport {
    pub task_index: usize,
    pub methods: Vec<String>,
    pub accumulate: bool,
    pub layers: Vec<LayerCorrelations>,
}

pub const CORRELATE_JSON: &str = "correlate.json";
pub const IMPORTANCES_TENSORS: &str = "importances.safetensors";

/// Pearson's r; 0 when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len()) as f64;
    if n == 0.0 {
        return 0.0;
    }
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        let (da, db) = (a - mx, b - my);
        sxy += da * db;
        sxx += da * da;
        syy += db * db;
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// 1-based ranks, ties sharing their average rank.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's ρ: Pearson's r of the ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

impl Stage for Correlate {
    fn kind(&self) -> &'static str {
        "correlate"
    }
    fn version(&self) -> u32 {
        super::keyed_version(1, super::Numerics::Kernels)
    }
    fn run(&self, ctx: &StageContext) -> Result<Artifact, StageError> {
        on_device!(ctx, run_on)
    }
}

fn run_on<D: Device<f32>>(dev: &D, ctx: &StageContext) -> Result<Artifact, StageError> {
    let p: Params = ctx.params()?;
    let (split, host) = split_and_model(ctx, p.task_index)?;
    let task = split.task(p.task_index)?;
    let n_trunk = host.trunk.len();
    let mut shapes: Vec<(usize, usize)> =
        host.trunk.iter().map(|l| (l.out_dim, l.in_dim)).collect();
    let h = &host.heads[host.scenario.head(p.task_index)];
    shapes.push((h.out_dim, h.in_dim));

    // Weight importances per method and path layer.
    let mut imps: BTreeMap<String, Vec<Vec<f64>>> = BTreeMap::new();
    for (name, spec) in &p.correlate.methods {
        ctx.check_cancel()?;
        let layers = match spec {
            ScoreSpec::Random {} => {
                let mut rng = rng_for(p.seed, p.task_index, &format!("random_weights/{name}"));
                shapes
                    .iter()
                    .map(|&(o, i)| (0..o * i).map(|_| rng.gen::<f64>()).collect())
                    .collect()
            }
            _ => {
                let (imp, _) = score::weight_importance(
                    ctx,
                    dev,
                    spec,
                    &host,
                    task,
                    split.dim(),
                    p.seed,
                    p.task_index,
                )?
                .ok_or_else(|| {
                    StageError::invalid(format!(
                        "method `{name}` has no weight-level importance; use fisher, mas, sig, si or random"
                    ))
                })?;
                imp.layers.into_iter().map(|(w, _)| w).collect()
            }
        };
        imps.insert(name.clone(), layers);
    }
    // The layers every task shares: the trunk, and the head unless each task has its own.
    let shared_layers = host.scenario.shared_layers(n_trunk);
    if p.correlate.accumulate && ctx.input_opt("previous").is_some() {
        let mut prev = tensorio::decode(&ctx.read_input("previous", IMPORTANCES_TENSORS)?)
            .map_err(|e| StageError::invalid(format!("{IMPORTANCES_TENSORS}: {e}")))?;
        for (name, layers) in imps.iter_mut() {
            for (l, w) in layers.iter_mut().take(shared_layers).enumerate() {
                let key = format!("{name}/layer{l}");
                let (_, v) = prev
                    .take_f32(&key)
                    .map_err(|e| StageError::invalid(format!("{IMPORTANCES_TENSORS}: {e}")))?;
                let grown = l == n_trunk && host.scenario.grows();
                if v.len() != w.len() && !(grown && v.len() < w.len()) {
                    return Err(StageError::invalid(format!(
                        "{IMPORTANCES_TENSORS}: {key} has {} values, the model {}",
                        v.len(),
                        w.len()
                    )));
                }
                for (a, b) in w.iter_mut().zip(v) {
                    *a += b as f64;
                }
            }
        }
    }
    let mut stored = BTreeMap::new();
    for (name, layers) in &imps {
        for (l, w) in layers.iter().take(shared_layers).enumerate() {
            stored.insert(
                format!("{name}/layer{l}"),
                HostTensor::f32(vec![w.len()], w.iter().map(|&v| v as f32).collect()),
            );
        }
    }
    for name in &p.correlate.squared {
        let layers = imps.get(name).ok_or_else(|| {
            StageError::invalid(format!("`squared` names `{name}`, which is not a method"))
        })?;
        let sq = layers
            .iter()
            .map(|w| w.iter().map(|v| v * v).collect())
            .collect();
        imps.insert(format!("{name}^2"), sq);
    }

    let methods: Vec<String> = imps.keys().cloned().collect();
    let mut layers = Vec::new();
    for (l, &shape) in shapes.iter().enumerate() {
        let mut pairs = Vec::new();
        for (i, a) in methods.iter().enumerate() {
            for b in &methods[i + 1..] {
                let (x, y) = (&imps[a][l], &imps[b][l]);
                pairs.push(PairCorrelation {
                    a: a.clone(),
                    b: b.clone(),
                    pearson: pearson(x, y),
                    spearman: spearman(x, y),
                });
            }
        }
        for pc in &pairs {
            ctx.log(format!(
                "layer {l}: {} ~ {}: pearson {:.4}, spearman {:.4}",
                pc.a, pc.b, pc.pearson, pc.spearman
            ));
        }
        layers.push(LayerCorrelations {
            layer: l,
            head: l == n_trunk,
            shape,
            pairs,
        });
    }
    let report = CorrelateReport {
        task_index: p.task_index,
        methods,
        accumulate: p.correlate.accumulate,
        layers,
    };
    let mut art = Artifact::new();
    art.insert(IMPORTANCES_TENSORS, tensorio::encode(&stored));
    art.insert(CORRELATE_JSON, json_bytes(&report));
    Ok(art)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlations_of_known_series() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!((pearson(&x, &x) - 1.0).abs() < 1e-12);
        let neg: Vec<f64> = x.iter().map(|v| -2.0 * v + 1.0).collect();
        assert!((pearson(&x, &neg) + 1.0).abs() < 1e-12);
        // Monotone but not linear: Spearman 1, Pearson below 1.
        let cube: Vec<f64> = x.iter().map(|v: &f64| v.powi(3)).collect();
        assert!((spearman(&x, &cube) - 1.0).abs() < 1e-12);
        assert!(pearson(&x, &cube) < 0.99);
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        assert_eq!(pearson(&x, &[2.0; 5]), 0.0);
        // Hand-computed: x = [1, 2, 3], y = [1, 3, 2] → r = 0.5.
        assert!((pearson(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]) - 0.5).abs() < 1e-12);
    }
}
