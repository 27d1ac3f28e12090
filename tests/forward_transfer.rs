//! `evaluation.forward_transfer`: every task is also trained alone from the sequence's start,
//! once per seed whatever the strategies, and `report` sets each strategy's accuracy right
//! after learning a task against it.

mod common;

use common::{stderr, Fixture, PIPELINE};

#[test]
fn forward_transfer_compares_each_task_with_itself_trained_alone() {
    let f = Fixture::with_pipeline(&format!(
        "{PIPELINE}evaluation:\n  forward_transfer: true\n"
    ));
    let (_, dag) = cfpipe::load(&f.pipeline(), &[], cfpipe::spec::DataCheck::Required).unwrap();
    // One training alone per seed and later task, shared by the strategies.
    assert_eq!(
        dag.find("naive/seed0/task2/alone_train"),
        dag.find("rnf/seed0/task2/alone_train")
    );
    assert!(dag.find("naive/seed0/task1/alone_train").is_none());
    let report = f.run(&[]);
    let ran = report.ran_all_ids();
    assert!(ran.contains("naive/seed0/task2/alone_train"));
    assert!(ran.contains("naive/seed0/task2/alone_evaluate"));

    let p = f.pipeline();
    let out = f.path().join("rep");
    let rep = f.cli(&[
        "report",
        p.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(rep.status.success(), "{}", stderr(&rep));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let alone = f.json_of("naive/seed0/task2/alone_evaluate", "eval.json")["accuracy"][1]
        .as_f64()
        .unwrap();
    for (i, strategy) in ["naive", "rnf"].iter().enumerate() {
        // Two tasks: FWT is task 2's accuracy right after learning it, minus alone.
        let in_sequence = f.json_of(&format!("{strategy}/seed0/task2/evaluate"), "eval.json")
            ["accuracy"][1]
            .as_f64()
            .unwrap();
        let s = &json["summaries"][i];
        assert_eq!(s["strategy"], *strategy);
        let fwt = s["forward_transfer"]["mean"].as_f64().unwrap();
        assert!(
            (fwt - (in_sequence - alone)).abs() < 1e-12,
            "{strategy}: {fwt}"
        );
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Forward transfer"), "{md}");

    // Without the key, no training alone is declared and no figure is claimed.
    let plain = Fixture::new();
    let (_, dag) = cfpipe::load(&plain.pipeline(), &[], cfpipe::spec::DataCheck::Required).unwrap();
    assert!(dag.find("naive/seed0/task2/alone_train").is_none());
}
