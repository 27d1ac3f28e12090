//! Aggregation of per-seed results into mean ± std per strategy (sample std, n − 1).

use super::metrics::{self, mean_std};
use super::RunResult;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl MeanStd {
    pub fn of(v: &[f64]) -> MeanStd {
        let (mean, std) = mean_std(v);
        MeanStd {
            mean,
            std,
            n: v.len(),
        }
    }
    /// `97.35 ± 0.41`, values scaled by `scale` (100 for percent).
    pub fn fmt(&self, scale: f64) -> String {
        if self.n == 0 || self.mean.is_nan() {
            return "–".into();
        }
        if self.n == 1 {
            return format!("{:.2}", self.mean * scale);
        }
        format!("{:.2} ± {:.2}", self.mean * scale, self.std * scale)
    }
}

/// One strategy over all its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct StrategySummary {
    pub strategy: String,
    pub joint: bool,
    pub seeds: Vec<u64>,
    pub tasks: usize,
    /// `accuracy[i][j]` over seeds (rows of a joint strategy other than the last are empty).
    pub accuracy: Vec<Vec<MeanStd>>,
    /// Mean accuracy over tasks seen, after each task.
    pub mean_accuracy: Vec<Option<MeanStd>>,
    pub final_mean_accuracy: MeanStd,
    pub final_task1_accuracy: MeanStd,
    /// Class-incremental only: the final mean accuracy when each task is told (the argmax
    /// over its own outputs); `final_mean_accuracy` is without the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_task_aware_accuracy: Option<MeanStd>,
    /// `None` for joint training, where forgetting is undefined.
    pub forgetting_max: Option<MeanStd>,
    pub forgetting_first: Option<MeanStd>,
    pub backward_transfer: Option<MeanStd>,
    /// Against each task trained alone (`evaluation.forward_transfer`); `None` without it and
    /// for joint training.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_transfer: Option<MeanStd>,
    pub free_capacity: Vec<MeanStd>,
    /// Pruning-search evaluations after each task (empty for strategies that do not prune).
    pub prune_evaluations: Vec<MeanStd>,
}

/// Summaries of the complete runs, one per strategy, in pipeline order.
pub fn summarize(results: &[RunResult]) -> Vec<StrategySummary> {
    let mut names: Vec<&str> = Vec::new();
    for r in results {
        if !names.contains(&r.strategy.as_str()) {
            names.push(&r.strategy);
        }
    }
    names
        .into_iter()
        .filter_map(|name| summarize_one(name, results))
        .collect()
}

