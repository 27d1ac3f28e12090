//! Continual-learning scenarios (`model.heads`): one shared head, and a class-incremental head
//! that grows per task or holds every class from the start, with masks and freezing on top.

mod common;

use common::{unit_flags, Fixture, EWC_ZERO_AND_STRONG, PIPELINE};

/// The fixture pipeline with `heads` (YAML lines under `model:`) added.
fn under(heads: &str) -> Fixture {
    let text = PIPELINE.replace(
        "  hidden: [16, 12]\n",
        &format!("  hidden: [16, 12]\n{heads}"),
    );
    assert_ne!(text, PIPELINE);
    Fixture::with_pipeline(&text)
}

/// Head 0's logits of `model` on fixed inputs.
fn head0_logits(model: &cfpipe::nn::model::ModelParams) -> Vec<f32> {
    use dfdx::prelude::*;
    let dev = Cpu::default();
    let m = cfpipe::nn::model::DeviceModel::from_host(&dev, model);
    let pixels: Vec<u8> = (0..16 * 64).map(|i| ((i * 37) % 251) as u8).collect();
    m.logits(&m.input(&pixels), 0, None).as_vec()
}

#[test]
fn a_shared_head_trained_on_task_2_changes_task_1s_outputs_but_not_its_frozen_units() {
    let f = under("  heads: shared\n");
    let ran = f.run(&[]).ran();
    assert!(ran.contains("rnf/seed0/task2/train") && ran.contains("naive/seed0/task2/train"));
    let task1 = f.model_of("naive/seed0/task1/train");
    let naive = f.model_of("naive/seed0/task2/train");
    let rnf = f.model_of("rnf/seed0/task2/train");
    for m in [&task1, &naive, &rnf] {
        assert_eq!(m.heads.len(), 1, "one head for both tasks");
        assert_eq!(m.scenario, cfpipe::nn::scenario::Scenario::Shared);
    }
    // Task 2 trains the head task 1 is read from: task 1's outputs move, with or without
    // frozen units.
    assert_ne!(naive.heads[0], task1.heads[0]);
    assert_ne!(head0_logits(&naive), head0_logits(&task1));
    assert_ne!(rnf.heads[0], task1.heads[0]);
    // Every frozen unit keeps its incoming weights and bias bit for bit.
    let e = f.entries();
    let mut frozen = 0;
    for l in 0..2 {
        let flags = unit_flags(&e("rnf/seed0/task1/mask"), l);
        let (a, b) = (&task1.trunk[l], &rnf.trunk[l]);
        for (j, _) in flags.iter().enumerate().filter(|(_, &on)| on) {
            frozen += 1;
            let row = j * a.in_dim..(j + 1) * a.in_dim;
            assert_eq!(a.weight[row.clone()], b.weight[row], "layer {l} unit {j}");
            assert_eq!(a.bias[j].to_bits(), b.bias[j].to_bits());
        }
    }
    assert!(frozen > 0, "the prune search froze some units");
    // The evaluation reads both tasks through the one head.
    let eval = f.json_of("naive/seed0/task2/evaluate", "eval.json");
    assert_eq!(eval["accuracy"].as_array().unwrap().len(), 2);
    assert!(eval.get("task_aware_accuracy").is_none());
}

#[test]
fn per_task_heads_leave_task_1s_head_alone_where_a_shared_head_moves_it() {
    // The contrast to the test above, on the same data and seeds.
    let f = Fixture::new();
    f.run(&[]);
    let task1 = f.model_of("naive/seed0/task1/train");
    let naive = f.model_of("naive/seed0/task2/train");
    assert_eq!(naive.heads.len(), 2);
    // The head is left as it was (the trunk under it still moves).
    assert_eq!(naive.heads[0], task1.heads[0]);
}

