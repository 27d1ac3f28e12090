//! Pipeline specifications: YAML in, checked [`Pipeline`] out.
//!
//! Two phases, as in ripgrep's low/high args: `raw` deserializes with no logic (unknown keys
//! rejected; `collect` keeps going past each error, so one run reports them all), then
//! `validate` checks each section into the resolved types of `resolved` (strategies in
//! `strategy`, the model in `model`): ranges (`numbers`: every float training uses as f32),
//! class groups and data files (`idx_data`, `images`). Every problem is reported with the file, line and column
//! (found by `locate`) and its key path, or with the `--set` override that introduced it, in
//! file order.

mod collect;
pub(crate) mod idx_data;
pub mod images;
mod inherit;
mod locate;
mod model;
mod numbers;
pub mod protocol;
pub mod raw;
mod resolved;
pub mod resources;
mod strategy;
pub mod sweep;
mod validate;

pub use images::{ImageData, ImageTask, TaskClasses};
pub use locate::{Locator, Pos};
pub use resolved::*;

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    pub file: PathBuf,
    pub pos: Option<Pos>,
    /// Dotted key path, e.g. `strategies.rnf.prune.threshold`; empty for the whole file.
    pub path: String,
    pub message: String,
    /// Set when the offending value came from `--set`.
    pub from_override: Option<String>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(p) = self.pos {
            write!(f, ":{}:{}", p.line, p.col)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(o) = &self.from_override {
            write!(f, " (value from {o})")?;
        }
        Ok(())
    }
}

/// All problems found; validation keeps going so a user sees every mistake at once.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
impl std::error::Error for SpecErrors {}

/// What to check beyond the file itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataCheck {
    /// Data files must exist and hold the classes the tasks name (`run`, `status`).
    Required,
    /// Structure only (`dag` works without the data).
    Skip,
}

/// Load, apply `--set` overrides, and validate a pipeline file: the pipeline without its
/// sweep (a `sweep:` block is read, checked and set aside; `stages::plan::load` expands it).
pub fn load(path: &Path, overrides: &[String], data: DataCheck) -> Result<Pipeline, SpecErrors> {
    let src = read(path)?;
    let set: Vec<sweep::Override> = overrides.iter().map(|o| sweep::Override::set(o)).collect();
    resolve(&src, &set, data)
}

/// A pipeline file read and parsed, before overrides: its YAML tree (without the `sweep:`
/// block) and the sweep axes the file declares.
#[derive(Debug)]
pub struct Source {
    path: PathBuf,
    value: serde_yaml::Value,
    locator: Locator,
    /// The `sweep:` block's axes, in file order.
    pub axes: Vec<sweep::Axis>,
}

impl Source {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The YAML tree with `overrides` applied, and each override's key path.
    fn overridden(
        &self,
        overrides: &[sweep::Override],
    ) -> Result<(serde_yaml::Value, Vec<(String, sweep::Override)>), SpecErrors> {
        let mut value = self.value.clone();
        let mut keys = Vec::new();
        for o in overrides {
            let key = apply_override(&mut value, &o.arg).map_err(|m| {
                SpecErrors(vec![SpecError {
                    file: self.path.clone(),
                    pos: o.pos,
                    path: o.arg.split('=').next().unwrap_or("").to_string(),
                    message: m,
                    from_override: Some(o.label.clone()),
                }])
            })?;
            keys.push((key, o.clone()));
        }
        Ok((value, keys))
    }
}

