//! `cfpipe report`: tables (markdown), exports (CSV and JSON that pandas reads) and figures,
//! from the cache alone.

use super::correlations::{self, CorrelationSummary};
use super::figures::{self, Heatmap, PruneCurve, Series};
use super::summary::{MeanStd, StrategySummary};
use super::{csv_field, RunResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What a compute-time estimate (`cfpipe plan`) rests on, from the strongest to the weakest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    Measured,
    Scaled,
    None,
}

impl Basis {
    pub fn name(self) -> &'static str {
        match self {
            Basis::Measured => "measured",
            Basis::Scaled => "scaled",
            Basis::None => "none",
        }
    }
}

/// Wall time of one cached stage, from its manifest.
#[derive(Debug, Clone, Serialize)]
pub struct StageTime {
    pub id: String,
    pub kind: String,
    pub key: String,
    pub wall_s: f64,
    pub device: String,
    /// What `cfpipe plan` estimated for this stage before the run that computed it (from the
    /// stages cached then), where that run was one of this pipeline's; `None` also where the
    /// estimate had nothing to rest on (`basis: none`).
    pub estimate_s: Option<f64>,
    pub basis: Option<Basis>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Figure(#[from] figures::FigureError),
}

fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Write everything into `out`; returns the files written.
/// Per strategy, its sweep point (`Strategy::point`; empty outside a sweep).
pub type Points = BTreeMap<String, Vec<(String, String)>>;

/// How a report was made: `report.json`'s `provenance` and the last section of `report.md`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Provenance {
    /// The pipeline file, absolute.
    pub pipeline: String,
    /// `--set` and `--sweep` arguments, as given.
    pub set: Vec<String>,
    pub sweep: Vec<String>,
    /// The pipeline-wide settings after overrides (`spec::settings`) and the strategies
    /// reported (sweep variants by name).
    pub settings: BTreeMap<String, String>,
    pub strategies: Vec<String>,
    pub cfpipe_version: String,
    /// The commit of the git repository holding the pipeline file, if it is in one.
    pub git: Option<GitState>,
    /// The key of every run's last evaluation, by stage id.
    pub final_stages: BTreeMap<String, String>,
    /// Devices the reported stages ran on.
    pub devices: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GitState {
    pub commit: String,
    /// Uncommitted changes in the repository when the report was written.
    pub dirty: bool,
}

impl Provenance {
    /// Whether `other` describes the same configuration (file, overrides and sweep).
    pub fn same_configuration(&self, other: &Provenance) -> bool {
        self.pipeline == other.pipeline && self.set == other.set && self.sweep == other.sweep
    }
}

/// What a report shows beyond the results.
pub struct ReportMeta<'a> {
    pub points: &'a Points,
    pub provenance: &'a Provenance,
    pub look: &'a figures::Look,
    /// Each task's classes by dataset label (IDX pipelines; empty where classes are only
    /// known as indices).
    pub labels: &'a [Vec<u16>],
}

