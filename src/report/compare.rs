//! `cfpipe compare`: an experiment table, one row per strategy (and sweep variant) of one or
//! more pipelines, read from the cache alone. Every figure is the one `report` prints for the
//! same cache (both come from [`super::summary::summarize`]); a row adds what sets it apart
//! (its sweep values, the pipeline-wide settings that differ between compared files, and the
//! settings of its strategy that differ from the same strategy's in another compared file),
//! its compute time, and against a baseline strategy the per-seed differences with a paired
//! test.
//!
//! The paired test is honest about small samples: it prints `n`, the two-sided p of Student's
//! paired t-test (which assumes normal differences) and the exact p of the sign-flip
//! permutation test (which assumes only that the seeds are exchangeable, and cannot go below
//! `2 / 2ⁿ`: 0.0625 with five seeds), and no p at all for fewer than two common seeds.

use super::summary::{MeanStd, StrategySummary};
use super::{csv_field, RunResult};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// What one pipeline contributes to a comparison.
pub struct Input<'a> {
    /// The pipeline's name (told apart when several are compared).
    pub label: String,
    pub results: &'a [RunResult],
    pub summaries: &'a [StrategySummary],
    /// Per strategy, its sweep point (see `Strategy::point`).
    pub points: BTreeMap<String, Vec<(String, String)>>,
    /// Per strategy, the summed wall time of every cached stage its results depend on.
    pub compute_s: BTreeMap<String, f64>,
    /// The pipeline-wide settings, flattened (`spec::settings`).
    pub settings: BTreeMap<String, String>,
    /// Per strategy (variant name, as in `summaries`), its own settings.
    pub strategy_settings: BTreeMap<String, OwnSettings>,
}

/// A strategy variant's own settings, for telling apart strategies of one name in different
/// pipelines.
#[derive(Debug, Clone, Default)]
pub struct OwnSettings {
    /// The name the pipeline file gives the strategy (`rnf` for the variant
    /// `rnf@threshold=0.05`): rows are compared across pipelines by this name.
    pub strategy: String,
    /// Flattened under the key `--set` takes (`strategies.rnf.prune.threshold` → `0.05`), with
    /// `extends:` and merge keys resolved and this variant's sweep values applied
    /// (`spec::strategy_settings`).
    pub settings: BTreeMap<String, String>,
}

/// Per strategy name, its settings that differ between compared pipelines that both have it.
///
/// A key differs when the values a pipeline's variants of the strategy take are not the same
/// set in every pipeline: unswept, that is one value against another; a key both pipelines
/// sweep over the same values is already the sweep's column. A strategy in only one pipeline
/// has nothing to differ from.
fn differing_strategy_settings(inputs: &[Input]) -> BTreeMap<String, Vec<String>> {
    type Values<'a> = BTreeSet<Option<&'a String>>;
    /// Input index → that input's variants' settings.
    type PerInput<'a> = BTreeMap<usize, Vec<&'a BTreeMap<String, String>>>;
    let mut by_name: BTreeMap<&str, PerInput> = BTreeMap::new();
    for (n, i) in inputs.iter().enumerate() {
        for own in i.strategy_settings.values() {
            by_name
                .entry(own.strategy.as_str())
                .or_default()
                .entry(n)
                .or_default()
                .push(&own.settings);
        }
    }
    let mut out = BTreeMap::new();
    for (name, per_input) in by_name {
        if per_input.len() < 2 {
            continue;
        }
        let keys: BTreeSet<&String> = per_input
            .values()
            .flatten()
            .flat_map(|s| s.keys())
            .collect();
        let differ: Vec<String> = keys
            .into_iter()
            .filter(|k| {
                let sets: Vec<Values> = per_input
                    .values()
                    .map(|variants| variants.iter().map(|s| s.get(*k)).collect())
                    .collect();
                sets.iter().any(|s| *s != sets[0])
            })
            .cloned()
            .collect();
        if !differ.is_empty() {
            out.insert(name.to_string(), differ);
        }
    }
    out
}

/// A metric rows can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    FinalAccuracy,
    Task1Accuracy,
    Forgetting,
    Bwt,
    FreeCapacity,
    Compute,
}

