//! EWC-regularised training: the `consolidate` stage and the penalty in `train`.

mod common;
use cfpipe::cache::Cache;
use cfpipe::exec::resolve::resolve;
use cfpipe::spec::DataCheck;
use common::{Fixture, EWC_ZERO_AND_STRONG, PIPELINE};

/// The shared λ = 0 and λ = 1000 strategies, then the other importances and modes.
fn ewc() -> String {
    format!("{EWC_ZERO_AND_STRONG}{EWC_OTHERS}")
}

const EWC_OTHERS: &str = r#"  ewc_si:
    freeze: none
    ewc:
      lambda: 10.0
      mode: online
      importance: {method: si}
  ewc_online:
    freeze: none
    ewc:
      lambda: 1000.0
      mode: online
      decay: 0.5
      importance: {method: fisher, reference_size: 20}
"#;

fn file_of(f: &Fixture, id: &str, file: &str) -> Vec<u8> {
    let (_, dag) = cfpipe::load(&f.pipeline(), &[], DataCheck::Required).unwrap();
    let cache = Cache::open(f.cache_dir()).unwrap();
    let n = dag.find(id).unwrap_or_else(|| panic!("no stage {id}"));
    let r = resolve(&dag, &cache)
        .into_iter()
        .find(|r| r.node == n)
        .unwrap();
    std::fs::read(r.entry.expect("cached").output_path(file)).unwrap()
}

#[test]
fn ewc_with_zero_lambda_trains_bit_identically_to_naive_and_a_strong_one_holds_the_trunk() {
    let f = Fixture::with_pipeline(&format!("{PIPELINE}{}", ewc()));
    let report = f.run(&[]);
    let ran = report.ran_all_ids();
    // Task 1 is shared; task 2 of each EWC strategy is its own stage (it has a penalty input).
    assert!(ran.contains("ewc_zero/seed0/task1/consolidate"));
    assert!(ran.contains("ewc_zero/seed0/task2/train"));
    let (_, dag) = cfpipe::load(&f.pipeline(), &[], DataCheck::Required).unwrap();
    assert_eq!(
        dag.find("naive/seed0/task1/train"),
        dag.find("ewc_strong/seed0/task1/train")
    );
    assert_ne!(
        dag.find("naive/seed0/task2/train"),
        dag.find("ewc_zero/seed0/task2/train")
    );
    // No consolidation after the last task: nothing trains against it.
    assert!(dag.find("ewc_zero/seed0/task2/consolidate").is_none());

    let model = |s: &str| file_of(&f, &format!("{s}/seed0/task2/train"), "model.safetensors");
    assert_eq!(
        model("naive"),
        model("ewc_zero"),
        "λ = 0 must not change training"
    );
    assert_ne!(model("naive"), model("ewc_strong"));

    // The strong penalty keeps the trunk closer to task 1's parameters, as measured by the
    // penalty itself (logged per epoch), than training without it.
    let log = |s: &str| f.json_of(&format!("{s}/seed0/task2/train"), "train.json");
    let strong = log("ewc_strong")["epochs"][2]["ewc_penalty"]
        .as_f64()
        .unwrap();
    let zero = log("ewc_zero")["epochs"][2]["ewc_penalty"]
        .as_f64()
        .unwrap();
    assert_eq!(zero, 0.0);
    assert!(strong > 0.0);
    assert!(log("naive")["epochs"][2].get("ewc_penalty").is_none());
    let si = f.json_of("ewc_si/seed0/task1/consolidate", "consolidate.json");
    assert_eq!(si["reference_samples"], 0, "SI needs no reference set");
    assert!(si["importance_totals"][0].as_f64().unwrap() > 0.0);
    let c = f.json_of("ewc_online/seed0/task1/consolidate", "consolidate.json");
    assert_eq!(c["mode"], "online");
    assert!(c["importance_totals"][0].as_f64().unwrap() > 0.0);
}

