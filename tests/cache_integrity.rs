//! The cache under damage, crashes, concurrency and failure.

mod common;
use cfpipe::exec::Outcome;
use common::{set, stderr, stdout, Fixture};
use std::collections::BTreeMap;
use std::time::Duration;

fn content_hashes(r: &cfpipe::exec::RunReport) -> BTreeMap<String, String> {
    let cache_hash = |e: &cfpipe::exec::StageEvent| e.key.map(|k| k.to_hex()).unwrap_or_default();
    r.events
        .iter()
        .map(|e| (e.id.clone(), cache_hash(e)))
        .collect()
}

#[test]
fn a_flipped_byte_is_detected_and_the_stage_recomputed() {
    let f = Fixture::new();
    let first = f.run(&[]);
    let key = first
        .events
        .iter()
        .find(|e| e.id == "naive/seed0/task1/train")
        .unwrap()
        .key
        .unwrap();
    let cache = cfpipe::cache::Cache::open(f.cache_dir()).unwrap();
    let model = cache.entry_dir(&key).join("out/model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x10;
    std::fs::write(&model, bytes).unwrap();

    let verify = f.cli(&["cache", "verify"]);
    assert_eq!(verify.status.code(), Some(3), "{}", stdout(&verify));
    assert!(stdout(&verify).contains("out/model.safetensors"));

    let r = f.run(&[]);
    // Recomputed deterministically to the same bytes, so nothing downstream reruns.
    assert_eq!(r.ran(), set(&["naive/seed0/task1/train"]));
    let ev = r
        .events
        .iter()
        .find(|e| e.id == "naive/seed0/task1/train")
        .unwrap();
    assert!(
        matches!(&ev.outcome, Outcome::Ran { replaced_corrupt: Some(f), .. } if f == "out/model.safetensors")
    );
    assert_eq!(f.cli(&["cache", "verify"]).status.code(), Some(0));
}

#[test]
fn a_flipped_byte_is_still_detected_after_a_cached_rerun_remembered_the_entry_as_verified() {
    let f = Fixture::new();
    let first = f.run(&[]);
    // A cached rerun hashes every entry once and remembers them as verified, so the next
    // cached rerun reads no file twice.
    assert!(f.run(&[]).ran().is_empty());
    let memo = f.cache_dir().join("index/verified.json");
    let remembered: BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(&memo).unwrap()).unwrap();
    let key = first
        .events
        .iter()
        .find(|e| e.id == "rnf/seed0/task2/train")
        .unwrap()
        .key
        .unwrap();
    assert!(
        remembered.contains_key(&key.to_hex()),
        "the train entry is remembered"
    );
    let keys: std::collections::BTreeSet<_> = first.events.iter().filter_map(|e| e.key).collect();
    assert_eq!(
        remembered.len(),
        keys.len(),
        "every entry served is remembered"
    );

    // Flip a byte in place and put the modification time back, as a careful vandal would:
    // the change time still moves, and the entry is hashed and found out.
    let cache = cfpipe::cache::Cache::open(f.cache_dir()).unwrap();
    let model = cache.entry_dir(&key).join("out/model.safetensors");
    let mtime = std::fs::metadata(&model).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&model).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&model, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&model)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(
        std::fs::metadata(&model).unwrap().modified().unwrap(),
        mtime
    );
    let r = f.run(&[]);
    assert_eq!(r.ran(), set(&["rnf/seed0/task2/train"]));
    let ev = r
        .events
        .iter()
        .find(|e| e.id == "rnf/seed0/task2/train")
        .unwrap();
    assert!(
        matches!(&ev.outcome, Outcome::Ran { replaced_corrupt: Some(f), .. } if f == "out/model.safetensors")
    );
    assert_eq!(f.cli(&["cache", "verify"]).status.code(), Some(0));
}

#[test]
fn the_same_pipeline_and_seed_give_identical_artifacts_in_fresh_caches() {
    let f = Fixture::new();
    let a = f.run_in(&f.path().join("cache_a"), &[], 1);
    let b = f.run_in(&f.path().join("cache_b"), &[], 2);
    assert_eq!(content_hashes(&a), content_hashes(&b));
    // Keys are derived from input *content*, so equal keys everywhere mean equal artifacts; check
    // the artifact bytes' hashes directly too.
    let ca = cfpipe::cache::Cache::open(f.path().join("cache_a")).unwrap();
    let cb = cfpipe::cache::Cache::open(f.path().join("cache_b")).unwrap();
    let keys = ca.keys().unwrap();
    assert_eq!(keys, cb.keys().unwrap());
    for k in keys {
        assert_eq!(
            ca.read_manifest(&k).unwrap().content_hash,
            cb.read_manifest(&k).unwrap().content_hash
        );
    }
    // A different seed does change the artifacts (so this test can fail).
    let c = f.run_in(&f.path().join("cache_c"), &["seeds=[1]"], 1);
    assert_ne!(
        content_hashes(&a).get("naive/seed0/task1/train"),
        content_hashes(&c).get("naive/seed1/task1/train")
    );
}

