//! `consolidate`: the EWC penalty that later tasks train against, accumulated across tasks.
//!
//! After task t, a weight-level importance Ω_t by any score method (`score::ewc_importance`):
//! `fisher`, `mas`, `sig` on the task's reference samples at the trained parameters θ_t, or
//! `si` from task t's training path, as they are; a unit-level method (`lrp`,
//! `gradient_x_input`, `magnitude`, `random`) gives each trunk parameter the |score| of its
//! unit (a unit's incoming weights, a filter's whole `C·kh·kw` row, and its bias), with the
//! method's `aggregate` applied as in the score stage.
//! Zenke et al.'s SI surrogate is `mode: online` with `decay: 1` and `method: si`. The penalty on later training
//! is `λ Σ_i A_i (θ_i − θ̂_i)²` over the trunk's parameters, stored in expanded form as per
//! parameter `A`, `B = A·θ̂` and the constant `C = Σ A θ̂²`, so both modes cost the same:
//!
//! - `separate` (Kirkpatrick et al.): one quadratic per earlier task,
//!   `Σ_k Ω_k (θ − θ_k)²`, i.e. `A = Σ_k Ω_k`, `B = Σ_k Ω_k θ_k`, `C = Σ_k Ω_k θ_k²`.
//! - `online` (Schwarz et al.): one quadratic around the latest parameters with decayed
//!   importance, `A = γ·A_prev + Ω_t`, `B = A θ_t`, `C = Σ A θ_t²`.
//!
//! Per-task heads are not penalised: an old head never trains again, and the new head is new.
//! A shared or class-incremental head (`model.heads`) trains on every task, so it is
//! penalised like the trunk; a grown class-incremental head's new outputs start without a
//! penalty (their rows are appended, so the earlier rows keep their terms).

use super::artifacts::json_bytes;
use super::{on_device, score, split_and_model};
use crate::exec::{Artifact, Stage, StageContext, StageError};
use crate::nn::tensorio::{self, HostTensor, TensorMapExt};
use crate::spec::ScoreSpec;
use crate::xai::importance::EwcMode;
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub struct Consolidate;

/// The consolidate stage's parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub task_index: usize,
    pub seed: u64,
    pub mode: EwcMode,
    /// Online mode: the decay γ of earlier importance (1 in separate mode, where it is unused).
    pub decay: f64,
    pub importance: ScoreSpec,
}

/// The penalty terms per trunk parameter tensor, in the device order `[w0, b0, w1, b1, …]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Penalty {
    pub a: Vec<Vec<f32>>,
    pub b: Vec<Vec<f32>>,
    pub c: f64,
}

pub const PENALTY_TENSORS: &str = "penalty.safetensors";
pub const CONSOLIDATE_JSON: &str = "consolidate.json";

#[derive(Debug, Serialize)]
struct Report {
    task_index: usize,
    mode: EwcMode,
    reference_samples: usize,
    /// Σ Ω_t per trunk layer (weights and bias), before accumulation.
    importance_totals: Vec<f64>,
    /// Σ A per trunk layer, after accumulation.
    accumulated_totals: Vec<f64>,
}

impl Penalty {
    pub fn save(&self, art: &mut Artifact) {
        let mut m = BTreeMap::new();
        for (i, (a, b)) in self.a.iter().zip(&self.b).enumerate() {
            m.insert(format!("a.{i}"), HostTensor::f32(vec![a.len()], a.clone()));
            m.insert(format!("b.{i}"), HostTensor::f32(vec![b.len()], b.clone()));
        }
        m.insert("c".into(), HostTensor::f32(vec![1], vec![self.c as f32]));
        art.insert(PENALTY_TENSORS, tensorio::encode(&m));
    }