#[test]
fn a_strong_penalty_moves_the_trunk_less() {
    // Σ A (θ − θ₁)² of the task-2 trunk, with A from task 1's MAS importance, computed here
    // from the cached tensors: smaller with EWC than without.
    let f = Fixture::with_pipeline(&format!("{PIPELINE}{}", ewc()));
    f.run(&[]);
    let tensors =
        |id: &str, file: &str| cfpipe::nn::tensorio::decode(&file_of(&f, id, file)).unwrap();
    let pen = tensors("ewc_strong/seed0/task1/consolidate", "penalty.safetensors");
    let task1 = tensors("naive/seed0/task1/train", "model.safetensors");
    let drift = |s: &str| -> f64 {
        let m = tensors(&format!("{s}/seed0/task2/train"), "model.safetensors");
        let mut total = 0.0;
        for (i, name) in [
            "trunk.0.weight",
            "trunk.0.bias",
            "trunk.1.weight",
            "trunk.1.bias",
        ]
        .iter()
        .enumerate()
        {
            let a = pen[&format!("a.{i}")].as_f32().unwrap();
            let now = m[*name].as_f32().unwrap();
            let before = task1[*name].as_f32().unwrap();
            for ((a, x), y) in a.iter().zip(now).zip(before) {
                total += *a as f64 * (*x as f64 - *y as f64).powi(2);
            }
        }
        total
    };
    let (naive, strong) = (drift("naive"), drift("ewc_strong"));
    assert!(strong < 0.5 * naive, "EWC {strong} vs naive {naive}");
}

#[test]
fn ewc_options_are_checked() {
    for (extra, expect) in [
        (
            "lambda: -1.0, importance: {method: mas, reference_size: 5}",
            "strategies.x.ewc.lambda: expected a penalty strength >= 0",
        ),
        (
            "lambda: 1.0, decay: 0.5, importance: {method: mas, reference_size: 5}",
            "strategies.x.ewc.decay: only used with `mode: online`",
        ),
        (
            "lambda: 1.0, importance: {method: random, aggregate: {normalize: layer_max}}",
            "strategies.x.ewc.importance.aggregate.normalize: random scores are not normalised",
        ),
        (
            "lambda: 1.0, mode: online, decay: 2.0, importance: {method: fisher, reference_size: 5}",
            "strategies.x.ewc.decay: expected a decay in (0, 1]",
        ),
    ] {
        common::assert_rejected(
            &format!("  x:\n    freeze: none\n    ewc: {{{extra}}}\n"),
            expect,
        );
    }
}

const UNIT_LEVEL: &str = r#"  ewc_magnitude:
    freeze: none
    ewc:
      lambda: 10.0
      importance: {method: magnitude, aggregate: {normalize: layer_max}}
  ewc_lrp:
    freeze: none
    ewc:
      lambda: 10.0
      importance: {method: lrp, reference_size: 20}
"#;

#[test]
fn a_unit_level_importance_gives_every_weight_and_bias_of_a_unit_its_score() {
    let f = Fixture::with_pipeline(&format!("{PIPELINE}{UNIT_LEVEL}"));
    let ran = f.run(&[]).ran_all_ids();
    assert!(ran.contains("ewc_magnitude/seed0/task1/consolidate"));
    assert!(ran.contains("ewc_lrp/seed0/task2/train"));
    let (_, dag) = cfpipe::load(&f.pipeline(), &[], DataCheck::Required).unwrap();
    // The method is part of the consolidate stage's key: the two would otherwise be one node.
    assert_ne!(
        dag.find("ewc_magnitude/seed0/task1/consolidate"),
        dag.find("ewc_lrp/seed0/task1/consolidate")
    );
    let tensors =
        |id: &str, file: &str| cfpipe::nn::tensorio::decode(&file_of(&f, id, file)).unwrap();
    let pen = tensors(
        "ewc_magnitude/seed0/task1/consolidate",
        "penalty.safetensors",
    );
    // Separate mode after the first task: A = Ω.
    assert_magnitude_omega(
        &pen,
        &tensors("naive/seed0/task1/train", "model.safetensors"),
        2,
    );
    // Heads are not penalised: the penalty covers exactly the trunk's four tensors.
    let names: Vec<&String> = pen.keys().collect();
    assert_eq!(
        names,
        ["a.0", "a.1", "a.2", "a.3", "b.0", "b.1", "b.2", "b.3", "c"]
    );

    // LRP relevance as Ω, end to end: a penalty that task 2's training feels.
    let c = f.json_of("ewc_lrp/seed0/task1/consolidate", "consolidate.json");
    assert_eq!(c["reference_samples"], 20);
    assert!(c["importance_totals"][0].as_f64().unwrap() > 0.0);
    let log = f.json_of("ewc_lrp/seed0/task2/train", "train.json");
    let penalty = log["epochs"][2]["ewc_penalty"].as_f64().unwrap();
    assert!(penalty > 0.0, "λ·penalty after task 1: {penalty}");
}

