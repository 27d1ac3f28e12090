//! Sweeps: a grid of overrides over one pipeline. `--sweep KEY=V1,V2` (repeatable) and a
//! `sweep:` block in the file (`sweep: {strategies.rnf.prune.threshold: [0.01, 0.05]}`) each add
//! an axis; the grid is their cartesian product, and every grid point is the pipeline with that
//! point's values applied as overrides, checked like `--set` values (an error names the sweep
//! entry it came from). `stages::plan::load` compiles every point into one DAG.
//!
//! A strategy's variant is named by the axes that can change it, e.g. `rnf@threshold=0.05`:
//! an axis under `strategies.NAME.` changes only that strategy (and strategies that copy its
//! masks with `like:`), any other axis changes every strategy. A strategy that no axis changes
//! keeps its name and is declared once.

use super::{Locator, Pos, SpecError};
use std::path::Path;

/// One `--set` override or one sweep value, as `validate` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// `dotted.key=value`, as `apply_override` reads it.
    pub arg: String,
    /// Where the value came from, for messages: `--set k=v`, `--sweep k=a,b`, `sweep: k`.
    pub label: String,
    /// Where the value is written in the pipeline file (a `sweep:` block); `None` for the
    /// command line.
    pub pos: Option<Pos>,
}

impl Override {
    /// A `--set KEY=VALUE` argument.
    pub fn set(arg: &str) -> Override {
        Override {
            arg: arg.to_string(),
            label: format!("--set {arg}"),
            pos: None,
        }
    }
}

/// One swept key and its values, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub key: String,
    /// Each value in flow YAML (JSON), as the override applies it.
    pub values: Vec<String>,
    /// Each value as a variant name shows it (strings unquoted).
    pub shown: Vec<String>,
    /// Each value's `--sweep` argument, or its place in the `sweep:` block.
    origins: Vec<(String, Option<Pos>)>,
}

impl Axis {
    /// The override for value `i`.
    pub fn point(&self, i: usize) -> Override {
        let (label, pos) = self.origins[i].clone();
        Override {
            arg: format!("{}={}", self.key, self.values[i]),
            label,
            pos,
        }
    }

    /// The strategy an axis under `strategies.NAME.` belongs to; `None` for every other key.
    pub fn strategy(&self) -> Option<&str> {
        self.key
            .strip_prefix("strategies.")
            .and_then(|rest| rest.split('.').next())
    }
}

/// Keys a sweep may not vary: seeds are already a dimension of every run, and the tasks fix
/// the shape that results and reports are read in.
fn check_key(key: &str) -> Result<(), String> {
    let first = key.split('.').next().unwrap_or("");
    match first {
        "" => Err("empty key before `=`".into()),
        "seeds" => Err(
            "seeds are not swept: list them under `seeds:`, and every variant runs each".into(),
        ),
        "tasks" => Err(
            "the tasks are not swept: every variant must have the same tasks, so results line up; use one pipeline file per task split".into(),
        ),
        "sweep" | "name" | "resources" => Err(format!(
            "`{first}` is not swept: it does not change what a stage computes"
        )),
        _ => Ok(()),
    }
}

