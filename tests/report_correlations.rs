//! `cfpipe report` on a tiny pipeline with a `correlate` strategy: `correlations.csv` holds
//! exactly the cached values, `report.md` the tables, `report.json` the summary, and the
//! heatmap and correlation-vs-task figures are drawn; a pipeline without `correlate` gets none
//! of it, and a missing `correlate` stage is named.

mod common;
use common::{stderr, Fixture, PIPELINE};

const STUDY: &str = r#"  study:
    freeze: none
    correlate:
      methods:
        fisher: {method: fisher, reference_size: 30, reference_split: train}
        mas: {method: mas, reference_size: 30, reference_split: train}
        random: {method: random}
      squared: [mas]
      accumulate: true
"#;

/// The fixture pipeline with only `naive`, two seeds.
fn naive_only() -> String {
    PIPELINE
        .split("  rnf:")
        .next()
        .unwrap()
        .replace("seeds: [0]", "seeds: [0, 1]")
}

#[test]
fn report_has_the_cached_correlations_as_csv_tables_json_and_figures() {
    let f = Fixture::with_pipeline(&naive_only());
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let out = f.path().join("rep");
    let out_s = out.to_str().unwrap();

    // Without a correlate strategy there is no trace of correlations.
    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    let rep = f.cli(&["report", p, "--out", out_s]);
    assert!(rep.status.success(), "{}", stderr(&rep));
    assert!(!out.join("correlations.csv").exists());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(!md.contains("correlation"), "{md}");
    let json = std::fs::read_to_string(out.join("report.json")).unwrap();
    assert!(!json.contains("correlat"), "{json}");
    std::fs::remove_dir_all(&out).unwrap();

    // The study trains like naive, so only its correlate stages are missing: they are named.
    f.write_pipeline(&format!("{}{STUDY}", naive_only()));
    let missing = f.cli(&["report", p, "--out", out_s]);
    assert_eq!(missing.status.code(), Some(1));
    let err = stderr(&missing);
    assert!(err.contains("study/seed0/task1/correlate"), "{err}");
    assert!(err.contains("cfpipe run"), "{err}");
    assert!(!out.join("correlations.csv").exists());

    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    let rep = f.cli(&["report", p, "--out", out_s]);
    assert!(rep.status.success(), "{}", stderr(&rep));

    // correlations.csv: one row per seed × task × layer × pair, each the cached value.
    let methods = ["fisher", "mas", "mas^2", "random"];
    let (seeds, tasks, layers, pairs) = (2, 2, 3, methods.len() * (methods.len() - 1) / 2);
    let csv = std::fs::read_to_string(out.join("correlations.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("strategy,seed,task,layer,head,a,b,pearson,spearman")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), seeds * tasks * layers * pairs);
    let mut expected = Vec::new();
    for seed in 0..seeds {
        for t in 1..=tasks {
            let c = f.json_of(
                &format!("study/seed{seed}/task{t}/correlate"),
                "correlate.json",
            );
            for layer in c["layers"].as_array().unwrap() {
                for pc in layer["pairs"].as_array().unwrap() {
                    expected.push(vec![
                        "study".to_string(),
                        seed.to_string(),
                        t.to_string(),
                        (layer["layer"].as_u64().unwrap() + 1).to_string(),
                        layer["head"].to_string(),
                        pc["a"].as_str().unwrap().to_string(),
                        pc["b"].as_str().unwrap().to_string(),
                        pc["pearson"].as_f64().unwrap().to_string(),
                        pc["spearman"].as_f64().unwrap().to_string(),
                    ]);
                }
            }
        }
    }
    for (row, want) in rows.iter().zip(&expected) {
        assert_eq!(row, want);
        // And the numbers read back as exactly the cached ones.
        assert_eq!(row[7].parse::<f64>().unwrap().to_string(), want[7]);
    }
    let heads = rows.iter().filter(|r| r[4] == "true").count();
    assert_eq!(heads, seeds * tasks * pairs, "one head layer per report");

    // report.md: a table per layer with Pearson and Spearman, mean ± std over the two seeds.
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "## Importance correlations",
        "### study: methods fisher, mas, mas^2, random (2 seed(s))",
        "layer 1 (64→16), after task:",
        "layer 2 (16→12), after task:",
        "head (12→2), after task:",
        "| pair | | T1 | T2 |",
        "![correlation_heatmap_study.png](correlation_heatmap_study.png)",
        "![correlation_vs_task_study.png](correlation_vs_task_study.png)",
    ] {
        assert!(md.contains(needle), "report.md lacks `{needle}`:\n{md}");
    }
    let cell = |seed: usize, t: usize, what: &str| {
        let c = f.json_of(
            &format!("study/seed{seed}/task{t}/correlate"),
            "correlate.json",
        );
        c["layers"][0]["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["a"] == "fisher" && p["b"] == "mas")
            .unwrap()[what]
            .as_f64()
            .unwrap()
    };
    for what in ["pearson", "spearman"] {
        let fmt = |t: usize| {
            let (a, b) = (cell(0, t, what), cell(1, t, what));
            let mean = (a + b) / 2.0;
            let std = ((a - mean).powi(2) + (b - mean).powi(2)).sqrt();
            format!("{mean:.2} ± {std:.2}")
        };
        let name = if what == "pearson" {
            "Pearson"
        } else {
            "Spearman"
        };
        let row = format!("| fisher ~ mas | {name} | {} | {} |", fmt(1), fmt(2));
        assert!(md.contains(&row), "report.md lacks `{row}`:\n{md}");
    }

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let corr = json["correlations"].as_array().unwrap();
    assert_eq!(corr.len(), 1);
    assert_eq!(corr[0]["strategy"], "study");
    assert_eq!(corr[0]["layers"].as_array().unwrap().len(), layers);
    assert_eq!(
        corr[0]["layers"][0]["pairs"].as_array().unwrap().len(),
        pairs
    );

    for (stem, labels) in [
        (
            "correlation_heatmap_study",
            &["fisher", "mas^2", "random", "layer 1 (64→16)", "1.00"][..],
        ),
        (
            "correlation_vs_task_study",
            &["fisher ~ mas", "mas ~ random", "head (12→2)", "Pearson r"][..],
        ),
    ] {
        let svg = std::fs::read_to_string(out.join(format!("{stem}.svg"))).unwrap();
        assert!(
            svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{stem}.svg"
        );
        assert!(svg.len() > 5_000, "{stem}.svg is trivial");
        for l in labels {
            assert!(svg.contains(l), "{stem}.svg lacks {l:?}");
        }
        let png = std::fs::read(out.join(format!("{stem}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{stem}.png signature");
        assert!(png.len() > 10_000, "{stem}.png is trivial");
    }
    // The heatmap has a cell per method pair per layer, each with its value written in it
    // (the SVG puts a text's content on a line of its own); the diagonal is 1.00.
    let heat = std::fs::read_to_string(out.join("correlation_heatmap_study.svg")).unwrap();
    let values: Vec<f64> = heat
        .lines()
        .filter(|l| {
            let d = l.trim_start_matches('-');
            d.len() == 4 && d.as_bytes()[1] == b'.' && d.parse::<f64>().is_ok()
        })
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(values.len(), methods.len() * methods.len() * layers);
    assert!(values.iter().filter(|&&v| v == 1.0).count() >= methods.len() * layers);
}
