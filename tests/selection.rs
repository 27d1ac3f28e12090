//! `evaluation.selection: validation`: a seeded, stratified share of each task's training data
//! is held out, and the choices a strategy makes (the prune search, importance references) are
//! made on it; the test split is only evaluated.

mod common;

use cfpipe::data::idx::write_idx;
use common::{Fixture, PIPELINE};

/// The fixture pipeline with separate test files (`timg.gz`, `tlbl.gz`: the pool's images
/// again, with `labels` as their labels) and `evaluation:` as given.
fn with_test_files(labels: &[u8], evaluation: &str) -> Fixture {
    let f = Fixture::new();
    let n = labels.len();
    std::fs::copy(f.path().join("img.gz"), f.path().join("timg.gz")).unwrap();
    write_idx(&f.path().join("tlbl.gz"), &[n], labels, true).unwrap();
    let text = PIPELINE.replace(
        "  test_fraction: 0.25\n",
        &format!(
            "  test_images: {}\n  test_labels: {}\n",
            f.path().join("timg.gz").display(),
            f.path().join("tlbl.gz").display()
        ),
    ) + evaluation;
    f.write_pipeline(&text);
    f
}

/// The fixture's labels: class `i % 4` for 240 samples.
fn true_labels() -> Vec<u8> {
    (0..240).map(|i| (i % 4) as u8).collect()
}

/// Labels that make the test set say the opposite: each pair's classes swapped.
fn swapped_labels() -> Vec<u8> {
    true_labels().iter().map(|&c| c ^ 1).collect()
}

const VALIDATION: &str = "evaluation:\n  selection: validation\n  validation_fraction: 0.2\n";

#[test]
fn the_validation_split_is_a_stratified_seeded_share_of_the_training_data() {
    let f = Fixture::with_pipeline(&format!("{PIPELINE}{VALIDATION}"));
    f.run(&[]);
    let meta = f.json_of("split", "split.json");
    let plain = Fixture::new();
    plain.run(&[]);
    let before = plain.json_of("split", "split.json");
    for t in 0..2 {
        let (n_train, n_val) = (
            meta["tasks"][t]["n_train"].as_u64().unwrap(),
            meta["tasks"][t]["n_val"].as_u64().unwrap(),
        );
        // 45 training samples per class before: 9 of each class (20%) are held out.
        assert_eq!(
            n_train + n_val,
            before["tasks"][t]["n_train"].as_u64().unwrap()
        );
        assert_eq!(n_val, 2 * 9);
        assert_eq!(before["tasks"][t].get("n_val"), None);
    }
    let tensors = cfpipe::nn::tensorio::decode(&f.output("split", "split.safetensors")).unwrap();
    let labels = |name: &str| match &tensors[name] {
        cfpipe::nn::tensorio::HostTensor::U8 { data, .. } => data.clone(),
        other => panic!("{name}: {other:?}"),
    };
    let val = labels("task0.val.y");
    assert_eq!(val.iter().filter(|&&y| y == 0).count(), 9);
    assert_eq!(val.iter().filter(|&&y| y == 1).count(), 9);
    // Seeded: a second cache holds the same bytes.
    let again = Fixture::with_pipeline(&format!("{PIPELINE}{VALIDATION}"));
    again.run(&[]);
    assert_eq!(
        again.output("split", "split.safetensors"),
        f.output("split", "split.safetensors")
    );
}

#[test]
fn with_validation_selection_the_prune_search_never_reads_a_test_sample() {
    let prune = |f: &Fixture| f.json_of("rnf/seed0/task1/prune", "prune.json");
    let score = |f: &Fixture| f.output("rnf/seed0/task1/score", "units.safetensors");
    // Selecting on test: swapping the test labels changes what the search sees.
    let (a, b) = (
        with_test_files(&true_labels(), ""),
        with_test_files(&swapped_labels(), ""),
    );
    a.run(&[]);
    b.run(&[]);
    assert_ne!(prune(&a)["curve"], prune(&b)["curve"]);
    assert_ne!(score(&a), score(&b));
    // Selecting on validation: the same test sets change nothing the strategy chose...
    let (a, b) = (
        with_test_files(&true_labels(), VALIDATION),
        with_test_files(&swapped_labels(), VALIDATION),
    );
    a.run(&[]);
    b.run(&[]);
    assert_eq!(prune(&a), prune(&b));
    assert_eq!(score(&a), score(&b));
    assert_eq!(
        a.output("rnf/seed0/task2/train", "model.safetensors"),
        b.output("rnf/seed0/task2/train", "model.safetensors")
    );
    // ...and only the test accuracy, evaluated on them, differs.
    let acc = |f: &Fixture| f.json_of("rnf/seed0/task2/evaluate", "eval.json")["accuracy"].clone();
    assert_ne!(acc(&a), acc(&b));
}

#[test]
fn validation_settings_are_checked() {
    for (extra, expect) in [
        (
            "evaluation:\n  validation_fraction: 0.2\n",
            "evaluation.validation_fraction: only used with `selection: validation`",
        ),
        (
            "evaluation:\n  selection: validation\n  validation_fraction: 1.5\n",
            "evaluation.validation_fraction: expected a share",
        ),
    ] {
        let f = Fixture::with_pipeline(&format!("{PIPELINE}{extra}"));
        let o = f.cli(&["status", f.pipeline().to_str().unwrap()]);
        let e = common::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(e.contains(expect), "expected `{expect}` in: {e}");
    }
}
