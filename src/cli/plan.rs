//! `cfpipe plan`: before anything runs, what `run` would compute and what it would cost. Per
//! stage kind: how many stages run and how many are cached, and the compute time estimated
//! from the wall times the cache recorded for stages of the same kind, each estimate labelled
//! with what it rests on:
//! - `measured`: cached stages of the same kind and the same parameters but for the seed and
//!   the task (their median);
//! - `scaled`: same kind, other settings; the median scaled by the ratio of epochs where both
//!   train (the data size is not known before the split runs, so it is not scaled);
//! - `none`: no stage of that kind is cached, and the total leaves it out.
//!
//! After a run, [`record_estimates`] keeps, for every stage it ran, the estimate `plan` would
//! have printed just before (from the manifests cached before the run, that is all but the
//! run's own) beside the wall time the stage took; `report` reads them back to set estimate
//! and actual side by side.
//!
//! The stages to run are exactly those `status` shows as not cached. A stage downstream of one
//! that runs has no key yet (its key hashes its inputs' content); if those inputs come out
//! byte-identical to an earlier run's, `run` serves it from the cache: `plan` counts it as to
//! run and says so.

use super::output::out;
use super::{open_cache_read, CacheLoc, PipelineArgs};
use crate::cache::Cache;
use crate::digest::StageKey;
use crate::error::CliError;
use crate::exec::{Outcome, RunReport};
use crate::graph::Dag;
pub use crate::report::write::Basis;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One recorded run of a stage: its parameters and wall time.
struct Past {
    params: serde_json::Value,
    wall_s: f64,
}

/// Parameters as they set a stage's cost: without its seed and task.
fn shape(params: &serde_json::Value) -> serde_json::Value {
    let mut p = params.clone();
    if let Some(m) = p.as_object_mut() {
        m.remove("seed");
        m.remove("task_index");
    }
    p
}

fn epochs(params: &serde_json::Value) -> Option<f64> {
    params.get("training")?.get("epochs")?.as_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The estimated wall time of a stage of `kind` with `params`, from `past` runs of that kind.
fn estimate(past: &[Past], params: &serde_json::Value) -> (Option<f64>, Basis) {
    let want = shape(params);
    let same: Vec<f64> = past
        .iter()
        .filter(|p| shape(&p.params) == want)
        .map(|p| p.wall_s)
        .collect();
    if !same.is_empty() {
        return (Some(median(same)), Basis::Measured);
    }
    if past.is_empty() {
        return (None, Basis::None);
    }
    let scaled: Vec<f64> = past
        .iter()
        .map(|p| match (epochs(params), epochs(&p.params)) {
            (Some(new), Some(old)) if old > 0.0 => p.wall_s * new / old,
            _ => p.wall_s,
        })
        .collect();
    (Some(median(scaled)), Basis::Scaled)
}

#[derive(Serialize)]
struct StagePlan {
    id: String,
    kind: String,
    run: bool,
    /// Not cached, and its key waits on inputs that run first.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    key_pending: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    estimate_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    basis: Option<Basis>,
}

#[derive(Serialize, Default)]
struct KindPlan {
    kind: String,
    run: usize,
    cached: usize,
    estimate_s: f64,
    /// The weakest basis among this kind's estimates (`none`: some have no estimate).
    basis: Option<Basis>,
}

/// The recorded runs of every cached stage but `except`, by kind.
fn history(
    cache: &Cache,
    except: &BTreeSet<StageKey>,
) -> Result<BTreeMap<String, Vec<Past>>, CliError> {
    let mut past: BTreeMap<String, Vec<Past>> = BTreeMap::new();
    for k in cache.keys()? {
        if except.contains(&k) {
            continue;
        }
        if let Some(m) = cache.read_manifest(&k) {
            past.entry(m.kind).or_default().push(Past {
                params: m.params,
                wall_s: m.run.wall_s,
            });
        }
    }
    Ok(past)
}

/// What `plan` estimated for a stage that then ran, and what it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The key the stage ran under (a later run of the same id is another computation).
    pub key: String,
    pub kind: String,
    pub estimate_s: Option<f64>,
    pub basis: Basis,
    pub actual_s: f64,
}

/// Where the estimates of a pipeline's runs are kept, by stage id.
fn estimates_path(cache: &Cache, dag: &Dag) -> std::path::PathBuf {
    let h = blake3::hash(dag.scope().as_bytes()).to_hex();
    cache
        .root()
        .join("runs")
        .join("estimates")
        .join(format!("{}.json", &h[..32]))
}

