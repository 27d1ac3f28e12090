//! The colour-image side of a pipeline's data: `dataset:` in a CIFAR, ImageFolder or Adience
//! format, or several named `datasets:` with one `{dataset, classes}` entry per task.
//!
//! The data module owns the formats ([`ImageDatasetSpec`]); this file only reads a pipeline's
//! blocks of them (the `format` first, then that format's options, so errors keep their key
//! paths) and checks their use: the options (with key paths), class labels against each dataset's class count,
//! one sample shape for all datasets (every task feeds the same trunk), and, when data is
//! required, that every file exists. The listed files become the split stage's declared input
//! files, named by dataset, root and path *relative to the root*, so the key depends on the
//! content and layout of the data but not on where a user keeps it.

use crate::data::image_set::{AdienceSpec, Cifar100Spec, Cifar10Spec, ImageFolderSpec};
use crate::data::{data_files, data_roots, ImageDatasetSpec, Part};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The name a single `dataset:` gets in the split stage's parameters.
pub const SINGLE: &str = "dataset";

/// Checked image data: the datasets the tasks use, the tasks, and (with data required) the
/// declared files.
#[derive(Debug, Clone)]
pub struct ImageData {
    pub datasets: BTreeMap<String, ImageDatasetSpec>,
    pub tasks: Vec<ImageTask>,
    /// Role `NAME/ROOT_INDEX/RELATIVE_PATH` → file; empty when data was not checked (`dag`).
    pub files: BTreeMap<String, PathBuf>,
    /// `[3, H, W]` of every sample.
    pub sample_shape: [usize; 3],
    /// Per task: `epochs` overriding `training.epochs` (0 = keep the loaded weights).
    pub epochs: Vec<Option<usize>>,
}

/// One task: a dataset and its classes (labels of that dataset, in head order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageTask {
    pub dataset: String,
    pub classes: TaskClasses,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskClasses {
    /// Every class of the dataset, in label order (resolved when the data is read).
    All,
    List(Vec<u16>),
}

/// The key path of a dataset's block.
pub fn dataset_path(name: &str, single: bool) -> String {
    if single {
        SINGLE.to_string()
    } else {
        format!("datasets.{name}")
    }
}

/// Deserialize one image dataset block at key path `path` in two steps, its `format` and then
/// that format's options, so that an error inside the block is reported at its own key (an
/// internally tagged enum would report them all at the block). `idx` tells whether
/// `format: idx` is allowed here (the single `dataset:`), for the list of formats in the
/// message. Every error goes to `e` (path, message, located at the key).
pub(super) fn parse_dataset(
    v: &serde_yaml::Value,
    path: &str,
    idx: bool,
    e: &mut dyn FnMut(&str, String, bool),
) -> Option<ImageDatasetSpec> {
    let mut formats: Vec<&str> = ImageDatasetSpec::FORMATS.to_vec();
    if idx {
        formats.insert(0, "idx");
    }
    let list = formats.join(", ");
    let Some(body) = v.as_mapping() else {
        e(
            path,
            format!("expected a mapping with a `format` ({list}) and its options"),
            false,
        );
        return None;
    };
    let format = match body.get("format") {
        None => {
            e(
                path,
                format!("missing `format`: expected one of {list}"),
                false,
            );
            return None;
        }
        Some(f) => f,
    };
    let fpath = format!("{path}.format");
    let Some(name) = format.as_str() else {
        e(
            &fpath,
            format!("expected a format name: one of {list}"),
            false,
        );
        return None;
    };
    let mut options = body.clone();
    options.remove("format");
    let options = serde_yaml::Value::Mapping(options);
    fn options_of<T: serde::de::DeserializeOwned>(
        v: serde_yaml::Value,
        path: &str,
        e: &mut dyn FnMut(&str, String, bool),
    ) -> Option<T> {
        let c = super::collect::deserialize::<T>(v, path);
        for f in c.errors {
            e(&f.path, f.message, f.at_key);
        }
        c.value.filter(|_| c.clean)
    }
    match name {
        "cifar10" => options_of::<Cifar10Spec>(options, path, e).map(ImageDatasetSpec::Cifar10),
        "cifar100" => options_of::<Cifar100Spec>(options, path, e).map(ImageDatasetSpec::Cifar100),
        "image_folder" => {
            options_of::<ImageFolderSpec>(options, path, e).map(ImageDatasetSpec::ImageFolder)
        }
        "adience" => options_of::<AdienceSpec>(options, path, e).map(ImageDatasetSpec::Adience),
        other => {
            let lower = other.to_ascii_lowercase();
            let idx_like = ["mnist", "fashion", "idx", "ubyte"]
                .iter()
                .any(|w| lower.contains(w));
            let hint = match (idx_like, idx) {
                (true, true) => "; MNIST, Fashion-MNIST and other IDX files are `format: idx`",
                (true, false) => "; MNIST, Fashion-MNIST and other IDX files are `format: idx`, which is only supported as the single `dataset:`",
                (false, _) => "",
            };
            e(
                &fpath,
                format!("unknown format `{other}`: expected one of {list}{hint}"),
                false,
            );
            None
        }
    }
}