    /// Load and check against the penalised parameters' sizes. With `grown`, the last two
    /// tensors (a class-incremental head's weight and bias) may be shorter, from before the
    /// head grew; the new rows get no penalty (zeros).
    pub fn load(
        ctx: &StageContext,
        slot: &str,
        sizes: &[usize],
        grown: bool,
    ) -> Result<Self, StageError> {
        let last = sizes.len().saturating_sub(2);
        let bad = |e: String| StageError::invalid(format!("{PENALTY_TENSORS}: {e}"));
        let mut m = tensorio::decode(&ctx.read_input(slot, PENALTY_TENSORS)?)
            .map_err(|e| bad(e.to_string()))?;
        let mut take = |name: String, n: usize, pad: bool| -> Result<Vec<f32>, StageError> {
            let (_, mut v) = m.take_f32(&name).map_err(|e| bad(e.to_string()))?;
            if pad && v.len() < n {
                v.resize(n, 0.0);
            }
            if v.len() != n {
                return Err(bad(format!("{name} has {} values, expected {n}", v.len())));
            }
            Ok(v)
        };
        let mut a = Vec::new();
        let mut b = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let pad = grown && i >= last;
            a.push(take(format!("a.{i}"), n, pad)?);
            b.push(take(format!("b.{i}"), n, pad)?);
        }
        let c = take("c".into(), 1, false)?[0] as f64;
        Ok(Penalty { a, b, c })
    }

    /// `Σ A θ² − 2 B θ + C`: the penalty's value before λ.
    pub fn value(&self, theta: &[Vec<f32>]) -> f64 {
        let mut v = self.c;
        for ((a, b), t) in self.a.iter().zip(&self.b).zip(theta) {
            for ((&a, &b), &t) in a.iter().zip(b).zip(t) {
                v += a as f64 * (t as f64).powi(2) - 2.0 * b as f64 * t as f64;
            }
        }
        v
    }
}

/// How many device tensors (`[w0, b0, …]`, trunk then heads) the penalty covers: the trunk's,
/// and the head's where every task trains it (see the module docs).
pub fn penalised_tensors(host: &crate::nn::model::ModelParams) -> usize {
    2 * host.scenario.shared_layers(host.trunk.len())
}

/// Add task importance `omega` at parameters `theta` to `prev` (see the module docs).
pub fn accumulate(
    prev: Option<&Penalty>,
    omega: &[Vec<f32>],
    theta: &[Vec<f32>],
    mode: EwcMode,
    decay: f64,
) -> Penalty {
    let map = |x: &[Vec<f32>], y: &[Vec<f32>], f: &dyn Fn(f32, f32) -> f32| -> Vec<Vec<f32>> {
        x.iter()
            .zip(y)
            .map(|(x, y)| x.iter().zip(y).map(|(&x, &y)| f(x, y)).collect())
            .collect()
    };
    let sum_sq = |a: &[Vec<f32>]| -> f64 {
        a.iter()
            .zip(theta)
            .flat_map(|(a, t)| a.iter().zip(t))
            .map(|(&a, &t)| a as f64 * (t as f64).powi(2))
            .sum()
    };
    let zeros: Vec<Vec<f32>> = theta.iter().map(|t| vec![0.0; t.len()]).collect();
    let (pa, pb, pc) = match prev {
        Some(q) => (q.a.clone(), q.b.clone(), q.c),
        None => (zeros.clone(), zeros, 0.0),
    };
    match mode {
        EwcMode::Separate => Penalty {
            a: map(&pa, omega, &|pa, o| pa + o),
            b: map(&pb, &map(omega, theta, &|o, t| o * t), &|pb, ot| pb + ot),
            c: pc + sum_sq(omega),
        },
        EwcMode::Online => {
            let g = decay as f32;
            let a = map(&pa, omega, &|pa, o| g * pa + o);
            let b = map(&a, theta, &|a, t| a * t);
            let c = sum_sq(&a);
            Penalty { a, b, c }
        }
    }
}

