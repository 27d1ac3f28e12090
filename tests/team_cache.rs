//! A cache directory shared by a team: concurrent runs from several "machines" (distinct
//! `CFPIPE_HOSTNAME`s, so the same-host shortcuts do not apply), a holder killed mid-stage,
//! gc while others run, group permissions, and gc roots registered by other pipelines.
//! Everything runs the real binary; waits are bounded by generous deadlines, and the lease
//! timeout knob, not sleeps, decides what the tests observe.

mod common;
use common::{finish, published_entries, spawn, stderr, stdout, summary, Fixture, DEADLINE};
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant, SystemTime};

/// The real binary on the fixture's cache, as the machine `host`.
fn cfpipe<S: AsRef<std::ffi::OsStr>>(f: &Fixture, host: &str, args: &[S]) -> Command {
    let mut c = common::cfpipe();
    c.args(args)
        .arg("--cache")
        .arg(f.cache_dir())
        .env("CFPIPE_HOSTNAME", host);
    c
}

fn run_args(f: &Fixture, epochs: &str, extra: &[&str]) -> Vec<String> {
    let p = f.pipeline().to_str().unwrap().to_string();
    ["run", &p, "--quiet", "--set", epochs]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

/// Lease files (not breakers or temp files) present in the cache.
fn leases(f: &Fixture) -> Vec<String> {
    std::fs::read_dir(f.cache_dir().join("leases"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| !n.starts_with('.') && !n.contains(".break."))
                .collect()
        })
        .unwrap_or_default()
}

/// Block until a lease is held on a key that has no entry yet, i.e. a stage is mid-computation
/// (not merely between publishing and releasing).
fn wait_for_a_training_lease(f: &Fixture, child: &mut Child) {
    let t0 = Instant::now();
    let computing = || {
        leases(f)
            .iter()
            .any(|k| !f.cache_dir().join("entries").join(&k[..2]).join(k).exists())
    };
    while published_entries(&f.cache_dir()) < 1 || !computing() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was caught mid-stage"
        );
        assert!(t0.elapsed() < DEADLINE, "no lease appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn verify_ok(f: &Fixture) {
    let v = cfpipe(f, "checker", &["cache", "verify"]).output().unwrap();
    assert_eq!(v.status.code(), Some(0), "{}", stdout(&v));
}

