//! The architecture of a sequential (convolutional) trunk: its input shape, its layers, and the
//! per-channel normalisation applied when image bytes become tensors. A multi-head MLP needs
//! none of this (its model has no `Arch`); every conv model (`cnn`, `small_cnn`, `vgg16`)
//! carries one, in the spec (so it is part of the train stage's key) and next to its weights in
//! every model artifact (`arch.json`), so stages that only read a model know how to run it.
//!
//! Layers that hold parameters are `conv` and `dense`; each is followed by the trunk's
//! activation (ReLU or leaky ReLU), and each one's *units* are its output channels (filters) or
//! neurons. Their weights are stored row-major with one row per unit, so a conv layer's
//! `[O, C, kh, kw]` weight is also an `[O, C·kh·kw]` matrix whose row `j` is filter `j`'s
//! incoming weights: masking, freezing and magnitude scores treat conv and dense rows alike.

use serde::{Deserialize, Serialize};

/// One trunk layer, in order. Pooling has no padding and floors its output size (PyTorch's
/// defaults); `adaptive_avg_pool` is PyTorch's `AdaptiveAvgPool2d`; dropout is inverted
/// dropout, seeded, active only in training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Conv {
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    Dense {
        units: usize,
    },
    MaxPool {
        kernel: usize,
        stride: usize,
    },
    AvgPool {
        kernel: usize,
        stride: usize,
    },
    AdaptiveAvgPool {
        size: [usize; 2],
    },
    Flatten,
    Dropout {
        p: f32,
    },
}

/// Per-channel input normalisation: `x = (byte/255 − mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// A conv model's trunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arch {
    /// `[C, H, W]` of one sample.
    pub input: [usize; 3],
    pub layers: Vec<Op>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<Normalization>,
}

/// The activation between two layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// `[C, H, W]` maps.
    Map(usize, usize, usize),
    /// A flat vector.
    Flat(usize),
}

impl Feature {
    pub fn len(&self) -> usize {
        match *self {
            Feature::Map(c, h, w) => c * h * w,
            Feature::Flat(n) => n,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Feature::Map(c, h, w) => write!(f, "{c}×{h}×{w} maps"),
            Feature::Flat(n) => write!(f, "{n} features"),
        }
    }
}

/// A layer that cannot be applied to what reaches it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("layer {layer}: {message}")]
pub struct GeometryError {
    /// Index into `Arch::layers`; `layers.len()` means "the end of the trunk".
    pub layer: usize,
    pub message: String,
}

/// A layer with parameters, as the rest of the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weighted {
    /// Index into `Arch::layers`.
    pub op: usize,
    pub units: usize,
    /// Inputs per unit (`C·kh·kw` for conv).
    pub fan_in: usize,
    /// `Some((C, kh, kw))` for conv layers.
    pub conv: Option<(usize, usize, usize)>,
}

