//! The multi-head model: a shared trunk and one linear head per task (task-incremental
//! learning). The trunk is either the MLP's dense ReLU layers on the flattened input, or, when
//! the model carries an [`Arch`], a sequential conv trunk (conv, pooling, flatten, dense,
//! dropout) on `[C, H, W]` images. Sizes come from the pipeline at run time, so layers are
//! plain dfdx tensors with `usize` dims rather than `nn::Linear`. Every weighted layer (conv
//! or dense) is one `(weight, bias)` pair with one weight row per unit, so the stages, the
//! masked optimizer and the importance methods see conv filters and dense neurons alike.
//!
//! Parameters live on the host as [`ModelParams`] (PyTorch layout: weight `[out, in]`) for
//! storage, and on the device as flat 1-D tensors for training. A conv model's passes walk its
//! bound layers ([`DeviceModel::layers`], the vocabulary of [`super::seq`]). The MLP's forward
//! pass is a chain of [`super::dense`] layers in transposed form, `zᵀ = W · xᵀ` (activations
//! `[units, batch]`), which its composed (GPU) path has always used: parameters are the left
//! operand, so the input needs no gradient of its own.

use super::arch::{Arch, Op};
use super::dense::{dense, Activation, Side};
use super::scenario::Scenario;
use super::seq::{forward_hooked, Act, Hooks, Layer};
use super::tensor::{images_to_tensor, one_hot_t, Label, Matrix, Tensor4, Vector};
use super::tensorio::{HostTensor, TensorIoError, TensorMapExt};
use dfdx::prelude::*;
use rand::Rng;
use std::collections::BTreeMap;

/// One dense layer on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseParams {
    pub out_dim: usize,
    pub in_dim: usize,
    /// Row-major `[out_dim, in_dim]`: row `j` holds unit `j`'s incoming weights.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl DenseParams {
    /// PyTorch's `nn.Linear` default: weights and biases uniform in ±1/√in.
    pub fn init(in_dim: usize, out_dim: usize, rng: &mut impl Rng) -> Self {
        let bound = 1.0 / (in_dim as f32).sqrt();
        let mut u = |n: usize| {
            (0..n)
                .map(|_| rng.gen_range(-bound..bound))
                .collect::<Vec<f32>>()
        };
        let weight = u(in_dim * out_dim);
        let bias = u(out_dim);
        DenseParams {
            out_dim,
            in_dim,
            weight,
            bias,
        }
    }
}

/// Host-side parameters of the whole model. A conv layer's `DenseParams` holds its
/// `[O, C, kh, kw]` weight as `out_dim = O`, `in_dim = C·kh·kw`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    pub trunk: Vec<DenseParams>,
    pub heads: Vec<DenseParams>,
    /// Hidden activation: 0 is ReLU, anything else leaky ReLU with this negative slope.
    pub negative_slope: f32,
    /// The trunk's layers for a conv model; `None` for the MLP (dense layers only, on the
    /// flattened input), whose files then keep their exact bytes.
    pub arch: Option<Arch>,
    /// How tasks map onto the heads (stored beside the tensors where not `per_task`).
    pub scenario: Scenario,
}

/// Name of the scalar tensor that stores a leaky ReLU's slope in model files; absent for ReLU,
/// so ReLU models keep their exact bytes.
pub const SLOPE_TENSOR: &str = "activation.negative_slope";

/// The hidden activation: ReLU, or leaky ReLU with `slope` for negative inputs.
pub fn activation<S: Shape, D: Device<f32>, T: Tape<f32, D>>(
    z: Tensor<S, f32, D, T>,
    slope: f32,
) -> Tensor<S, f32, D, T> {
    if slope == 0.0 {
        z.relu()
    } else {
        z.prelu(slope)
    }
}

impl ModelParams {
    pub fn init(input_dim: usize, hidden: &[usize], rng: &mut impl Rng) -> Self {
        let mut trunk = Vec::new();
        let mut prev = input_dim;
        for &h in hidden {
            trunk.push(DenseParams::init(prev, h, rng));
            prev = h;
        }
        ModelParams {
            trunk,
            heads: vec![],
            negative_slope: 0.0,
            arch: None,
            scenario: Scenario::PerTask,
        }
    }

    /// A conv model with PyTorch's default initialisation (uniform ±1/√fan_in for conv and
    /// dense weights and biases), layer by layer in trunk order. `arch` must have passed
    /// [`Arch::features`].
    pub fn init_arch(arch: &Arch, rng: &mut impl Rng) -> Self {
        let trunk = arch
            .weighted()
            .iter()
            .map(|w| DenseParams::init(w.fan_in, w.units, rng))
            .collect();
        ModelParams {
            trunk,
            heads: vec![],
            negative_slope: 0.0,
            arch: Some(arch.clone()),
            scenario: Scenario::PerTask,
        }
    }

