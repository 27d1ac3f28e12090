//! Importance correlations (the `correlate` stage, Kutalev's study) as `cfpipe report` shows
//! them: every cached value as one row of `correlations.csv`, mean ± std over seeds per
//! (strategy, layer, pair, task) for `report.md` and `report.json`, and the data of the two
//! figures (the method × method Pearson matrix after the last task, and Pearson vs task). Only
//! strategies with a `correlate` block appear; tasks and layers are numbered from 1 here, as in
//! the other exports, where `correlate.json` counts layers from 0.

use super::summary::MeanStd;
use super::RunResult;
use crate::stages::correlate::{CorrelateReport, LayerCorrelations};
use serde::Serialize;
use std::fmt::Write as _;

/// One pair of methods in one layer: Pearson and Spearman after each task, over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct PairSummary {
    pub a: String,
    pub b: String,
    pub pearson: Vec<MeanStd>,
    pub spearman: Vec<MeanStd>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerSummary {
    /// 1-based; the last layer is the task's head.
    pub layer: usize,
    pub head: bool,
    /// `[out, in]`.
    pub shape: (usize, usize),
    pub pairs: Vec<PairSummary>,
}

impl LayerSummary {
    /// `layer 1 (784→300)`, or `head (150→10)`.
    pub fn label(&self) -> String {
        let (out, inp) = self.shape;
        if self.head {
            format!("head ({inp}→{out})")
        } else {
            format!("layer {} ({inp}→{out})", self.layer)
        }
    }
}

/// One strategy's correlations over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct CorrelationSummary {
    pub strategy: String,
    pub seeds: Vec<u64>,
    pub tasks: usize,
    /// In the order of `correlate.json` (pairs are `a` before `b` in this order).
    pub methods: Vec<String>,
    pub layers: Vec<LayerSummary>,
}

impl CorrelationSummary {
    /// The method × method matrix of mean Pearson r after task `t` (0-based) in layer `l`:
    /// 1 on the diagonal, symmetric, NaN where a pair is missing.
    pub fn pearson_matrix(&self, l: usize, t: usize) -> Vec<Vec<f64>> {
        let n = self.methods.len();
        let mut m = vec![vec![f64::NAN; n]; n];
        for (i, row) in m.iter_mut().enumerate() {
            row[i] = 1.0;
        }
        let pos = |name: &str| self.methods.iter().position(|x| x == name);
        for p in &self.layers[l].pairs {
            if let (Some(i), Some(j), Some(v)) = (pos(&p.a), pos(&p.b), p.pearson.get(t)) {
                m[i][j] = v.mean;
                m[j][i] = v.mean;
            }
        }
        m
    }
}

/// The runs of `strategy` whose correlations are all cached.
fn complete_runs<'r>(results: &'r [RunResult], strategy: &str) -> Vec<&'r RunResult> {
    results
        .iter()
        .filter(|r| {
            r.strategy == strategy
                && !r.correlate.is_empty()
                && r.correlate.iter().all(|c| c.is_some())
        })
        .collect()
}

fn pair_in<'c>(
    layer: &'c LayerCorrelations,
    a: &str,
    b: &str,
) -> Option<&'c crate::stages::correlate::PairCorrelation> {
    layer.pairs.iter().find(|p| p.a == a && p.b == b)
}

/// One summary per strategy that has correlations, in pipeline order.
pub fn summarize(results: &[RunResult]) -> Vec<CorrelationSummary> {
    let mut names: Vec<&str> = Vec::new();
    for r in results.iter().filter(|r| !r.correlate.is_empty()) {
        if !names.contains(&r.strategy.as_str()) {
            names.push(&r.strategy);
        }
    }
    names
        .into_iter()
        .filter_map(|name| {
            let runs = complete_runs(results, name);
            let reports: Vec<Vec<&CorrelateReport>> = runs
                .iter()
                .map(|r| r.correlate.iter().flatten().collect())
                .collect();
            // Layers and pairs are the same after every task; take them from the first report.
            let template = *reports.first()?.first()?;
            let tasks = reports[0].len();
            let layers = template
                .layers
                .iter()
                .enumerate()
                .map(|(l, tl)| LayerSummary {
                    layer: tl.layer + 1,
                    head: tl.head,
                    shape: tl.shape,
                    pairs: tl
                        .pairs
                        .iter()
                        .map(|tp| {
                            let over_seeds = |t: usize, f: fn(&_) -> f64| {
                                let v: Vec<f64> = reports
                                    .iter()
                                    .filter_map(|rs| rs.get(t)?.layers.get(l))
                                    .filter_map(|layer| pair_in(layer, &tp.a, &tp.b))
                                    .map(f)
                                    .collect();
                                MeanStd::of(&v)
                            };
                            PairSummary {
                                a: tp.a.clone(),
                                b: tp.b.clone(),
                                pearson: (0..tasks).map(|t| over_seeds(t, |p| p.pearson)).collect(),
                                spearman: (0..tasks)
                                    .map(|t| over_seeds(t, |p| p.spearman))
                                    .collect(),
                            }
                        })
                        .collect(),
                })
                .collect();
            Some(CorrelationSummary {
                strategy: name.to_string(),
                seeds: runs.iter().map(|r| r.seed).collect(),
                tasks,
                methods: template.methods.clone(),
                layers,
            })
        })
        .collect()
}

