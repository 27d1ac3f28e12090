//! The multi-head model: a shared trunk and one linear head per task (task-incremental
//! learning). The trunk is either the MLP's dense ReLU layers on the flattened input, or, when
//! the model carries an [`Arch`], a sequential conv trunk (conv, pooling, flatten, dense,
//! dropout) on `[C, H, W]` images. Sizes come from the pipeline at run time, so layers are
//! plain dfdx tensors with `usize` dims rather than `nn::Linear`. Every weighted layer (conv
//! or dense) is one `(weight, bias)` pair with one weight row per unit, so the stages, the
//! masked optimizer and the importance methods see conv filters and dense neurons alike.
//!
//! Parameters live on the host as [`MlpParams`] (PyTorch layout: weight `[out, in]`) for
//! storage, and on the device as flat 1-D tensors for training. The device forward pass computes
//! in transposed form, `zᵀ = W · xᵀ`, so that parameters are always the left operand: dfdx
//! merges gradient tapes left to right, and this way the input needs no gradient of its own.

use super::arch::{Arch, Op};
use super::conv::{self, Tensor4};
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

/// A class label local to a task's head. 16 bits, so that a head can have more than 256
/// classes (ImageNet's 1000); stored as U8 in split artifacts when every label fits, as U16
/// otherwise.
pub type Label = u16;

/// Host-side parameters of the whole model. A conv layer's `DenseParams` holds its
/// `[O, C, kh, kw]` weight as `out_dim = O`, `in_dim = C·kh·kw`.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpParams {
    pub trunk: Vec<DenseParams>,
    pub heads: Vec<DenseParams>,
    /// Hidden activation: 0 is ReLU, anything else leaky ReLU with this negative slope.
    pub negative_slope: f32,
    /// The trunk's layers for a conv model; `None` for the MLP (dense layers only, on the
    /// flattened input), whose files then keep their exact bytes.
    pub arch: Option<Arch>,
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

