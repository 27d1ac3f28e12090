//! Loading torchvision's VGG-16 state dict (saved as safetensors) into cfpipe's VGG-16.
//!
//! Name mapping (torchvision → cfpipe model file), for `torchvision.models.vgg16`:
//!
//! | torchvision | cfpipe | layer |
//! |---|---|---|
//! | `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.weight` / `.bias` | `trunk.0` … `trunk.12` | the 13 convolutions, `[O, C, 3, 3]` |
//! | `classifier.0.weight` / `.bias` | `trunk.13` | first classifier layer (25088 → 4096 at 224×224) |
//! | `classifier.3.weight` / `.bias` | `trunk.14` | second classifier layer (4096 → 4096) |
//! | `classifier.6.weight` / `.bias` | `heads.0` | the 1000-way output: the head of task 1 (ImageNet) |
//!
//! The ReLUs, max pools, adaptive average pool and dropouts (`features.1`, `classifier.2`, …)
//! have no parameters. Later tasks add their own heads. Convert a torchvision model with
//!
//! ```text
//! python3 -c "import torchvision; from safetensors.torch import save_file; m = torchvision.models.vgg16(weights='IMAGENET1K_V1'); save_file({k: v.contiguous() for k, v in m.state_dict().items()}, 'vgg16.safetensors')"
//! ```
//!
//! Every tensor is checked against the architecture (including a width-reduced one): missing
//! tensors, unexpected ones and every shape that disagrees are listed together in one error.

use super::arch::Arch;
use super::model::{DenseParams, ModelParams};
use super::tensorio::{self, HostTensor};
use std::collections::BTreeMap;

/// torchvision's `features.N` index of each of VGG-16's 13 convolutions.
pub const VGG16_CONV_INDICES: [usize; 13] = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];
/// torchvision's `classifier.N` index of the three linear layers; the last one is a head.
pub const VGG16_CLASSIFIER_INDICES: [usize; 3] = [0, 3, 6];

/// What becomes of torchvision's 1000-way `classifier.6` (`model.pretrained_head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PretrainedHead {
    /// It is task 1's head (task 1 is the pretraining task itself, e.g. ImageNet).
    #[default]
    Task1,
    /// Only the trunk is kept: every task, task 1 included, gets a fresh head (transfer to
    /// new tasks, e.g. Adience split from ImageNet weights). `classifier.6` is ignored,
    /// whatever its shape.
    Drop,
}

/// One tensor that does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub name: String,
    /// `None`: missing from the file.
    pub found: Option<Vec<usize>>,
    /// `None`: not part of VGG-16.
    pub expected: Option<Vec<usize>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TorchvisionError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Format {
        path: String,
        source: tensorio::TensorIoError,
    },
    #[error("{path}: tensor `{name}` is not f32 (convert with `.float()` before saving)")]
    Dtype { path: String, name: String },
    #[error("{path} does not fit the configured VGG-16 ({} tensors disagree):\n{}", .mismatches.len(), list(.mismatches))]
    Mismatch {
        path: String,
        mismatches: Vec<Mismatch>,
    },
    #[error("the architecture is not VGG-16's ({0} weighted trunk layers, expected 15)")]
    NotVgg(usize),
}

