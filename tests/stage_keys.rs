//! Stage keys are a contract: teammates' caches and remotes are filed under them. This test
//! runs the bundled `mnist_split`, `cnn_mnist_split` and `method_comparison` (shortened with
//! `--set`, which exercises every stage kind they use) and checks that every stage's key is the
//! one committed in `tests/golden/stage_keys.json`. A refactor must leave them unchanged; a
//! change of semantics changes them on purpose, and is then re-blessed with
//! `CFPIPE_BLESS_KEYS=1 cargo test --release --test stage_keys` and noted in CHANGELOG.md.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

const GOLDEN: &str = "tests/golden/stage_keys.json";

/// Each bundled pipeline with the overrides that keep it small.
fn pipelines() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        (
            "pipelines/mnist_split.yaml",
            vec![
                "training.epochs=1",
                "seeds=[0]",
                "tasks=[[0, 1], [2, 3], [4, 5]]",
            ],
        ),
        (
            "pipelines/mnist_split_shared.yaml",
            vec![
                "training.epochs=1",
                "seeds=[0]",
                "tasks=[[0, 1], [2, 3], [4, 5]]",
            ],
        ),
        (
            "pipelines/mnist_split_class_il.yaml",
            vec![
                "training.epochs=1",
                "seeds=[0]",
                "tasks=[[0, 1], [2, 3], [4, 5]]",
            ],
        ),
        (
            "pipelines/cnn_mnist_split.yaml",
            vec![
                "seeds=[0]",
                "tasks=[[0, 1], [2, 3]]",
                "training.epochs=1",
                "model.layers.0.conv.out_channels=4",
                "model.layers.2.conv.out_channels=6",
                "model.layers.5.dense.units=16",
                "strategies.rnf.score.reference_size=30",
                "strategies.rnf.prune.step_ratio=0.2",
            ],
        ),
        (
            "pipelines/method_comparison.yaml",
            vec![
                "training.epochs=1",
                "seeds=[0]",
                "tasks=[[0, 1], [2, 3]]",
                "model.hidden=[32, 32]",
                "strategies.ewc_fisher.ewc.importance.reference_size=20",
                "strategies.ewc_mas.ewc.importance.reference_size=20",
            ],
        ),
    ]
}

/// Every stage id (aliases included) of one pipeline → its key.
fn keys_of(pipeline: &str, set: &[&str], cache: &Path) -> BTreeMap<String, String> {
    let report = common::run_repo_pipeline(pipeline, set, cache);
    let mut out = BTreeMap::new();
    for e in &report.events {
        let key = e
            .key
            .expect("every stage of a complete run has a key")
            .to_hex();
        for id in std::iter::once(&e.id).chain(&e.aliases) {
            out.insert(id.clone(), key.clone());
        }
    }
    out
}

#[test]
fn the_bundled_pipelines_keep_their_committed_stage_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut found: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (i, (pipeline, set)) in pipelines().into_iter().enumerate() {
        let keys = keys_of(pipeline, &set, &dir.path().join(format!("cache{i}")));
        found.insert(pipeline.to_string(), keys);
    }
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    if std::env::var_os("CFPIPE_BLESS_KEYS").is_some() {
        let text = serde_json::to_string_pretty(&found).unwrap() + "\n";
        std::fs::write(&golden, text).unwrap();
        return;
    }
    let want: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_slice(&std::fs::read(&golden).unwrap()).unwrap();
    let mut diffs = Vec::new();
    for (pipeline, keys) in &want {
        let got = &found[pipeline];
        for (id, key) in keys {
            match got.get(id) {
                Some(k) if k == key => {}
                Some(k) => diffs.push(format!("{pipeline}: `{id}` key {key} is now {k}")),
                None => diffs.push(format!("{pipeline}: `{id}` is no longer a stage")),
            }
        }
        for id in got.keys().filter(|id| !keys.contains_key(*id)) {
            diffs.push(format!("{pipeline}: `{id}` is a new stage"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} stage keys changed; a cache shared with teammates would miss them:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    // The file covers every stage kind these pipelines use, so no kind escapes the contract.
    let n: usize = want.values().map(|k| k.len()).sum();
    assert!(n > 50, "{n} keys");
}
