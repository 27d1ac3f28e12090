//! `cfpipe explain`: input relevance of single test images as heatmaps. The relevance comes
//! from [`crate::xai::lrp::lrp`], the very function the `score` stage calls, so a heatmap shows
//! what the scores were made of. Each PNG puts the input image (as stored, upscaled with
//! nearest-neighbour so 8×8 or 28×28 pixels stay visible) next to its heatmap: red positive,
//! blue negative, white zero, on a colour scale symmetric around zero and set per image by its
//! largest |R| (as in the RNF paper's Fig. 5). Channels are summed into one relevance per pixel.
//! The per-pixel relevance itself is written to `relevance.json`, so figures can be redrawn
//! and the numbers checked without decoding colours.
//!
//! The relevance is computed by the cached `explain` stage (`stages::explain`), on the
//! process's device; this module holds what it computes and how the command writes it out.

use crate::nn::model::{DeviceModel, ModelParams};
use crate::nn::tensor::Label;
use crate::stages::artifacts::SplitData;
use crate::xai::lrp::{lrp, LrpRules};
use dfdx::prelude::*;
use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Pixels between the input image and its heatmap.
const GAP: u32 = 4;
/// Images are upscaled until their larger side has at least this many pixels.
const MIN_SIDE: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("head {head} does not exist: the model has heads for tasks 1..={n}")]
    UnknownHead { head: usize, n: usize },
    #[error("head {head} does not exist: the split has tasks 1..={n}")]
    UnknownTask { head: usize, n: usize },
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
    /// The PNG written for it (file name inside the output directory).
    pub png: String,
    #[serde(skip)]
    pub pixels: Vec<u8>,
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
    if head >= host.heads.len() {
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
    Ok(Selected {
        head,
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
    let r = lrp(&model, &model.input(&sel.x), &sel.y, sel.head, rules);
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

/// Red for positive, blue for negative, white for zero; `v` in [-1, 1].
pub fn bwr(v: f32) -> Rgb<u8> {
    let v = if v.is_finite() {
        v.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let fade = |t: f32| (255.0 * (1.0 - t)).round() as u8;
    if v >= 0.0 {
        Rgb([255, fade(v), fade(v)])
    } else {
        Rgb([fade(-v), fade(-v), 255])
    }
}

fn scale_for(h: usize, w: usize) -> usize {
    MIN_SIDE.div_ceil(h.max(w).max(1)).max(1)
}

/// Input image and heatmap side by side: `(2·s·W + GAP) × s·H` pixels for upscale factor `s`.
pub fn render(e: &Explained) -> RgbImage {
    let [c, h, w] = e.shape;
    let s = scale_for(h, w);
    let hw = h * w;
    // Relevance per pixel (channels summed), scaled by the image's own max |R|.
    let per_pixel: Vec<f32> = (0..hw)
        .map(|p| (0..c).map(|ch| e.relevance[ch * hw + p]).sum())
        .collect();
    let max = per_pixel.iter().fold(0f32, |m, v| m.max(v.abs()));
    let input_rgb = |p: usize| -> Rgb<u8> {
        if c == 3 {
            Rgb([e.pixels[p], e.pixels[hw + p], e.pixels[2 * hw + p]])
        } else {
            let g = (0..c).map(|ch| e.pixels[ch * hw + p] as u32).sum::<u32>() / c.max(1) as u32;
            Rgb([g as u8; 3])
        }
    };
    let (sw, sh) = ((w * s) as u32, (h * s) as u32);
    let mut img = RgbImage::from_pixel(2 * sw + GAP, sh, Rgb([255, 255, 255]));
    for py in 0..sh {
        for px in 0..sw {
            let p = (py as usize / s) * w + px as usize / s;
            img.put_pixel(px, py, input_rgb(p));
            let v = if max > 0.0 { per_pixel[p] / max } else { 0.0 };
            img.put_pixel(sw + GAP + px, py, bwr(v));
        }
    }
    img
}

/// The explain stage's record of what it explained (the file [`EXPLAINED`] of its entry).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExplainedFile {
    /// 1-based task of the head.
    pub head: usize,
    pub rules: String,
    pub images: Vec<Explained>,
}

/// The name of the [`ExplainedFile`] in an explain entry.
pub const EXPLAINED: &str = "explained.json";

impl ExplainedFile {
    pub fn new(head: usize, rules: &LrpRules, images: Vec<Explained>) -> Self {
        ExplainedFile {
            head: head + 1,
            rules: format!("{rules:?}"),
            images,
        }
    }
}

/// `render(e)` as PNG bytes.
pub fn png(e: &Explained) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    render(e).write_to(&mut bytes, image::ImageFormat::Png)?;
    Ok(bytes.into_inner())
}

#[derive(Serialize)]
struct RelevanceFile<'a> {
    stage: &'a str,
    /// 1-based task of the head.
    head: usize,
    rules: &'a str,
    images: &'a [Explained],
}

/// Copy an explain entry's PNGs (found by `png_at`) into `out` and write `relevance.json`
/// there naming the train stage `stage`; returns the paths written.
pub fn write(
    out: &Path,
    stage: &str,
    explained: &ExplainedFile,
    png_at: impl Fn(&str) -> PathBuf,
) -> Result<Vec<PathBuf>, ExplainError> {
    let werr = |path: &Path, e: &dyn std::fmt::Display| ExplainError::Write {
        path: path.to_path_buf(),
        cause: e.to_string(),
    };
    std::fs::create_dir_all(out).map_err(|e| werr(out, &e))?;
    let mut written = Vec::new();
    for e in &explained.images {
        let path = out.join(&e.png);
        std::fs::copy(png_at(&e.png), &path).map_err(|err| werr(&path, &err))?;
        written.push(path);
    }
    let path = out.join("relevance.json");
    let file = RelevanceFile {
        stage,
        head: explained.head,
        rules: &explained.rules,
        images: &explained.images,
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
    fn colours_are_white_at_zero_red_positive_blue_negative() {
        assert_eq!(bwr(0.0), Rgb([255, 255, 255]));
        assert_eq!(bwr(1.0), Rgb([255, 0, 0]));
        assert_eq!(bwr(-1.0), Rgb([0, 0, 255]));
        assert_eq!(bwr(f32::NAN), Rgb([255, 255, 255]));
        let half = bwr(0.5);
        assert!(half.0[0] == 255 && half.0[1] > 100 && half.0[1] < 150);
    }

    #[test]
    fn scale_is_symmetric_per_image() {
        // Two pixels: +1 and −0.5. The max |R| sets the scale, so +1 is full red and −0.5
        // half blue (not full blue, as a separate scale per sign would give).
        let e = Explained {
            index: 0,
            label: 0,
            class: 0,
            logit: 0.5,
            relevance_sum: 0.5,
            shape: [1, 1, 2],
            relevance: vec![1.0, -0.5],
            png: String::new(),
            pixels: vec![0, 255],
        };
        let img = render(&e);
        let s = scale_for(1, 2) as u32;
        assert_eq!(img.dimensions(), (4 * s + GAP, s));
        assert_eq!(*img.get_pixel(0, 0), Rgb([0, 0, 0]));
        assert_eq!(*img.get_pixel(s, 0), Rgb([255, 255, 255]));
        assert_eq!(*img.get_pixel(2 * s + GAP, 0), Rgb([255, 0, 0]));
        assert_eq!(*img.get_pixel(3 * s + GAP, 0), bwr(-0.5));
    }

    #[test]
    fn shapes_other_than_1_to_3_dims_are_rejected() {
        assert_eq!(chw(&[8, 8]).unwrap(), [1, 8, 8]);
        assert_eq!(chw(&[3, 4, 5]).unwrap(), [3, 4, 5]);
        assert!(chw(&[1, 2, 3, 4]).is_err());
    }
}
