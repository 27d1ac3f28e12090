//! Every class of bad input gives a non-zero exit and a message that says where and what was
//! expected; none panics.

mod common;
use common::{stderr, Fixture, PIPELINE};

/// Run `cfpipe run` on `text` and return (exit code, stderr).
fn run_bad(text: &str, extra: &[&str]) -> (Option<i32>, String) {
    let f = Fixture::with_pipeline(text);
    let pipeline = f.pipeline();
    let mut args = vec!["run", pipeline.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(extra);
    let o = f.cli(&args);
    let e = stderr(&o);
    assert!(!e.contains("panicked"), "panic on bad input: {e}");
    // Nothing ran: validation happens before any work.
    assert!(!f.cache_dir().join("entries").exists() || common::stdout(&o).is_empty());
    (o.status.code(), e)
}

/// 1-based line of the first line containing `needle` in the fixture pipeline after `edit`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1
}

fn expect(text: &str, extra: &[&str], loc: Option<(usize, usize)>, path: &str, words: &[&str]) {
    let (code, e) = run_bad(text, extra);
    assert_eq!(code, Some(2), "exit code for: {e}");
    if let Some((line, col)) = loc {
        assert!(
            e.contains(&format!("pipeline.yaml:{line}:{col}")),
            "expected {line}:{col} in: {e}"
        );
    }
    assert!(e.contains(path), "expected key path `{path}` in: {e}");
    for w in words {
        assert!(e.contains(w), "expected `{w}` in: {e}");
    }
}

#[test]
fn yaml_syntax_error_has_a_position() {
    let text = PIPELINE.replace("tasks: [[0, 1], [2, 3]]", "tasks: [[0, 1], [2, 3]");
    let (code, e) = run_bad(&text, &[]);
    assert_eq!(code, Some(2));
    assert!(e.contains("invalid YAML"), "{e}");
    assert!(e.contains("pipeline.yaml:"), "{e}");
}

#[test]
fn unknown_key_is_rejected_with_its_location() {
    let text = PIPELINE.replace("  epochs: 3\n", "  epochs: 3\n  epochz: 4\n");
    let line = line_of(&text, "epochz");
    expect(
        &text,
        &[],
        Some((line, 3)),
        "training.epochz",
        &["unknown field `epochz`", "expected one of"],
    );
}

#[test]
fn wrong_type_names_what_was_expected() {
    let text = PIPELINE.replace("batch_size: 16", "batch_size: lots");
    let line = line_of(&text, "batch_size");
    expect(
        &text,
        &[],
        Some((line, 15)),
        "training.batch_size",
        &["expected i64"],
    );
}

#[test]
fn threshold_outside_zero_one() {
    let text = PIPELINE.replace("threshold: 0.3", "threshold: 1.5");
    let line = line_of(&text, "threshold:");
    expect(
        &text,
        &[],
        Some((line, 18)),
        "strategies.rnf.prune.threshold",
        &["(0, 1)", "1.5"],
    );
}

#[test]
fn non_positive_learning_rate() {
    let text = PIPELINE.replace("lr: 0.01", "lr: 0");
    let line = line_of(&text, "lr: 0");
    expect(&text, &[], Some((line, 7)), "training.lr", &["> 0"]);
}

#[test]
fn empty_and_overlapping_class_groups() {
    let text = PIPELINE.replace("tasks: [[0, 1], [2, 3]]", "tasks: [[], [2, 3]]");
    expect(
        &text,
        &[],
        Some((8, 9)),
        "tasks.0",
        &["at least two classes"],
    );
    let text = PIPELINE.replace("tasks: [[0, 1], [2, 3]]", "tasks: [[0, 1], [1, 3]]");
    expect(
        &text,
        &[],
        Some((8, 18)),
        "tasks.1.0",
        &["already in task 0", "overlap"],
    );
}

#[test]
fn a_class_the_dataset_lacks() {
    let text = PIPELINE.replace("tasks: [[0, 1], [2, 3]]", "tasks: [[0, 1], [2, 7]]");
    expect(
        &text,
        &[],
        Some((8, 21)),
        "tasks.1.1",
        &["class 7 does not occur"],
    );
}

