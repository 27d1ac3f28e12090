//! The commands as a user types them: status explains reruns, show prints the accuracy
//! matrices, cache ls/du/gc maintain the store, Ctrl-C leaves a consistent cache.

mod common;
use common::{stderr, stdout, Fixture};

#[test]
fn status_reports_cached_stages_and_why_others_would_run() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let fresh = stdout(&f.cli(&["status", p]));
    assert!(
        fresh.contains("split") && fresh.contains("never run"),
        "{fresh}"
    );
    assert!(f.cli(&["run", p, "--quiet"]).status.success());

    let json: serde_json::Value =
        serde_json::from_str(&stdout(&f.cli(&["status", p, "--json"]))).unwrap();
    let stages = json["stages"].as_array().unwrap();
    assert!(!stages.is_empty());
    for s in stages {
        assert!(
            s["id"].is_string() && s["kind"].is_string() && s["key"].as_str().unwrap().len() == 64
        );
        assert_eq!(s["cached"], serde_json::Value::Bool(true));
    }

    let changed = stdout(&f.cli(&["status", p, "--set", "strategies.rnf.prune.threshold=0.05"]));
    let line = changed
        .lines()
        .find(|l| l.starts_with("rnf/seed0/task1/prune"))
        .unwrap();
    assert!(
        line.contains("parameter changed: threshold: 0.3 -> 0.05"),
        "{line}"
    );
    let line = changed
        .lines()
        .find(|l| l.starts_with("rnf/seed0/task1/mask"))
        .unwrap();
    assert!(line.contains("waits on `rnf/seed0/task1/prune`"), "{line}");
    let line = changed
        .lines()
        .find(|l| l.starts_with("rnf/seed0/task1/score"))
        .unwrap();
    assert!(line.contains("cached"), "{line}");

    let lr = stdout(&f.cli(&["status", p, "--set", "training.lr=0.02"]));
    let line = lr
        .lines()
        .find(|l| l.starts_with("naive/seed0/task1/train"))
        .unwrap();
    assert!(line.contains("training.lr: 0.01 -> 0.02"), "{line}");
}

