//! The data protocol of training and testing: augmentation (`training.augment`), which samples
//! an epoch draws (`training.sampling`) and how test accuracy is measured (`evaluation.crops`).
//!
//! The stored image size is the dataset's (`size` of an ImageFolder or Adience dataset, 32 for
//! CIFAR); the network's is the model's (`input_size` / `input_shape`). They may differ only
//! where the protocol says how to get from one to the other: a stored image larger than the
//! model's input needs `training.augment.crop.size` equal to the input size (random crops for
//! training); testing and reference sets then take the centre crop, or the ten crops of
//! `evaluation.crops: ten`. `crop.padding` keeps the stored size (CIFAR's zero-padded crops).
//! Every mismatch is reported at its key path before any work. The resolved types are
//! serialised into the stage parameters (defaults left out, so pipelines that do not use the
//! protocol keep their keys) and deserialised back by the stages.

use super::raw::{RawAugment, RawEvaluation, RawSampling};
use serde::{Deserialize, Serialize};

/// Training-time augmentation, applied to every training sample of every batch, drawn from
/// an RNG of (seed, task, epoch, batch): the crop's offset (top, then left), then the mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AugmentSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<CropSpec>,
    #[serde(default)]
    pub hflip: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CropSpec {
    /// A random `size`×`size` window of the stored image (torchvision `RandomCrop(size)`).
    Size(usize),
    /// Zero padding of `padding` pixels on every side, then a random window of the stored size
    /// (torchvision `RandomCrop(H, padding=p)`, CIFAR's augmentation).
    Padding(usize),
}

/// Which training samples an epoch visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplingSpec {
    /// Every sample once, in a seeded shuffled order.
    #[default]
    None,
    /// As many draws as samples, with replacement, classes by their empirical frequencies.
    Empirical,
    /// As many draws as samples, with replacement, classes uniformly (rare classes oversampled,
    /// frequent ones undersampled: the Adience protocol), then a sample of the class uniformly.
    Balanced,
}

impl SamplingSpec {
    pub fn is_none(&self) -> bool {
        *self == SamplingSpec::None
    }
}

/// How a test sample is predicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestCrops {
    /// The centre window of the model's input size (the whole image when sizes agree).
    #[default]
    Center,
    /// torchvision's `TenCrop`: four corners and the centre, and the same of the mirrored
    /// image; the prediction is the argmax of the mean of the ten softmaxes.
    Ten,
}

impl TestCrops {
    pub fn is_center(&self) -> bool {
        *self == TestCrops::Center
    }
}

/// The resolved protocol.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Protocol {
    pub augment: Option<AugmentSpec>,
    pub sampling: SamplingSpec,
    pub crops: TestCrops,
    pub selection: Selection,
    /// `Some` exactly with `selection: validation`.
    pub validation_fraction: Option<f64>,
}

/// Which samples a pipeline's choices are made on (`evaluation.selection`).
///
/// `test` is what the RNF paper does: the prune search stops where *test* accuracy falls by
/// the threshold, and importance is scored on test samples, so the reported test accuracy is
/// not an unseen sample's. `validation` holds a stratified, seeded share of each task's
/// training data out (`validation_fraction`, default 0.1); the prune search and the score
/// stages' reference samples use it, training uses the rest, and the test split is only ever
/// evaluated.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    #[default]
    Test,
    Validation,
}

impl Selection {
    pub fn is_test(&self) -> bool {
        *self == Selection::Test
    }
}

/// `validation_fraction`'s default.
pub const DEFAULT_VALIDATION_FRACTION: f64 = 0.1;

