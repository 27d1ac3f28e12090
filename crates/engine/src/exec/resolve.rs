//! Resolving a DAG against the cache without running anything: which stages are cached, their
//! keys and entries, and for each one that would run, why. `status`, `show`, `report` and
//! `cache gc` all read the cache through this one walk.

use super::{hash_files, stage_key, ExecError};
use crate::cache::{Cache, Entry, Lookup};
use crate::digest::{ContentHash, StageKey};
use crate::graph::Dag;
use petgraph::graph::NodeIndex;
use std::collections::{BTreeMap, HashMap};

/// Why a stage is or is not served from the cache.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    Hit,
    /// No record of this stage id ever running in this cache.
    NeverRun,
    /// These parameter key paths differ from the last run (`path: old -> new`).
    ParamChanged(Vec<String>),
    /// These inputs now have different content.
    InputChanged(Vec<String>),
    /// These input files now have different content.
    FileChanged(Vec<String>),
    /// Same parameters and inputs as last time but the entry is gone (gc'd, or the stage
    /// implementation version changed).
    EntryMissing,
    /// The entry exists and fails verification.
    Corrupt {
        file: String,
        reason: String,
    },
    /// Its key cannot be known until this input is computed.
    WaitingOn(String),
    /// An input data file could not be read.
    FileError(String),
}

impl Reason {
    pub fn describe(&self) -> String {
        match self {
            Reason::Hit => "cached".into(),
            Reason::NeverRun => "never run".into(),
            Reason::ParamChanged(p) => format!("parameter changed: {}", p.join("; ")),
            Reason::InputChanged(i) => format!("input changed: {}", i.join(", ")),
            Reason::FileChanged(f) => format!("data file changed: {}", f.join(", ")),
            Reason::EntryMissing => "entry missing (gc'd or implementation version changed)".into(),
            Reason::Corrupt { file, reason } => format!("corrupt entry ({file}: {reason})"),
            Reason::WaitingOn(id) => format!("waits on `{id}`, which will run"),
            Reason::FileError(e) => format!("input file unreadable: {e}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Resolved {
    pub node: NodeIndex,
    pub key: Option<StageKey>,
    pub entry: Option<Entry>,
    pub reason: Reason,
}

impl Resolved {
    pub fn cached(&self) -> bool {
        self.reason == Reason::Hit
    }
}

/// Walk the DAG in dependency order, resolving each stage against the cache.
pub fn resolve(dag: &Dag, cache: &Cache) -> Vec<Resolved> {
    let hasher = cache.file_hasher();
    let mut out: HashMap<NodeIndex, Resolved> = HashMap::new();
    let mut order = Vec::new();
    for &n in dag.topo_order() {
        let node = dag.node(n);
        order.push(n);
        let mut inputs: BTreeMap<String, ContentHash> = BTreeMap::new();
        let mut waiting = None;
        for (slot, from) in &node.inputs {
            match out.get(from).and_then(|r| r.entry.as_ref()) {
                Some(e) => {
                    inputs.insert(slot.clone(), e.content_hash());
                }
                None => {
                    waiting = Some(dag.node(*from).id.clone());
                    break;
                }
            }
        }
        let resolved = if let Some(w) = waiting {
            Resolved {
                node: n,
                key: None,
                entry: None,
                reason: Reason::WaitingOn(w),
            }
        } else {
            match hash_files(&hasher, &node.id, &node.files) {
                Err(ExecError::InputFile { path, source, .. }) => Resolved {
                    node: n,
                    key: None,
                    entry: None,
                    reason: Reason::FileError(format!("{}: {source}", path.display())),
                },
                Err(e) => Resolved {
                    node: n,
                    key: None,
                    entry: None,
                    reason: Reason::FileError(e.to_string()),
                },
                Ok(files) => {
                    let key = stage_key(&node.kind, node.version, &node.params, &inputs, &files);
                    let (entry, reason) = match cache.lookup(&key) {
                        Lookup::Hit(e) => (Some(*e), Reason::Hit),
                        Lookup::Corrupt { file, reason } => {
                            (None, Reason::Corrupt { file, reason })
                        }
                        Lookup::Missing => {
                            (None, why_missing(cache, dag.scope(), node, &inputs, &files))
                        }
                    };
                    Resolved {
                        node: n,
                        key: Some(key),
                        entry,
                        reason,
                    }
                }
            }
        };
        out.insert(n, resolved);
    }
    if !cache.is_read_only() {
        let _ = hasher.save();
        let _ = cache.save_verified();
    }
    order
        .into_iter()
        .map(|n| out.remove(&n).expect("resolved every node"))
        .collect()
}

fn why_missing(
    cache: &Cache,
    scope: &str,
    node: &crate::graph::StageNode,
    inputs: &BTreeMap<String, ContentHash>,
    files: &BTreeMap<String, ContentHash>,
) -> Reason {
    let Some(rec) = cache.stage_record(scope, &node.id) else {
        return Reason::NeverRun;
    };
    let params = json_diff(&rec.params, &node.params, "");
    if !params.is_empty() {
        return Reason::ParamChanged(params);
    }
    let changed = |a: &BTreeMap<String, ContentHash>, b: &BTreeMap<String, ContentHash>| {
        b.iter()
            .filter(|(k, v)| a.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect::<Vec<_>>()
    };
    let ins = changed(&rec.inputs, inputs);
    if !ins.is_empty() {
        return Reason::InputChanged(ins);
    }
    let fs = changed(&rec.files, files);
    if !fs.is_empty() {
        return Reason::FileChanged(fs);
    }
    Reason::EntryMissing
}

/// Key paths whose values differ, rendered as `path: old -> new`.
pub fn json_diff(old: &serde_json::Value, new: &serde_json::Value, prefix: &str) -> Vec<String> {
    use serde_json::Value;
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    let null = Value::Null;
                    json_diff(
                        a.get(k).unwrap_or(&null),
                        b.get(k).unwrap_or(&null),
                        &join(k),
                    )
                })
                .collect()
        }
        (a, b) if a == b => vec![],
        (a, b) => vec![format!(
            "{}: {} -> {}",
            if prefix.is_empty() { "(root)" } else { prefix },
            a,
            b
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::json_diff;
    use serde_json::json;

    #[test]
    fn diff_names_nested_paths() {
        let d = json_diff(
            &json!({"prune": {"threshold": 0.02, "ratio": 0.1}, "task": 1}),
            &json!({"prune": {"threshold": 0.05, "ratio": 0.1}, "task": 1}),
            "",
        );
        assert_eq!(d, vec!["prune.threshold: 0.02 -> 0.05".to_string()]);
    }
}
