//! The LRP rules' vocabulary and the dense layer's backward step, shared by the MLP's
//! ([`super::dense`]) and conv models' ([`super::conv`]) relevance passes.

use crate::nn::tensor::Matrix;
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

/// Added, with the sign of the denominator, to every denominator but ε's; it only matters
/// where a denominator is (almost) zero, and then the numerators vanish too. cfpipe's default
/// ([`LrpRules::stabilizer`]); zennit's is [`ZENNIT_STABILIZER`].
pub const STABILIZER: f32 = 1e-9;

/// zennit 0.5.1's stabilizer for every rule but ε (an f64, as a pipeline spells it and its key
/// records it).
pub const ZENNIT_STABILIZER: f64 = 1e-6;

/// Whether z⁺, αβ and w² count the bias in their denominators.
///
/// With `ignore` (cfpipe's original convention) they redistribute the contributions `a_j w_kj`
/// alone and conserve relevance exactly. With `include` (zennit's) the positive part of the
/// bias joins z⁺'s total and its negative part z⁻'s, and w²'s denominator is `Σ_i w_ki² +
/// b_k²`, so the bias absorbs its share. ε and γ always count the bias, flat and zᴮ never
/// (zennit's zᴮ subtracts `b⁺ + b⁻ = b` from the `b` it adds).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrpBias {
    #[default]
    Ignore,
    Include,
}

impl LrpBias {
    pub fn is_ignore(&self) -> bool {
        *self == LrpBias::Ignore
    }
}

/// How relevance passes a max-pooling layer.
///
/// `proportional` (cfpipe's) treats the pool like any layer, `R_j = a_j ∂z/∂a_j · R / z`: the
/// window's maximum takes `R` unless it is zero, and then `R` is lost. `gradient` (zennit's,
/// which leaves max-pooling to autograd) hands `R` to the first maximum of the window whatever
/// its value, as rules that give relevance to zero activations (flat, w², zᴮ) need to conserve
/// it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrpMaxPool {
    #[default]
    Proportional,
    Gradient,
}

impl LrpMaxPool {
    pub fn is_proportional(&self) -> bool {
        *self == LrpMaxPool::Proportional
    }
}

fn default_stabilizer() -> f32 {
    STABILIZER
}

fn is_default_stabilizer(s: &f32) -> bool {
    *s == STABILIZER
}

/// One layer's propagation rule.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LrpRule {
    Epsilon,
    Zplus,
    AlphaBeta,
    Gamma,
    Flat,
    WSquare,
    ZBox,
}

/// When the absolute value is taken relative to summing a unit's relevance over the reference
/// samples (and, for conv filters, over positions): how relevance becomes a unit's score, for
/// LRP and gradient × input alike.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AbsMode {
    /// Signed sum: units whose relevance is negative rank lowest.
    #[default]
    None,
    /// Sum of |R| over samples.
    BeforeSum,
    /// |sum of R| over samples.
    AfterSum,
}

/// Which rule each layer uses, and the rules' parameters. Conv layers get `conv` once the
/// model has any; `first` (if set) overrides the layer that reads the input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrpRules {
    pub dense: LrpRule,
    pub conv: LrpRule,
    pub first: Option<LrpRule>,
    pub epsilon: f32,
    pub alpha: f32,
    pub beta: f32,
    pub gamma: f32,
    pub low: f32,
    pub high: f32,
    // Beyond the original convention, keyed only when not the default, so earlier keys of
    // score and explain stages stay valid.
    #[serde(default, skip_serializing_if = "LrpBias::is_ignore")]
    pub bias: LrpBias,
    #[serde(
        default = "default_stabilizer",
        skip_serializing_if = "is_default_stabilizer"
    )]
    pub stabilizer: f32,
    #[serde(default, skip_serializing_if = "LrpMaxPool::is_proportional")]
    pub max_pool: LrpMaxPool,
}

impl LrpRules {
    /// LRP-ε everywhere (RNF for an MLP).
    pub fn epsilon(epsilon: f32) -> Self {
        LrpRules {
            dense: LrpRule::Epsilon,
            conv: LrpRule::Zplus,
            first: None,
            epsilon,
            alpha: 1.0,
            beta: 0.0,
            gamma: 0.25,
            low: 0.0,
            high: 1.0,
            bias: LrpBias::Ignore,
            stabilizer: STABILIZER,
            max_pool: LrpMaxPool::Proportional,
        }
    }