/// The estimates recorded for `dag`'s pipeline (none if it never ran a stage here).
pub fn read_estimates(cache: &Cache, dag: &Dag) -> BTreeMap<String, Estimate> {
    std::fs::read(estimates_path(cache, dag))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// After a run: for every stage it ran, the estimate `plan` would have given before the run
/// (the history is the cache less the entries this run made) and its wall time, merged into
/// the pipeline's record. Only runs that computed something pay for reading the manifests.
/// Two runs of one pipeline finishing at once may keep only one's records: they are
/// informational, never a key.
pub fn record_estimates(cache: &Cache, dag: &Dag, report: &RunReport) -> Result<(), CliError> {
    let ran: Vec<(&str, StageKey, f64)> = report
        .events
        .iter()
        .filter_map(|e| match (&e.outcome, e.key) {
            (Outcome::Ran { wall_s, .. }, Some(k)) => Some((e.id.as_str(), k, *wall_s)),
            _ => None,
        })
        .collect();
    if ran.is_empty() {
        return Ok(());
    }
    let mine: BTreeSet<StageKey> = ran.iter().map(|(_, k, _)| *k).collect();
    let past = history(cache, &mine)?;
    let mut all = read_estimates(cache, dag);
    for (id, key, actual_s) in ran {
        let Some(n) = dag.find(id).map(|n| dag.node(n)) else {
            continue;
        };
        let (estimate_s, basis) = estimate(past.get(&n.kind).map_or(&[][..], |v| v), &n.params);
        all.insert(
            id.to_string(),
            Estimate {
                key: key.to_hex(),
                kind: n.kind.clone(),
                estimate_s,
                basis,
                actual_s,
            },
        );
    }
    let path = estimates_path(cache, dag);
    if let Some(dir) = path.parent() {
        // Group-shared like the rest of a team cache.
        cache.perms().create_dir_all(dir)?;
    }
    let bytes = serde_json::to_vec_pretty(&all).expect("plain data");
    cache.write_atomic(&path, &bytes)?;
    Ok(())
}

pub(super) fn plan_cmd(
    p: &PipelineArgs,
    json: bool,
    filter: &super::filter::StageFilter,
    pending: bool,
    c: &CacheLoc,
) -> Result<(), CliError> {
    let cache = open_cache_read(c);
    let (dag, _, res) = super::filter::resolved(p, &cache, filter, pending)?;
    let past = history(&cache, &BTreeSet::new())?;
    let mut stages = Vec::new();
    let mut kinds: BTreeMap<String, KindPlan> = BTreeMap::new();
    for r in &res {
        let n = dag.node(r.node);
        let k = kinds.entry(n.kind.clone()).or_insert_with(|| KindPlan {
            kind: n.kind.clone(),
            ..KindPlan::default()
        });
        if r.cached() {
            k.cached += 1;
            stages.push(StagePlan {
                id: n.id.clone(),
                kind: n.kind.clone(),
                run: false,
                key_pending: false,
                estimate_s: None,
                basis: None,
            });
            continue;
        }
        let (est, basis) = estimate(past.get(&n.kind).map_or(&[][..], |v| v), &n.params);
        k.run += 1;
        k.estimate_s += est.unwrap_or(0.0);
        k.basis = Some(k.basis.map_or(basis, |b| b.max(basis)));
        stages.push(StagePlan {
            id: n.id.clone(),
            kind: n.kind.clone(),
            run: true,
            key_pending: r.key.is_none(),
            estimate_s: est,
            basis: Some(basis),
        });
    }
    let to_run = stages.iter().filter(|s| s.run).count();
    let total: f64 = kinds.values().map(|k| k.estimate_s).sum();
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "kinds": kinds.values().collect::<Vec<_>>(),
                "total": {"run": to_run, "cached": stages.len() - to_run, "estimate_s": total},
                "stages": stages,
            }))
            .expect("plain data")
        );
        return Ok(());
    }
    out!(
        "{:<12} {:>5} {:>7} {:>11}  basis",
        "kind",
        "run",
        "cached",
        "estimate"
    );
    for k in kinds.values() {
        let basis = match k.basis {
            None => "",
            Some(Basis::Measured) => "measured",
            Some(Basis::Scaled) => "scaled from other settings (a guess)",
            Some(Basis::None) => "no stage of this kind cached: not estimated",
        };
        let est = if k.run == 0 {
            String::new()
        } else {
            format!("{:.1} s", k.estimate_s)
        };
        out!(
            "{:<12} {:>5} {:>7} {:>11}  {basis}",
            k.kind,
            k.run,
            k.cached,
            est
        );
    }
    out!(
        "{:<12} {:>5} {:>7} {:>11}",
        "total",
        to_run,
        stages.len() - to_run,
        format!("{total:.1} s")
    );
    let pending = stages.iter().filter(|s| s.key_pending).count();
    if pending > 0 {
        out!(
            "{pending} of the stages to run wait on inputs that run first; one whose inputs come out as an earlier run's is served from the cache instead. Estimates are sums of single-stage wall times; `run --jobs N` overlaps independent stages."
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn estimates_prefer_the_same_shape_then_scale_by_epochs() {
        let past = vec![
            Past {
                params: json!({"seed": 0, "task_index": 0, "training": {"epochs": 2}}),
                wall_s: 2.0,
            },
            Past {
                params: json!({"seed": 1, "task_index": 3, "training": {"epochs": 2}}),
                wall_s: 4.0,
            },
        ];
        let same = json!({"seed": 7, "task_index": 1, "training": {"epochs": 2}});
        assert_eq!(estimate(&past, &same), (Some(3.0), Basis::Measured));
        let longer = json!({"seed": 7, "task_index": 1, "training": {"epochs": 4}});
        assert_eq!(estimate(&past, &longer), (Some(6.0), Basis::Scaled));
        assert_eq!(estimate(&[], &same), (None, Basis::None));
    }
}