pub fn write_report(
    out: &Path,
    name: &str,
    results: &[RunResult],
    summaries: &[StrategySummary],
    times: &[StageTime],
    meta: &ReportMeta,
) -> Result<Vec<PathBuf>, ReportError> {
    let points = meta.points;
    let look = meta.look;
    std::fs::create_dir_all(out).map_err(|source| ReportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    let mut put = |file: &str, text: String| -> Result<(), ReportError> {
        let p = out.join(file);
        write(&p, &text)?;
        files.push(p);
        Ok(())
    };
    put("accuracy.csv", accuracy_csv(results))?;
    put("metrics.csv", metrics_csv(results))?;
    put("summary.csv", summary_csv(summaries))?;
    put("stages.csv", stages_csv(times))?;
    put("curves.csv", curves_csv(results))?;
    if results.iter().any(|r| r.confusion.is_some()) {
        put("confusion.csv", super::perclass::csv(results, meta.labels))?;
    }
    let corr = correlations::summarize(results);
    let mut json = serde_json::json!({"pipeline": name, "provenance": meta.provenance, "runs": results, "summaries": summaries, "stages": times});
    if results.iter().any(|r| !r.correlate.is_empty()) {
        put("correlations.csv", correlations::csv(results))?;
        json["correlations"] = serde_json::to_value(&corr).expect("plain data");
    }
    put(
        "report.json",
        serde_json::to_string_pretty(&json).expect("plain data"),
    )?;

    let mut figs = Vec::new();
    let tasks = summaries.first().map(|s| s.tasks).unwrap_or(0);
    let xs: Vec<f64> = (1..=tasks).map(|t| t as f64).collect();
    let seq: Vec<&StrategySummary> = summaries.iter().filter(|s| !s.joint).collect();
    let acc_series: Vec<Series> = seq
        .iter()
        .map(|s| Series {
            label: s.strategy.clone(),
            x: xs.clone(),
            y: s.mean_accuracy
                .iter()
                .map(|m| m.map(|m| m.mean * 100.0).unwrap_or(f64::NAN))
                .collect(),
            std: Some(
                s.mean_accuracy
                    .iter()
                    .map(|m| m.map(|m| m.std * 100.0).unwrap_or(0.0))
                    .collect(),
            ),
        })
        .collect();
    let cap_series: Vec<Series> = seq
        .iter()
        .filter(|s| s.free_capacity.iter().any(|c| c.mean < 1.0))
        .map(|s| Series {
            label: s.strategy.clone(),
            x: xs.clone(),
            y: s.free_capacity.iter().map(|c| c.mean * 100.0).collect(),
            std: None,
        })
        .collect();
    if !acc_series.is_empty() {
        figs.extend(figures::mean_accuracy_figure(
            &out.join("mean_accuracy"),
            &format!("{name}: mean accuracy over seen tasks"),
            &acc_series,
            &cap_series,
            look,
        )?);
        let panels: Vec<(String, Vec<Series>)> = seq
            .iter()
            .map(|s| {
                let lines = (0..tasks)
                    .map(|j| Series {
                        label: format!("task {}", j + 1),
                        x: (j + 1..=tasks).map(|t| t as f64).collect(),
                        y: (j..tasks)
                            .map(|i| {
                                s.accuracy[i]
                                    .get(j)
                                    .map(|m| m.mean * 100.0)
                                    .unwrap_or(f64::NAN)
                            })
                            .collect(),
                        std: Some(
                            (j..tasks)
                                .map(|i| s.accuracy[i].get(j).map(|m| m.std * 100.0).unwrap_or(0.0))
                                .collect(),
                        ),
                    })
                    .collect();
                (s.strategy.clone(), lines)
            })
            .collect();
        figs.extend(figures::per_task_figure(
            &out.join("per_task"),
            &format!("{name}: accuracy per task"),
            &panels,
            look,
        )?);
    }
    let mut pruning: Vec<&str> = Vec::new();
    for r in results {
        if r.prune.iter().any(|p| p.is_some()) && !pruning.contains(&r.strategy.as_str()) {
            pruning.push(&r.strategy);
        }
    }
    for strat in pruning {
        let runs: Vec<&RunResult> = results
            .iter()
            .filter(|r| r.strategy == strat && r.complete())
            .collect();
        if runs.is_empty() {
            continue;
        }
        let panels = prune_panels(&runs);
        let seeds = match runs.len() {
            1 => format!("seed {}", runs[0].seed),
            n => format!("{n} seeds"),
        };
        figs.extend(figures::prune_figure(
            &out.join(format!("prune_{strat}")),
            &format!("{name}: pruning search of {strat} ({seeds})"),
            &panels,
            look,
        )?);
    }
    for c in &corr {
        figs.extend(correlation_figures(out, name, c, look)?);
    }
    for (axis, panels) in ablation_panels(summaries, points) {
        let stem: String = axis
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        figs.extend(figures::ablation_figure(
            &out.join(format!("ablation_{stem}")),
            &format!("{name}: final metrics against {axis} (mean ± std over seeds)"),
            &axis,
            &panels,
            look,
        )?);
    }
    let curves = curve_panels(results);
    if curves.iter().any(|(_, lines)| !lines.is_empty()) {
        figs.extend(figures::training_curves_figure(
            &out.join("training_curves"),
            &format!("{name}: training loss per epoch"),
            &curves,
            look,
        )?);
    }
    put(
        "report.md",
        markdown(name, results, summaries, &corr, times, &figs, meta.labels)
            + &provenance_md(meta.provenance),
    )?;
    files.extend(figs);
    Ok(files)
}

/// One panel per task that prunes, one curve per seed (runs of one strategy).
fn prune_panels(runs: &[&RunResult]) -> Vec<(String, Vec<PruneCurve>)> {
    let tasks = runs.iter().map(|r| r.prune.len()).max().unwrap_or(0);
    (0..tasks)
        .filter_map(|t| {
            let curves: Vec<PruneCurve> = runs
                .iter()
                .filter_map(|r| r.prune.get(t)?.as_ref().map(|p| (r.seed, p)))
                .map(|(seed, p)| PruneCurve {
                    label: format!("seed {seed}"),
                    share: p.curve.iter().map(|c| c.share * 100.0).collect(),
                    accuracy: p.curve.iter().map(|c| c.accuracy * 100.0).collect(),
                    threshold_line: (p.baseline_accuracy - p.threshold) * 100.0,
                    accepted_share: if p.candidates == 0 {
                        0.0
                    } else {
                        p.accepted_pruned as f64 / p.candidates as f64 * 100.0
                    },
                })
                .collect();
            (!curves.is_empty()).then(|| (format!("task {}", t + 1), curves))
        })
        .collect()
}

/// The heatmap of the Pearson matrices after the last task (one panel per layer) and Pearson
/// vs task (one panel per layer, one line per pair), for one strategy.
fn correlation_figures(
    out: &Path,
    name: &str,
    c: &CorrelationSummary,
    look: &figures::Look,
) -> Result<Vec<PathBuf>, ReportError> {
    let mut figs = Vec::new();
    let last = c.tasks.saturating_sub(1);
    let seeds = match c.seeds.len() {
        1 => format!("seed {}", c.seeds[0]),
        n => format!("{n} seeds"),
    };
    let maps: Vec<Heatmap> = (0..c.layers.len())
        .map(|l| Heatmap {
            title: c.layers[l].label(),
            labels: c.methods.clone(),
            values: c.pearson_matrix(l, last),
        })
        .collect();
    figs.extend(figures::heatmap_figure(
        &out.join(format!("correlation_heatmap_{}", c.strategy)),
        &format!(
            "{name}, {}: Pearson r after task {} ({seeds})",
            c.strategy,
            last + 1
        ),
        &maps,
        look,
    )?);
    let xs: Vec<f64> = (1..=c.tasks).map(|t| t as f64).collect();
    let panels: Vec<(String, Vec<Series>)> = c
        .layers
        .iter()
        .map(|l| {
            let lines = l
                .pairs
                .iter()
                .map(|p| Series {
                    label: format!("{} ~ {}", p.a, p.b),
                    x: xs.clone(),
                    y: p.pearson.iter().map(|m| m.mean).collect(),
                    std: Some(p.pearson.iter().map(|m| m.std).collect()),
                })
                .collect();
            (l.label(), lines)
        })
        .collect();
    figs.extend(figures::correlation_figure(
        &out.join(format!("correlation_vs_task_{}", c.strategy)),
        &format!("{name}, {}: Pearson r vs task ({seeds})", c.strategy),
        &panels,
        look,
    )?);
    Ok(figs)
}

fn pct(m: &MeanStd) -> String {
    m.fmt(100.0)
}

/// A free capacity over complete runs: it has no value only where no seed computes it (after
/// the last task with `final_mask: false`), which is not the same as 0.
fn capacity(m: &MeanStd) -> String {
    if m.n == 0 {
        "not computed".into()
    } else {
        pct(m)
    }
}

fn markdown(
    name: &str,
    results: &[RunResult],
    sums: &[StrategySummary],
    corr: &[CorrelationSummary],
    times: &[StageTime],
    figs: &[PathBuf],
    labels: &[Vec<u16>],
) -> String {
    let mut s = String::new();
    let seeds = sums.iter().map(|x| x.seeds.len()).max().unwrap_or(0);
    let _ = writeln!(s, "# Report: {name}\n");
    let _ = writeln!(s, "Read from the cache; values are percentages, mean ± sample std over {seeds} seed(s). Definitions at the end.\n");
    let _ = writeln!(s, "## Final results\n");
    let _ = writeln!(s, "| strategy | seeds | final mean accuracy | task-1 accuracy | forgetting (max) | forgetting (first) | BWT | free capacity |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for x in sums {
        let opt = |m: &Option<MeanStd>| m.as_ref().map(pct).unwrap_or_else(|| "n/a".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            x.strategy,
            x.seeds.len(),
            pct(&x.final_mean_accuracy),
            pct(&x.final_task1_accuracy),
            opt(&x.forgetting_max),
            opt(&x.forgetting_first),
            opt(&x.backward_transfer),
            x.free_capacity.last().map(capacity).unwrap_or_default()
        );
    }
    if sums.iter().any(|x| x.final_task_aware_accuracy.is_some()) {
        let _ = writeln!(
            s,
            "\n## Class-incremental: told the task\n\nThe final mean accuracy above is over all the head's outputs, without the task (`model.heads: class_incremental`). Told each sample's task, i.e. the argmax over the task's own outputs:\n\n| strategy | final mean accuracy, without the task | told the task |\n|---|---|---|"
        );
        for x in sums {
            if let Some(a) = &x.final_task_aware_accuracy {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} |",
                    x.strategy,
                    pct(&x.final_mean_accuracy),
                    pct(a)
                );
            }
        }
    }
    let tasks = sums.first().map(|x| x.tasks).unwrap_or(0);
    let header = |s: &mut String, first: &str| {
        let _ = write!(s, "| {first} |");
        for t in 1..=tasks {
            let _ = write!(s, " T{t} |");
        }
        let _ = write!(s, "\n|---|");
        for _ in 0..tasks {
            let _ = write!(s, "---|");
        }
        s.push('\n');
    };
    if sums.iter().any(|x| x.forward_transfer.is_some()) {
        let _ = writeln!(
            s,
            "\n## Forward transfer\n\nAccuracy on each task right after learning it in sequence, minus its accuracy trained alone from the same start (`evaluation.forward_transfer`), averaged over tasks 2..T; > 0: the earlier tasks helped.\n\n| strategy | FWT |\n|---|---|"
        );
        for x in sums {
            if let Some(f) = &x.forward_transfer {
                let _ = writeln!(s, "| {} | {} |", x.strategy, pct(f));
            }
        }
    }
    let _ = writeln!(s, "\n## Mean accuracy over seen tasks, after each task\n");
    header(&mut s, "strategy");
    for x in sums {
        let _ = write!(s, "| {} |", x.strategy);
        for m in &x.mean_accuracy {
            let _ = write!(
                s,
                " {} |",
                m.as_ref().map(pct).unwrap_or_else(|| "–".into())
            );
        }
        s.push('\n');
    }
    let _ = writeln!(s, "\n## Free capacity after each task\n");
    header(&mut s, "strategy");
    for x in sums {
        let _ = write!(s, "| {} |", x.strategy);
        for m in &x.free_capacity {
            let _ = write!(s, " {} |", capacity(m));
        }
        s.push('\n');
    }
    if sums.iter().any(|x| !x.prune_evaluations.is_empty()) {
        let _ = writeln!(s, "\n## Pruning-search evaluations per task\n");
        header(&mut s, "strategy");
        for x in sums.iter().filter(|x| !x.prune_evaluations.is_empty()) {
            let _ = write!(s, "| {} |", x.strategy);
            for m in &x.prune_evaluations {
                let _ = write!(s, " {} |", m.fmt(1.0));
            }
            s.push('\n');
        }
        let flagged: Vec<String> = results
            .iter()
            .flat_map(|r| {
                r.prune.iter().enumerate().filter_map(move |(t, p)| {
                    p.as_ref()
                        .filter(|p| p.non_monotone)
                        .map(|_| format!("{}/seed{}/task{}", r.strategy, r.seed, t + 1))
                })
            })
            .collect();
        let _ = writeln!(
            s,
            "\nNon-monotone pruning curves (accuracy rose with more pruning): {}.",
            if flagged.is_empty() {
                "none".to_string()
            } else {
                flagged.join(", ")
            }
        );
    }
    let _ = writeln!(s, "\n## Accuracy matrices\n");
    for x in sums {
        let _ = writeln!(
            s,
            "**{}** (row: after training task i; column: task j)\n",
            x.strategy
        );
        header(&mut s, "after");
        for (i, row) in x.accuracy.iter().enumerate() {
            if row.is_empty() {
                continue;
            }
            let _ = write!(
                s,
                "| {} |",
                if x.joint {
                    "joint".to_string()
                } else {
                    format!("task {}", i + 1)
                }
            );
            for j in 0..tasks {
                let _ = write!(s, " {} |", row.get(j).map(pct).unwrap_or_default());
            }
            s.push('\n');
        }
        s.push('\n');
    }
    s.push_str(correlations::markdown(corr).trim_start());
    let per_class = super::perclass::markdown(results, labels);
    if !per_class.is_empty() {
        s.push_str(per_class.trim_start());
        s.push('\n');
    }
    let _ = writeln!(s, "## Stage wall time\n");
    let _ = writeln!(
        s,
        "As recorded when each stage was computed (a cached stage keeps its original time).\n"
    );
    let _ = writeln!(
        s,
        "| kind | stages | total (s) | mean (s) |\n|---|---|---|---|"
    );
    let mut by_kind: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for t in times {
        let e = by_kind.entry(&t.kind).or_default();
        e.0 += 1;
        e.1 += t.wall_s;
    }
    for (k, (n, tot)) in &by_kind {
        let _ = writeln!(s, "| {k} | {n} | {tot:.2} | {:.3} |", tot / *n as f64);
    }
    let total: f64 = times.iter().map(|t| t.wall_s).sum();
    let _ = writeln!(s, "| all | {} | {total:.2} | |", times.len());
    s.push_str(&estimates_md(times));
    let _ = writeln!(s, "\n## Figures\n");
    for f in figs
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "png"))
    {
        let file = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let _ = writeln!(s, "![{file}]({file})\n");
    }
    let _ = writeln!(s, "## Definitions\n");
    let _ = writeln!(
        s,
        "A[i][j] is test accuracy on task j after training task i (tasks 1..T).\n\n\
         - mean accuracy after task i: (1/i) Σ_{{j≤i}} A[i][j]\n\
         - forgetting (max), as in FACIL: (1/(T−1)) Σ_{{j<T}} (max_{{j≤i<T}} A[i][j] − A[T][j])\n\
         - forgetting (first), as in Avalanche: (1/(T−1)) Σ_{{j<T}} (A[j][j] − A[T][j])\n\
         - backward transfer: (1/(T−1)) Σ_{{j<T}} (A[T][j] − A[j][j])\n\
         - free capacity: share of hidden units not frozen after the task\n\
         - joint: one training on all tasks; only its final row exists and forgetting is undefined\n"
    );
    s
}

