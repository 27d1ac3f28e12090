//! `cache push` and `cache pull`: moving the entries that pipelines reach (or every entry)
//! between the local cache and a remote. A stage's key depends on its inputs' *content*, so a
//! pull walks the DAG in rounds: each round pulls every stage whose key is now known, which
//! reveals the keys of the stages that read them, until a round pulls nothing.

use super::resolve;
use crate::cache::remote::{Pulled, Pushed, Remote, RemoteError};
use crate::cache::Cache;
use crate::digest::StageKey;
use crate::graph::Dag;
use std::collections::BTreeSet;

/// What a push or pull did, entry by entry.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Entries transferred: (stage id, key, bytes).
    pub moved: Vec<(String, StageKey, u64)>,
    /// Entries already on the other side.
    pub present: usize,
    /// Stages with nothing to transfer: not on the remote (pull) or not computed (push).
    pub unavailable: Vec<String>,
    /// Failures (verification, network); nothing of a failed entry was stored.
    pub errors: Vec<(String, RemoteError)>,
    pub wall_s: f64,
}

impl SyncReport {
    pub fn bytes(&self) -> u64 {
        self.moved.iter().map(|m| m.2).sum()
    }
}

/// Pull what `dags` need that the local cache lacks.
pub fn pull_dags(dags: &[Dag], cache: &Cache, remote: &Remote) -> SyncReport {
    let t = std::time::Instant::now();
    let mut rep = SyncReport::default();
    let mut tried: BTreeSet<StageKey> = BTreeSet::new();
    loop {
        let mut progress = false;
        for dag in dags {
            for r in resolve::resolve(dag, cache) {
                let id = &dag.node(r.node).id;
                let Some(key) = r.key else { continue };
                if r.entry.is_some() || !tried.insert(key) {
                    continue;
                }
                match remote.pull(cache, &key) {
                    Ok(Pulled::Fetched { bytes, .. }) => {
                        rep.moved.push((id.clone(), key, bytes));
                        progress = true;
                    }
                    Ok(Pulled::Local(_)) => rep.present += 1,
                    Ok(Pulled::Absent) => rep.unavailable.push(id.clone()),
                    Err(e) => rep.errors.push((id.clone(), e)),
                }
            }
        }
        if !progress {
            break;
        }
    }
    // Stages whose key stayed unknown (an input was never pulled) were not available either.
    for dag in dags {
        for r in resolve::resolve(dag, cache) {
            if r.key.is_none() {
                rep.unavailable.push(dag.node(r.node).id.clone());
            }
        }
    }
    rep.wall_s = t.elapsed().as_secs_f64();
    rep
}

/// Push every entry `dags` reach that the local cache holds.
pub fn push_dags(dags: &[Dag], cache: &Cache, remote: &Remote) -> SyncReport {
    let t = std::time::Instant::now();
    let mut rep = SyncReport::default();
    let mut done: BTreeSet<StageKey> = BTreeSet::new();
    for dag in dags {
        for r in resolve::resolve(dag, cache) {
            let id = dag.node(r.node).id.clone();
            match (r.key, r.entry.is_some()) {
                (Some(key), true) if done.insert(key) => push_one(&mut rep, cache, remote, id, key),
                (Some(_), true) => {}
                _ => rep.unavailable.push(id),
            }
        }
    }
    rep.wall_s = t.elapsed().as_secs_f64();
    rep
}

/// Push every local entry.
pub fn push_all(cache: &Cache, remote: &Remote) -> Result<SyncReport, RemoteError> {
    let t = std::time::Instant::now();
    let mut rep = SyncReport::default();
    for key in cache.keys()? {
        let id = cache
            .read_manifest(&key)
            .map(|m| m.stage_id)
            .unwrap_or_else(|| key.short());
        push_one(&mut rep, cache, remote, id, key);
    }
    rep.wall_s = t.elapsed().as_secs_f64();
    Ok(rep)
}

/// Pull every complete entry on the remote.
pub fn pull_all(cache: &Cache, remote: &Remote) -> Result<SyncReport, RemoteError> {
    let t = std::time::Instant::now();
    let mut rep = SyncReport::default();
    for key in remote.keys()? {
        match remote.pull(cache, &key) {
            Ok(Pulled::Fetched { entry, bytes }) => {
                rep.moved
                    .push((entry.manifest.stage_id.clone(), key, bytes))
            }
            Ok(Pulled::Local(_)) => rep.present += 1,
            Ok(Pulled::Absent) => rep.unavailable.push(key.short()),
            Err(e) => rep.errors.push((key.short(), e)),
        }
    }
    rep.wall_s = t.elapsed().as_secs_f64();
    Ok(rep)
}

fn push_one(rep: &mut SyncReport, cache: &Cache, remote: &Remote, id: String, key: StageKey) {
    match remote.push(cache, &key) {
        Ok(Pushed::Uploaded { bytes }) => rep.moved.push((id, key, bytes)),
        Ok(Pushed::AlreadyThere) => rep.present += 1,
        Err(e) => rep.errors.push((id, e)),
    }
}