fn list(m: &[Mismatch]) -> String {
    let shape = |s: &Option<Vec<usize>>, none: &str| match s {
        Some(s) => format!("{s:?}"),
        None => none.to_string(),
    };
    m.iter()
        .map(|m| {
            format!(
                "  {}: found {}, expected {}",
                m.name,
                shape(&m.found, "nothing (missing)"),
                shape(&m.expected, "nothing (not a VGG-16 tensor)")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// torchvision names, in cfpipe order (trunk layers then the head), with expected shapes.
fn expected(
    arch: &Arch,
    head_classes: Option<usize>,
) -> Result<Vec<(String, Vec<usize>)>, TorchvisionError> {
    let w = arch.weighted();
    if w.len() != 15 {
        return Err(TorchvisionError::NotVgg(w.len()));
    }
    let mut out = Vec::new();
    for (l, spec) in w.iter().enumerate() {
        let prefix = if l < 13 {
            format!("features.{}", VGG16_CONV_INDICES[l])
        } else {
            format!("classifier.{}", VGG16_CLASSIFIER_INDICES[l - 13])
        };
        let wshape = match spec.conv {
            Some((c, kh, kw)) => vec![spec.units, c, kh, kw],
            None => vec![spec.units, spec.fan_in],
        };
        out.push((format!("{prefix}.weight"), wshape));
        out.push((format!("{prefix}.bias"), vec![spec.units]));
    }
    let classes = head_classes.unwrap_or(0);
    out.push((
        "classifier.6.weight".into(),
        vec![classes, arch.head_inputs()],
    ));
    out.push(("classifier.6.bias".into(), vec![classes]));
    Ok(out)
}

/// Decode torchvision VGG-16 tensors into a model with `arch` and, with
/// [`PretrainedHead::Task1`], one head (task 1) of `classes` outputs (`None`: whatever the file
/// holds, 1000 for ImageNet); with [`PretrainedHead::Drop`], no head.
pub fn vgg16_from_tensors(
    path: &str,
    mut m: BTreeMap<String, HostTensor>,
    arch: &Arch,
    classes: Option<usize>,
    head: PretrainedHead,
) -> Result<ModelParams, TorchvisionError> {
    let file_classes = m
        .get("classifier.6.bias")
        .and_then(|t| t.shape().first().copied());
    let mut want = expected(arch, classes.or(file_classes))?;
    if head == PretrainedHead::Drop {
        m.remove("classifier.6.weight");
        m.remove("classifier.6.bias");
        want.truncate(want.len() - 2);
    }
    let mut mismatches = Vec::new();
    for (name, shape) in &want {
        match m.get(name) {
            None => mismatches.push(Mismatch {
                name: name.clone(),
                found: None,
                expected: Some(shape.clone()),
            }),
            Some(t) if t.shape() != shape.as_slice() => mismatches.push(Mismatch {
                name: name.clone(),
                found: Some(t.shape().to_vec()),
                expected: Some(shape.clone()),
            }),
            Some(t) if t.as_f32().is_none() => {
                return Err(TorchvisionError::Dtype {
                    path: path.into(),
                    name: name.clone(),
                })
            }
            Some(_) => {}
        }
    }
    for (name, t) in &m {
        if !want.iter().any(|(n, _)| n == name) {
            mismatches.push(Mismatch {
                name: name.clone(),
                found: Some(t.shape().to_vec()),
                expected: None,
            });
        }
    }
    if !mismatches.is_empty() {
        return Err(TorchvisionError::Mismatch {
            path: path.into(),
            mismatches,
        });
    }
    let mut layers = Vec::new();
    for pair in want.chunks(2) {
        let take = |m: &mut BTreeMap<String, HostTensor>, n: &str| match m.remove(n) {
            Some(HostTensor::F32 { data, .. }) => data,
            _ => unreachable!("checked above"),
        };
        let weight = take(&mut m, &pair[0].0);
        let bias = take(&mut m, &pair[1].0);
        let out_dim = pair[1].1[0];
        layers.push(DenseParams {
            out_dim,
            in_dim: weight.len() / out_dim.max(1),
            weight,
            bias,
        });
    }
    let heads = match head {
        PretrainedHead::Task1 => vec![layers.pop().expect("a head")],
        PretrainedHead::Drop => Vec::new(),
    };
    Ok(ModelParams {
        trunk: layers,
        heads,
        negative_slope: 0.0,
        arch: Some(arch.clone()),
        scenario: Default::default(),
    })
}

/// Read a torchvision VGG-16 safetensors file; see [`vgg16_from_tensors`].
pub fn load_vgg16(
    path: &std::path::Path,
    arch: &Arch,
    classes: Option<usize>,
    head: PretrainedHead,
) -> Result<ModelParams, TorchvisionError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TorchvisionError::Read {
        path: shown.clone(),
        source,
    })?;
    let m = tensorio::decode(&bytes).map_err(|source| TorchvisionError::Format {
        path: shown.clone(),
        source,
    })?;
    vgg16_from_tensors(&shown, m, arch, classes, head)
}

/// The inverse mapping: a VGG-16 model's trunk and first head under torchvision's names
/// (for tests and for exporting back to PyTorch).
pub fn vgg16_to_tensors(p: &ModelParams) -> BTreeMap<String, HostTensor> {
    let mine = p.to_tensors();
    let mut out = BTreeMap::new();
    let rename = |cf: &str| -> Option<String> {
        let mut parts = cf.splitn(3, '.');
        let (group, idx, part) = (
            parts.next()?,
            parts.next()?.parse::<usize>().ok()?,
            parts.next()?,
        );
        match group {
            "trunk" if idx < 13 => Some(format!("features.{}.{part}", VGG16_CONV_INDICES[idx])),
            "trunk" => Some(format!(
                "classifier.{}.{part}",
                VGG16_CLASSIFIER_INDICES.get(idx - 13)?
            )),
            "heads" if idx == 0 => Some(format!("classifier.6.{part}")),
            _ => None,
        }
    };
    for (name, t) in mine {
        if let Some(n) = rename(&name) {
            out.insert(n, t);
        }
    }
    out
}
