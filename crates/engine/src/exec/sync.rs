//! `cache push` and `cache pull`: moving the entries that pipelines reach (or every entry)
//! between the local cache and a remote. A stage's key depends on its inputs' *content*, so a
//! pull walks the DAG in dependency order: pulling a stage reveals the keys of the stages that
//! read it.

use super::{hash_files, stage_key};
use crate::cache::remote::{Pulled, Pushed, Remote, RemoteError};
use crate::cache::Cache;
use crate::digest::{ContentHash, StageKey};
use crate::graph::Dag;
use petgraph::graph::NodeIndex;
use std::collections::{BTreeMap, HashMap, HashSet};

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

/// Entries transferred at once: transfers wait on the network and on fsync, not the CPU.
const PARALLEL_ENTRIES: usize = 8;

/// What visiting one key found or did.
struct Visit {
    /// The entry's content hash, if the local cache now holds it.
    hash: Option<ContentHash>,
    what: Did,
}

enum Did {
    Moved(u64),
    Present,
    Unavailable,
    Failed(RemoteError),
}

fn record(rep: &mut SyncReport, id: &str, key: StageKey, v: Visit) -> Option<ContentHash> {
    match v.what {
        Did::Moved(bytes) => rep.moved.push((id.to_string(), key, bytes)),
        Did::Present => rep.present += 1,
        Did::Unavailable => rep.unavailable.push(id.to_string()),
        Did::Failed(e) => rep.errors.push((id.to_string(), e)),
    }
    v.hash
}

fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
    use rayon::prelude::*;
    match rayon::ThreadPoolBuilder::new()
        .num_threads(PARALLEL_ENTRIES)
        .build()
    {
        Ok(pool) => pool.install(|| items.par_iter().map(&f).collect()),
        Err(_) => items.iter().map(f).collect(),
    }
}

/// Walk each DAG in dependency order, in waves: every stage whose inputs are settled gets its
/// key (derived from their content, as the executor derives it) and is visited, all of a wave
/// in parallel; `visit` says whether the local cache now holds the entry. Stages downstream of
/// one it does not hold are unavailable. Local entries are read by manifest here, not
/// re-hashed: `push` verifies what it sends, and `run` verifies every entry it uses.
fn walk(
    dags: &[Dag],
    cache: &Cache,
    rep: &mut SyncReport,
    visit: impl Fn(StageKey) -> Visit + Sync + Send,
) {
    let hasher = cache.file_hasher();
    let mut known: HashMap<StageKey, Option<ContentHash>> = HashMap::new();
    for dag in dags {
        let mut content: HashMap<NodeIndex, ContentHash> = HashMap::new();
        let mut settled: HashSet<NodeIndex> = HashSet::new();
        loop {
            let mut wave: Vec<(NodeIndex, StageKey)> = Vec::new();
            for &n in dag.topo_order() {
                if settled.contains(&n) {
                    continue;
                }
                let node = dag.node(n);
                if node.inputs.values().any(|f| !settled.contains(f)) {
                    continue;
                }
                let inputs: Option<BTreeMap<String, ContentHash>> = node
                    .inputs
                    .iter()
                    .map(|(slot, from)| content.get(from).map(|h| (slot.clone(), *h)))
                    .collect();
                let files = hash_files(&hasher, &node.id, &node.files);
                match (inputs, files) {
                    (Some(inputs), Ok(files)) => wave.push((
                        n,
                        stage_key(&node.kind, node.version, &node.params, &inputs, &files),
                    )),
                    _ => {
                        settled.insert(n);
                        rep.unavailable.push(node.id.clone());
                    }
                }
            }
            if wave.is_empty() {
                break;
            }
            let mut fresh: Vec<StageKey> = wave
                .iter()
                .map(|(_, k)| *k)
                .filter(|k| !known.contains_key(k))
                .collect();
            fresh.sort();
            fresh.dedup();
            let visits = in_parallel(&fresh, |k| visit(*k));
            for (key, v) in fresh.into_iter().zip(visits) {
                let id = wave
                    .iter()
                    .find(|(_, k)| *k == key)
                    .map(|(n, _)| dag.node(*n).id.as_str())
                    .unwrap_or_default();
                let h = record(rep, id, key, v);
                known.insert(key, h);
            }
            for (n, key) in wave {
                settled.insert(n);
                if let Some(h) = known[&key] {
                    content.insert(n, h);
                }
            }
        }
    }
    let _ = hasher.save();
    let _ = cache.save_verified();
}

