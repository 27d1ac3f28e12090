//! How stages look at stored samples through the model's input: the data protocol of
//! `spec::protocol` applied to the split's bytes.
//!
//! A split may store images larger than the model's input (Adience at 256, crops of 224).
//! Training then takes a random window per sample ([`train_view`], drawn from the caller's
//! seeded RNG), testing the centre window or the ten crops whose softmaxes are averaged
//! ([`accuracy_with`], [`ten_crop_probs`]), and every reference set (scores, EWC importance,
//! correlations) the centre window ([`centered`]), as in the paper's appendix A.5. Crops,
//! mirrors and zero padding act on the stored bytes; the model's per-channel normalisation
//! comes after them, which is the same as cropping normalised floats.

use super::artifacts::{Samples, SplitData};
use super::{extend_argmax_within, predictions, share_correct};
use crate::data::transforms::{self, Chw, TransformError};
use crate::exec::StageError;
use crate::nn::model::{DeviceModel, ModelParams};
use crate::nn::tensor::Vector;
use crate::spec::protocol::{AugmentSpec, CropSpec, TestCrops};
use dfdx::prelude::*;
use rand::Rng;

/// Samples per batch of ten-crop evaluation: ten model inputs each, so a batch holds as many
/// model inputs as a batch of plain evaluation (`stages::EVAL_BATCH`).
const TEN_CROP_BATCH: usize = 100;

/// A stored sample's `[C, H, W]` and the model's input `[C, h, w]`: the same, or a larger
/// stored image of the same channels (an MLP's input is always the whole stored sample).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub stored: [usize; 3],
    pub input: [usize; 3],
}

fn transform_err(e: TransformError) -> StageError {
    StageError::invalid(format!("image transform: {e}"))
}

impl Geometry {
    /// The geometry of `model` on samples of `sample_shape` (`[C, H, W]`, or `[H, W]` for one
    /// channel), checked: channels must agree and the stored image must be at least the input.
    pub fn new(sample_shape: &[usize], model: &ModelParams) -> Result<Geometry, StageError> {
        let stored = match *sample_shape {
            [c, h, w] => [c, h, w],
            [h, w] => [1, h, w],
            _ => [1, 1, sample_shape.iter().product()],
        };
        let input = match &model.arch {
            Some(a) => a.input,
            None => stored,
        };
        if stored[0] != input[0] || stored[1] < input[1] || stored[2] < input[2] {
            return Err(StageError::invalid(format!(
                "model input is {input:?} ([channels, height, width]), but the data's samples have shape {sample_shape:?}; set model.input_shape (or input_size) to match, or store the images at least that large (the dataset's `size`)"
            )));
        }
        if model.input_dim() != input.iter().product::<usize>() {
            return Err(StageError::invalid(format!(
                "model takes {} inputs, data has {}",
                model.input_dim(),
                stored.iter().product::<usize>()
            )));
        }
        Ok(Geometry { stored, input })
    }

    /// Whether samples reach the model as stored.
    pub fn is_identity(&self) -> bool {
        self.stored == self.input
    }

    pub fn stored_len(&self) -> usize {
        self.stored.iter().product()
    }

    pub fn input_len(&self) -> usize {
        self.input.iter().product()
    }

    fn image(&self, pixels: &[u8]) -> Result<Chw<u8>, StageError> {
        Chw::new(self.stored, pixels.to_vec()).map_err(transform_err)
    }

    /// The centre input-sized window of one stored sample.
    pub fn center(&self, pixels: &[u8]) -> Result<Vec<u8>, StageError> {
        if self.is_identity() {
            return Ok(pixels.to_vec());
        }
        let c = transforms::center_crop(&self.image(pixels)?, self.input[1], self.input[2])
            .map_err(transform_err)?;
        Ok(c.data)
    }
}

/// Every sample's centre window (the samples as they are when sizes agree).
pub fn center_samples(s: &Samples, g: &Geometry) -> Result<Samples, StageError> {
    if g.is_identity() {
        return Ok(s.clone());
    }
    let mut x = Vec::with_capacity(s.len() * g.input_len());
    for px in s.x.chunks_exact(g.stored_len()) {
        x.extend(g.center(px)?);
    }
    Ok(Samples { x, y: s.y.clone() })
}

