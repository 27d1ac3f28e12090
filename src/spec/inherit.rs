//! Strategies that build on each other, resolved before anything is validated: YAML merge
//! keys (`<<: *rnf`, applied by serde_yaml) and `extends: NAME`, which copies strategy NAME
//! (itself resolved first) and merges this strategy's own settings over it, section by
//! section (`prune: {threshold: 0.05}` keeps the parent's `step_ratio`). `--set` and sweep
//! values then apply to the resolved tree, so they reach inherited settings too. Inherited
//! values stay located where they are written ([`Locator::inherit`]).

use super::{Locator, SpecError};
use serde_yaml::{Mapping, Value};
use std::path::Path;

/// `child` with `over` merged in: mappings key by key, anything else replaced.
fn merge(base: &Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            let mut out = b.clone();
            for (k, v) in o {
                let merged = match out.get(k) {
                    Some(old) => merge(old, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Mapping(out)
        }
        (_, o) => o.clone(),
    }
}

/// Resolve every `extends:` under `strategies:` in place, telling `locator` where inherited
/// values are written. Errors are located at the `extends:` that cannot be followed.
pub(super) fn resolve_extends(
    value: &mut Value,
    file: &Path,
    locator: &mut Locator,
) -> Result<(), Vec<SpecError>> {
    let Some(Value::Mapping(strategies)) = value.get("strategies").cloned() else {
        return Ok(());
    };
    let err = |path: String, message: String| SpecError {
        file: file.to_path_buf(),
        pos: locator.value(&path),
        path,
        message,
        from_override: None,
    };
    let names: Vec<String> = strategies
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    let parent_of = |name: &str| -> Result<Option<String>, SpecError> {
        let path = format!("strategies.{name}.extends");
        match strategies.get(name).and_then(|s| s.get("extends")) {
            None => Ok(None),
            Some(Value::String(p)) if names.contains(p) => Ok(Some(p.clone())),
            Some(Value::String(p)) => Err(err(
                path,
                format!(
                    "no strategy `{p}` to extend (strategies: {})",
                    names.join(", ")
                ),
            )),
            Some(_) => Err(err(path, "expected the name of another strategy".into())),
        }
    };
    let mut resolved = Mapping::new();
    let mut errors = Vec::new();
    let mut inherits = Vec::new();
    for name in &names {
        // The chain up to a strategy that extends nothing, checked for loops.
        let mut chain = vec![name.clone()];
        let mut failed = false;
        loop {
            match parent_of(chain.last().expect("non-empty")) {
                Ok(None) => break,
                Ok(Some(p)) if chain.contains(&p) => {
                    chain.push(p);
                    errors.push(err(
                        format!("strategies.{name}.extends"),
                        format!("`extends` loops: {}", chain.join(" → ")),
                    ));
                    failed = true;
                    break;
                }
                Ok(Some(p)) => chain.push(p),
                Err(e) => {
                    if !errors.contains(&e) {
                        errors.push(e);
                    }
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            continue;
        }
        // Root first, each descendant's own settings over it.
        let mut v = Value::Mapping(Mapping::new());
        for s in chain.iter().rev() {
            let mut own = strategies.get(s.as_str()).cloned().unwrap_or(Value::Null);
            if let Value::Mapping(m) = &mut own {
                m.remove("extends");
            }
            v = merge(&v, &own);
        }
        for w in chain.windows(2) {
            let pair = (
                format!("strategies.{}", w[0]),
                format!("strategies.{}", w[1]),
            );
            if !inherits.contains(&pair) {
                inherits.push(pair);
            }
        }
        resolved.insert(Value::String(name.clone()), v);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    for (child, parent) in inherits {
        locator.inherit(&child, &parent);
    }
    if let Some(m) = value.as_mapping_mut() {
        m.insert(Value::String("strategies".into()), Value::Mapping(resolved));
    }
    Ok(())
}