    /// These rules under zennit 0.5.1's convention: the bias counted by z⁺, αβ and w², its
    /// stabilizer, and max-pooling by the gradient.
    pub fn zennit(mut self) -> Self {
        self.bias = LrpBias::Include;
        self.stabilizer = ZENNIT_STABILIZER as f32;
        self.max_pool = LrpMaxPool::Gradient;
        self
    }

    /// The rules as a caption reads them, with the parameters each uses, e.g. `dense ε
    /// (ε = 1e-6), conv z⁺` (the conv rule only for a model with conv layers).
    pub fn describe(&self, conv: bool) -> String {
        let one = |r: LrpRule| -> String {
            match r {
                LrpRule::Epsilon => format!("ε (ε = {:e})", self.epsilon),
                LrpRule::Zplus => "z⁺".into(),
                LrpRule::AlphaBeta => format!("αβ (α = {}, β = {})", self.alpha, self.beta),
                LrpRule::Gamma => format!("γ (γ = {})", self.gamma),
                LrpRule::Flat => "flat".into(),
                LrpRule::WSquare => "w²".into(),
                LrpRule::ZBox => format!("zᴮ [{}, {}]", self.low, self.high),
            }
        };
        let mut parts = Vec::new();
        if let Some(f) = self.first {
            parts.push(format!("input layer {}", one(f)));
        }
        if conv {
            parts.push(format!("conv {}", one(self.conv)));
        }
        parts.push(format!("dense {}", one(self.dense)));
        if self.bias == LrpBias::Include {
            parts.push("bias counted".into());
        }
        if self.stabilizer != STABILIZER {
            parts.push(format!("stabilizer {:e}", self.stabilizer));
        }
        if self.max_pool == LrpMaxPool::Gradient {
            parts.push("max-pool by gradient".into());
        }
        parts.join(", ")
    }

    /// The rule of dense layer `l` (0 reads the input).
    pub fn for_dense(&self, l: usize) -> LrpRule {
        match self.first {
            Some(r) if l == 0 => r,
            _ => self.dense,
        }
    }
}

/// Per-sample relevance of every hidden unit and every input, for one batch.
#[derive(Debug, Clone)]
pub struct Relevance {
    pub batch: usize,
    /// `hidden[l]`: row-major `[batch, units_l]` relevance of hidden layer `l`'s outputs.
    pub hidden: Vec<Vec<f32>>,
    /// `[batch, input_dim]` relevance of the input features.
    pub input: Vec<f32>,
    /// The explained logit per sample.
    pub explained: Vec<f32>,
}

/// `z ± s` with the sign of `z` (`sign(0) = +1`), so the result is never closer to zero.
pub(crate) fn stabilise<S: Shape, D: Device<f32>>(
    z: Tensor<S, f32, D>,
    s: f32,
) -> Tensor<S, f32, D> {
    let shape = *z.shape();
    let dev = z.device().clone();
    let stab = z
        .ge(0.0)
        .choose(dev.ones_like(&shape) * s, dev.ones_like(&shape) * -s);
    z + stab
}

fn positive<D: Device<f32>>(t: Matrix<D>) -> Matrix<D> {
    t.relu()
}

fn negative<D: Device<f32>>(t: Matrix<D>) -> Matrix<D> {
    t.clone() - t.relu()
}

/// `Σ_j (a_j w_kj)⁺` (or `⁻` with `neg`) as `[batch, out]`, plus `b_k⁺` (or `b_k⁻`) when the
/// bias counts, and the matching backward product `R_j = Σ_k (a_j w_kj)^± s_k` for `s:
/// [batch, out]` (the bias's share stays with the bias).
fn signed_part<D: Device<f32>>(
    a: &Matrix<D>,
    w: &Matrix<D>,
    b: Option<&Tensor<(usize,), f32, D>>,
    neg: bool,
) -> (Matrix<D>, impl Fn(Matrix<D>) -> Matrix<D>) {
    let (ap, an) = (positive(a.clone()), negative(a.clone()));
    let (wp, wn) = (positive(w.clone()), negative(w.clone()));
    // (a w)⁺ = a⁺w⁺ + a⁻w⁻ and (a w)⁻ = a⁺w⁻ + a⁻w⁺.
    let (w_for_ap, w_for_an) = if neg { (wn, wp) } else { (wp, wn) };
    let mut z = ap
        .clone()
        .matmul(w_for_ap.clone().permute::<_, Axes2<1, 0>>())
        + an.clone()
            .matmul(w_for_an.clone().permute::<_, Axes2<1, 0>>());
    if let Some(b) = b {
        let part = if neg {
            b.clone() - b.clone().relu()
        } else {
            b.clone().relu()
        };
        let shape = *z.shape();
        z = z + part.broadcast_like::<_, Axis<0>>(&shape);
    }
    let back = move |s: Matrix<D>| {
        ap.clone() * s.clone().matmul(w_for_ap.clone()) + an.clone() * s.matmul(w_for_an.clone())
    };
    (z, back)
}

