//! `split`: read the dataset files and cut them into per-task train and test sets.
//!
//! Without separate test files the pool is split per class: each class's samples are shuffled
//! with `split_seed` and the first `round(test_fraction · n_c)` go to the test set. The split is
//! therefore deterministic, stratified, and keyed on `split_seed` and `test_fraction`. Labels
//! are stored local to each task's head (the position of the class in its group).
//!
//! With `permute_seed`, task 1 keeps the original pixels and every later task applies its own
//! fixed permutation of the pixel positions (drawn from `permute_seed` and the task index), to
//! its training and test images alike.

use super::artifacts::{Samples, SplitData, TaskData};
use crate::data::{load_idx_pair, LabeledImages};
use crate::data::{load_images, ImageSet, Part};
use crate::exec::{Artifact, Stage, StageContext, StageError};
use crate::spec::{ImageTask, TaskClasses};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::nn::tensor::Label;

pub struct Split;

/// The split stage's parameters, tagged by the data's `format` (`idx` or `images`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum Params {
    Idx(IdxSplit),
    Images(ImageSplit),
}

/// An IDX dataset cut into class groups. The optional fields are keyed as `null` when absent,
/// as they always were.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdxSplit {
    pub tasks: Vec<Vec<Label>>,
    /// Share of the pool held out for testing; `None` with separate test files.
    pub test_fraction: Option<f64>,
    pub split_seed: u64,
    /// Tasks 2.. get a fixed pixel permutation each, seeded by this (permuted MNIST).
    pub permute_seed: Option<u64>,
    /// Share of each task's training samples held out, stratified by class and seeded by
    /// `split_seed`, as its validation set (`evaluation.selection: validation`). Left out of
    /// the key when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_fraction: Option<f64>,
}

/// Tasks drawn from colour-image datasets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSplit {
    /// Colour-image datasets by name, as key parameters (paths stripped; see
    /// [`crate::spec::images::key_params`] and [`crate::spec::images::with_roots`]).
    pub datasets: BTreeMap<String, serde_json::Value>,
    pub image_tasks: Vec<ImageTask>,
}

impl Stage for Split {
    fn kind(&self) -> &'static str {
        "split"
    }
    fn version(&self) -> u32 {
        super::keyed_version(1, super::Numerics::Exact)
    }
    fn run(&self, ctx: &StageContext) -> Result<Artifact, StageError> {
        let p = match ctx.params()? {
            Params::Idx(p) => p,
            Params::Images(p) => return split_images(ctx, &p),
        };
        let load = |i: &str, l: &str| -> Result<LabeledImages, StageError> {
            load_idx_pair(ctx.file(i)?, ctx.file(l)?).map_err(|e| StageError::failed(e.to_string()))
        };
        let pool = load("images", "labels")?;
        let (train_idx, test_idx, train, test) =
            match (&p.test_fraction, ctx.files.contains_key("test_images")) {
                (None, true) => {
                    let test = load("test_images", "test_labels")?;
                    if test.sample_shape != pool.sample_shape {
                        return Err(StageError::failed(format!(
                            "test images have shape {:?}, training images {:?}",
                            test.sample_shape, pool.sample_shape
                        )));
                    }
                    (
                        (0..pool.len()).collect(),
                        (0..test.len()).collect(),
                        &pool,
                        Some(test),
                    )
                }
                (Some(f), false) => {
                    let (tr, te) = stratified_split(&pool.labels, *f, p.split_seed);
                    (tr, te, &pool, None)
                }
                _ => {
                    return Err(StageError::invalid(
                        "give either test_fraction or test files",
                    ))
                }
            };
        let test_set = test.as_ref().unwrap_or(&pool);
        let dim = pool.dim();
        let tasks = p
            .tasks
            .iter()
            .enumerate()
            .map(|(t, classes)| {
                let mut task = TaskData {
                    classes: classes.clone(),
                    train: select(train, &train_idx, classes),
                    test: select(test_set, &test_idx, classes),
                    val: None,
                };
                if let Some(f) = p.validation_fraction {
                    let (keep, held) =
                        stratified_split(&task.train.y, f, p.split_seed ^ (t as u64) << 32);
                    task.val = Some(subset(&task.train, &held, dim));
                    task.train = subset(&task.train, &keep, dim);
                }
                if let (Some(seed), true) = (p.permute_seed, t > 0) {
                    let perm = pixel_permutation(seed, t, dim);
                    permute(&mut task.train.x, &perm);
                    permute(&mut task.test.x, &perm);
                    if let Some(v) = &mut task.val {
                        permute(&mut v.x, &perm);
                    }
                }
                task
            })
            .collect::<Vec<_>>();
        finish(ctx, pool.sample_shape.clone(), tasks)
    }
}

