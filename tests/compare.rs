//! `cfpipe compare`: the experiment table, read from the cache alone, with the same numbers
//! as `report`, the settings that tell pipelines apart, and a paired test against a baseline.

mod common;
use common::{stderr, stdout, Fixture};

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_str(&stdout(out)).unwrap()
}

/// Five tasks (so the largest drop and task 1's drop differ), three seeds, one epoch.
#[test]
fn compare_gives_the_numbers_report_gives_for_the_same_cache() {
    let f = Fixture::new();
    let p = "pipelines/mnist_split.yaml";
    let set = ["--set", "seeds=[0, 1, 2]", "--set", "training.epochs=1"];
    let cli = |args: &[&str]| {
        let all: Vec<&str> = args.iter().chain(&set).copied().collect();
        f.cli(&all)
    };
    assert!(cli(&["run", p, "--quiet"]).status.success());
    let out_dir = f.path().join("report");
    let rep = cli(&["report", p, "--out", out_dir.to_str().unwrap()]);
    assert!(rep.status.success(), "{}", stderr(&rep));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).unwrap()).unwrap();
    let rows = json(&cli(&["compare", p, "--json", "--baseline", "naive"]));
    let rows = rows.as_array().unwrap();
    let summaries = report["summaries"].as_array().unwrap();
    assert_eq!(rows.len(), summaries.len());
    for (row, s) in rows.iter().zip(summaries) {
        assert_eq!(row["strategy"], s["strategy"]);
        assert_eq!(row["final_accuracy"], s["final_mean_accuracy"]);
        assert_eq!(row["task1_accuracy"], s["final_task1_accuracy"]);
        assert_eq!(row["forgetting"], s["forgetting_max"]);
        assert_eq!(row["bwt"], s["backward_transfer"]);
        assert_eq!(row["seeds"], s["seeds"]);
        assert!(row["compute_s"].as_f64().unwrap() > 0.0);
    }
    // The baseline row has no comparison; the other compares over all three seeds.
    assert!(rows[0].get("vs_baseline").is_none());
    let vs = &rows[1]["vs_baseline"];
    assert_eq!(vs["baseline"], "naive");
    assert_eq!(vs["n"], 3);
    let delta = vs["delta"]["mean"].as_f64().unwrap();
    let gap = rows[1]["final_accuracy"]["mean"].as_f64().unwrap()
        - rows[0]["final_accuracy"]["mean"].as_f64().unwrap();
    assert!((delta - gap).abs() < 1e-12, "{delta} vs {gap}");
    // With three seeds the sign-flip test's p is a multiple of 1/8.
    let p_exact = vs["p_exact"].as_f64().unwrap();
    assert_eq!((p_exact * 8.0).fract(), 0.0, "{p_exact}");
}

#[test]
fn two_pipelines_are_told_apart_by_the_settings_that_differ() {
    let f = Fixture::new();
    let a = f.pipeline();
    let text = std::fs::read_to_string(&a).unwrap();
    let b = f.path().join("b.yaml");
    std::fs::write(
        &b,
        text.replace("name: tiny", "name: tiny_b")
            .replace("lr: 0.01", "lr: 0.02"),
    )
    .unwrap();
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    for p in [a, b] {
        assert!(f.cli(&["run", p, "--quiet"]).status.success());
    }
    let rows = json(&f.cli(&["compare", a, b, "--json"]));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    let seen: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["pipeline"].as_str().unwrap().to_string(),
                r["strategy"].as_str().unwrap().to_string(),
                r["params"]["training.lr"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("tiny", "naive", "0.01"),
            ("tiny", "rnf", "0.01"),
            ("tiny_b", "naive", "0.02"),
            ("tiny_b", "rnf", "0.02"),
        ]
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    );
    // Only what differs is a column.
    assert_eq!(rows[0]["params"].as_object().unwrap().len(), 1);
    // The text table sorts best first and names the column.
    let text = f.cli(&["compare", a, b, "--sort", "final-accuracy"]);
    assert!(text.status.success(), "{}", stderr(&text));
    let table = stdout(&text);
    assert!(
        table.lines().next().unwrap().contains("training.lr"),
        "{table}"
    );
    let finals: Vec<f64> = rows
        .iter()
        .map(|r| r["final_accuracy"]["mean"].as_f64().unwrap())
        .collect();
    let best = finals.iter().cloned().fold(f64::MIN, f64::max);
    let first_row = table.lines().nth(1).unwrap();
    assert!(
        first_row.contains(&format!("{:.2}", best * 100.0)),
        "{table}"
    );
}

#[test]
fn compare_names_what_is_missing_and_computes_nothing() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let out = f.cli(&["compare", p]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("naive/seed0/task1/evaluate"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("cfpipe run"), "{}", stderr(&out));
    assert!(
        !f.cache_dir().join("entries").exists()
            || std::fs::read_dir(f.cache_dir().join("entries"))
                .unwrap()
                .next()
                .is_none()
    );
    let bad = f.cli(&["compare", p, "--baseline", "ewc"]);
    assert_ne!(bad.status.code(), Some(0));
}

