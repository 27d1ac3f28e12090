//! Bad input never panics: thousands of seeded mutations of the bundled pipelines (keys
//! dropped, duplicated, renamed or retyped, lines re-indented, numbers out of range) each load
//! as a pipeline or as spec errors that all name file:line:col, within a time limit; and a few
//! through the real binary exit 0 or 2, never 101.

mod common;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MUTATIONS: usize = 2400;
/// Every how many mutations the data files are checked too (`run`, `status`).
const REQUIRED_EVERY: usize = 10;
const BINARY_RUNS: usize = 20;

/// Values a key may be retyped to: wrong types, out-of-range and non-finite numbers.
const VALUES: [&str; 22] = [
    "lots",
    "[1, 2]",
    "{a: 1}",
    "true",
    "~",
    "-1",
    "0",
    "1.0e39",
    "-1.0e39",
    "1.0e-60",
    ".nan",
    ".inf",
    "-.inf",
    "99999999999999999999",
    "18446744073709551616",
    "4294967296",
    "-9223372036854775808",
    "''",
    "[]",
    "{}",
    "[[0, 1], [1, 2]]",
    "\"a b/c\"",
];

fn bundled() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(out.len() >= 5, "bundled pipelines: {out:?}");
    out
}

/// The key of a `key: value` or `- key: value` line, if it has one.
fn key_of(line: &str) -> Option<(usize, &str)> {
    let t = line.trim_start().trim_start_matches("- ");
    let start = line.len() - t.len();
    let (k, _) = t.split_once(':')?;
    (!k.is_empty() && !k.starts_with('#') && k.chars().all(|c| c.is_alphanumeric() || c == '_'))
        .then_some((start, k))
}

/// One random change of `lines`; returns what it did, for the failure message.
fn mutate(lines: &mut Vec<String>, rng: &mut ChaCha8Rng) -> String {
    let keyed: Vec<usize> = (0..lines.len())
        .filter(|&i| key_of(&lines[i]).is_some())
        .collect();
    let Some(&i) = keyed.choose(rng) else {
        return "nothing".into();
    };
    let (start, key) = key_of(&lines[i]).map(|(s, k)| (s, k.to_string())).unwrap();
    let value_at = start + key.len() + 1;
    match rng.gen_range(0..9) {
        0 => {
            lines.remove(i);
            format!("dropped line {}", i + 1)
        }
        1 => {
            let l = lines[i].clone();
            lines.insert(i, l);
            format!("duplicated line {}", i + 1)
        }
        2 => {
            let other = key_of(&lines[*keyed.choose(rng).unwrap()])
                .unwrap()
                .1
                .to_string();
            let new = if rng.gen_bool(0.5) {
                format!("{key}x")
            } else {
                other
            };
            lines[i].replace_range(start..start + key.len(), &new);
            format!("renamed `{key}` on line {} to `{new}`", i + 1)
        }
        3 | 4 => {
            let v = VALUES.choose(rng).unwrap();
            lines[i].truncate(value_at);
            lines[i].push(' ');
            lines[i].push_str(v);
            format!("set `{key}` on line {} to {v}", i + 1)
        }
        5 => {
            let n = rng.gen_range(1..=4);
            if rng.gen_bool(0.5) {
                lines[i].insert_str(0, &" ".repeat(n));
                format!("indented line {} by {n}", i + 1)
            } else {
                let cut = n.min(start);
                lines[i].replace_range(0..cut, "");
                format!("dedented line {} by {cut}", i + 1)
            }
        }
        6 => {
            // Every number on the line out of range.
            let v = ["1.0e39", "-1", ".nan", "99999999999999999999", "0"]
                .choose(rng)
                .unwrap();
            let l = &lines[i];
            let mut out = String::new();
            let mut in_num = false;
            for c in l.chars() {
                if c.is_ascii_digit() || (in_num && (c == '.' || c == 'e' || c == '-')) {
                    if !in_num {
                        out.push_str(v);
                    }
                    in_num = true;
                } else {
                    in_num = false;
                    out.push(c);
                }
            }
            lines[i] = out;
            format!("numbers on line {} set to {v}", i + 1)
        }
        7 => {
            let j = *keyed.choose(rng).unwrap();
            lines.swap(i, j);
            format!("swapped lines {} and {}", i + 1, j + 1)
        }
        _ => {
            lines[i].insert(0, '\t');
            format!("tab before line {}", i + 1)
        }
    }
}

