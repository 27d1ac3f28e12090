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

    // The unit scores are the L2 norms of each unit's incoming weights and bias in the
    // trained task-1 model, divided by the layer's largest (`normalize: layer_max`).
    let model = file_of(&f, "magnitude/seed0/task1/train", "model.safetensors");
    let model = safetensors::SafeTensors::deserialize(&model).unwrap();
    let units = file_of(&f, "magnitude/seed0/task1/score", "units.safetensors");
    let units = safetensors::SafeTensors::deserialize(&units).unwrap();
    for (l, (inputs, outputs)) in [(64, 16), (16, 12)].into_iter().enumerate() {
        let w = f32s(&model, &format!("trunk.{l}.weight"), &[outputs, inputs]);
        let b = f32s(&model, &format!("trunk.{l}.bias"), &[outputs]);
        let norms: Vec<f64> = (0..outputs)
            .map(|u| {
                let row = &w[u * inputs..(u + 1) * inputs];
                let sq: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
                (sq + (b[u] as f64) * (b[u] as f64)).sqrt()
            })
            .collect();
        let max = norms.iter().cloned().fold(0.0, f64::max);
        let got = f32s(&units, &format!("layer{l}"), &[outputs]);
        for (u, (&g, n)) in got.iter().zip(&norms).enumerate() {
            let want = n / max;
            assert!(
                (g as f64 - want).abs() < 1e-6,
                "layer {l} unit {u}: score {g}, expected {want}"
            );
        }
        // Not a degenerate layer: the scores really differ between units.
        let min = got.iter().cloned().fold(f32::INFINITY, f32::min);
        assert!(min < 0.99, "layer {l}: {got:?}");
    }
}

/// A file from the cached output of stage `id`.
fn file_of(f: &Fixture, id: &str, file: &str) -> Vec<u8> {
    f.output(id, file)
}

/// An f32 tensor of the given shape, decoded independently of cfpipe's own reader.
fn f32s(st: &safetensors::SafeTensors, name: &str, shape: &[usize]) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    assert_eq!(t.shape(), shape, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
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