/// Write `edit` of the fixture pipeline as `file` beside it; its path.
fn write_edited(f: &Fixture, file: &str, edit: impl Fn(String) -> String) -> String {
    let path = f.path().join(file);
    std::fs::write(&path, edit(std::fs::read_to_string(f.pipeline()).unwrap())).unwrap();
    path.to_str().unwrap().to_string()
}

/// Each row as (pipeline, strategy, params), to compare whole tables at once.
type Seen = Vec<(String, String, Vec<(String, String)>)>;

fn seen(rows: &serde_json::Value) -> Seen {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let params = r["params"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            (
                r["pipeline"].as_str().unwrap().to_string(),
                r["strategy"].as_str().unwrap().to_string(),
                params,
            )
        })
        .collect()
}

fn row(pipeline: &str, strategy: &str, params: &[(&str, String)]) -> Seen {
    vec![(
        pipeline.to_string(),
        strategy.to_string(),
        params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )]
}

#[test]
fn a_strategy_whose_own_settings_differ_between_pipelines_shows_them_inherited_ones_included() {
    let f = Fixture::new();
    // A's rnf05 inherits rnf's threshold through `extends:`; B's rnf05 takes rnf through a
    // YAML merge key and writes its own threshold; `solo` is B's alone.
    let (inherited, own, solo) = (0.3, 0.5, 0.7);
    let base = |t: String| t.replace("threshold: 0.3", &format!("threshold: {inherited}"));
    let a = write_edited(&f, "a.yaml", |t| {
        format!("{}  rnf05:\n    extends: rnf\n", base(t))
    });
    let b = write_edited(&f, "b.yaml", |t| {
        let t = base(t)
            .replace("name: tiny", "name: tiny_b")
            .replace("  rnf:\n", "  rnf: &rnf\n");
        format!(
            "{t}  rnf05:\n    <<: *rnf\n    prune:\n      threshold: {own}\n      step_ratio: 0.1\n  \
             solo:\n    extends: rnf\n    prune:\n      threshold: {solo}\n"
        )
    });
    for p in [&a, &b] {
        let run = f.cli(&["run", p, "--quiet"]);
        assert!(run.status.success(), "{}", stderr(&run));
    }
    let rows = json(&f.cli(&["compare", &a, &b, "--json"]));
    // Only rnf05 differs, by its threshold; rnf (the same in both) and solo (nothing to
    // differ from) add no column, and `extends` is resolved away rather than compared.
    let key = "strategies.rnf05.prune.threshold";
    let expected: Seen = [
        row("tiny", "naive", &[]),
        row("tiny", "rnf", &[]),
        row("tiny", "rnf05", &[(key, inherited.to_string())]),
        row("tiny_b", "naive", &[]),
        row("tiny_b", "rnf", &[]),
        row("tiny_b", "rnf05", &[(key, own.to_string())]),
        row("tiny_b", "solo", &[]),
    ]
    .concat();
    assert_eq!(seen(&rows), expected);
    let text = f.cli(&["compare", &a, &b]);
    assert!(text.status.success(), "{}", stderr(&text));
    let table = stdout(&text);
    assert!(table.lines().next().unwrap().contains(key), "{table}");
}

#[test]
fn a_swept_strategy_setting_shows_each_variants_own_value_against_another_pipeline() {
    let f = Fixture::new();
    let (low, high) = (0.3, 0.5);
    let a = write_edited(&f, "a.yaml", |t| {
        format!("{t}sweep:\n  strategies.rnf.prune.threshold: [{low}, {high}]\n")
    });
    let b = write_edited(&f, "b.yaml", |t| {
        t.replace("name: tiny", "name: tiny_b")
            .replace("threshold: 0.3", &format!("threshold: {high}"))
    });
    for p in [&a, &b] {
        let run = f.cli(&["run", p, "--quiet"]);
        assert!(run.status.success(), "{}", stderr(&run));
    }
    let rows = json(&f.cli(&["compare", &a, &b, "--json"]));
    // A's file says `low`, but each of its variants ran with its sweep value, and shows that.
    let key = "strategies.rnf.prune.threshold";
    let variant = |t: f64| format!("rnf@threshold={t}");
    let expected: Seen = [
        row("tiny", "naive", &[]),
        row(
            "tiny",
            &variant(low),
            &[(key, low.to_string()), ("threshold", low.to_string())],
        ),
        row(
            "tiny",
            &variant(high),
            &[(key, high.to_string()), ("threshold", high.to_string())],
        ),
        row("tiny_b", "naive", &[]),
        row("tiny_b", "rnf", &[(key, high.to_string())]),
    ]
    .concat();
    assert_eq!(seen(&rows), expected);
}