/// Read and parse a pipeline file, and take out its `sweep:` block.
pub fn read(path: &Path) -> Result<Source, SpecErrors> {
    let err = |pos, p: &str, m: String| {
        SpecErrors(vec![SpecError {
            file: path.to_path_buf(),
            pos,
            path: p.to_string(),
            message: m,
            from_override: None,
        }])
    };
    let src = std::fs::read_to_string(path)
        .map_err(|e| err(None, "", format!("cannot read pipeline file: {e}")))?;
    let mut value: serde_yaml::Value = serde_yaml::from_str(&src).map_err(|e| {
        let pos = e.location().map(|l| Pos {
            line: l.line(),
            col: l.column(),
        });
        let msg = strip_location(&e.to_string());
        let msg = match collect::syntax_hint(&msg, pos.map(|p| p.line)) {
            Some(hint) => format!("invalid YAML: {msg}; {hint}"),
            None => format!("invalid YAML: {msg}"),
        };
        err(pos.or(Some(Pos { line: 1, col: 1 })), "", msg)
    })?;
    let mut locator = Locator::new(&src);
    value.apply_merge().map_err(|e| {
        err(
            Some(Pos { line: 1, col: 1 }),
            "",
            format!("a YAML merge key (`<<`) could not be applied: {e}"),
        )
    })?;
    let axes = sweep::take_block(&mut value, path, &locator).map_err(SpecErrors)?;
    inherit::resolve_extends(&mut value, path, &mut locator).map_err(SpecErrors)?;
    Ok(Source {
        path: path.to_path_buf(),
        value,
        locator,
        axes,
    })
}

/// Apply `overrides` (`--set` values and one sweep point's) to a read pipeline and validate
/// it.
pub fn resolve(
    source: &Source,
    overrides: &[sweep::Override],
    data: DataCheck,
) -> Result<Pipeline, SpecErrors> {
    let path = source.path.as_path();
    let (mut value, overridden) = source.overridden(overrides)?;
    let locator = source.locator.clone();
    let ctx = validate::Ctx {
        file: path.to_path_buf(),
        locator,
        overridden,
    };
    let mut errs = Vec::new();
    // A strategy setting dedented to the level of the strategy names: say so, and leave it
    // out rather than report its settings as unknown strategy keys.
    if let Some(serde_yaml::Value::Mapping(m)) = value.get_mut("strategies") {
        let misplaced: Vec<(serde_yaml::Value, String, String)> = m
            .iter()
            .filter_map(|(k, body)| {
                let name = k.as_str()?;
                collect::misplaced_strategy_setting(name, body)
                    .map(|msg| (k.clone(), name.to_string(), msg))
            })
            .collect();
        for (k, name, msg) in misplaced {
            errs.push(ctx.error_at(&format!("strategies.{name}"), msg, true));
            m.remove(&k);
        }
    }
    let raw = collect::deserialize::<raw::RawPipeline>(value, "");
    errs.extend(
        raw.errors
            .into_iter()
            .map(|f| ctx.error_at(&f.path, f.message, f.at_key)),
    );
    // Validation runs on what the file says; when a value had to be left out to deserialize
    // the rest, its checks would report follow-ups of that, so only phase one's errors count.
    if let (Some(r), true) = (raw.value, raw.clean) {
        match validate::validate(r, &ctx, data) {
            Ok(p) if errs.is_empty() => return Ok(p),
            Ok(_) => {}
            Err(SpecErrors(more)) => errs.extend(more),
        }
    }
    // In file order; `--set` errors (no position) last.
    errs.sort_by_key(|e| e.pos.map_or((usize::MAX, 0), |p| (p.line, p.col)));
    Err(SpecErrors(errs))
}

/// The pipeline-wide settings of a file with `--set` applied, flattened to dotted keys with
/// values as flow YAML (`training.lr` → `0.001`, `tasks` → `[[0,1],[2,3]]`), for telling
/// pipelines apart (`cfpipe compare`). Strategies, the sweep, the name and cluster resources
/// are left out: strategies are compared by row (see [`strategy_settings`]), the rest
/// computes nothing.
pub fn settings(
    path: &Path,
    set: &[String],
) -> Result<std::collections::BTreeMap<String, String>, SpecErrors> {
    let set: Vec<sweep::Override> = set.iter().map(|o| sweep::Override::set(o)).collect();
    let (value, _) = read(path)?.overridden(&set)?;
    let mut out = std::collections::BTreeMap::new();
    if let serde_yaml::Value::Mapping(m) = &value {
        for (k, v) in m {
            let Some(k) = k.as_str() else { continue };
            if !matches!(k, "strategies" | "name" | "resources") {
                flatten(k, v, &mut out);
            }
        }
    }
    Ok(out)
}

