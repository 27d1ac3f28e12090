//! Class-balanced resampling for imbalanced training sets (the Adience protocol, paper A.5).
//!
//! [`resample_indices`] draws `n` sample indices with replacement in two steps: a class from a
//! multinomial over classes with the given probabilities ([`ClassWeights::Uniform`] for a
//! balanced stream), then a sample of that class uniformly. Rare classes are thereby
//! oversampled and frequent ones undersampled. The draw is a pure function of the labels, the
//! weights, `n` and `seed` (ChaCha8), so a training stage that resamples per epoch with
//! `seed + epoch` stays bit-reproducible.

use rand::distributions::{Distribution, WeightedIndex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Class probabilities of the multinomial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeights {
    /// Every class that has at least one sample is equally likely.
    Uniform,
    /// Relative weight of class `i` at index `i` (normalised here; need not sum to 1). A
    /// positive weight for a class without samples is an error.
    Given(Vec<f64>),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResampleError {
    #[error("no samples to draw from")]
    Empty,
    #[error("class {class} has weight {weight} but no samples")]
    EmptyClass { class: usize, weight: f64 },
    #[error("label {label} has no weight ({classes} weights given)")]
    Unweighted { label: u16, classes: usize },
    #[error("class weights must be finite and >= 0 with a positive sum, found {0:?}")]
    Weights(Vec<f64>),
}

/// `n` indices into `labels`, classes drawn by `weights`, samples uniformly within a class.
pub fn resample_indices(
    labels: &[u16],
    weights: &ClassWeights,
    n: usize,
    seed: u64,
) -> Result<Vec<usize>, ResampleError> {
    if labels.is_empty() {
        return Err(ResampleError::Empty);
    }
    let classes = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
    let classes = match weights {
        ClassWeights::Given(w) => {
            if let Some(&label) = labels.iter().find(|&&l| l as usize >= w.len()) {
                return Err(ResampleError::Unweighted {
                    label,
                    classes: w.len(),
                });
            }
            w.len()
        }
        ClassWeights::Uniform => classes,
    };
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        members[l as usize].push(i);
    }
    let w: Vec<f64> = match weights {
        ClassWeights::Uniform => members
            .iter()
            .map(|m| if m.is_empty() { 0.0 } else { 1.0 })
            .collect(),
        ClassWeights::Given(w) => {
            if w.iter().any(|x| !x.is_finite() || *x < 0.0) || w.iter().sum::<f64>() <= 0.0 {
                return Err(ResampleError::Weights(w.clone()));
            }
            if let Some(class) = (0..classes).find(|&c| w[c] > 0.0 && members[c].is_empty()) {
                return Err(ResampleError::EmptyClass {
                    class,
                    weight: w[class],
                });
            }
            w.clone()
        }
    };
    let pick_class = WeightedIndex::new(&w).map_err(|_| ResampleError::Weights(w.clone()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Ok((0..n)
        .map(|_| {
            let m = &members[pick_class.sample(&mut rng)];
            m[rng.gen_range(0..m.len())]
        })
        .collect())
}

/// Class probabilities proportional to `counts` (the empirical distribution), for weighting
/// schemes built on it.
pub fn empirical(labels: &[u16], classes: usize) -> Vec<f64> {
    let mut counts = vec![0f64; classes];
    for &l in labels {
        if let Some(c) = counts.get_mut(l as usize) {
            *c += 1.0;
        }
    }
    let total: f64 = counts.iter().sum();
    if total > 0.0 {
        counts.iter_mut().for_each(|c| *c /= total);
    }
    counts
}