fn accuracy_csv(results: &[RunResult]) -> String {
    let mut s = String::from("strategy,seed,after_task,task,accuracy\n");
    for r in results {
        for (i, row) in r.accuracy.iter().enumerate() {
            for (j, a) in row.iter().flatten().enumerate() {
                let _ = writeln!(s, "{},{},{},{},{}", r.strategy, r.seed, i + 1, j + 1, a);
            }
        }
    }
    s
}

fn metrics_csv(results: &[RunResult]) -> String {
    let mut s = String::from("strategy,seed,metric,task,value\n");
    for r in results {
        let mut row = |metric: &str, task: Option<usize>, v: f64| {
            let t = task.map(|t| t.to_string()).unwrap_or_default();
            let _ = writeln!(s, "{},{},{metric},{t},{v}", r.strategy, r.seed);
        };
        for (i, a) in r.accuracy.iter().enumerate() {
            if let Some(a) = a {
                row(
                    "mean_accuracy",
                    Some(i + 1),
                    a.iter().sum::<f64>() / a.len() as f64,
                );
            }
        }
        for (i, c) in r.free_capacity.iter().enumerate() {
            if let Some(c) = c {
                row("free_capacity", Some(i + 1), *c);
            }
        }
        for (i, p) in r.prune.iter().enumerate() {
            if let Some(p) = p {
                row("prune_evaluations", Some(i + 1), p.evaluations as f64);
            }
        }
        if let (false, Some(m)) = (
            r.joint,
            r.accuracy.iter().cloned().collect::<Option<Vec<_>>>(),
        ) {
            if let Ok(m) = super::metrics::compute(&m) {
                row("forgetting_max", None, m.forgetting_max);
                row("forgetting_first", None, m.forgetting_first);
                row("backward_transfer", None, m.backward_transfer);
            }
        }
    }
    s
}

