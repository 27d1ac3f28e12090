//! Every score method behind the one `score` stage, and the `top_share` freeze policy.

mod common;
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
  si:
    freeze: until_threshold
    score: {method: si, damping: 0.01, unit_rule: outgoing}
    prune: {threshold: 0.3, step_ratio: 0.1}
  gxi:
    freeze: until_threshold
    score:
      method: gradient_x_input
      reference_size: 20
      aggregate: {abs: before_sum}
    prune:
      threshold: 0.3
      step_ratio: 0.1
  half:
    freeze: top_share
    share: 0.5
    score:
      method: random
"#;

#[test]
fn every_method_scores_and_top_share_half_freezes_half_of_each_layer() {
    let f = Fixture::with_pipeline(&format!("{PIPELINE}{METHODS}"));
    f.run(&[]);
    for (strategy, method) in [
        ("fisher", "fisher"),
        ("mas", "mas"),
        ("sig", "sig"),
        ("gxi", "gradient_x_input"),
        ("si", "si"),
        ("half", "random"),
    ] {
        let s = f.json_of(&format!("{strategy}/seed0/task1/score"), "score.json");
        assert_eq!(s["method"], method);
    }
    let m1 = f.json_of("half/seed0/task1/mask", "mask.json");
    assert_eq!(
        m1["frozen_per_layer"],
        serde_json::json!([8, 6]),
        "hidden [16, 12]"
    );
    // Frozen units accumulate: task 2 freezes half of each layer again, of what is free.
    let m2 = f.json_of("half/seed0/task2/mask", "mask.json");
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

const LRP_RULES: &str = r#"  flat_first:
    freeze: until_threshold
    score: {method: lrp, reference_size: 20, composite: EpsilonPlusFlat}
    prune: {threshold: 0.3, step_ratio: 0.1}
  spelled_out:
    freeze: until_threshold
    score: {method: lrp, reference_size: 20, rule: epsilon, conv_rule: zplus, first_layer: flat}
    prune: {threshold: 0.3, step_ratio: 0.1}
  alpha_beta:
    freeze: until_threshold
    score: {method: lrp, reference_size: 20, rule: alpha_beta, alpha: 2, beta: 1}
    prune: {threshold: 0.3, step_ratio: 0.1}
"#;

#[test]
fn lrp_rules_and_composites_are_keyed_choices() {
    let f = Fixture::with_pipeline(&format!("{PIPELINE}{LRP_RULES}"));
    let report = f.run(&[]);
    // A composite and the same rules spelled out are one stage.
    let ran = report.ran_all_ids();
    assert!(ran.contains("flat_first/seed0/task1/score"));
    assert!(ran.contains("spelled_out/seed0/task1/score"));
    let (_, dag) = cfpipe::load(&f.pipeline(), &[], cfpipe::spec::DataCheck::Required).unwrap();
    assert_eq!(
        dag.find("flat_first/seed0/task1/score"),
        dag.find("spelled_out/seed0/task1/score")
    );
    // Different rules give different scores; the ε-only strategy keeps its plain method name.
    let scores = |s: &str| f.json_of(&format!("{s}/seed0/task1/score"), "score.json");
    assert_eq!(scores("rnf")["method"], "lrp-epsilon");
    assert_eq!(scores("alpha_beta")["method"], "lrp");
    let totals = |s: &str| scores(s)["layer_totals"].clone();
    assert_ne!(totals("rnf"), totals("alpha_beta"));
    // The first layer's rule only shapes the input's relevance, which an MLP's unit scores
    // never see: they are computed above it.
    assert_eq!(totals("rnf"), totals("flat_first"));
}

const LRP_CONVENTIONS: &str = r#"  zplus:
    freeze: until_threshold
    score: {method: lrp, reference_size: 20, rule: zplus}
    prune: {threshold: 0.3, step_ratio: 0.1}
  zplus_zennit:
    freeze: until_threshold
    score: {method: lrp, reference_size: 20, rule: zplus, convention: zennit}
    prune: {threshold: 0.3, step_ratio: 0.1}
  zplus_zennit_spelled_out:
    freeze: until_threshold
    score: {method: lrp, reference_size: 20, rule: zplus, bias: include, stabilizer: 1.0e-6, max_pool: gradient}
    prune: {threshold: 0.3, step_ratio: 0.1}
  zplus_default_stabilizer:
    freeze: until_threshold
    score: {method: lrp, reference_size: 20, rule: zplus, convention: cfpipe, stabilizer: 1.0e-9}
    prune: {threshold: 0.3, step_ratio: 0.1}
"#;

#[test]
fn lrp_conventions_are_keyed_and_spelling_them_out_is_the_same_stage() {
    let f = Fixture::with_pipeline(&format!("{PIPELINE}{LRP_CONVENTIONS}"));
    let (_, dag) = cfpipe::load(&f.pipeline(), &[], cfpipe::spec::DataCheck::Required).unwrap();
    let score = |s: &str| dag.find(&format!("{s}/seed0/task1/score")).unwrap();
    assert_eq!(score("zplus_zennit"), score("zplus_zennit_spelled_out"));
    assert_eq!(score("zplus"), score("zplus_default_stabilizer"));
    assert_ne!(score("zplus"), score("zplus_zennit"));
    // The bias changes what z⁺ computes on the MLP's biased layers.
    let report = f.run(&[]);
    let ran = report.ran_all_ids();
    assert!(ran.contains("zplus_zennit/seed0/task1/score"));
    let totals = |s: &str| {
        f.json_of(&format!("{s}/seed0/task1/score"), "score.json")["layer_totals"].clone()
    };
    assert_ne!(totals("zplus"), totals("zplus_zennit"));
}

#[test]
fn lrp_rule_parameters_are_checked() {
    for (extra, expect) in [
        (
            "composite: EpsilonPlus, rule: zplus",
            "strategies.x.score.rule: `composite: EpsilonPlus` already sets the rules",
        ),
        (
            "rule: alpha_beta, alpha: 2, beta: 2",
            "strategies.x.score.alpha: αβ needs β >= 0 and α − β = 1",
        ),
        (
            "rule: zplus, gamma: 0.5",
            "strategies.x.score.gamma: only used when",
        ),
        (
            "first_layer: z_box, low: 1, high: 0",
            "strategies.x.score.low: expected low < high",
        ),
        ("composite: Epsilon", "strategies.x.score.composite"),
        (
            "convention: zennit, bias: include",
            "strategies.x.score.bias: `convention: zennit` already sets `bias`",
        ),
        (
            "composite: EpsilonGammaBox, convention: zennit",
            "strategies.x.score.convention: zennit 0.5.1's γ rule",
        ),
        (
            "stabilizer: 0",
            "strategies.x.score.stabilizer: expected a number > 0",
        ),
        ("convention: torch", "strategies.x.score.convention"),
    ] {
        common::assert_rejected(
            &format!("  x:\n    freeze: until_threshold\n    score: {{method: lrp, reference_size: 5, {extra}}}\n    prune: {{threshold: 0.3, step_ratio: 0.1}}\n"),
            expect,
        );
    }
}
