//! Saliency-guided filter scores (the `saliency` score method): a conv filter is important for a
//! task when what it looks for resembles where the task's classes are seen. Following "A Method
//! for Alleviating Catastrophic Forgetting With Explainability", each filter's *visualisation*
//! (activation maximisation, Erhan et al. 2009) is compared with each class's *FullGrad saliency
//! map* (Srinivas & Fleuret 2019), by MSE or Pearson correlation, and the per-class similarities
//! are aggregated into the filter's score; a `top_share` freeze then freezes the most similar
//! share of every layer's filters.
//!
//! Every choice below is explicit and keyed (it is part of [`SaliencyOptions`], which the score
//! stage serialises into its key):
//!
//! - **FullGrad** of the true-class logit `f` of the task's head, per reference image:
//!   `∂f/∂x ⊙ x` (the input part) and, per conv layer, `∂f/∂z ⊙ b` per channel and position (`z`
//!   the conv's pre-activation output, `b` its bias). For piecewise-linear networks (ReLU, leaky
//!   ReLU, max/avg pooling) with biases the input part plus every layer's bias part (dense layers
//!   and the head included) sums to `f` exactly: FullGrad's completeness (tested, before any
//!   post-processing). Post-processing, as the authors' `fullgrad-saliency` code does: `|·|`,
//!   min-max normalisation to [0, 1] (`fullgrad_normalize: per_layer` over a sample's whole
//!   `C×H×W` tensor of one layer, as that code; `per_channel` per channel map), bilinear
//!   upsampling to the input size (align-corners, as `F.interpolate(…, align_corners=True)`),
//!   summed over channels; the input part and every conv layer's part are summed. Dense layers'
//!   bias parts have no spatial layout and, as in that code, do not enter the map.
//! - **Class map**: the mean of the saliency maps of the class's reference images, min-max
//!   normalised to [0, 1]. A class without a reference image has no map and takes no part.
//! - **Visualisation** of filter `k` of a conv layer: from seeded noise (uniform in
//!   `±init_scale`, in the model's input space, i.e. after normalisation), `steps` steps of
//!   gradient ascent on the mean over positions of the filter's *pre-activation* map (after
//!   ReLU the gradient of a dead filter is zero everywhere; the `pytorch-cnn-visualizations`
//!   code the paper used also reads the conv output). Each step moves an image by
//!   `lr · g / rms(g)` (its gradient divided by that image's root-mean-square gradient), so
//!   `lr` is the RMS change per input value whatever a layer's gradient scale. One batch image
//!   per filter: one backward pass serves a whole layer. The image becomes an `H×W` map by the
//!   mean of `|·|` over colour channels, min-max normalised to [0, 1].
//! - **Similarity** per (class, filter): `mse` scores `−mean((v − s)²)` (larger = more similar),
//!   `pearson` the correlation coefficient (0 when either map is constant). `class_aggregate`
//!   (`mean` or `max`) over the task's classes gives the filter's score.
//! - **Dense units** have no visualisation: `dense: free` scores them `−∞`, which `top_share`
//!   never freezes (the paper freezes filters only); `dense: fullgrad` scores a unit by
//!   `Σ |∂f/∂z ⊙ b|` over the reference set, its FullGrad bias share.
//!
//! The visualisations depend on the model's trunk, `visualize` and the seed only, so the
//! pipeline computes them in their own stage (`stages::visualize`, [`visualize_filters`]) that
//! every similarity and aggregation of the same model shares; [`saliency_scores_with`] scores
//! from them, [`saliency_scores`] does both in one call.
//!
//! Requires conv layers: on an MLP (or a conv model without conv layers) it fails with
//! [`SaliencyError::NoConvLayers`].

use crate::nn::model::DeviceModel;
use crate::nn::seq::{self, Act, Layer};
use crate::nn::tensor::Label;
use crate::nn::tensor::Tensor4;
use crate::nn::tensor::{Matrix, Vector};
use crate::nn::tensorio::HostTensor;
use dfdx::prelude::*;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a filter's visualisation and a class's saliency map are compared.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Similarity {
    /// `−MSE`: larger is more similar.
    Mse,
    /// Pearson's correlation coefficient.
    Pearson,
}