/// Number of classes, when known without reading data (all but ImageFolder).
pub fn known_class_count(spec: &ImageDatasetSpec) -> Option<usize> {
    match spec {
        ImageDatasetSpec::Cifar10(_) => Some(10),
        ImageDatasetSpec::Cifar100(crate::data::image_set::Cifar100Spec { labels, .. }) => {
            Some(match labels {
                crate::data::cifar::Cifar100Labels::Fine => 100,
                crate::data::cifar::Cifar100Labels::Coarse => 20,
            })
        }
        ImageDatasetSpec::Adience(_) => Some(8),
        ImageDatasetSpec::ImageFolder(_) => None,
    }
}

/// The spec as it enters the split stage's key: every option, no paths (those enter as the
/// relative paths and contents of the declared files).
pub fn key_params(spec: &ImageDatasetSpec) -> serde_json::Value {
    let mut v = serde_json::to_value(spec).expect("plain data");
    if let Some(m) = v.as_object_mut() {
        for k in ["root", "train", "test"] {
            m.remove(k);
        }
    }
    v
}

/// Put the roots back into a spec whose key parameters were stripped of them: root `k` (in
/// [`data_roots`] order) is recovered from any declared file `NAME/k/REL` as its path minus REL.
pub fn with_roots(
    name: &str,
    params: &serde_json::Value,
    files: &BTreeMap<String, PathBuf>,
) -> Result<ImageDatasetSpec, String> {
    let mut v = params.clone();
    let fmt = v
        .get("format")
        .and_then(|f| f.as_str())
        .ok_or_else(|| format!("dataset {name}: no format"))?
        .to_string();
    let keys: &[&str] = if fmt == "image_folder" {
        &["train", "test"]
    } else {
        &["root"]
    };
    for (k, key) in keys.iter().enumerate() {
        let prefix = format!("{name}/{k}/");
        let (role, path) = files
            .iter()
            .find(|(r, _)| r.starts_with(&prefix))
            .ok_or_else(|| format!("dataset {name}: no declared file under its `{key}`"))?;
        let rel = &role[prefix.len()..];
        let root = path
            .to_str()
            .and_then(|p| p.strip_suffix(rel))
            .ok_or_else(|| format!("dataset {name}: {} does not end in {rel}", path.display()))?;
        v[*key] = serde_json::Value::String(root.to_string());
    }
    serde_json::from_value(v).map_err(|e| format!("dataset {name}: {e}"))
}

/// Every file the split stage reads from `spec`, both parts, as roles `NAME/k/REL`. An
/// ImageFolder declares its class folders instead (`NAME/0/CLASS` under `train`, `NAME/1/CLASS`
/// under `test`), each keyed by a digest of every file below it (`cache::filehash`), so a rerun
/// on ImageNet lists a thousand folders rather than stat-ing and looking up 1.2M files one by
/// one. The key thereby covers every file of a class folder, also those a `max_per_class`
/// subsample leaves out.
pub fn declared_files(
    name: &str,
    spec: &ImageDatasetSpec,
) -> Result<BTreeMap<String, PathBuf>, crate::data::DataError> {
    if let ImageDatasetSpec::ImageFolder(crate::data::image_set::ImageFolderSpec {
        train,
        test,
        ..
    }) = spec
    {
        spec.validate()?;
        let classes = crate::data::image_folder::class_folders(train)?;
        let test_classes = crate::data::image_folder::class_folders(test)?;
        if test_classes != classes {
            let first = test_classes
                .iter()
                .zip(&classes)
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("`{a}` here, `{b}` in training"))
                .unwrap_or_else(|| "one list is a prefix of the other".into());
            return Err(crate::data::DataError::ClassMismatch {
                path: test.clone(),
                found: test_classes.len(),
                expected: classes.len(),
                first,
            });
        }
        let mut out = BTreeMap::new();
        for (k, root) in [train, test].into_iter().enumerate() {
            for c in &classes {
                out.insert(format!("{name}/{k}/{c}"), root.join(c));
            }
        }
        return Ok(out);
    }
    let roots = data_roots(spec);
    let mut out = BTreeMap::new();
    for part in [Part::Train, Part::Test] {
        for f in data_files(spec, part)? {
            // ImageFolder's test files live under its second root; check the more specific
            // (longer) root first in case one root lies inside the other.
            let mut order: Vec<usize> = (0..roots.len()).collect();
            order.sort_by_key(|&k| std::cmp::Reverse(roots[k].as_os_str().len()));
            let found = order.into_iter().find_map(|k| {
                let in_part = match (roots.len(), part) {
                    (2, Part::Train) => k == 0,
                    (2, Part::Test) => k == 1,
                    _ => true,
                };
                f.strip_prefix(&roots[k])
                    .ok()
                    .filter(|_| in_part)
                    .and_then(|rel| rel.to_str())
                    .map(|rel| (k, rel.to_string()))
            });
            let Some((k, rel)) = found else {
                return Err(crate::data::DataError::Invalid {
                    field: "root",
                    msg: format!("{} is outside the dataset's folders", f.display()),
                });
            };
            out.insert(format!("{name}/{k}/{rel}"), f);
        }
    }
    Ok(out)
}