    pub fn input_dim(&self) -> usize {
        match &self.arch {
            Some(a) => a.input_len(),
            None => self.trunk.first().map(|l| l.in_dim).unwrap_or(0),
        }
    }

    /// Inputs of every task head.
    pub fn head_inputs(&self) -> usize {
        match &self.arch {
            Some(a) => a.head_inputs(),
            None => self.trunk.last().map(|l| l.out_dim).unwrap_or(0),
        }
    }

    /// Units per hidden layer.
    pub fn hidden_sizes(&self) -> Vec<usize> {
        self.trunk.iter().map(|l| l.out_dim).collect()
    }

    pub fn push_head(&mut self, classes: usize, rng: &mut impl Rng) {
        let last = self.head_inputs();
        self.heads.push(DenseParams::init(last, classes, rng));
    }

    /// Trunk layers then heads, in the flat order used on the device.
    pub fn layers(&self) -> impl Iterator<Item = &DenseParams> {
        self.trunk.iter().chain(self.heads.iter())
    }

    /// Shape of trunk layer `i`'s weight as stored: `[O, C, kh, kw]` for conv layers,
    /// `[out, in]` otherwise.
    fn weight_shape(&self, prefix: &str, i: usize, l: &DenseParams) -> Vec<usize> {
        let conv = match (&self.arch, prefix) {
            (Some(a), "trunk") => a.weighted().get(i).and_then(|w| w.conv),
            _ => None,
        };
        match conv {
            Some((c, kh, kw)) => vec![l.out_dim, c, kh, kw],
            None => vec![l.out_dim, l.in_dim],
        }
    }

    pub fn to_tensors(&self) -> BTreeMap<String, HostTensor> {
        let mut m = BTreeMap::new();
        for (prefix, layers) in [("trunk", &self.trunk), ("heads", &self.heads)] {
            for (i, l) in layers.iter().enumerate() {
                m.insert(
                    format!("{prefix}.{i}.weight"),
                    HostTensor::f32(self.weight_shape(prefix, i, l), l.weight.clone()),
                );
                m.insert(
                    format!("{prefix}.{i}.bias"),
                    HostTensor::f32(vec![l.out_dim], l.bias.clone()),
                );
            }
        }
        if self.negative_slope != 0.0 {
            m.insert(
                SLOPE_TENSOR.into(),
                HostTensor::f32(vec![1], vec![self.negative_slope]),
            );
        }
        m
    }

    pub fn from_tensors(m: BTreeMap<String, HostTensor>) -> Result<Self, TensorIoError> {
        Self::from_tensors_arch(m, None)
    }

    /// Decode a model file; a conv model's `arch` (from `arch.json`) gives the expected shape
    /// of every trunk tensor, and any disagreement is an error naming the tensor.
    pub fn from_tensors_arch(
        mut m: BTreeMap<String, HostTensor>,
        arch: Option<Arch>,
    ) -> Result<Self, TensorIoError> {
        let negative_slope = if m.contains_key(SLOPE_TENSOR) {
            let (shape, v) = m.take_f32(SLOPE_TENSOR)?;
            if v.len() != 1 {
                return Err(TensorIoError::Shape {
                    name: SLOPE_TENSOR.into(),
                    found: shape,
                    expected: vec![1],
                });
            }
            v[0]
        } else {
            0.0
        };
        let mut take = |prefix: &str| -> Result<Vec<DenseParams>, TensorIoError> {
            let mut out = Vec::new();
            for i in 0.. {
                let wname = format!("{prefix}.{i}.weight");
                if !m.contains_key(&wname) {
                    break;
                }
                let (ws, weight) = m.take_f32(&wname)?;
                let bname = format!("{prefix}.{i}.bias");
                let (bs, bias) = m.take_f32(&bname)?;
                if !(ws.len() == 2 || ws.len() == 4) || bs != [ws[0]] {
                    return Err(TensorIoError::Shape {
                        name: bname,
                        found: bs,
                        expected: vec![ws[0]],
                    });
                }
                out.push(DenseParams {
                    out_dim: ws[0],
                    in_dim: ws[1..].iter().product(),
                    weight,
                    bias,
                });
            }
            Ok(out)
        };
        let trunk = take("trunk")?;
        let heads = take("heads")?;
        if let Some(a) = arch {
            let w = a.weighted();
            let expected = |i: usize| w.get(i).map(|w| (w.units, w.fan_in));
            for (i, l) in trunk.iter().enumerate() {
                if expected(i) != Some((l.out_dim, l.in_dim)) {
                    return Err(TensorIoError::Shape {
                        name: format!("trunk.{i}.weight"),
                        found: vec![l.out_dim, l.in_dim],
                        expected: expected(i).map(|(o, n)| vec![o, n]).unwrap_or_default(),
                    });
                }
            }
            if trunk.len() != w.len() {
                return Err(TensorIoError::Missing(format!(
                    "trunk.{}.weight",
                    trunk.len()
                )));
            }
            let prev = a.head_inputs();
            for (i, h) in heads.iter().enumerate() {
                if h.in_dim != prev {
                    return Err(TensorIoError::Shape {
                        name: format!("heads.{i}.weight"),
                        found: vec![h.out_dim, h.in_dim],
                        expected: vec![h.out_dim, prev],
                    });
                }
            }
            return Ok(ModelParams {
                trunk,
                heads,
                negative_slope,
                arch: Some(a),
                scenario: Scenario::PerTask,
            });
        }
        let mut prev = trunk.first().map(|l| l.in_dim).unwrap_or(0);
        for (i, l) in trunk.iter().enumerate() {
            if l.in_dim != prev {
                return Err(TensorIoError::Shape {
                    name: format!("trunk.{i}.weight"),
                    found: vec![l.out_dim, l.in_dim],
                    expected: vec![l.out_dim, prev],
                });
            }
            prev = l.out_dim;
        }
        for (i, h) in heads.iter().enumerate() {
            if h.in_dim != prev {
                return Err(TensorIoError::Shape {
                    name: format!("heads.{i}.weight"),
                    found: vec![h.out_dim, h.in_dim],
                    expected: vec![h.out_dim, prev],
                });
            }
        }
        Ok(ModelParams {
            trunk,
            heads,
            negative_slope,
            arch: None,
            scenario: Scenario::PerTask,
        })
    }
}

