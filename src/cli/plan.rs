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
//! The stages to run are exactly those `status` shows as not cached. A stage downstream of one
//! that runs has no key yet (its key hashes its inputs' content); if those inputs come out
//! byte-identical to an earlier run's, `run` serves it from the cache: `plan` counts it as to
//! run and says so.

use super::output::out;
use super::{open_cache_read, CacheLoc, PipelineArgs};
use crate::error::CliError;
use serde::Serialize;
use std::collections::BTreeMap;

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

/// What an estimate rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub(super) enum Basis {
    Measured,
    Scaled,
    None,
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

pub(super) fn plan_cmd(
    p: &PipelineArgs,
    json: bool,
    filter: &super::filter::StageFilter,
    pending: bool,
    c: &CacheLoc,
) -> Result<(), CliError> {
    let cache = open_cache_read(c);
    let (dag, _, res) = super::filter::resolved(p, &cache, filter, pending)?;
    let mut past: BTreeMap<String, Vec<Past>> = BTreeMap::new();
    for k in cache.keys()? {
        if let Some(m) = cache.read_manifest(&k) {
            past.entry(m.kind).or_default().push(Past {
                params: m.params,
                wall_s: m.run.wall_s,
            });
        }
    }
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
