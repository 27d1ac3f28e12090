//! One entry point for the colour-image datasets: the [`ImageDatasetSpec`] a pipeline's
//! `dataset:` block deserializes into, [`load_images`] that reads one [`Part`] of it into an
//! [`ImageSet`], and [`data_files`] / [`data_roots`] naming what a stage key must hash.
//!
//! YAML shape (`format` selects the variant; unknown keys are errors):
//!
//! ```yaml
//! dataset: {format: cifar10, root: data/cifar-10-batches-bin}
//! dataset: {format: cifar100, root: data/cifar-100-binary, labels: fine}   # fine | coarse
//! dataset:
//!   format: image_folder          # ImageNet: train/ and val/ re-sorted into synset folders
//!   train: data/imagenet/train
//!   test: data/imagenet/val
//!   size: 224                     # every image becomes [3, size, size]
//!   resize: center_crop           # center_crop (default) | stretch
//!   shorter_side: 256             # center_crop only; default: size
//!   max_per_class: 100            # optional seeded subsample of the training tree
//!   test_max_per_class: 10        # optional, the same for the test tree
//!   subsample_seed: 0
//! dataset:
//!   format: adience
//!   root: data/adience            # holds fold_{0..4}_data.txt
//!   faces_dir: faces              # default faces; the authors' tarball unpacks to `aligned`
//!   prefix: landmark_aligned_face # default
//!   train_folds: [0, 1, 2, 3]
//!   test_folds: [4]
//!   age_policy: midpoint          # exact | midpoint (default) | nearest
//!   size: 256
//!   resize: stretch
//! ```
//!
//! Every field is a semantic choice and belongs in the split stage's key; the data's content
//! enters through the files [`data_files`] lists.

use super::adience::{self, AdienceLayout, AgePolicy};
use super::cifar::{self, Cifar100Labels};
use super::image_folder::{self, DecodeOptions, ImageIndex, ResizePolicy};
use super::DataError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The training or the test part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Train,
    Test,
}

/// Colour images as bytes, CHW per sample, with one class per sample.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImageSet {
    /// `[channels, height, width]`; always 3 channels (RGB).
    pub sample_shape: [usize; 3],
    /// `len() · C·H·W` bytes, sample after sample, each channel-major then row-major.
    pub pixels: Vec<u8>,
    pub labels: Vec<u16>,
    /// Name of class `i` at index `i`.
    pub class_names: Vec<String>,
    /// Rows or files left out while reading, by reason, with counts (Adience ages).
    pub dropped: BTreeMap<String, usize>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Bytes per sample, `C·H·W`.
    pub fn dim(&self) -> usize {
        self.sample_shape.iter().product()
    }
    pub fn sample(&self, i: usize) -> &[u8] {
        let d = self.dim();
        &self.pixels[i * d..(i + 1) * d]
    }
    /// The samples at `indices`, in that order; an index past the end is an error.
    pub fn subset(&self, indices: &[usize]) -> Result<ImageSet, DataError> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(DataError::Invalid {
                field: "indices",
                msg: format!("sample {bad} requested from a set of {}", self.len()),
            });
        }
        let mut pixels = Vec::with_capacity(indices.len() * self.dim());
        for &i in indices {
            pixels.extend_from_slice(self.sample(i));
        }
        Ok(ImageSet {
            sample_shape: self.sample_shape,
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            class_names: self.class_names.clone(),
            dropped: self.dropped.clone(),
        })
    }

    /// Samples per class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.class_names.len()];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

fn default_faces_dir() -> String {
    "faces".into()
}
fn default_prefix() -> String {
    "landmark_aligned_face".into()
}

/// A colour-image dataset as written in a pipeline (see the module docs for the YAML).
///
/// Each format's options are a struct of their own, so a pipeline reader that knows the
/// `format` can deserialize the rest with its key paths intact (serde's internally tagged
/// enums buffer their content and lose them); the enum's own (de)serialization, which the
/// split stage's key uses, is the flat `{format: …, options…}` form of the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum ImageDatasetSpec {
    Cifar10(Cifar10Spec),
    Cifar100(Cifar100Spec),
    ImageFolder(ImageFolderSpec),
    Adience(AdienceSpec),
}

impl ImageDatasetSpec {
    /// The `format` names, in the order messages list them.
    pub const FORMATS: [&'static str; 4] = ["cifar10", "cifar100", "image_folder", "adience"];
}

/// CIFAR-10 binary: `root` holds `data_batch_{1..5}.bin` and `test_batch.bin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cifar10Spec {
    pub root: PathBuf,
}