#[test]
fn a_missing_data_file_names_the_path() {
    let text = PIPELINE.replace("images: IMG", "images: /nonexistent/train-images.gz");
    expect(
        &text,
        &[],
        Some((4, 11)),
        "dataset.images",
        &["/nonexistent/train-images.gz", "does not exist"],
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = PIPELINE
        .replace("lr: 0.01", "lr: -1")
        .replace("epochs: 3", "epochs: 0");
    let (code, e) = run_bad(&text, &[]);
    assert_eq!(code, Some(2));
    assert!(
        e.contains("training.lr") && e.contains("training.epochs"),
        "{e}"
    );
}

#[test]
fn bad_overrides_name_the_override() {
    expect(
        PIPELINE,
        &["--set", "strategies.rnf.prune.threshold=2"],
        None,
        "strategies.rnf.prune.threshold",
        &["--set strategies.rnf.prune.threshold=2", "(0, 1)"],
    );
    expect(
        PIPELINE,
        &["--set", "training.nope.deeper=1"],
        None,
        "training.nope.deeper",
        &["no key `training.nope`"],
    );
    expect(
        PIPELINE,
        &["--set", "noequals"],
        None,
        "noequals",
        &["dotted.key=value"],
    );
}

#[test]
fn strategy_sections_that_do_not_apply_are_rejected() {
    let text = PIPELINE.replace(
        "    freeze: none\n",
        "    freeze: none\n    lr_frozen: 0.5\n",
    );
    expect(
        &text,
        &[],
        None,
        "strategies.naive.lr_frozen",
        &["only used with `freeze: until_threshold`"],
    );
}

#[test]
fn unknown_device_and_missing_cuda_are_usage_errors() {
    let f = Fixture::new();
    let o = f.cli(&["run", f.pipeline().to_str().unwrap(), "--device", "tpu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown device `tpu`"));
    let o = f.cli(&["run", f.pipeline().to_str().unwrap(), "--device", "cuda:0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--features cuda"), "{}", stderr(&o));
}

#[test]
fn dag_works_without_the_data() {
    let text = PIPELINE.replace("images: IMG", "images: /nonexistent/x.gz");
    let f = Fixture::with_pipeline(&text);
    let o = f.cli(&["dag", f.pipeline().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = common::stdout(&o);
    assert!(out.contains("rnf/seed0/task2/prune  [prune]"));
    assert!(
        out.contains("= rnf/seed0/task1/train"),
        "shared stage listed as alias: {out}"
    );
    let dot = common::stdout(&f.cli(&["dag", f.pipeline().to_str().unwrap(), "--dot"]));
    assert!(dot.starts_with("digraph cfpipe {") && dot.contains("->"));
}

#[test]
fn final_mask_is_a_located_boolean_for_freezing_strategies_only() {
    // Wrong type: file:line:col and what was expected.
    let text = PIPELINE.replace(
        "    lr_frozen: 0.0\n",
        "    lr_frozen: 0.0\n    final_mask: sometimes\n",
    );
    let line = line_of(&text, "final_mask");
    expect(
        &text,
        &[],
        Some((line, 17)),
        "strategies.rnf.final_mask",
        &["expected a boolean"],
    );
    // Without a freezing policy there is nothing to mask.
    let text = PIPELINE.replace(
        "    freeze: none\n",
        "    freeze: none\n    final_mask: false\n",
    );
    let line = line_of(&text, "final_mask");
    expect(
        &text,
        &[],
        Some((line, 17)),
        "strategies.naive.final_mask",
        &["only meaningful with a freezing policy"],
    );
    // A random baseline cannot match a mask that its `like` never computes.
    let text = PIPELINE.replace(
        "    lr_frozen: 0.0\n",
        "    lr_frozen: 0.0\n    final_mask: false\n  rand:\n    freeze: random\n    like: rnf\n",
    );
    expect(
        &text,
        &[],
        None,
        "strategies.rand.like",
        &["`rnf` has `final_mask: false`", "final_mask: false"],
    );
}
