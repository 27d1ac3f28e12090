//! Range checks for the numbers of a pipeline that training computes with in `f32` (learning
//! rates, decays, λ, ε, thresholds, momentum, betas, ...). YAML reads them as `f64`, where
//! `.nan`, `.inf` and `1.0e39` are all numbers; each must be finite, fit in an `f32` (a
//! nonzero value must not round to 0 there either) and lie in its own domain, or validation
//! reports it at its key path with what was expected.

/// Why `v` cannot be a number that training computes with, if it cannot.
pub(super) fn not_f32(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("not a number, e.g. YAML `.nan`")
    } else if v.is_infinite() {
        Some("infinite, e.g. YAML `.inf`")
    } else if v.abs() > f32::MAX as f64 {
        Some("beyond ±3.4e38, the range of the f32 numbers training computes with")
    } else if v != 0.0 && v as f32 == 0.0 {
        Some("so small that the f32 numbers training computes with round it to 0")
    } else {
        None
    }
}

/// The message for `v` at a key that expects `expected` (e.g. "a learning rate > 0"), when
/// `v` is outside that domain (`in_domain` false) or not an `f32`; `None` when it is fine.
pub(super) fn check(v: f64, in_domain: bool, expected: &str) -> Option<String> {
    match (in_domain, not_f32(v)) {
        (_, Some(why)) => Some(format!("expected {expected}, found {} ({why})", show(v))),
        (false, None) => Some(format!("expected {expected}, found {}", show(v))),
        (true, None) => None,
    }
}

/// `v` as YAML would spell it: `1e39` rather than forty digits.
fn show(v: f64) -> String {
    let a = v.abs();
    if a.is_finite() && a != 0.0 && !(1e-4..1e16).contains(&a) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// [`check`], reported through `e` at `path`; true when `v` is fine.
pub(super) fn checked(
    e: &mut dyn FnMut(&str, String),
    path: &str,
    v: f64,
    in_domain: bool,
    expected: &str,
) -> bool {
    match check(v, in_domain, expected) {
        Some(m) => {
            e(path, m);
            false
        }
        None => true,
    }
}
