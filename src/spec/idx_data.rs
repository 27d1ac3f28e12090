//! With data required, the files of an IDX `dataset:` are checked before anything runs: each
//! exists and is a file (not a folder), each reads as IDX through to its end (magic, header,
//! payload length: a text file, a truncated gzip stream or a header that claims more images
//! than the file holds are all found here), the labels of a pair are one per image, the test
//! images have the training images' shape, and that shape is what a conv model takes. Each
//! problem is reported at the key that names the file (or at the model's input key).
//!
//! Reading a gzipped dataset through to its end is most of what a cached rerun costs (about
//! 14 ms for the bundled MNIST), so a check that passed is remembered (see
//! [`remember_checks_in`]) with a stamp of each file's path, size, inode, mtime and ctime, as
//! the data-file hash memo does: any write to a file changes its ctime and the file is read
//! again. Checks that reported a problem are never remembered.

use crate::data::idx::{check_idx, read_idx};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A file of the dataset and the key that names it.
pub(super) struct DataFile<'a> {
    pub key: &'a str,
    pub path: &'a Path,
}

/// The model's view of a sample: its `[C, H, W]` input, the key that sets it, and the size of
/// the random training crops (`training.augment.crop.size`), if any.
pub(super) struct ModelInput<'a> {
    pub shape: [usize; 3],
    pub key: &'a str,
    pub crop: Option<usize>,
}

/// Where passed checks are remembered (a file in the cache's `index/`); unset, every check
/// reads the files. The file is written only where its directory exists already, so a
/// pipeline with a mistake never creates a cache.
static MEMO: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Remember passed checks in `path` for the rest of this process.
pub fn remember_checks_in(path: PathBuf) {
    let _ = MEMO.set(path);
}

/// The memo's key for checking `pairs` against `model`: every file's stamp, or `None` when
/// there is no memo or a file cannot be stat'ed (the full check then says why).
fn memo_key(pairs: &[(DataFile, DataFile)], model: Option<&ModelInput>) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    MEMO.get()?;
    let mut h = blake3::Hasher::new();
    h.update(b"idx-check-v1\0");
    for f in pairs.iter().flat_map(|(i, l)| [i, l]) {
        let path = std::fs::canonicalize(f.path).ok()?;
        let m = std::fs::metadata(&path).ok()?;
        h.update(path.as_os_str().as_encoded_bytes());
        h.update(&[0]);
        for v in [
            m.len() as i64,
            m.dev() as i64,
            m.ino() as i64,
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ] {
            h.update(&v.to_le_bytes());
        }
    }
    if let Some(m) = model {
        h.update(format!("{:?} {:?} {}", m.shape, m.crop, m.key).as_bytes());
    }
    Some(h.finalize().to_hex().to_string())
}