/// Parameters on a device: `[w0, b0, w1, b1, …]` for the trunk, then the heads likewise.
pub struct DeviceModel<D: Device<f32>> {
    pub dev: D,
    pub params: Vec<Vector<D>>,
    /// `(out, in)` per layer, trunk then heads.
    pub shapes: Vec<(usize, usize)>,
    pub n_trunk: usize,
    pub negative_slope: f32,
    /// A conv model's layers; `None` for the MLP.
    pub arch: Option<Arch>,
    /// Seed of the current training step's dropout masks; `None` (evaluation, scoring)
    /// disables dropout.
    pub dropout_seed: Option<u64>,
    /// Carried from the host model and back, unused by the passes (which take a head index).
    pub scenario: Scenario,
    /// Unit masks of training passes (`unit_masks` of [`Self::logits`]): silenced units
    /// contribute nothing and get no gradient (PackNet's retraining). `None` for all.
    pub train_masks: Option<Vec<Vector<D>>>,
}

/// Activation memory one batched pass may take ([`DeviceModel::batch_within`]). A fixed number,
/// not the machine's free memory, so that batches (and the float sums over them) are the same
/// on every machine.
const BATCH_MEMORY: usize = 2 << 30;

impl<D: Device<f32>> DeviceModel<D> {
    pub fn from_host(dev: &D, p: &ModelParams) -> Self {
        let mut params = Vec::new();
        let mut shapes = Vec::new();
        for l in p.layers() {
            params.push(dev.tensor_from_vec(l.weight.clone(), (l.weight.len(),)));
            params.push(dev.tensor_from_vec(l.bias.clone(), (l.bias.len(),)));
            shapes.push((l.out_dim, l.in_dim));
        }
        DeviceModel {
            dev: dev.clone(),
            params,
            shapes,
            n_trunk: p.trunk.len(),
            negative_slope: p.negative_slope,
            arch: p.arch.clone(),
            dropout_seed: None,
            scenario: p.scenario,
            train_masks: None,
        }
    }

    /// Floats of activations per sample of a forward pass (see [`Arch::floats_per_sample`]).
    pub fn floats_per_sample(&self) -> usize {
        match &self.arch {
            Some(a) => a.floats_per_sample(),
            None => self.input_dim() + self.shapes.iter().map(|s| s.0).sum::<usize>(),
        }
    }

    /// Samples per batch of a pass with at most `cap` samples, each of which costs `inputs`
    /// model inputs; `taped` passes (gradients, LRP) keep about three times the floats of a
    /// forward pass. Small models get `cap`; a 224×224 VGG-16 gets a few samples, where a
    /// fixed batch of 1000 would need over a hundred GB for one unfolded convolution.
    pub fn batch_within(&self, cap: usize, inputs: usize, taped: bool) -> usize {
        let per = self.floats_per_sample() * 4 * inputs * if taped { 3 } else { 1 };
        (BATCH_MEMORY / per.max(1)).clamp(1, cap.max(1))
    }

    /// Input values per sample.
    pub fn input_dim(&self) -> usize {
        match &self.arch {
            Some(a) => a.input_len(),
            None => self.shapes.first().map(|s| s.1).unwrap_or(0),
        }
    }