fn summary_csv(sums: &[StrategySummary]) -> String {
    let mut s = String::from("strategy,metric,task,mean,std,n\n");
    for x in sums {
        let mut row = |metric: &str, task: Option<usize>, m: &MeanStd| {
            let t = task.map(|t| t.to_string()).unwrap_or_default();
            let _ = writeln!(
                s,
                "{},{metric},{t},{},{},{}",
                x.strategy, m.mean, m.std, m.n
            );
        };
        row("final_mean_accuracy", None, &x.final_mean_accuracy);
        row("final_task1_accuracy", None, &x.final_task1_accuracy);
        if let Some(m) = &x.final_task_aware_accuracy {
            row("final_task_aware_accuracy", None, m);
        }
        for (name, m) in [
            ("forgetting_max", &x.forgetting_max),
            ("forgetting_first", &x.forgetting_first),
            ("backward_transfer", &x.backward_transfer),
        ] {
            if let Some(m) = m {
                row(name, None, m);
            }
        }
        for (i, m) in x.mean_accuracy.iter().enumerate() {
            if let Some(m) = m {
                row("mean_accuracy", Some(i + 1), m);
            }
        }
        for (i, m) in x.free_capacity.iter().enumerate().filter(|(_, m)| m.n > 0) {
            row("free_capacity", Some(i + 1), m);
        }
    }
    s
}

