//! Every score method behind the one `score` stage, and the `top_share` freeze policy.

mod common;
use cfpipe::cache::Cache;
use cfpipe::exec::resolve::resolve;
use cfpipe::spec::DataCheck;
use common::{Fixture, PIPELINE};

const METHODS: &str = r#"  fisher:
    freeze: until_threshold
    score:
      method: fisher
      labels: predicted
      gradients: per_batch
      batch_size: 8
      reference_size: 20
      reference_split: train
    prune:
      threshold: 0.3
      step_ratio: 0.1
  mas:
    freeze: until_threshold
    score:
      method: mas
      reference_size: 20
      unit_rule: outgoing
    prune:
      threshold: 0.3
      step_ratio: 0.1
  sig:
    freeze: until_threshold
    score:
      method: sig
      reference_size: 20
      aggregate:
        normalize: layer_sum
    prune:
      threshold: 0.3
      step_ratio: 0.1
  half:
    freeze: top_share
    share: 0.5
    score:
      method: random
"#;

fn json_of(f: &Fixture, id: &str, file: &str) -> serde_json::Value {
    let (_, dag) = cfpipe::cli::load(&f.pipeline(), &[], DataCheck::Required).unwrap();
    let cache = Cache::open(f.cache_dir()).unwrap();
    let n = dag.find(id).unwrap_or_else(|| panic!("no stage {id}"));
    let e = resolve(&dag, &cache)
        .into_iter()
        .find(|r| r.node == n)
        .unwrap()
        .entry
        .expect("cached");
    serde_json::from_slice(&std::fs::read(e.output_path(file)).unwrap()).unwrap()
}

#[test]
fn every_method_scores_and_top_share_half_freezes_half_of_each_layer() {
    let f = Fixture::with_pipeline(&format!("{PIPELINE}{METHODS}"));
    f.run(&[]);
    for (strategy, method) in [
        ("fisher", "fisher"),
        ("mas", "mas"),
        ("sig", "sig"),
        ("half", "random"),
    ] {
        let s = json_of(&f, &format!("{strategy}/seed0/task1/score"), "score.json");
        assert_eq!(s["method"], method);
    }
    let m1 = json_of(&f, "half/seed0/task1/mask", "mask.json");
    assert_eq!(
        m1["frozen_per_layer"],
        serde_json::json!([8, 6]),
        "hidden [16, 12]"
    );
    // Frozen units accumulate: task 2 freezes half of each layer again, of what is free.
    let m2 = json_of(&f, "half/seed0/task2/mask", "mask.json");
    assert_eq!(m2["frozen_per_layer"], serde_json::json!([16, 12]));
    assert_eq!(m2["free_capacity"], 0.0);
}

#[test]
fn method_specific_fields_are_checked() {
    let bad = PIPELINE.replace(
        "      reference_size: 20\n",
        "      reference_size: 20\n      labels: ground_truth\n",
    );
    let f = Fixture::with_pipeline(&bad);
    let o = f.cli(&["dag", f.pipeline().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        common::stderr(&o).contains("strategies.rnf.score.labels: only used with `method: fisher`"),
        "{}",
        common::stderr(&o)
    );
    let f = Fixture::with_pipeline(&format!(
        "{PIPELINE}  t:\n    freeze: top_share\n    score:\n      method: random\n"
    ));
    let o = f.cli(&["dag", f.pipeline().to_str().unwrap()]);
    assert!(
        common::stderr(&o).contains("strategies.t.share: required"),
        "{}",
        common::stderr(&o)
    );
}
