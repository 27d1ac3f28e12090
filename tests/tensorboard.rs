//! `report --tensorboard DIR` writes event files that the `tensorboard` Python package reads
//! back with the same scalars as `curves.csv`. CI installs the package (`.ci/run`); elsewhere
//! the test says it is skipped when the package is missing.

mod common;
use common::{stderr, Fixture};
use std::collections::BTreeMap;
use std::process::Command;

const READ_BACK: &str = r#"
import json, os, sys
from tensorboard.backend.event_processing import event_accumulator
root = sys.argv[1]
out = {}
for dirpath, _, files in os.walk(root):
    if not any(f.startswith("events.out.tfevents") for f in files):
        continue
    acc = event_accumulator.EventAccumulator(dirpath, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    run = os.path.relpath(dirpath, root)
    out[run] = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
print(json.dumps(out))
"#;

fn python_has_tensorboard() -> bool {
    Command::new("python3")
        .args(["-c", "import tensorboard"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn tensorboard_reads_back_every_curve_and_metric() {
    if !python_has_tensorboard() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the tensorboard Python package (.ci/run)"
        );
        eprintln!("skipped: python3 -m pip install tensorboard to run this test");
        return;
    }
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    let (out, tb) = (f.path().join("rep"), f.path().join("tb"));
    let rep = f.cli(&[
        "report",
        p,
        "--out",
        out.to_str().unwrap(),
        "--tensorboard",
        tb.to_str().unwrap(),
    ]);
    assert!(rep.status.success(), "{}", stderr(&rep));
    let read = Command::new("python3")
        .args(["-c", READ_BACK, tb.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let runs: BTreeMap<String, BTreeMap<String, Vec<(i64, f64)>>> =
        serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(
        runs.keys().cloned().collect::<Vec<_>>(),
        ["naive/seed0", "rnf/seed0"]
    );
    // Every row of curves.csv is a scalar at its step (epochs count through the tasks).
    let csv = std::fs::read_to_string(out.join("curves.csv")).unwrap();
    let mut rows = 0;
    for line in csv.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        let (strategy, seed, task, epoch, metric) = (c[0], c[2], c[3], c[4], c[5]);
        let value: f64 = c[6].parse().unwrap();
        let task: i64 = task.parse().unwrap();
        let step = (task - 1) * 3 + epoch.parse::<i64>().unwrap();
        let tag = match metric {
            "loss" => format!("train/loss/task{task}"),
            _ => format!("train/accuracy/task{task}"),
        };
        let series = &runs[&format!("{strategy}/seed{seed}")][&tag];
        let got = series.iter().find(|(s, _)| *s == step).unwrap().1;
        // Event files hold f32.
        assert_eq!(got, value as f32 as f64, "{tag} at {step}");
        rows += 1;
    }
    assert_eq!(rows, 2 * 2 * 3 * 2);
    // And the evaluation metrics, per task.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let run = &report["runs"][1];
    assert_eq!(run["strategy"], "rnf");
    let after2 = run["accuracy"][1].as_array().unwrap();
    let mean = after2.iter().map(|v| v.as_f64().unwrap()).sum::<f64>() / 2.0;
    let tb_mean = runs["rnf/seed0"]["eval/mean_accuracy"]
        .iter()
        .find(|(s, _)| *s == 2)
        .unwrap()
        .1;
    assert_eq!(tb_mean, mean as f32 as f64);
    assert_eq!(runs["rnf/seed0"]["eval/free_capacity"].len(), 2);
}
