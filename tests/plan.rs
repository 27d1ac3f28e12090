//! `cfpipe plan`: what `run` will compute, before it runs, and what it will cost.

mod common;
use common::{stderr, stdout, Fixture};
use std::collections::BTreeSet;

/// The stage ids `plan --json` says will run, and its per-kind estimate bases.
fn planned(f: &Fixture, set: &[&str]) -> (BTreeSet<String>, serde_json::Value) {
    let p = f.pipeline();
    let mut args = vec!["plan", p.to_str().unwrap(), "--json"];
    for s in set {
        args.extend(["--set", s]);
    }
    let out = f.cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let ids = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["run"] == true)
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    (ids, v["kinds"].clone())
}

/// The stage ids `run` computed, from its per-stage lines.
fn ran(f: &Fixture, set: &[&str]) -> BTreeSet<String> {
    let p = f.pipeline();
    let mut args = vec!["run", p.to_str().unwrap()];
    for s in set {
        args.extend(["--set", s]);
    }
    let out = f.cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .filter_map(|l| l.strip_prefix("ran "))
        .map(|l| l.trim_start().split(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn plan_names_exactly_the_stages_run_then_computes() {
    let f = Fixture::new();
    // A fresh cache: everything, with no estimate yet.
    let (plan, kinds) = planned(&f, &[]);
    assert!(kinds
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["basis"] == "none"));
    let did = ran(&f, &[]);
    assert!(!did.is_empty());
    assert_eq!(plan, did);
    // A full cache: nothing.
    let (plan, _) = planned(&f, &[]);
    assert!(plan.is_empty(), "{plan:?}");
    assert!(ran(&f, &[]).is_empty());
    // A threshold change: rnf's prune and what follows it, estimated from what ran before.
    let t = ["strategies.rnf.prune.threshold=0.05"];
    let (plan, kinds) = planned(&f, &t);
    assert!(plan.contains("rnf/seed0/task1/prune"));
    assert!(plan.iter().all(|id| id.starts_with("rnf/")), "{plan:?}");
    let train = kinds
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "train")
        .unwrap();
    assert_eq!(train["basis"], "measured");
    assert!(train["estimate_s"].as_f64().unwrap() > 0.0);
    assert_eq!(plan, ran(&f, &t));
}

/// The per-stage estimates of `plan --json` for the stages it says will run.
fn estimates(f: &Fixture, set: &[&str]) -> std::collections::BTreeMap<String, Option<f64>> {
    let p = f.pipeline();
    let mut args = vec!["plan", p.to_str().unwrap(), "--json"];
    for s in set {
        args.extend(["--set", s]);
    }
    let v: serde_json::Value = serde_json::from_str(&stdout(&f.cli(&args))).unwrap();
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["run"] == true)
        .map(|s| (s["id"].as_str().unwrap().into(), s["estimate_s"].as_f64()))
        .collect()
}

#[test]
fn after_a_run_the_report_sets_the_plans_estimate_beside_the_actual_time() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    // A threshold change, planned and then run: the report shows for each stage it computed
    // exactly what plan said before the run, beside the time the stage took.
    let t = ["strategies.rnf.prune.threshold=0.05"];
    let said = estimates(&f, &t);
    assert!(!said.is_empty());
    assert_eq!(ran(&f, &t), said.keys().cloned().collect());
    let out = f.path().join("rep");
    let o = f.cli(&["report", p, "--set", t[0], "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(out.join("stages.csv")).unwrap();
    let mut header = csv.lines().next().unwrap().split(',');
    assert_eq!(header.nth(5), Some("estimate_s"));
    let mut seen = 0;
    for line in csv.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let recorded = cols[5].parse::<f64>().ok();
        match said.get(cols[0]) {
            Some(want) => {
                assert_eq!(recorded, *want, "{}", cols[0]);
                assert!(!cols[6].is_empty(), "{line}: no basis");
                seen += 1;
            }
            // Stages the first run computed were estimated on an empty cache: no basis.
            None => assert!(recorded.is_none(), "{line}"),
        }
    }
    assert_eq!(seen, said.len());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Plan estimate and actual time"), "{md}");
    assert!(md.contains("| train | "), "{md}");
}