/// CIFAR-100 binary: `root` holds `train.bin` and `test.bin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cifar100Spec {
    pub root: PathBuf,
    #[serde(default)]
    pub labels: Cifar100Labels,
}

/// Two ImageFolder trees with the same class folders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFolderSpec {
    pub train: PathBuf,
    pub test: PathBuf,
    pub size: u32,
    #[serde(default)]
    pub resize: ResizePolicy,
    #[serde(default)]
    pub shorter_side: Option<u32>,
    #[serde(default)]
    pub max_per_class: Option<usize>,
    #[serde(default)]
    pub test_max_per_class: Option<usize>,
    #[serde(default)]
    pub subsample_seed: u64,
}

/// Adience aligned faces, eight age classes, whole folds per part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdienceSpec {
    pub root: PathBuf,
    #[serde(default = "default_faces_dir")]
    pub faces_dir: String,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    pub train_folds: Vec<u8>,
    pub test_folds: Vec<u8>,
    #[serde(default)]
    pub age_policy: AgePolicy,
    pub size: u32,
    #[serde(default)]
    pub resize: ResizePolicy,
    #[serde(default)]
    pub shorter_side: Option<u32>,
}

impl ImageDatasetSpec {
    /// Check every option without touching the disk; the error names the field.
    pub fn validate(&self) -> Result<(), DataError> {
        match self {
            Self::Cifar10(_) | Self::Cifar100(_) => Ok(()),
            Self::ImageFolder(ImageFolderSpec {
                max_per_class,
                test_max_per_class,
                ..
            }) => {
                for (field, m) in [
                    ("max_per_class", max_per_class),
                    ("test_max_per_class", test_max_per_class),
                ] {
                    if *m == Some(0) {
                        return Err(DataError::Invalid {
                            field,
                            msg: "expected at least 1 image per class".into(),
                        });
                    }
                }
                self.decode_options().map_or(Ok(()), |o| o.validate())
            }
            Self::Adience(AdienceSpec {
                train_folds,
                test_folds,
                faces_dir,
                prefix,
                ..
            }) => {
                adience::check_folds("train_folds", train_folds)?;
                adience::check_folds("test_folds", test_folds)?;
                if let Some(f) = train_folds.iter().find(|f| test_folds.contains(f)) {
                    return Err(DataError::Invalid {
                        field: "test_folds",
                        msg: format!("fold {f} is also a training fold; folds are subject-exclusive, so the parts must not share one"),
                    });
                }
                if faces_dir.is_empty() || prefix.is_empty() {
                    return Err(DataError::Invalid {
                        field: if faces_dir.is_empty() {
                            "faces_dir"
                        } else {
                            "prefix"
                        },
                        msg: "must not be empty".into(),
                    });
                }
                self.decode_options().map_or(Ok(()), |o| o.validate())
            }
        }
    }

    /// Decoding geometry of the file-based formats; `None` for CIFAR (fixed 32×32).
    pub fn decode_options(&self) -> Option<DecodeOptions> {
        match self {
            Self::Cifar10(_) | Self::Cifar100(_) => None,
            Self::ImageFolder(ImageFolderSpec {
                size,
                resize,
                shorter_side,
                ..
            })
            | Self::Adience(AdienceSpec {
                size,
                resize,
                shorter_side,
                ..
            }) => Some(DecodeOptions {
                size: *size,
                resize: *resize,
                shorter_side: *shorter_side,
            }),
        }
    }

    /// `[3, H, W]` of every sample, known without reading data.
    pub fn sample_shape(&self) -> [usize; 3] {
        self.decode_options()
            .map_or(cifar::CIFAR_SHAPE, |o| o.sample_shape())
    }

    fn adience_layout(&self) -> Option<AdienceLayout> {
        match self {
            Self::Adience(AdienceSpec {
                root,
                faces_dir,
                prefix,
                age_policy,
                ..
            }) => Some(AdienceLayout {
                root: root.clone(),
                faces_dir: faces_dir.clone(),
                prefix: prefix.clone(),
                age_policy: *age_policy,
            }),
            _ => None,
        }
    }
}