/// Check the tasks against the datasets: labels in range, at least two classes per task, no
/// class in two tasks. `class_count` gives a dataset's class count where known.
pub fn check_tasks(
    tasks: &[(ImageTask, String)],
    class_count: &dyn Fn(&str) -> Option<usize>,
    e: &mut dyn FnMut(&str, String),
) {
    let mut used: BTreeMap<(String, u16), usize> = BTreeMap::new();
    let mut whole: BTreeMap<String, usize> = BTreeMap::new();
    for (t, (task, path)) in tasks.iter().enumerate() {
        let n = class_count(&task.dataset);
        match &task.classes {
            TaskClasses::All => {
                if let Some(prev) = whole.insert(task.dataset.clone(), t).or_else(|| {
                    used.iter()
                        .find(|((d, _), _)| *d == task.dataset)
                        .map(|(_, &p)| p)
                }) {
                    e(path, format!("task {} already uses classes of dataset `{}`; `classes: all` must be the dataset's only task", prev + 1, task.dataset));
                }
                if let Some(n) = n.filter(|&n| n < 2) {
                    e(
                        path,
                        format!(
                            "a task needs at least two classes, dataset `{}` has {n}",
                            task.dataset
                        ),
                    );
                }
            }
            TaskClasses::List(list) => {
                if list.len() < 2 {
                    e(
                        path,
                        format!("a task needs at least two classes, found {}", list.len()),
                    );
                }
                for (i, &c) in list.iter().enumerate() {
                    let p = format!("{path}.{i}");
                    if let Some(n) = n.filter(|&n| c as usize >= n) {
                        e(
                            &p,
                            format!(
                                "class {c} is out of range: dataset `{}` has {n} classes (0..={})",
                                task.dataset,
                                n - 1
                            ),
                        );
                        continue;
                    }
                    if let Some(&prev) = whole.get(&task.dataset) {
                        e(
                            &p,
                            format!(
                                "task {} already takes every class of dataset `{}`",
                                prev + 1,
                                task.dataset
                            ),
                        );
                    }
                    match used.insert((task.dataset.clone(), c), t) {
                        Some(prev) if prev == t => {
                            e(&p, format!("class {c} appears twice in task {}", t + 1))
                        }
                        Some(prev) => e(
                            &p,
                            format!(
                                "class {c} is already in task {}; class groups must not overlap",
                                prev + 1
                            ),
                        ),
                        None => {}
                    }
                }
            }
        }
    }
}

/// Labels of a raw list, range-checked to `u16`.
pub fn labels(list: &[i64], path: &str, e: &mut dyn FnMut(&str, String)) -> Vec<u16> {
    list.iter()
        .enumerate()
        .filter_map(|(i, &c)| match u16::try_from(c) {
            Ok(c) => Some(c),
            Err(_) => {
                e(
                    &format!("{path}.{i}"),
                    format!("expected a class label in 0..=65535, found {c}"),
                );
                None
            }
        })
        .collect()
}

/// Datasets named but used by no task.
pub fn unused(
    datasets: &BTreeMap<String, ImageDatasetSpec>,
    tasks: &[ImageTask],
) -> BTreeSet<String> {
    let used: BTreeSet<&String> = tasks.iter().map(|t| &t.dataset).collect();
    datasets
        .keys()
        .filter(|k| !used.contains(k))
        .cloned()
        .collect()
}