fn summarize_one(name: &str, results: &[RunResult]) -> Option<StrategySummary> {
    let runs: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.strategy == name && r.complete())
        .collect();
    let first = runs.first()?;
    let tasks = first.accuracy.len();
    let joint = first.joint;
    let cell = |i: usize, j: usize| -> Vec<f64> {
        runs.iter()
            .filter_map(|r| r.accuracy[i].as_ref().and_then(|row| row.get(j)).copied())
            .collect()
    };
    let accuracy: Vec<Vec<MeanStd>> = (0..tasks)
        .map(|i| {
            let width = if joint { tasks } else { i + 1 };
            if joint && i + 1 < tasks {
                return vec![];
            }
            (0..width).map(|j| MeanStd::of(&cell(i, j))).collect()
        })
        .collect();
    let last = tasks - 1;
    let final_row = |r: &RunResult| r.accuracy[last].clone().unwrap_or_default();
    let per_run = |f: &dyn Fn(&metrics::AccMatrix) -> f64| -> Option<MeanStd> {
        if joint {
            return None;
        }
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.accuracy.iter().cloned().collect::<Option<Vec<_>>>())
            .map(|m| f(&m))
            .collect();
        Some(MeanStd::of(&v))
    };
    let mean_accuracy = (0..tasks)
        .map(|i| {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.accuracy[i].as_ref())
                .map(|row| row.iter().sum::<f64>() / row.len() as f64)
                .collect();
            (!v.is_empty()).then(|| MeanStd::of(&v))
        })
        .collect();
    let finals: Vec<f64> = runs
        .iter()
        .map(|r| r.final_mean_accuracy().unwrap_or(0.0))
        .collect();
    let task1: Vec<f64> = runs
        .iter()
        .filter_map(|r| final_row(r).first().copied())
        .collect();
    let free_capacity = (0..tasks)
        .map(|i| {
            MeanStd::of(
                &runs
                    .iter()
                    .filter_map(|r| r.free_capacity.get(i).copied().flatten())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let prune_evaluations = (0..tasks)
        .map(|i| {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.prune.get(i).cloned().flatten())
                .map(|p| p.evaluations as f64)
                .collect();
            MeanStd::of(&v)
        })
        .filter(|m| m.n > 0)
        .collect();
    let fwt: Vec<f64> = runs
        .iter()
        .filter(|r| !joint && r.alone.len() == tasks && tasks > 1)
        .filter_map(|r| {
            let a = r.accuracy.iter().cloned().collect::<Option<Vec<_>>>()?;
            let alone: Vec<f64> = r.alone.iter().map(|v| v.unwrap_or(0.0)).collect();
            r.alone[1..]
                .iter()
                .all(Option::is_some)
                .then(|| metrics::forward_transfer(&a, &alone))
        })
        .collect();
    let forward_transfer = (!fwt.is_empty()).then(|| MeanStd::of(&fwt));
    let aware: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.task_aware.as_ref().filter(|v| !v.is_empty()))
        .map(|v| v.iter().sum::<f64>() / v.len() as f64)
        .collect();
    Some(StrategySummary {
        strategy: name.to_string(),
        joint,
        seeds: runs.iter().map(|r| r.seed).collect(),
        tasks,
        accuracy,
        mean_accuracy,
        final_mean_accuracy: MeanStd::of(&finals),
        final_task1_accuracy: MeanStd::of(&task1),
        final_task_aware_accuracy: (!aware.is_empty()).then(|| MeanStd::of(&aware)),
        forgetting_max: per_run(&metrics::forgetting_max),
        forgetting_first: per_run(&metrics::forgetting_first),
        backward_transfer: per_run(&metrics::backward_transfer),
        forward_transfer,
        free_capacity,
        prune_evaluations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64, a: Vec<Vec<f64>>) -> RunResult {
        RunResult {
            strategy: "s".into(),
            seed,
            free_capacity: vec![Some(1.0); a.len()],
            prune: vec![None; a.len()],
            correlate: vec![],
            curves: vec![],
            accuracy: a.into_iter().map(Some).collect(),
            missing: vec![],
            final_mask: true,
            joint: false,
            confusion: None,
            class_offset: vec![],
            task_aware: None,
            alone: vec![],
        }
    }

    #[test]
    fn mean_and_std_over_seeds() {
        let s = summarize(&[
            run(0, vec![vec![0.9], vec![0.7, 0.8]]),
            run(1, vec![vec![0.7], vec![0.5, 0.6]]),
        ]);
        let s = &s[0];
        assert_eq!(s.seeds, vec![0, 1]);
        assert!((s.final_mean_accuracy.mean - 0.65).abs() < 1e-12);
        assert!((s.final_mean_accuracy.std - (0.02f64).sqrt()).abs() < 1e-12);
        assert!((s.final_task1_accuracy.mean - 0.6).abs() < 1e-12);
        // Forgetting per seed: 0.2 and 0.2.
        let f = s.forgetting_max.unwrap();
        assert!((f.mean - 0.2).abs() < 1e-12 && f.std.abs() < 1e-12);
        assert_eq!(s.accuracy[1].len(), 2);
        assert_eq!(MeanStd::of(&[0.5]).fmt(100.0), "50.00");
    }

    #[test]
    fn incomplete_runs_are_left_out() {
        let mut r = run(0, vec![vec![0.9], vec![0.7, 0.8]]);
        r.missing.push("x".into());
        assert!(summarize(&[r]).is_empty());
    }
}
