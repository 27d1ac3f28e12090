//! `isolate: true` (PackNet-style evaluation): an old task sees only the units frozen up to and
//! including it, so later training cannot move its accuracy at all.

mod common;
use common::{set, Fixture};

/// Three 4-way tasks (the second and third permute the pixels), so "every later task" means
/// more than one.
const PIPELINE: &str = r#"name: tiny_isolation
dataset:
  format: idx
  images: IMG
  labels: LBL
  test_fraction: 0.25
  split_seed: 0
tasks:
  permuted: {count: 3, classes: [0, 1, 2, 3], seed: 5}
model:
  kind: mlp
  hidden: [16, 12]
training:
  optimizer: adam
  lr: 0.01
  batch_size: 16
  epochs: 3
  weight_decay: 0.001
seeds: [0]
strategies:
  rnf:
    freeze: until_threshold
    score: {method: lrp, reference_size: 20}
    prune: {threshold: 0.1, step_ratio: 0.1}
  rnf_isolated:
    freeze: until_threshold
    isolate: true
    score: {method: lrp, reference_size: 20}
    prune: {threshold: 0.1, step_ratio: 0.1}
"#;

fn acc(f: &Fixture, strategy: &str, after: usize, task: usize) -> f64 {
    let e = f.json_of(
        &format!("{strategy}/seed0/task{after}/evaluate"),
        "eval.json",
    );
    e["accuracy"][task - 1].as_f64().unwrap()
}

#[test]
fn an_isolated_old_task_keeps_exactly_its_accepted_prune_accuracy() {
    let f = Fixture::with_pipeline(PIPELINE);
    let report = f.run(&[]);
    // Isolation only changes how old tasks are evaluated: training, scoring, pruning and
    // masking are shared with `rnf`, and only evaluations after task 1 are new.
    let own: Vec<String> = report
        .ran()
        .into_iter()
        .filter(|id| id.starts_with("rnf_isolated/"))
        .collect();
    assert_eq!(
        own.into_iter().collect::<std::collections::BTreeSet<_>>(),
        set(&[
            "rnf_isolated/seed0/task2/evaluate",
            "rnf_isolated/seed0/task3/evaluate"
        ])
    );

    let mut drifted = false;
    for j in 1..=2 {
        let prune = f.json_of(&format!("rnf/seed0/task{j}/prune"), "prune.json");
        let accepted = prune["accepted_accuracy"].as_f64().unwrap();
        assert!(
            prune["accepted_pruned"].as_u64().unwrap() > 0,
            "task {j} pruned nothing"
        );
        for after in j + 1..=3 {
            assert_eq!(
                acc(&f, "rnf_isolated", after, j),
                accepted,
                "task {j} after task {after}"
            );
            drifted |= acc(&f, "rnf", after, j) != accepted;
        }
    }
    // Without isolation the free units that keep training still feed the old heads; if that
    // never showed on this fixture, the equality above would prove nothing.
    assert!(
        drifted,
        "plain rnf never drifted from the accepted accuracy"
    );
    // The current task is always evaluated whole.
    for t in 1..=3 {
        assert_eq!(acc(&f, "rnf_isolated", t, t), acc(&f, "rnf", t, t));
    }
}

#[test]
fn isolation_without_freezing_is_rejected_with_its_key_path() {
    let f = Fixture::with_pipeline(&PIPELINE.replace(
        "  rnf:\n    freeze: until_threshold\n",
        "  rnf:\n    freeze: none\n    isolate: true\n",
    ));
    let out = f.cli(&["run", f.pipeline().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = common::stderr(&out);
    assert!(err.contains("strategies.rnf.isolate"), "{err}");
    assert!(err.contains("pipeline.yaml:"), "{err}");
}