    /// `[batch, input_dim]` model input from image bytes: `byte/255`, then a conv model's
    /// per-channel normalisation if it has one.
    pub fn input(&self, pixels: &[u8]) -> Matrix<D> {
        let dim = self.input_dim();
        let norm = self
            .arch
            .as_ref()
            .and_then(|a| a.normalize.as_ref().map(|n| (n, a.input[1] * a.input[2])));
        match norm {
            None => images_to_tensor(&self.dev, pixels, dim),
            Some((n, hw)) => {
                let data: Vec<f32> = pixels
                    .iter()
                    .enumerate()
                    .map(|(k, &p)| {
                        let c = (k % dim) / hw.max(1);
                        (p as f32 / 255.0 - n.mean[c]) / n.std[c]
                    })
                    .collect();
                self.dev
                    .tensor_from_vec(data, (pixels.len() / dim.max(1), dim))
            }
        }
    }

    pub fn to_host(&self) -> ModelParams {
        let mut layers = self
            .shapes
            .iter()
            .enumerate()
            .map(|(i, &(o, n))| DenseParams {
                out_dim: o,
                in_dim: n,
                weight: self.params[2 * i].as_vec(),
                bias: self.params[2 * i + 1].as_vec(),
            });
        let trunk = layers.by_ref().take(self.n_trunk).collect();
        let heads = layers.collect();
        ModelParams {
            trunk,
            heads,
            negative_slope: self.negative_slope,
            arch: self.arch.clone(),
            scenario: self.scenario,
        }
    }

    /// How many outputs (logits) `head` has.
    pub fn outputs(&self, head: usize) -> usize {
        self.shapes[self.n_trunk + head].0
    }

    /// Flat parameter indices (weight, bias) of the layers a forward pass through `head` uses.
    pub fn path(&self, head: usize) -> Vec<usize> {
        let mut layers: Vec<usize> = (0..self.n_trunk).collect();
        layers.push(self.n_trunk + head);
        layers.iter().flat_map(|&l| [2 * l, 2 * l + 1]).collect()
    }

    /// Logits `[batch, classes]` of `head` for `x: [batch, in]`, without gradients. With
    /// `unit_masks`, hidden layer `l`'s activations are multiplied by `unit_masks[l]`
    /// (0 = pruned), which equals zeroing the unit's outgoing connections.
    pub fn logits(
        &self,
        x: &Matrix<D>,
        head: usize,
        unit_masks: Option<&[Vector<D>]>,
    ) -> Matrix<D> {
        if self.arch.is_some() {
            let hooks = Hooks {
                unit_masks,
                ..Hooks::default()
            };
            return self.forward_seq::<NoneTape>(x, head, hooks);
        }
        let params: Vec<Vector<D>> = self
            .path(head)
            .iter()
            .map(|&i| self.params[i].clone())
            .collect();
        let shapes = self.layer_shapes(head);
        forward_t(params, &shapes, x, unit_masks, self.negative_slope).permute::<_, Axes2<1, 0>>()
    }

    fn layer_shapes(&self, head: usize) -> Vec<(usize, usize)> {
        let mut s: Vec<_> = self.shapes[..self.n_trunk].to_vec();
        s.push(self.shapes[self.n_trunk + head]);
        s
    }

    /// Mean cross-entropy of `head` on a batch, with a gradient tape over the parameters of
    /// that path. Returns the loss and, in `path` order, the traced parameter ids' gradients.
    pub fn loss_and_grads(
        &self,
        x: &Matrix<D>,
        labels: &[Label],
        head: usize,
    ) -> (f32, Vec<(usize, Vector<D>)>) {
        self.grads_of(x, head, Objective::CrossEntropy(labels))
    }

    /// [`Self::loss_and_grads`], and the logits `[batch, classes]` of the same pass, row-major.
    /// Without dropout they are exactly [`Self::logits`]' (the same kernels on the same
    /// parameters), so a training step needs no second forward pass for its accuracy.
    pub fn loss_grads_and_logits(
        &self,
        x: &Matrix<D>,
        labels: &[Label],
        head: usize,
    ) -> (f32, ParamGrads<D>, Vec<f32>) {
        let mut logits = Vec::new();
        let (loss, grads) = self.pass(x, head, Objective::CrossEntropy(labels), Some(&mut logits));
        (loss, grads, logits)
    }

    /// Whether a training pass drops units (a conv model with a dropout layer).
    pub fn has_dropout(&self) -> bool {
        self.arch
            .as_ref()
            .is_some_and(|a| a.layers.iter().any(|op| matches!(op, Op::Dropout { .. })))
    }

    /// Value and parameter gradients of a scalar `objective` of `head`'s logits on a batch.
    pub fn grads_of(
        &self,
        x: &Matrix<D>,
        head: usize,
        objective: Objective,
    ) -> (f32, Vec<(usize, Vector<D>)>) {
        self.pass(x, head, objective, None)
    }