/// A CSV field, quoted when it needs to be (method names are free-form YAML keys).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `correlations.csv`: every cached value, one row per (strategy, seed, task, layer, pair).
/// Values are written in full precision (they read back as the cached `f64`s).
pub fn csv(results: &[RunResult]) -> String {
    let mut s = String::from("strategy,seed,task,layer,head,a,b,pearson,spearman\n");
    for r in results {
        for (t, c) in r.correlate.iter().enumerate() {
            let Some(c) = c else { continue };
            for layer in &c.layers {
                for p in &layer.pairs {
                    let _ = writeln!(
                        s,
                        "{},{},{},{},{},{},{},{},{}",
                        field(&r.strategy),
                        r.seed,
                        t + 1,
                        layer.layer + 1,
                        layer.head,
                        field(&p.a),
                        field(&p.b),
                        p.pearson,
                        p.spearman
                    );
                }
            }
        }
    }
    s
}

/// `0.63 ± 0.03`, without the sign of a value that rounds to zero.
fn fmt(m: &MeanStd) -> String {
    let s = m.fmt(1.0);
    match s.strip_prefix("-0.00") {
        Some(rest) => format!("0.00{rest}"),
        None => s,
    }
}

/// Widest table that is shown task by task; beyond it only the first and last task.
const MAX_TASK_COLUMNS: usize = 10;

