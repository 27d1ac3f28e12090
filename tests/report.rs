//! `cfpipe report` on a tiny cached pipeline: tables, exports and figures, from the cache only.

mod common;
use common::{stderr, stdout, Fixture};

#[test]
fn report_writes_tables_exports_and_figures_from_the_cache() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let out_dir = f.path().join("rep");
    let out_s = out_dir.to_str().unwrap();
    // Nothing cached yet: the report names what is missing and how to compute it.
    let missing = f.cli(&["report", p, "--out", out_s, "--set", "seeds=[0, 1]"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("results missing from the cache"),
        "{}",
        stderr(&missing)
    );
    assert!(
        stderr(&missing).contains("cfpipe run"),
        "{}",
        stderr(&missing)
    );

    assert!(f
        .cli(&["run", p, "--quiet", "--set", "seeds=[0, 1]"])
        .status
        .success());
    let rep = f.cli(&["report", p, "--out", out_s, "--set", "seeds=[0, 1]"]);
    assert!(rep.status.success(), "{}", stderr(&rep));
    assert!(stdout(&rep).contains("wrote"));
    // The report never trains: a rerun afterwards still has everything cached.
    assert!(stdout(&f.cli(&["run", p, "--quiet", "--set", "seeds=[0, 1]"])).contains(" 0 ran"));

    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    for needle in [
        "## Final results",
        "| strategy | seeds | final mean accuracy | task-1 accuracy | forgetting (max) | forgetting (first) | BWT | free capacity |",
        "| naive | 2 |",
        "| rnf | 2 |",
        "## Mean accuracy over seen tasks, after each task",
        "## Free capacity after each task",
        "## Pruning-search evaluations per task",
        "## Accuracy matrices",
        "## Stage wall time",
        "![mean_accuracy.png](mean_accuracy.png)",
    ] {
        assert!(md.contains(needle), "report.md lacks `{needle}`:\n{md}");
    }
    assert!(md.contains(" ± "), "two seeds give mean ± std");

    let acc = std::fs::read_to_string(out_dir.join("accuracy.csv")).unwrap();
    let mut lines = acc.lines();
    assert_eq!(lines.next(), Some("strategy,seed,after_task,task,accuracy"));
    // 2 strategies × 2 seeds × (1 + 2) matrix entries.
    assert_eq!(lines.count(), 12);
    let metrics = std::fs::read_to_string(out_dir.join("metrics.csv")).unwrap();
    assert!(metrics.starts_with("strategy,seed,metric,task,value\n"));
    assert!(metrics.contains(",forgetting_max,,") && metrics.contains(",prune_evaluations,1,"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["summaries"].as_array().unwrap().len(), 2);

    for stem in ["mean_accuracy", "per_task", "prune_rnf"] {
        let svg = std::fs::read_to_string(out_dir.join(format!("{stem}.svg"))).unwrap();
        assert!(
            svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{stem}.svg"
        );
        assert!(svg.len() > 5_000, "{stem}.svg is trivial");
        let png = std::fs::read(out_dir.join(format!("{stem}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{stem}.png signature");
        assert!(png.len() > 10_000, "{stem}.png is trivial");
    }
    // The pruning search is drawn for every seed, with their mean, one panel per task that
    // prunes; rnf's capacity line is labelled with its strategy.
    let prune = std::fs::read_to_string(out_dir.join("prune_rnf.svg")).unwrap();
    for text in ["seed 0", "seed 1", "mean", "task 1", "(2 seeds)"] {
        assert!(prune.contains(text), "prune_rnf.svg lacks {text:?}");
    }
    let mean = std::fs::read_to_string(out_dir.join("mean_accuracy.svg")).unwrap();
    assert!(mean.contains("rnf free capacity"), "mean_accuracy.svg");

    // --dpi draws the same PNGs at another resolution; --full-range puts percent axes at 0–100.
    let hi = f.path().join("hi");
    let o = f.cli(&[
        "report",
        p,
        "--out",
        hi.to_str().unwrap(),
        "--set",
        "seeds=[0, 1]",
        "--dpi",
        "200",
        "--full-range",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let png = std::fs::read(hi.join("mean_accuracy.png")).unwrap();
    let size = |png: &[u8]| {
        let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
        (be(16), be(20))
    };
    assert_eq!(size(&png), (1800, 1200));
    let svg = std::fs::read_to_string(hi.join("per_task.svg")).unwrap();
    let zero = "\n0\n</text>";
    assert!(svg.contains(zero), "a 0–100 axis has a 0 tick");
    let fitted = std::fs::read_to_string(out_dir.join("per_task.svg")).unwrap();
    assert!(
        !fitted.contains(zero),
        "the fitted axis stays near the accuracies"
    );
    let o = f.cli(&[
        "report",
        p,
        "--out",
        hi.to_str().unwrap(),
        "--set",
        "seeds=[0, 1]",
        "--dpi",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("dots per inch"), "{}", stderr(&o));
}

#[test]
fn without_a_final_mask_the_last_free_capacity_is_not_computed_rather_than_missing() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    // `final_mask: true` is the default: spelling it out changes no key.
    let first = f.run(&[]);
    assert!(first.ran().contains("rnf/seed0/task2/mask"));
    let again = f.run(&["strategies.rnf.final_mask=true"]);
    assert!(again.ran().is_empty(), "reran {:?}", again.ran());
    // `false` declares no score, prune or mask after the last task, and changes nothing else.
    let f = Fixture::new();
    let r = f.run(&["strategies.rnf.final_mask=false"]);
    let ran = r.ran_all_ids();
    for kind in ["score", "prune", "mask"] {
        assert!(ran.contains(&format!("rnf/seed0/task1/{kind}")), "{ran:?}");
        assert!(
            r.events
                .iter()
                .all(|e| e.id != format!("rnf/seed0/task2/{kind}")),
            "{kind} after the last task"
        );
    }
    assert!(ran.contains("rnf/seed0/task2/evaluate"));
    assert_eq!(r.events.len() + 3, first.events.len());
    let set = ["--set", "strategies.rnf.final_mask=false"];
    let show = f.cli(&[&["show", p][..], &set[..]].concat());
    assert!(show.status.success(), "{}", stderr(&show));
    let out = stdout(&show);
    assert!(
        out.contains("free capacity after task 2: not computed (final_mask: false)"),
        "{out}"
    );
    let rnf_last = out
        .lines()
        .skip_while(|l| !l.starts_with("rnf / seed 0"))
        .find(|l| l.starts_with("task 2"))
        .unwrap();
    assert!(rnf_last.trim_end().ends_with("n/c"), "{rnf_last}");
    let out_dir = f.path().join("rep");
    let rep = f.cli(
        &[
            &["report", p, "--out", out_dir.to_str().unwrap()][..],
            &set[..],
        ]
        .concat(),
    );
    assert!(rep.status.success(), "{}", stderr(&rep));
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    let row = md.lines().find(|l| l.starts_with("| rnf | 1 |")).unwrap();
    assert!(row.ends_with("| not computed |"), "{row}");
    let naive = md.lines().find(|l| l.starts_with("| naive | 1 |")).unwrap();
    assert!(naive.ends_with("| 100.00 |"), "{naive}");
}
