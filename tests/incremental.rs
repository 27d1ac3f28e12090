//! What reruns, and what is shared: the executor's report names every stage that computed.

mod common;
use common::{set, Fixture};

#[test]
fn an_unchanged_rerun_runs_nothing() {
    let f = Fixture::new();
    let first = f.run(&[]);
    assert_eq!(first.ran().len(), first.events.len());
    let second = f.run(&[]);
    assert!(second.ran().is_empty(), "reran: {:?}", second.ran());
    assert_eq!(second.cached().len(), first.events.len());
}

#[test]
fn cluster_resources_change_no_key_so_a_run_with_them_is_all_cached() {
    let f = Fixture::new();
    let first = f.run(&[]);
    assert!(!first.ran().is_empty());
    let with_resources = f.run(&[
        "resources={train: {gpus: 1, cpus: 8, mem: 32G, time: \"4:00:00\"}, default: {cpus: 2}}",
    ]);
    assert!(
        with_resources.ran().is_empty(),
        "resources must not enter keys; reran: {:?}",
        with_resources.ran()
    );
}

#[test]
fn changing_only_the_threshold_reruns_prune_mask_and_their_dependents() {
    let f = Fixture::new();
    f.run(&[]);
    let r = f.run(&["strategies.rnf.prune.threshold=0.02"]);
    // Task-1 training, evaluation and scoring are upstream of the change and stay cached; task-2
    // training and everything after it consume the new mask.
    let expected = set(&[
        "rnf/seed0/task1/prune",
        "rnf/seed0/task1/mask",
        "rnf/seed0/task2/train",
        "rnf/seed0/task2/evaluate",
        "rnf/seed0/task2/score",
        "rnf/seed0/task2/prune",
        "rnf/seed0/task2/mask",
    ]);
    assert_eq!(r.ran(), expected);
    assert!(r.cached().contains("rnf/seed0/task1/score"));
    // The naive strategy's task-1 training is the same node as rnf's.
    assert!(r.cached().contains("naive/seed0/task1/train"));
}

#[test]
fn naive_and_rnf_share_the_split_and_task1_training() {
    let f = Fixture::new();
    let set_: Vec<String> = vec![];
    let (_, dag) = cfpipe::load(&f.pipeline(), &set_, cfpipe::spec::DataCheck::Required).unwrap();
    assert_eq!(
        dag.find("naive/seed0/task1/train"),
        dag.find("rnf/seed0/task1/train")
    );
    assert_ne!(
        dag.find("naive/seed0/task2/train"),
        dag.find("rnf/seed0/task2/train")
    );
    let r = f.run(&[]);
    let ran_all = r.ran_all_ids();
    assert!(ran_all.contains("rnf/seed0/task1/train"));
    assert_eq!(
        r.events.iter().filter(|e| e.kind == "train").count(),
        3,
        "task-1 training ran once"
    );
    assert_eq!(r.events.iter().filter(|e| e.kind == "split").count(), 1);
}

#[test]
fn seeds_replicate_but_the_split_is_shared() {
    let f = Fixture::new();
    let r = f.run(&["seeds=[0, 1]"]);
    assert_eq!(r.events.iter().filter(|e| e.kind == "split").count(), 1);
    assert_eq!(r.events.iter().filter(|e| e.kind == "train").count(), 6);
}

#[test]
fn identical_outputs_cut_off_downstream_reruns() {
    // Raising reference_size beyond the test split's size draws the same (whole) set, so score
    // reruns (new parameters) but produces identical bytes, and nothing after it reruns.
    let f = Fixture::new();
    f.run(&["strategies.rnf.score.reference_size=1000"]);
    let r = f.run(&["strategies.rnf.score.reference_size=2000"]);
    assert_eq!(
        r.ran(),
        set(&["rnf/seed0/task1/score", "rnf/seed0/task2/score"])
    );
}