#[test]
fn sigkill_mid_stage_leaves_a_verifiable_cache_and_the_next_run_completes() {
    let f = Fixture::new();
    // Wait until the split is published and training has begun, then kill without warning.
    // 10,000 epochs: at 2,000 the whole run took about 0.3 s on a 2-core Zen 5, too close to the
    // 100 ms pause below for the kill to be sure to land mid-way.
    let mut child = f.start_long_run(10000, &["--quiet"]);
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run must have been killed mid-way");

    let verify = f.cli(&["cache", "verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", stdout(&verify));
    let out = f.cli(&[
        "run",
        f.pipeline().to_str().unwrap(),
        "--quiet",
        "--set",
        "training.epochs=10000",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("stages:"));
    assert_eq!(f.cli(&["cache", "verify"]).status.code(), Some(0));
    // The killed process's lease, the breaker of its takeover and any temp entry are gone.
    assert_eq!(leftovers(&f.cache_dir()), Vec::<String>::new());
}

/// Files a finished run should not leave: anything in tmp/, trash/ or leases/, and temp files
/// (dot files) anywhere in the cache.
fn leftovers(cache: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![cache.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(cache).unwrap().display().to_string();
            let transient = ["tmp/", "trash/", "leases/"]
                .iter()
                .any(|t| rel.starts_with(t));
            if p.is_dir() {
                stack.push(p);
            } else if transient || e.file_name().to_string_lossy().starts_with('.') {
                out.push(rel);
            }
        }
    }
    out
}

#[test]
fn two_processes_on_one_fresh_cache_compute_each_stage_once() {
    let f = Fixture::new();
    let spawn = || {
        common::cfpipe()
            .args([
                "run",
                f.pipeline().to_str().unwrap(),
                "--quiet",
                "--set",
                "training.epochs=30",
            ])
            .arg("--cache")
            .arg(f.cache_dir())
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert!(
        a.status.success() && b.status.success(),
        "{}{}",
        stderr(&a),
        stderr(&b)
    );
    let (n, ran_a) = common::summary(&a);
    let (_, ran_b) = common::summary(&b);
    assert_eq!(
        ran_a + ran_b,
        n,
        "each stage computed exactly once across both processes"
    );
    assert_eq!(f.cli(&["cache", "verify"]).status.code(), Some(0));
}

#[test]
fn a_nan_loss_fails_the_stage_by_name_and_caches_nothing_of_it() {
    let f = Fixture::new();
    let out = f.cli(&[
        "run",
        f.pipeline().to_str().unwrap(),
        "--quiet",
        "--set",
        "training.lr=1e38",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("naive/seed0/task1/train"), "{err}");
    assert!(err.contains("loss is"), "{err}");
    // The split succeeded and is cached; the failed stage and its dependents are not.
    assert!(stdout(&out).contains("1 ran"), "{}", stdout(&out));
    let st = f.cli(&[
        "status",
        f.pipeline().to_str().unwrap(),
        "--json",
        "--set",
        "training.lr=1e38",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&st)).unwrap();
    let cached: Vec<&str> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["cached"].as_bool().unwrap())
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(cached, vec!["split"]);
}

#[test]
fn exec_stage_runs_one_stage_from_its_request() {
    let f = Fixture::new();
    let r = f.run(&[]);
    let key = r
        .events
        .iter()
        .find(|e| e.id == "rnf/seed0/task2/prune")
        .unwrap()
        .key
        .unwrap();
    let cache = cfpipe::cache::Cache::open(f.cache_dir()).unwrap();
    let before = cache.read_manifest(&key).unwrap().content_hash;
    cache.evict(&key).unwrap();
    let out = f.cli(&["exec-stage", &key.to_hex()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ran"));
    assert_eq!(cache.read_manifest(&key).unwrap().content_hash, before);
    let bad = f.cli(&["exec-stage", "00"]);
    assert_eq!(bad.status.code(), Some(1));
}

/// The manifest of the entry of stage `id` in the fixture's cache.
fn manifest_of(f: &Fixture, report: &cfpipe::exec::RunReport, id: &str) -> std::path::PathBuf {
    let key = report
        .events
        .iter()
        .find(|e| e.id == id)
        .unwrap()
        .key
        .unwrap();
    let cache = cfpipe::cache::Cache::open(f.cache_dir()).unwrap();
    cache.entry_dir(&key).join("manifest.json")
}

#[test]
fn a_one_byte_manifest_edit_fails_verify_and_the_stage_is_recomputed() {
    let f = Fixture::new();
    let first = f.run(&[]);
    // A cached rerun first, so the entry is remembered as verified: the edit must still be
    // found.
    assert!(f.run(&[]).ran().is_empty());
    let id = "naive/seed0/task1/train";
    let mp = manifest_of(&f, &first, id);
    let text = std::fs::read_to_string(&mp).unwrap();
    assert!(text.contains("\"seed\": 0"), "{text}");
    std::fs::write(&mp, text.replacen("\"seed\": 0", "\"seed\": 1", 1)).unwrap();

    let verify = f.cli(&["cache", "verify"]);
    assert_eq!(verify.status.code(), Some(3), "{}", stdout(&verify));
    let line = stdout(&verify);
    assert!(
        line.contains(id) && line.contains("manifest.json") && line.contains("derived"),
        "{line}"
    );
    let r = f.run(&[]);
    assert_eq!(r.ran(), set(&[id]));
    let ev = r.events.iter().find(|e| e.id == id).unwrap();
    assert!(
        matches!(&ev.outcome, Outcome::Ran { replaced_corrupt: Some(f), .. } if f == "manifest.json")
    );
    assert_eq!(f.cli(&["cache", "verify"]).status.code(), Some(0));

    // An unparsable manifest still names its stage.
    std::fs::write(&mp, b"{\"format\": 1, \"key\": ").unwrap();
    let verify = f.cli(&["cache", "verify"]);
    assert_eq!(verify.status.code(), Some(3));
    assert!(
        stdout(&verify).contains(&format!(" {id}: manifest.json")),
        "{}",
        stdout(&verify)
    );
}

/// `cfpipe ARGS --cache CACHE --remote REMOTE` on the fixture's pipeline.
fn with_remote(
    f: &Fixture,
    args: &[&str],
    cache: &str,
    remote: &std::path::Path,
) -> std::process::Output {
    common::cfpipe()
        .args(args)
        .arg("--cache")
        .arg(f.path().join(cache))
        .arg("--remote")
        .arg(remote)
        .output()
        .unwrap()
}

#[test]
fn a_run_that_recomputes_a_rejected_remote_copy_replaces_it() {
    let f = Fixture::new();
    let remote = f.path().join("remote");
    let pipeline = f.pipeline();
    let run = ["run", pipeline.to_str().unwrap(), "--quiet"];
    let first = with_remote(&f, &run, "a", &remote);
    assert!(first.status.success(), "{}", stderr(&first));
    // Edit the remote copy of one train stage's manifest: every pull must now reject it.
    let id = "naive/seed0/task1/train";
    let mp = std::fs::read_dir(remote.join("entries"))
        .unwrap()
        .flatten()
        .flat_map(|shard| std::fs::read_dir(shard.path()).unwrap().flatten())
        .map(|e| e.path().join("manifest.json"))
        .find(|p| {
            let m: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            m["stage_id"] == id
        })
        .unwrap();
    let text = std::fs::read_to_string(&mp).unwrap();
    std::fs::write(&mp, text.replacen("\"seed\": 0", "\"seed\": 1", 1)).unwrap();

    let second = with_remote(&f, &run, "b", &remote);
    assert!(second.status.success(), "{}", stderr(&second));
    let err = stderr(&second);
    assert!(
        err.contains(&format!(
            "stage `{id}`: replaced the remote's rejected copy"
        )),
        "{err}"
    );
    // A third teammate now pulls everything, that stage included.
    let pull = with_remote(
        &f,
        &["cache", "pull", pipeline.to_str().unwrap()],
        "c",
        &remote,
    );
    assert!(pull.status.success(), "{}{}", stdout(&pull), stderr(&pull));
    let third = with_remote(&f, &run, "c", &remote);
    assert!(stdout(&third).contains(" 0 ran"), "{}", stdout(&third));
}
