//! The `correlate` stage: layer-by-layer importance correlations between methods.

mod common;
use common::{Fixture, PIPELINE};

const CORRELATE: &str = r#"  study:
    freeze: none
    correlate:
      methods:
        fisher: {method: fisher, reference_size: 30, reference_split: train}
        mas: {method: mas, reference_size: 30, reference_split: train}
        mas_again: {method: mas, reference_size: 30, reference_split: train}
        sig: {method: sig, reference_size: 30, reference_split: train}
        si: {method: si}
        random: {method: random}
      squared: [mas]
"#;

fn pair<'a>(layer: &'a serde_json::Value, a: &str, b: &str) -> &'a serde_json::Value {
    layer["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["a"] == a && p["b"] == b)
        .unwrap_or_else(|| panic!("no pair {a} ~ {b}"))
}

#[test]
fn a_method_correlates_with_itself_and_not_with_random() {
    let f = Fixture::with_pipeline(&format!("{PIPELINE}{CORRELATE}"));
    let report = f.run(&[]);
    let ran = report.ran_all_ids();
    for t in 1..=2 {
        assert!(ran.contains(&format!("study/seed0/task{t}/correlate")));
    }
    // The study trains exactly like naive: its training stages are naive's.
    let (_, dag) = cfpipe::load(&f.pipeline(), &[], cfpipe::spec::DataCheck::Required).unwrap();
    assert_eq!(
        dag.find("study/seed0/task2/train"),
        dag.find("naive/seed0/task2/train")
    );

    for t in 1..=2 {
        let c = f.json_of(&format!("study/seed0/task{t}/correlate"), "correlate.json");
        assert_eq!(
            c["methods"],
            serde_json::json!(["fisher", "mas", "mas^2", "mas_again", "random", "si", "sig"])
        );
        let layers = c["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 3, "two hidden layers and the head");
        assert_eq!(layers[2]["head"], true);
        for layer in layers {
            let same = pair(layer, "mas", "mas_again");
            assert!(
                (same["pearson"].as_f64().unwrap() - 1.0).abs() < 1e-9,
                "{same}"
            );
            assert!(
                (same["spearman"].as_f64().unwrap() - 1.0).abs() < 1e-9,
                "{same}"
            );
            // A square is a monotone map of non-negative importances: same ranks.
            let sq = pair(layer, "mas", "mas^2");
            assert!(
                (sq["spearman"].as_f64().unwrap() - 1.0).abs() < 1e-9,
                "{sq}"
            );
        }
        // 16 × 64 weights in the first layer: a random importance is uncorrelated.
        let r = pair(&layers[0], "mas", "random");
        assert!(r["pearson"].as_f64().unwrap().abs() < 0.1, "{r}");
        assert!(r["spearman"].as_f64().unwrap().abs() < 0.1, "{r}");
        // Fisher and MAS are both squared-gradient-like: clearly positively correlated.
        let fm = pair(&layers[0], "fisher", "mas");
        assert!(fm["spearman"].as_f64().unwrap() > 0.3, "{fm}");
    }
}

#[test]
fn correlate_options_are_checked() {
    for (extra, expect) in [
        (
            "methods: {a: {method: lrp, reference_size: 5}, b: {method: random}}",
            "strategies.x.correlate.methods.a.method: expected a weight-level method",
        ),
        (
            "methods: {a: {method: random}}",
            "strategies.x.correlate.methods: expected at least two methods",
        ),
        (
            "methods: {a: {method: random}, b: {method: random}}, squared: [c]",
            "strategies.x.correlate.squared.0: no method `c`",
        ),
    ] {
        common::assert_rejected(
            &format!("  x:\n    freeze: none\n    correlate: {{{extra}}}\n"),
            expect,
        );
    }
}
