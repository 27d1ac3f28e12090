//! The `model:` section: an MLP (`hidden`), or a conv model (`cnn` with its `layers`,
//! `small_cnn`, `vgg16`) resolved here into a complete [`Arch`] whose geometry is checked
//! against its `input_shape`, so a pooling layer that would shrink a map below 1×1 or a dense
//! layer on image maps is reported with its location before any work starts.

use super::raw::{Activation, HeadsKind, ModelKind, RawLayer, RawModel};
use super::resolved::ModelSpec;
use crate::nn::arch::{self, Arch, Normalization, Op};
use crate::nn::scenario::Scenario;
use crate::nn::torchvision::PretrainedHead;

/// Check the model section; report problems through `e(key_path, message)`.
pub(super) fn validate_model(raw: &RawModel, e: &mut dyn FnMut(&str, String)) -> ModelSpec {
    let negative_slope = match (raw.activation, raw.negative_slope) {
        (Activation::Relu, Some(_)) => {
            e(
                "model.negative_slope",
                "only used with `activation: leaky_relu`".into(),
            );
            0.0
        }
        (Activation::Relu, None) => 0.0,
        (Activation::LeakyRelu, s) => {
            let s = s.unwrap_or(0.01);
            super::numbers::checked(
                e,
                "model.negative_slope",
                s,
                s > 0.0 && s < 1.0,
                "a slope in (0, 1)",
            );
            s
        }
    };
    let scenario = match (raw.heads, raw.class_outputs) {
        (HeadsKind::ClassIncremental, outputs) => Scenario::ClassIncremental {
            outputs: outputs.unwrap_or_default(),
        },
        (heads, Some(_)) => {
            e(
                "model.class_outputs",
                "only used with `heads: class_incremental` (whether its outputs `grow` per task or exist `upfront`)".into(),
            );
            if heads == HeadsKind::Shared {
                Scenario::Shared
            } else {
                Scenario::PerTask
            }
        }
        (HeadsKind::Shared, None) => Scenario::Shared,
        (HeadsKind::PerTask, None) => Scenario::PerTask,
    };
    let kind = match raw.kind {
        ModelKind::Mlp => "mlp",
        ModelKind::Cnn => "cnn",
        ModelKind::SmallCnn => "small_cnn",
        ModelKind::Vgg16 => "vgg16",
    };
    // Keys that belong to other kinds are mistakes, not silently ignored.
    let only = |e: &mut dyn FnMut(&str, String), key: &str, present: bool, kinds: &str| {
        if present {
            e(
                &format!("model.{key}"),
                format!("not used by `kind: {kind}` (only by {kinds})"),
            );
        }
    };
    let is = |k: ModelKind| raw.kind == k;
    if !is(ModelKind::Mlp) {
        only(e, "hidden", raw.hidden.is_some(), "`mlp`");
    }
    if !is(ModelKind::Cnn) {
        only(e, "layers", raw.layers.is_some(), "`cnn`");
    }
    if !(is(ModelKind::Cnn) || is(ModelKind::SmallCnn)) {
        only(
            e,
            "input_shape",
            raw.input_shape.is_some(),
            "`cnn` and `small_cnn`",
        );
    }
    if !is(ModelKind::Vgg16) {
        for (key, present) in [
            ("input_size", raw.input_size.is_some()),
            ("input_channels", raw.input_channels.is_some()),
            ("width_divisor", raw.width_divisor.is_some()),
            ("pretrained", raw.pretrained.is_some()),
            ("pretrained_head", raw.pretrained_head.is_some()),
        ] {
            only(e, key, present, "`vgg16`");
        }
    }
    if raw.pretrained_head.is_some() && raw.pretrained.is_none() && is(ModelKind::Vgg16) {
        e(
            "model.pretrained_head",
            "only with `model.pretrained` (the torchvision file whose classifier.6 it keeps or drops)".into(),
        );
    }
    if is(ModelKind::Mlp) {
        only(
            e,
            "normalize",
            raw.normalize.is_some(),
            "conv models (`cnn`, `small_cnn`, `vgg16`)",
        );
    }

    if is(ModelKind::Mlp) {
        let mut hidden = Vec::new();
        match &raw.hidden {
            None => e(
                "model.hidden",
                "required for `kind: mlp`: hidden layer sizes, e.g. [400, 400]".into(),
            ),
            Some(h) if h.is_empty() => e(
                "model.hidden",
                "expected at least one hidden layer size".into(),
            ),
            Some(_) => {}
        }
        for (i, &h) in raw.hidden.iter().flatten().enumerate() {
            if !(1..=1_000_000).contains(&h) {
                e(
                    &format!("model.hidden.{i}"),
                    format!("expected a layer size in 1..=1000000, found {h}"),
                );
            }
            hidden.push(h.max(1) as usize);
        }
        return ModelSpec {
            kind: kind.into(),
            hidden,
            negative_slope,
            arch: None,
            conv_kernels: None,
            pretrained: None,
            pretrained_head: None,
            scenario,
        };
    }

    let input_shape = |e: &mut dyn FnMut(&str, String)| -> [usize; 3] {
        match &raw.input_shape {
            None => [1, 28, 28],
            Some(v) if v.len() == 3 && v.iter().all(|&d| (1..=100_000).contains(&d)) => {
                [v[0] as usize, v[1] as usize, v[2] as usize]
            }
            Some(v) => {
                e(
                    "model.input_shape",
                    format!("expected [channels, height, width] of positive sizes, found {v:?}"),
                );
                [1, 28, 28]
            }
        }
    };
    let mut a = match raw.kind {
        ModelKind::Cnn => {
            let input = input_shape(e);
            let layers = match &raw.layers {
                None => {
                    e(
                        "model.layers",
                        "required for `kind: cnn`: a list like [{conv: {out_channels: 8, kernel: 3}}, {max_pool: {kernel: 2}}, flatten]".into(),
                    );
                    vec![]
                }
                Some(l) => l
                    .iter()
                    .enumerate()
                    .map(|(i, l)| layer(l, &format!("model.layers.{i}"), e))
                    .collect(),
            };
            Arch {
                input,
                layers,
                normalize: None,
            }
        }
        ModelKind::SmallCnn => arch::small_cnn(input_shape(e)),
        ModelKind::Vgg16 => {
            let size = match raw.input_size {
                Some(s @ (32 | 224)) => s as usize,
                Some(s) => {
                    e(
                        "model.input_size",
                        format!("expected 224 (ImageNet) or 32 (CIFAR), found {s}"),
                    );
                    224
                }
                None => {
                    e(
                        "model.input_size",
                        "required for `kind: vgg16`: 224 (ImageNet) or 32 (CIFAR)".into(),
                    );
                    224
                }
            };
            let div = match raw.width_divisor {
                None => 1,
                Some(d) if (1..=64).contains(&d) => d as usize,
                Some(d) => {
                    e(
                        "model.width_divisor",
                        format!("expected an integer in 1..=64, found {d}"),
                    );
                    1
                }
            };
            let channels = match raw.input_channels {
                None => 3,
                Some(c) if (1..=64).contains(&c) => c as usize,
                Some(c) => {
                    e(
                        "model.input_channels",
                        format!("expected an integer in 1..=64, found {c}"),
                    );
                    3
                }
            };
            arch::vgg16(size, div, channels)
        }
        ModelKind::Mlp => unreachable!("handled above"),
    };
    if let Some(n) = &raw.normalize {
        let c = a.input[0];
        for (key, v) in [("mean", &n.mean), ("std", &n.std)] {
            if v.len() != c {
                e(
                    &format!("model.normalize.{key}"),
                    format!(
                        "expected one value per input channel ({c}), found {}",
                        v.len()
                    ),
                );
            }
        }
        for (i, &s) in n.std.iter().enumerate() {
            let path = format!("model.normalize.std.{i}");
            super::numbers::checked(e, &path, s, s > 0.0, "a standard deviation > 0");
        }
        for (i, &m) in n.mean.iter().enumerate() {
            let path = format!("model.normalize.mean.{i}");
            super::numbers::checked(e, &path, m, true, "a finite mean");
        }
        a.normalize = Some(Normalization {
            mean: n.mean.iter().map(|&v| v as f32).collect(),
            std: n.std.iter().map(|&v| v as f32).collect(),
        });
    }
    let mut units = Vec::new();
    match a.features() {
        Ok(_) => units = a.units(),
        Err(g) => {
            let at = if raw.kind == ModelKind::Cnn && g.layer < a.layers.len() {
                format!("model.layers.{}", g.layer)
            } else if raw.kind == ModelKind::Cnn {
                "model.layers".into()
            } else {
                "model".into()
            };
            e(&at, format!("{} (input {:?})", g.message, a.input));
        }
    }
    if units.is_empty() && a.features().is_ok() {
        e(
            "model.layers",
            "expected at least one conv or dense layer (their filters and neurons are the units RNF scores and freezes)".into(),
        );
    }
    ModelSpec {
        kind: kind.into(),
        hidden: units,
        negative_slope,
        conv_kernels: Some(crate::nn::conv::kernel_revision(&a)),
        arch: Some(a),
        pretrained: raw.pretrained.clone(),
        pretrained_head: raw.pretrained_head.filter(|h| *h != PretrainedHead::Task1),
        scenario,
    }
}