/// How the per-class similarities of one filter become its score.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClassAggregate {
    #[default]
    Mean,
    Max,
}

/// Scores of dense (fully connected) trunk units, which have no visualisation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DensePolicy {
    /// `−∞`: never frozen by `top_share` (the paper freezes filters only).
    #[default]
    Free,
    /// `Σ |∂f/∂z ⊙ b|` over the reference set.
    Fullgrad,
}

/// The region over which FullGrad's min-max normalisation runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum MapNormalize {
    /// One sample's whole `C×H×W` tensor of a layer (the authors' code).
    #[default]
    PerLayer,
    /// Each channel's map separately.
    PerChannel,
}

/// Activation maximisation settings.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Visualize {
    pub steps: usize,
    /// RMS change per input value and step.
    pub lr: f64,
    /// The noise image is uniform in `±init_scale`.
    pub init_scale: f64,
}

impl Default for Visualize {
    fn default() -> Self {
        Visualize {
            steps: 20,
            lr: 0.1,
            init_scale: 0.1,
        }
    }
}

/// Everything the method's result depends on besides the model, the data and the seed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct SaliencyOptions {
    pub similarity: Similarity,
    pub class_aggregate: ClassAggregate,
    pub dense: DensePolicy,
    pub fullgrad_normalize: MapNormalize,
    pub visualize: Visualize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaliencyError {
    #[error("score.method: `saliency` compares filter visualisations with saliency maps and needs conv layers, but this model has none (an MLP); use `model.kind: cnn`, `small_cnn` or `vgg16`, or a method for any model (lrp, gradient_x_input, magnitude)")]
    NoConvLayers,
    #[error("visualisations do not fit the model: {0} (the `visualize` input must come from the same model)")]
    VisualizationMismatch(String),
}

/// An activation in a traced forward pass.
type TAct<D> = Act<D, OwnedTape<f32, D>>;

/// Zero probes added to pre-activations, kept untraced with their layer's bias.
type BiasProbes<D> = Vec<(Act<D>, Vector<D>)>;

/// One layer on a traced activation. With `probes`, a traced zero tensor is added to each conv
/// and dense pre-activation `z` (its gradient is `∂f/∂z`) and kept, untraced, with the layer's
/// bias.
fn apply_traced<D: Device<f32>>(
    layer: &Layer<D>,
    a: TAct<D>,
    probes: Option<&mut BiasProbes<D>>,
) -> TAct<D> {
    let z = seq::apply(layer, a);
    let Some(p) = probes else { return z };
    match (layer, z) {
        (Layer::Conv { bias, .. }, Act::Map(z)) => {
            let zero: Tensor4<D> = z.device().zeros_like(z.shape());
            p.push((Act::Map(zero.clone()), bias.clone()));
            Act::Map(z + zero.leaky_trace())
        }
        (Layer::Dense { bias, .. }, Act::Flat(z)) => {
            let zero: Matrix<D> = z.device().zeros_like(z.shape());
            p.push((Act::Flat(zero.clone()), bias.clone()));
            Act::Flat(z + zero.leaky_trace())
        }
        (_, z) => z,
    }
}

/// FullGrad's decomposition of one batch before post-processing.
pub struct FullGradParts {
    /// `[C, H, W]` of one input.
    pub input_shape: [usize; 3],
    /// `∂f/∂x ⊙ x`, `[N, C, H, W]`.
    pub input: Vec<f32>,
    /// Per conv layer: its output `(O, h, w)` and `∂f/∂z ⊙ b`, `[N, O, h, w]`.
    pub conv: Vec<((usize, usize, usize), Vec<f32>)>,
    /// Per dense layer (the head last): its units and `∂f/∂z ⊙ b`, `[N, units]`.
    pub dense: Vec<(usize, Vec<f32>)>,
    /// The explained logit `f` per sample.
    pub explained: Vec<f32>,
}