/// The `report.md` section (empty when no strategy correlates).
pub fn markdown(sums: &[CorrelationSummary]) -> String {
    let mut s = String::new();
    if sums.is_empty() {
        return s;
    }
    let _ = writeln!(s, "\n## Importance correlations\n");
    let _ = writeln!(
        s,
        "Pearson r and Spearman ρ between the weight importances of every pair of methods \
         (`correlate`), per layer, after each task; mean ± sample std over seeds. \
         `correlations.csv` has every seed's value.\n"
    );
    for x in sums {
        let cols: Vec<usize> = if x.tasks <= MAX_TASK_COLUMNS {
            (0..x.tasks).collect()
        } else {
            vec![0, x.tasks - 1]
        };
        let _ = writeln!(
            s,
            "### {}: methods {} ({} seed(s))\n",
            x.strategy,
            x.methods.join(", "),
            x.seeds.len()
        );
        if cols.len() < x.tasks {
            let _ = writeln!(
                s,
                "Only the first and the last of the {} tasks are shown; `correlations.csv` has them all.\n",
                x.tasks
            );
        }
        for l in &x.layers {
            let _ = writeln!(s, "{}, after task:\n", l.label());
            let _ = write!(s, "| pair | |");
            for &t in &cols {
                let _ = write!(s, " T{} |", t + 1);
            }
            let _ = write!(s, "\n|---|---|");
            for _ in &cols {
                s.push_str("---|");
            }
            s.push('\n');
            for p in &l.pairs {
                for (what, v) in [("Pearson", &p.pearson), ("Spearman", &p.spearman)] {
                    let _ = write!(s, "| {} ~ {} | {what} |", p.a, p.b);
                    for &t in &cols {
                        let _ = write!(s, " {} |", v.get(t).map(fmt).unwrap_or_else(|| "–".into()));
                    }
                    s.push('\n');
                }
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::correlate::PairCorrelation;

    fn report(t: usize, r: f64) -> CorrelateReport {
        let pair = |a: &str, b: &str, p: f64| PairCorrelation {
            a: a.into(),
            b: b.into(),
            pearson: p,
            spearman: p / 2.0,
        };
        CorrelateReport {
            task_index: t,
            methods: vec!["a".into(), "b".into(), "c,d".into()],
            accumulate: true,
            layers: vec![
                LayerCorrelations {
                    layer: 0,
                    head: false,
                    shape: (3, 4),
                    pairs: vec![
                        pair("a", "b", r),
                        pair("a", "c,d", -r),
                        pair("b", "c,d", 0.5),
                    ],
                },
                LayerCorrelations {
                    layer: 1,
                    head: true,
                    shape: (2, 3),
                    pairs: vec![
                        pair("a", "b", 0.1),
                        pair("a", "c,d", 0.2),
                        pair("b", "c,d", 0.3),
                    ],
                },
            ],
        }
    }

    fn run(seed: u64, rs: Vec<Option<CorrelateReport>>) -> RunResult {
        RunResult {
            strategy: "s".into(),
            seed,
            accuracy: vec![],
            free_capacity: vec![],
            missing: vec![],
            final_mask: true,
            joint: false,
            prune: vec![],
            correlate: rs,
            curves: vec![],
            confusion: None,
            class_offset: vec![],
            task_aware: None,
            alone: vec![],
        }
    }

    #[test]
    fn mean_and_std_over_seeds_per_layer_pair_and_task() {
        let results = [
            run(0, vec![Some(report(0, 0.2)), Some(report(1, 0.4))]),
            run(1, vec![Some(report(0, 0.6)), Some(report(1, 0.8))]),
        ];
        let sums = summarize(&results);
        assert_eq!(sums.len(), 1);
        let x = &sums[0];
        assert_eq!((x.tasks, x.seeds.clone()), (2, vec![0, 1]));
        let ab = &x.layers[0].pairs[0];
        assert!((ab.pearson[0].mean - 0.4).abs() < 1e-12);
        assert!((ab.pearson[1].mean - 0.6).abs() < 1e-12);
        assert!((ab.pearson[0].std - 0.08f64.sqrt()).abs() < 1e-12);
        assert!((ab.spearman[1].mean - 0.3).abs() < 1e-12);
        assert_eq!(x.layers[0].label(), "layer 1 (4→3)");
        assert_eq!(x.layers[1].label(), "head (3→2)");
        let m = x.pearson_matrix(0, 1);
        assert_eq!(m[0][0], 1.0);
        assert!((m[0][1] - 0.6).abs() < 1e-12 && (m[1][0] - 0.6).abs() < 1e-12);
        assert!((m[2][0] + 0.6).abs() < 1e-12 && m[1][2] == 0.5);

        let md = markdown(&sums);
        assert!(md.contains("## Importance correlations"), "{md}");
        assert!(
            md.contains("| a ~ b | Pearson | 0.40 ± 0.28 | 0.60 ± 0.28 |"),
            "{md}"
        );
        assert!(md.contains("head (3→2), after task:"), "{md}");
        let csv = csv(&results);
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(rows.len(), 1 + 2 * 2 * 2 * 3);
        assert_eq!(rows[2], "s,0,1,1,false,a,\"c,d\",-0.2,-0.1");
    }

    #[test]
    fn long_sequences_show_the_first_and_last_task() {
        let reports: Vec<Option<CorrelateReport>> = (0..12)
            .map(|t| Some(report(t, 0.01 * t as f64 - 0.001)))
            .collect();
        let md = markdown(&summarize(&[run(0, reports)]));
        assert!(md.contains("| pair | | T1 | T12 |\n"), "{md}");
        assert!(
            md.contains("Only the first and the last of the 12 tasks"),
            "{md}"
        );
        // -0.001 is shown as 0.00, not -0.00.
        assert!(md.contains("| a ~ b | Pearson | 0.00 | 0.11 |"), "{md}");
        assert!(md.contains("| a ~ c,d | Pearson | 0.00 | -0.11 |"), "{md}");
    }

    #[test]
    fn no_correlations_no_section_and_incomplete_runs_left_out() {
        assert!(markdown(&summarize(&[run(0, vec![])])).is_empty());
        let sums = summarize(&[
            run(0, vec![Some(report(0, 0.2)), None]),
            run(1, vec![Some(report(0, 0.6)), Some(report(1, 0.8))]),
        ]);
        assert_eq!(sums[0].seeds, vec![1]);
        assert_eq!(sums[0].layers[0].pairs[0].pearson[1].fmt(1.0), "0.80");
    }
}
