//! The stage DAG: declarations by readable id are resolved into a petgraph graph, checked for
//! missing inputs and cycles, and structurally identical stages (same kind, version, params,
//! files and identical inputs) are merged into one node. That merge is what lets two strategies
//! or two seeds share a split or a task-1 training: they declare it twice and it runs once.
//!
//! Like the rest of the engine, this module knows nothing about what a stage computes.

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// One stage as a pipeline compiler declares it.
#[derive(Debug, Clone)]
pub struct StageDecl {
    /// Readable, unique id such as `rnf/seed0/task2/prune`.
    pub id: String,
    pub kind: String,
    /// Implementation version of the kind; bumping it invalidates cached results.
    pub version: u32,
    /// Canonicalisable parameters; everything that changes the result must be in here.
    pub params: serde_json::Value,
    /// Input slot → id of the producing stage.
    pub inputs: BTreeMap<String, String>,
    /// File role → path of an external input file (hashed into the key by content).
    pub files: BTreeMap<String, PathBuf>,
}

/// A resolved stage.
#[derive(Debug, Clone)]
pub struct StageNode {
    pub id: String,
    /// Ids of identical declarations merged into this node.
    pub aliases: Vec<String>,
    pub kind: String,
    pub version: u32,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, NodeIndex>,
    pub files: BTreeMap<String, PathBuf>,
}

impl StageNode {
    /// The primary id followed by aliases.
    pub fn all_ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.id.as_str()).chain(self.aliases.iter().map(|s| s.as_str()))
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GraphError {
    #[error("stage id `{0}` is declared twice")]
    DuplicateId(String),
    #[error("stage `{stage}`: input `{slot}` refers to stage `{missing}`, which is not declared")]
    MissingInput {
        stage: String,
        slot: String,
        missing: String,
    },
    #[error("stage `{stage}` depends on itself through a cycle: {}", path.join(" -> "))]
    Cycle { stage: String, path: Vec<String> },
}

/// What makes two declarations one stage: kind, version, parameters (as canonical JSON),
/// the structure of each input, and the files. Never stored, so only its equalities matter;
/// each field is length-prefixed so that no two declarations run together alike.
fn structure(d: &StageDecl, inputs: &BTreeMap<&str, [u8; 32]>) -> [u8; 32] {
    use std::os::unix::ffi::OsStrExt;
    let mut h = blake3::Hasher::new();
    let mut field = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(d.kind.as_bytes());
    field(&d.version.to_le_bytes());
    field(&crate::digest::canonical_json(&d.params));
    field(&(inputs.len() as u64).to_le_bytes());
    for (slot, structure) in inputs {
        field(slot.as_bytes());
        field(structure);
    }
    field(&(d.files.len() as u64).to_le_bytes());
    for (role, path) in &d.files {
        field(role.as_bytes());
        field(path.as_os_str().as_bytes());
    }
    *h.finalize().as_bytes()
}

/// A checked, deduplicated DAG of stages. Edges point from producer to consumer.
#[derive(Debug, Clone)]
pub struct Dag {
    graph: DiGraph<StageNode, String>,
    order: Vec<NodeIndex>,
    by_id: HashMap<String, NodeIndex>,
    /// The namespace of this DAG's stage ids (a pipeline's name): the cache remembers the
    /// last run of `rnf/seed0/task1/train` per scope, so that two pipelines with the same ids
    /// do not explain their reruns against each other. Empty: the one shared namespace.
    scope: String,
}

