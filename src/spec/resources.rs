//! `resources:`, what each stage kind's cluster jobs ask the scheduler for (cpus, gpus, memory,
//! time limit), by kind or `default` for every other kind. These settings only say where and how
//! long a stage may run, never what it computes, so they are in no key. A teammate who runs
//! the same pipeline without Slurm, or with other limits, shares the same entries. Memory and
//! time strings are checked here, with their key path, so a typo is reported before anything is
//! submitted and not as a rejected `sbatch` halfway through a run.

use super::raw::RawResources;
use crate::exec::slurm::JobResources;
use std::collections::BTreeMap;

/// The entry that serves every stage kind without its own.
pub const DEFAULT: &str = "default";

/// Check `resources:` against the stage kinds cfpipe knows (`kinds`). Returns the resolved
/// requests by kind, normalised to Slurm's syntax.
pub fn check(
    raw: Option<&BTreeMap<String, RawResources>>,
    kinds: &[&str],
    e: &mut dyn FnMut(&str, String, bool),
) -> BTreeMap<String, JobResources> {
    let mut out = BTreeMap::new();
    for (kind, r) in raw.into_iter().flatten() {
        let path = format!("resources.{kind}");
        if kind != DEFAULT && !kinds.contains(&kind.as_str()) {
            e(
                &path,
                format!(
                    "unknown stage kind `{kind}`; expected `{DEFAULT}` or one of {}",
                    kinds.join(", ")
                ),
                true,
            );
            continue;
        }
        let mut count = |key: &str, v: Option<i64>, min: i64| match v {
            Some(n) if n < min => {
                e(
                    &format!("{path}.{key}"),
                    format!("expected a whole number >= {min}, found {n}"),
                    false,
                );
                None
            }
            Some(n) => u32::try_from(n).ok().or_else(|| {
                e(
                    &format!("{path}.{key}"),
                    format!("{n} is larger than any node has"),
                    false,
                );
                None
            }),
            None => None,
        };
        let cpus = count("cpus", r.cpus, 1);
        let gpus = count("gpus", r.gpus, 0);
        let mem = r.mem.as_ref().and_then(|v| {
            text(v)
                .and_then(|t| memory(&t))
                .map_err(|m| e(&format!("{path}.mem"), m, false))
                .ok()
        });
        let time = r.time.as_ref().and_then(|v| {
            text(v)
                .and_then(|t| time_limit(&t))
                .map_err(|m| e(&format!("{path}.time"), m, false))
                .ok()
        });
        out.insert(
            kind.clone(),
            JobResources {
                cpus,
                mem,
                time,
                gpus,
            },
        );
    }
    out
}

/// A scalar as text: `mem: 4096` and `mem: "4096"` are the same request.
fn text(v: &serde_yaml::Value) -> Result<String, String> {
    match v {
        serde_yaml::Value::String(s) => Ok(s.trim().to_string()),
        serde_yaml::Value::Number(n) => Ok(n.to_string()),
        _ => Err("expected a string such as `32G` or `4:00:00`".into()),
    }
}

/// Slurm's `--mem`: a whole number with an optional unit K, M, G or T (megabytes without one).
/// Zero, which Slurm reads as "all of the node's memory", is refused here: it is better asked
/// for explicitly through `[slurm] sbatch_args`.
fn memory(s: &str) -> Result<String, String> {
    let hint = "expected a memory size such as `32G`, `512M` or `4096` (megabytes)";
    let upper = s.to_ascii_uppercase();
    let (digits, unit) = match upper.strip_suffix('B').unwrap_or(&upper) {
        t if t.ends_with(['K', 'M', 'G', 'T']) => t.split_at(t.len() - 1),
        t => (t, ""),
    };
    match digits.parse::<u64>() {
        Ok(0) => Err(format!(
            "{hint}, found `{s}`: 0 would ask Slurm for all of a node's memory; put `--mem=0` in `[slurm] sbatch_args` if that is meant"
        )),
        Ok(n) if digits.bytes().all(|b| b.is_ascii_digit()) => Ok(format!("{n}{unit}")),
        _ => Err(format!("{hint}, found `{s}`")),
    }
}

/// Slurm's `--time`: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M` or `D-H:M:S`, more than zero, with
/// minutes and seconds below 60 (and hours below 24 after a day count) where they follow another
/// field.
fn time_limit(s: &str) -> Result<String, String> {
    let bad = |why: &str| {
        Err(format!(
            "expected a time limit such as `4:00:00` (hours:minutes:seconds), `90` (minutes) or `2-00:00:00` (days-hours:minutes:seconds), found `{s}`{why}"
        ))
    };
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, s),
    };
    let field = |t: &str| -> Option<u64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let Some(parts) = rest.split(':').map(field).collect::<Option<Vec<u64>>>() else {
        return bad("");
    };
    let days = match days.map(field) {
        Some(None) => return bad(""),
        Some(Some(d)) => Some(d),
        None => None,
    };
    // Seconds of each field, by the form.
    let (h, m, sec) = match (days.is_some(), parts.as_slice()) {
        (false, [m]) => (0, *m, 0),
        (false, [m, s]) => (0, *m, *s),
        (false, [h, m, s]) => (*h, *m, *s),
        (true, [h]) => (*h, 0, 0),
        (true, [h, m]) => (*h, *m, 0),
        (true, [h, m, s]) => (*h, *m, *s),
        _ => return bad(""),
    };
    if sec >= 60 || (parts.len() > 1 && m >= 60 && (days.is_some() || parts.len() == 3)) {
        return bad(": minutes and seconds after another field must be below 60");
    }
    if days.is_some() && h >= 24 {
        return bad(": hours after a day count must be below 24");
    }
    if days.unwrap_or(0) + h + m + sec == 0 {
        return bad(": a limit of zero would end every job at once");
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_takes_slurms_units_and_refuses_the_rest() {
        assert_eq!(memory("32G").unwrap(), "32G");
        assert_eq!(memory("32gb").unwrap(), "32G");
        assert_eq!(memory("4096").unwrap(), "4096");
        assert_eq!(memory("512m").unwrap(), "512M");
        for bad in ["", "G", "32 G", "32X", "-1G", "1.5G", "0", "0G"] {
            assert!(memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_takes_every_slurm_form_and_refuses_the_rest() {
        for ok in [
            "90",
            "30:00",
            "4:00:00",
            "100:00:00",
            "2-0",
            "2-12",
            "1-00:30",
            "1-00:00:00",
        ] {
            assert_eq!(time_limit(ok).unwrap(), ok);
        }
        for bad in [
            "",
            "0",
            "0:00:00",
            "4h",
            "1:60:00",
            "1:00:61",
            "1-24:00:00",
            "a-1",
            "1::0",
            "1:2:3:4",
            "-1",
        ] {
            assert!(time_limit(bad).is_err(), "{bad}");
        }
    }
}
