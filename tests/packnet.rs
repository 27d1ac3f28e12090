//! PackNet as a strategy: keep a share of each layer's free units by magnitude, retrain the
//! task on those alone, freeze them, and evaluate every task on its own units.

mod common;

use common::{assert_rejected, unit_flags, Fixture, PIPELINE};

const PACKNET: &str = "  packnet:
    freeze: top_share
    share: 0.5
    score: {method: magnitude}
    retrain: {epochs: 2}
    isolate: true
";

/// Rows (incoming weights and bias) of layer `l`'s units `which` in two models, bit for bit.
fn same_units(
    a: &cfpipe::nn::model::ModelParams,
    b: &cfpipe::nn::model::ModelParams,
    l: usize,
    which: impl Fn(usize) -> bool,
) -> (usize, usize) {
    let (x, y) = (&a.trunk[l], &b.trunk[l]);
    let (mut same, mut differ) = (0, 0);
    for j in (0..x.out_dim).filter(|&j| which(j)) {
        let row = j * x.in_dim..(j + 1) * x.in_dim;
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        if bits(&x.weight[row.clone()]) == bits(&y.weight[row]) && x.bias[j] == y.bias[j] {
            same += 1;
        } else {
            differ += 1;
        }
    }
    (same, differ)
}

#[test]
fn packnet_retrains_only_the_kept_units_and_isolation_keeps_each_task_exactly() {
    let f = Fixture::with_pipeline(&format!("{PIPELINE}{PACKNET}"));
    let ran = f.run(&[]).ran();
    for t in 1..=2 {
        assert!(
            ran.contains(&format!("packnet/seed0/task{t}/retrain")),
            "{ran:?}"
        );
    }
    let e = f.entries();
    let model = |id: &str| f.model_of(&format!("packnet/seed0/{id}"));
    let (trained, retrained) = (model("task1/train"), model("task1/retrain"));
    for l in 0..2 {
        let kept = unit_flags(&e("packnet/seed0/task1/mask"), l);
        // Silenced units neither train nor decay; the kept ones learn to do without them.
        assert_eq!(
            same_units(&trained, &retrained, l, |j| !kept[j]).1,
            0,
            "layer {l}"
        );
        assert!(
            same_units(&trained, &retrained, l, |j| kept[j]).1 > 0,
            "layer {l}"
        );
        // Task 2 trains from the retrained model and moves none of task 1's units, nor does
        // its own retraining.
        for later in ["task2/train", "task2/retrain"] {
            assert_eq!(
                same_units(&retrained, &model(later), l, |j| kept[j]).1,
                0,
                "{later} layer {l}"
            );
        }
    }
    // Task 1 is evaluated on its own units right after its retraining and after task 2: the
    // same accuracy, to the bit.
    let acc = |t: usize| f.json_of(&format!("packnet/seed0/task{t}/evaluate"), "eval.json");
    assert_eq!(acc(1)["accuracy"][0], acc(2)["accuracy"][0]);
    // The evaluation reads the retrained model.
    let (_, dag) = cfpipe::load(&f.pipeline(), &[], cfpipe::spec::DataCheck::Required).unwrap();
    let ev = dag.node(dag.find("packnet/seed0/task1/evaluate").unwrap());
    assert_eq!(
        dag.node(ev.inputs["model"]).id,
        "packnet/seed0/task1/retrain"
    );
    assert!(ev.inputs.contains_key("isolate0"));
}

#[test]
fn retraining_needs_a_mask_to_retrain_on() {
    assert_rejected(
        "  x:\n    freeze: none\n    retrain: {epochs: 1}\n",
        "strategies.x.retrain: retraining trains a task on the units its mask keeps",
    );
    assert_rejected(
        "  x:\n    freeze: top_share\n    share: 0.5\n    score: {method: magnitude}\n    retrain: {epochs: 0}\n    isolate: true\n",
        "strategies.x.retrain.epochs: expected an integer in 1..=100000, found 0",
    );
    let packnet = "  x:\n    freeze: top_share\n    share: 0.5\n    score: {method: magnitude}\n    retrain: {epochs: 1}\n";
    assert_rejected(packnet, "strategies.x.retrain: a retrained task is evaluated on the units it kept; add `isolate: true`");
    assert_rejected(
        &format!(
            "{packnet}    isolate: true\n    ewc: {{lambda: 1.0, importance: {{method: si}}}}\n"
        ),
        "strategies.x.ewc: `ewc` reads each task's model before its retraining",
    );
}