impl Dag {
    pub fn build(mut decls: Vec<StageDecl>) -> Result<Dag, GraphError> {
        // 1. Graph over declarations, to find missing inputs and cycles by id. Each input is
        //    resolved to its producer's index here, once, in the order of its slots.
        let mut g: DiGraph<usize, ()> = DiGraph::with_capacity(decls.len(), decls.len());
        let mut sources: Vec<Vec<usize>> = Vec::with_capacity(decls.len());
        {
            let mut idx: HashMap<&str, usize> = HashMap::with_capacity(decls.len());
            for (i, d) in decls.iter().enumerate() {
                g.add_node(i);
                if idx.insert(d.id.as_str(), i).is_some() {
                    return Err(GraphError::DuplicateId(d.id.clone()));
                }
            }
            for (i, d) in decls.iter().enumerate() {
                let mut from = Vec::with_capacity(d.inputs.len());
                for (slot, src) in &d.inputs {
                    let Some(&j) = idx.get(src.as_str()) else {
                        return Err(GraphError::MissingInput {
                            stage: d.id.clone(),
                            slot: slot.clone(),
                            missing: src.clone(),
                        });
                    };
                    g.add_edge(NodeIndex::new(j), NodeIndex::new(i), ());
                    from.push(j);
                }
                sources.push(from);
            }
        }
        petgraph::algo::toposort(&g, None).map_err(|c| {
            let start = c.node_id();
            let stage = decls[g[start]].id.clone();
            GraphError::Cycle {
                path: cycle_path(&g, start, &decls),
                stage,
            }
        })?;
        let topo = stable_topo(&g);

        // 2. Merge structurally identical declarations, in dependency order. A declaration
        //    that becomes a node gives it its fields (moved, not copied: a large sweep
        //    declares thousands).
        let mut out: DiGraph<StageNode, String> = DiGraph::with_capacity(decls.len(), decls.len());
        let mut by_struct: HashMap<[u8; 32], NodeIndex> = HashMap::with_capacity(decls.len());
        let mut struct_of: Vec<[u8; 32]> = vec![[0; 32]; decls.len()];
        let mut node_of: Vec<NodeIndex> = vec![NodeIndex::end(); decls.len()];
        let mut by_id = HashMap::with_capacity(decls.len());
        for n in topo {
            let i = g[n];
            let d = &mut decls[i];
            let inputs: BTreeMap<&str, [u8; 32]> = d
                .inputs
                .keys()
                .zip(&sources[i])
                .map(|(s, &j)| (s.as_str(), struct_of[j]))
                .collect();
            let h = structure(d, &inputs);
            drop(inputs);
            struct_of[i] = h;
            let id = std::mem::take(&mut d.id);
            let node = match by_struct.get(&h) {
                Some(&existing) => {
                    out[existing].aliases.push(id.clone());
                    existing
                }
                None => {
                    let inputs: BTreeMap<String, NodeIndex> = std::mem::take(&mut d.inputs)
                        .into_keys()
                        .zip(&sources[i])
                        .map(|(s, &j)| (s, node_of[j]))
                        .collect();
                    let edges: Vec<(NodeIndex, String)> =
                        inputs.iter().map(|(s, &f)| (f, s.clone())).collect();
                    let ni = out.add_node(StageNode {
                        id: id.clone(),
                        aliases: vec![],
                        kind: std::mem::take(&mut d.kind),
                        version: d.version,
                        params: d.params.take(),
                        inputs,
                        files: std::mem::take(&mut d.files),
                    });
                    for (from, slot) in edges {
                        out.add_edge(from, ni, slot);
                    }
                    by_struct.insert(h, ni);
                    ni
                }
            };
            node_of[i] = node;
            by_id.insert(id, node);
        }
        let order = stable_topo(&out);
        Ok(Dag {
            graph: out,
            order,
            by_id,
            scope: String::new(),
        })
    }

    /// Nodes in a dependency-respecting order.
    /// This DAG in the id namespace `scope` (see [`Dag::scope`]).
    pub fn with_scope(mut self, scope: impl Into<String>) -> Dag {
        self.scope = scope.into();
        self
    }