/// `report.md`'s provenance section.
fn provenance_md(p: &Provenance) -> String {
    let mut s = String::from("\n## Provenance\n\n");
    let _ = writeln!(s, "- pipeline: `{}`", p.pipeline);
    let args = |flag: &str, v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter()
                .map(|a| format!("`{flag} {a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let _ = writeln!(s, "- overrides: {}", args("--set", &p.set));
    let _ = writeln!(s, "- sweep: {}", args("--sweep", &p.sweep));
    let _ = writeln!(s, "- cfpipe {}", p.cfpipe_version);
    let _ = match &p.git {
        Some(g) => writeln!(
            s,
            "- git commit `{}`{}",
            g.commit,
            if g.dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        ),
        None => writeln!(s, "- the pipeline file is not in a git repository"),
    };
    let _ = writeln!(s, "- devices: {}", p.devices.join(", "));
    let _ = writeln!(s, "- strategies: {}", p.strategies.join(", "));
    let _ = writeln!(s, "\nSettings after overrides:\n");
    let _ = writeln!(s, "| setting | value |\n|---|---|");
    for (k, v) in &p.settings {
        let _ = writeln!(s, "| `{k}` | `{v}` |");
    }
    let _ = writeln!(s, "\nKeys of the final evaluations:\n");
    let _ = writeln!(s, "| stage | key |\n|---|---|");
    for (id, k) in &p.final_stages {
        let _ = writeln!(s, "| `{id}` | `{k}` |");
    }
    s
}

/// A strategy name as (strategy, sweep variant): `rnf@threshold=0.05` → (`rnf`,
/// `threshold=0.05`); a name outside a sweep has an empty variant.
fn strategy_and_variant(name: &str) -> (&str, &str) {
    name.split_once('@').unwrap_or((name, ""))
}

/// `curves.csv`, tidy: one row per (strategy, variant, seed, task, epoch, metric).
fn curves_csv(results: &[RunResult]) -> String {
    let mut s = String::from("strategy,variant,seed,task,epoch,metric,value\n");
    for r in results {
        let (strategy, variant) = strategy_and_variant(&r.strategy);
        for (t, c) in r.curves.iter().enumerate() {
            let task = if r.joint {
                "joint".to_string()
            } else {
                (t + 1).to_string()
            };
            for e in c.iter().flatten() {
                for (metric, v) in [("loss", e.mean_loss), ("train_accuracy", e.train_accuracy)] {
                    let _ = writeln!(
                        s,
                        "{},{},{},{task},{},{metric},{v}",
                        csv_field(strategy),
                        csv_field(variant),
                        r.seed,
                        e.epoch
                    );
                }
            }
        }
    }
    s
}

/// Panels of a figure: (caption, lines).
type Panels = Vec<(String, Vec<Series>)>;

/// One strategy's point on an ablation line: (swept value, final accuracy, final free
/// capacity).
type AblationPoint = (f64, MeanStd, Option<MeanStd>);

/// The ablation figures' panels, per swept axis whose values are numbers: final accuracy and
/// final free capacity against the axis, one line per strategy (and value of the other axes).
fn ablation_panels(sums: &[StrategySummary], points: &Points) -> Vec<(String, Panels)> {
    let mut axes: Vec<&String> = Vec::new();
    for p in points.values().flatten() {
        if !axes.contains(&&p.0) {
            axes.push(&p.0);
        }
    }
    let mut out = Vec::new();
    for axis in axes {
        // (line label) → [(x, final accuracy, free capacity)]
        let mut lines: Vec<(String, Vec<AblationPoint>)> = Vec::new();
        for s in sums {
            let Some(point) = points.get(&s.strategy) else {
                continue;
            };
            let Some(x) = point
                .iter()
                .find(|(k, _)| k == axis)
                .and_then(|(_, v)| v.parse::<f64>().ok())
            else {
                continue;
            };
            let base = s.strategy.split('@').next().unwrap_or(&s.strategy);
            let others: Vec<String> = point
                .iter()
                .filter(|(k, _)| k != axis)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let label = if others.is_empty() {
                base.to_string()
            } else {
                format!("{base}, {}", others.join(", "))
            };
            let free = s.free_capacity.last().copied().filter(|m| m.n > 0);
            match lines.iter_mut().find(|(l, _)| *l == label) {
                Some((_, pts)) => pts.push((x, s.final_mean_accuracy, free)),
                None => lines.push((label, vec![(x, s.final_mean_accuracy, free)])),
            }
        }
        if lines.iter().all(|(_, pts)| pts.len() < 2) {
            continue;
        }
        let series = |metric: &dyn Fn(&AblationPoint) -> Option<MeanStd>| {
            lines
                .iter()
                .map(|(label, pts)| {
                    let mut pts = pts.clone();
                    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let m: Vec<Option<MeanStd>> = pts.iter().map(metric).collect();
                    Series {
                        label: label.clone(),
                        x: pts.iter().map(|p| p.0).collect(),
                        y: m.iter()
                            .map(|m| m.map_or(f64::NAN, |m| m.mean * 100.0))
                            .collect(),
                        std: Some(m.iter().map(|m| m.map_or(0.0, |m| m.std * 100.0)).collect()),
                    }
                })
                .collect::<Vec<_>>()
        };
        let panels = vec![
            (
                "final mean accuracy (%)".to_string(),
                series(&|p| Some(p.1)),
            ),
            ("final free capacity (%)".to_string(), series(&|p| p.2)),
        ];
        out.push((axis.clone(), panels));
    }
    out
}

/// The training-curves figure's panels: per strategy, one line per task of its mean loss over
/// seeds per epoch, epochs counted through the task sequence.
fn curve_panels(results: &[RunResult]) -> Panels {
    let mut names: Vec<&str> = Vec::new();
    for r in results {
        if !names.contains(&r.strategy.as_str()) {
            names.push(&r.strategy);
        }
    }
    let panels: Panels = names
        .into_iter()
        .map(|name| {
            let runs: Vec<&RunResult> = results.iter().filter(|r| r.strategy == name).collect();
            let tasks = runs.iter().map(|r| r.curves.len()).max().unwrap_or(0);
            let mut offset = 0.0;
            let mut lines = Vec::new();
            for t in 0..tasks {
                let curves: Vec<&Vec<super::EpochPoint>> = runs
                    .iter()
                    .filter_map(|r| r.curves.get(t).and_then(|c| c.as_ref()))
                    .collect();
                let epochs = curves.iter().map(|c| c.len()).max().unwrap_or(0);
                if epochs == 0 {
                    continue;
                }
                let stats: Vec<MeanStd> = (0..epochs)
                    .map(|i| {
                        let v: Vec<f64> = curves
                            .iter()
                            .filter_map(|c| c.get(i).map(|e| e.mean_loss))
                            .collect();
                        MeanStd::of(&v)
                    })
                    .collect();
                lines.push(Series {
                    label: if runs.first().is_some_and(|r| r.joint) {
                        "joint".to_string()
                    } else {
                        format!("task {}", t + 1)
                    },
                    x: (1..=epochs).map(|e| offset + e as f64).collect(),
                    y: stats.iter().map(|m| m.mean).collect(),
                    std: Some(stats.iter().map(|m| m.std).collect()),
                });
                offset += epochs as f64;
            }
            (name.to_string(), lines)
        })
        .collect();
    // Strategies that trained identically (they differ only after training, as an isolated
    // evaluation does) share one panel rather than drawing the same curves twice.
    let mut merged: Panels = Vec::new();
    for (name, lines) in panels {
        match merged.iter_mut().find(|(_, l)| *l == lines) {
            Some((n, _)) => {
                n.push_str(" = ");
                n.push_str(&name);
            }
            None => merged.push((name, lines)),
        }
    }
    merged
}

fn stages_csv(times: &[StageTime]) -> String {
    let mut s = String::from("id,kind,key,wall_s,device,estimate_s,basis\n");
    for t in times {
        let est = t.estimate_s.map(|e| e.to_string()).unwrap_or_default();
        let basis = t.basis.map(|b| b.name()).unwrap_or_default();
        let _ = writeln!(
            s,
            "{},{},{},{},{},{est},{basis}",
            t.id, t.kind, t.key, t.wall_s, t.device
        );
    }
    s
}

/// The plan's estimates beside the actual wall times, per kind, for the stages whose
/// computing run recorded one; empty when none did (a cache filled before estimates were
/// kept, or by another pipeline).
fn estimates_md(times: &[StageTime]) -> String {
    #[derive(Default)]
    struct Row {
        n: usize,
        unestimated: usize,
        estimate: f64,
        actual: f64,
        basis: Option<Basis>,
    }
    let mut rows: BTreeMap<&str, Row> = BTreeMap::new();
    for t in times.iter().filter(|t| t.basis.is_some()) {
        let r = rows.entry(&t.kind).or_default();
        match t.estimate_s {
            Some(e) => {
                // The weakest basis among the estimated stages.
                r.basis = r.basis.max(t.basis);
                r.n += 1;
                r.estimate += e;
                r.actual += t.wall_s;
            }
            None => r.unestimated += 1,
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n## Plan estimate and actual time\n\nWhat `cfpipe plan` estimated before the run that computed each stage (from the stages cached then), beside the time it took. Sums of single-stage wall times; `measured` rests on stages of the same settings, `scaled` on other settings (a guess).\n\n| kind | stages | estimate (s) | actual (s) | actual / estimate | basis |\n|---|---|---|---|---|---|\n",
    );
    let (mut est, mut act, mut n) = (0.0, 0.0, 0);
    for (k, r) in &rows {
        let ratio = if r.estimate > 0.0 {
            format!("{:.2}", r.actual / r.estimate)
        } else {
            "–".into()
        };
        let basis = r.basis.map_or("none", |b| b.name());
        let not = if r.unestimated > 0 {
            format!(" ({} not estimated)", r.unestimated)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "| {k} | {}{not} | {:.2} | {:.2} | {ratio} | {basis} |",
            r.n, r.estimate, r.actual
        );
        est += r.estimate;
        act += r.actual;
        n += r.n;
    }
    if est > 0.0 {
        let _ = writeln!(
            s,
            "| all | {n} | {est:.2} | {act:.2} | {:.2} | |",
            act / est
        );
    }
    s
}