/// One `cnn` layer; sizes out of range are reported and replaced by 1 so geometry checks can
/// go on.
fn layer(l: &RawLayer, path: &str, e: &mut dyn FnMut(&str, String)) -> Op {
    let mut size = |key: &str, v: i64, min: i64| -> usize {
        if !(min..=1_000_000).contains(&v) {
            e(
                &format!("{path}.{key}"),
                format!("expected an integer in {min}..=1000000, found {v}"),
            );
            return min.max(1) as usize;
        }
        v as usize
    };
    match l {
        RawLayer::Conv(c) => Op::Conv {
            out_channels: size("conv.out_channels", c.out_channels, 1),
            kernel: size("conv.kernel", c.kernel, 1),
            stride: size("conv.stride", c.stride.unwrap_or(1), 1),
            padding: size("conv.padding", c.padding.unwrap_or(0), 0),
        },
        RawLayer::Dense(d) => Op::Dense {
            units: size("dense.units", d.units, 1),
        },
        RawLayer::MaxPool(p) => Op::MaxPool {
            kernel: size("max_pool.kernel", p.kernel, 1),
            stride: size("max_pool.stride", p.stride.unwrap_or(p.kernel), 1),
        },
        RawLayer::AvgPool(p) => Op::AvgPool {
            kernel: size("avg_pool.kernel", p.kernel, 1),
            stride: size("avg_pool.stride", p.stride.unwrap_or(p.kernel), 1),
        },
        RawLayer::AdaptiveAvgPool(a) => {
            if a.size.len() != 2 {
                e(
                    &format!("{path}.adaptive_avg_pool.size"),
                    format!("expected [height, width], found {:?}", a.size),
                );
                return Op::AdaptiveAvgPool { size: [1, 1] };
            }
            Op::AdaptiveAvgPool {
                size: [
                    size("adaptive_avg_pool.size.0", a.size[0], 1),
                    size("adaptive_avg_pool.size.1", a.size[1], 1),
                ],
            }
        }
        RawLayer::Flatten => Op::Flatten,
        RawLayer::Dropout(d) => {
            if !super::numbers::checked(
                e,
                &format!("{path}.dropout.p"),
                d.p,
                (0.0..1.0).contains(&d.p),
                "a probability in [0, 1)",
            ) {
                return Op::Dropout { p: 0.0 };
            }
            Op::Dropout { p: d.p as f32 }
        }
    }
}