    /// The namespace of this DAG's stage ids.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    pub fn topo_order(&self) -> &[NodeIndex] {
        &self.order
    }
    pub fn node(&self, n: NodeIndex) -> &StageNode {
        &self.graph[n]
    }

    /// The parameters of node `n`, to change a choice that only the whole graph can make
    /// (which outputs some consumer reads). Nodes were merged by structure before: a change
    /// that made two nodes equal would only cost their computing the same key twice, which
    /// the executor serves once.
    pub fn params_mut(&mut self, n: NodeIndex) -> &mut serde_json::Value {
        &mut self.graph[n].params
    }
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }
    /// Resolve any id (primary or alias).
    pub fn find(&self, id: &str) -> Option<NodeIndex> {
        self.by_id.get(id).copied()
    }
    /// Stages that consume `n`'s output.
    pub fn consumers(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut v: Vec<_> = self
            .graph
            .neighbors_directed(n, Direction::Outgoing)
            .collect();
        v.sort();
        v.dedup();
        v
    }
    /// `n` and everything downstream of it.
    pub fn downstream(&self, n: NodeIndex) -> Vec<NodeIndex> {
        self.reachable(n, Direction::Outgoing)
    }

    /// `n` and everything it depends on: what must be cached or computed to have `n`.
    pub fn upstream(&self, n: NodeIndex) -> Vec<NodeIndex> {
        self.reachable(n, Direction::Incoming)
    }

    fn reachable(&self, n: NodeIndex, dir: Direction) -> Vec<NodeIndex> {
        let mut seen = vec![false; self.graph.node_count()];
        let mut stack = vec![n];
        let mut out = vec![];
        while let Some(x) = stack.pop() {
            if std::mem::replace(&mut seen[x.index()], true) {
                continue;
            }
            out.push(x);
            stack.extend(self.graph.neighbors_directed(x, dir));
        }
        out
    }

    /// Declarations of `nodes` under their primary ids, to build a DAG of part of this one
    /// (with `upstream`, a DAG that computes one target), perhaps with stages added. `nodes`
    /// must hold the inputs of each of them.
    pub fn decls(&self, nodes: &[NodeIndex]) -> Vec<StageDecl> {
        let mut nodes = nodes.to_vec();
        nodes.sort();
        nodes.dedup();
        nodes
            .iter()
            .map(|&n| {
                let s = self.node(n);
                StageDecl {
                    id: s.id.clone(),
                    kind: s.kind.clone(),
                    version: s.version,
                    params: s.params.clone(),
                    inputs: s
                        .inputs
                        .iter()
                        .map(|(slot, &i)| (slot.clone(), self.node(i).id.clone()))
                        .collect(),
                    files: s.files.clone(),
                }
            })
            .collect()
    }

    /// A readable listing: each stage in dependency order with its kind and inputs.
    pub fn render_text(&self) -> String {
        self.order
            .iter()
            .map(|&n| self.render_block(n, &|id| id.to_string()))
            .collect()
    }

    /// Stage `n` as [`Dag::render_text`] draws it (its id and kind, its other ids, its
    /// inputs), every id shown through `name`.
    pub fn render_block(&self, n: NodeIndex, name: &dyn Fn(&str) -> String) -> String {
        let node = &self.graph[n];
        let mut s = format!("{}  [{}]\n", name(&node.id), node.kind);
        for alias in &node.aliases {
            s.push_str(&format!("  = {}\n", name(alias)));
        }
        let ins: Vec<_> = node.inputs.iter().collect();
        for (i, (slot, from)) in ins.iter().enumerate() {
            let branch = if i + 1 == ins.len() {
                "└─"
            } else {
                "├─"
            };
            s.push_str(&format!(
                "  {branch} {slot} <- {}\n",
                name(&self.graph[**from].id)
            ));
        }
        s
    }

    /// Graphviz source.
    pub fn render_dot(&self) -> String {
        let mut s = String::from(
            "digraph cfpipe {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for &n in &self.order {
            let node = &self.graph[n];
            let mut label = format!("{}\\n[{}]", node.id, node.kind);
            for a in &node.aliases {
                label.push_str(&format!("\\n= {a}"));
            }
            s.push_str(&format!(
                "  n{} [label=\"{}\"];\n",
                n.index(),
                label.replace('"', "'")
            ));
        }
        for e in self.graph.edge_references() {
            s.push_str(&format!(
                "  n{} -> n{} [label=\"{}\"];\n",
                e.source().index(),
                e.target().index(),
                e.weight()
            ));
        }
        s.push_str("}\n");
        s
    }
}

/// Kahn's algorithm that always takes the earliest-declared ready node, so ids, listings and
/// the choice of a merged node's primary id follow the order the pipeline declared them in.
fn stable_topo<N, E>(g: &DiGraph<N, E>) -> Vec<NodeIndex> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut indeg: Vec<usize> = g
        .node_indices()
        .map(|n| g.neighbors_directed(n, Direction::Incoming).count())
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> = g
        .node_indices()
        .filter(|n| indeg[n.index()] == 0)
        .map(|n| Reverse(n.index()))
        .collect();
    let mut out = Vec::with_capacity(g.node_count());
    while let Some(Reverse(i)) = ready.pop() {
        let n = NodeIndex::new(i);
        out.push(n);
        for m in g.neighbors_directed(n, Direction::Outgoing) {
            indeg[m.index()] -= 1;
            if indeg[m.index()] == 0 {
                ready.push(Reverse(m.index()));
            }
        }
    }
    out
}

