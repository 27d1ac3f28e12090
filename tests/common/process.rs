//! Running the real `cfpipe` binary from tests, and watching what it publishes. One place
//! builds the command, so no test inherits a developer's cfpipe settings, and one place counts
//! entries, so every test counts them the same way (a published entry is a directory
//! `entries/<shard>/<key>`; temp entries and leases are elsewhere).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for a child or for an entry before it fails. Generous, because CI
/// runs on two loaded cores; tests wait on events, never on this.
pub const DEADLINE: Duration = Duration::from_secs(300);

/// The real binary, with none of the caller's `CFPIPE_*` settings: a developer's team cache
/// or remote must never receive (or serve) test entries, and their lease timeout, host name or
/// shared group must not change what a test observes. Tests set what they need explicitly.
pub fn cfpipe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cfpipe"));
    without_cfpipe_settings(&mut c);
    c
}

/// Clear every `CFPIPE_*` variable from `c`'s environment, for a command (such as `script`)
/// that runs cfpipe itself.
pub fn without_cfpipe_settings(c: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CFPIPE_") {
            c.env_remove(name);
        }
    }
    c
}

/// Start `c` with stdout and stderr captured, for a test that acts on a run while it goes.
pub fn spawn(mut c: Command) -> Child {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait for a child, killing it (and failing) if it outlives the deadline.
pub fn finish(mut child: Child, what: &str) -> Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > DEADLINE {
            child.kill().unwrap();
            panic!("{what} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Block until `cache` holds at least `n` published entries while `child` is still running,
/// so that a signal sent next reaches a run that is under way. Fails if the child ends first
/// or nothing is published within the deadline; no fixed delay is assumed.
pub fn wait_for_entries(child: &mut Child, cache: &Path, n: usize) {
    let t0 = Instant::now();
    while published_entries(cache) < n {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before {n} entries were published");
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "{n} entries were not published within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The keys of the published entries in the cache directory `cache`, sorted (none if the
/// cache does not exist yet).
pub fn entry_keys(cache: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    if let Ok(shards) = std::fs::read_dir(cache.join("entries")) {
        for shard in shards.flatten() {
            if let Ok(entries) = std::fs::read_dir(shard.path()) {
                keys.extend(
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().to_string()),
                );
            }
        }
    }
    keys.sort();
    keys
}

/// How many entries the cache directory `cache` has published.
pub fn published_entries(cache: &Path) -> usize {
    entry_keys(cache).len()
}

/// Whether a Slurm controller answers; panics under CI when none does.
pub fn slurm_up() -> bool {
    // Tests in one binary run at once, so a node busy with another test's job reads
    // `mixed` or `allocated`, not `idle`: any state of a node that answers will do. A `*`
    // suffix means the node is not responding. A controller busy with another test's
    // submissions may miss one call, so ask a few times before calling it down.
    let answers = || {
        std::process::Command::new("sinfo")
            .args(["-h", "-o", "%T"])
            .output()
            .is_ok_and(|o| {
                o.status.success()
                    && super::stdout(&o).lines().any(|state| {
                        ["idle", "mixed", "allocated", "completing"]
                            .iter()
                            .any(|ok| state.trim().trim_end_matches('+') == *ok)
                    })
            })
    };
    let up = std::env::var_os("SLURM_CONF").is_some()
        && (0..5).any(|attempt| {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            answers()
        });
    if !up {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but no Slurm answers: start one with `eval \"$(scripts/slurm-local.sh up)\"`"
        );
        eprintln!("SKIPPED: no Slurm (start one with `eval \"$(scripts/slurm-local.sh up)\"`)");
    }
    up
}