/// The file index of `part` of a file-based dataset (image_folder, adience), so a caller can
/// decode it in chunks with [`ImageIndex::decode`]. CIFAR has no per-image files: use
/// [`load_images`].
pub fn index_images(spec: &ImageDatasetSpec, part: Part) -> Result<ImageIndex, DataError> {
    spec.validate()?;
    match spec {
        ImageDatasetSpec::Cifar10(_) | ImageDatasetSpec::Cifar100(_) => Err(DataError::Invalid {
            field: "format",
            msg: "CIFAR binaries have no per-image files to index; use load_images".into(),
        }),
        ImageDatasetSpec::ImageFolder(ImageFolderSpec {
            train,
            test,
            max_per_class,
            test_max_per_class,
            subsample_seed,
            ..
        }) => match part {
            Part::Train => image_folder::index_image_folder(train, *max_per_class, *subsample_seed),
            Part::Test => {
                let classes = image_folder::class_folders(train)?;
                image_folder::index_image_folder_like(
                    test,
                    &classes,
                    *test_max_per_class,
                    *subsample_seed,
                )
            }
        },
        ImageDatasetSpec::Adience(AdienceSpec {
            train_folds,
            test_folds,
            ..
        }) => {
            let layout = spec.adience_layout().expect("adience variant");
            let folds = match part {
                Part::Train => train_folds,
                Part::Test => test_folds,
            };
            adience::index_adience(&layout, folds)
        }
    }
}

/// Read `part` of the dataset into memory (file-based formats decode in parallel on the
/// current rayon pool).
pub fn load_images(spec: &ImageDatasetSpec, part: Part) -> Result<ImageSet, DataError> {
    spec.validate()?;
    match spec {
        ImageDatasetSpec::Cifar10(Cifar10Spec { root }) => cifar::load_cifar10(root, part),
        ImageDatasetSpec::Cifar100(Cifar100Spec { root, labels }) => {
            cifar::load_cifar100(root, part, *labels)
        }
        _ => {
            let opts = spec.decode_options().expect("file-based format");
            index_images(spec, part)?.decode_all(&opts)
        }
    }
}

/// The folders a spec reads from, without touching the disk (for messages and watching).
pub fn data_roots(spec: &ImageDatasetSpec) -> Vec<PathBuf> {
    match spec {
        ImageDatasetSpec::Cifar10(Cifar10Spec { root })
        | ImageDatasetSpec::Cifar100(Cifar100Spec { root, .. })
        | ImageDatasetSpec::Adience(AdienceSpec { root, .. }) => vec![root.clone()],
        ImageDatasetSpec::ImageFolder(ImageFolderSpec { train, test, .. }) => {
            vec![train.clone(), test.clone()]
        }
    }
}

/// Every file [`load_images`] reads for `part`, in reading order, for content hashing in a
/// stage key. Listing an ImageFolder or Adience part indexes it (a directory walk or the fold
/// files), but decodes nothing. CIFAR's optional class-name files are included when present.
pub fn data_files(spec: &ImageDatasetSpec, part: Part) -> Result<Vec<PathBuf>, DataError> {
    spec.validate()?;
    let existing = |p: PathBuf| p.is_file().then_some(p);
    match spec {
        ImageDatasetSpec::Cifar10(Cifar10Spec { root }) => {
            let mut files: Vec<PathBuf> = existing(root.join("batches.meta.txt"))
                .into_iter()
                .collect();
            files.extend(cifar::cifar10_files(root, part));
            check_exist(&files, "CIFAR-10", cifar::CIFAR10_HINT)?;
            Ok(files)
        }
        ImageDatasetSpec::Cifar100(Cifar100Spec { root, labels }) => {
            let names = match labels {
                Cifar100Labels::Fine => "fine_label_names.txt",
                Cifar100Labels::Coarse => "coarse_label_names.txt",
            };
            let mut files: Vec<PathBuf> = existing(root.join(names)).into_iter().collect();
            files.push(cifar::cifar100_file(root, part));
            check_exist(&files, "CIFAR-100", cifar::CIFAR100_HINT)?;
            Ok(files)
        }
        ImageDatasetSpec::ImageFolder(_) => Ok(index_images(spec, part)?
            .entries
            .into_iter()
            .map(|e| e.path)
            .collect()),
        ImageDatasetSpec::Adience(AdienceSpec {
            train_folds,
            test_folds,
            ..
        }) => {
            let layout = spec.adience_layout().expect("adience variant");
            let folds = match part {
                Part::Train => train_folds,
                Part::Test => test_folds,
            };
            let mut files = adience::fold_files(&layout, folds);
            files.extend(
                index_images(spec, part)?
                    .entries
                    .into_iter()
                    .map(|e| e.path),
            );
            Ok(files)
        }
    }
}

fn check_exist(
    files: &[PathBuf],
    dataset: &'static str,
    hint: &'static str,
) -> Result<(), DataError> {
    // Name the root when the whole folder is missing: that is the likelier mistake.
    let missing = files.iter().find(|f| !Path::is_file(f)).map(|f| {
        f.parent()
            .filter(|root| !root.is_dir())
            .unwrap_or(f)
            .to_path_buf()
    });
    match missing {
        Some(path) => Err(DataError::Missing {
            path,
            dataset,
            hint,
        }),
        None => Ok(()),
    }
}
