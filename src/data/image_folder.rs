//! ImageFolder datasets (torchvision's layout): `ROOT/<class_name>/**/<image>.{jpg,jpeg,png}`.
//!
//! Work is split in two levels so that ImageNet-sized trees can be streamed. [`index_image_folder`]
//! lists `(path, label)` pairs without decoding anything: class folders sorted by name give the
//! class indices (the order torchvision's `ImageFolder` uses, so ImageNet's `n01440764` is 0),
//! files are taken in torchvision's order (sorted by folder, then by file name, recursively), and
//! an optional `max_per_class` keeps a seeded, deterministic subsample per class (in index
//! order). [`ImageIndex::decode`] then decodes any subset of the index, in parallel with rayon,
//! into CHW `u8` at a fixed `size`×`size` chosen by an explicit [`ResizePolicy`]; a caller can
//! walk an index in chunks and never hold the whole dataset. Grayscale, 16-bit and RGBA inputs
//! are converted to 8-bit RGB (alpha dropped, as PIL's `convert("RGB")`). The format is
//! detected from the content, not the extension. Files with other extensions are ignored; an
//! empty class folder, an undecodable file or a class folder that is missing from a test tree
//! is a [`DataError`] naming the path.

use super::{DataError, ImageSet};
use image::imageops::FilterType;
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// File extensions (case-insensitive) an index picks up.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];
/// Largest accepted output side, a guard against a typo turning into a huge allocation.
pub const MAX_SIZE: u32 = 4096;
/// Folder nesting below a class folder that the index follows (guards against symlink loops).
const MAX_DEPTH: usize = 16;

/// How a decoded image of any shape becomes `size`×`size`. Part of a dataset's cache key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizePolicy {
    /// Scale the shorter side to `shorter_side` (default `size`), keeping the aspect ratio (the
    /// longer side becomes `floor(shorter_side · long / short)`), then cut the centred
    /// `size`×`size` square, its offset `round_half_even((side − size) / 2)`. This is
    /// torchvision's `Resize(shorter_side)` + `CenterCrop(size)` on PIL images.
    #[default]
    CenterCrop,
    /// Scale straight to `size`×`size`, ignoring the aspect ratio (Adience's aligned faces are
    /// already square; Levi & Hassner resize them to 256×256 this way).
    Stretch,
}

/// Output geometry of [`decode_image`]. Resampling is bilinear with PIL-style antialiasing
/// (the triangle filter widened by the scale factor when shrinking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DecodeOptions {
    /// Output side in pixels; every decoded image is `[3, size, size]`.
    pub size: u32,
    pub resize: ResizePolicy,
    /// [`ResizePolicy::CenterCrop`] only: the side the shorter side is scaled to before the
    /// crop (`>= size`); `None` means `size` (crop only along the longer side).
    pub shorter_side: Option<u32>,
}

impl DecodeOptions {
    pub fn new(size: u32, resize: ResizePolicy) -> Self {
        DecodeOptions {
            size,
            resize,
            shorter_side: None,
        }
    }

    /// Reject sizes that cannot work, naming the spec field.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.size == 0 || self.size > MAX_SIZE {
            return Err(DataError::Invalid {
                field: "size",
                msg: format!(
                    "expected a side in 1..={MAX_SIZE} pixels, found {}",
                    self.size
                ),
            });
        }
        match (self.resize, self.shorter_side) {
            (ResizePolicy::CenterCrop, Some(s)) if s < self.size || s > MAX_SIZE => {
                Err(DataError::Invalid {
                    field: "shorter_side",
                    msg: format!(
                        "expected a side in {}..={MAX_SIZE} (at least `size`), found {s}",
                        self.size
                    ),
                })
            }
            (ResizePolicy::Stretch, Some(_)) => Err(DataError::Invalid {
                field: "shorter_side",
                msg: "only applies to `resize: center_crop`".into(),
            }),
            _ => Ok(()),
        }
    }

    /// `[3, size, size]`.
    pub fn sample_shape(&self) -> [usize; 3] {
        [3, self.size as usize, self.size as usize]
    }
}

/// One indexed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub path: PathBuf,
    pub label: u16,
}

/// A dataset as a list of files and labels, nothing decoded yet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImageIndex {
    pub class_names: Vec<String>,
    pub entries: Vec<IndexEntry>,
    /// Rows or files left out while indexing, by reason (Adience: unusable age labels).
    pub dropped: BTreeMap<String, usize>,
}

