//! EWC-regularised training: the `consolidate` stage and the penalty in `train`.

mod common;
use cfpipe::cache::Cache;
use cfpipe::exec::resolve::resolve;
use cfpipe::spec::DataCheck;
use common::{Fixture, PIPELINE};

const EWC: &str = r#"  ewc_zero:
    freeze: none
    ewc:
      lambda: 0.0
      importance: {method: mas, reference_size: 20, reference_split: train}
  ewc_strong:
    freeze: none
    ewc:
      lambda: 1000.0
      importance: {method: mas, reference_size: 20, reference_split: train}
  ewc_si:
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
    let (_, dag) = cfpipe::cli::load(&f.pipeline(), &[], DataCheck::Required).unwrap();
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
    let f = Fixture::with_pipeline(&format!("{PIPELINE}{EWC}"));
    let report = f.run(&[]);
    let ran = report.ran_all_ids();
    // Task 1 is shared; task 2 of each EWC strategy is its own stage (it has a penalty input).
    assert!(ran.contains("ewc_zero/seed0/task1/consolidate"));
    assert!(ran.contains("ewc_zero/seed0/task2/train"));
    let (_, dag) = cfpipe::cli::load(&f.pipeline(), &[], DataCheck::Required).unwrap();
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
    let f = Fixture::with_pipeline(&format!("{PIPELINE}{EWC}"));
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
            "lambda: 1.0, importance: {method: lrp, reference_size: 5}",
            "strategies.x.ewc.importance.method: EWC needs a weight-level importance",
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
