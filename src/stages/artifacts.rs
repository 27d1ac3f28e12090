//! The artifact formats stages exchange: split datasets, models, per-unit scores and masks.
//! Tensors go in safetensors files (openable from PyTorch), small metadata in JSON. Each
//! format has one encoder and one decoder here, so producers and consumers cannot drift.

use crate::exec::{Artifact, StageContext, StageError};
use crate::nn::arch::Arch;
use crate::nn::model::ModelParams;
use crate::nn::scenario::Scenario;
use crate::nn::tensor::Label;
use crate::nn::tensorio::{self, HostTensor, TensorMapExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const SPLIT_TENSORS: &str = "split.safetensors";
pub const SPLIT_META: &str = "split.json";
pub const MODEL_TENSORS: &str = "model.safetensors";
pub const UNITS_TENSORS: &str = "units.safetensors";

fn bad(what: &str, e: impl std::fmt::Display) -> StageError {
    StageError::invalid(format!("{what}: {e}"))
}

/// Samples of one task, labels already local to the task's head (0..classes).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Samples {
    pub x: Vec<u8>,
    pub y: Vec<Label>,
}

impl Samples {
    pub fn len(&self) -> usize {
        self.y.len()
    }
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskData {
    /// Global dataset labels of this task's classes, in head order.
    pub classes: Vec<Label>,
    pub train: Samples,
    pub test: Samples,
    /// Held out of the training data for selection (`evaluation.selection: validation`);
    /// `None` otherwise.
    pub val: Option<Samples>,
}

impl TaskData {
    /// The validation samples, or an error naming the task when the split holds none.
    pub fn validation(&self, t: usize) -> Result<&Samples, StageError> {
        self.val.as_ref().ok_or_else(|| {
            StageError::invalid(format!(
                "task {}: the split holds no validation samples (set evaluation.selection: validation)",
                t + 1
            ))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitMeta {
    pub sample_shape: Vec<usize>,
    pub tasks: Vec<TaskMeta>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMeta {
    pub classes: Vec<Label>,
    pub n_train: usize,
    pub n_test: usize,
    /// Validation samples; absent in splits without them, whose bytes stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_val: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SplitData {
    pub sample_shape: Vec<usize>,
    pub tasks: Vec<TaskData>,
}

fn too_many_classes() -> StageError {
    StageError::invalid("a class-incremental head holds at most 65536 classes")
}

impl SplitData {
    pub fn dim(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// Classes per task, in task order.
    pub fn class_counts(&self) -> Vec<usize> {
        self.tasks.iter().map(|t| t.classes.len()).collect()
    }

    /// The labels as `scenario`'s heads output them: class-incremental tasks' local labels
    /// move to their offset among all tasks' classes; other scenarios keep them.
    pub fn relabel(&mut self, scenario: Scenario) -> Result<(), StageError> {
        let offsets = self.label_offsets(scenario)?;
        for (task, offset) in self.tasks.iter_mut().zip(offsets) {
            if offset == 0 {
                continue;
            }
            for s in [&mut task.train, &mut task.test]
                .into_iter()
                .chain(task.val.as_mut())
            {
                for y in &mut s.y {
                    *y = y.checked_add(offset).ok_or_else(too_many_classes)?;
                }
            }
        }
        Ok(())
    }

    /// Each task's first output in its head under `scenario` ([`Scenario::offset`]), as a
    /// label: what [`Self::relabel`] adds to the task's labels, and what training adds to a
    /// batch's. Fails where a task's last class would lie past the 16-bit labels.
    pub fn label_offsets(&self, scenario: Scenario) -> Result<Vec<Label>, StageError> {
        let counts = self.class_counts();
        (0..counts.len())
            .map(|t| {
                let offset = scenario.offset(&counts, t);
                let last = (offset + counts[t]).saturating_sub(1);
                Label::try_from(last)
                    .and(Label::try_from(offset))
                    .map_err(|_| too_many_classes())
            })
            .collect()
    }

    pub fn task(&self, t: usize) -> Result<&TaskData, StageError> {
        self.tasks.get(t).ok_or_else(|| {
            StageError::invalid(format!(
                "split has {} tasks, task index {t} requested",
                self.tasks.len()
            ))
        })
    }

    pub fn to_artifact(&self, art: &mut Artifact) {
        let d = self.dim();
        let mut m = BTreeMap::new();
        for (t, task) in self.tasks.iter().enumerate() {
            let parts = [
                ("train", Some(&task.train)),
                ("test", Some(&task.test)),
                ("val", task.val.as_ref()),
            ];
            for (part, s) in parts.into_iter().filter_map(|(p, s)| Some((p, s?))) {
                m.insert(
                    format!("task{t}.{part}.x"),
                    HostTensor::u8(vec![s.len(), d], s.x.clone()),
                );
                // Bytes while every label fits (the format of data sets up to 256 classes).
                let y = if s.y.iter().all(|&v| v < 256) {
                    HostTensor::u8(vec![s.len()], s.y.iter().map(|&v| v as u8).collect())
                } else {
                    HostTensor::U16 {
                        shape: vec![s.len()],
                        data: s.y.clone(),
                    }
                };
                m.insert(format!("task{t}.{part}.y"), y);
            }
        }
        art.insert(SPLIT_TENSORS, tensorio::encode(&m));
        let meta = SplitMeta {
            sample_shape: self.sample_shape.clone(),
            tasks: self
                .tasks
                .iter()
                .map(|t| TaskMeta {
                    classes: t.classes.clone(),
                    n_train: t.train.len(),
                    n_test: t.test.len(),
                    n_val: t.val.as_ref().map(Samples::len),
                })
                .collect(),
        };
        art.insert(SPLIT_META, json_bytes(&meta));
    }

    pub fn load(ctx: &StageContext, slot: &str) -> Result<SplitData, StageError> {
        let meta: SplitMeta = read_json(ctx, slot, SPLIT_META)?;
        let mut m = tensorio::decode(&ctx.read_input(slot, SPLIT_TENSORS)?)
            .map_err(|e| bad(SPLIT_TENSORS, e))?;
        let mut tasks = Vec::new();
        for (t, tm) in meta.tasks.iter().enumerate() {
            let mut take = |part: &str| -> Result<Samples, StageError> {
                let (_, x) = m
                    .take_u8(&format!("task{t}.{part}.x"))
                    .map_err(|e| bad(SPLIT_TENSORS, e))?;
                let (_, y) = m
                    .take_labels(&format!("task{t}.{part}.y"))
                    .map_err(|e| bad(SPLIT_TENSORS, e))?;
                Ok(Samples { x, y })
            };
            let train = take("train")?;
            let test = take("test")?;
            let val = match tm.n_val {
                Some(_) => Some(take("val")?),
                None => None,
            };
            tasks.push(TaskData {
                classes: tm.classes.clone(),
                train,
                test,
                val,
            });
        }
        Ok(SplitData {
            sample_shape: meta.sample_shape,
            tasks,
        })
    }
}

/// A conv model's architecture, next to its weights (absent for the MLP, whose artifacts
/// keep their bytes).
pub const MODEL_ARCH: &str = "arch.json";
/// How the model's heads serve the tasks ([`Scenario`]); absent for `per_task`, so those
/// models keep their exact files.
pub const MODEL_SCENARIO: &str = "scenario.json";

/// Store a model; a non-finite weight fails the stage instead (a NaN model is never a result).
pub fn save_model(art: &mut Artifact, p: &ModelParams) -> Result<(), StageError> {
    let tensors = p.to_tensors();
    all_finite(MODEL_TENSORS, &tensors)?;
    art.insert(MODEL_TENSORS, tensorio::encode(&tensors));
    if let Some(a) = &p.arch {
        art.insert(MODEL_ARCH, json_bytes(a));
    }
    if !p.scenario.is_per_task() {
        art.insert(MODEL_SCENARIO, json_bytes(&p.scenario));
    }
    Ok(())
}

/// Fails, naming the tensor, where an f32 tensor holds NaN or ±∞.
fn all_finite(file: &str, tensors: &BTreeMap<String, HostTensor>) -> Result<(), StageError> {
    for (name, t) in tensors {
        if let HostTensor::F32 { data, .. } = t {
            if let Some((i, v)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(StageError::failed(format!(
                    "{file}: tensor `{name}` holds {v} at index {i}; nothing was stored"
                )));
            }
        }
    }
    Ok(())
}

pub fn load_model(ctx: &StageContext, slot: &str) -> Result<ModelParams, StageError> {
    read_model(&ctx.input(slot)?.output_path(""), slot)
}

/// A trained model from a train stage's output directory `out` (its `model.safetensors`, and
/// `arch.json` for a conv model); `name` labels read errors (the input slot in a stage).
pub fn read_model(out: &std::path::Path, name: &str) -> Result<ModelParams, StageError> {
    let read = |file: &str| {
        std::fs::read(out.join(file)).map_err(|source| StageError::Io {
            name: format!("{name}/{file}"),
            source,
        })
    };
    let m = tensorio::decode(&read(MODEL_TENSORS)?).map_err(|e| bad(MODEL_TENSORS, e))?;
    let arch: Option<Arch> = if out.join(MODEL_ARCH).exists() {
        let a: Arch = serde_json::from_slice(&read(MODEL_ARCH)?).map_err(|e| bad(MODEL_ARCH, e))?;
        a.features().map_err(|e| bad(MODEL_ARCH, e))?;
        Some(a)
    } else {
        None
    };
    let mut model = ModelParams::from_tensors_arch(m, arch).map_err(|e| bad(MODEL_TENSORS, e))?;
    if out.join(MODEL_SCENARIO).exists() {
        model.scenario =
            serde_json::from_slice(&read(MODEL_SCENARIO)?).map_err(|e| bad(MODEL_SCENARIO, e))?;
    }
    Ok(model)
}

pub const SI_TENSORS: &str = "si.safetensors";

/// The name of device parameter `i` (`[w0, b0, w1, b1, …]`, trunk then heads) in model files.
pub fn param_name(i: usize, n_trunk: usize) -> String {
    let l = i / 2;
    let part = if i.is_multiple_of(2) {
        "weight"
    } else {
        "bias"
    };
    if l < n_trunk {
        format!("trunk.{l}.{part}")
    } else {
        format!("heads.{}.{part}", l - n_trunk)
    }
}

/// Synaptic-intelligence path integrals of one training stage: per trained parameter tensor,
/// `omega/<name>` = −Σ_steps g·Δθ and `delta/<name>` = θ_end − θ_start.
pub fn save_si(
    art: &mut Artifact,
    n_trunk: usize,
    tensors: &[(usize, Vec<f32>, Vec<f32>)],
) -> Result<(), StageError> {
    let mut m = BTreeMap::new();
    for (i, omega, delta) in tensors {
        let name = param_name(*i, n_trunk);
        m.insert(
            format!("omega/{name}"),
            HostTensor::f32(vec![omega.len()], omega.clone()),
        );
        m.insert(
            format!("delta/{name}"),
            HostTensor::f32(vec![delta.len()], delta.clone()),
        );
    }
    all_finite(SI_TENSORS, &m)?;
    art.insert(SI_TENSORS, tensorio::encode(&m));
    Ok(())
}

/// `(omega, delta)` of parameter `name`, if that parameter was trained.
pub fn load_si(ctx: &StageContext, slot: &str) -> Result<BTreeMap<String, HostTensor>, StageError> {
    tensorio::decode(&ctx.read_input(slot, SI_TENSORS)?).map_err(|e| bad(SI_TENSORS, e))
}

/// Per-hidden-layer, per-unit values: `layer{l}` tensors (f32 scores or u8 flags).
pub fn save_unit_f32(art: &mut Artifact, layers: &[Vec<f32>]) {
    let m = layers
        .iter()
        .enumerate()
        .map(|(l, v)| {
            (
                format!("layer{l}"),
                HostTensor::f32(vec![v.len()], v.clone()),
            )
        })
        .collect();
    art.insert(UNITS_TENSORS, tensorio::encode(&m));
}

pub fn save_unit_flags(art: &mut Artifact, layers: &[Vec<bool>]) {
    let m = layers
        .iter()
        .enumerate()
        .map(|(l, v)| {
            (
                format!("layer{l}"),
                HostTensor::u8(vec![v.len()], v.iter().map(|&b| b as u8).collect()),
            )
        })
        .collect();
    art.insert(UNITS_TENSORS, tensorio::encode(&m));
}

fn load_units(ctx: &StageContext, slot: &str) -> Result<BTreeMap<String, HostTensor>, StageError> {
    tensorio::decode(&ctx.read_input(slot, UNITS_TENSORS)?).map_err(|e| bad(UNITS_TENSORS, e))
}

pub fn load_unit_f32(
    ctx: &StageContext,
    slot: &str,
    layers: usize,
) -> Result<Vec<Vec<f32>>, StageError> {
    let mut m = load_units(ctx, slot)?;
    (0..layers)
        .map(|l| {
            m.take_f32(&format!("layer{l}"))
                .map(|(_, v)| v)
                .map_err(|e| bad(UNITS_TENSORS, e))
        })
        .collect()
}

pub fn load_unit_flags(
    ctx: &StageContext,
    slot: &str,
    layers: usize,
) -> Result<Vec<Vec<bool>>, StageError> {
    let mut m = load_units(ctx, slot)?;
    (0..layers)
        .map(|l| {
            m.take_u8(&format!("layer{l}"))
                .map(|(_, v)| v.into_iter().map(|b| b != 0).collect())
                .map_err(|e| bad(UNITS_TENSORS, e))
        })
        .collect()
}

/// Per-unit data must match the model's hidden layer sizes.
pub fn check_unit_counts<T>(
    what: &str,
    layers: &[Vec<T>],
    sizes: &[usize],
) -> Result<(), StageError> {
    if layers.len() != sizes.len() {
        return Err(StageError::invalid(format!(
            "{what} has {} layers, the model {}",
            layers.len(),
            sizes.len()
        )));
    }
    for (l, (v, &n)) in layers.iter().zip(sizes).enumerate() {
        if v.len() != n {
            return Err(StageError::invalid(format!(
                "{what} layer {l} has {} units, the model {n}",
                v.len()
            )));
        }
    }
    Ok(())
}

/// Pretty, deterministic JSON (struct field order is fixed; maps are ordered).
pub fn json_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).expect("artifact metadata is plain data");
    b.push(b'\n');
    b
}

pub fn read_json<T: serde::de::DeserializeOwned>(
    ctx: &StageContext,
    slot: &str,
    file: &str,
) -> Result<T, StageError> {
    serde_json::from_slice(&ctx.read_input(slot, file)?).map_err(|e| bad(file, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_incremental_head_takes_labels_up_to_65535_and_no_further() {
        // Task 1 holds 65,535 classes: task 2's single class is label 65535, the last 16-bit
        // label, and training, relabelling and explaining agree that it fits; a second class
        // would not.
        let task = |classes: usize| TaskData {
            classes: vec![0; classes],
            train: Samples::default(),
            test: Samples {
                x: vec![0],
                y: vec![0],
            },
            val: None,
        };
        let split = |second: usize| SplitData {
            sample_shape: vec![1],
            tasks: vec![task(65_535), task(second)],
        };
        let class_il = Scenario::ClassIncremental {
            outputs: Default::default(),
        };
        assert_eq!(split(1).label_offsets(class_il).unwrap(), vec![0, 65_535]);
        let mut relabelled = split(1);
        relabelled.relabel(class_il).unwrap();
        assert_eq!(relabelled.tasks[1].test.y, vec![65_535]);
        let err = split(2).label_offsets(class_il).unwrap_err().to_string();
        assert!(err.contains("at most 65536 classes"), "{err}");
        assert!(split(2).relabel(class_il).is_err());
        // Per-task heads number each task's classes from 0: no limit on the total.
        assert_eq!(
            split(2).label_offsets(Scenario::PerTask).unwrap(),
            vec![0, 0]
        );
    }

    fn split_with(y: Vec<Label>) -> SplitData {
        let n = y.len();
        SplitData {
            sample_shape: vec![1],
            tasks: vec![TaskData {
                classes: (0..1000).collect(),
                train: Samples {
                    x: vec![0; n],
                    y: y.clone(),
                },
                test: Samples { x: vec![0; n], y },
                val: None,
            }],
        }
    }

    #[test]
    fn labels_are_bytes_while_they_fit_and_u16_beyond() {
        for (y, wide) in [(vec![0, 255, 7], false), (vec![0, 999, 256], true)] {
            let mut art = Artifact::new();
            split_with(y.clone()).to_artifact(&mut art);
            let mut m = tensorio::decode(&art.files[SPLIT_TENSORS]).unwrap();
            let t = &m["task0.train.y"];
            assert_eq!(matches!(t, HostTensor::U16 { .. }), wide);
            assert_eq!(m.take_labels("task0.train.y").unwrap().1, y);
        }
    }
}
