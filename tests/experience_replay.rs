//! Experience replay as a strategy: earlier tasks' samples mixed into every batch of later
//! tasks, each training its own head.

mod common;

use common::{Fixture, PIPELINE};

fn with(strategies: &str) -> Fixture {
    Fixture::with_pipeline(&format!("{PIPELINE}{strategies}"))
}

#[test]
fn replay_at_ratio_zero_trains_naives_bits_and_a_real_ratio_trains_the_old_head() {
    let f = with(
        "  replay0:\n    freeze: none\n    replay: {per_class: 8, ratio: 0.0}\n  replay:\n    freeze: none\n    replay: {per_class: 8, ratio: 0.25}\n",
    );
    let report = f.run(&[]);
    let ran = report.ran_all_ids();
    // Task 1 has nothing to replay: one shared training.
    let (_, dag) = cfpipe::load(&f.pipeline(), &[], cfpipe::spec::DataCheck::Required).unwrap();
    assert_eq!(
        dag.find("naive/seed0/task1/train"),
        dag.find("replay/seed0/task1/train")
    );
    assert!(ran.contains("replay/seed0/task2/train") && ran.contains("replay0/seed0/task2/train"));
    let model = |s: &str| f.output(&format!("{s}/seed0/task2/train"), "model.safetensors");
    assert_eq!(model("naive"), model("replay0"), "ratio 0 replays nothing");
    assert_ne!(model("naive"), model("replay"));
    // Replayed task-1 samples train task 1's head, which naive's task 2 leaves alone.
    let head0 = |s: &str| f.model_of(&format!("{s}/seed0/task2/train")).heads[0].clone();
    let task1 = f.model_of("naive/seed0/task1/train").heads[0].clone();
    assert_eq!(head0("naive"), task1);
    assert_ne!(head0("replay"), task1);
}

#[test]
fn replay_settings_are_checked() {
    for (extra, expect) in [
        (
            "replay: {per_class: 0, ratio: 0.5}",
            "strategies.x.replay.per_class: expected an integer >= 1",
        ),
        (
            "replay: {per_class: 5, ratio: 1.0}",
            "strategies.x.replay.ratio: expected a share of each batch in [0, 1)",
        ),
        (
            "schedule: joint\n    replay: {per_class: 5, ratio: 0.5}",
            "strategies.x.replay: joint training sees every task's data already",
        ),
    ] {
        common::assert_rejected(&format!("  x:\n    freeze: none\n    {extra}\n"), expect);
    }
}

/// The drift of head 1's logits on fixed inputs between the task-1 model and `id`'s model.
fn head0_drift(f: &Fixture, id: &str) -> f32 {
    use dfdx::prelude::*;
    let dev = Cpu::default();
    let before =
        cfpipe::nn::model::DeviceModel::from_host(&dev, &f.model_of("naive/seed0/task1/train"));
    let after = cfpipe::nn::model::DeviceModel::from_host(&dev, &f.model_of(id));
    let pixels: Vec<u8> = (0..64 * 64).map(|i| ((i * 37) % 251) as u8).collect();
    let x = before.input(&pixels);
    let (a, b) = (
        before.logits(&x, 0, None).as_vec(),
        after.logits(&x, 0, None).as_vec(),
    );
    a.iter()
        .zip(&b)
        .map(|(p, q)| (p - q) * (p - q))
        .sum::<f32>()
        .sqrt()
}

#[test]
fn lwf_at_lambda_zero_trains_naives_bits_and_otherwise_holds_the_old_heads_outputs() {
    let f = with(
        "  lwf0:\n    freeze: none\n    lwf: {lambda: 0.0}\n  lwf:\n    freeze: none\n    lwf: {lambda: 1.0, temperature: 2.0}\n",
    );
    f.run(&[]);
    let model = |s: &str| f.output(&format!("{s}/seed0/task2/train"), "model.safetensors");
    assert_eq!(model("naive"), model("lwf0"), "λ = 0 distils nothing");
    assert_ne!(model("naive"), model("lwf"));
    // The old head itself is not trained by task 2 in either; what moves its outputs is the
    // trunk, and distillation holds them.
    let (naive, lwf) = (
        head0_drift(&f, "naive/seed0/task2/train"),
        head0_drift(&f, "lwf/seed0/task2/train"),
    );
    assert!(lwf < naive, "LwF drift {lwf} is not below naive's {naive}");
}

#[test]
fn lwf_settings_are_checked() {
    for (extra, expect) in [
        (
            "lwf: {lambda: -1}",
            "strategies.x.lwf.lambda: expected a number >= 0",
        ),
        (
            "lwf: {lambda: 1, temperature: 0}",
            "strategies.x.lwf.temperature: expected a temperature > 0",
        ),
        (
            "schedule: joint\n    lwf: {lambda: 1}",
            "strategies.x.lwf: joint training has no old heads",
        ),
    ] {
        common::assert_rejected(&format!("  x:\n    freeze: none\n    {extra}\n"), expect);
    }
}
