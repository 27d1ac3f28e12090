//! Narrowing `status`, `plan` and `dag` down on a large pipeline: stage filters by strategy,
//! seed and kind, and `dag`'s one line per stage whatever the seed.

use crate::exec::resolve::{self, Resolved};
use crate::graph::{Dag, StageNode};
use crate::spec::DataCheck;
use clap::Args;

/// Which stages a listing shows (a stage shows when any of its ids matches).
#[derive(Debug, Args, Clone, Default)]
pub struct StageFilter {
    /// Only stages of this strategy, and of its sweep variants (`--strategy rnf` shows
    /// `rnf@threshold=0.05` too); repeatable.
    #[arg(long = "strategy", value_name = "NAME")]
    pub strategies: Vec<String>,
    /// Only stages of this seed; repeatable.
    #[arg(long = "seed", value_name = "N")]
    pub seeds: Vec<u64>,
    /// Only stages of this kind (`train`, `prune`, …); repeatable.
    #[arg(long = "kind", value_name = "KIND")]
    pub kinds: Vec<String>,
}

/// The strategy and seed an id names (`rnf/seed0/task2/prune` → `rnf`, 0); stages outside
/// every strategy (the split) name neither.
fn parts(id: &str) -> (Option<&str>, Option<u64>) {
    let mut it = id.split('/');
    let first = it.next();
    match it.next().and_then(|s| s.strip_prefix("seed")?.parse().ok()) {
        Some(seed) => (first, Some(seed)),
        None => (None, None),
    }
}

impl StageFilter {
    pub fn is_empty(&self) -> bool {
        self.strategies.is_empty() && self.seeds.is_empty() && self.kinds.is_empty()
    }

    pub fn matches(&self, n: &StageNode) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&n.kind) {
            return false;
        }
        n.all_ids().any(|id| {
            let (strategy, seed) = parts(id);
            let strategy_ok = self.strategies.is_empty()
                || strategy.is_some_and(|s| {
                    let base = s.split('@').next().unwrap_or(s);
                    self.strategies.iter().any(|w| w == s || w == base)
                });
            let seed_ok = self.seeds.is_empty() || seed.is_some_and(|s| self.seeds.contains(&s));
            strategy_ok && seed_ok
        })
    }
}

/// A listing's stages: the pipeline's DAG, resolved against `cache`, narrowed to those
/// `filter` shows (and with `pending`, to those not cached).
pub(super) fn resolved(
    p: &super::PipelineArgs,
    cache: &crate::cache::Cache,
    filter: &StageFilter,
    pending: bool,
) -> Result<(Dag, Vec<Resolved>, Vec<Resolved>), crate::error::CliError> {
    let (_, dag) = p.load(DataCheck::Required)?;
    let all = resolve::resolve(&dag, cache);
    let shown = all
        .iter()
        .filter(|r| filter.matches(dag.node(r.node)) && !(pending && r.cached()))
        .cloned()
        .collect();
    Ok((dag, all, shown))
}

/// `id` with its seed segment replaced by `seed*`.
fn unseeded(id: &str) -> String {
    id.split('/')
        .map(|seg| match seg.strip_prefix("seed") {
            Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => "seed*",
            _ => seg,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The stages `filter` shows as text, a block per stage as `Dag::render_text` draws it; with
/// `collapse`, stages that differ only in their seed are drawn once
/// (`rnf/seed{0,1,2}/task2/train`).
pub fn render_text(dag: &Dag, filter: &StageFilter, collapse: bool) -> String {
    let unseeded = |id: &str| {
        if collapse {
            unseeded(id)
        } else {
            id.to_string()
        }
    };
    // Block (seed-free) → the seeds it stands for, in first-seen order.
    let mut blocks: Vec<(String, Vec<u64>)> = Vec::new();
    for &n in dag.topo_order() {
        let node = dag.node(n);
        if !filter.matches(node) {
            continue;
        }
        let b = dag.render_block(n, &unseeded);
        let seed = parts(&node.id).1.filter(|_| collapse);
        match blocks.iter_mut().find(|(k, _)| *k == b) {
            Some((_, seeds)) => seeds.extend(seed),
            None => blocks.push((b, seed.into_iter().collect())),
        }
    }
    let mut out = String::new();
    for (b, seeds) in blocks {
        let shown = match seeds.as_slice() {
            [] => b,
            [one] => b.replace("seed*", &format!("seed{one}")),
            many => {
                let list: Vec<String> = many.iter().map(|s| s.to_string()).collect();
                b.replace("seed*", &format!("seed{{{}}}", list.join(",")))
            }
        };
        out.push_str(&shown);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_strategy_and_seed() {
        assert_eq!(
            parts("rnf@threshold=0.05/seed3/task2/prune"),
            (Some("rnf@threshold=0.05"), Some(3))
        );
        assert_eq!(parts("naive/seed0/evaluate"), (Some("naive"), Some(0)));
        assert_eq!(parts("split"), (None, None));
        assert_eq!(unseeded("rnf/seed12/task1/train"), "rnf/seed*/task1/train");
    }
}