#[test]
fn a_class_incremental_head_grows_by_each_tasks_classes_and_is_evaluated_without_the_task() {
    let f = under("  heads: class_incremental\n");
    f.run(&[]);
    let task1 = f.model_of("naive/seed0/task1/train");
    let task2 = f.model_of("naive/seed0/task2/train");
    assert_eq!(
        task1.heads.iter().map(|h| h.out_dim).collect::<Vec<_>>(),
        [2]
    );
    assert_eq!(
        task2.heads.iter().map(|h| h.out_dim).collect::<Vec<_>>(),
        [4]
    );
    let eval = f.json_of("naive/seed0/task2/evaluate", "eval.json");
    assert_eq!(eval["class_offset"], serde_json::json!([0, 2]));
    let acc = |k: &str| -> Vec<f64> {
        eval[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (all, aware) = (acc("accuracy"), acc("task_aware_accuracy"));
    // Told the task, a prediction can only get better.
    for (a, w) in all.iter().zip(&aware) {
        assert!(w >= a, "{all:?} {aware:?}");
    }
    // Task 1's samples: each row of its confusion matrix spans all four outputs, and its
    // accuracy is its diagonal over the total.
    let m: Vec<Vec<u64>> = serde_json::from_value(eval["confusion"][0].clone()).unwrap();
    assert!(m.iter().all(|row| row.len() == 4));
    let total: u64 = m.iter().flatten().sum();
    assert_eq!(all[0], (m[0][0] + m[1][1]) as f64 / total as f64);
    // Naive class-incremental training forgets task 1 outright: task 2's classes win its
    // samples (the catastrophic forgetting the scenario exists to show).
    let taken: u64 = m.iter().map(|row| row[2] + row[3]).sum();
    assert!(taken * 2 > total, "{m:?}");
    // `compare` and `report` put the task-aware accuracy beside the one without the task.
    let pipeline = f.pipeline();
    let o = f.cli(&["compare", pipeline.to_str().unwrap()]);
    assert!(
        common::stdout(&o).contains("told task %"),
        "{}",
        common::stderr(&o)
    );
    let out = f.path().join("report");
    let o = f.cli(&[
        "report",
        pipeline.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Class-incremental: told the task"), "{md}");
    // `explain` reads a task through its outputs: task 2's exist in task 2's model, not in
    // task 1's (an error, not a wrong logit).
    let x = f.path().join("x");
    let explain = |stage: &str| {
        f.cli(&[
            "explain",
            pipeline.to_str().unwrap(),
            "--stage",
            stage,
            "--head",
            "2",
            "--images",
            "0",
            "--out",
            x.to_str().unwrap(),
        ])
    };
    let o = explain("naive/seed0/task2/train");
    assert!(o.status.success(), "{}", common::stderr(&o));
    let o = explain("naive/seed0/task1/train");
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("task 2 has no outputs in this model yet"),
        "{}",
        common::stderr(&o)
    );
}

#[test]
fn upfront_outputs_exist_from_task_1_and_key_apart_from_growing_ones() {
    let grow = under("  heads: class_incremental\n");
    let upfront = under("  heads: class_incremental\n  class_outputs: upfront\n");
    upfront.run(&[]);
    let task1 = upfront.model_of("naive/seed0/task1/train");
    assert_eq!(task1.heads[0].out_dim, 4);
    let key = |f: &Fixture, id: &str| {
        let (_, dag) = cfpipe::load(&f.pipeline(), &[], cfpipe::spec::DataCheck::Required).unwrap();
        let n = dag.find(id).unwrap();
        dag.node(n).params.clone()
    };
    let (g, u) = (
        key(&grow, "naive/seed0/task1/train"),
        key(&upfront, "naive/seed0/task1/train"),
    );
    assert_ne!(g, u);
    assert_eq!(
        g["model"]["scenario"]["outputs"], "grow",
        "the choice is keyed: {g}"
    );
    // Task-incremental trainings keep the parameters (and keys) they always had.
    let plain = key(&Fixture::new(), "naive/seed0/task1/train");
    assert!(plain["model"].get("scenario").is_none(), "{plain}");
}

#[test]
fn scenario_mistakes_are_located_before_any_work() {
    let class_il = under(
        "  heads: class_incremental
",
    );
    class_il.assert_rejected(
        &["strategies.rnf.isolate=true"],
        "strategies.rnf.isolate: isolation evaluates an old task with its own mask",
    );
    class_il.assert_rejected(
        &["strategies.naive.lwf={lambda: 1.0}"],
        "strategies.naive.lwf: LwF distils the old heads' whole outputs",
    );
    let shared = under(
        "  heads: shared
",
    );
    shared.assert_rejected(
        &["model.class_outputs=upfront"],
        "model.class_outputs: only used with `heads: class_incremental`",
    );
    shared.assert_rejected(
        &["tasks=[[0, 1], [2, 3, 0]]"],
        "model.heads: a shared head needs the same number of classes in every task",
    );
    shared.assert_rejected(&["model.heads=one"], "model.heads");
}

/// The L2 distance between head 0's weights of two models.
fn head0_drift(a: &cfpipe::nn::model::ModelParams, b: &cfpipe::nn::model::ModelParams) -> f64 {
    a.heads[0]
        .weight
        .iter()
        .zip(&b.heads[0].weight)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn ewc_under_a_shared_head_penalises_the_head_and_a_grown_head_only_its_old_outputs() {
    let ewc = EWC_ZERO_AND_STRONG;
    for heads in ["  heads: shared\n", "  heads: class_incremental\n"] {
        let f = Fixture::with_pipeline(&format!(
            "{}{ewc}",
            PIPELINE.replace(
                "  hidden: [16, 12]\n",
                &format!("  hidden: [16, 12]\n{heads}")
            )
        ));
        f.run(&[]);
        // The penalty covers the trunk's two layers and the head: six tensors.
        let pen = cfpipe::nn::tensorio::decode(
            &f.output("ewc_strong/seed0/task1/consolidate", "penalty.safetensors"),
        )
        .unwrap();
        assert!(
            pen.contains_key("a.5") && !pen.contains_key("a.6"),
            "{heads}"
        );
        let task1 = f.model_of("naive/seed0/task1/train");
        let drift = |s: &str| head0_drift(&task1, &f.model_of(&format!("{s}/seed0/task2/train")));
        // λ = 0 trains naive's bits; a strong pull holds the (old part of the) head.
        assert_eq!(drift("ewc_zero"), drift("naive"), "{heads}");
        let old = |s: &str| {
            let m = f.model_of(&format!("{s}/seed0/task2/train"));
            m.heads[0].weight[..task1.heads[0].weight.len()].to_vec()
        };
        let held = |s: &str| {
            old(s)
                .iter()
                .zip(&task1.heads[0].weight)
                .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
                .sum::<f64>()
        };
        assert!(
            held("ewc_strong") * 4.0 < held("naive"),
            "{heads}: {} vs {}",
            held("ewc_strong"),
            held("naive")
        );
    }
}

#[test]
fn lwf_distils_the_shared_head_and_at_lambda_zero_trains_naives_bits() {
    let f = Fixture::with_pipeline(&format!(
        "{}  lwf0:\n    freeze: none\n    lwf: {{lambda: 0.0}}\n  lwf:\n    freeze: none\n    lwf: {{lambda: 1.0, temperature: 2.0}}\n",
        PIPELINE.replace("  hidden: [16, 12]\n", "  hidden: [16, 12]\n  heads: shared\n")
    ));
    f.run(&[]);
    let model = |s: &str| f.output(&format!("{s}/seed0/task2/train"), "model.safetensors");
    assert_eq!(model("lwf0"), model("naive"));
    assert_ne!(model("lwf"), model("naive"));
    // Distilling task 1's outputs of the shared head holds them closer than naive does.
    let task1 = f.model_of("naive/seed0/task1/train");
    let moved = |s: &str| {
        let a = head0_logits(&task1);
        let b = head0_logits(&f.model_of(&format!("{s}/seed0/task2/train")));
        a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f32>()
    };
    assert!(
        moved("lwf") < moved("naive"),
        "{} vs {}",
        moved("lwf"),
        moved("naive")
    );
}