/// Relevance of one dense layer's inputs `a: [batch, in]` from its outputs' `r: [batch, out]`.
/// `z` is the layer's pre-activation (used by ε, which must stay bit-identical to its
/// original form).
#[allow(clippy::too_many_arguments)]
pub(crate) fn dense_backward<D: Device<f32>>(
    rule: LrpRule,
    rules: &LrpRules,
    a: &Matrix<D>,
    z: &Matrix<D>,
    w: &Matrix<D>,
    b: &Tensor<(usize,), f32, D>,
    r: Matrix<D>,
) -> Matrix<D> {
    let (batch, n_in) = *a.shape();
    let n_out = w.shape().0;
    let dev = a.device().clone();
    match rule {
        LrpRule::Epsilon => {
            let shape = *z.shape();
            let sign = z.ge(0.0);
            let stab = sign.choose(
                dev.ones_like(&shape) * rules.epsilon,
                dev.ones_like(&shape) * -rules.epsilon,
            );
            let s = r / (z.clone() + stab);
            a.clone() * s.matmul(w.clone())
        }
        LrpRule::Zplus | LrpRule::AlphaBeta => {
            let (alpha, beta) = if rule == LrpRule::Zplus {
                (1.0, 0.0)
            } else {
                (rules.alpha, rules.beta)
            };
            let bias = (rules.bias == LrpBias::Include).then_some(b);
            let (zp, back_p) = signed_part(a, w, bias, false);
            let mut out = back_p(r.clone() / stabilise(zp, rules.stabilizer)) * alpha;
            if beta != 0.0 {
                let (zn, back_n) = signed_part(a, w, bias, true);
                out = out - back_n(r / stabilise(zn, rules.stabilizer)) * beta;
            }
            out
        }
        LrpRule::Gamma => {
            let wg = w.clone() + positive(w.clone()) * rules.gamma;
            let bg = b.clone() + b.clone().relu() * rules.gamma;
            let zg = a.clone().matmul(wg.clone().permute::<_, Axes2<1, 0>>())
                + bg.broadcast_like::<_, Axis<0>>(&(batch, n_out));
            let s = r / stabilise(zg, rules.epsilon.max(rules.stabilizer));
            a.clone() * s.matmul(wg)
        }
        LrpRule::Flat => {
            let total = r.sum::<(usize,), Axis<1>>(); // [batch]
            (total / n_in as f32).broadcast_like::<_, Axis<1>>(&(batch, n_in))
        }
        LrpRule::WSquare => {
            let w2 = w.clone() * w.clone();
            let mut denom = w2.clone().sum::<(usize,), Axis<1>>(); // [out]
            if rules.bias == LrpBias::Include {
                denom = denom + b.clone() * b.clone();
            }
            let denom = stabilise(
                denom.broadcast_like::<_, Axis<0>>(&(batch, n_out)),
                rules.stabilizer,
            );
            (r / denom).matmul(w2)
        }
        LrpRule::ZBox => {
            let (wp, wn) = (positive(w.clone()), negative(w.clone()));
            let ones = dev.ones_like(&(batch, n_in));
            let z = a.clone().matmul(w.clone().permute::<_, Axes2<1, 0>>())
                - ones.clone().matmul(wp.clone().permute::<_, Axes2<1, 0>>()) * rules.low
                - ones.matmul(wn.clone().permute::<_, Axes2<1, 0>>()) * rules.high;
            let s = r / stabilise(z, rules.stabilizer);
            a.clone() * s.clone().matmul(w.clone())
                - s.clone().matmul(wp) * rules.low
                - s.matmul(wn) * rules.high
        }
    }
}