impl Stage for Consolidate {
    fn kind(&self) -> &'static str {
        "consolidate"
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
    let (omega, n_ref) = score::ewc_importance(
        ctx,
        dev,
        &p.importance,
        &host,
        task,
        split.dim(),
        p.seed,
        p.task_index,
    )?;
    // The penalised tensors in device order; the path's last layer is the head.
    let layers = penalised_tensors(&host) / 2;
    let omega_t: Vec<Vec<f32>> = omega.layers[..layers]
        .iter()
        .flat_map(|(w, b)| [w, b])
        .map(|v| v.iter().map(|&x| x as f32).collect())
        .collect();
    let theta: Vec<Vec<f32>> = host
        .layers()
        .take(layers)
        .flat_map(|l| [l.weight.clone(), l.bias.clone()])
        .collect();
    let sizes: Vec<usize> = theta.iter().map(Vec::len).collect();
    let prev = match ctx.input_opt("penalty") {
        Some(_) => Some(Penalty::load(
            ctx,
            "penalty",
            &sizes,
            host.scenario.grows(),
        )?),
        None => None,
    };
    let penalty = accumulate(prev.as_ref(), &omega_t, &theta, p.mode, p.decay);
    let layer_total = |v: &[Vec<f32>]| -> Vec<f64> {
        v.chunks(2)
            .map(|wb| wb.iter().flatten().map(|&x| x as f64).sum())
            .collect()
    };
    let report = Report {
        task_index: p.task_index,
        mode: p.mode,
        reference_samples: n_ref,
        importance_totals: layer_total(&omega_t),
        accumulated_totals: layer_total(&penalty.a),
    };
    ctx.log(format!(
        "Ω totals per trunk layer {:?}, accumulated {:?}",
        report.importance_totals, report.accumulated_totals
    ));
    let mut art = Artifact::new();
    penalty.save(&mut art);
    art.insert(CONSOLIDATE_JSON, json_bytes(&report));
    Ok(art)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Σ_k Σ_i Ω_k,i (θ_i − θ_k,i)²`, directly.
    fn direct(terms: &[(Vec<f32>, Vec<f32>)], theta: &[f32]) -> f64 {
        terms
            .iter()
            .map(|(o, t)| {
                o.iter()
                    .zip(t)
                    .zip(theta)
                    .map(|((&o, &tk), &th)| o as f64 * (th as f64 - tk as f64).powi(2))
                    .sum::<f64>()
            })
            .sum()
    }

    #[test]
    fn separate_mode_is_one_quadratic_per_task_and_online_decays() {
        let (o1, t1) = (vec![vec![0.5f32, 2.0, 0.0]], vec![vec![1.0f32, -1.0, 3.0]]);
        let (o2, t2) = (vec![vec![1.5f32, 0.25, 1.0]], vec![vec![0.5f32, 0.0, -2.0]]);
        let theta = [0.25f32, 0.75, 1.0];
        let p1 = accumulate(None, &o1, &t1, EwcMode::Separate, 1.0);
        let p2 = accumulate(Some(&p1), &o2, &t2, EwcMode::Separate, 1.0);
        let want = direct(
            &[
                (o1[0].clone(), t1[0].clone()),
                (o2[0].clone(), t2[0].clone()),
            ],
            &theta,
        );
        assert!((p2.value(&[theta.to_vec()]) - want).abs() < 1e-5, "{want}");
        // Online: one quadratic around the latest parameters with γ-decayed importance.
        let q1 = accumulate(None, &o1, &t1, EwcMode::Online, 0.5);
        let q2 = accumulate(Some(&q1), &o2, &t2, EwcMode::Online, 0.5);
        let decayed: Vec<f32> = o1[0].iter().zip(&o2[0]).map(|(a, b)| 0.5 * a + b).collect();
        let want = direct(&[(decayed, t2[0].clone())], &theta);
        assert!((q2.value(&[theta.to_vec()]) - want).abs() < 1e-5, "{want}");
    }
}