fn memo_read(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Check `pairs` of (images, labels); returns the labels present in every label file when
/// every file could be read.
pub(super) fn check(
    pairs: &[(DataFile, DataFile)],
    model: Option<ModelInput>,
    e: &mut dyn FnMut(&str, String),
) -> Option<BTreeSet<u8>> {
    let key = memo_key(pairs, model.as_ref());
    if let (Some(k), Some(path)) = (&key, MEMO.get()) {
        if let Some(labels) = memo_read(path).get(k) {
            return Some(labels.iter().copied().collect());
        }
    }
    let mut failed = false;
    let present = check_files(pairs, model, &mut |k: &str, m: String| {
        failed = true;
        e(k, m)
    });
    if let (Some(k), Some(path), Some(p), false) = (key, MEMO.get(), &present, failed) {
        if path.parent().is_some_and(Path::is_dir) {
            let mut all = memo_read(path);
            all.insert(k, p.iter().copied().collect());
            let bytes = serde_json::to_vec(&all).expect("plain data");
            // Advisory: a memo that cannot be written costs the next run a read.
            let _ = crate::cache::atomic_write(path, &bytes);
        }
    }
    present
}

/// [`check`] without the memo: read every file.
fn check_files(
    pairs: &[(DataFile, DataFile)],
    model: Option<ModelInput>,
    e: &mut dyn FnMut(&str, String),
) -> Option<BTreeSet<u8>> {
    let mut all_there = true;
    for f in pairs.iter().flat_map(|(i, l)| [i, l]) {
        if f.path.is_dir() {
            all_there = false;
            e(
                f.key,
                format!(
                    "{} is a directory, not a data file; name the IDX file inside it (raw or gzipped, e.g. train-images-idx3-ubyte.gz)",
                    f.path.display()
                ),
            );
        } else if !f.path.is_file() {
            all_there = false;
            e(f.key, format!(
                "data file {} does not exist (relative paths are resolved against the current directory; the bundled MNIST is regenerated by `python3 scripts/make_mnist.py`)",
                f.path.display()
            ));
        }
    }
    if !all_there {
        return None;
    }
    let mut present: Option<BTreeSet<u8>> = None;
    let mut readable = true;
    let mut shapes: Vec<(&DataFile, Vec<usize>)> = Vec::new();
    for (images, labels) in pairs {
        let dims = match check_idx(images.path) {
            Ok(d) if d.len() >= 2 => Some(d),
            Ok(d) => {
                e(
                    images.key,
                    format!(
                        "{}: expected images, dimensions [count, height, width], found dimensions {d:?}",
                        images.path.display()
                    ),
                );
                None
            }
            Err(err) => {
                e(images.key, err.to_string());
                None
            }
        };
        let lb = match read_idx(labels.path) {
            Ok(a) if a.dims.len() == 1 => Some(a),
            Ok(a) => {
                e(
                    labels.key,
                    format!(
                        "{}: expected a 1-D label file, found dimensions {:?}",
                        labels.path.display(),
                        a.dims
                    ),
                );
                None
            }
            Err(err) => {
                e(labels.key, err.to_string());
                None
            }
        };
        readable &= dims.is_some() && lb.is_some();
        if let (Some(d), Some(l)) = (&dims, &lb) {
            if d[0] != l.dims[0] {
                e(
                    labels.key,
                    format!(
                        "{} holds {} labels, but {} holds {} images; the files must hold one label per image",
                        labels.path.display(),
                        l.dims[0],
                        images.path.display(),
                        d[0]
                    ),
                );
            }
        }
        if let Some(d) = dims {
            shapes.push((images, d[1..].to_vec()));
        }
        if let Some(l) = lb {
            let s: BTreeSet<u8> = l.data.into_iter().collect();
            present = Some(match present {
                None => s,
                Some(prev) => prev.intersection(&s).copied().collect(),
            });
        }
    }
    if let [(train, a), (test, b)] = &shapes[..] {
        if a != b {
            e(
                test.key,
                format!(
                    "{} holds images of shape {b:?}, but the training images in {} are {a:?}",
                    test.path.display(),
                    train.path.display()
                ),
            );
        }
    }
    if let (Some(m), Some((f, s))) = (model, shapes.first()) {
        let stored = match s[..] {
            [c, h, w] => [c, h, w],
            [h, w] => [1, h, w],
            _ => [1, 1, s.iter().product()],
        };
        let i = m.shape;
        let cropped = stored[0] == i[0]
            && stored[1] >= i[1]
            && stored[2] >= i[2]
            && i[1] == i[2]
            && m.crop == Some(i[1]);
        if stored != i && !cropped {
            e(
                m.key,
                format!(
                    "the model takes samples of shape {i:?} ([channels, height, width]), but {} holds images of shape {stored:?}; set `input_shape: {stored:?}` to match the data",
                    f.path.display()
                ),
            );
        }
    }
    present.filter(|_| readable)
}

/// The (images, labels) pairs of a dataset: training, and test when given.
pub(super) fn pairs<'a>(
    images: &'a PathBuf,
    labels: &'a PathBuf,
    test: Option<&'a (PathBuf, PathBuf)>,
) -> Vec<(DataFile<'a>, DataFile<'a>)> {
    let mut out = vec![(
        DataFile {
            key: "dataset.images",
            path: images,
        },
        DataFile {
            key: "dataset.labels",
            path: labels,
        },
    )];
    if let Some((i, l)) = test {
        out.push((
            DataFile {
                key: "dataset.test_images",
                path: i,
            },
            DataFile {
                key: "dataset.test_labels",
                path: l,
            },
        ));
    }
    out
}