/// FullGrad's parts of the logit `labels[i]` of the network `layers` for each image of `x`.
pub fn fullgrad_parts<D: Device<f32>>(
    layers: &[Layer<D>],
    x: Tensor4<D>,
    labels: &[Label],
) -> FullGradParts {
    let (n, c, h, w) = *x.shape();
    let dev = x.device().clone();
    let mut probes: BiasProbes<D> = Vec::new();
    let mut a = Act::Map(x.leaky_trace());
    for layer in layers {
        a = apply_traced(layer, a, Some(&mut probes));
    }
    let Act::Flat(out) = a else {
        panic!("the network must end in dense layers (after Flatten)");
    };
    let classes = out.shape().1;
    let logits = out.as_vec();
    let mut pick = vec![0f32; n * classes];
    let mut explained = Vec::with_capacity(n);
    for (i, &y) in labels.iter().enumerate() {
        pick[i * classes + y as usize] = 1.0;
        explained.push(logits[i * classes + y as usize]);
    }
    let grads = (out * dev.tensor_from_vec(pick, (n, classes)))
        .sum::<(), _>()
        .backward();
    let input = (grads.get(&x) * x.clone()).as_vec();
    let mut convs = Vec::new();
    let mut dense = Vec::new();
    for (p, b) in &probes {
        let b = b.as_vec();
        match p {
            Act::Map(t) => {
                let (_, o, hh, ww) = *t.shape();
                let g = grads.get(t).as_vec();
                let hw = hh * ww;
                let v = g
                    .iter()
                    .enumerate()
                    .map(|(k, &gv)| gv * b[(k / hw) % o])
                    .collect();
                convs.push(((o, hh, ww), v));
            }
            Act::Flat(t) => {
                let o = t.shape().1;
                let g = grads.get(t).as_vec();
                let v = g.iter().enumerate().map(|(k, &gv)| gv * b[k % o]).collect();
                dense.push((o, v));
            }
        }
    }
    FullGradParts {
        input_shape: [c, h, w],
        input,
        conv: convs,
        dense,
        explained,
    }
}

/// `|·|` then min-max normalisation to [0, 1] of `t` `[N, C, H·W]`, over each sample's whole
/// tensor (`PerLayer`) or each channel (`PerChannel`); a constant region becomes 0.
pub fn post_process(t: &[f32], n: usize, c: usize, hw: usize, norm: MapNormalize) -> Vec<f32> {
    let mut out: Vec<f32> = t.iter().map(|v| v.abs()).collect();
    let region = match norm {
        MapNormalize::PerLayer => c * hw,
        MapNormalize::PerChannel => hw,
    };
    if region > 0 {
        debug_assert_eq!(out.len(), n * c * hw);
        out.chunks_mut(region).for_each(min_max);
    }
    out
}

/// Min-max normalisation in place to [0, 1]; a constant slice becomes 0.
pub fn min_max(v: &mut [f32]) {
    let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let span = hi - lo;
    for x in v.iter_mut() {
        *x = if span > 0.0 { (*x - lo) / span } else { 0.0 };
    }
}

