//! Datasets: reading image/label files into memory as bytes. Stages turn them into tensors.

pub mod idx;

use idx::{read_idx, IdxError};
use std::collections::BTreeSet;
use std::path::Path;

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
