//! Report provenance: each configuration keeps its own report folder, a report never silently
//! replaces another configuration's, and `report.json` says what produced it.

mod common;
use common::{stderr, stdout, Fixture};

fn report(f: &Fixture, extra: &[&str]) -> std::process::Output {
    let p = f.pipeline();
    common::cfpipe()
        .current_dir(f.path())
        .args(["report", p.to_str().unwrap()])
        .args(extra)
        .arg("--cache")
        .arg(f.cache_dir())
        .output()
        .unwrap()
}

fn report_json(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn a_report_with_other_overrides_gets_its_own_folder_and_says_what_made_it() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let lr = "training.lr=0.02";
    for set in [&[][..], &["--set", lr][..]] {
        let mut args = vec!["run", p, "--quiet"];
        args.extend(set);
        assert!(f.cli(&args).status.success());
    }
    let plain = report(&f, &[]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let plain_dir = f.path().join("reports/tiny");
    assert!(
        stdout(&plain).contains("reports/tiny"),
        "{}",
        stdout(&plain)
    );
    let before = std::fs::read(plain_dir.join("report.json")).unwrap();

    let other = report(&f, &["--set", lr]);
    assert!(other.status.success(), "{}", stderr(&other));
    // Its own folder; the first report is untouched.
    let dirs: Vec<String> = std::fs::read_dir(f.path().join("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    let other_dir = f
        .path()
        .join("reports")
        .join(dirs.iter().find(|d| d.starts_with("tiny@")).unwrap());
    assert_eq!(
        std::fs::read(plain_dir.join("report.json")).unwrap(),
        before
    );

    let prov = &report_json(&other_dir)["provenance"];
    assert_eq!(prov["set"], serde_json::json!([lr]));
    assert_eq!(prov["settings"]["training.lr"], "0.02");
    assert_eq!(prov["cfpipe_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(prov["devices"], serde_json::json!(["cpu"]));
    // The fixture lives outside any git repository.
    assert!(prov["git"].is_null());
    // Every run's last evaluation, keyed as in the cache.
    let finals = prov["final_stages"].as_object().unwrap();
    assert_eq!(finals.len(), 2);
    assert!(finals.contains_key("rnf/seed0/task2/evaluate"));
    let md = std::fs::read_to_string(other_dir.join("report.md")).unwrap();
    assert!(
        md.contains("## Provenance") && md.contains(&format!("`--set {lr}`")),
        "{md}"
    );
    let plain_prov = &report_json(&plain_dir)["provenance"];
    assert_eq!(plain_prov["set"], serde_json::json!([]));
    assert_ne!(plain_prov["final_stages"], prov["final_stages"]);
}

#[test]
fn a_report_never_replaces_another_configurations_report_unasked() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let lr = "training.lr=0.02";
    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    assert!(f.cli(&["run", p, "--quiet", "--set", lr]).status.success());
    let out = f.path().join("mine");
    let o = out.to_str().unwrap();
    assert!(report(&f, &["--out", o]).status.success());
    // The same configuration again is fine; another one is refused, and --force replaces.
    assert!(report(&f, &["--out", o]).status.success());
    let before = std::fs::read(out.join("report.json")).unwrap();
    let refused = report(&f, &["--out", o, "--set", lr]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--force"), "{}", stderr(&refused));
    assert_eq!(std::fs::read(out.join("report.json")).unwrap(), before);
    assert!(report(&f, &["--out", o, "--set", lr, "--force"])
        .status
        .success());
    assert_eq!(
        report_json(&out)["provenance"]["set"],
        serde_json::json!([lr])
    );
}

#[test]
fn a_named_report_goes_to_reports_name_and_is_protected_like_the_default_folder() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let lr = "training.lr=0.02";
    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    assert!(f.cli(&["run", p, "--quiet", "--set", lr]).status.success());
    let named = f.path().join("reports/mine");
    let first = report(&f, &["--name", "mine"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("reports/mine"),
        "{}",
        stdout(&first)
    );
    assert_eq!(
        report_json(&named)["provenance"]["set"],
        serde_json::json!([])
    );
    // The same configuration again is fine; another one is refused, and --force replaces.
    assert!(report(&f, &["--name", "mine"]).status.success());
    let before = std::fs::read(named.join("report.json")).unwrap();
    let refused = report(&f, &["--name", "mine", "--set", lr]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--force"), "{}", stderr(&refused));
    assert_eq!(std::fs::read(named.join("report.json")).unwrap(), before);
    let forced = report(&f, &["--name", "mine", "--set", lr, "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_eq!(
        report_json(&named)["provenance"]["set"],
        serde_json::json!([lr])
    );
    // Only the named folder was written.
    let dirs: Vec<String> = std::fs::read_dir(f.path().join("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(dirs, ["mine"]);
}

#[test]
fn a_report_name_with_out_or_a_path_in_it_is_a_usage_error() {
    let f = Fixture::new();
    let out = f.path().join("elsewhere");
    let both = report(&f, &["--name", "mine", "--out", out.to_str().unwrap()]);
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    let err = stderr(&both);
    assert!(err.contains("--name") && err.contains("--out"), "{err}");
    for bad in ["../mine", "a/b", "", ".."] {
        let o = report(&f, &["--name", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("--name"), "{bad}: {}", stderr(&o));
    }
    // Nothing was written anywhere.
    assert!(!out.exists());
    assert!(!f.path().join("reports").exists());
    assert!(!f.path().join("mine").exists());
}
