//! Phase one made to report every mistake at once. serde stops at the first error, so
//! [`deserialize`] records that error with its key path, takes the offending key out of the
//! YAML tree and tries again, until the rest deserializes. A `missing field` that only the
//! removal caused is not reported twice. When nothing but unknown keys had to go, the result
//! is what the user meant and validation (phase two) can still run on it; when a value had to
//! go, the result is not trustworthy and only the collected errors are reported.
//!
//! Also here: the hints that turn a parser's or serde's wording into advice for the usual
//! YAML mistakes (indentation, a strategy setting dedented to the level of strategy names).

use serde::de::DeserializeOwned;
use serde_yaml::Value;

/// One error found while deserializing: the full key path, the message, and whether it is
/// located at the key (an unknown key) rather than its value.
pub(super) struct Found {
    pub path: String,
    pub message: String,
    pub at_key: bool,
}

/// The outcome of [`deserialize`].
pub(super) struct Collected<T> {
    pub value: Option<T>,
    /// Only unknown keys were removed (or nothing): `value` is what the file says.
    pub clean: bool,
    pub errors: Vec<Found>,
}

#[derive(Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Retries are bounded by the keys in the tree, but a pathological file must not loop long.
const MAX_ATTEMPTS: usize = 256;

/// Deserialize `v` (the value at key path `base`) into `T`, collecting every error.
pub(super) fn deserialize<T: DeserializeOwned>(mut v: Value, base: &str) -> Collected<T> {
    let mut errors = Vec::new();
    let mut removed: Vec<Vec<Seg>> = Vec::new();
    let mut clean = true;
    for _ in 0..MAX_ATTEMPTS {
        let err = match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => {
                return Collected {
                    value: Some(t),
                    clean,
                    errors,
                }
            }
            Err(err) => err,
        };
        let mut at = segments(err.path());
        let message = super::strip_location(&err.inner().to_string());
        let unknown = message.starts_with("unknown field");
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
            .map(|k| {
                let mut p = at.clone();
                p.push(Seg::Key(k.to_string()));
                p
            });
        let follow_up = missing.as_ref().is_some_and(|m| removed.contains(m));
        if !follow_up {
            errors.push(Found {
                path: join(base, &at),
                message,
                at_key: unknown,
            });
        }
        clean &= unknown;
        // A list item cannot go without renumbering the items after it (and their errors):
        // take out the whole list instead.
        while matches!(at.last(), Some(Seg::Index(_))) {
            at.pop();
        }
        if at.is_empty() || !remove(&mut v, &at) {
            break;
        }
        removed.push(at);
    }
    Collected {
        value: None,
        clean: false,
        errors,
    }
}

fn segments(p: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    p.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

fn join(base: &str, at: &[Seg]) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !base.is_empty() {
        parts.push(base.to_string());
    }
    parts.extend(at.iter().map(|s| match s {
        Seg::Key(k) => k.clone(),
        Seg::Index(i) => i.to_string(),
    }));
    parts.join(".")
}

/// The text a YAML key reads as in a key path (`0`, `true` and `key` alike).
fn key_text(k: &Value) -> Option<String> {
    match k {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Remove the entry at `at` from the tree; false when there is no such entry.
fn remove(v: &mut Value, at: &[Seg]) -> bool {
    let Some((last, parents)) = at.split_last() else {
        return false;
    };
    let mut cur = v;
    for seg in parents {
        cur = match child(cur, seg) {
            Some(c) => c,
            None => return false,
        };
    }
    match (untag(cur), last) {
        (Value::Mapping(m), Seg::Key(k)) => {
            let key = m
                .keys()
                .find(|key| key_text(key).as_deref() == Some(k))
                .cloned();
            key.is_some_and(|key| m.remove(&key).is_some())
        }
        _ => false,
    }
}

fn child<'a>(v: &'a mut Value, seg: &Seg) -> Option<&'a mut Value> {
    match (untag(v), seg) {
        (Value::Mapping(m), Seg::Key(k)) => m
            .iter_mut()
            .find(|(key, _)| key_text(key).as_deref() == Some(k))
            .map(|(_, c)| c),
        (Value::Sequence(s), Seg::Index(i)) => s.get_mut(*i),
        _ => None,
    }
}

/// The value under a YAML tag (`!name value`).
fn untag(v: &mut Value) -> &mut Value {
    match v {
        Value::Tagged(t) => untag(&mut t.value),
        other => other,
    }
}

/// A hint for a YAML syntax error whose parser message is about structure, which in a
/// hand-written pipeline is nearly always indentation.
pub(super) fn syntax_hint(message: &str, line: Option<usize>) -> Option<String> {
    const STRUCTURAL: [&str; 6] = [
        "did not find expected key",
        "mapping values are not allowed",
        "did not find expected '-' indicator",
        "block sequence entries are not allowed",
        "could not find expected ':'",
        "did not find expected node content",
    ];
    let at = line.map_or("here".to_string(), |l| format!("at line {l}"));
    if message.contains("found character that cannot start any token") {
        return Some(format!(
            "check the indentation {at}: YAML indents with spaces, never tabs"
        ));
    }
    STRUCTURAL.iter().any(|s| message.contains(s)).then(|| {
        format!(
            "check the indentation {at} (and the line above it): the keys of one mapping start in the same column, a nested block is indented further than the key it belongs to, and a line that holds `key: value` cannot also start a nested block"
        )
    })
}

/// Settings of one strategy: a strategy "named" like one is a dedented setting.
pub(super) fn misplaced_strategy_setting(name: &str, body: &Value) -> Option<String> {
    let setting = super::raw::STRATEGY_KEYS.contains(&name);
    let looks_like_strategy = body.get("freeze").is_some();
    (setting && !looks_like_strategy).then(|| {
        format!(
            "`{name}` is read as a strategy name, because it is indented at the level of the strategy names; but `{name}` is a setting of a strategy, so it probably needs indenting under one (two more spaces, level with that strategy's `freeze:`)"
        )
    })
}
