//! Artifacts are stored where a stage reads them: a training records SI's path integral
//! (`si.safetensors`, two thirds of its entry) only where a score, correlation or EWC by `si`
//! reads it, a training shared by a strategy that reads it and one that does not stays one
//! stage, and whether it records changes nothing of what it trained.

mod common;
use cfpipe::spec::DataCheck;
use common::{run_dag, Fixture, PIPELINE};

/// The fixture's naive and rnf (LRP), plus a strategy frozen by SI scores.
fn with_si() -> String {
    format!(
        "{PIPELINE}  rnf_si:
    freeze: until_threshold
    score:
      method: si
    prune:
      threshold: 0.3
      step_ratio: 0.1
    lr_frozen: 0.0
"
    )
}

fn records(dag: &cfpipe::graph::Dag, id: &str) -> bool {
    let n = dag.node(dag.find(id).unwrap());
    n.params.get("record_si") != Some(&serde_json::Value::Bool(false))
}

#[test]
fn only_trainings_whose_path_integral_is_read_record_it() {
    let f = Fixture::with_pipeline(&with_si());
    let (_, dag) = cfpipe::load(&f.pipeline(), &[], DataCheck::Required).unwrap();
    // Task 1's training is one stage for all three strategies; rnf_si's score reads it.
    let t1 = dag.find("naive/seed0/task1/train").unwrap();
    assert_eq!(dag.find("rnf_si/seed0/task1/train"), Some(t1));
    assert!(records(&dag, "naive/seed0/task1/train"));
    // Task 2: rnf_si scores it by SI for its final mask; naive does not score, rnf by LRP.
    assert!(records(&dag, "rnf_si/seed0/task2/train"));
    for s in ["naive", "rnf"] {
        assert!(!records(&dag, &format!("{s}/seed0/task2/train")), "{s}");
    }
    // The fixture without rnf_si: nothing reads SI at all.
    let plain = Fixture::new();
    let (_, dag) = cfpipe::load(&plain.pipeline(), &[], DataCheck::Required).unwrap();
    assert!(!records(&dag, "naive/seed0/task1/train"));

    let r = f.run(&[]);
    assert!(r.failed().is_empty(), "{:?}", r.failed());
    let files = |id: &str| -> Vec<String> {
        let e = f.entries()(id);
        e.manifest().unwrap().outputs.keys().cloned().collect()
    };
    assert!(files("naive/seed0/task1/train").contains(&"si.safetensors".to_string()));
    assert!(files("rnf_si/seed0/task2/train").contains(&"si.safetensors".to_string()));
    assert_eq!(
        files("naive/seed0/task2/train"),
        ["model.safetensors", "train.json"]
    );
}

/// The cached entry of `id` of `dag` in `cache`.
fn entry(dag: &cfpipe::graph::Dag, cache: &std::path::Path, id: &str) -> cfpipe::cache::Entry {
    let c = cfpipe::cache::Cache::open(cache).unwrap();
    let n = dag.find(id).unwrap();
    cfpipe::exec::resolve::resolve(dag, &c)
        .into_iter()
        .find(|r| r.node == n)
        .and_then(|r| r.entry)
        .unwrap_or_else(|| panic!("{id} is not cached"))
}

#[test]
fn recording_the_path_integral_or_not_trains_the_same_bits() {
    let f = Fixture::new();
    let (_, dag) = cfpipe::load(&f.pipeline(), &[], DataCheck::Required).unwrap();
    let mut recording = dag.clone();
    let ids = ["naive/seed0/task1/train", "rnf/seed0/task2/train"];
    for id in ids {
        assert!(!records(&dag, id));
        let n = recording.find(id).unwrap();
        recording.params_mut(n)["record_si"] = serde_json::Value::Bool(true);
    }
    let (a, b) = (f.path().join("without"), f.path().join("with"));
    run_dag(&dag, &a, 2);
    run_dag(&recording, &b, 2);
    for id in ids {
        let (without, with) = (entry(&dag, &a, id), entry(&recording, &b, id));
        for file in ["model.safetensors", "train.json"] {
            assert_eq!(
                std::fs::read(without.output_path(file)).unwrap(),
                std::fs::read(with.output_path(file)).unwrap(),
                "{id}: {file}"
            );
        }
        assert!(with
            .manifest()
            .unwrap()
            .outputs
            .contains_key("si.safetensors"));
        assert!(!without
            .manifest()
            .unwrap()
            .outputs
            .contains_key("si.safetensors"));
        // Not the same computation, so not the same key.
        assert_ne!(
            without.manifest().unwrap().key,
            with.manifest().unwrap().key
        );
    }
}