/// A value as flow YAML (JSON text, which YAML reads back unchanged) and as a name shows it.
fn render(v: &serde_yaml::Value) -> Result<(String, String), String> {
    let json = serde_json::to_value(v).map_err(|e| format!("value cannot be swept: {e}"))?;
    let text = serde_json::to_string(&json).expect("JSON values serialise");
    let shown = match &json {
        serde_json::Value::String(s) => s.clone(),
        _ => text.clone(),
    };
    // A stage id's `/` separates its parts; whitespace would need quoting in every listing.
    let shown = shown
        .chars()
        .map(|c| {
            if c == '/' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    Ok((text, shown))
}

/// Split `a,b,[c, d]` at the commas outside brackets and braces.
fn split_values(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0i32);
    for c in s.chars() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter().map(|v| v.trim().to_string()).collect()
}

/// One `--sweep KEY=V1,V2,…` argument.
pub fn parse_flag(arg: &str) -> Result<Axis, String> {
    let Some((key, vals)) = arg.split_once('=') else {
        return Err("expected `--sweep dotted.key=V1,V2,…`".into());
    };
    let key = key.trim().to_string();
    check_key(&key)?;
    let mut axis = Axis {
        key,
        values: Vec::new(),
        shown: Vec::new(),
        origins: Vec::new(),
    };
    for v in split_values(vals) {
        if v.is_empty() {
            return Err(format!("empty value in `{vals}`"));
        }
        let y: serde_yaml::Value =
            serde_yaml::from_str(&v).map_err(|e| format!("value `{v}` is not valid YAML: {e}"))?;
        let (text, shown) = render(&y)?;
        axis.values.push(text);
        axis.shown.push(shown);
        axis.origins.push((format!("--sweep {arg}"), None));
    }
    if axis.values.len() < 2 {
        return Err(
            "a sweep needs at least two values, e.g. `--sweep training.lr=1e-3,1e-4`".into(),
        );
    }
    no_repeats(&axis)?;
    Ok(axis)
}

fn no_repeats(axis: &Axis) -> Result<(), String> {
    for (i, v) in axis.values.iter().enumerate() {
        if axis.values[..i].contains(v) {
            return Err(format!("value {} is listed twice", axis.shown[i]));
        }
    }
    Ok(())
}

/// Take the `sweep:` block out of a pipeline's YAML tree (it is not a pipeline setting) and
/// read its axes; every mistake is located in `file`.
pub(super) fn take_block(
    value: &mut serde_yaml::Value,
    file: &Path,
    locator: &Locator,
) -> Result<Vec<Axis>, Vec<SpecError>> {
    let err = |path: &str, at_key: bool, message: String| SpecError {
        file: file.to_path_buf(),
        pos: if at_key {
            locator.key(path)
        } else {
            locator.value(path)
        },
        path: path.to_string(),
        message,
        from_override: None,
    };
    let Some(block) = value.as_mapping_mut().and_then(|m| m.remove("sweep")) else {
        return Ok(Vec::new());
    };
    let serde_yaml::Value::Mapping(m) = block else {
        return Err(vec![err(
            "sweep",
            false,
            "expected dotted keys with lists of values, e.g. `sweep: {training.lr: [1.0e-3, 1.0e-4]}`".into(),
        )]);
    };
    let mut axes = Vec::new();
    let mut errors = Vec::new();
    for (k, v) in m {
        let Some(key) = k.as_str().map(str::to_string) else {
            errors.push(err(
                "sweep",
                true,
                "expected dotted keys, e.g. `training.lr: [1.0e-3, 1.0e-4]`".into(),
            ));
            continue;
        };
        let path = format!("sweep.{key}");
        if let Err(m) = check_key(&key) {
            errors.push(err(&path, true, m));
            continue;
        }
        let serde_yaml::Value::Sequence(list) = v else {
            errors.push(err(
                &path,
                false,
                format!("expected a list of values, e.g. `{key}: [a, b]`"),
            ));
            continue;
        };
        let mut axis = Axis {
            key: key.clone(),
            values: Vec::new(),
            shown: Vec::new(),
            origins: Vec::new(),
        };
        for (i, item) in list.iter().enumerate() {
            match render(item) {
                Ok((text, shown)) => {
                    axis.values.push(text);
                    axis.shown.push(shown);
                    axis.origins.push((
                        format!("sweep: {key} (value {} of {})", i + 1, list.len()),
                        locator.value(&format!("{path}.{i}")),
                    ));
                }
                Err(m) => errors.push(err(&format!("{path}.{i}"), false, m)),
            }
        }
        if list.len() < 2 {
            errors.push(err(
                &path,
                false,
                "a sweep needs at least two values".into(),
            ));
            continue;
        }
        if let Err(m) = no_repeats(&axis) {
            errors.push(err(&path, false, m));
            continue;
        }
        axes.push(axis);
    }
    if errors.is_empty() {
        Ok(axes)
    } else {
        Err(errors)
    }
}

/// Every grid point of `axes`: one value index per axis, the last axis varying fastest.
pub fn grid(axes: &[Axis]) -> Vec<Vec<usize>> {
    let mut points = vec![Vec::new()];
    for a in axes {
        points = points
            .into_iter()
            .flat_map(|p| {
                (0..a.values.len()).map(move |i| {
                    let mut q = p.clone();
                    q.push(i);
                    q
                })
            })
            .collect();
    }
    points
}

/// How each axis is named in variant names: its last key segment, or the whole key where two
/// axes share that segment.
pub fn short_names(axes: &[Axis]) -> Vec<String> {
    let last = |a: &Axis| a.key.rsplit('.').next().unwrap_or(&a.key).to_string();
    axes.iter()
        .map(|a| {
            let s = last(a);
            if axes.iter().filter(|b| last(b) == s).count() > 1 {
                a.key.clone()
            } else {
                s
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_at_commas_outside_brackets() {
        assert_eq!(
            split_values("1, [2, 3],{a: 1, b: 2}"),
            ["1", "[2, 3]", "{a: 1, b: 2}"]
        );
    }

    #[test]
    fn a_flag_axis_renders_values_as_flow_yaml_and_names_them_plainly() {
        let a = parse_flag("training.optimizer=adam,sgd").unwrap();
        assert_eq!(a.values, ["\"adam\"", "\"sgd\""]);
        assert_eq!(a.shown, ["adam", "sgd"]);
        let a = parse_flag("training.lr=1e-3,1.0e-4").unwrap();
        assert_eq!(a.values, ["0.001", "0.0001"]);
        assert!(parse_flag("training.lr=1e-3").is_err());
        assert!(parse_flag("seeds=[0],[1]").unwrap_err().contains("seeds:"));
        assert!(parse_flag("training.lr=1,1").unwrap_err().contains("twice"));
    }

    #[test]
    fn the_grid_is_the_cartesian_product_with_the_last_axis_fastest() {
        let a = parse_flag("a.x=1,2").unwrap();
        let b = parse_flag("b.y=1,2,3").unwrap();
        assert_eq!(
            grid(&[a, b]),
            [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
        );
    }

    #[test]
    fn axes_that_share_a_last_segment_are_named_by_their_whole_key() {
        let a = parse_flag("strategies.a.prune.threshold=1,2").unwrap();
        let b = parse_flag("strategies.b.prune.threshold=1,2").unwrap();
        let c = parse_flag("training.lr=1,2").unwrap();
        assert_eq!(
            short_names(&[a, b, c]),
            [
                "strategies.a.prune.threshold",
                "strategies.b.prune.threshold",
                "lr"
            ]
        );
    }
}