impl Arch {
    /// The feature shape after every layer (`out[0]` is the input, `out[i + 1]` the output of
    /// layer `i`), or the first layer that cannot run. The trunk must end in flat features,
    /// which the task heads read.
    pub fn features(&self) -> Result<Vec<Feature>, GeometryError> {
        let [c, h, w] = self.input;
        let err = |layer: usize, message: String| GeometryError { layer, message };
        if c == 0 || h == 0 || w == 0 {
            return Err(err(0, format!("empty input shape [{c}, {h}, {w}]")));
        }
        let mut out = vec![Feature::Map(c, h, w)];
        for (i, op) in self.layers.iter().enumerate() {
            let cur = *out.last().expect("input");
            let map = |what: &str| match cur {
                Feature::Map(c, h, w) => Ok((c, h, w)),
                Feature::Flat(_) => Err(err(
                    i,
                    format!("{what} needs image maps, but it follows `flatten`"),
                )),
            };
            let window = |what: &str, k: usize, s: usize, pad: usize, h: usize, w: usize| {
                if k == 0 || s == 0 {
                    return Err(err(i, format!("{what}: kernel and stride must be >= 1")));
                }
                if k > h + 2 * pad || k > w + 2 * pad {
                    return Err(err(
                        i,
                        format!(
                            "{what}: kernel {k} is larger than its {h}×{w} input{}; remove a pooling layer or use a smaller kernel",
                            if pad > 0 { format!(" padded by {pad}") } else { String::new() }
                        ),
                    ));
                }
                Ok(((h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1))
            };
            let next = match *op {
                Op::Conv {
                    out_channels,
                    kernel,
                    stride,
                    padding,
                } => {
                    let (_, h, w) = map("conv")?;
                    if out_channels == 0 {
                        return Err(err(i, "conv: out_channels must be >= 1".into()));
                    }
                    let (ho, wo) = window("conv", kernel, stride, padding, h, w)?;
                    Feature::Map(out_channels, ho, wo)
                }
                Op::MaxPool { kernel, stride } | Op::AvgPool { kernel, stride } => {
                    let (c, h, w) = map("pooling")?;
                    let (ho, wo) = window("pooling", kernel, stride, 0, h, w)?;
                    Feature::Map(c, ho, wo)
                }
                Op::AdaptiveAvgPool { size: [sh, sw] } => {
                    let (c, _, _) = map("adaptive_avg_pool")?;
                    if sh == 0 || sw == 0 {
                        return Err(err(i, "adaptive_avg_pool: size must be >= 1".into()));
                    }
                    Feature::Map(c, sh, sw)
                }
                Op::Flatten => {
                    let (c, h, w) = map("flatten")?;
                    Feature::Flat(c * h * w)
                }
                Op::Dense { units } => {
                    if matches!(cur, Feature::Map(..)) {
                        return Err(err(
                            i,
                            format!("dense needs flat features, but receives {cur}; add `flatten` before it"),
                        ));
                    }
                    if units == 0 {
                        return Err(err(i, "dense: units must be >= 1".into()));
                    }
                    Feature::Flat(units)
                }
                Op::Dropout { p } => {
                    if !(0.0..1.0).contains(&p) {
                        return Err(err(i, format!("dropout: expected p in [0, 1), found {p}")));
                    }
                    cur
                }
            };
            out.push(next);
        }
        if let Some(f @ Feature::Map(..)) = out.last() {
            return Err(err(
                self.layers.len(),
                format!("the trunk ends in {f}; the task heads need flat features, so end it with `flatten` (and dense layers)"),
            ));
        }
        Ok(out)
    }

    /// The layers with parameters, in order. Assumes [`Arch::features`] succeeded.
    pub fn weighted(&self) -> Vec<Weighted> {
        let feats = self.features().unwrap_or_default();
        let mut out = Vec::new();
        for (i, op) in self.layers.iter().enumerate() {
            let input = feats.get(i).copied().unwrap_or(Feature::Flat(0));
            match *op {
                Op::Conv {
                    out_channels,
                    kernel,
                    ..
                } => {
                    let c = match input {
                        Feature::Map(c, _, _) => c,
                        Feature::Flat(n) => n,
                    };
                    out.push(Weighted {
                        op: i,
                        units: out_channels,
                        fan_in: c * kernel * kernel,
                        conv: Some((c, kernel, kernel)),
                    });
                }
                Op::Dense { units } => out.push(Weighted {
                    op: i,
                    units,
                    fan_in: input.len(),
                    conv: None,
                }),
                _ => {}
            }
        }
        out
    }

    /// Units per layer with parameters (filters or neurons).
    pub fn units(&self) -> Vec<usize> {
        self.weighted().iter().map(|w| w.units).collect()
    }

    /// Inputs of every task head.
    pub fn head_inputs(&self) -> usize {
        self.features()
            .ok()
            .and_then(|f| f.last().copied())
            .map(|f| f.len())
            .unwrap_or(0)
    }

    /// Floats one sample occupies in a forward pass that keeps every layer's output, plus the
    /// largest conv's unfolded input (`C·kh·kw` per output position): an upper bound on the
    /// activation memory per sample, used to size batches. Assumes [`Arch::features`] succeeded.
    pub fn floats_per_sample(&self) -> usize {
        let feats = self.features().unwrap_or_default();
        let unfolded = self
            .weighted()
            .iter()
            .filter(|w| w.conv.is_some())
            .map(|w| {
                w.fan_in
                    * feats
                        .get(w.op + 1)
                        .map(|f| f.len() / w.units.max(1))
                        .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        feats.iter().map(Feature::len).sum::<usize>() + unfolded
    }

    /// Input values per sample.
    pub fn input_len(&self) -> usize {
        self.input.iter().product()
    }

    /// Whether a dataset's per-sample shape fits: `[C, H, W]` exactly, or `[H, W]` for one
    /// channel (MNIST's `[28, 28]` is `[1, 28, 28]`).
    pub fn accepts(&self, sample_shape: &[usize]) -> bool {
        match sample_shape {
            [c, h, w] => [*c, *h, *w] == self.input,
            [h, w] => [1, *h, *w] == self.input,
            _ => false,
        }
    }
}

/// VGG-16's conv widths and pooling positions (`0` = max pool 2×2), as in torchvision's
/// configuration "D".
const VGG16_CFG: [usize; 18] = [
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
];

/// VGG-16 in torchvision's layout, with every width divided by `width_divisor` (1 = the real
/// network). `input_size: 224` is torchvision's: adaptive average pooling to 7×7 and a
/// classifier 25088 → 4096 → 4096 → classes. `input_size: 32` (CIFAR) drops the adaptive pool
/// (the maps are 1×1 after five poolings) and uses a 512 → 512 → 512 → classes classifier.
/// The last classifier layer is a task head; the two before it belong to the trunk, each
/// followed by ReLU and dropout 0.5 as in torchvision.
pub fn vgg16(input_size: usize, width_divisor: usize, input_channels: usize) -> Arch {
    let d = width_divisor.max(1);
    let mut layers = Vec::new();
    for &w in &VGG16_CFG {
        layers.push(if w == 0 {
            Op::MaxPool {
                kernel: 2,
                stride: 2,
            }
        } else {
            Op::Conv {
                out_channels: (w / d).max(1),
                kernel: 3,
                stride: 1,
                padding: 1,
            }
        });
    }
    let hidden = if input_size == 32 {
        (512 / d).max(1)
    } else {
        layers.push(Op::AdaptiveAvgPool { size: [7, 7] });
        (4096 / d).max(1)
    };
    layers.push(Op::Flatten);
    for _ in 0..2 {
        layers.push(Op::Dense { units: hidden });
        layers.push(Op::Dropout { p: 0.5 });
    }
    Arch {
        input: [input_channels, input_size, input_size],
        layers,
        normalize: None,
    }
}

/// A small CNN for 32×32 (or 28×28) images: two conv(3×3, pad 1) + max-pool blocks of
/// `16` and `32` filters, then flatten and a dense layer of 64 units.
pub fn small_cnn(input: [usize; 3]) -> Arch {
    let conv = |out_channels| Op::Conv {
        out_channels,
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    let pool = Op::MaxPool {
        kernel: 2,
        stride: 2,
    };
    Arch {
        input,
        layers: vec![
            conv(16),
            pool.clone(),
            conv(32),
            pool,
            Op::Flatten,
            Op::Dense { units: 64 },
        ],
        normalize: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vgg16_geometry_matches_torchvision() {
        let a = vgg16(224, 1, 3);
        let f = a.features().unwrap();
        assert_eq!(f[f.len() - 5], Feature::Flat(25088));
        assert_eq!(a.units().len(), 15);
        assert_eq!(a.head_inputs(), 4096);
        let c = vgg16(32, 8, 3);
        assert_eq!(c.features().unwrap()[18], Feature::Map(64, 1, 1));
        assert_eq!(c.head_inputs(), 64);
    }

    #[test]
    fn impossible_geometry_names_the_layer() {
        let mut a = small_cnn([1, 4, 4]);
        a.layers.insert(
            2,
            Op::MaxPool {
                kernel: 4,
                stride: 4,
            },
        );
        let e = a.features().unwrap_err();
        assert_eq!(e.layer, 2);
        assert!(e.message.contains("larger than its 2×2 input"), "{e}");
        let mut b = small_cnn([1, 8, 8]);
        b.layers.retain(|l| *l != Op::Flatten);
        assert_eq!(b.features().unwrap_err().layer, 4);
        b.layers.truncate(4);
        assert_eq!(b.features().unwrap_err().layer, 4);
    }
}