/// Each strategy's own settings with `overrides` applied (`--set` values, and a sweep
/// point's), by strategy name, flattened as [`settings`] flattens, under the full key that
/// `--set` takes: `rnf` → {`strategies.rnf.prune.threshold` → `0.05`, …}. Read through
/// [`read`], so `extends:` and merge keys (`<<: *rnf`) are already resolved: a strategy that
/// inherits a value lists it as one written out in full would (`extends` itself is gone).
pub fn strategy_settings(
    source: &Source,
    overrides: &[sweep::Override],
) -> Result<
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    SpecErrors,
> {
    let (value, _) = source.overridden(overrides)?;
    let mut out = std::collections::BTreeMap::new();
    if let Some(serde_yaml::Value::Mapping(m)) = value.get("strategies") {
        for (k, v) in m {
            let Some(name) = k.as_str() else { continue };
            let mut own = std::collections::BTreeMap::new();
            flatten(&format!("strategies.{name}"), v, &mut own);
            out.insert(name.to_string(), own);
        }
    }
    Ok(out)
}

/// Flatten a YAML tree under `prefix` into dotted keys, each leaf as flow YAML (a string
/// unquoted, so a table shows `lrp`, not `"lrp"`).
fn flatten(
    prefix: &str,
    v: &serde_yaml::Value,
    out: &mut std::collections::BTreeMap<String, String>,
) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m {
                let k = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{k:?}"));
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            let text = match serde_json::to_value(other) {
                Ok(serde_json::Value::String(s)) => s,
                Ok(j) => j.to_string(),
                Err(_) => format!("{other:?}"),
            };
            out.insert(prefix.to_string(), text);
        }
    }
}

/// serde_yaml appends "at line X column Y"; we print positions ourselves.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Apply `dotted.key=value` to the YAML tree; returns the key path. The last key may be new
/// (an optional setting not written in the file); every parent must exist.
pub fn apply_override(root: &mut serde_yaml::Value, spec: &str) -> Result<String, String> {
    let Some((key, val)) = spec.split_once('=') else {
        return Err("expected `dotted.key=value`".into());
    };
    let key = key.trim();
    if key.is_empty() {
        return Err("empty key before `=`".into());
    }
    let new: serde_yaml::Value =
        serde_yaml::from_str(val).map_err(|e| format!("value `{val}` is not valid YAML: {e}"))?;
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let here = parts[..=i].join(".");
        cur = match cur {
            serde_yaml::Value::Mapping(m) => {
                let k = serde_yaml::Value::String(part.to_string());
                if last && !m.contains_key(&k) {
                    m.insert(k.clone(), serde_yaml::Value::Null);
                }
                m.get_mut(&k)
                    .ok_or_else(|| format!("no key `{here}` in the pipeline"))?
            }
            serde_yaml::Value::Sequence(s) => {
                let idx: usize = part
                    .parse()
                    .map_err(|_| format!("`{here}`: expected a list index"))?;
                let len = s.len();
                s.get_mut(idx)
                    .ok_or_else(|| format!("`{here}`: index {idx} out of range (list has {len})"))?
            }
            _ => {
                return Err(format!(
                    "`{}` is a scalar, cannot descend into it",
                    parts[..i].join(".")
                ))
            }
        };
    }
    if matches!(cur, serde_yaml::Value::Mapping(_)) && !matches!(new, serde_yaml::Value::Mapping(_))
    {
        return Err(format!(
            "`{key}` is a section; --set overrides scalars and lists"
        ));
    }
    *cur = new;
    Ok(key.to_string())
}