fn cycle_path(g: &DiGraph<usize, ()>, start: NodeIndex, decls: &[StageDecl]) -> Vec<String> {
    // Walk successors that can reach `start` again; a DFS over a small graph is plenty.
    fn dfs(
        g: &DiGraph<usize, ()>,
        at: NodeIndex,
        goal: NodeIndex,
        seen: &mut Vec<bool>,
        path: &mut Vec<NodeIndex>,
    ) -> bool {
        for nx in g.neighbors_directed(at, Direction::Outgoing) {
            if nx == goal {
                return true;
            }
            if !std::mem::replace(&mut seen[nx.index()], true) {
                path.push(nx);
                if dfs(g, nx, goal, seen, path) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut seen = vec![false; g.node_count()];
    let mut path = vec![start];
    dfs(g, start, start, &mut seen, &mut path);
    path.push(start);
    path.into_iter().map(|n| decls[g[n]].id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decl(id: &str, kind: &str, params: serde_json::Value, inputs: &[(&str, &str)]) -> StageDecl {
        StageDecl {
            id: id.into(),
            kind: kind.into(),
            version: 1,
            params,
            inputs: inputs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            files: Default::default(),
        }
    }

    #[test]
    fn a_target_with_its_upstream_rebuilds_as_a_dag_of_its_own_plus_added_stages() {
        let dag = Dag::build(vec![
            decl("split", "split", json!({}), &[]),
            decl("t1", "train", json!({"lr": 1}), &[("data", "split")]),
            decl(
                "t2",
                "train",
                json!({"lr": 2}),
                &[("data", "split"), ("prev", "t1")],
            ),
            decl("other", "train", json!({"lr": 3}), &[("data", "split")]),
        ])
        .unwrap();
        let t2 = dag.find("t2").unwrap();
        let mut ids: Vec<&str> = dag
            .upstream(t2)
            .iter()
            .map(|&n| dag.node(n).id.as_str())
            .collect();
        ids.sort();
        assert_eq!(ids, ["split", "t1", "t2"]);
        let mut decls = dag.decls(&dag.upstream(t2));
        decls.push(decl(
            "look",
            "explain",
            json!({}),
            &[("model", "t2"), ("split", "split")],
        ));
        let part = Dag::build(decls).unwrap();
        assert_eq!(part.len(), 4);
        assert!(part.find("other").is_none());
        let t2p = part.node(part.find("t2").unwrap());
        assert_eq!(t2p.params, json!({"lr": 2}));
        assert_eq!(part.node(t2p.inputs["prev"]).id, "t1");
    }

    #[test]
    fn identical_stages_merge_and_different_ones_do_not() {
        let dag = Dag::build(vec![
            decl("a/split", "split", json!({}), &[]),
            decl("b/split", "split", json!({}), &[]),
            decl("a/train", "train", json!({"lr": 1}), &[("data", "a/split")]),
            decl("b/train", "train", json!({"lr": 1}), &[("data", "b/split")]),
            decl("c/train", "train", json!({"lr": 2}), &[("data", "b/split")]),
        ])
        .unwrap();
        assert_eq!(dag.len(), 3);
        assert_eq!(dag.find("a/train"), dag.find("b/train"));
        assert_ne!(dag.find("a/train"), dag.find("c/train"));
        assert_eq!(dag.node(dag.find("b/split").unwrap()).id, "a/split");
    }

    #[test]
    fn missing_input_is_named() {
        let err = Dag::build(vec![decl("t", "train", json!({}), &[("data", "nope")])]).unwrap_err();
        assert_eq!(
            err,
            GraphError::MissingInput {
                stage: "t".into(),
                slot: "data".into(),
                missing: "nope".into()
            }
        );
    }

    #[test]
    fn cycle_is_reported_by_stage_id() {
        let err = Dag::build(vec![
            decl("x", "k", json!({}), &[("in", "y")]),
            decl("y", "k", json!({}), &[("in", "x")]),
        ])
        .unwrap_err();
        match err {
            GraphError::Cycle { stage, path } => {
                assert!(stage == "x" || stage == "y");
                assert_eq!(path.first(), path.last());
                assert_eq!(path.len(), 3);
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let err = Dag::build(vec![
            decl("x", "k", json!({}), &[]),
            decl("x", "k", json!({}), &[]),
        ]);
        assert_eq!(err.unwrap_err(), GraphError::DuplicateId("x".into()));
    }
}
