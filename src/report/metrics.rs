//! Continual-learning metrics computed from an accuracy matrix.
//!
//! `A[i][j]` is the test accuracy on task `j` after training task `i` (0-based, `j ≤ i`), in
//! [0, 1]. With `T` tasks and final row `A[T-1]`:
//!
//! - mean accuracy after task i: `ACC_i = (1/(i+1)) Σ_{j≤i} A[i][j]`
//! - average forgetting, FACIL definition (max over earlier accuracies minus final):
//!   `F_max = (1/(T-1)) Σ_{j<T-1} (max_{j≤i<T-1} A[i][j] − A[T-1][j])`
//! - average forgetting, Avalanche definition (accuracy right after learning minus final):
//!   `F_first = (1/(T-1)) Σ_{j<T-1} (A[j][j] − A[T-1][j])`
//! - backward transfer (Lopez-Paz & Ranzato 2017): `BWT = (1/(T-1)) Σ_{j<T-1} (A[T-1][j] − A[j][j])`
//!   (so `BWT = −F_first`)
//!
//! - forward transfer, against each task trained alone from a fresh start (`evaluation.
//!   forward_transfer`; `B[j]` the accuracy on task `j` of a model trained on task `j` only):
//!   `FWT = (1/(T-1)) Σ_{0<j≤T-1} (A[j][j] − B[j])`, how much learning the earlier tasks first
//!   helped (> 0) or hurt (< 0) learning task `j`. Lopez-Paz & Ranzato compare `A[j-1][j]`
//!   with a random model's accuracy instead; with a head per task `A[j-1][j]` would be an
//!   untrained head's, so the reference here is the one the issue asks for, trained alone.
//!
//! With a single task the forgetting and BWT averages are empty and reported as 0.

use serde::Serialize;

/// Lower-triangular accuracy matrix; row `i` has `i + 1` entries.
pub type AccMatrix = Vec<Vec<f64>>;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    pub mean_accuracy: Vec<f64>,
    pub forgetting_max: f64,
    pub forgetting_first: f64,
    pub backward_transfer: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    #[error("accuracy matrix is empty")]
    Empty,
    #[error("row {row} has {found} entries, expected {expected}")]
    Ragged {
        row: usize,
        found: usize,
        expected: usize,
    },
}

pub fn check(a: &AccMatrix) -> Result<(), MetricsError> {
    if a.is_empty() {
        return Err(MetricsError::Empty);
    }
    for (i, row) in a.iter().enumerate() {
        if row.len() != i + 1 {
            return Err(MetricsError::Ragged {
                row: i,
                found: row.len(),
                expected: i + 1,
            });
        }
    }
    Ok(())
}

pub fn mean_accuracy(a: &AccMatrix) -> Vec<f64> {
    a.iter()
        .map(|row| row.iter().sum::<f64>() / row.len() as f64)
        .collect()
}

fn over_old_tasks(a: &AccMatrix, f: impl Fn(usize) -> f64) -> f64 {
    let t = a.len();
    if t < 2 {
        return 0.0;
    }
    (0..t - 1).map(f).sum::<f64>() / (t - 1) as f64
}

pub fn forgetting_max(a: &AccMatrix) -> f64 {
    let last = a.len() - 1;
    over_old_tasks(a, |j| {
        let best = (j..last).map(|i| a[i][j]).fold(f64::NEG_INFINITY, f64::max);
        best - a[last][j]
    })
}

pub fn forgetting_first(a: &AccMatrix) -> f64 {
    let last = a.len() - 1;
    over_old_tasks(a, |j| a[j][j] - a[last][j])
}

pub fn backward_transfer(a: &AccMatrix) -> f64 {
    let last = a.len() - 1;
    over_old_tasks(a, |j| a[last][j] - a[j][j])
}

/// Forward transfer against `alone[j]`, each task's accuracy trained alone (index 0 unused).
pub fn forward_transfer(a: &AccMatrix, alone: &[f64]) -> f64 {
    let t = a.len();
    if t < 2 {
        return 0.0;
    }
    (1..t).map(|j| a[j][j] - alone[j]).sum::<f64>() / (t - 1) as f64
}

pub fn compute(a: &AccMatrix) -> Result<Metrics, MetricsError> {
    check(a)?;
    Ok(Metrics {
        mean_accuracy: mean_accuracy(a),
        forgetting_max: forgetting_max(a),
        forgetting_first: forgetting_first(a),
        backward_transfer: backward_transfer(a),
    })
}

/// Mean and sample standard deviation (n − 1); std is 0 for a single value.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-made 3-task matrix with known answers.
    fn m() -> AccMatrix {
        vec![vec![0.9], vec![0.6, 0.8], vec![0.7, 0.5, 1.0]]
    }

    #[test]
    fn forward_transfer_on_a_hand_made_table() {
        // A[1][1] = 0.8 against 0.7 alone (+0.1), A[2][2] = 1.0 against 0.9 alone (+0.1)... and
        // a task that did worse in sequence: 0.75 alone for task 2 gives (0.1 + 0.25) / 2.
        let fwt = forward_transfer(&m(), &[0.0, 0.7, 0.75]);
        assert!((fwt - 0.175).abs() < 1e-12, "{fwt}");
        let hurt = forward_transfer(&m(), &[0.0, 0.9, 1.0]);
        assert!((hurt - -0.05).abs() < 1e-12, "{hurt}");
        assert_eq!(forward_transfer(&vec![vec![0.9]], &[0.5]), 0.0);
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn mean_accuracy_per_row() {
        let r = mean_accuracy(&m());
        assert!(close(r[0], 0.9) && close(r[1], 0.7) && close(r[2], 2.2 / 3.0));
    }

    #[test]
    fn forgetting_definitions_differ_when_accuracy_recovers() {
        // Task 0: max earlier 0.9, first 0.9, final 0.7 → 0.2 both ways.
        // Task 1: max earlier 0.8 (only A[1][1]), final 0.5 → 0.3 both.
        assert!(close(forgetting_max(&m()), 0.25));
        assert!(close(forgetting_first(&m()), 0.25));
        // Make task 0 peak later (0.95 after task 1): FACIL uses the peak, Avalanche the first.
        let a = vec![vec![0.9], vec![0.95, 0.8], vec![0.7, 0.5, 1.0]];
        assert!(close(forgetting_max(&a), (0.25 + 0.3) / 2.0));
        assert!(close(forgetting_first(&a), (0.2 + 0.3) / 2.0));
    }

    #[test]
    fn bwt_is_minus_first_forgetting() {
        assert!(close(backward_transfer(&m()), -0.25));
        let a = vec![vec![0.5], vec![0.9, 0.7]];
        assert!(close(backward_transfer(&a), 0.4));
    }

    #[test]
    fn single_task_and_bad_shapes() {
        let c = compute(&vec![vec![0.5]]).unwrap();
        assert_eq!((c.forgetting_max, c.backward_transfer), (0.0, 0.0));
        assert_eq!(compute(&vec![]), Err(MetricsError::Empty));
        assert_eq!(
            compute(&vec![vec![0.5], vec![0.5]]),
            Err(MetricsError::Ragged {
                row: 1,
                found: 1,
                expected: 2
            })
        );
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert!(close(m, 2.5));
        assert!(close(s, (5.0f64 / 3.0).sqrt()));
        assert_eq!(mean_std(&[7.0]), (7.0, 0.0));
    }
}
