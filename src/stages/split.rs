//! `split`: read the dataset files and cut them into per-task train and test sets.
//!
//! Without separate test files the pool is split per class: each class's samples are shuffled
//! with `split_seed` and the first `round(test_fraction · n_c)` go to the test set. The split is
//! therefore deterministic, stratified, and keyed on `split_seed` and `test_fraction`. Labels
//! are stored local to each task's head (the position of the class in its group).

use super::artifacts::{Samples, SplitData, TaskData};
use crate::data::{load_idx_pair, LabeledImages};
use crate::exec::{Artifact, Stage, StageContext, StageError};
use rand::seq::SliceRandom;
use serde::Deserialize;

pub struct Split;

#[derive(Debug, Deserialize)]
struct Params {
    tasks: Vec<Vec<u8>>,
    test_fraction: Option<f64>,
    split_seed: u64,
}

impl Stage for Split {
    fn kind(&self) -> &'static str {
        "split"
    }
    fn version(&self) -> u32 {
        1
    }
    fn run(&self, ctx: &StageContext) -> Result<Artifact, StageError> {
        let p: Params = ctx.params()?;
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
        let tasks = p
            .tasks
            .iter()
            .map(|classes| TaskData {
                classes: classes.clone(),
                train: select(train, &train_idx, classes),
                test: select(test_set, &test_idx, classes),
            })
            .collect::<Vec<_>>();
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
            sample_shape: pool.sample_shape.clone(),
            tasks,
        }
        .to_artifact(&mut art);
        Ok(art)
    }
}

/// Per-class shuffled hold-out; both index lists are returned sorted (dataset order).
pub fn stratified_split(labels: &[u8], test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut by_class: std::collections::BTreeMap<u8, Vec<usize>> = Default::default();
    for (i, &y) in labels.iter().enumerate() {
        by_class.entry(y).or_default().push(i);
    }
    let mut train = Vec::new();
    let mut test = Vec::new();
    for (c, mut idx) in by_class {
        let mut rng = super::rng_for(seed, c as usize, "split");
        idx.shuffle(&mut rng);
        let n_test = (idx.len() as f64 * test_fraction).round() as usize;
        test.extend_from_slice(&idx[..n_test]);
        train.extend_from_slice(&idx[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

fn select(data: &LabeledImages, idx: &[usize], classes: &[u8]) -> Samples {
    let mut x = Vec::new();
    let mut y = Vec::new();
    for &i in idx {
        if let Some(local) = classes.iter().position(|&c| c == data.labels[i]) {
            x.extend_from_slice(data.sample(i));
            y.push(local as u8);
        }
    }
    Samples { x, y }
}

#[cfg(test)]
mod tests {
    use super::*;

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