/// `split` as a reference set for task `t` sees it: task `t`'s train and test samples centre
/// cropped to `model`'s input, and the split's sample shape the input's. Other tasks' samples
/// are dropped (their classes stay), since per-task analyses read task `t` only.
pub fn centered(split: SplitData, t: usize, model: &ModelParams) -> Result<SplitData, StageError> {
    let g = Geometry::new(&split.sample_shape, model)?;
    if g.is_identity() {
        return Ok(split);
    }
    let mut out = split;
    for (i, task) in out.tasks.iter_mut().enumerate() {
        if i == t {
            task.train = center_samples(&task.train, &g)?;
            task.test = center_samples(&task.test, &g)?;
        } else {
            task.train = Samples {
                x: Vec::new(),
                y: Vec::new(),
            };
            task.test = task.train.clone();
        }
    }
    out.sample_shape = g.input.to_vec();
    Ok(out)
}

/// One training input from a stored sample: the crop of `aug` (a random window of the input
/// size, or of the stored size after zero padding; the centre window without a crop), then a
/// random mirror with `hflip`. Draws from `rng` in that order (top, left, mirror).
pub fn train_view<R: Rng + ?Sized>(
    pixels: &[u8],
    g: &Geometry,
    aug: &AugmentSpec,
    rng: &mut R,
) -> Result<Vec<u8>, StageError> {
    let img = g.image(pixels)?;
    let [_, h, w] = g.input;
    let cropped = match aug.crop {
        Some(CropSpec::Size(s)) => transforms::random_crop(&img, s, s, rng),
        Some(CropSpec::Padding(p)) => transforms::random_crop(&transforms::pad(&img, p), h, w, rng),
        None => transforms::center_crop(&img, h, w),
    }
    .map_err(transform_err)?;
    if cropped.shape != g.input {
        return Err(StageError::invalid(format!(
            "augmented samples are {:?}, the model takes {:?}; training.augment.crop.size must be the model's input size",
            cropped.shape, g.input
        )));
    }
    Ok(if aug.hflip {
        transforms::random_hflip(&cropped, rng).data
    } else {
        cropped.data
    })
}

/// Mean over the ten crops of [`transforms::ten_crop`] of the softmax of `head`'s logits, for
/// the stored samples in `pixels`: `[samples, classes]` row-major.
pub fn ten_crop_probs<D: Device<f32>>(
    model: &DeviceModel<D>,
    pixels: &[u8],
    g: &Geometry,
    head: usize,
    unit_masks: Option<&[Vector<D>]>,
) -> Result<Vec<f32>, StageError> {
    let classes = model.outputs(head);
    let mut views = Vec::with_capacity(pixels.len() / g.stored_len() * 10 * g.input_len());
    for px in pixels.chunks_exact(g.stored_len()) {
        for c in
            transforms::ten_crop(&g.image(px)?, g.input[1], g.input[2]).map_err(transform_err)?
        {
            views.extend(c.data);
        }
    }
    if views.is_empty() {
        return Ok(Vec::new());
    }
    let logits = model
        .logits(&model.input(&views), head, unit_masks)
        .as_vec();
    transforms::mean_softmax(&logits, 10, classes).map_err(transform_err)
}

/// The class `head` predicts for each of the stored `samples` under `crops`: the centre
/// window's prediction, or the argmax of the ten crops' mean softmax; once per range of
/// outputs in `within` (see [`predictions`]), from one forward pass. With sizes that agree and
/// centre crops this is [`predictions`] itself.
pub fn predictions_with<D: Device<f32>>(
    model: &DeviceModel<D>,
    samples: &Samples,
    g: &Geometry,
    crops: TestCrops,
    head: usize,
    unit_masks: Option<&[Vector<D>]>,
    within: &[std::ops::Range<usize>],
) -> Result<Vec<Vec<usize>>, StageError> {
    match crops {
        TestCrops::Center => {
            let centred;
            let samples = if g.is_identity() {
                samples
            } else {
                centred = center_samples(samples, g)?;
                &centred
            };
            Ok(predictions(
                model,
                samples,
                g.input_len(),
                head,
                unit_masks,
                within,
            ))
        }
        TestCrops::Ten => {
            let classes = model.outputs(head);
            let mut out = vec![Vec::with_capacity(samples.len()); within.len()];
            let n = g.stored_len();
            let batch = model.batch_within(TEN_CROP_BATCH, 10, false);
            for start in (0..samples.len()).step_by(batch) {
                let end = (start + batch).min(samples.len());
                let probs =
                    ten_crop_probs(model, &samples.x[start * n..end * n], g, head, unit_masks)?;
                extend_argmax_within(&mut out, &probs, classes, within);
            }
            Ok(out)
        }
    }
}

