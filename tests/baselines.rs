//! Baseline strategies and the bisect search, on the fixture.

mod common;
use cfpipe::cache::Cache;
use cfpipe::exec::resolve::resolve;
use cfpipe::spec::DataCheck;
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

fn json_of(f: &Fixture, id: &str, file: &str) -> serde_json::Value {
    let (_, dag) = cfpipe::cli::load(&f.pipeline(), &[], DataCheck::Required).unwrap();
    let cache = Cache::open(f.cache_dir()).unwrap();
    let n = dag.find(id).unwrap_or_else(|| panic!("no stage {id}"));
    let r = resolve(&dag, &cache)
        .into_iter()
        .find(|r| r.node == n)
        .unwrap();
    let e = r.entry.expect("cached");
    serde_json::from_slice(&std::fs::read(e.output_path(file)).unwrap()).unwrap()
}

#[test]
fn random_freeze_matches_rnf_counts_per_layer() {
    let f = fixture();
    f.run(&[]);
    for t in 1..=2 {
        let rnf = json_of(&f, &format!("rnf/seed0/task{t}/mask"), "mask.json");
        let rnd = json_of(&f, &format!("random/seed0/task{t}/mask"), "mask.json");
        assert_eq!(
            rnf["newly_frozen_per_layer"], rnd["newly_frozen_per_layer"],
            "task {t}"
        );
        assert_eq!(rnf["free_capacity"], rnd["free_capacity"]);
    }
    let rnf = json_of(&f, "rnf/seed0/task1/mask", "mask.json");
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
    let lin = json_of(&f, "rnf/seed0/task1/prune", "prune.json");
    let bis = json_of(&f, "rnf_bisect/seed0/task1/prune", "prune.json");
    if lin["non_monotone"] == false {
        assert_eq!(lin["accepted_pruned"], bis["accepted_pruned"]);
    }
    assert!(bis["evaluations"].as_u64().unwrap() <= lin["evaluations"].as_u64().unwrap() + 1);
}

#[test]
fn joint_trains_every_head_once_and_magnitude_scores_are_weight_norms() {
    let f = fixture();
    f.run(&[]);
    let eval = json_of(&f, "joint/seed0/evaluate", "eval.json");
    let acc = eval["accuracy"].as_array().unwrap();
    assert_eq!(acc.len(), 2);
    assert!(acc.iter().all(|a| a.as_f64().unwrap() > 0.6), "{acc:?}");
    let score = json_of(&f, "magnitude/seed0/task1/score", "score.json");
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
