//! Baseline strategies and the bisect search, on the fixture.

mod common;
use common::{Fixture, PIPELINE};

const EXTRA: &str = r#"  rnf_bisect:
    freeze: until_threshold
    score:
      method: lrp
      reference_size: 20
    prune:
      threshold: 0.3
      step_ratio: 0.1
      search: bisect
  magnitude:
    freeze: until_threshold
    score:
      method: magnitude
      aggregate:
        normalize: layer_max
    prune:
      threshold: 0.3
      step_ratio: 0.1
  random:
    freeze: random
    like: rnf
  joint:
    freeze: none
    schedule: joint
"#;

fn fixture() -> Fixture {
    Fixture::with_pipeline(&format!("{PIPELINE}{EXTRA}"))
}

#[test]
fn random_freeze_matches_rnf_counts_per_layer() {
    let f = fixture();
    f.run(&[]);
    for t in 1..=2 {
        let rnf = f.json_of(&format!("rnf/seed0/task{t}/mask"), "mask.json");
        let rnd = f.json_of(&format!("random/seed0/task{t}/mask"), "mask.json");
        assert_eq!(
            rnf["newly_frozen_per_layer"], rnd["newly_frozen_per_layer"],
            "task {t}"
        );
        assert_eq!(rnf["free_capacity"], rnd["free_capacity"]);
    }
    let rnf = f.json_of("rnf/seed0/task1/mask", "mask.json");
    assert!(rnf["newly_frozen_per_layer"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v.as_u64().unwrap() > 0));
}

#[test]
fn bisect_search_reaches_the_linear_stopping_point_with_fewer_evaluations_here() {
    let f = fixture();
    f.run(&[]);
    let lin = f.json_of("rnf/seed0/task1/prune", "prune.json");
    let bis = f.json_of("rnf_bisect/seed0/task1/prune", "prune.json");
    if lin["non_monotone"] == false {
        assert_eq!(lin["accepted_pruned"], bis["accepted_pruned"]);
    }
    assert!(bis["evaluations"].as_u64().unwrap() <= lin["evaluations"].as_u64().unwrap() + 1);
}

#[test]
fn joint_trains_every_head_once_and_magnitude_scores_are_weight_norms() {
    let f = fixture();
    f.run(&[]);
    let eval = f.json_of("joint/seed0/evaluate", "eval.json");
    let acc = eval["accuracy"].as_array().unwrap();
    assert_eq!(acc.len(), 2);
    assert!(acc.iter().all(|a| a.as_f64().unwrap() > 0.6), "{acc:?}");
    let score = f.json_of("magnitude/seed0/task1/score", "score.json");
    assert_eq!(score["method"], "magnitude-l2-incoming");
    assert_eq!(score["reference_samples"], 0);
}

#[test]
fn random_must_name_an_rnf_strategy() {
    let f = Fixture::with_pipeline(&format!(
        "{PIPELINE}  random:\n    freeze: random\n    like: naive\n"
    ));
    let o = f.cli(&["dag", f.pipeline().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        common::stderr(&o).contains("strategies.random.like"),
        "{}",
        common::stderr(&o)
    );
}