    /// [`Self::grads_of`], copying the pass's logits (`[batch, classes]`) into `logits` when
    /// asked.
    fn pass(
        &self,
        x: &Matrix<D>,
        head: usize,
        objective: Objective,
        logits_out: Option<&mut Vec<f32>>,
    ) -> (f32, Vec<(usize, Vector<D>)>) {
        let path = self.path(head);
        let batch = x.shape().0 as f32;
        if self.arch.is_some() {
            // Logits come out `[batch, classes]` and contiguous, so no transposition is needed.
            let hooks = Hooks {
                dropout_seed: self.dropout_seed,
                unit_masks: self.train_masks.as_deref(),
                ..Hooks::default()
            };
            let logits = self.forward_seq::<OwnedTape<f32, D>>(x, head, hooks);
            if let Some(out) = logits_out {
                *out = logits.as_vec();
            }
            let loss = match objective {
                Objective::CrossEntropy(labels) => {
                    let classes = self.outputs(head);
                    let mut t = vec![0f32; labels.len() * classes];
                    for (i, &y) in labels.iter().enumerate() {
                        t[i * classes + y as usize] = 1.0;
                    }
                    let targets = self.dev.tensor_from_vec(t, (labels.len(), classes));
                    (logits.log_softmax::<Axis<1>>() * targets)
                        .sum::<(), _>()
                        .negate()
                        / batch
                }
                Objective::SquaredNorm => logits.square().sum::<(), _>() / batch,
                Objective::SoftTargets {
                    probs,
                    temperature,
                    scale,
                } => {
                    let shape = *logits.shape();
                    let targets = self.dev.tensor_from_vec(probs.to_vec(), shape);
                    ((logits / temperature).log_softmax::<Axis<1>>() * targets)
                        .sum::<(), _>()
                        .negate()
                        * (scale / batch)
                }
            };
            return self.value_and_grads(loss, &path);
        }
        let traced: Vec<Vector<D, OwnedTape<f32, D>>> =
            path.iter().map(|&i| self.params[i].leaky_trace()).collect();
        let shapes = self.layer_shapes(head);
        let logits_t = forward_t(
            traced,
            &shapes,
            x,
            self.train_masks.as_deref(),
            self.negative_slope,
        );
        if let Some(out) = logits_out {
            // `[classes, batch]` to row-major `[batch, classes]`.
            let (classes, n) = *logits_t.shape();
            let t = logits_t.as_vec();
            *out = (0..n * classes)
                .map(|k| t[(k % classes) * n + k / classes])
                .collect();
        }
        // Objectives work on `logitsᵀ` [classes, batch] directly: dfdx 0.13's log_softmax
        // backward mishandles permuted (non-contiguous) inputs, so nothing taped is permuted.
        let loss = match objective {
            Objective::CrossEntropy(labels) => {
                let classes = self.outputs(head);
                let targets_t = one_hot_t(&self.dev, labels, classes);
                (logits_t.log_softmax::<Axis<0>>() * targets_t)
                    .sum::<(), _>()
                    .negate()
                    / batch
            }
            Objective::SquaredNorm => logits_t.square().sum::<(), _>() / batch,
            Objective::SoftTargets {
                probs,
                temperature,
                scale,
            } => {
                // `probs` transposed to `[classes, batch]`, like the logits.
                let (classes, n) = *logits_t.shape();
                let t: Vec<f32> = (0..classes * n)
                    .map(|k| probs[(k % n) * classes + k / n])
                    .collect();
                let targets_t = self.dev.tensor_from_vec(t, (classes, n));
                ((logits_t / temperature).log_softmax::<Axis<0>>() * targets_t)
                    .sum::<(), _>()
                    .negate()
                    * (scale / batch)
            }
        };
        self.value_and_grads(loss, &path)
    }

    /// A taped scalar's value and the gradients of the parameters `path` names.
    fn value_and_grads(
        &self,
        loss: Tensor<(), f32, D, OwnedTape<f32, D>>,
        path: &[usize],
    ) -> (f32, Vec<(usize, Vector<D>)>) {
        let value = loss.as_vec()[0];
        let mut grads = loss.backward();
        let out = path
            .iter()
            .map(|&i| (i, super::host::take_grad(&mut grads, &self.params[i])))
            .collect();
        (value, out)
    }

    /// Each layer's input activations for `x` (the input itself, then every hidden layer's
    /// ReLU output), row-major `[batch, width]`.
    pub fn activations(&self, x: &Matrix<D>) -> Vec<Vec<f32>> {
        let mut out = vec![x.as_vec()];
        let mut a = x.clone();
        for l in 0..self.n_trunk {
            let (o, i) = self.shapes[l];
            let w = self.params[2 * l].clone().reshape_like(&(o, i));
            let b = self.params[2 * l + 1].clone();
            a = dense(
                a,
                w,
                b,
                Activation::hidden(self.negative_slope),
                Side::Rows,
                Side::Rows,
            );
            out.push(a.as_vec());
        }
        out
    }
}

/// Gradients by flat parameter index.
pub type ParamGrads<D> = Vec<(usize, Vector<D>)>;

