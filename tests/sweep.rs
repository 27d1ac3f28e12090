//! Sweeps (`--sweep KEY=V1,V2` and the `sweep:` block): a grid of variants in one DAG, each
//! named by what it changes, with shared stages computed once and every swept value checked
//! like a `--set` value.

mod common;
use cfpipe::spec::DataCheck;
use common::{stderr, Fixture, PIPELINE};
use std::collections::BTreeSet;

const THRESHOLDS: &str = "strategies.rnf.prune.threshold=0.2,0.4";
const RATES: &str = "training.lr=0.01,0.02";

fn sweep_of(f: &Fixture, sweep: &[&str]) -> (cfpipe::spec::Pipeline, cfpipe::graph::Dag) {
    let sweep: Vec<String> = sweep.iter().map(|s| s.to_string()).collect();
    cfpipe::load_sweep(&f.pipeline(), &[], &sweep, DataCheck::Required).unwrap()
}

fn names(p: &cfpipe::spec::Pipeline) -> Vec<String> {
    p.strategies.iter().map(|s| s.name.clone()).collect()
}

/// Every stage id of `dag`, twins included.
fn ids(d: &cfpipe::graph::Dag) -> BTreeSet<String> {
    d.topo_order()
        .iter()
        .flat_map(|&n| d.node(n).all_ids().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// The ids of the stages that computed, whose id ends in `suffix` (`task1/train`).
fn ran_ending(report: &cfpipe::exec::RunReport, suffix: &str) -> BTreeSet<String> {
    report
        .ran()
        .into_iter()
        .filter(|id| id.ends_with(suffix))
        .collect()
}

#[test]
fn a_two_by_two_sweep_gives_four_variants_and_runs_each_shared_stage_once() {
    let f = Fixture::new();
    let (p, dag) = sweep_of(&f, &[THRESHOLDS, RATES]);
    // The threshold changes only rnf; the learning rate changes every strategy.
    assert_eq!(
        names(&p),
        [
            "naive@lr=0.01",
            "naive@lr=0.02",
            "rnf@threshold=0.2,lr=0.01",
            "rnf@threshold=0.2,lr=0.02",
            "rnf@threshold=0.4,lr=0.01",
            "rnf@threshold=0.4,lr=0.02",
        ]
    );
    let report = common::run_dag(&dag, &f.cache_dir(), 2);
    // Every declared stage computed, or was served from a twin with the same key (two
    // thresholds that freeze the same units give the same later stages).
    let done: BTreeSet<String> = report
        .events
        .iter()
        .flat_map(|e| std::iter::once(e.id.clone()).chain(e.aliases.iter().cloned()))
        .collect();
    assert_eq!(done, ids(&dag));
    // One split; task 1 trains and is scored once per learning rate (the threshold comes
    // later), and is pruned once per grid point.
    assert_eq!(ran_ending(&report, "split"), ["split".to_string()].into());
    let trained = ran_ending(&report, "task1/train");
    assert_eq!(trained.len(), 2, "{trained:?}");
    for lr in ["lr=0.01", "lr=0.02"] {
        assert_eq!(trained.iter().filter(|id| id.contains(lr)).count(), 1);
    }
    assert_eq!(ran_ending(&report, "task1/score").len(), 2);
    assert_eq!(
        ran_ending(&report, "task1/prune"),
        [
            "rnf@threshold=0.2,lr=0.01/seed0/task1/prune",
            "rnf@threshold=0.2,lr=0.02/seed0/task1/prune",
            "rnf@threshold=0.4,lr=0.01/seed0/task1/prune",
            "rnf@threshold=0.4,lr=0.02/seed0/task1/prune",
        ]
        .map(String::from)
        .into()
    );
}

#[test]
fn a_sweep_over_one_strategy_leaves_the_others_as_they_were() {
    let f = Fixture::new();
    let (_, plain) = cfpipe::load(&f.pipeline(), &[], DataCheck::Required).unwrap();
    // The fixture's own threshold is 0.3.
    let (p, dag) = sweep_of(&f, &["strategies.rnf.prune.threshold=0.2,0.3"]);
    assert_eq!(
        names(&p),
        ["naive", "rnf@threshold=0.2", "rnf@threshold=0.3"]
    );
    // naive's stages keep their ids and declarations; the variant with the file's own
    // threshold is declared as rnf is.
    let decl = |d: &cfpipe::graph::Dag, id: &str| {
        let n = d.node(d.find(id).unwrap());
        let inputs: Vec<&str> = n.inputs.values().map(|&i| d.node(i).id.as_str()).collect();
        (n.kind.clone(), n.params.clone(), format!("{inputs:?}"))
    };
    for t in [1, 2] {
        let id = format!("naive/seed0/task{t}/train");
        assert_eq!(decl(&dag, &id), decl(&plain, &id));
    }
    let prune = |d: &cfpipe::graph::Dag, id: &str| decl(d, id).1;
    assert_eq!(
        prune(&dag, "rnf@threshold=0.3/seed0/task2/prune"),
        prune(&plain, "rnf/seed0/task2/prune")
    );
    assert_ne!(
        prune(&dag, "rnf@threshold=0.2/seed0/task2/prune"),
        prune(&plain, "rnf/seed0/task2/prune")
    );
}

/// A strategy that `extends:` the swept one was resolved from the file before the sweep, as
/// the README says of `--set`: it keeps the file's value, its name, and one set of stages
/// (a strategy no axis names is compiled once, at the first point, and then reused).
#[test]
fn a_strategy_extending_the_swept_one_keeps_the_files_value_and_runs_once() {
    let f = Fixture::with_pipeline(&format!(
        "{PIPELINE}  rnf_isolated:\n    extends: rnf\n    isolate: true\n"
    ));
    let (p, dag) = sweep_of(&f, &[THRESHOLDS]);
    assert_eq!(
        names(&p),
        [
            "naive",
            "rnf@threshold=0.2",
            "rnf@threshold=0.4",
            "rnf_isolated"
        ]
    );
    let prunes: Vec<_> = dag
        .topo_order()
        .iter()
        .map(|&n| dag.node(n))
        .filter(|n| n.kind == "prune" && n.all_ids().any(|id| id.starts_with("rnf_isolated/")))
        .collect();
    // One prune per task, at the file's threshold.
    assert_eq!(prunes.len(), 2);
    assert!(prunes.iter().all(|n| n.params["threshold"] == 0.3));
    assert!(ids(&dag)
        .iter()
        .filter(|id| id.starts_with("rnf_isolated"))
        .all(|id| !id.contains('@')));
}

#[test]
fn a_sweep_block_in_the_file_is_the_same_grid_as_the_flags() {
    let f = Fixture::with_pipeline(&format!(
        "{PIPELINE}sweep:\n  strategies.rnf.prune.threshold: [0.2, 0.4]\n  training.lr: [0.01, 0.02]\n"
    ));
    let (from_file, file_dag) = cfpipe::load(&f.pipeline(), &[], DataCheck::Required).unwrap();
    let g = Fixture::new();
    let (from_flags, flag_dag) = sweep_of(&g, &[THRESHOLDS, RATES]);
    assert_eq!(names(&from_file), names(&from_flags));
    assert_eq!(ids(&file_dag), ids(&flag_dag));
}

#[test]
fn a_bad_value_in_a_sweep_block_is_located_and_names_the_sweep_entry() {
    let f = Fixture::with_pipeline(&format!(
        "{PIPELINE}sweep:\n  strategies.rnf.prune.threshold: [0.2, 1.5]\n"
    ));
    let p = f.pipeline();
    let out = f.cli(&["status", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    // The fixture's lines, then `sweep:`, then the entry: the bad value is its second item.
    let line = PIPELINE.lines().count() + 2;
    assert!(
        err.contains(&format!(
            "pipeline.yaml:{line}:41: strategies.rnf.prune.threshold: expected an accuracy drop in (0, 1)"
        )),
        "{err}"
    );
    assert!(
        err.contains("(value from sweep: strategies.rnf.prune.threshold (value 2 of 2))"),
        "{err}"
    );
}

#[test]
fn a_bad_sweep_flag_names_the_flag_and_exits_2() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let labels = format!(
        "dataset.labels={},missing.gz",
        f.path().join("lbl.gz").display()
    );
    for (flag, expect) in [
        (
            "strategies.rnf.prune.threshold=0.2,1.5",
            "expected an accuracy drop in (0, 1), found 1.5 (value from --sweep strategies.rnf.prune.threshold=0.2,1.5)",
        ),
        ("training.lr=0.01", "a sweep needs at least two values"),
        ("seeds=[0],[1]", "seeds are not swept"),
        ("strategies.ewc.lambda=1,2", "no strategy `ewc` to sweep"),
        ("training.nope=1,2", "unknown field `nope`"),
        // A swept data file is checked at its point, as the base's is.
        (&labels, "data file missing.gz does not exist"),
    ] {
        let out = f.cli(&["status", p, "--sweep", flag]);
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{flag}: {}", stderr(&out));
    }
}

#[test]
fn a_swept_dataset_setting_gives_each_point_its_own_split() {
    let f = Fixture::new();
    let (p, dag) = sweep_of(&f, &["dataset.split_seed=0,1"]);
    assert_eq!(
        names(&p),
        [
            "naive@split_seed=0",
            "naive@split_seed=1",
            "rnf@split_seed=0",
            "rnf@split_seed=1"
        ]
    );
    let split_of = |id: &str| {
        let n = dag.node(dag.find(id).unwrap());
        dag.node(n.inputs["split"]).id.clone()
    };
    assert_eq!(split_of("naive@split_seed=0/seed0/task1/train"), "split");
    assert_eq!(
        split_of("rnf@split_seed=1/seed0/task2/evaluate"),
        "split@split_seed=1"
    );
}

#[test]
fn a_report_of_a_sweep_draws_each_metric_against_the_swept_value() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let sweep = "strategies.rnf.prune.threshold=0.1,0.2,0.4";
    let run = f.cli(&["run", p, "--quiet", "--sweep", sweep]);
    assert!(run.status.success(), "{}", stderr(&run));
    let out = f.path().join("rep");
    let rep = f.cli(&[
        "report",
        p,
        "--sweep",
        sweep,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(rep.status.success(), "{}", stderr(&rep));
    for ext in ["svg", "png"] {
        assert!(out.join(format!("ablation_threshold.{ext}")).is_file());
    }
    // The SVG names the swept parameter on its x axis and the line by its strategy.
    let svg = std::fs::read_to_string(out.join("ablation_threshold.svg")).unwrap();
    let texts: Vec<&str> = svg.lines().map(str::trim).collect();
    assert!(texts.contains(&"threshold"), "no x label");
    assert!(texts.contains(&"rnf"), "no rnf line");
    // A report without a sweep draws none.
    let plain = f.path().join("plain");
    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    let rep = f.cli(&["report", p, "--out", plain.to_str().unwrap()]);
    assert!(rep.status.success(), "{}", stderr(&rep));
    assert!(!plain.join("ablation_threshold.svg").exists());
}
