//! `cfpipe explain`: input relevance of single test images as heatmaps. The relevance comes
//! from [`crate::xai::lrp::lrp`], the very function the `score` stage calls, so a heatmap shows
//! what the scores were made of. Each figure ([`crate::report::figures::explain_figure`]) puts
//! the input image (as stored, one block per pixel so 8×8 or 28×28 pixels stay visible) next
//! to its heatmap: red positive, blue negative, white zero, on a colour scale symmetric around
//! zero and set per image by its largest |R| (as in the RNF paper's Fig. 5), shown as a colour
//! bar; the title names the class, the logit and the rules. Channels are summed into one
//! relevance per pixel. The per-pixel relevance itself is written to `relevance.json`, with
//! where each image sits in the PNG, so figures can be redrawn and the numbers checked.
//!
//! The relevance is computed by the cached `explain` stage (`stages::explain`), on the
//! process's device; the figures are drawn by the command from that entry, so a change of
//! style never invalidates a cached relevance.

use crate::nn::model::{DeviceModel, ModelParams};
use crate::nn::tensor::Label;
use crate::report::figures::{self, ExplainLayout, ExplainPanel, Look};
use crate::stages::artifacts::SplitData;
use crate::xai::lrp::{lrp, LrpRules};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("head {head} does not exist: the model has heads for tasks 1..={n}")]
    UnknownHead { head: usize, n: usize },
    #[error("head {head} does not exist: the split has tasks 1..={n}")]
    UnknownTask { head: usize, n: usize },
    #[error("task {task} has no outputs in this model yet: it was trained on tasks up to an earlier one")]
    NotTrained { task: usize },
    #[error(
        "image index {index} is out of range: task {task}'s test split has {n} images (indices 0..={last})",
        last = .n.saturating_sub(1)
    )]
    IndexOutOfRange { index: usize, task: usize, n: usize },
    #[error("no images given: --images expects comma-separated test indices such as 0,1,2")]
    NoImages,
    #[error("samples of shape {0:?} cannot be drawn: expected [H, W] or [C, H, W]")]
    BadShape(Vec<usize>),
    #[error("writing {path}: {cause}")]
    Write { path: PathBuf, cause: String },
    #[error(transparent)]
    Figure(#[from] figures::FigureError),
}

/// One explained test image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explained {
    /// Index into the head task's test split.
    pub index: usize,
    /// The ground-truth class, local to the head (the logit explained).
    pub label: Label,
    /// The same class as a dataset label.
    pub class: Label,
    /// The explained logit.
    pub logit: f32,
    /// Σ of the input relevance (equals `logit` only for conservative rules without biases).
    pub relevance_sum: f64,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    /// Input relevance per feature, in the sample's CHW order.
    pub relevance: Vec<f32>,
    /// The PNG the command writes for it (file name inside the output directory; the SVG
    /// beside it has the same stem).
    pub png: String,
    /// The input as stored, in CHW order (what the figure shows beside the relevance).
    pub pixels: Vec<u8>,
}

impl Explained {
    /// Relevance per pixel, channels summed (`H·W`).
    pub fn per_pixel(&self) -> Vec<f32> {
        let [c, h, w] = self.shape;
        let hw = h * w;
        (0..hw)
            .map(|p| (0..c).map(|ch| self.relevance[ch * hw + p]).sum())
            .collect()
    }
}

/// A sample shape as `[C, H, W]`: a 2-D sample is one channel, a flat one a single row.
pub fn chw(shape: &[usize]) -> Result<[usize; 3], ExplainError> {
    match *shape {
        [c, h, w] => Ok([c, h, w]),
        [h, w] => Ok([1, h, w]),
        [w] => Ok([1, 1, w]),
        _ => Err(ExplainError::BadShape(shape.to_vec())),
    }
}

/// Test images chosen for explanation, checked against the model and the split.
#[derive(Debug, Clone)]
pub struct Selected {
    /// 0-based task of the explaining head.
    pub head: usize,
    /// The model's head that task's samples go through (the task's own under `per_task`).
    pub model_head: usize,
    pub indices: Vec<usize>,
    /// The images' stored bytes, one after the other.
    pub x: Vec<u8>,
    /// Head-local ground-truth labels.
    pub y: Vec<Label>,
    /// The same labels as dataset classes.
    pub classes: Vec<Label>,
    pub shape: [usize; 3],
}

/// Test images `indices` of task `head` (0-based), or why they cannot be explained. The
/// command line checks this before any work starts, so a bad index or head is bad input.
pub fn select(
    split: &SplitData,
    host: &ModelParams,
    head: usize,
    indices: &[usize],
) -> Result<Selected, ExplainError> {
    if indices.is_empty() {
        return Err(ExplainError::NoImages);
    }
    let model_head = host.scenario.head(head);
    if model_head >= host.heads.len() {
        return Err(ExplainError::UnknownHead {
            head: head + 1,
            n: host.heads.len(),
        });
    }
    let task = split.tasks.get(head).ok_or(ExplainError::UnknownTask {
        head: head + 1,
        n: split.tasks.len(),
    })?;
    let shape = chw(&split.sample_shape)?;
    let dim = split.dim();
    let test = &task.test;
    // The explained logit is the label's output in the model's head (its offset there under
    // a class-incremental scenario), which must exist: a grown head has a task's outputs only
    // from that task on. (A shared head answers for any task with its classes.)
    let offset = host.scenario.offset(&split.class_counts(), head);
    let trained = host.heads[model_head].out_dim >= offset + task.classes.len();
    let offset = match Label::try_from(offset) {
        Ok(o) if trained => o,
        _ => return Err(ExplainError::NotTrained { task: head + 1 }),
    };
    let mut x = Vec::with_capacity(indices.len() * dim);
    let mut y = Vec::with_capacity(indices.len());
    for &i in indices {
        if i >= test.len() {
            return Err(ExplainError::IndexOutOfRange {
                index: i,
                task: head + 1,
                n: test.len(),
            });
        }
        x.extend_from_slice(&test.x[i * dim..(i + 1) * dim]);
        y.push(test.y[i]);
    }
    let classes = y
        .iter()
        .map(|&l| task.classes.get(l as usize).copied().unwrap_or(l))
        .collect();
    let y = y
        .into_iter()
        .map(|l| l.checked_add(offset))
        .collect::<Option<Vec<_>>>()
        .ok_or(ExplainError::NotTrained { task: head + 1 })?;
    Ok(Selected {
        head,
        model_head,
        indices: indices.to_vec(),
        x,
        y,
        classes,
        shape,
    })
}