/// A scalar function of a head's logits whose parameter gradients are wanted.
#[derive(Debug, Clone, Copy)]
pub enum Objective<'a> {
    /// Mean cross-entropy against these labels (local to the head).
    CrossEntropy(&'a [Label]),
    /// Mean over samples of the squared L2 norm of the logits (MAS).
    SquaredNorm,
    /// Distillation (LwF): `scale` times the mean over samples of the cross-entropy of
    /// `softmax(logits / temperature)` against the soft targets `probs` (row-major `[batch,
    /// classes]`, each row summing to 1).
    SoftTargets {
        probs: &'a [f32],
        temperature: f32,
        scale: f32,
    },
}

/// Transposed forward: returns `logitsᵀ` `[classes, batch]`.
fn forward_t<D: Device<f32>, T: Tape<f32, D> + Merge<T> + Merge<NoneTape>>(
    params: Vec<Vector<D, T>>,
    shapes: &[(usize, usize)],
    x: &Matrix<D>,
    unit_masks: Option<&[Vector<D>]>,
    negative_slope: f32,
) -> Matrix<D, T> {
    let batch = x.shape().0;
    let mut h: Option<Matrix<D, T>> = None;
    let mut it = params.into_iter();
    let n = shapes.len();
    for (l, &(out, inp)) in shapes.iter().enumerate() {
        let w = it
            .next()
            .expect("weight per layer")
            .reshape_like(&(out, inp));
        let b = it.next().expect("bias per layer");
        let last = l + 1 == n;
        let act = if last {
            Activation::Identity
        } else {
            Activation::hidden(negative_slope)
        };
        let a = match h.take() {
            None => dense(x.clone(), w, b, act, Side::Rows, Side::Columns),
            Some(prev) => dense(prev, w, b, act, Side::Columns, Side::Columns),
        };
        h = Some(match unit_masks {
            Some(m) if !last => a * m[l].clone().broadcast_like::<_, Axis<1>>(&(out, batch)),
            _ => a,
        });
    }
    h.expect("at least one layer")
}

impl<D: Device<f32>> DeviceModel<D> {
    /// A conv model's path through `head` as bound layers ([`Layer`]: the trunk's ops with an
    /// activation layer after each weighted one, then the head), and for each weighted trunk
    /// layer the index of its activation layer, whose input relevance is that layer's output
    /// relevance.
    pub fn layers(&self, head: usize) -> (Vec<Layer<D>>, Vec<usize>) {
        let arch = self.arch.as_ref().expect("a conv model");
        let weighted = arch.weighted();
        let path = self.path(head);
        let mut layers = Vec::new();
        let mut act_at = Vec::new();
        let mut wl = 0;
        let param = |k: usize| self.params[path[k]].clone();
        let activation = || {
            if self.negative_slope == 0.0 {
                Layer::Relu
            } else {
                Layer::LeakyRelu(self.negative_slope)
            }
        };
        for (i, op) in arch.layers.iter().enumerate() {
            match *op {
                Op::Conv {
                    stride, padding, ..
                } => {
                    let spec = weighted[wl];
                    let (c, kh, kw) = spec.conv.expect("conv");
                    layers.push(Layer::Conv {
                        weight: param(2 * wl).reshape_like(&(spec.units, c, kh, kw)),
                        bias: param(2 * wl + 1),
                        stride,
                        padding,
                    });
                    act_at.push(layers.len());
                    layers.push(activation());
                    wl += 1;
                }
                Op::Dense { units } => {
                    let spec = weighted[wl];
                    layers.push(Layer::Dense {
                        weight: param(2 * wl).reshape_like(&(units, spec.fan_in)),
                        bias: param(2 * wl + 1),
                    });
                    act_at.push(layers.len());
                    layers.push(activation());
                    wl += 1;
                }
                Op::MaxPool { kernel, stride } => layers.push(Layer::MaxPool { kernel, stride }),
                Op::AvgPool { kernel, stride } => layers.push(Layer::AvgPool { kernel, stride }),
                Op::AdaptiveAvgPool { size: [h, w] } => {
                    layers.push(Layer::AdaptiveAvgPool { h, w })
                }
                Op::Flatten => layers.push(Layer::Flatten),
                Op::Dropout { p } => layers.push(Layer::Dropout { p, op: i }),
            }
        }
        let (classes, fan_in) = self.shapes[self.n_trunk + head];
        layers.push(Layer::Dense {
            weight: param(2 * wl).reshape_like(&(classes, fan_in)),
            bias: param(2 * wl + 1),
        });
        (layers, act_at)
    }