impl Metric {
    /// The row's value, and whether larger is better.
    fn of(self, r: &Row) -> (Option<f64>, bool) {
        let m = |x: Option<&MeanStd>| x.map(|m| m.mean).filter(|v| !v.is_nan());
        match self {
            Metric::FinalAccuracy => (m(Some(&r.final_accuracy)), true),
            Metric::Task1Accuracy => (m(Some(&r.task1_accuracy)), true),
            Metric::Forgetting => (m(r.forgetting.as_ref()), false),
            Metric::Bwt => (m(r.bwt.as_ref()), true),
            Metric::FreeCapacity => (m(r.free_capacity.as_ref()), true),
            Metric::Compute => (Some(r.compute_s), false),
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub pipeline: String,
    pub strategy: String,
    /// The parameters that set this row apart: sweep values, pipeline-wide settings that
    /// differ between the compared pipelines, and the strategy's own settings that differ from
    /// the same strategy's in another compared pipeline (under their full `--set` key).
    pub params: BTreeMap<String, String>,
    pub seeds: Vec<u64>,
    /// Mean accuracy over all tasks after the last one.
    pub final_accuracy: MeanStd,
    /// Task 1's accuracy after the last task.
    pub task1_accuracy: MeanStd,
    /// Class-incremental only: the final mean accuracy when each task is told.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_aware_accuracy: Option<MeanStd>,
    /// Average over old tasks of the largest drop from an earlier accuracy (`None` for joint
    /// training).
    pub forgetting: Option<MeanStd>,
    pub bwt: Option<MeanStd>,
    /// Free capacity after the last task (`None` where the strategy never computes it).
    pub free_capacity: Option<MeanStd>,
    /// Summed wall time in seconds of every stage the row's results depend on (a stage shared
    /// by several rows counts in each).
    pub compute_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_baseline: Option<Paired>,
}

/// A row against the baseline, over the seeds both have.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Paired {
    pub baseline: String,
    /// Seeds both rows have.
    pub n: usize,
    /// Per-seed difference of final accuracy (row − baseline).
    pub delta: MeanStd,
    /// Student's paired t statistic and two-sided p (`None` for n < 2 or zero spread).
    pub t: Option<f64>,
    pub p_t: Option<f64>,
    /// Exact two-sided p of the sign-flip permutation test (`None` for n < 2).
    pub p_exact: Option<f64>,
}

/// Each seed's final accuracy (mean over tasks after the last) of `strategy`.
fn per_seed(results: &[RunResult], strategy: &str) -> BTreeMap<u64, f64> {
    results
        .iter()
        .filter(|r| r.strategy == strategy && r.complete())
        .filter_map(|r| Some((r.seed, r.final_mean_accuracy()?)))
        .collect()
}

/// Student's paired t-test and the exact sign-flip test on differences `d`.
fn paired(d: &[f64]) -> (Option<f64>, Option<f64>, Option<f64>) {
    let n = d.len();
    if n < 2 {
        return (None, None, None);
    }
    let ms = MeanStd::of(d);
    let (t, p_t) = if ms.std > 0.0 {
        use statrs::distribution::{ContinuousCDF, StudentsT};
        let t = ms.mean / (ms.std / (n as f64).sqrt());
        let dist = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("n >= 2 degrees of freedom");
        (Some(t), Some((2.0 * (1.0 - dist.cdf(t.abs()))).min(1.0)))
    } else {
        (None, None)
    };
    // All 2ⁿ sign assignments (n is a seed count, so small); ties count as extreme.
    let observed = d.iter().sum::<f64>().abs();
    let total = 1u64 << n.min(30);
    let extreme = (0..total)
        .filter(|mask| {
            let s: f64 = d
                .iter()
                .enumerate()
                .map(|(i, v)| if mask >> i & 1 == 1 { -v } else { *v })
                .sum();
            s.abs() >= observed - 1e-12
        })
        .count();
    (t, p_t, Some(extreme as f64 / total as f64))
}

/// The table's rows, in pipeline and strategy order; strategies with no complete run are
/// left out (the caller names what is missing).
pub fn rows(inputs: &[Input], baseline: Option<&str>) -> Result<Vec<Row>, String> {
    // Settings that differ between the compared pipelines.
    let mut differing: Vec<&String> = Vec::new();
    if inputs.len() > 1 {
        let keys: BTreeSet<&String> = inputs.iter().flat_map(|i| i.settings.keys()).collect();
        differing = keys
            .into_iter()
            .filter(|k| {
                let first = inputs[0].settings.get(*k);
                inputs.iter().any(|i| i.settings.get(*k) != first)
            })
            .collect();
    }
    // Keyed `strategies.rnf.prune.threshold` rather than `prune.threshold`: it is what
    // `--set` and `--sweep` take, so a row can be reproduced from its header, and it cannot be
    // mistaken for a pipeline-wide setting or for another strategy's (rnf's and rnf05's
    // thresholds are separate columns, each blank in the other's rows).
    let strategy_differing = differing_strategy_settings(inputs);
    let base = match baseline {
        None => None,
        Some(b) => {
            let (pl, st) = match b.split_once(':') {
                Some((p, s)) => (Some(p), s),
                None => (None, b),
            };
            let found = inputs
                .iter()
                .filter(|i| pl.is_none_or(|p| p == i.label))
                .find(|i| i.summaries.iter().any(|s| s.strategy == st));
            match found {
                Some(i) => Some((i.label.clone(), st.to_string(), per_seed(i.results, st))),
                None => {
                    let names: Vec<String> = inputs
                        .iter()
                        .flat_map(|i| i.summaries.iter().map(|s| s.strategy.clone()))
                        .collect();
                    return Err(format!(
                        "--baseline {b}: no strategy of that name with results (compared: {})",
                        names.join(", ")
                    ));
                }
            }
        }
    };
    let mut out = Vec::new();
    for i in inputs {
        for s in i.summaries {
            let mut params: BTreeMap<String, String> = i
                .points
                .get(&s.strategy)
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            for k in &differing {
                let v = i.settings.get(*k).cloned().unwrap_or_else(|| "–".into());
                params.insert((*k).clone(), v);
            }
            if let Some(own) = i.strategy_settings.get(&s.strategy) {
                for k in strategy_differing.get(&own.strategy).into_iter().flatten() {
                    let v = own.settings.get(k).cloned().unwrap_or_else(|| "–".into());
                    params.insert(k.clone(), v);
                }
            }
            let vs_baseline = base.as_ref().and_then(|(bl, bs, bseeds)| {
                if *bl == i.label && *bs == s.strategy {
                    return None;
                }
                let mine = per_seed(i.results, &s.strategy);
                let d: Vec<f64> = mine
                    .iter()
                    .filter_map(|(seed, v)| bseeds.get(seed).map(|b| v - b))
                    .collect();
                let (t, p_t, p_exact) = paired(&d);
                Some(Paired {
                    baseline: if inputs.len() > 1 {
                        format!("{bl}:{bs}")
                    } else {
                        bs.clone()
                    },
                    n: d.len(),
                    delta: MeanStd::of(&d),
                    t,
                    p_t,
                    p_exact,
                })
            });
            let last = s.free_capacity.last().filter(|m| m.n > 0).copied();
            out.push(Row {
                pipeline: i.label.clone(),
                strategy: s.strategy.clone(),
                params,
                seeds: s.seeds.clone(),
                final_accuracy: s.final_mean_accuracy,
                task1_accuracy: s.final_task1_accuracy,
                task_aware_accuracy: s.final_task_aware_accuracy,
                forgetting: s.forgetting_max,
                bwt: s.backward_transfer,
                free_capacity: last,
                compute_s: i.compute_s.get(&s.strategy).copied().unwrap_or(0.0),
                vs_baseline,
            });
        }
    }
    Ok(out)
}

/// Sort rows best first by `metric` (rows without a value last, ties in table order).
pub fn sort(rows: &mut [Row], metric: Metric) {
    rows.sort_by(|a, b| {
        let ((va, hi), (vb, _)) = (metric.of(a), metric.of(b));
        match (va, vb) {
            (Some(x), Some(y)) if hi => y.total_cmp(&x),
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
    });
}

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Csv,
    Json,
}

fn pct(m: Option<&MeanStd>) -> String {
    m.map_or("–".into(), |m| m.fmt(100.0))
}

fn p_value(p: Option<f64>) -> String {
    match p {
        None => "–".into(),
        Some(p) if p < 0.001 => "<0.001".into(),
        Some(p) => format!("{p:.3}"),
    }
}

/// Every row's parameter names, in first-seen order: the table's parameter columns.
fn param_keys(rows: &[Row]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for k in rows.iter().flat_map(|r| r.params.keys()) {
        if !v.contains(k) {
            v.push(k.clone());
        }
    }
    v
}

/// The columns of the table, header and cells as text.
fn columns(rows: &[Row]) -> (Vec<String>, Vec<Vec<String>>) {
    let several = rows
        .iter()
        .any(|r| r.pipeline != rows.first().map_or("", |f| f.pipeline.as_str()));
    let params = param_keys(rows);
    let baseline = rows.iter().any(|r| r.vs_baseline.is_some());
    // Class-incremental rows: the accuracy told the task, beside the final one without it.
    let aware = rows.iter().any(|r| r.task_aware_accuracy.is_some());
    let mut head: Vec<String> = Vec::new();
    if several {
        head.push("pipeline".into());
    }
    head.push("strategy".into());
    head.extend(params.iter().cloned());
    head.extend(["seeds", "final acc %"].map(String::from));
    if aware {
        head.push("told task %".into());
    }
    head.extend(
        [
            "task-1 acc %",
            "forgetting %",
            "BWT %",
            "free %",
            "compute s",
        ]
        .map(String::from),
    );
    if baseline {
        head.extend(["Δ final acc %", "n", "p (t)", "p (exact)"].map(String::from));
    }
    let cells = rows
        .iter()
        .map(|r| {
            let mut c = Vec::new();
            if several {
                c.push(r.pipeline.clone());
            }
            c.push(r.strategy.clone());
            for k in &params {
                c.push(r.params.get(k).cloned().unwrap_or_else(|| "–".into()));
            }
            c.push(r.seeds.len().to_string());
            c.push(pct(Some(&r.final_accuracy)));
            if aware {
                c.push(pct(r.task_aware_accuracy.as_ref()));
            }
            c.push(pct(Some(&r.task1_accuracy)));
            c.push(pct(r.forgetting.as_ref()));
            c.push(pct(r.bwt.as_ref()));
            c.push(pct(r.free_capacity.as_ref()));
            c.push(format!("{:.1}", r.compute_s));
            if baseline {
                match &r.vs_baseline {
                    None => c.extend(["baseline", "", "", ""].map(String::from)),
                    Some(b) => {
                        c.push(b.delta.fmt(100.0));
                        c.push(b.n.to_string());
                        c.push(p_value(b.p_t));
                        c.push(p_value(b.p_exact));
                    }
                }
            }
            c
        })
        .collect();
    (head, cells)
}

/// The table in `format`.
pub fn render(rows: &[Row], format: Format) -> String {
    let mut s = String::new();
    match format {
        Format::Json => {
            s = serde_json::to_string_pretty(rows).expect("plain data");
            s.push('\n');
        }
        Format::Csv => {
            // Tidy: means and standard deviations in their own columns, fractions not percent.
            let params = param_keys(rows);
            let mut head = vec!["pipeline".to_string(), "strategy".to_string()];
            head.extend(params.iter().cloned());
            head.push("seeds".into());
            for m in [
                "final_accuracy",
                "task1_accuracy",
                "forgetting",
                "bwt",
                "free_capacity",
            ] {
                head.push(format!("{m}_mean"));
                head.push(format!("{m}_std"));
            }
            head.extend(
                [
                    "compute_s",
                    "baseline",
                    "delta_mean",
                    "delta_std",
                    "n",
                    "t",
                    "p_t",
                    "p_exact",
                ]
                .map(String::from),
            );
            let _ = writeln!(
                s,
                "{}",
                head.iter()
                    .map(|h| csv_field(h))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let num = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
            for r in rows {
                let mut c = vec![r.pipeline.clone(), r.strategy.clone()];
                for k in &params {
                    c.push(r.params.get(k).cloned().unwrap_or_default());
                }
                c.push(
                    r.seeds
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                );
                for m in [
                    Some(&r.final_accuracy),
                    Some(&r.task1_accuracy),
                    r.forgetting.as_ref(),
                    r.bwt.as_ref(),
                    r.free_capacity.as_ref(),
                ] {
                    c.push(num(m.map(|m| m.mean)));
                    c.push(num(m.map(|m| m.std)));
                }
                c.push(r.compute_s.to_string());
                match &r.vs_baseline {
                    None => c.extend(std::iter::repeat_n(String::new(), 7)),
                    Some(b) => {
                        c.push(b.baseline.clone());
                        c.push(b.delta.mean.to_string());
                        c.push(b.delta.std.to_string());
                        c.push(b.n.to_string());
                        c.push(num(b.t));
                        c.push(num(b.p_t));
                        c.push(num(b.p_exact));
                    }
                }
                let _ = writeln!(
                    s,
                    "{}",
                    c.iter().map(|x| csv_field(x)).collect::<Vec<_>>().join(",")
                );
            }
        }
        Format::Markdown => {
            let (head, cells) = columns(rows);
            let _ = writeln!(s, "| {} |", head.join(" | "));
            let _ = writeln!(s, "|{}", "---|".repeat(head.len()));
            for c in cells {
                let _ = writeln!(s, "| {} |", c.join(" | "));
            }
            s.push_str(NOTE);
        }
        Format::Text => {
            let (head, cells) = columns(rows);
            let width: Vec<usize> = (0..head.len())
                .map(|j| {
                    cells
                        .iter()
                        .map(|c| c[j].chars().count())
                        .chain(std::iter::once(head[j].chars().count()))
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |c: &[String]| {
                c.iter()
                    .enumerate()
                    .map(|(j, x)| {
                        let pad = width[j] - x.chars().count();
                        // Names left, numbers right.
                        if j == 0 || x.parse::<f64>().is_err() && !x.contains('±') {
                            format!("{x}{}", " ".repeat(pad))
                        } else {
                            format!("{}{x}", " ".repeat(pad))
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            let _ = writeln!(s, "{}", line(&head));
            for c in &cells {
                let _ = writeln!(s, "{}", line(c));
            }
            s.push_str(NOTE);
        }
    }
    s
}

const NOTE: &str = "\nmean ± sample std over seeds; compute: wall time of every stage a row depends on (shared stages count in each row); p (t): paired t-test, p (exact): sign-flip test over all 2^n sign patterns (at n seeds it cannot go below 2/2^n).\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sign_flip_test_is_exact_and_bounded_by_the_seed_count() {
        // Five positive differences: only all-positive and all-negative are as extreme.
        let (_, _, p) = paired(&[0.01, 0.02, 0.015, 0.03, 0.01]);
        assert_eq!(p, Some(2.0 / 32.0));
        let (t, p_t, _) = paired(&[0.01, 0.02, 0.015, 0.03, 0.01]);
        assert!(t.unwrap() > 4.0 && p_t.unwrap() < 0.02, "{t:?} {p_t:?}");
        assert_eq!(paired(&[0.5]), (None, None, None));
        // No spread: no t, but the permutation test still answers.
        let (t, _, p) = paired(&[0.1, 0.1]);
        assert_eq!((t, p), (None, Some(0.5)));
    }

    /// A pipeline whose strategies (variant, strategy, one setting's key and value) are all
    /// `differing_strategy_settings` reads.
    fn input(strategies: &[(&str, &str, &str, &str)]) -> Input<'static> {
        Input {
            label: String::new(),
            results: &[],
            summaries: &[],
            points: BTreeMap::new(),
            compute_s: BTreeMap::new(),
            settings: BTreeMap::new(),
            strategy_settings: strategies
                .iter()
                .map(|(variant, strategy, k, v)| {
                    let own = OwnSettings {
                        strategy: strategy.to_string(),
                        settings: BTreeMap::from([(k.to_string(), v.to_string())]),
                    };
                    (variant.to_string(), own)
                })
                .collect(),
        }
    }

    #[test]
    fn only_a_strategy_in_several_pipelines_with_other_values_there_adds_columns() {
        let t = "strategies.rnf.prune.threshold";
        let a = input(&[("rnf", "rnf", t, "0.02"), ("solo", "solo", "x", "1")]);
        let b = input(&[("rnf", "rnf", t, "0.05")]);
        let differing = differing_strategy_settings(&[a, b]);
        assert_eq!(differing, BTreeMap::from([("rnf".into(), vec![t.into()])]));
        // The same values in both, swept alike: the sweep's column already shows them.
        let swept = || {
            input(&[
                ("rnf@threshold=0.02", "rnf", t, "0.02"),
                ("rnf@threshold=0.05", "rnf", t, "0.05"),
            ])
        };
        assert!(differing_strategy_settings(&[swept(), swept()]).is_empty());
        // One value against the sweep's two is a difference.
        let b = input(&[("rnf", "rnf", t, "0.05")]);
        assert_eq!(differing_strategy_settings(&[swept(), b]).len(), 1);
    }

    #[test]
    fn the_t_test_matches_a_known_value() {
        // d = [1, 2, 3]: mean 2, sd 1, t = 2·√3 = 3.4641, df 2, two-sided p = 0.07418.
        let (t, p, _) = paired(&[1.0, 2.0, 3.0]);
        assert!((t.unwrap() - 3.4641).abs() < 1e-4);
        assert!((p.unwrap() - 0.07418).abs() < 1e-4, "{p:?}");
    }
}