/// Input relevance of the selected images w.r.t. each image's ground-truth logit in their
/// head, by `rules`, computed on `dev`.
pub fn explain<D: Device<f32>>(
    dev: &D,
    host: &ModelParams,
    sel: &Selected,
    rules: &LrpRules,
) -> Vec<Explained> {
    let dim = sel.shape.iter().product::<usize>();
    let model = DeviceModel::from_host(dev, host);
    let r = lrp(&model, &model.input(&sel.x), &sel.y, sel.model_head, rules);
    sel.indices
        .iter()
        .enumerate()
        .map(|(k, &index)| {
            let relevance = r.input[k * dim..(k + 1) * dim].to_vec();
            Explained {
                index,
                label: sel.y[k],
                class: sel.classes[k],
                logit: r.explained[k],
                relevance_sum: relevance.iter().map(|&v| v as f64).sum(),
                shape: sel.shape,
                relevance,
                png: format!("test{index}.png"),
                pixels: sel.x[k * dim..(k + 1) * dim].to_vec(),
            }
        })
        .collect()
}

/// The explain stage's record of what it explained (the file [`EXPLAINED`] of its entry).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExplainedFile {
    /// 1-based task of the head.
    pub head: usize,
    /// The rules, as [`LrpRules::describe`] reads them.
    pub rules: String,
    pub images: Vec<Explained>,
}

/// The name of the [`ExplainedFile`] in an explain entry.
pub const EXPLAINED: &str = "explained.json";

impl ExplainedFile {
    pub fn new(head: usize, rules: &LrpRules, conv: bool, images: Vec<Explained>) -> Self {
        ExplainedFile {
            head: head + 1,
            rules: rules.describe(conv),
            images,
        }
    }
}

#[derive(Serialize)]
struct RelevanceFile<'a> {
    stage: &'a str,
    /// 1-based task of the head.
    head: usize,
    rules: &'a str,
    images: Vec<Drawn<'a>>,
}

/// One image of `relevance.json`: what was explained, and where the PNG shows it.
#[derive(Serialize)]
struct Drawn<'a> {
    #[serde(flatten)]
    explained: &'a Explained,
    svg: String,
    layout: ExplainLayout,
}

/// Draw an explain entry's images into `out` (PNG and SVG each) and write `relevance.json`
/// there naming the train stage `stage`; returns the paths written.
pub fn write(
    out: &Path,
    stage: &str,
    explained: &ExplainedFile,
    look: &Look,
) -> Result<Vec<PathBuf>, ExplainError> {
    let werr = |path: &Path, e: &dyn std::fmt::Display| ExplainError::Write {
        path: path.to_path_buf(),
        cause: e.to_string(),
    };
    std::fs::create_dir_all(out).map_err(|e| werr(out, &e))?;
    let mut written = Vec::new();
    let mut images = Vec::new();
    for e in &explained.images {
        let stem = out.join(e.png.trim_end_matches(".png"));
        let relevance = e.per_pixel();
        let panel = ExplainPanel {
            title: format!(
                "test image {} of task {}: class {}, logit {:.3}",
                e.index, explained.head, e.class, e.logit
            ),
            subtitle: format!(
                "LRP {}; relevance sum {:.3}",
                explained.rules, e.relevance_sum
            ),
            shape: e.shape,
            pixels: &e.pixels,
            relevance: &relevance,
        };
        let (files, layout) = figures::explain_figure(&stem, &panel, look)?;
        images.push(Drawn {
            explained: e,
            svg: files[0]
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            layout,
        });
        written.extend(files);
    }
    let path = out.join("relevance.json");
    let file = RelevanceFile {
        stage,
        head: explained.head,
        rules: &explained.rules,
        images,
    };
    let json = serde_json::to_vec_pretty(&file).expect("plain data");
    std::fs::write(&path, json).map_err(|e| werr(&path, &e))?;
    written.push(path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_pixel_relevance_sums_the_channels() {
        let e = Explained {
            index: 0,
            label: 0,
            class: 0,
            logit: 0.5,
            relevance_sum: 0.5,
            shape: [2, 1, 2],
            relevance: vec![1.0, -0.5, 0.25, 0.25],
            png: String::new(),
            pixels: vec![0; 4],
        };
        assert_eq!(e.per_pixel(), vec![1.25, -0.25]);
    }

    #[test]
    fn shapes_other_than_1_to_3_dims_are_rejected() {
        assert_eq!(chw(&[8, 8]).unwrap(), [1, 8, 8]);
        assert_eq!(chw(&[3, 4, 5]).unwrap(), [3, 4, 5]);
        assert!(chw(&[1, 2, 3, 4]).is_err());
    }
}