    /// A conv model's forward pass: `x: [batch, C·H·W]` (NCHW per sample) → logits
    /// `[batch, classes]` of `head`, on tape `T` (the parameters' gradients are found under
    /// `self.params`' ids).
    fn forward_seq<T: Tape<f32, D> + Merge<T> + Merge<NoneTape>>(
        &self,
        x: &Matrix<D>,
        head: usize,
        hooks: Hooks<'_, D, T>,
    ) -> Matrix<D, T> {
        let [c, h, w] = self.arch.as_ref().expect("a conv model").input;
        let batch = x.shape().0;
        let (layers, act_at) = self.layers(head);
        forward_hooked(
            &layers,
            &act_at,
            x.clone().reshape_like(&(batch, c, h, w)),
            hooks,
        )
    }

    /// Gradient × input for a conv model: per weighted trunk layer, `a ⊙ ∂f_y/∂a` of its
    /// activation (after the activation function), with `f_y` the logit of `labels[i]` in
    /// `head`; then the same for the input. Maps come flattened NCHW per sample; also returns
    /// the explained logits.
    pub fn gradient_x_activations(
        &self,
        x: &Matrix<D>,
        labels: &[Label],
        head: usize,
    ) -> (Vec<Vec<f32>>, Vec<f32>, Vec<f32>) {
        let arch = self.arch.as_ref().expect("a conv model");
        let batch = x.shape().0;
        let feats = arch.features().expect("validated architecture");
        let [c, h, w] = arch.input;
        let input_probe: Tensor4<D> = self.dev.ones_like(&(batch, c, h, w));
        let ones: Vec<Act<D>> = arch
            .weighted()
            .iter()
            .map(|spec| match feats[spec.op + 1] {
                super::arch::Feature::Map(o, fh, fw) => {
                    Act::Map(self.dev.ones_like(&(batch, o, fh, fw)))
                }
                super::arch::Feature::Flat(n) => Act::Flat(self.dev.ones_like(&(batch, n))),
            })
            .collect();
        let traced_probes: Vec<Act<D, OwnedTape<f32, D>>> = ones
            .iter()
            .map(|p| match p {
                Act::Map(t) => Act::Map(t.leaky_trace()),
                Act::Flat(t) => Act::Flat(t.leaky_trace()),
            })
            .collect();
        let hooks = Hooks {
            probes: Some((input_probe.leaky_trace(), traced_probes)),
            ..Hooks::default()
        };
        let logits = self.forward_seq::<OwnedTape<f32, D>>(x, head, hooks);
        let classes = logits.shape().1;
        let values = logits.as_vec();
        let mut pick = vec![0f32; batch * classes];
        let mut explained = Vec::with_capacity(batch);
        for (i, &y) in labels.iter().enumerate() {
            pick[i * classes + y as usize] = 1.0;
            explained.push(values[i * classes + y as usize]);
        }
        let pick = self.dev.tensor_from_vec(pick, (batch, classes));
        let grads = (logits * pick).sum::<(), _>().backward();
        let hidden = ones
            .iter()
            .map(|p| match p {
                Act::Map(t) => grads.get(t).as_vec(),
                Act::Flat(t) => grads.get(t).as_vec(),
            })
            .collect();
        (hidden, grads.get(&input_probe).as_vec(), explained)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn tiny() -> ModelParams {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut p = ModelParams::init(5, &[4, 3], &mut rng);
        p.push_head(2, &mut rng);
        p.push_head(3, &mut rng);
        p
    }

    /// Reference forward on the host in f64.
    fn host_logits(p: &ModelParams, x: &[f32], head: usize) -> Vec<f64> {
        let mut a: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let layers: Vec<&DenseParams> = p
            .trunk
            .iter()
            .chain(std::iter::once(&p.heads[head]))
            .collect();
        for (li, l) in layers.iter().enumerate() {
            let z: Vec<f64> = l
                .weight
                .chunks_exact(l.in_dim)
                .zip(&l.bias)
                .map(|(row, &b)| {
                    b as f64 + row.iter().zip(&a).map(|(&w, &x)| w as f64 * x).sum::<f64>()
                })
                .collect();
            a = if li + 1 < layers.len() {
                z.iter().map(|v| v.max(0.0)).collect()
            } else {
                z
            };
        }
        a
    }

    #[test]
    fn forward_matches_a_host_reference() {
        let p = tiny();
        let dev = Cpu::default();
        let m = DeviceModel::from_host(&dev, &p);
        let x: Vec<f32> = (0..10).map(|i| (i as f32 * 0.37).sin()).collect();
        let xt = dev.tensor_from_vec(x.clone(), (2, 5));
        for head in 0..2 {
            let got = m.logits(&xt, head, None).as_vec();
            let classes = p.heads[head].out_dim;
            for s in 0..2 {
                let want = host_logits(&p, &x[s * 5..(s + 1) * 5], head);
                for c in 0..classes {
                    assert!((got[s * classes + c] as f64 - want[c]).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let p = tiny();
        let dev = Cpu::default();
        let m = DeviceModel::from_host(&dev, &p);
        let x: Vec<f32> = (0..15).map(|i| (i as f32 * 0.71).cos()).collect();
        let xt = dev.tensor_from_vec(x.clone(), (3, 5));
        let (loss, grads) = m.loss_and_grads(&xt, &[0, 2, 1], 1);
        let host_loss = |p: &ModelParams| -> f64 {
            let mut l = 0.0;
            for (s, &t) in [0usize, 2, 1].iter().enumerate() {
                let z = host_logits(p, &x[s * 5..(s + 1) * 5], 1);
                let mx = z.iter().cloned().fold(f64::MIN, f64::max);
                let lse = mx + z.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
                l += lse - z[t];
            }
            l / 3.0
        };
        assert!(
            (host_loss(&p) - loss as f64).abs() < 1e-5,
            "loss {loss} vs {}",
            host_loss(&p)
        );
        for (flat, g) in grads {
            let g = g.as_vec();
            let layer = flat / 2;
            for (k, &gk) in g.iter().enumerate() {
                let mut plus = p.clone();
                let mut minus = p.clone();
                let h = 1e-3f32;
                let bump = |q: &mut ModelParams, d: f32| {
                    let l = if layer < q.trunk.len() {
                        &mut q.trunk[layer]
                    } else {
                        &mut q.heads[layer - 2]
                    };
                    let v = if flat % 2 == 0 {
                        &mut l.weight[k]
                    } else {
                        &mut l.bias[k]
                    };
                    *v += d;
                };
                bump(&mut plus, h);
                bump(&mut minus, -h);
                let fd = (host_loss(&plus) - host_loss(&minus)) / (2.0 * h as f64);
                assert!(
                    (fd - gk as f64).abs() < 2e-3,
                    "param {flat}[{k}]: fd {fd} vs {gk}"
                );
            }
        }
    }

    #[test]
    fn a_training_pass_gives_the_evaluation_logits_bit_for_bit() {
        let p = tiny();
        let dev = Cpu::default();
        let m = DeviceModel::from_host(&dev, &p);
        let x: Vec<f32> = (0..15).map(|i| (i as f32 * 0.53).sin()).collect();
        let xt = dev.tensor_from_vec(x, (3, 5));
        let (_, _, pass) = m.loss_grads_and_logits(&xt, &[0, 2, 1], 1);
        let eval = m.logits(&xt, 1, None).as_vec();
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&pass), bits(&eval));
    }

    /// LwF's objective, on both forward paths: one-hot targets at T = 1 are the cross-entropy
    /// itself, loss and gradients, and `scale` multiplies the loss.
    #[test]
    fn soft_targets_agree_with_cross_entropy_on_the_mlp_and_conv_paths() {
        let dev = Cpu::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut conv = ModelParams::init_arch(&crate::nn::arch::small_cnn([1, 6, 6]), &mut rng);
        conv.push_head(2, &mut rng);
        conv.push_head(3, &mut rng);
        let mut mlp = tiny();
        mlp.heads.truncate(1);
        mlp.push_head(3, &mut rng);
        for p in [mlp, conv] {
            let m = DeviceModel::from_host(&dev, &p);
            let n = m.input_dim();
            let pixels: Vec<u8> = (0..4 * n).map(|i| (i * 37 % 251) as u8).collect();
            let x = m.input(&pixels);
            let labels = [0u16, 2, 1, 2];
            let mut one_hot = vec![0f32; 4 * 3];
            for (i, &y) in labels.iter().enumerate() {
                one_hot[i * 3 + y as usize] = 1.0;
            }
            let (ce, g_ce) = m.grads_of(&x, 1, Objective::CrossEntropy(&labels));
            let soft = Objective::SoftTargets {
                probs: &one_hot,
                temperature: 1.0,
                scale: 1.0,
            };
            let (st, g_st) = m.grads_of(&x, 1, soft);
            assert!((ce - st).abs() <= 1e-6 * ce.abs().max(1.0), "{ce} vs {st}");
            for ((i, a), (j, b)) in g_ce.iter().zip(&g_st) {
                assert_eq!(i, j);
                for (u, v) in a.as_vec().iter().zip(b.as_vec()) {
                    assert!(
                        (u - v).abs() <= 1e-5 * u.abs().max(1e-3),
                        "param {i}: {u} vs {v}"
                    );
                }
            }
            // Scale multiplies the loss.
            let scaled = Objective::SoftTargets {
                probs: &one_hot,
                temperature: 1.0,
                scale: 2.5,
            };
            let (s2, _) = m.grads_of(&x, 1, scaled);
            assert!(
                (s2 - 2.5 * ce).abs() <= 1e-5 * ce.abs().max(1.0),
                "{s2} vs {}",
                2.5 * ce
            );
        }
    }

    #[test]
    fn tensors_round_trip() {
        let p = tiny();
        let back = ModelParams::from_tensors(p.to_tensors()).unwrap();
        assert_eq!(back, p);
        let dev = Cpu::default();
        assert_eq!(DeviceModel::from_host(&dev, &p).to_host(), p);
    }
}