impl ImageIndex {
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries per class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.class_names.len()];
        for e in &self.entries {
            counts[e.label as usize] += 1;
        }
        counts
    }

    /// Consecutive index ranges of at most `chunk` entries, to decode a large index piecewise.
    pub fn chunks(&self, chunk: usize) -> impl Iterator<Item = Range<usize>> + '_ {
        let chunk = chunk.max(1);
        (0..self.len())
            .step_by(chunk)
            .map(move |s| s..(s + chunk).min(self.len()))
    }

    /// Decode entries `range` (see [`ImageIndex::decode`]).
    pub fn decode_range(
        &self,
        range: Range<usize>,
        opts: &DecodeOptions,
    ) -> Result<ImageSet, DataError> {
        let idx: Vec<usize> = range.collect();
        self.decode(&idx, opts)
    }

    /// Decode the entries at `indices` (in that order) into CHW `u8`, in parallel. On failure
    /// the error is the one of the first failing entry in `indices` order, so it does not
    /// depend on thread scheduling.
    pub fn decode(&self, indices: &[usize], opts: &DecodeOptions) -> Result<ImageSet, DataError> {
        opts.validate()?;
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(DataError::Invalid {
                field: "indices",
                msg: format!("entry {bad} requested from an index of {}", self.len()),
            });
        }
        let shape = opts.sample_shape();
        let dim: usize = shape.iter().product();
        let mut pixels = vec![0u8; indices.len() * dim];
        let first_error = pixels
            .par_chunks_mut(dim.max(1))
            .zip(indices.par_iter())
            .enumerate()
            .filter_map(|(k, (out, &i))| {
                decode_into(&self.entries[i].path, opts, out)
                    .err()
                    .map(|e| (k, e))
            })
            .min_by_key(|(k, _)| *k);
        if let Some((_, e)) = first_error {
            return Err(e);
        }
        Ok(ImageSet {
            sample_shape: shape,
            pixels,
            labels: indices.iter().map(|&i| self.entries[i].label).collect(),
            class_names: self.class_names.clone(),
            dropped: self.dropped.clone(),
        })
    }

    /// Decode every entry.
    pub fn decode_all(&self, opts: &DecodeOptions) -> Result<ImageSet, DataError> {
        self.decode_range(0..self.len(), opts)
    }
}

/// Index `root` as an ImageFolder tree. `max_per_class` keeps at most that many files per
/// class, drawn without replacement by a ChaCha8 stream seeded with `seed` and the class
/// *name* (so a class's subsample depends only on its own files, not on which other classes
/// exist), kept in index order.
pub fn index_image_folder(
    root: &Path,
    max_per_class: Option<usize>,
    seed: u64,
) -> Result<ImageIndex, DataError> {
    let class_names = class_folders(root)?;
    let mut entries = Vec::new();
    for (label, name) in class_names.iter().enumerate() {
        let dir = root.join(name);
        let mut files = Vec::new();
        collect_images(&dir, 0, &mut files)?;
        if files.is_empty() {
            return Err(DataError::EmptyClass { path: dir });
        }
        // torchvision: sorted(os.walk(...)) then sorted(fnames), i.e. by (folder, file name)
        // as strings; `Path`'s own order is per component and differs (`b/d` vs `b-c`).
        files.sort_by(|a, b| {
            (a.0.as_os_str().as_encoded_bytes(), a.1.as_encoded_bytes())
                .cmp(&(b.0.as_os_str().as_encoded_bytes(), b.1.as_encoded_bytes()))
        });
        let mut keep: Vec<usize> = (0..files.len()).collect();
        if let Some(k) = max_per_class {
            if k < files.len() {
                let mut rng = ChaCha8Rng::from_seed(class_seed(seed, name));
                keep = rand::seq::index::sample(&mut rng, files.len(), k).into_vec();
                keep.sort_unstable();
            }
        }
        let label = label as u16;
        entries.extend(keep.into_iter().map(|i| IndexEntry {
            path: files[i].0.join(&files[i].1),
            label,
        }));
    }
    Ok(ImageIndex {
        class_names,
        entries,
        dropped: BTreeMap::new(),
    })
}

/// blake3 of (`seed`, class name): a per-class ChaCha8 seed.
fn class_seed(seed: u64, class: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"cfpipe image_folder subsample v1\0");
    h.update(&seed.to_le_bytes());
    h.update(class.as_bytes());
    *h.finalize().as_bytes()
}

/// Index a test tree against the training tree's classes: the class folders must be the same.
pub fn index_image_folder_like(
    root: &Path,
    train_classes: &[String],
    max_per_class: Option<usize>,
    seed: u64,
) -> Result<ImageIndex, DataError> {
    let index = index_image_folder(root, max_per_class, seed)?;
    if index.class_names != train_classes {
        let first = index
            .class_names
            .iter()
            .zip(train_classes)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("`{a}` here, `{b}` in training"))
            .unwrap_or_else(|| "one list is a prefix of the other".into());
        return Err(DataError::ClassMismatch {
            path: root.to_path_buf(),
            found: index.class_names.len(),
            expected: train_classes.len(),
            first,
        });
    }
    Ok(index)
}

