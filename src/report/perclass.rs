//! Per-class results of the final model: each run's confusion matrices (from its last
//! evaluation, `eval.json`), written tidy to `confusion.csv`, and per-class accuracy (the
//! matrix's diagonal over its row) as mean ± std over seeds in `report.md`.
//!
//! Classes are named by their dataset label where the pipeline gives one (IDX tasks list
//! global labels), else by their index within the task.

use super::summary::MeanStd;
use super::RunResult;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The name of class `k` of task `t`.
fn label(labels: &[Vec<u16>], t: usize, k: usize) -> String {
    labels
        .get(t)
        .and_then(|c| c.get(k))
        .map_or_else(|| k.to_string(), u16::to_string)
}

/// The name of the class a column of task `t`'s confusion matrix stands for: the task's own
/// class, or under a class-incremental head (`offset` given) the class of whichever task owns
/// that output.
fn column_label(labels: &[Vec<u16>], t: usize, p: usize, offsets: &[usize]) -> String {
    if offsets.is_empty() {
        return label(labels, t, p);
    }
    let mut start = 0;
    for (j, c) in labels.iter().enumerate() {
        if p < start + c.len() {
            return label(labels, j, p - start);
        }
        start += c.len();
    }
    p.to_string()
}

/// `confusion.csv`: one row per (strategy, variant, seed, task, true class, predicted class)
/// with its count of test samples.
pub fn csv(results: &[RunResult], labels: &[Vec<u16>]) -> String {
    let mut s = String::from("strategy,variant,seed,task,true_class,predicted_class,count\n");
    for r in results {
        let (strategy, variant) = r.strategy.split_once('@').unwrap_or((&r.strategy, ""));
        for (t, m) in r.confusion.iter().flatten().enumerate() {
            for (y, row) in m.iter().enumerate() {
                for (p, n) in row.iter().enumerate() {
                    let _ = writeln!(
                        s,
                        "{},{},{},{},{},{},{n}",
                        super::csv_field(strategy),
                        super::csv_field(variant),
                        r.seed,
                        t + 1,
                        label(labels, t, y),
                        column_label(labels, t, p, &r.class_offset)
                    );
                }
            }
        }
    }
    s
}

/// Per class, the share of its test samples the final model got right: `m[y][o + y] / Σ_p m[y][p]`
/// with `o` the task's class offset (class-incremental heads; 0 otherwise, and where
/// `offsets` is empty). `None` for a class without test samples. Keyed by (task, class).
pub fn per_class(
    confusion: &[Vec<Vec<u64>>],
    offsets: &[usize],
) -> BTreeMap<(usize, usize), Option<f64>> {
    let mut out = BTreeMap::new();
    for (t, m) in confusion.iter().enumerate() {
        let o = offsets.get(t).copied().unwrap_or(0);
        for (y, row) in m.iter().enumerate() {
            let total: u64 = row.iter().sum();
            let hit = row.get(o + y).copied().unwrap_or(0);
            out.insert((t, y), (total > 0).then(|| hit as f64 / total as f64));
        }
    }
    out
}

/// The `report.md` section: per strategy, each class's accuracy after the last task, in
/// percent, mean ± std over the seeds that have it. Empty when no run has a confusion matrix
/// (entries from before evaluate revision 2).
pub fn markdown(results: &[RunResult], labels: &[Vec<u16>]) -> String {
    let mut by_strategy: BTreeMap<&str, BTreeMap<(usize, usize), Vec<f64>>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for r in results {
        let Some(c) = &r.confusion else { continue };
        if !order.contains(&r.strategy.as_str()) {
            order.push(&r.strategy);
        }
        let e = by_strategy.entry(&r.strategy).or_default();
        for (k, v) in per_class(c, &r.class_offset) {
            e.entry(k).or_default().extend(v);
        }
    }
    let classes: Vec<(usize, usize)> = by_strategy
        .values()
        .flat_map(|m| m.keys().copied())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if classes.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n## Per-class accuracy after the last task\n\nEach class's share of its test samples the final model classified right (through its task's head; under `class_incremental` among all the head's outputs, without the task; `confusion.csv` has the full matrices).\n\n| strategy |",
    );
    for &(t, k) in &classes {
        let _ = write!(s, " T{} class {} |", t + 1, label(labels, t, k));
    }
    s.push_str("\n|---|");
    for _ in &classes {
        s.push_str("---|");
    }
    s.push('\n');
    for name in order {
        let m = &by_strategy[name];
        let _ = write!(s, "| {name} |");
        for c in &classes {
            let cell = m
                .get(c)
                .filter(|v| !v.is_empty())
                .map_or("–".to_string(), |v| MeanStd::of(v).fmt(100.0));
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_accuracy_is_the_diagonal_over_the_row() {
        // Task 1: class 0 has 3 right of 4, class 1 has 5 right of 5; task 2: class 0 has no
        // sample, class 1 has 1 right of 3.
        let m = vec![vec![vec![3, 1], vec![0, 5]], vec![vec![0, 0], vec![2, 1]]];
        let got = per_class(&m, &[]);
        assert_eq!(got[&(0, 0)], Some(0.75));
        assert_eq!(got[&(0, 1)], Some(1.0));
        assert_eq!(got[&(1, 0)], None);
        assert_eq!(got[&(1, 1)], Some(1.0 / 3.0));
    }

    #[test]
    fn a_class_incremental_tasks_diagonal_sits_at_its_offset() {
        // Task 2 of a head over four outputs owns outputs 2 and 3: its class 0 has 1 right of
        // 3 (one taken for task 1's class 0), its class 1 has 2 right of 2.
        let m = vec![
            vec![vec![4, 0, 0, 0], vec![0, 4, 0, 0]],
            vec![vec![1, 1, 1, 0], vec![0, 0, 0, 2]],
        ];
        let got = per_class(&m, &[0, 2]);
        assert_eq!(got[&(1, 0)], Some(1.0 / 3.0));
        assert_eq!(got[&(1, 1)], Some(1.0));
        assert_eq!(
            column_label(&[vec![0, 1], vec![2, 3]], 1, 1, &[0, 2]),
            "1",
            "output 1 is task 1's class 1"
        );
    }
}