/// Keys per stage id from `status --json`, and which are cached.
fn status(f: &Fixture, epochs: &str) -> Vec<(String, String, bool)> {
    let o = cfpipe(
        f,
        "checker",
        &[
            "status",
            f.pipeline().to_str().unwrap(),
            "--json",
            "--set",
            epochs,
        ],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["key"].as_str().unwrap_or_default().to_string(),
                s["cached"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Make every entry look last used two hours ago, so only roots, leases and new uses keep them.
fn age_all_uses(f: &Fixture) {
    let old = SystemTime::now() - Duration::from_secs(7200);
    for e in std::fs::read_dir(f.cache_dir().join("used"))
        .unwrap()
        .flatten()
    {
        std::fs::File::options()
            .write(true)
            .open(e.path())
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
}

fn removed_count(o: &Output) -> usize {
    let out = stdout(o);
    out.lines()
        .find_map(|l| l.strip_prefix("removed "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no gc summary in: {out}{}", stderr(o)))
}

#[test]
fn two_machines_running_one_pipeline_at_once_compute_each_stage_once() {
    let f = Fixture::new();
    let a = spawn(cfpipe(
        &f,
        "machine-a",
        &run_args(&f, "training.epochs=30", &[]),
    ));
    let b = spawn(cfpipe(
        &f,
        "machine-b",
        &run_args(&f, "training.epochs=30", &[]),
    ));
    let (a, b) = (finish(a, "run a"), finish(b, "run b"));
    assert!(
        a.status.success() && b.status.success(),
        "{}{}",
        stderr(&a),
        stderr(&b)
    );
    let ((n, ran_a), (_, ran_b)) = (summary(&a), summary(&b));
    assert_eq!(ran_a + ran_b, n, "each stage computed exactly once in all");
    assert_eq!(
        published_entries(&f.cache_dir()),
        n,
        "one entry per stage, no duplicates"
    );
    assert!(
        leases(&f).is_empty(),
        "leases left behind: {:?}",
        leases(&f)
    );
    verify_ok(&f);
    // Both runs had the same pipeline, overrides and user, so they registered one root.
    let roots = cfpipe(&f, "checker", &["cache", "roots", "ls"])
        .output()
        .unwrap();
    assert_eq!(stdout(&roots).lines().count(), 1, "{}", stdout(&roots));
}

#[test]
fn a_holder_killed_mid_stage_on_another_machine_is_taken_over_after_the_lease_timeout() {
    let f = Fixture::new();
    let args = run_args(
        &f,
        "training.epochs=400",
        &["-j", "1", "--lease-timeout", "1"],
    );
    let mut a = spawn(cfpipe(&f, "machine-a", &args));
    wait_for_a_training_lease(&f, &mut a);
    a.kill().unwrap(); // SIGKILL: no destructor, the lease stays behind
    a.wait().unwrap();
    let orphan = leases(&f);
    assert_eq!(
        orphan.len(),
        1,
        "the killed holder's lease stays: {orphan:?}"
    );
    verify_ok(&f);

    let b = finish(spawn(cfpipe(&f, "machine-b", &args)), "run b");
    let err = stderr(&b);
    assert!(b.status.success(), "{err}");
    assert!(
        err.contains("took over") && err.contains("machine-a") && err.contains("no heartbeat"),
        "{err}"
    );
    let (n, ran) = summary(&b);
    assert_eq!(ran, n - 1, "everything but the split ran in b");
    assert!(leases(&f).is_empty(), "{:?}", leases(&f));
    verify_ok(&f);
}

#[test]
fn on_the_same_machine_a_dead_holder_is_detected_without_waiting_for_the_timeout() {
    let f = Fixture::new();
    // An hour-long timeout: only the dead-pid check can let the second run through.
    let args = run_args(
        &f,
        "training.epochs=400",
        &["-j", "1", "--lease-timeout", "3600"],
    );
    let mut a = spawn(cfpipe(&f, "one-box", &args));
    wait_for_a_training_lease(&f, &mut a);
    a.kill().unwrap();
    a.wait().unwrap();
    let b = finish(spawn(cfpipe(&f, "one-box", &args)), "run b");
    let err = stderr(&b);
    assert!(b.status.success(), "{err}");
    assert!(err.contains("its process is gone"), "{err}");
    verify_ok(&f);
}

#[test]
fn gc_during_a_concurrent_run_deletes_only_what_is_unreachable_and_unused() {
    let f = Fixture::new();
    // An old ablation nobody registers any more.
    let old = cfpipe(&f, "machine-a", &run_args(&f, "training.epochs=4", &[]))
        .output()
        .unwrap();
    assert!(old.status.success(), "{}", stderr(&old));
    let ls = cfpipe(&f, "machine-a", &["cache", "roots", "ls"])
        .output()
        .unwrap();
    let id = stdout(&ls).split_whitespace().next().unwrap().to_string();
    let rm = cfpipe(&f, "machine-a", &["cache", "roots", "rm", &id])
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", stderr(&rm));
    age_all_uses(&f);
    let old_keys = status(&f, "training.epochs=4");
    let split_key = old_keys.iter().find(|s| s.0 == "split").unwrap().1.clone();
    let distinct: BTreeSet<&String> = old_keys.iter().map(|s| &s.1).collect();

    // A teammate's run reuses the split and trains; gc runs while it does.
    let args = run_args(&f, "training.epochs=400", &["-j", "1"]);
    let mut run = spawn(cfpipe(&f, "machine-b", &args));
    wait_for_a_training_lease(&f, &mut run);
    let gc = cfpipe(&f, "machine-c", &["cache", "gc"]).output().unwrap();
    assert!(gc.status.success(), "{}", stderr(&gc));
    let run = finish(run, "concurrent run");
    assert!(run.status.success(), "{}", stderr(&run));
    let (n, ran) = summary(&run);
    assert_eq!(ran, n - 1, "only the split was reused");

    assert_eq!(removed_count(&gc), distinct.len() - 1, "{}", stdout(&gc));
    let cache = cfpipe::cache::Cache::open(f.cache_dir()).unwrap();
    let present = |hex: &str| cache.contains(&cfpipe::digest::StageKey::from_hex(hex).unwrap());
    assert!(
        present(&split_key),
        "gc deleted the split the run was using"
    );
    for (id, key, _) in &old_keys {
        assert_eq!(present(key), id == "split", "{id}");
    }
    assert!(status(&f, "training.epochs=400").iter().all(|s| s.2));
    verify_ok(&f);
}

#[test]
fn roots_registered_by_another_pipeline_keep_its_entries_alive_under_gc() {
    let f = Fixture::new();
    for epochs in ["training.epochs=3", "training.epochs=4"] {
        let o = cfpipe(&f, "machine-a", &run_args(&f, epochs, &[]))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    age_all_uses(&f);
    let gc = |args: &[&str]| {
        let mut a = vec!["cache", "gc"];
        a.extend_from_slice(args);
        let o = cfpipe(&f, "machine-b", &a).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        removed_count(&o)
    };
    assert_eq!(gc(&[]), 0, "both pipelines are registered");

    let ls = stdout(
        &cfpipe(&f, "machine-b", &["cache", "roots", "ls"])
            .output()
            .unwrap(),
    );
    assert_eq!(ls.lines().count(), 2, "{ls}");
    let four = ls
        .lines()
        .find(|l| l.contains("training.epochs=4"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let rm = cfpipe(&f, "machine-b", &["cache", "roots", "rm", &four[..8]])
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", stderr(&rm));

    // Named on the command line, as before roots existed, it is still kept.
    let p = f.pipeline();
    assert_eq!(gc(&[p.to_str().unwrap(), "--set", "training.epochs=4"]), 0);
    let only_four: BTreeSet<String> = {
        let three: BTreeSet<_> = status(&f, "training.epochs=3")
            .into_iter()
            .map(|s| s.1)
            .collect();
        status(&f, "training.epochs=4")
            .into_iter()
            .map(|s| s.1)
            .filter(|k| !three.contains(k))
            .collect()
    };
    assert!(!only_four.is_empty());
    assert_eq!(gc(&[]), only_four.len());
    assert!(status(&f, "training.epochs=3").iter().all(|s| s.2));
    assert!(status(&f, "training.epochs=4").iter().any(|s| !s.2));
    verify_ok(&f);
}

fn walk(p: &Path, out: &mut Vec<PathBuf>) {
    out.push(p.to_path_buf());
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            walk(&e.path(), out);
        }
    }
}

#[test]
fn a_shared_group_owns_everything_cfpipe_creates_group_writable_and_setgid() {
    let f = Fixture::new();
    let name = Command::new("id")
        .arg("-gn")
        .output()
        .ok()
        .filter(|o| o.status.success());
    let Some(name) = name.map(|o| stdout(&o).trim().to_string()) else {
        eprintln!("SKIPPED: `id -gn` cannot name this user's primary group");
        return;
    };
    // SAFETY: getegid has no preconditions.
    let gid = unsafe { libc::getegid() };
    let o = cfpipe(
        &f,
        "machine-a",
        &run_args(&f, "training.epochs=2", &["--shared-group", &name]),
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let gc = cfpipe(&f, "machine-a", &["cache", "gc", "--shared-group", &name])
        .output()
        .unwrap();
    assert!(gc.status.success(), "{}", stderr(&gc));
    let mut all = Vec::new();
    walk(&f.cache_dir(), &mut all);
    assert!(all.len() > 20, "{all:?}");
    for p in &all {
        let m = std::fs::symlink_metadata(p).unwrap();
        let mode = m.permissions().mode();
        assert_eq!(m.gid(), gid, "{}", p.display());
        let want = if m.is_dir() { 0o2070 } else { 0o060 };
        assert_eq!(mode & want, want, "{} has mode {mode:o}", p.display());
    }

    let bad = cfpipe(
        &f,
        "machine-a",
        &["cache", "gc", "--shared-group", "no-such-group-cfpipe"],
    )
    .output()
    .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("no-such-group-cfpipe"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn ctrl_c_releases_the_lease_so_teammates_need_not_wait_for_the_timeout() {
    let f = Fixture::new();
    let args = run_args(&f, "training.epochs=400", &["-j", "1"]);
    let mut a = spawn(cfpipe(&f, "machine-a", &args));
    wait_for_a_training_lease(&f, &mut a);
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(a.id() as i32, libc::SIGINT) }, 0);
    let a = finish(a, "interrupted run");
    assert_eq!(a.status.code(), Some(130), "{}", stderr(&a));
    assert!(leases(&f).is_empty(), "{:?}", leases(&f));
    verify_ok(&f);
}
