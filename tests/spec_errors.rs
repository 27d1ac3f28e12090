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

// ---------------------------------------------------------------- numbers (f32 in training)

#[test]
fn an_ewc_lambda_beyond_f32_range_is_rejected_at_its_key() {
    let text = format!(
        "{PIPELINE}  ewc:\n    freeze: none\n    ewc:\n      lambda: 1.0e39\n      importance: {{method: mas, reference_size: 20, reference_split: train}}\n"
    );
    let line = line_of(&text, "lambda: 1.0e39");
    expect(
        &text,
        &[],
        Some((line, 15)),
        "strategies.ewc.ewc.lambda",
        &["penalty strength >= 0", "1e39", "f32"],
    );
}

#[test]
fn yaml_nan_and_inf_are_not_numbers_training_can_use() {
    let text = PIPELINE
        .replace("lr: 0.01", "lr: .nan")
        .replace("weight_decay: 0.001", "weight_decay: .inf")
        .replace("epsilon: 1.0e-6", "epsilon: 1.0e-60");
    let (code, e) = run_bad(&text, &[]);
    assert_eq!(code, Some(2), "{e}");
    for (key, words) in [
        ("training.lr", "not a number"),
        ("training.weight_decay", "infinite"),
        ("strategies.rnf.score.epsilon", "round it to 0"),
    ] {
        let line = e
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no {key} in: {e}"));
        assert!(line.contains(words), "expected `{words}` in: {line}");
        assert!(line.contains("pipeline.yaml:"), "no location: {line}");
    }
}

// ---------------------------------------------------------------- data checked before any work

/// The fixture pipeline with its data files replaced by `images` and `labels` (paths inside
/// the fixture dir, written by `write`).
fn with_data(write: impl Fn(&std::path::Path)) -> Fixture {
    let f = Fixture::new();
    write(f.path());
    let text = PIPELINE
        .replace(
            "images: IMG",
            &format!("images: {}", f.path().join("bad-img").display()),
        )
        .replace(
            "labels: LBL",
            &format!("labels: {}", f.path().join("bad-lbl").display()),
        );
    f.write_pipeline(&text);
    f
}

fn status_error(f: &Fixture) -> String {
    let o = f.cli(&["status", f.pipeline().to_str().unwrap()]);
    let e = stderr(&o);
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(o.status.code(), Some(2), "exit code for: {e}");
    assert!(
        !f.cache_dir().join("entries").exists(),
        "work was done: {e}"
    );
    e
}

fn copy_fixture_data(dir: &std::path::Path) {
    std::fs::copy(dir.join("img.gz"), dir.join("bad-img")).unwrap();
    std::fs::copy(dir.join("lbl.gz"), dir.join("bad-lbl")).unwrap();
}

#[test]
fn corrupt_data_files_are_spec_errors_at_the_key_that_names_them() {
    use cfpipe::data::idx::write_idx;
    type Write = Box<dyn Fn(&std::path::Path)>;
    let cases: Vec<(&str, Write, &str, &str)> = vec![
        (
            "a text file",
            Box::new(|d| {
                copy_fixture_data(d);
                std::fs::write(d.join("bad-img"), "not an idx file\n").unwrap();
            }),
            "pipeline.yaml:4:11: dataset.images",
            "bad magic",
        ),
        (
            "a truncated gzip stream",
            Box::new(|d| {
                copy_fixture_data(d);
                let gz = std::fs::read(d.join("img.gz")).unwrap();
                std::fs::write(d.join("bad-img"), &gz[..gz.len() / 2]).unwrap();
            }),
            "pipeline.yaml:4:11: dataset.images",
            "gzip",
        ),
        (
            "one label too few",
            Box::new(|d| {
                copy_fixture_data(d);
                write_idx(&d.join("bad-lbl"), &[239], &[0; 239], true).unwrap();
            }),
            "pipeline.yaml:5:11: dataset.labels",
            "holds 239 labels, but",
        ),
        (
            "a header that claims more images than the file holds",
            Box::new(|d| {
                copy_fixture_data(d);
                let mut raw = vec![0, 0, 8, 3, 0, 0, 1, 44, 0, 0, 0, 8, 0, 0, 0, 8];
                raw.extend(std::iter::repeat_n(7u8, 240 * 64));
                std::fs::write(d.join("bad-img"), raw).unwrap();
            }),
            "pipeline.yaml:4:11: dataset.images",
            "truncated",
        ),
        (
            "a directory",
            Box::new(|d| {
                copy_fixture_data(d);
                std::fs::remove_file(d.join("bad-img")).unwrap();
                std::fs::create_dir(d.join("bad-img")).unwrap();
            }),
            "pipeline.yaml:4:11: dataset.images",
            "is a directory",
        ),
    ];
    for (what, write, at, words) in cases {
        let f = with_data(write);
        let e = status_error(&f);
        assert!(e.contains(at), "{what}: expected `{at}` in: {e}");
        assert!(e.contains(words), "{what}: expected `{words}` in: {e}");
        assert!(e.contains("bad-"), "{what}: the file is named in: {e}");
    }
}

