//! Strategies that build on each other: `extends:` and YAML anchors with merge keys give the
//! same stages as the strategy written out in full, and a mistake in an inherited value is
//! reported where it is written.

mod common;
use cfpipe::spec::DataCheck;
use common::{stderr, Fixture, PIPELINE};

/// The fixture's rnf with a threshold of 0.05, written out in full.
const FULL: &str = "  rnf05:
    freeze: until_threshold
    score:
      method: lrp
      rule: epsilon
      epsilon: 1.0e-6
      reference_size: 20
    prune:
      threshold: 0.05
      step_ratio: 0.1
    lr_frozen: 0.0
";

/// A stage as declared, independent of which twin's id names it: its kind, parameters and
/// inputs, recursively.
fn declared(dag: &cfpipe::graph::Dag, id: &str) -> String {
    let node = dag.node(dag.find(id).unwrap());
    let inputs: Vec<String> = node
        .inputs
        .iter()
        .map(|(slot, &i)| format!("{slot}={}", declared(dag, &dag.node(i).id)))
        .collect();
    format!("{}{}({})", node.kind, node.params, inputs.join(","))
}

/// Every stage of `rnf05`: (id, its declaration).
fn rnf05_stages(text: &str) -> Vec<(String, String)> {
    let f = Fixture::with_pipeline(text);
    let (_, dag) = cfpipe::load(&f.pipeline(), &[], DataCheck::Required).unwrap();
    let mut out = Vec::new();
    for &n in dag.topo_order() {
        for id in dag.node(n).all_ids().filter(|id| id.starts_with("rnf05/")) {
            out.push((id.to_string(), declared(&dag, id)));
        }
    }
    out.sort();
    out
}

#[test]
fn a_strategy_that_extends_another_is_declared_as_if_written_out() {
    let full = rnf05_stages(&format!("{PIPELINE}{FULL}"));
    assert!(!full.is_empty());
    let extended = rnf05_stages(&format!(
        "{PIPELINE}  rnf05:\n    extends: rnf\n    prune: {{threshold: 0.05}}\n"
    ));
    assert_eq!(extended, full);
    // A chain: rnf05 extends a strategy that itself extends rnf.
    let chained = rnf05_stages(&format!(
        "{PIPELINE}  mid:\n    extends: rnf\n    prune: {{step_ratio: 0.1}}\n  rnf05:\n    extends: mid\n    prune: {{threshold: 0.05}}\n"
    ));
    assert_eq!(chained, full);
}

#[test]
fn a_yaml_merge_key_copies_an_anchored_strategy() {
    let full = rnf05_stages(&format!("{PIPELINE}{FULL}"));
    let anchored = PIPELINE.replace("  rnf:\n", "  rnf: &rnf\n");
    assert_ne!(anchored, PIPELINE);
    let merged = rnf05_stages(&format!(
        "{anchored}  rnf05:\n    <<: *rnf\n    prune: {{threshold: 0.05, step_ratio: 0.1}}\n"
    ));
    assert_eq!(merged, full);
}

#[test]
fn a_mistake_in_an_inherited_value_points_where_it_is_written() {
    let bad = PIPELINE.replace("      threshold: 0.3\n", "      threshold: 1.5\n");
    assert_ne!(bad, PIPELINE);
    let line = bad
        .lines()
        .position(|l| l.contains("threshold: 1.5"))
        .unwrap()
        + 1;
    for child in [
        "  rnf05:\n    extends: rnf\n    lr_frozen: 0.5\n".to_string(),
        "  rnf05:\n    <<: *rnf\n".to_string(),
    ] {
        let text = format!("{}{child}", bad.replace("  rnf:\n", "  rnf: &rnf\n"));
        let f = Fixture::with_pipeline(&text);
        let p = f.pipeline();
        let out = f.cli(&["status", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        for path in [
            "strategies.rnf.prune.threshold",
            "strategies.rnf05.prune.threshold",
        ] {
            assert!(
                err.contains(&format!(
                    "pipeline.yaml:{line}:18: {path}: expected an accuracy drop"
                )),
                "{child}: {err}"
            );
        }
    }
}

#[test]
fn extends_that_cannot_be_followed_is_located() {
    for (child, expect) in [
        (
            "  a:\n    extends: nope\n",
            "strategies.a.extends: no strategy `nope` to extend",
        ),
        (
            "  a:\n    extends: b\n  b:\n    extends: a\n",
            "strategies.a.extends: `extends` loops: a → b → a",
        ),
    ] {
        let f = Fixture::with_pipeline(&format!("{PIPELINE}{child}"));
        let p = f.pipeline();
        let out = f.cli(&["status", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let line = PIPELINE.lines().count() + 2;
        assert!(
            stderr(&out).contains(&format!("pipeline.yaml:{line}:14: {expect}")),
            "{}",
            stderr(&out)
        );
    }
}