/// Sorted names of the sub-folders of `root` (symlinks followed). Names that are not UTF-8
/// cannot be class names in a YAML pipeline and are rejected.
pub(crate) fn class_folders(root: &Path) -> Result<Vec<String>, DataError> {
    if !root.is_dir() {
        return Err(DataError::Missing {
            path: root.to_path_buf(),
            dataset: "image_folder",
            hint: "expected a folder ROOT/<class_name>/<image>.jpg (ImageNet: the train folder, \
                   and the val folder re-sorted into one folder per synset)",
        });
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| DataError::io(root, e))? {
        let entry = entry.map_err(|e| DataError::io(root, e))?;
        let path = entry.path();
        if path.is_dir() {
            match entry.file_name().into_string() {
                Ok(name) => names.push(name),
                Err(_) => {
                    return Err(DataError::Invalid {
                        field: "root",
                        msg: format!("{}: class folder name is not UTF-8", path.display()),
                    })
                }
            }
        }
    }
    if names.is_empty() {
        return Err(DataError::NoClasses {
            path: root.to_path_buf(),
        });
    }
    names.sort();
    Ok(names)
}

/// Image files under `dir`, as (folder, file name) pairs.
fn collect_images(
    dir: &Path,
    depth: usize,
    out: &mut Vec<(PathBuf, std::ffi::OsString)>,
) -> Result<(), DataError> {
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            if depth < MAX_DEPTH {
                collect_images(&path, depth + 1, out)?;
            }
        } else if has_image_extension(&path) {
            out.push((dir.to_path_buf(), entry.file_name()));
        }
    }
    Ok(())
}

pub(crate) fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Decode one file into a new `[3, size, size]` CHW buffer.
pub fn decode_image(path: &Path, opts: &DecodeOptions) -> Result<Vec<u8>, DataError> {
    opts.validate()?;
    let mut out = vec![0u8; opts.sample_shape().iter().product()];
    decode_into(path, opts, &mut out)?;
    Ok(out)
}

/// Decode `path` into `out` (`3·size·size` bytes, CHW).
fn decode_into(path: &Path, opts: &DecodeOptions, out: &mut [u8]) -> Result<(), DataError> {
    let decode_err = |source| DataError::Decode {
        path: path.to_path_buf(),
        source,
    };
    let reader = image::io::Reader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    // The decoders are fuzzed, but a panic on a hostile file must not take down a whole run.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()))
        .map_err(|_| DataError::DecoderPanic {
            path: path.to_path_buf(),
        })?;
    let rgb = decoded.map_err(decode_err)?.into_rgb8();
    let fitted = fit(rgb, opts);
    let s = opts.size as usize;
    let plane = s * s;
    for (p, px) in fitted.pixels().enumerate() {
        out[p] = px[0];
        out[plane + p] = px[1];
        out[2 * plane + p] = px[2];
    }
    Ok(())
}

/// Apply the resize policy; the result is exactly `size`×`size`.
pub fn fit(img: RgbImage, opts: &DecodeOptions) -> RgbImage {
    let size = opts.size;
    match opts.resize {
        ResizePolicy::Stretch => resize_to(img, size, size),
        ResizePolicy::CenterCrop => {
            let short = opts.shorter_side.unwrap_or(size);
            let (w, h) = img.dimensions();
            let (nw, nh) = if w <= h {
                (short, scaled_long(short, h, w))
            } else {
                (scaled_long(short, w, h), short)
            };
            let resized = resize_to(img, nw, nh);
            let left = center_offset(nw, size);
            let top = center_offset(nh, size);
            image::imageops::crop_imm(&resized, left, top, size, size).to_image()
        }
    }
}

/// torchvision: `int(short_target * long / short)`; never below the target itself.
fn scaled_long(target: u32, long: u32, short: u32) -> u32 {
    ((target as u64 * long as u64) / short.max(1) as u64).max(target as u64) as u32
}

/// torchvision's centre-crop offset `int(round((side - crop) / 2))` (Python rounds half to even).
pub fn center_offset(side: u32, crop: u32) -> u32 {
    ((side as f64 - crop as f64) / 2.0)
        .round_ties_even()
        .max(0.0) as u32
}

fn resize_to(img: RgbImage, w: u32, h: u32) -> RgbImage {
    if img.dimensions() == (w, h) {
        img
    } else {
        image::imageops::resize(&img, w, h, FilterType::Triangle)
    }
}