#[test]
fn a_data_file_damaged_after_a_passed_check_is_found_on_the_next_run() {
    let f = with_data(copy_fixture_data);
    let pipeline = f.pipeline();
    let run = || f.cli(&["run", "-q", pipeline.to_str().unwrap()]);
    for _ in 0..2 {
        let o = run();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    // The second run found the cache's index and remembered the passed check.
    assert!(f.cache_dir().join("index/datachecks.json").is_file());
    // Truncate the images in place, and put the old mtime back: only the ctime tells.
    let img = f.path().join("bad-img");
    let mtime = std::fs::metadata(&img).unwrap().modified().unwrap();
    let gz = std::fs::read(&img).unwrap();
    std::fs::write(&img, &gz[..gz.len() / 2]).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let o = run();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("dataset.images") && e.contains("gzip"), "{e}");
}

const CNN: &str = "model:\n  kind: cnn\n  input_shape: SHAPE\n  layers:\n    - conv: {out_channels: 4, kernel: 3, padding: 1}\n    - flatten\n";

#[test]
fn a_model_input_that_does_not_match_the_images_is_found_before_anything_runs() {
    let text = PIPELINE.replace(
        "model:\n  kind: mlp\n  hidden: [16, 12]\n",
        &CNN.replace("SHAPE", "[3, 8, 8]"),
    );
    let f = Fixture::with_pipeline(&text);
    let e = status_error(&f);
    let line = line_of(&text, "input_shape");
    assert!(
        e.contains(&format!("pipeline.yaml:{line}:16: model.input_shape")),
        "{e}"
    );
    assert!(e.contains("[3, 8, 8]") && e.contains("[1, 8, 8]"), "{e}");
    // The matching shape passes, and `dag` (no data) never reads the images.
    let ok = PIPELINE.replace(
        "model:\n  kind: mlp\n  hidden: [16, 12]\n",
        &CNN.replace("SHAPE", "[1, 8, 8]"),
    );
    let f = Fixture::with_pipeline(&ok);
    let o = f.cli(&["status", f.pipeline().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f = Fixture::with_pipeline(&text);
    assert!(f
        .cli(&["dag", f.pipeline().to_str().unwrap()])
        .status
        .success());
}

// ---------------------------------------------------------------- messages for a new user

#[test]
fn format_mnist_lists_the_formats_and_suggests_idx() {
    let text = PIPELINE.replace("format: idx", "format: mnist");
    expect(
        &text,
        &[],
        Some((3, 11)),
        "dataset.format",
        &[
            "idx, cifar10, cifar100, image_folder, adience",
            "`format: idx`",
        ],
    );
}

#[test]
fn an_indentation_mistake_gets_a_hint_at_its_line() {
    for (from, to) in [
        ("  epochs: 3\n", "   epochs: 3\n"),
        ("  epochs: 3\n", " epochs: 3\n"),
    ] {
        let text = PIPELINE.replace(from, to);
        let (code, e) = run_bad(&text, &[]);
        assert_eq!(code, Some(2), "{e}");
        let line = line_of(&text, "epochs: 3");
        assert!(e.contains(&format!("pipeline.yaml:{line}:")), "{e}");
        assert!(e.contains("invalid YAML"), "{e}");
        assert!(
            e.contains(&format!("check the indentation at line {line}")),
            "{e}"
        );
    }
}

#[test]
fn a_dedented_prune_block_is_said_to_be_read_as_a_strategy_name() {
    let text = PIPELINE.replace(
        "    prune:\n      threshold: 0.3\n      step_ratio: 0.1\n",
        "  prune:\n    threshold: 0.3\n    step_ratio: 0.1\n",
    );
    let line = line_of(&text, "  prune:");
    expect(
        &text,
        &[],
        Some((line, 3)),
        "strategies.prune",
        &["read as a strategy name", "indenting under"],
    );
}

#[test]
fn every_strategy_key_the_hint_knows_is_a_key_of_a_strategy() {
    for key in cfpipe::spec::raw::STRATEGY_KEYS {
        let yaml = format!("freeze: none\n{key}: [[[]]]\n");
        let err = serde_yaml::from_str::<cfpipe::spec::raw::RawStrategy>(&yaml)
            .expect_err(key)
            .to_string();
        assert!(!err.contains("unknown field"), "{key}: {err}");
    }
}

#[test]
fn every_mistake_of_a_file_that_parses_is_reported_in_one_run_in_file_order() {
    let text = PIPELINE
        .replace("  hidden: [16, 12]\n", "  hidden: [16, 12]\n  hiden: 3\n")
        .replace("  epochs: 3\n", "  epochs: 3\n  epochz: 4\n")
        .replace("lr: 0.01", "lr: -1")
        .replace("    prune:\n", "    prune:\n      serach: bisect\n")
        .replace("    freeze: none\n", "    freeze: none\n    colour: red\n");
    let (code, e) = run_bad(&text, &[]);
    assert_eq!(code, Some(2), "{e}");
    let keys = [
        "model.hiden",
        "training.lr",
        "training.epochz",
        "strategies.naive.colour",
        "strategies.rnf.prune.serach",
    ];
    let mut last = 0;
    for key in keys {
        let line = e
            .lines()
            .position(|l| l.contains(&format!(": {key}:")))
            .unwrap_or_else(|| panic!("no {key} in: {e}"));
        assert!(line >= last, "{key} out of file order in: {e}");
        last = line;
    }
}

#[test]
fn a_strategy_name_with_a_space_or_slash_is_reported_at_the_name() {
    for name in ["my naive", "a/b"] {
        let text = PIPELINE.replace("  naive:\n", &format!("  {name}:\n"));
        let line = line_of(&text, &format!("  {name}:"));
        expect(
            &text,
            &[],
            Some((line, 3)),
            &format!("strategies.{name}"),
            &["letters, digits"],
        );
    }
}

#[test]
fn a_bad_memory_or_time_in_resources_is_located_before_anything_is_submitted() {
    let text = format!(
        "{PIPELINE}resources:\n  train: {{gpus: 1, mem: 32GG}}\n  default: {{time: \"1:75:00\"}}\n"
    );
    let (code, e) = run_bad(&text, &[]);
    assert_eq!(code, Some(2), "{e}");
    let line = line_of(&text, "mem: 32GG");
    assert!(e.contains(&format!("pipeline.yaml:{line}:")), "{e}");
    assert!(e.contains("resources.train.mem"), "{e}");
    assert!(e.contains("such as `32G`"), "{e}");
    assert!(e.contains("resources.default.time"), "{e}");
    assert!(e.contains("below 60"), "{e}");
}

#[test]
fn resources_for_an_unknown_stage_kind_name_the_kinds_there_are() {
    expect(
        &format!("{PIPELINE}resources:\n  trian: {{gpus: 1}}\n"),
        &[],
        None,
        "resources.trian",
        &["unknown stage kind `trian`", "default", "train"],
    );
    expect(
        PIPELINE,
        &["--set", "resources={train: {cpus: 0}}"],
        None,
        "resources.train.cpus",
        &["expected a whole number >= 1, found 0", "--set resources="],
    );
}

#[test]
fn a_freezing_policy_without_a_score_names_the_policy_that_needs_it() {
    let until = PIPELINE.replace(
        "    score:\n      method: lrp\n      rule: epsilon\n      epsilon: 1.0e-6\n      reference_size: 20\n",
        "",
    );
    expect(
        &until,
        &[],
        None,
        "strategies.rnf.score",
        &["required with `freeze: until_threshold`"],
    );
    let top = PIPELINE.replace(
        "  naive:\n    freeze: none\n",
        "  naive:\n    freeze: top_share\n    share: 0.5\n",
    );
    expect(
        &top,
        &[],
        None,
        "strategies.naive.score",
        &["required with `freeze: top_share`"],
    );
}
