//! `cfpipe log STAGE`: one cached stage's log, and for a train stage its training curve, by
//! stage id (found through `--pipeline`, twins included, or among the cache's manifests) or by
//! key.

use super::output::out;
use super::{open_cache_read, CacheLoc};
use crate::cache::{Cache, Entry, Lookup};
use crate::error::CliError;
use crate::exec::resolve;
use crate::spec::DataCheck;

/// Where `log` looks for its stage.
pub(super) struct LogArgs {
    pub stage: String,
    /// The pipeline (with `--set` and `--sweep`) whose stage id it is.
    pub pipeline: Option<super::PipelineArgs>,
}

fn hit(cache: &Cache, key: &crate::digest::StageKey) -> Option<Entry> {
    match cache.lookup(key) {
        Lookup::Hit(e) => Some(*e),
        _ => None,
    }
}

/// The entry for `a.stage`: through the pipeline's DAG, or the manifests (id or key prefix).
/// When an entry was computed (0 if its manifest cannot be read now).
fn started(e: &Entry) -> u128 {
    e.manifest().map_or(0, |m| m.run.started_unix_ms)
}

fn find(a: &LogArgs, cache: &Cache) -> Result<Entry, CliError> {
    if let Some(p) = &a.pipeline {
        let (_, dag) = p.load(DataCheck::Required)?;
        let n = dag.find(&a.stage).ok_or_else(|| {
            CliError::BadOption(format!(
                "no stage `{}` in {} (list them with `cfpipe dag {}`)",
                a.stage,
                p.pipeline.display(),
                p.pipeline.display()
            ))
        })?;
        let r = resolve::resolve(&dag, cache)
            .into_iter()
            .find(|r| r.node == n)
            .and_then(|r| r.entry);
        return r.ok_or_else(|| CliError::NoSuchEntry {
            id: a.stage.clone(),
            searched: format!(
                "in the cache (compute it with `cfpipe run {}`)",
                p.pipeline.display()
            ),
        });
    }
    let by_key = a.stage.len() >= 8 && a.stage.bytes().all(|b| b.is_ascii_hexdigit());
    let mut found: Option<Entry> = None;
    for k in cache.keys()? {
        let matches = if by_key {
            k.to_hex().starts_with(&a.stage.to_ascii_lowercase())
        } else {
            cache
                .read_manifest(&k)
                .is_some_and(|m| m.stage_id == a.stage)
        };
        if matches {
            // The newest of several entries of one id (reruns with other settings).
            if let Some(e) = hit(cache, &k) {
                if found.as_ref().is_none_or(|f| started(f) < started(&e)) {
                    found = Some(e);
                }
            }
        }
    }
    found.ok_or_else(|| CliError::NoSuchEntry {
        id: a.stage.clone(),
        searched: "among the cache's entries (an entry is filed under the id that first computed it; give `--pipeline` to find a stage by any of its ids)".into(),
    })
}

pub(super) fn log_cmd(a: LogArgs, c: &CacheLoc) -> Result<(), CliError> {
    let cache = open_cache_read(c);
    let e = find(&a, &cache)?;
    let m = e.manifest()?;
    out!(
        "{} ({}), key {}: {:.2} s on {}",
        m.stage_id,
        m.kind,
        m.key.to_hex(),
        m.run.wall_s,
        m.run.device
    );
    let log = std::fs::read_to_string(e.aux_path("log.txt")).unwrap_or_default();
    if !log.trim().is_empty() {
        out!("{}", log.trim_end());
    }
    let curve = crate::report::curve(Some(&e));
    if let Some(epochs) = curve.filter(|c| !c.is_empty()) {
        out!("\nepoch      loss  train acc");
        for p in epochs {
            out!(
                "{:>5}  {:>8.5}  {:>8.2}%",
                p.epoch,
                p.mean_loss,
                p.train_accuracy * 100.0
            );
        }
    }
    Ok(())
}