fn finish(
    ctx: &StageContext,
    sample_shape: Vec<usize>,
    tasks: Vec<TaskData>,
) -> Result<Artifact, StageError> {
    for (t, task) in tasks.iter().enumerate() {
        ctx.log(format!(
            "task {t}: classes {:?}, {} train, {} test",
            task.classes,
            task.train.len(),
            task.test.len()
        ));
        if task.train.is_empty() || task.test.is_empty() {
            return Err(StageError::failed(format!(
                "task {} (classes {:?}) has {} training and {} test samples; both must be non-empty",
                t + 1,
                task.classes,
                task.train.len(),
                task.test.len()
            )));
        }
    }
    let mut art = Artifact::new();
    SplitData {
        sample_shape,
        tasks,
    }
    .to_artifact(&mut art);
    Ok(art)
}

/// Tasks from colour-image datasets: each dataset's training and test parts are read once
/// (in name order), then every task takes its classes from its dataset, labels local to its
/// head. Samples keep the dataset's order.
fn split_images(ctx: &StageContext, p: &ImageSplit) -> Result<Artifact, StageError> {
    let mut loaded: BTreeMap<&str, (ImageSet, ImageSet)> = BTreeMap::new();
    for (name, params) in &p.datasets {
        if !p.image_tasks.iter().any(|t| &t.dataset == name) {
            continue;
        }
        let spec = crate::spec::images::with_roots(name, params, ctx.files)
            .map_err(StageError::invalid)?;
        let load = |part| {
            load_images(&spec, part)
                .map_err(|e| StageError::failed(format!("dataset `{name}`: {e}")))
        };
        let (train, test) = (load(Part::Train)?, load(Part::Test)?);
        ctx.log(format!(
            "dataset {name}: {} classes, {} train, {} test, shape {:?}, dropped {:?}",
            train.class_names.len(),
            train.len(),
            test.len(),
            train.sample_shape,
            train.dropped
        ));
        loaded.insert(name, (train, test));
    }
    let mut shape: Option<[usize; 3]> = None;
    let mut tasks = Vec::new();
    for (t, task) in p.image_tasks.iter().enumerate() {
        let (train, test) = loaded.get(task.dataset.as_str()).ok_or_else(|| {
            StageError::invalid(format!("task {}: no dataset `{}`", t + 1, task.dataset))
        })?;
        for set in [train, test] {
            match shape {
                Some(s) if s != set.sample_shape => {
                    return Err(StageError::failed(format!(
                        "dataset `{}` has samples of shape {:?}, an earlier one {s:?}; every task must have one shape",
                        task.dataset, set.sample_shape
                    )))
                }
                _ => shape = Some(set.sample_shape),
            }
        }
        let n = train.class_names.len();
        let classes: Vec<u16> = match &task.classes {
            TaskClasses::All => (0..n as u16).collect(),
            TaskClasses::List(l) => l.clone(),
        };
        if let Some(&c) = classes.iter().find(|&&c| c as usize >= n) {
            return Err(StageError::failed(format!(
                "task {}: class {c} is out of range; dataset `{}` has {n} classes",
                t + 1,
                task.dataset
            )));
        }
        tasks.push(TaskData {
            train: select_images(train, &classes),
            test: select_images(test, &classes),
            val: None,
            classes,
        });
    }
    finish(ctx, shape.unwrap_or_default().to_vec(), tasks)
}