type Tensors = std::collections::BTreeMap<String, cfpipe::nn::tensorio::HostTensor>;

/// Ω (= A after one task in separate mode) of each of the first `layers` trunk layers is, for
/// every weight of unit j's row and its bias, unit j's magnitude score: the L2 norm of its
/// incoming weights and bias divided by the layer's largest, computed here from the model.
fn assert_magnitude_omega(pen: &Tensors, model: &Tensors, layers: usize) {
    for l in 0..layers {
        let w = &model[&format!("trunk.{l}.weight")];
        // Conv weights are [O, C, kh, kw]: a filter's row is its C·kh·kw values.
        let (units, fan_in) = (w.shape()[0], w.shape()[1..].iter().product::<usize>());
        let (w, b) = (
            w.as_f32().unwrap(),
            model[&format!("trunk.{l}.bias")].as_f32().unwrap(),
        );
        let norms: Vec<f64> = (0..units)
            .map(|j| {
                let row = &w[j * fan_in..(j + 1) * fan_in];
                (row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() + (b[j] as f64).powi(2))
                    .sqrt()
            })
            .collect();
        let max = norms.iter().cloned().fold(0.0, f64::max);
        let (aw, ab) = (
            pen[&format!("a.{}", 2 * l)].as_f32().unwrap(),
            pen[&format!("a.{}", 2 * l + 1)].as_f32().unwrap(),
        );
        assert_eq!((aw.len(), ab.len()), (units * fan_in, units));
        for j in 0..units {
            let want = norms[j] / max;
            let close = |v: f32| (v as f64 - want).abs() <= 1e-6 * want.max(1e-12);
            assert!(
                close(ab[j]),
                "layer {l} unit {j}: bias Ω {} vs {want}",
                ab[j]
            );
            for (k, &v) in aw[j * fan_in..(j + 1) * fan_in].iter().enumerate() {
                assert!(close(v), "layer {l} unit {j} weight {k}: Ω {v} vs {want}");
            }
        }
    }
}

#[test]
fn a_unit_level_importance_on_a_cnn_gives_a_filters_whole_row_its_score() {
    let cnn = r#"model:
  kind: cnn
  input_shape: [1, 8, 8]
  layers:
    - conv: {out_channels: 4, kernel: 3, padding: 1}
    - max_pool: {kernel: 2}
    - conv: {out_channels: 6, kernel: 3, padding: 1}
    - flatten
    - dense: {units: 8}
"#;
    let p =
        format!("{PIPELINE}{UNIT_LEVEL}").replace("model:\n  kind: mlp\n  hidden: [16, 12]\n", cnn);
    assert!(p.contains("kind: cnn"));
    let f = Fixture::with_pipeline(&p);
    f.run(&[]);
    let tensors =
        |id: &str, file: &str| cfpipe::nn::tensorio::decode(&file_of(&f, id, file)).unwrap();
    let model = tensors("naive/seed0/task1/train", "model.safetensors");
    assert_eq!(model["trunk.1.weight"].shape(), [6, 4, 3, 3]);
    let pen = tensors(
        "ewc_magnitude/seed0/task1/consolidate",
        "penalty.safetensors",
    );
    assert_magnitude_omega(&pen, &model, 3);
    let log = f.json_of("ewc_lrp/seed0/task2/train", "train.json");
    assert!(log["epochs"][2]["ewc_penalty"].as_f64().unwrap() > 0.0);
}
