//! `cfpipe compare`: the experiment table of one or more pipelines (with their sweeps), from
//! the cache alone (`report::compare` builds and renders it).

use super::output::out;
use super::{open_cache_read, CacheLoc, PipelineArgs};
use crate::error::CliError;
use crate::exec::resolve;
use crate::report::compare::{self, Format, Metric};
use crate::spec::sweep::{self, Override};
use crate::spec::{DataCheck, SpecErrors};
use std::collections::{BTreeMap, BTreeSet};

/// What `compare` prints and how.
pub(super) struct CompareArgs {
    pub pipelines: Vec<PipelineArgs>,
    pub baseline: Option<String>,
    pub sort: Option<Metric>,
    pub format: Format,
}

/// Per strategy, the summed wall time of every cached stage its results depend on.
fn compute_times(
    p: &crate::spec::Pipeline,
    dag: &crate::graph::Dag,
    res: &[resolve::Resolved],
) -> BTreeMap<String, f64> {
    let wall: BTreeMap<_, f64> = res
        .iter()
        .filter_map(|r| Some((r.node, r.entry.as_ref()?.manifest().ok()?.run.wall_s)))
        .collect();
    p.strategies
        .iter()
        .map(|s| {
            let prefix = format!("{}/", s.name);
            let mut nodes = BTreeSet::new();
            for &n in dag.topo_order() {
                if dag.node(n).all_ids().any(|id| id.starts_with(&prefix)) {
                    nodes.extend(dag.upstream(n));
                }
            }
            let total = nodes.iter().filter_map(|n| wall.get(n)).sum();
            (s.name.clone(), total)
        })
        .collect()
}

/// Each strategy variant's own settings: the file's, with `--set` and the variant's sweep
/// values applied, so a swept row shows the value it ran with.
fn own_settings(
    p: &PipelineArgs,
    pipe: &crate::spec::Pipeline,
) -> Result<BTreeMap<String, compare::OwnSettings>, SpecErrors> {
    let src = crate::spec::read(&p.pipeline)?;
    // The axes in the order `load_sweep` takes them, so their short names are the ones the
    // variants' points use. `load` has parsed every `--sweep` already.
    let mut axes = src.axes.clone();
    axes.extend(p.sweep.iter().filter_map(|a| sweep::parse_flag(a).ok()));
    let short = sweep::short_names(&axes);
    let set: Vec<Override> = p.set.iter().map(|o| Override::set(o)).collect();
    let mut out = BTreeMap::new();
    for s in &pipe.strategies {
        let mut overrides = set.clone();
        for (name, shown) in &s.point {
            let at = short.iter().position(|x| x == name).and_then(|a| {
                let i = axes[a].shown.iter().position(|v| v == shown)?;
                Some(axes[a].point(i))
            });
            overrides.extend(at);
        }
        // A variant is named `NAME@point`, and a strategy's own name has no `@` (letters,
        // digits, `_` and `-` only).
        let strategy = s.name.split('@').next().unwrap_or(&s.name).to_string();
        let mut all = crate::spec::strategy_settings(&src, &overrides)?;
        let settings = all.remove(&strategy).unwrap_or_default();
        out.insert(s.name.clone(), compare::OwnSettings { strategy, settings });
    }
    Ok(out)
}

pub(super) fn compare_cmd(a: CompareArgs, c: &CacheLoc) -> Result<(), CliError> {
    let cache = open_cache_read(c);
    let mut loaded = Vec::new();
    let mut missing: Vec<(String, &PipelineArgs)> = Vec::new();
    for p in &a.pipelines {
        let (pipe, dag) = p.load(DataCheck::Required)?;
        let res = resolve::resolve(&dag, &cache);
        let results = crate::report::collect(&pipe, &dag, &res);
        for r in &results {
            missing.extend(r.missing.iter().map(|m| (m.clone(), p)));
        }
        let summaries = crate::report::summary::summarize(&results);
        let settings = crate::spec::settings(&p.pipeline, &p.set)
            .map_err(|e| CliError::Load(crate::LoadError::Spec(e)))?;
        let own = own_settings(p, &pipe).map_err(|e| CliError::Load(crate::LoadError::Spec(e)))?;
        let compute_s = compute_times(&pipe, &dag, &res);
        let points: BTreeMap<String, Vec<(String, String)>> = pipe
            .strategies
            .iter()
            .map(|s| (s.name.clone(), s.point.clone()))
            .collect();
        loaded.push((
            pipe.name.clone(),
            results,
            summaries,
            points,
            compute_s,
            settings,
            own,
        ));
    }
    // Two files of one name are told apart by their paths.
    let names: Vec<&String> = loaded.iter().map(|l| &l.0).collect();
    let inputs: Vec<compare::Input> = loaded
        .iter()
        .zip(&a.pipelines)
        .map(|(l, p)| compare::Input {
            label: if names.iter().filter(|n| **n == &l.0).count() > 1 {
                p.pipeline.display().to_string()
            } else {
                l.0.clone()
            },
            results: &l.1,
            summaries: &l.2,
            points: l.3.clone(),
            compute_s: l.4.clone(),
            settings: l.5.clone(),
            strategy_settings: l.6.clone(),
        })
        .collect();
    let mut rows = compare::rows(&inputs, a.baseline.as_deref()).map_err(CliError::BadOption)?;
    if let Some(m) = a.sort {
        compare::sort(&mut rows, m);
    }
    if !rows.is_empty() {
        out!("{}", compare::render(&rows, a.format).trim_end());
    }
    match missing.first() {
        None => Ok(()),
        Some((_, p)) => {
            let ids: Vec<String> = missing.iter().map(|(m, _)| m.clone()).collect();
            Err(super::missing_results(&ids, p, c))
        }
    }
}