impl MlpParams {
    pub fn init(input_dim: usize, hidden: &[usize], rng: &mut impl Rng) -> Self {
        let mut trunk = Vec::new();
        let mut prev = input_dim;
        for &h in hidden {
            trunk.push(DenseParams::init(prev, h, rng));
            prev = h;
        }
        MlpParams {
            trunk,
            heads: vec![],
            negative_slope: 0.0,
            arch: None,
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
        MlpParams {
            trunk,
            heads: vec![],
            negative_slope: 0.0,
            arch: Some(arch.clone()),
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
            return Ok(MlpParams {
                trunk,
                heads,
                negative_slope,
                arch: Some(a),
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
        Ok(MlpParams {
            trunk,
            heads,
            negative_slope,
            arch: None,
        })
    }
}

pub type Vector<D, T = NoneTape> = Tensor<(usize,), f32, D, T>;
pub type Matrix<D, T = NoneTape> = Tensor<(usize, usize), f32, D, T>;

/// Parameters on a device: `[w0, b0, w1, b1, …]` for the trunk, then the heads likewise.
pub struct DeviceMlp<D: Device<f32>> {
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
}

/// Activation memory one batched pass may take ([`DeviceMlp::batch_within`]). A fixed number,
/// not the machine's free memory, so that batches (and the float sums over them) are the same
/// on every machine.
const BATCH_MEMORY: usize = 2 << 30;

impl<D: Device<f32>> DeviceMlp<D> {
    pub fn from_host(dev: &D, p: &MlpParams) -> Self {
        let mut params = Vec::new();
        let mut shapes = Vec::new();
        for l in p.layers() {
            params.push(dev.tensor_from_vec(l.weight.clone(), (l.weight.len(),)));
            params.push(dev.tensor_from_vec(l.bias.clone(), (l.bias.len(),)));
            shapes.push((l.out_dim, l.in_dim));
        }
        DeviceMlp {
            dev: dev.clone(),
            params,
            shapes,
            n_trunk: p.trunk.len(),
            negative_slope: p.negative_slope,
            arch: p.arch.clone(),
            dropout_seed: None,
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

    pub fn to_host(&self) -> MlpParams {
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
        MlpParams {
            trunk,
            heads,
            negative_slope: self.negative_slope,
            arch: self.arch.clone(),
        }
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
        let params: Vec<Vector<D>> = self
            .path(head)
            .iter()
            .map(|&i| self.params[i].clone())
            .collect();
        if let Some(a) = &self.arch {
            return forward_seq(params, a, x, unit_masks, self.negative_slope, None, None);
        }
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

    /// Value and parameter gradients of a scalar `objective` of `head`'s logits on a batch.
    pub fn grads_of(
        &self,
        x: &Matrix<D>,
        head: usize,
        objective: Objective,
    ) -> (f32, Vec<(usize, Vector<D>)>) {
        let path = self.path(head);
        let traced: Vec<Vector<D, OwnedTape<f32, D>>> =
            path.iter().map(|&i| self.params[i].leaky_trace()).collect();
        let batch = x.shape().0 as f32;
        if let Some(a) = &self.arch {
            // Logits come out `[batch, classes]` and contiguous, so no transposition is needed.
            let logits = forward_seq(
                traced,
                a,
                x,
                None,
                self.negative_slope,
                self.dropout_seed,
                None,
            );
            let loss = match objective {
                Objective::CrossEntropy(labels) => {
                    let classes = self.shapes[self.n_trunk + head].0;
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
            };
            return self.value_and_grads(loss, &path);
        }
        let shapes = self.layer_shapes(head);
        let logits_t = forward_t(traced, &shapes, x, None, self.negative_slope);
        // Objectives work on `logitsᵀ` [classes, batch] directly: dfdx 0.13's log_softmax
        // backward mishandles permuted (non-contiguous) inputs, so nothing taped is permuted.
        let loss = match objective {
            Objective::CrossEntropy(labels) => {
                let classes = self.shapes[self.n_trunk + head].0;
                let targets_t = one_hot_t(&self.dev, labels, classes);
                (logits_t.log_softmax::<Axis<0>>() * targets_t)
                    .sum::<(), _>()
                    .negate()
                    / batch
            }
            Objective::SquaredNorm => logits_t.square().sum::<(), _>() / batch,
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
        let grads = loss.backward();
        let out = path
            .iter()
            .map(|&i| (i, grads.get(&self.params[i])))
            .collect();
        (value, out)
    }

    /// Each layer's input activations for `x` (the input itself, then every hidden layer's
    /// ReLU output), row-major `[batch, width]`.
    pub fn activations(&self, x: &Matrix<D>) -> Vec<Vec<f32>> {
        let batch = x.shape().0;
        let mut out = vec![x.as_vec()];
        let mut a = x.clone();
        for l in 0..self.n_trunk {
            let (o, i) = self.shapes[l];
            let w = self.params[2 * l].clone().reshape_like(&(o, i));
            let b = self.params[2 * l + 1]
                .clone()
                .broadcast_like::<_, Axis<0>>(&(batch, o));
            a = activation(
                a.matmul(w.permute::<_, Axes2<1, 0>>()) + b,
                self.negative_slope,
            );
            out.push(a.as_vec());
        }
        out
    }
}

/// A scalar function of a head's logits whose parameter gradients are wanted.
#[derive(Debug, Clone, Copy)]
pub enum Objective<'a> {
    /// Mean cross-entropy against these labels (local to the head).
    CrossEntropy(&'a [Label]),
    /// Mean over samples of the squared L2 norm of the logits (MAS).
    SquaredNorm,
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
    let xt: Matrix<D> = x.clone().permute::<_, Axes2<1, 0>>();
    let mut it = params.into_iter();
    let n = shapes.len();
    for (l, &(out, inp)) in shapes.iter().enumerate() {
        let w = it
            .next()
            .expect("weight per layer")
            .reshape_like(&(out, inp));
        let b = it.next().expect("bias per layer");
        let z = match h.take() {
            None => w.matmul(xt.clone()),
            Some(prev) => w.matmul(prev),
        };
        let z = z + b.broadcast_like::<_, Axis<1>>(&(out, batch));
        let last = l + 1 == n;
        h = Some(if last {
            z
        } else {
            let a = activation(z, negative_slope);
            match unit_masks {
                Some(m) => a * m[l].clone().broadcast_like::<_, Axis<1>>(&(out, batch)),
                None => a,
            }
        });
    }
    h.expect("at least one layer")
}

/// The activation between layers of a conv model's forward pass.
enum SeqAct<D: Device<f32>, T> {
    /// The untraced input, so that the first convolution can skip its input gradient.
    Input(Tensor4<D>),
    Map(Tensor4<D, T>),
    Flat(Matrix<D, T>),
}

/// Seed of dropout layer `layer`'s mask in the step seeded `step`.
fn dropout_layer_seed(step: u64, layer: usize) -> u64 {
    step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (layer as u64 + 1)
}

/// The input's probe and one probe per weighted trunk layer.
type Probes<D, T> = (Tensor4<D, T>, Vec<Probe<D, T>>);

/// A tensor of ones multiplied into an activation, so that its gradient is the activation
/// times the gradient w.r.t. the activation (gradient × input, in one backward pass).
pub enum Probe<D: Device<f32>, T> {
    Map(Tensor4<D, T>),
    Flat(Matrix<D, T>),
}

impl<D: Device<f32>> DeviceMlp<D> {
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
        let ones: Vec<Probe<D, NoneTape>> = arch
            .weighted()
            .iter()
            .map(|spec| match feats[spec.op + 1] {
                super::arch::Feature::Map(o, fh, fw) => {
                    Probe::Map(self.dev.ones_like(&(batch, o, fh, fw)))
                }
                super::arch::Feature::Flat(n) => Probe::Flat(self.dev.ones_like(&(batch, n))),
            })
            .collect();
        let traced_probes: Vec<Probe<D, OwnedTape<f32, D>>> = ones
            .iter()
            .map(|p| match p {
                Probe::Map(t) => Probe::Map(t.leaky_trace()),
                Probe::Flat(t) => Probe::Flat(t.leaky_trace()),
            })
            .collect();
        let traced: Vec<Vector<D, OwnedTape<f32, D>>> = self
            .path(head)
            .iter()
            .map(|&i| self.params[i].leaky_trace())
            .collect();
        let logits = forward_seq(
            traced,
            arch,
            x,
            None,
            self.negative_slope,
            None,
            Some((input_probe.leaky_trace(), traced_probes)),
        );
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
                Probe::Map(t) => grads.get(t).as_vec(),
                Probe::Flat(t) => grads.get(t).as_vec(),
            })
            .collect();
        (hidden, grads.get(&input_probe).as_vec(), explained)
    }
}

/// A conv model's forward pass: `x: [batch, C·H·W]` (NCHW per sample) → logits
/// `[batch, classes]` of the head whose weight and bias are the last two of `params` (the
/// trunk's in order before them). With `unit_masks`, weighted trunk layer `l`'s activation
/// (every position of a filter's map) is multiplied by `unit_masks[l]`.
fn forward_seq<D: Device<f32>, T: Tape<f32, D> + Merge<T> + Merge<NoneTape>>(
    params: Vec<Vector<D, T>>,
    arch: &Arch,
    x: &Matrix<D>,
    unit_masks: Option<&[Vector<D>]>,
    negative_slope: f32,
    dropout_seed: Option<u64>,
    probes: Option<Probes<D, T>>,
) -> Matrix<D, T> {
    let batch = x.shape().0;
    let [c, h, w] = arch.input;
    let weighted = arch.weighted();
    let mut it = params.into_iter();
    let x4 = x.clone().reshape_like(&(batch, c, h, w));
    let (mut act, mut probes): (SeqAct<D, T>, _) = match probes {
        None => (SeqAct::Input(x4), None),
        Some((input, layers)) => (
            SeqAct::Map(x4.retaped::<T>() * input),
            Some(layers.into_iter()),
        ),
    };
    let mut wl = 0;
    let into_map = |a: SeqAct<D, T>| -> Tensor4<D, T> {
        match a {
            SeqAct::Input(x) => x.retaped::<T>(),
            SeqAct::Map(m) => m,
            SeqAct::Flat(_) => unreachable!("validated: map layers precede flatten"),
        }
    };
    for (i, op) in arch.layers.iter().enumerate() {
        act = match *op {
            Op::Conv {
                stride, padding, ..
            } => {
                let spec = weighted[wl];
                let (cin, kh, kw) = spec.conv.expect("a conv layer");
                let wt = it
                    .next()
                    .expect("weight per layer")
                    .reshape_like(&(spec.units, cin, kh, kw));
                let b = it.next().expect("bias per layer");
                let z = match act {
                    SeqAct::Input(x) => conv::conv2d(x, wt, b, stride, padding),
                    other => conv::conv2d(into_map(other), wt, b, stride, padding),
                };
                let a = activation(z, negative_slope);
                let a = match unit_masks {
                    Some(m) => {
                        let shape = *a.shape();
                        a * m[wl].clone().broadcast_like::<_, Axes3<0, 2, 3>>(&shape)
                    }
                    None => a,
                };
                let a = match probes.as_mut().and_then(|p| p.next()) {
                    Some(Probe::Map(p)) => a * p,
                    _ => a,
                };
                wl += 1;
                SeqAct::Map(a)
            }
            Op::Dense { units } => {
                let SeqAct::Flat(hf) = act else {
                    unreachable!("validated: dense follows flatten")
                };
                let fan_in = hf.shape().1;
                let wt = it
                    .next()
                    .expect("weight per layer")
                    .reshape_like(&(units, fan_in));
                let b = it.next().expect("bias per layer");
                let z = hf.matmul(wt.permute::<_, Axes2<1, 0>>())
                    + b.broadcast_like::<_, Axis<0>>(&(batch, units));
                let a = activation(z, negative_slope);
                let a = match unit_masks {
                    Some(m) => a * m[wl].clone().broadcast_like::<_, Axis<0>>(&(batch, units)),
                    None => a,
                };
                let a = match probes.as_mut().and_then(|p| p.next()) {
                    Some(Probe::Flat(p)) => a * p,
                    _ => a,
                };
                wl += 1;
                SeqAct::Flat(a)
            }
            Op::MaxPool { kernel, stride } => {
                SeqAct::Map(conv::max_pool2d(into_map(act), kernel, stride))
            }
            Op::AvgPool { kernel, stride } => {
                SeqAct::Map(conv::avg_pool2d(into_map(act), kernel, stride))
            }
            Op::AdaptiveAvgPool { size: [sh, sw] } => {
                SeqAct::Map(conv::adaptive_avg_pool2d(into_map(act), sh, sw))
            }
            Op::Flatten => SeqAct::Flat(conv::flatten(into_map(act))),
            Op::Dropout { p } => match dropout_seed {
                None => act,
                Some(s) => {
                    let seed = dropout_layer_seed(s, i);
                    match act {
                        SeqAct::Flat(f) => SeqAct::Flat(conv::dropout(f, p, seed, true)),
                        other => SeqAct::Map(conv::dropout(into_map(other), p, seed, true)),
                    }
                }
            },
        };
    }
    let SeqAct::Flat(hf) = act else {
        unreachable!("validated: the trunk ends in flat features")
    };
    let fan_in = hf.shape().1;
    let wt = it.next().expect("head weight");
    let classes = wt.shape().0 / fan_in.max(1);
    let wt = wt.reshape_like(&(classes, fan_in));
    let b = it.next().expect("head bias");
    hf.matmul(wt.permute::<_, Axes2<1, 0>>()) + b.broadcast_like::<_, Axis<0>>(&(batch, classes))
}

/// `[batch, in]` f32 tensor from byte images scaled to k/255.
pub fn images_to_tensor<D: Device<f32>>(dev: &D, pixels: &[u8], dim: usize) -> Matrix<D> {
    let data: Vec<f32> = pixels.iter().map(|&p| p as f32 / 255.0).collect();
    dev.tensor_from_vec(data, (pixels.len() / dim.max(1), dim))
}

/// One-hot targets, transposed: `[classes, batch]`.
pub fn one_hot_t<D: Device<f32>>(dev: &D, labels: &[Label], classes: usize) -> Matrix<D> {
    let n = labels.len();
    let mut data = vec![0f32; n * classes];
    for (i, &y) in labels.iter().enumerate() {
        data[y as usize * n + i] = 1.0;
    }
    dev.tensor_from_vec(data, (classes, n))
}

/// Index of the largest logit per row (first wins on ties, like `torch.argmax`).
pub fn argmax_rows(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks_exact(classes)
        .map(|row| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn tiny() -> MlpParams {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut p = MlpParams::init(5, &[4, 3], &mut rng);
        p.push_head(2, &mut rng);
        p.push_head(3, &mut rng);
        p
    }

    /// Reference forward on the host in f64.
    fn host_logits(p: &MlpParams, x: &[f32], head: usize) -> Vec<f64> {
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
        let m = DeviceMlp::from_host(&dev, &p);
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
        let m = DeviceMlp::from_host(&dev, &p);
        let x: Vec<f32> = (0..15).map(|i| (i as f32 * 0.71).cos()).collect();
        let xt = dev.tensor_from_vec(x.clone(), (3, 5));
        let (loss, grads) = m.loss_and_grads(&xt, &[0, 2, 1], 1);
        let host_loss = |p: &MlpParams| -> f64 {
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
                let bump = |q: &mut MlpParams, d: f32| {
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
    fn tensors_round_trip() {
        let p = tiny();
        let back = MlpParams::from_tensors(p.to_tensors()).unwrap();
        assert_eq!(back, p);
        let dev = Cpu::default();
        assert_eq!(DeviceMlp::from_host(&dev, &p).to_host(), p);
    }
}