/// Test accuracy of `head` on stored `samples` under `crops` (see [`predictions_with`]).
pub fn accuracy_with<D: Device<f32>>(
    model: &DeviceModel<D>,
    samples: &Samples,
    g: &Geometry,
    crops: TestCrops,
    head: usize,
    unit_masks: Option<&[Vector<D>]>,
) -> Result<f64, StageError> {
    let all = 0..model.outputs(head);
    let p = predictions_with(model, samples, g, crops, head, unit_masks, &[all])?;
    Ok(share_correct(&p[0], &samples.y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::arch;
    use rand::SeedableRng;

    /// A tiny conv model on 3×6×6 inputs with a 3-class head, and stored 3×9×8 images.
    fn tiny() -> (ModelParams, Geometry, Vec<u8>) {
        let a = arch::small_cnn([3, 6, 6]);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut p = ModelParams::init_arch(&a, &mut rng);
        p.push_head(3, &mut rng);
        let g = Geometry::new(&[3, 9, 8], &p).unwrap();
        let pixels: Vec<u8> = (0..2 * 3 * 9 * 8).map(|_| rng.gen()).collect();
        (p, g, pixels)
    }

    #[test]
    fn ten_crop_evaluation_is_the_mean_softmax_of_crops_cut_by_hand() {
        let (p, g, pixels) = tiny();
        let dev = Cpu::default();
        let model = DeviceModel::from_host(&dev, &p);
        let got = ten_crop_probs(&model, &pixels, &g, 0, None).unwrap();
        assert_eq!(got.len(), 2 * 3);
        // By hand: each window cut from its origin (mirrored ones read right to left), each
        // crop through the model alone, softmax in f64, averaged.
        let [c, h, w] = g.stored;
        let origins = transforms::ten_crop_origins(g.stored, 6, 6).unwrap();
        for s in 0..2 {
            let img = &pixels[s * c * h * w..(s + 1) * c * h * w];
            let mut mean = [0f64; 3];
            for o in origins {
                let mut crop = Vec::new();
                for ch in 0..c {
                    for y in o.top..o.top + 6 {
                        for k in 0..6 {
                            let x = if o.mirrored {
                                o.left + 5 - k
                            } else {
                                o.left + k
                            };
                            crop.push(img[(ch * h + y) * w + x]);
                        }
                    }
                }
                let z = model.logits(&model.input(&crop), 0, None).as_vec();
                let m = z.iter().copied().fold(f32::MIN, f32::max) as f64;
                let e: Vec<f64> = z.iter().map(|&v| (v as f64 - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (a, v) in mean.iter_mut().zip(&e) {
                    *a += v / sum / 10.0;
                }
            }
            for k in 0..3 {
                assert!(
                    (got[s * 3 + k] as f64 - mean[k]).abs() < 1e-5,
                    "sample {s} class {k}: {} vs {}",
                    got[s * 3 + k],
                    mean[k]
                );
            }
        }
        // The mirrored crops matter: the plain centre crop alone predicts other probabilities.
        let centre = model
            .logits(
                &model.input(&g.center(&pixels[..c * h * w]).unwrap()),
                0,
                None,
            )
            .as_vec();
        let soft = transforms::mean_softmax(&centre, 1, 3).unwrap();
        assert!(soft
            .iter()
            .zip(&got[..3])
            .any(|(a, b)| (a - b).abs() > 1e-4));
    }

    #[test]
    fn training_views_are_seeded_crops_of_the_input_size() {
        let (p, g, pixels) = tiny();
        let one = &pixels[..g.stored_len()];
        let aug = AugmentSpec {
            crop: Some(CropSpec::Size(6)),
            hflip: true,
        };
        let view = |seed| {
            train_view(
                one,
                &g,
                &aug,
                &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            )
            .unwrap()
        };
        assert_eq!(view(3), view(3));
        assert_eq!(view(3).len(), g.input_len());
        assert!(
            (0..20).any(|s| view(s) != view(3)),
            "every seed gave one view"
        );
        // Zero padding keeps the size; some draws show the black border.
        let g32 = Geometry::new(&[3, 6, 6], &p).unwrap();
        let pad = AugmentSpec {
            crop: Some(CropSpec::Padding(2)),
            hflip: false,
        };
        let bright = vec![200u8; g32.stored_len()];
        let views: Vec<Vec<u8>> = (0..20)
            .map(|s| {
                train_view(
                    &bright,
                    &g32,
                    &pad,
                    &mut rand_chacha::ChaCha8Rng::seed_from_u64(s),
                )
                .unwrap()
            })
            .collect();
        assert!(views.iter().all(|v| v.len() == g32.input_len()));
        assert!(views.iter().any(|v| v.contains(&0)));
        // A stored image smaller than the input is refused, naming both shapes.
        let err = Geometry::new(&[3, 5, 5], &p).unwrap_err().to_string();
        assert!(
            err.contains("[3, 6, 6]") && err.contains("[3, 5, 5]"),
            "{err}"
        );
    }
}
