//! Datasets: reading image/label files into memory as bytes. Stages turn them into tensors.
//!
//! Two families live here. The IDX readers ([`load_idx_pair`], [`label_set`]) serve MNIST-like
//! data as [`LabeledImages`]. The colour-image datasets (CIFAR-10/100 binaries, ImageFolder
//! trees such as ImageNet, Adience aligned faces) are described by one serde type,
//! [`ImageDatasetSpec`], and read by [`load_images`] into an [`ImageSet`] (CHW `u8`, `u16`
//! labels); [`transforms`] and [`resample`] hold the training-time augmentation and
//! class-balanced sampling on top. Every failure is a [`DataError`] naming the file; nothing
//! here panics on a bad file.

pub mod adience;
pub mod cifar;
pub mod idx;
pub mod image_folder;
pub mod image_set;
pub mod resample;
pub mod transforms;

pub use image_set::{data_files, data_roots, load_images, ImageDatasetSpec, ImageSet, Part};

use idx::{read_idx, IdxError};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Images as bytes (row-major, `dim` values per sample) with one label per sample.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledImages {
    /// Per-sample shape, e.g. `[28, 28]`.
    pub sample_shape: Vec<usize>,
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

impl LabeledImages {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Values per sample.
    pub fn dim(&self) -> usize {
        self.sample_shape.iter().product()
    }
    pub fn sample(&self, i: usize) -> &[u8] {
        let d = self.dim();
        &self.pixels[i * d..(i + 1) * d]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Idx(#[from] IdxError),
    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    CountMismatch {
        images: String,
        labels: String,
        n_images: usize,
        n_labels: usize,
    },
    #[error("{0}: expected a 1-D label file")]
    NotLabels(String),
    /// A dataset file or folder is not there; `hint` says how to obtain the data.
    #[error("{dataset}: {} does not exist; {hint}", path.display())]
    Missing {
        path: PathBuf,
        dataset: &'static str,
        hint: &'static str,
    },
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: {len} bytes is not a positive multiple of the {record}-byte {format} record \
         (truncated or not a {format} binary file)",
        path.display()
    )]
    RecordSize {
        path: PathBuf,
        len: u64,
        record: usize,
        format: &'static str,
    },
    #[error("{}: record {record}: label {label} is out of range (expected < {classes})", path.display())]
    LabelRange {
        path: PathBuf,
        record: usize,
        label: u8,
        classes: usize,
    },
    #[error("{}: cannot decode image: {source}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// The image decoder panicked on this file (a decoder bug triggered by a malformed file).
    #[error("{}: the image decoder failed on this file (malformed image)", path.display())]
    DecoderPanic { path: PathBuf },
    #[error("{}: class folder holds no .jpg, .jpeg or .png file", path.display())]
    EmptyClass { path: PathBuf },
    #[error("{}: no class folders found (expected ROOT/<class_name>/<image>.jpg)", path.display())]
    NoClasses { path: PathBuf },
    #[error(
        "{}: class folders differ from the training set's ({} here, {} there; first difference: {first})",
        path.display(), found, expected
    )]
    ClassMismatch {
        path: PathBuf,
        found: usize,
        expected: usize,
        first: String,
    },
    /// A malformed line in a tab-separated metadata file (Adience folds).
    #[error("{}:{line}: {msg}", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// An option of the dataset spec is out of range.
    #[error("dataset.{field}: {msg}")]
    Invalid { field: &'static str, msg: String },
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Read an IDX image file and its label file.
pub fn load_idx_pair(images: &Path, labels: &Path) -> Result<LabeledImages, DataError> {
    let im = read_idx(images)?;
    let lb = read_idx(labels)?;
    if lb.dims.len() != 1 {
        return Err(DataError::NotLabels(labels.display().to_string()));
    }
    let n = im.dims.first().copied().unwrap_or(0);
    if n != lb.dims[0] {
        return Err(DataError::CountMismatch {
            images: images.display().to_string(),
            labels: labels.display().to_string(),
            n_images: n,
            n_labels: lb.dims[0],
        });
    }
    Ok(LabeledImages {
        sample_shape: im.dims[1..].to_vec(),
        pixels: im.data,
        labels: lb.data,
    })
}

/// The set of labels present in an IDX label file.
pub fn label_set(labels: &Path) -> Result<BTreeSet<u8>, DataError> {
    let lb = read_idx(labels)?;
    if lb.dims.len() != 1 {
        return Err(DataError::NotLabels(labels.display().to_string()));
    }
    Ok(lb.data.into_iter().collect())
}