/// Check the protocol's own keys and its fit between the stored images (`stored`, `[C, H, W]`
/// when known before reading data: image datasets) and the model's input (`input`, conv
/// models). `dataset_path` names the key that sets the stored size.
pub fn check(
    augment: Option<&RawAugment>,
    sampling: Option<&RawSampling>,
    evaluation: Option<&RawEvaluation>,
    stored: Option<[usize; 3]>,
    input: Option<[usize; 3]>,
    dataset_path: &str,
    e: &mut dyn FnMut(&str, String),
) -> Protocol {
    let crop = augment.and_then(|a| a.crop.as_ref()).and_then(|c| {
        let p = "training.augment.crop";
        match (c.size, c.padding) {
            (Some(_), Some(_)) => {
                e(p, "give either `size` (a random window of a larger stored image) or `padding` (zero padding, CIFAR-style), not both".into());
                None
            }
            (None, None) => {
                e(p, "expected `size: N` (a random N×N window of a larger stored image) or `padding: P` (zero padding of P pixels, then a random window of the stored size)".into());
                None
            }
            (Some(s), None) if s < 1 => {
                e(&format!("{p}.size"), format!("expected a crop size >= 1, found {s}"));
                None
            }
            (None, Some(q)) if q < 1 => {
                e(&format!("{p}.padding"), format!("expected a padding >= 1 pixel, found {q}"));
                None
            }
            (Some(s), None) => Some(CropSpec::Size(s as usize)),
            (None, Some(q)) => Some(CropSpec::Padding(q as usize)),
        }
    });
    let hflip = augment.is_some_and(|a| a.hflip);
    // `augment: {}` or `{hflip: false}` is no augmentation: the same stages as without it.
    let augment_spec = (crop.is_some() || hflip).then_some(AugmentSpec { crop, hflip });
    let crops = evaluation.map(|v| v.crops).unwrap_or_default();
    let selection = evaluation.map(|v| v.selection).unwrap_or_default();
    let validation_fraction = match (selection, evaluation.and_then(|v| v.validation_fraction)) {
        (Selection::Test, Some(_)) => {
            e(
                "evaluation.validation_fraction",
                "only used with `selection: validation`".into(),
            );
            None
        }
        (Selection::Test, None) => None,
        (Selection::Validation, f) => {
            let f = f.unwrap_or(DEFAULT_VALIDATION_FRACTION);
            if !(f > 0.0 && f < 1.0) {
                e(
                    "evaluation.validation_fraction",
                    format!("expected a share of the training samples in (0, 1), found {f}"),
                );
            }
            Some(f)
        }
    };

    let hw = |s: [usize; 3]| format!("{}×{}", s[1], s[2]);
    if let (Some(stored), Some(input)) = (stored, input) {
        let crop_path = "training.augment.crop.size";
        if stored[0] != input[0] {
            e(
                dataset_path,
                format!(
                    "images have {} channels, the model takes {} (model.input_shape / input_channels)",
                    stored[0], input[0]
                ),
            );
        } else if stored[1] < input[1] || stored[2] < input[2] {
            e(
                dataset_path,
                format!(
                    "images are stored at {}, smaller than the model's {} input; set the dataset's `size` to at least {} (larger sizes are cropped)",
                    hw(stored),
                    hw(input),
                    input[1].max(input[2])
                ),
            );
        } else {
            let larger = stored != input;
            match crop {
                Some(CropSpec::Size(s)) if [s, s] != [input[1], input[2]] => e(
                    crop_path,
                    format!(
                        "crops must be the model's input size {} (model.input_size / input_shape), found {s}",
                        hw(input)
                    ),
                ),
                Some(CropSpec::Size(s)) if !larger => e(
                    crop_path,
                    format!(
                        "images are stored at {} already, so a {s}×{s} crop is the whole image; store them larger (the dataset's `size`, e.g. {}) or use `padding`",
                        hw(stored),
                        s + s / 7
                    ),
                ),
                Some(CropSpec::Padding(_)) if larger => e(
                    "training.augment.crop.padding",
                    format!(
                        "padded crops keep the stored size {}, but the model takes {}; use `size: {}` for random crops of the larger images",
                        hw(stored),
                        hw(input),
                        input[1]
                    ),
                ),
                None if larger => e(
                    if augment.is_some() {
                        "training.augment"
                    } else {
                        "training"
                    },
                    format!(
                        "images are stored at {} but the model takes {}: train on random crops with `augment: {{crop: {{size: {}}}}}`, or store them at the input size (the dataset's `size`)",
                        hw(stored),
                        hw(input),
                        input[1]
                    ),
                ),
                _ => {}
            }
        }
    } else if let (Some(CropSpec::Size(_)), None) = (crop, input) {
        e(
            "training.augment.crop.size",
            "crops of a size need a convolutional model with an `input_shape` (an MLP's input is the whole stored image); use `padding` instead".into(),
        );
    }
    Protocol {
        augment: augment_spec,
        sampling: sampling.map(|s| s.kind).unwrap_or_default(),
        crops,
        selection,
        validation_fraction,
    }
}
