//! Training curves: every train stage's per-epoch loss and accuracy reach `curves.csv` and the
//! `training_curves` figure of `report`, and `cfpipe log` prints a stage's log and curve.

mod common;
use common::{stderr, stdout, Fixture};

#[test]
fn curves_csv_has_one_row_per_epoch_metric_and_train_stage() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let seeds = "seeds=[0, 1]";
    assert!(f
        .cli(&["run", p, "--quiet", "--set", seeds])
        .status
        .success());
    let out = f.path().join("rep");
    let rep = f.cli(&["report", p, "--set", seeds, "--out", out.to_str().unwrap()]);
    assert!(rep.status.success(), "{}", stderr(&rep));
    assert!(out.join("training_curves.png").is_file());
    let csv = std::fs::read_to_string(out.join("curves.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("strategy,variant,seed,task,epoch,metric,value")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    // 2 strategies × 2 seeds × 2 tasks × 3 epochs × 2 metrics.
    assert_eq!(rows.len(), 2 * 2 * 2 * 3 * 2);
    let (_, dag) = cfpipe::load(
        &f.pipeline(),
        &[seeds.to_string()],
        cfpipe::spec::DataCheck::Required,
    )
    .unwrap();
    let cache = cfpipe::cache::Cache::open(f.cache_dir()).unwrap();
    let resolved = cfpipe::exec::resolve::resolve(&dag, &cache);
    let train_json = |id: &str| -> serde_json::Value {
        let n = dag.find(id).unwrap();
        let e = resolved
            .iter()
            .find(|r| r.node == n)
            .unwrap()
            .entry
            .clone()
            .unwrap();
        serde_json::from_slice(&std::fs::read(e.output_path("train.json")).unwrap()).unwrap()
    };
    for strategy in ["naive", "rnf"] {
        for seed in [0, 1] {
            for task in [1, 2] {
                let log = train_json(&format!("{strategy}/seed{seed}/task{task}/train"));
                for e in log["epochs"].as_array().unwrap() {
                    for (metric, field) in
                        [("loss", "mean_loss"), ("train_accuracy", "train_accuracy")]
                    {
                        let want = e[field].as_f64().unwrap();
                        let epoch = e["epoch"].to_string();
                        let (seed_s, task_s) = (seed.to_string(), task.to_string());
                        let row = rows
                            .iter()
                            .find(|r| {
                                r[0] == strategy
                                    && r[2] == seed_s
                                    && r[3] == task_s
                                    && r[4] == epoch
                                    && r[5] == metric
                            })
                            .unwrap_or_else(|| {
                                panic!("no row {strategy} {seed} {task} {epoch} {metric}")
                            });
                        assert_eq!(row[6].parse::<f64>().unwrap(), want);
                    }
                }
            }
        }
    }
}

#[test]
fn log_prints_a_train_stages_log_and_curve() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    let id = "rnf/seed0/task2/train";
    let via_pipeline = f.cli(&["log", id, "--pipeline", p]);
    assert!(via_pipeline.status.success(), "{}", stderr(&via_pipeline));
    let text = stdout(&via_pipeline);
    let log = f.json_of(id, "train.json");
    let epochs = log["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 3);
    for e in epochs {
        let row = format!(
            "{:>5}  {:>8.5}",
            e["epoch"].as_u64().unwrap(),
            e["mean_loss"].as_f64().unwrap()
        );
        assert!(text.contains(&row), "{row:?} not in {text}");
    }
    assert!(text.contains("epoch 3: loss"), "{text}");
    // Without the pipeline, by the id it was computed under; a twin's id needs the pipeline.
    assert!(f.cli(&["log", id]).status.success());
    let twin = f.cli(&["log", "rnf/seed0/task1/train"]);
    let naive = f.cli(&["log", "naive/seed0/task1/train"]);
    assert_ne!(twin.status.success(), naive.status.success());
    let missing = f.cli(&["log", "nope/seed0/task1/train"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("no cached stage"),
        "{}",
        stderr(&missing)
    );
}

/// Run the fixture's pipeline, then report it to `rep/`; the folder and the report's output.
fn run_and_report(f: &Fixture) -> (std::path::PathBuf, std::process::Output) {
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    let out = f.path().join("rep");
    let rep = f.cli(&["report", p, "--out", out.to_str().unwrap()]);
    assert!(rep.status.success(), "{}", stderr(&rep));
    (out, rep)
}

#[test]
fn strategies_that_train_identically_share_one_training_curve_panel() {
    let f = Fixture::with_pipeline(&format!(
        "{}  rnf_isolated:\n    extends: rnf\n    isolate: true\n",
        common::PIPELINE
    ));
    let (out, _) = run_and_report(&f);
    let svg = std::fs::read_to_string(out.join("training_curves.svg")).unwrap();
    let texts: Vec<&str> = svg.lines().map(str::trim).collect();
    assert!(texts.contains(&"rnf = rnf_isolated"), "panels: {texts:?}");
    assert!(texts.contains(&"naive"));
    assert!(!texts.contains(&"rnf_isolated"));
}

#[test]
fn confusion_matrices_agree_with_the_accuracies_and_give_per_class_accuracy() {
    let f = Fixture::new();
    let (out, rep) = run_and_report(&f);
    let csv = std::fs::read_to_string(out.join("confusion.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("strategy,variant,seed,task,true_class,predicted_class,count")
    );
    // (strategy, task) → (right, total) over the matrix.
    let mut tally: std::collections::BTreeMap<(String, usize), (u64, u64)> = Default::default();
    let mut rows = 0;
    for l in lines {
        let c: Vec<&str> = l.split(',').collect();
        let n: u64 = c[6].parse().unwrap();
        let e = tally
            .entry((c[0].to_string(), c[3].parse().unwrap()))
            .or_default();
        e.1 += n;
        if c[4] == c[5] {
            e.0 += n;
        }
        rows += 1;
    }
    // 2 strategies × 2 tasks × 2 × 2 cells, one seed.
    assert_eq!(rows, 2 * 2 * 4);
    // The matrix's diagonal share is the accuracy the final evaluation reports.
    for strategy in ["naive", "rnf"] {
        let eval = f.json_of(&format!("{strategy}/seed0/task2/evaluate"), "eval.json");
        for t in 0..2 {
            let (right, total) = tally[&(strategy.to_string(), t + 1)];
            assert_eq!(total, eval["n_test"][t].as_u64().unwrap());
            let acc = eval["accuracy"][t].as_f64().unwrap();
            assert_eq!(
                right as f64 / total as f64,
                acc,
                "{strategy}, task {}",
                t + 1
            );
        }
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("## Per-class accuracy after the last task"),
        "{md}"
    );
    assert!(stdout(&rep).contains("wrote"));
}
