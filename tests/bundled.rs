//! The pipeline file shipped in the repo runs on the bundled MNIST digits (shortened with
//! `--set` so the suite stays fast; the file itself is what is exercised).

mod common;

#[test]
fn the_bundled_mnist_split_pipeline_runs_and_rnf_freezes_units() {
    let dir = tempfile::tempdir().unwrap();
    let small = ["--set", "training.epochs=1", "--set", "seeds=[0]"];
    let v = run_then_show("pipelines/mnist_split.yaml", &small, dir.path());
    let mut rerun = vec!["run", "pipelines/mnist_split.yaml", "--quiet"];
    rerun.extend_from_slice(&small);
    let rerun = common::stdout(&run_repo(&rerun, dir.path()));
    assert!(rerun.contains("38 stages: 0 ran, 38 cached"), "{rerun}");
    for run in v.as_array().unwrap() {
        let first = run["accuracy"][0][0].as_f64().unwrap();
        assert!(first > 0.95, "task 1 (0 vs 1) is easy: {first}");
        let rows = run["accuracy"].as_array().unwrap();
        assert_eq!(rows.len(), 5);
    }
    let rnf = run_of(&v, "rnf");
    let caps: Vec<f64> = rnf["free_capacity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_f64().unwrap())
        .collect();
    assert!(
        caps.windows(2).all(|w| w[1] <= w[0]),
        "frozen units accumulate: {caps:?}"
    );
    assert!(caps[0] < 1.0 && caps[4] > 0.0, "{caps:?}");
}

/// The result of `strategy` in a `show --json` listing.
fn run_of<'a>(v: &'a serde_json::Value, strategy: &str) -> &'a serde_json::Value {
    v.as_array()
        .unwrap()
        .iter()
        .find(|r| r["strategy"] == strategy)
        .unwrap()
}

/// Run a pipeline file of the repo with `overrides`, then return `show --json`.
fn run_then_show(pipeline: &str, overrides: &[&str], cache: &std::path::Path) -> serde_json::Value {
    let with = |cmd: &str, extra: &[&str]| {
        let mut args = vec![cmd, pipeline];
        args.extend_from_slice(extra);
        args.extend_from_slice(overrides);
        run_repo(&args, cache)
    };
    let out = with("run", &["--quiet"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    serde_json::from_slice(&with("show", &["--json"]).stdout).unwrap()
}

fn run_repo(args: &[&str], cache: &std::path::Path) -> std::process::Output {
    common::cfpipe()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .arg("--cache")
        .arg(cache)
        .output()
        .unwrap()
}

#[test]
fn the_permuted_pipeline_runs_with_ten_way_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let small = [
        "--set",
        "training.epochs=1",
        "--set",
        "model.hidden=[64, 64]",
        "--set",
        "tasks.permuted.count=3",
        "--set",
        "seeds=[0]",
        "--set",
        "strategies.rnf.prune.step_ratio=0.1",
        "--set",
        "training.lr=1e-3",
    ];
    let v = run_then_show("pipelines/mnist_permuted.yaml", &small, dir.path());
    let naive = run_of(&v, "naive");
    // Every task is 10-way digit classification: far above chance (10%) right after training.
    for t in 0..3 {
        let a = naive["accuracy"][t][t].as_f64().unwrap();
        assert!(a > 0.6, "task {} accuracy {a}", t + 1);
    }
}

#[test]
fn the_fashion_pipeline_runs_on_the_debian_dataset() {
    if !std::path::Path::new("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").exists()
    {
        // CI installs the package; elsewhere this is optional (apt-get install dataset-fashion-mnist).
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install dataset-fashion-mnist"
        );
        eprintln!("skipped: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let small = [
        "--set",
        "training.epochs=1",
        "--set",
        "seeds=[0]",
        "--set",
        "tasks=[[0, 1], [8, 9]]",
    ];
    let v = run_then_show("pipelines/fashion_split.yaml", &small, dir.path());
    let naive = run_of(&v, "naive");
    // 10,000 official test images, 1,000 per class: T-shirt vs trouser is easy.
    assert!(naive["accuracy"][0][0].as_f64().unwrap() > 0.9);
}

#[test]
fn the_method_comparison_pipeline_trains_task_one_once_per_seed() {
    let dir = tempfile::tempdir().unwrap();
    let small = [
        "training.epochs=1",
        "seeds=[0]",
        "tasks=[[0, 1], [2, 3]]",
        "model.hidden=[32, 32]",
        "strategies.ewc_fisher.ewc.importance.reference_size=20",
        "strategies.ewc_mas.ewc.importance.reference_size=20",
    ];
    let report = common::run_repo_pipeline("pipelines/method_comparison.yaml", &small, dir.path());
    let trained_task1: Vec<String> = report
        .ran()
        .into_iter()
        .filter(|id| id.ends_with("/task1/train"))
        .collect();
    assert_eq!(trained_task1.len(), 1, "{trained_task1:?}");
    // Every strategy's task-1 training is that one stage (an alias of it).
    let ran = report.ran_all_ids();
    for s in [
        "naive",
        "rnf_lrp",
        "rnf_si",
        "ewc_si",
        "random_freeze",
        "rnf_gxi",
    ] {
        assert!(ran.contains(&format!("{s}/seed0/task1/train")), "{s}");
    }
    // RNF with gradient × input prunes exactly like LRP-ε (LRP-0 is gradient × input in a
    // ReLU net), so its task-2 training has the same inputs and comes from the cache.
    assert_eq!(
        report.events.len(),
        report.ran().len() + report.cached().len()
    );
    assert!(!report.cached().is_empty());
}

#[test]
fn the_importance_correlation_pipeline_correlates_after_every_task() {
    let dir = tempfile::tempdir().unwrap();
    let mut small = vec![
        "training.epochs=1",
        "seeds=[0]",
        "tasks.permuted.count=2",
        "model.hidden=[32, 16]",
        "strategies.ewc_mas.ewc.importance.reference_size=20",
    ];
    let refs: Vec<String> = ["FIS", "MAS", "SIG"]
        .iter()
        .map(|m| format!("strategies.ewc_mas.correlate.methods.{m}.reference_size=20"))
        .collect();
    small.extend(refs.iter().map(String::as_str));
    let report =
        common::run_repo_pipeline("pipelines/importance_correlation.yaml", &small, dir.path());
    let all = report.ran_all_ids();
    for t in 1..=2 {
        assert!(all.contains(&format!("ewc_mas/seed0/task{t}/correlate")));
    }
    assert!(all.contains("ewc_mas/seed0/task1/consolidate"));
}
