//! The pipeline file shipped in the repo runs on the bundled MNIST digits (shortened with
//! `--set` so the suite stays fast; the file itself is what is exercised).

mod common;

#[test]
fn the_bundled_mnist_split_pipeline_runs_and_rnf_freezes_units() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cfpipe"))
        .current_dir(root)
        .args([
            "run",
            "pipelines/mnist_split.yaml",
            "--quiet",
            "--set",
            "training.epochs=1",
        ])
        .arg("--cache")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        common::stdout(&out).contains("34 stages: 34 ran, 0 cached"),
        "{}",
        common::stdout(&out)
    );
    let show = std::process::Command::new(env!("CARGO_BIN_EXE_cfpipe"))
        .current_dir(root)
        .args([
            "show",
            "pipelines/mnist_split.yaml",
            "--json",
            "--set",
            "training.epochs=1",
        ])
        .arg("--cache")
        .arg(dir.path())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    for run in v.as_array().unwrap() {
        let first = run["accuracy"][0][0].as_f64().unwrap();
        assert!(first > 0.95, "task 1 (0 vs 1) is easy: {first}");
        let rows = run["accuracy"].as_array().unwrap();
        assert_eq!(rows.len(), 5);
    }
    let rnf = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["strategy"] == "rnf")
        .unwrap();
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