/// A mutated pipeline: which one, what was done, and the text.
struct Case {
    name: String,
    changes: Vec<String>,
    text: String,
}

fn cases(n: usize, seed: u64) -> Vec<Case> {
    let bundled = bundled();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|k| {
            let (name, text) = &bundled[k % bundled.len()];
            let mut lines: Vec<String> = text.lines().map(String::from).collect();
            let changes = (0..rng.gen_range(1..=3))
                .map(|_| mutate(&mut lines, &mut rng))
                .collect();
            Case {
                name: name.clone(),
                changes,
                text: lines.join("\n") + "\n",
            }
        })
        .collect()
}

/// Why the outcome of loading `path` breaks the rule, if it does.
fn judge(path: &Path, data: cfpipe::spec::DataCheck) -> Result<(), String> {
    let outcome = std::panic::catch_unwind(|| cfpipe::spec::load(path, &[], data));
    match outcome {
        Err(p) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(errs)) if errs.0.is_empty() => Err("an error without any message".into()),
        Ok(Err(errs)) => match errs.0.iter().find(|e| e.pos.is_none()) {
            Some(e) => Err(format!("an error without a location: {e}")),
            None => Ok(()),
        },
    }
}

#[test]
fn no_mutation_of_a_bundled_pipeline_panics_hangs_or_goes_unlocated() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mutated.yaml");
        let mut failures = Vec::new();
        let mut slowest = (Duration::ZERO, String::new());
        for (k, case) in cases(MUTATIONS, 13).into_iter().enumerate() {
            std::fs::write(&path, &case.text).unwrap();
            let data = if k % REQUIRED_EVERY == 0 {
                cfpipe::spec::DataCheck::Required
            } else {
                cfpipe::spec::DataCheck::Skip
            };
            let t = Instant::now();
            let verdict = judge(&path, data);
            if t.elapsed() > slowest.0 {
                slowest = (t.elapsed(), format!("{} {:?}", case.name, case.changes));
            }
            if let Err(why) = verdict {
                failures.push(format!(
                    "{} {:?} ({data:?}): {why}",
                    case.name, case.changes
                ));
            }
        }
        tx.send((failures, slowest)).unwrap();
    });
    let (failures, slowest) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the mutations did not finish within 120 s: one hangs");
    assert!(
        slowest.0 < Duration::from_secs(5),
        "one mutation took {:?}: {}",
        slowest.0,
        slowest.1
    );
    assert!(
        failures.is_empty(),
        "{} of {MUTATIONS} mutations broke the rule, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

#[test]
fn mutated_pipelines_through_the_binary_exit_0_or_2() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("mutated.yaml");
    for (k, case) in cases(BINARY_RUNS, 29).into_iter().enumerate() {
        std::fs::write(&path, &case.text).unwrap();
        let command = if k % 2 == 0 { "status" } else { "dag" };
        let o = common::cfpipe()
            .arg(command)
            .arg(&path)
            .arg("--cache")
            .arg(dir.path().join("cache"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            matches!(o.status.code(), Some(0 | 2)),
            "{command} {} {:?}: exit {:?}: {err}",
            case.name,
            case.changes,
            o.status.code()
        );
        assert!(!err.contains("panicked"), "{err}");
        if o.status.code() == Some(2) {
            assert!(err.contains("mutated.yaml:"), "no location: {err}");
        }
    }
}