/// Pull what `dags` need that the local cache lacks.
pub fn pull_dags(dags: &[Dag], cache: &Cache, remote: &Remote) -> SyncReport {
    let t = std::time::Instant::now();
    let mut rep = SyncReport::default();
    walk(dags, cache, &mut rep, |key| pull_visit(cache, remote, key));
    rep.wall_s = t.elapsed().as_secs_f64();
    rep
}

/// Push every entry `dags` reach that the local cache holds.
pub fn push_dags(dags: &[Dag], cache: &Cache, remote: &Remote) -> SyncReport {
    let t = std::time::Instant::now();
    let mut rep = SyncReport::default();
    walk(dags, cache, &mut rep, |key| push_visit(cache, remote, key));
    rep.wall_s = t.elapsed().as_secs_f64();
    rep
}

/// Push every local entry.
pub fn push_all(cache: &Cache, remote: &Remote) -> Result<SyncReport, RemoteError> {
    visit_keys(cache, cache.keys()?, |k| push_visit(cache, remote, k))
}

/// Pull every complete entry on the remote.
pub fn pull_all(cache: &Cache, remote: &Remote) -> Result<SyncReport, RemoteError> {
    visit_keys(cache, remote.keys()?, |k| pull_visit(cache, remote, k))
}

/// Visit `keys` in parallel, naming each by the stage id its local manifest records.
fn visit_keys(
    cache: &Cache,
    keys: Vec<StageKey>,
    visit: impl Fn(StageKey) -> Visit + Sync,
) -> Result<SyncReport, RemoteError> {
    let t = std::time::Instant::now();
    let mut rep = SyncReport::default();
    let visits = in_parallel(&keys, |k| visit(*k));
    for (key, v) in keys.into_iter().zip(visits) {
        let id = cache
            .read_manifest(&key)
            .map(|m| m.stage_id)
            .unwrap_or_else(|| key.short());
        record(&mut rep, &id, key, v);
    }
    rep.wall_s = t.elapsed().as_secs_f64();
    Ok(rep)
}

fn pull_visit(cache: &Cache, remote: &Remote, key: StageKey) -> Visit {
    if let Some(m) = cache.read_manifest(&key) {
        return Visit {
            hash: Some(m.content_hash),
            what: Did::Present,
        };
    }
    match remote.pull(cache, &key) {
        Ok(Pulled::Fetched { entry, bytes }) => Visit {
            hash: Some(entry.content_hash()),
            what: Did::Moved(bytes),
        },
        Ok(Pulled::Local(entry)) => Visit {
            hash: Some(entry.content_hash()),
            what: Did::Present,
        },
        Ok(Pulled::Absent) => Visit {
            hash: None,
            what: Did::Unavailable,
        },
        Err(e) => Visit {
            hash: None,
            what: Did::Failed(e),
        },
    }
}

/// A failed push still lets the stages downstream be pushed: their keys are known locally.
fn push_visit(cache: &Cache, remote: &Remote, key: StageKey) -> Visit {
    let Some(m) = cache.read_manifest(&key) else {
        return Visit {
            hash: None,
            what: Did::Unavailable,
        };
    };
    let what = match remote.push(cache, &key) {
        Ok(Pushed::Uploaded { bytes } | Pushed::Replaced { bytes }) => Did::Moved(bytes),
        Ok(Pushed::AlreadyThere) => Did::Present,
        Err(e) => Did::Failed(e),
    };
    Visit {
        hash: Some(m.content_hash),
        what,
    }
}