#[test]
fn run_prints_the_summary_line_last_and_show_prints_matrices() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let out = f.cli(&["run", p, "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let last = stdout(&out).lines().last().unwrap().to_string();
    let re_ok = last.starts_with("13 stages: 13 ran, 0 cached (") && last.ends_with(" s)");
    assert!(re_ok, "{last}");
    let again = stdout(&f.cli(&["run", p, "--quiet"]));
    assert!(
        again
            .lines()
            .last()
            .unwrap()
            .starts_with("13 stages: 0 ran, 13 cached ("),
        "{again}"
    );

    let show = stdout(&f.cli(&["show", p]));
    assert!(
        show.contains("naive / seed 0") && show.contains("rnf / seed 0"),
        "{show}"
    );
    assert!(show.contains("task 2"), "{show}");
    assert!(!show.contains("missing"), "{show}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&f.cli(&["show", p, "--json"]))).unwrap();
    let rnf = json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["strategy"] == "rnf")
        .unwrap();
    let row2 = rnf["accuracy"][1].as_array().unwrap();
    assert_eq!(row2.len(), 2);
    assert!(row2
        .iter()
        .all(|a| (0.0..=1.0).contains(&a.as_f64().unwrap())));
    let cap = rnf["free_capacity"][0].as_f64().unwrap();
    assert!(cap > 0.0 && cap < 1.0, "{cap}");
}

#[test]
fn show_names_missing_stages_and_the_command_that_computes_them() {
    let f = Fixture::new();
    let p = f.pipeline();
    let show = stdout(&f.cli(&["show", p.to_str().unwrap()]));
    assert!(
        show.contains("missing from the cache: naive/seed0/task1/evaluate"),
        "{show}"
    );
    assert!(show.contains("cfpipe run"), "{show}");
}

#[test]
fn gc_keeps_what_the_named_pipelines_reach() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    assert!(f
        .cli(&[
            "run",
            p,
            "--quiet",
            "--set",
            "strategies.rnf.prune.threshold=0.02"
        ])
        .status
        .success());
    let count = |f: &Fixture| stdout(&f.cli(&["cache", "ls"])).lines().count();
    let before = count(&f);
    // Every run registers a gc root and entries used within the grace period are kept (see
    // tests/team_cache.rs); unregister the variant and make the entries' last use old.
    let roots = stdout(&f.cli(&["cache", "roots", "ls"]));
    let variant = roots
        .lines()
        .find(|l| l.contains("threshold=0.02"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    assert!(f.cli(&["cache", "roots", "rm", variant]).status.success());
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for e in std::fs::read_dir(f.cache_dir().join("used")).unwrap() {
        let stamp = std::fs::File::options().write(true).open(e.unwrap().path());
        stamp.unwrap().set_modified(old).unwrap();
    }
    let gc = f.cli(&["cache", "gc", p]);
    assert!(gc.status.success(), "{}", stderr(&gc));
    assert!(stdout(&gc).contains("removed"));
    let after = count(&f);
    assert!(after < before && after == 13, "{before} -> {after}");
    let again = stdout(&f.cli(&["run", p, "--quiet"]));
    assert!(again.contains("0 ran, 13 cached"), "{again}");
    let du = stdout(&f.cli(&["cache", "du"]));
    assert!(du.contains("train") && du.contains("total"), "{du}");
}

#[test]
fn ctrl_c_stops_the_run_with_130_and_a_consistent_cache() {
    let f = Fixture::new();
    // Interrupt only once the run is under way: the split is published (so the Ctrl-C
    // handler, installed before any stage runs, is in place) and training, 5000 epochs long,
    // has begun. However loaded the machine, no fixed delay is assumed.
    let child = f.start_long_run(5000, &["--quiet"]);
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert_eq!(f.cli(&["cache", "verify"]).status.code(), Some(0));
}

#[test]
fn the_config_files_cache_dir_is_used_unless_a_flag_or_the_environment_names_one() {
    let f = Fixture::new();
    std::fs::write(
        f.path().join("cfpipe.toml"),
        "[cache]\ndir = \"team-cache\"\n",
    )
    .unwrap();
    let p = f.pipeline();
    let run = |extra: &[&str]| {
        let mut c = common::cfpipe();
        c.args(["run", p.to_str().unwrap(), "--quiet"])
            .args(extra)
            .current_dir(f.path());
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    // Resolved against the config file's directory, not the current one.
    assert!(run(&[]).contains(" ran, 0 cached"));
    assert!(f.path().join("team-cache/entries").is_dir());
    assert!(run(&[]).contains(" 0 ran,"));
    // The flag wins over the file.
    let other = f.path().join("flag-cache");
    assert!(run(&["--cache", other.to_str().unwrap()]).contains(" ran, 0 cached"));
    assert!(other.join("entries").is_dir());
}

/// Two pipelines with the same stage ids in one cache: each explains its reruns against its
/// own last run, not the other's.
#[test]
fn status_after_another_pipeline_ran_in_the_cache_names_only_the_real_change() {
    let f = Fixture::new();
    let a = f.pipeline();
    let text = std::fs::read_to_string(&a).unwrap();
    let b = f.path().join("other.yaml");
    std::fs::write(
        &b,
        text.replace("name: tiny", "name: other")
            .replace("hidden: [16, 12]", "hidden: [8]")
            .replace("batch_size: 16", "batch_size: 8"),
    )
    .unwrap();
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    assert!(f.cli(&["run", a, "--quiet"]).status.success());
    assert!(f.cli(&["run", b, "--quiet"]).status.success());
    let status = stdout(&f.cli(&["status", a, "--set", "training.epochs=2"]));
    let line = status
        .lines()
        .find(|l| l.starts_with("naive/seed0/task1/train"))
        .unwrap();
    assert!(
        line.contains("parameter changed: training.epochs: 3 -> 2"),
        "{line}"
    );
    assert!(
        !status.contains("hidden") && !status.contains("batch_size"),
        "{status}"
    );
}

/// `status`, `plan` and `dag` at scale: filters by strategy, seed and kind, a per-kind summary
/// first, and `dag` drawing a stage once for all its seeds.
#[test]
fn listings_filter_by_strategy_seed_and_kind_and_dag_collapses_seeds() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let seeds = "seeds=[0, 1, 2]";
    let status = stdout(&f.cli(&[
        "status",
        p,
        "--set",
        seeds,
        "--strategy",
        "rnf",
        "--seed",
        "1",
        "--kind",
        "prune",
    ]));
    let stages: Vec<&str> = status
        .lines()
        .filter(|l| l.contains("will run") || l.contains("cached  "))
        .filter(|l| l.contains('/'))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        stages,
        ["rnf/seed1/task1/prune", "rnf/seed1/task2/prune"],
        "{status}"
    );
    assert!(status.starts_with("by kind:"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["prune", "0", "2"]),
        "{status}"
    );
    // --pending drops what is cached.
    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    let pending = stdout(&f.cli(&["status", p, "--set", seeds, "--pending", "--seed", "0"]));
    assert!(
        pending.contains("0 stages: 0 cached, 0 to run"),
        "{pending}"
    );
    let plan: serde_json::Value = serde_json::from_str(&stdout(&f.cli(&[
        "plan",
        p,
        "--set",
        seeds,
        "--json",
        "--pending",
        "--kind",
        "train",
    ])))
    .unwrap();
    let planned = plan["stages"].as_array().unwrap();
    assert!(
        !planned.is_empty()
            && planned
                .iter()
                .all(|s| s["kind"] == "train" && s["run"] == true)
    );
    // dag: one block per stage for all three seeds; --all-seeds lists each.
    let dag = stdout(&f.cli(&["dag", p, "--set", seeds, "--kind", "prune"]));
    assert!(
        dag.contains("rnf/seed{0,1,2}/task1/prune  [prune]"),
        "{dag}"
    );
    assert_eq!(
        dag.lines().filter(|l| !l.starts_with(' ')).count(),
        2,
        "{dag}"
    );
    let all = stdout(&f.cli(&["dag", p, "--set", seeds, "--kind", "prune", "--all-seeds"]));
    assert_eq!(
        all.lines().filter(|l| !l.starts_with(' ')).count(),
        6,
        "{all}"
    );
}