fn select_images(data: &ImageSet, classes: &[u16]) -> Samples {
    let mut local = vec![
        None;
        data.class_names
            .len()
            .max(1 + *classes.iter().max().unwrap_or(&0) as usize)
    ];
    for (i, &c) in classes.iter().enumerate() {
        local[c as usize] = Some(i as u16);
    }
    let mut x = Vec::new();
    let mut y = Vec::new();
    for (i, &l) in data.labels.iter().enumerate() {
        if let Some(Some(h)) = local.get(l as usize) {
            x.extend_from_slice(data.sample(i));
            y.push(*h);
        }
    }
    Samples { x, y }
}

/// The samples of `s` at `idx`, in that order.
fn subset(s: &Samples, idx: &[usize], dim: usize) -> Samples {
    Samples {
        x: idx
            .iter()
            .flat_map(|&i| &s.x[i * dim..(i + 1) * dim])
            .copied()
            .collect(),
        y: idx.iter().map(|&i| s.y[i]).collect(),
    }
}

/// Per-class shuffled hold-out; both index lists are returned sorted (dataset order).
pub fn stratified_split<L: Ord + Copy + Into<u64>>(
    labels: &[L],
    test_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut by_class: std::collections::BTreeMap<L, Vec<usize>> = Default::default();
    for (i, &y) in labels.iter().enumerate() {
        by_class.entry(y).or_default().push(i);
    }
    let mut train = Vec::new();
    let mut test = Vec::new();
    for (c, mut idx) in by_class {
        let mut rng = super::rng_for(seed, c.into() as usize, "split");
        idx.shuffle(&mut rng);
        let n_test = (idx.len() as f64 * test_fraction).round() as usize;
        test.extend_from_slice(&idx[..n_test]);
        train.extend_from_slice(&idx[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// The fixed pixel permutation of task `t`: output pixel `i` is input pixel `perm[i]`.
pub fn pixel_permutation(seed: u64, t: usize, dim: usize) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..dim).collect();
    perm.shuffle(&mut super::rng_for(seed, t, "pixels"));
    perm
}

fn permute(x: &mut [u8], perm: &[usize]) {
    let dim = perm.len();
    let mut row = vec![0u8; dim];
    for sample in x.chunks_exact_mut(dim) {
        for (o, &i) in row.iter_mut().zip(perm) {
            *o = sample[i];
        }
        sample.copy_from_slice(&row);
    }
}

fn select(data: &LabeledImages, idx: &[usize], classes: &[Label]) -> Samples {
    let mut x = Vec::new();
    let mut y = Vec::new();
    for &i in idx {
        if let Some(local) = classes.iter().position(|&c| c == data.labels[i] as Label) {
            x.extend_from_slice(data.sample(i));
            y.push(local as Label);
        }
    }
    Samples { x, y }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_fixed_per_task_and_bijective() {
        let a = pixel_permutation(3, 1, 784);
        assert_eq!(a, pixel_permutation(3, 1, 784));
        assert_ne!(a, pixel_permutation(3, 2, 784));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..784).collect::<Vec<_>>());
        let mut x: Vec<u8> = (0..8).collect();
        permute(&mut x, &[3, 0, 2, 1]);
        assert_eq!(x, vec![3, 0, 2, 1, 7, 4, 6, 5]);
    }

    #[test]
    fn stratified_split_is_deterministic_disjoint_and_proportional() {
        let labels: Vec<u8> = (0..1000).map(|i| (i % 4) as u8).collect();
        let (tr, te) = stratified_split(&labels, 0.2, 5);
        assert_eq!((tr.len(), te.len()), (800, 200));
        assert_eq!(stratified_split(&labels, 0.2, 5), (tr.clone(), te.clone()));
        assert_ne!(stratified_split(&labels, 0.2, 6).1, te);
        let mut all: Vec<usize> = tr.iter().chain(te.iter()).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        for c in 0..4u8 {
            assert_eq!(te.iter().filter(|&&i| labels[i] == c).count(), 50);
        }
    }
}