/// Bilinear resampling of an `h×w` map to `oh×ow` with corners aligned (PyTorch's
/// `F.interpolate(mode='bilinear', align_corners=True)`).
pub fn upsample_bilinear(map: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let coord = |i: usize, n_in: usize, n_out: usize| -> (usize, usize, f32) {
        if n_out <= 1 || n_in <= 1 {
            return (0, 0, 0.0);
        }
        let s = i as f32 * (n_in - 1) as f32 / (n_out - 1) as f32;
        let lo = (s.floor() as usize).min(n_in - 1);
        let hi = (lo + 1).min(n_in - 1);
        (lo, hi, s - lo as f32)
    };
    let mut out = Vec::with_capacity(oh * ow);
    for i in 0..oh {
        let (y0, y1, fy) = coord(i, h, oh);
        for j in 0..ow {
            let (x0, x1, fx) = coord(j, w, ow);
            let top = map[y0 * w + x0] * (1.0 - fx) + map[y0 * w + x1] * fx;
            let bottom = map[y1 * w + x0] * (1.0 - fx) + map[y1 * w + x1] * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// Post-processed FullGrad saliency maps `[N, H·W]` of one batch's parts.
pub fn saliency_maps(parts: &FullGradParts, norm: MapNormalize) -> Vec<f32> {
    let [c, h, w] = parts.input_shape;
    let hw = h * w;
    let n = parts.explained.len();
    let mut maps = vec![0f32; n * hw];
    let mut add = |t: &[f32], ch: usize, th: usize, tw: usize| {
        let p = post_process(t, n, ch, th * tw, norm);
        for (i, sample) in p.chunks(ch * th * tw).enumerate() {
            let dst = &mut maps[i * hw..(i + 1) * hw];
            for m in sample.chunks(th * tw) {
                let up = if (th, tw) == (h, w) {
                    m.to_vec()
                } else {
                    upsample_bilinear(m, th, tw, h, w)
                };
                dst.iter_mut().zip(&up).for_each(|(d, u)| *d += u);
            }
        }
    };
    add(&parts.input, c, h, w);
    for ((o, th, tw), t) in &parts.conv {
        add(t, *o, *th, *tw);
    }
    maps
}

/// Activation maximisation of every filter of one conv layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Visualization {
    /// `[O, C, H, W]` in the model's input space.
    pub images: Vec<f32>,
    /// Per filter: the mean of its pre-activation map on the noise image and on the result.
    pub before: Vec<f32>,
    pub after: Vec<f32>,
}

/// Visualises the filters of the conv layer `layers[conv_at]` (whose input passes through
/// `layers[..conv_at]`) by gradient ascent from seeded noise (see the module docs), `chunk`
/// filters per forward and backward pass.
pub fn visualize_layer<D: Device<f32>>(
    dev: &D,
    layers: &[Layer<D>],
    conv_at: usize,
    input: [usize; 3],
    v: &Visualize,
    chunk: usize,
    rng: &mut impl Rng,
) -> Visualization {
    let Layer::Conv { weight, .. } = &layers[conv_at] else {
        panic!("layer {conv_at} is not a conv layer");
    };
    let o = weight.shape().0;
    let [c, h, w] = input;
    let len = c * h * w;
    let scale = v.init_scale as f32;
    let mut img: Vec<f32> = (0..o * len)
        .map(|_| (rng.gen::<f32>() * 2.0 - 1.0) * scale)
        .collect();
    // Per filter k: its mean pre-activation on image k, and the gradient of the sum of them.
    // Filters go through in chunks of `chunk` images (filters k0..k0+n on images k0..k0+n):
    // each image only feeds its own filter's objective, so chunks change memory, not results.
    let step_chunk = |img: &[f32], k0: usize, want_grad: bool| -> (Vec<f32>, Option<Vec<f32>>) {
        let n = img.len() / len;
        let x: Tensor4<D> = dev.tensor_from_vec(img.to_vec(), (n, c, h, w));
        let mut a = Act::Map(x.leaky_trace());
        for layer in &layers[..=conv_at] {
            a = apply_traced(layer, a, None);
        }
        let Act::Map(z) = a else {
            unreachable!("a conv layer gives maps")
        };
        let (_, zo, zh, zw) = *z.shape();
        let zhw = zh * zw;
        let vals = z.as_vec();
        let at = |i: usize| (i * zo + k0 + i) * zhw;
        let means: Vec<f32> = (0..n)
            .map(|i| vals[at(i)..at(i) + zhw].iter().sum::<f32>() / zhw as f32)
            .collect();
        if !want_grad {
            return (means, None);
        }
        let mut sel = vec![0f32; n * zo * zhw];
        for i in 0..n {
            sel[at(i)..at(i) + zhw]
                .iter_mut()
                .for_each(|m| *m = 1.0 / zhw as f32);
        }
        let sel = dev.tensor_from_vec(sel, (n, zo, zh, zw));
        let grads = (z * sel).sum::<(), _>().backward();
        (means, Some(grads.get(&x).as_vec()))
    };
    let chunk = chunk.max(1);
    let step = |img: &[f32], want_grad: bool| -> (Vec<f32>, Option<Vec<f32>>) {
        let mut means = Vec::with_capacity(o);
        let mut grads = want_grad.then(|| Vec::with_capacity(img.len()));
        for (i, part) in img.chunks(chunk * len).enumerate() {
            let (m, g) = step_chunk(part, i * chunk, want_grad);
            means.extend(m);
            if let (Some(all), Some(g)) = (grads.as_mut(), g) {
                all.extend(g);
            }
        }
        (means, grads)
    };
    let mut before = None;
    for _ in 0..v.steps {
        let (means, g) = step(&img, true);
        before.get_or_insert(means);
        let g = g.expect("asked for");
        for (im, gi) in img.chunks_mut(len).zip(g.chunks(len)) {
            let rms = (gi.iter().map(|x| x * x).sum::<f32>() / len as f32).sqrt();
            if rms > 0.0 {
                let k = v.lr as f32 / rms;
                im.iter_mut().zip(gi).for_each(|(p, q)| *p += k * q);
            }
        }
    }
    let (after, _) = step(&img, false);
    Visualization {
        before: before.unwrap_or_else(|| after.clone()),
        after,
        images: img,
    }
}

/// `[O, H·W]` maps of a layer's visualisations: mean `|·|` over channels, min-max normalised.
pub fn visualization_maps(images: &[f32], c: usize, hw: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(images.len() / c.max(1));
    for img in images.chunks(c * hw) {
        let mut m: Vec<f32> = (0..hw)
            .map(|p| (0..c).map(|ch| img[ch * hw + p].abs()).sum::<f32>() / c as f32)
            .collect();
        min_max(&mut m);
        out.extend(m);
    }
    out
}

/// Similarity of a visualisation `v` and a saliency map `s` (same length): `−MSE`, or
/// Pearson's r (0 when either is constant).
pub fn similarity(v: &[f32], s: &[f32], kind: Similarity) -> f64 {
    let n = v.len().max(1) as f64;
    match kind {
        Similarity::Mse => {
            -v.iter()
                .zip(s)
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum::<f64>()
                / n
        }
        Similarity::Pearson => {
            let mv = v.iter().map(|&a| a as f64).sum::<f64>() / n;
            let ms = s.iter().map(|&b| b as f64).sum::<f64>() / n;
            let (mut cov, mut vv, mut ss) = (0f64, 0f64, 0f64);
            for (&a, &b) in v.iter().zip(s) {
                let (da, db) = (a as f64 - mv, b as f64 - ms);
                cov += da * db;
                vv += da * da;
                ss += db * db;
            }
            if vv > 0.0 && ss > 0.0 {
                cov / (vv * ss).sqrt()
            } else {
                0.0
            }
        }
    }
}

/// A filter's score from its visualisation map and the class maps that exist.
pub fn filter_score(
    vis: &[f32],
    class_maps: &[Option<Vec<f32>>],
    kind: Similarity,
    agg: ClassAggregate,
) -> f64 {
    let sims: Vec<f64> = class_maps
        .iter()
        .flatten()
        .map(|m| similarity(vis, m, kind))
        .collect();
    if sims.is_empty() {
        return 0.0;
    }
    match agg {
        ClassAggregate::Mean => sims.iter().sum::<f64>() / sims.len() as f64,
        ClassAggregate::Max => sims.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

/// The method's result for one task.
pub struct SaliencyScores {
    /// Per weighted trunk layer, per unit.
    pub scores: Vec<Vec<f64>>,
    /// Mean explained logit over the reference set.
    pub explained: f64,
    /// Per conv layer: the mean over filters of the visualised activation before and after.
    pub activation_gain: Vec<(f64, f64)>,
    /// `class_maps` `[classes, H, W]` (a class without references is all 0), `class_counts`,
    /// `visualizations.L` `[O, H, W]` for weighted layer `L`: for a user to look at.
    pub maps: BTreeMap<String, HostTensor>,
}

/// Every conv layer's visualisation, by weighted-layer index (the index of `visualizations.L`
/// and of the unit-score layers).
pub type Visualizations = BTreeMap<usize, Visualization>;

/// A conv model's architecture and weighted layers; the method has nothing to compare
/// without a conv layer.
fn conv_arch<D: Device<f32>>(
    model: &DeviceModel<D>,
) -> Result<(&crate::nn::arch::Arch, Vec<crate::nn::arch::Weighted>), SaliencyError> {
    let arch = model.arch.as_ref().ok_or(SaliencyError::NoConvLayers)?;
    let weighted = arch.weighted();
    if !weighted.iter().any(|w| w.conv.is_some()) {
        return Err(SaliencyError::NoConvLayers);
    }
    Ok((arch, weighted))
}

/// Activation maximisation of every conv filter of `model` (see the module docs), layer by
/// layer in order, all from one `rng` stream; `tick` runs before each layer (cancellation).
///
/// It reads only the trunk up to each conv layer, the `visualize` options and `rng`, not the
/// data or any similarity option, which is why the score stage takes it as a separate,
/// separately cached stage (`stages::visualize`) that differently configured scores share.
pub fn visualize_filters<D: Device<f32>, E>(
    model: &DeviceModel<D>,
    head: usize,
    v: &Visualize,
    rng: &mut impl Rng,
    mut tick: impl FnMut() -> Result<(), E>,
) -> Result<Result<Visualizations, SaliencyError>, E> {
    let (arch, weighted) = match conv_arch(model) {
        Ok(a) => a,
        Err(e) => return Ok(Err(e)),
    };
    let (layers, act_at) = model.layers(head);
    let mut out = BTreeMap::new();
    for (l, spec) in weighted.iter().enumerate() {
        if spec.conv.is_none() {
            continue;
        }
        tick()?;
        // The conv layer sits just before its activation layer.
        let vis = visualize_layer(
            &model.dev,
            &layers,
            act_at[l] - 1,
            arch.input,
            v,
            model.batch_within(usize::MAX, 1, true),
            rng,
        );
        out.insert(l, vis);
    }
    Ok(Ok(out))
}

/// Saliency scores of the path of `head` for reference images `pixels` (bytes, as the model
/// reads them) with local `labels`, visualising the filters here from `rng`; `tick` runs before
/// each batch and each layer (cancellation). The same as [`visualize_filters`] followed by
/// [`saliency_scores_with`] (tested bit for bit).
#[allow(clippy::too_many_arguments)]
pub fn saliency_scores<D: Device<f32>, E>(
    model: &DeviceModel<D>,
    pixels: &[u8],
    labels: &[Label],
    head: usize,
    opts: &SaliencyOptions,
    batch: usize,
    rng: &mut impl Rng,
    mut tick: impl FnMut() -> Result<(), E>,
) -> Result<Result<SaliencyScores, SaliencyError>, E> {
    let vis = match visualize_filters(model, head, &opts.visualize, rng, &mut tick)? {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    saliency_scores_with(model, pixels, labels, head, opts, batch, &vis, tick)
}

/// Saliency scores as [`saliency_scores`], from visualisations computed before (by
/// [`visualize_filters`] on the same model); `opts.visualize` is not read. Visualisations that
/// miss a conv layer or do not match its filters and input size are a
/// [`SaliencyError::VisualizationMismatch`].
#[allow(clippy::too_many_arguments)]
pub fn saliency_scores_with<D: Device<f32>, E>(
    model: &DeviceModel<D>,
    pixels: &[u8],
    labels: &[Label],
    head: usize,
    opts: &SaliencyOptions,
    batch: usize,
    visualizations: &Visualizations,
    mut tick: impl FnMut() -> Result<(), E>,
) -> Result<Result<SaliencyScores, SaliencyError>, E> {
    let (arch, weighted) = match conv_arch(model) {
        Ok(a) => a,
        Err(e) => return Ok(Err(e)),
    };
    let [c, h, w] = arch.input;
    let hw = h * w;
    let dim = c * hw;
    for (l, spec) in weighted.iter().enumerate() {
        let want = spec.units * dim;
        match (spec.conv.is_some(), visualizations.get(&l)) {
            (true, None) => {
                return Ok(Err(SaliencyError::VisualizationMismatch(format!(
                    "no visualisation of conv layer {l}"
                ))))
            }
            (true, Some(v))
                if v.images.len() != want
                    || v.before.len() != spec.units
                    || v.after.len() != spec.units =>
            {
                return Ok(Err(SaliencyError::VisualizationMismatch(format!(
                    "layer {l}: {} image values and {}/{} means, expected {want} ({} filters of {c}×{h}×{w}) and {}",
                    v.images.len(),
                    v.before.len(),
                    v.after.len(),
                    spec.units,
                    spec.units
                ))))
            }
            (false, Some(_)) => {
                return Ok(Err(SaliencyError::VisualizationMismatch(format!(
                    "layer {l} is dense but has a visualisation"
                ))))
            }
            _ => {}
        }
    }
    let classes = model.outputs(head);
    let (layers, _) = model.layers(head);
    let n_dense_trunk = weighted.iter().filter(|w| w.conv.is_none()).count();
    let mut class_sum = vec![0f64; classes * hw];
    let mut class_count = vec![0usize; classes];
    let mut dense_sum: Vec<Vec<f64>> = weighted
        .iter()
        .filter(|w| w.conv.is_none())
        .map(|w| vec![0f64; w.units])
        .collect();
    let mut explained = 0f64;
    for (xb, yb) in pixels
        .chunks(batch.max(1) * dim)
        .zip(labels.chunks(batch.max(1)))
    {
        tick()?;
        let n = yb.len();
        let x = model.input(xb).reshape_like(&(n, c, h, w));
        let parts = fullgrad_parts(&layers, x, yb);
        explained += parts.explained.iter().map(|&v| v as f64).sum::<f64>();
        let maps = saliency_maps(&parts, opts.fullgrad_normalize);
        for (i, &y) in yb.iter().enumerate() {
            let y = y as usize;
            class_count[y] += 1;
            for (acc, &m) in class_sum[y * hw..(y + 1) * hw]
                .iter_mut()
                .zip(&maps[i * hw..(i + 1) * hw])
            {
                *acc += m as f64;
            }
        }
        for (acc, (units, v)) in dense_sum.iter_mut().zip(&parts.dense[..n_dense_trunk]) {
            for row in v.chunks(*units) {
                acc.iter_mut()
                    .zip(row)
                    .for_each(|(a, &r)| *a += (r as f64).abs());
            }
        }
    }
    let class_maps: Vec<Option<Vec<f32>>> = (0..classes)
        .map(|k| {
            (class_count[k] > 0).then(|| {
                let mut m: Vec<f32> = class_sum[k * hw..(k + 1) * hw]
                    .iter()
                    .map(|&s| (s / class_count[k] as f64) as f32)
                    .collect();
                min_max(&mut m);
                m
            })
        })
        .collect();
    let mut out = BTreeMap::new();
    out.insert(
        "class_maps".to_string(),
        HostTensor::f32(
            vec![classes, h, w],
            class_maps
                .iter()
                .flat_map(|m| m.clone().unwrap_or_else(|| vec![0.0; hw]))
                .collect(),
        ),
    );
    out.insert(
        "class_counts".to_string(),
        HostTensor::f32(
            vec![classes],
            class_count.iter().map(|&n| n as f32).collect(),
        ),
    );
    let mut scores = Vec::with_capacity(weighted.len());
    let mut gain = Vec::new();
    let mut dense_iter = dense_sum.into_iter();
    for (l, spec) in weighted.iter().enumerate() {
        tick()?;
        if spec.conv.is_none() {
            let sums = dense_iter.next().expect("one sum per dense layer");
            scores.push(match opts.dense {
                DensePolicy::Free => vec![f64::NEG_INFINITY; spec.units],
                DensePolicy::Fullgrad => sums,
            });
            continue;
        }
        let vis = &visualizations[&l];
        let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
        gain.push((mean(&vis.before), mean(&vis.after)));
        let maps = visualization_maps(&vis.images, c, hw);
        scores.push(
            maps.chunks(hw)
                .map(|m| filter_score(m, &class_maps, opts.similarity, opts.class_aggregate))
                .collect(),
        );
        out.insert(
            format!("visualizations.{l}"),
            HostTensor::f32(vec![spec.units, h, w], maps),
        );
    }
    Ok(Ok(SaliencyScores {
        scores,
        explained: explained / labels.len().max(1) as f64,
        activation_gain: gain,
        maps: out,
    }))
}
