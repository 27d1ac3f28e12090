//! The data protocol of `training.augment`, `training.sampling` and `evaluation.crops`, run in
//! real stages on tiny IDX fixtures: augmentation changes training but is seed-deterministic,
//! ten-crop evaluation is the mean softmax of crops cut by hand, balanced resampling draws
//! classes uniformly from an imbalanced set, every choice is in the keys, and mistakes are
//! reported with their location.

mod common;

use cfpipe::data::idx::write_idx;
use cfpipe::nn::model::DeviceModel;
use cfpipe::nn::tensorio::{decode, HostTensor};
use common::Fixture;
use dfdx::prelude::*;
use std::path::Path;

/// An MLP pipeline on the 8×8 fixture; `EXTRA` is replaced by lines under `training:` and
/// `TAIL` by top-level keys.
const MLP: &str = r#"name: protocol
dataset: {format: idx, images: IMG, labels: LBL, test_fraction: 0.25, split_seed: 0}
tasks: [[0, 1], [2, 3]]
model: {kind: mlp, hidden: [16]}
training:
  optimizer: adam
  lr: 0.01
  batch_size: 16
  epochs: 2
EXTRA
TAIL
seeds: [0]
strategies:
  naive: {freeze: none}
"#;

fn pipeline(base: &str, extra: &str, tail: &str) -> String {
    base.replace("EXTRA", extra).replace("TAIL", tail)
}

#[test]
fn augmentation_changes_training_but_is_seed_deterministic() {
    let aug = "  augment: {crop: {padding: 2}, hflip: true}";
    let fx = Fixture::with_pipeline(&pipeline(MLP, aug, ""));
    let (a, b) = (fx.path().join("a"), fx.path().join("b"));
    fx.run_in(&a, &[], 2);
    fx.run_in(&b, &[], 1);
    let id = "naive/seed0/task2/train";
    let model = |c: &Path| fx.output_in(c, id, "model.safetensors");
    assert_eq!(model(&a), model(&b), "same seed, different models");
    // Without augmentation the same seed trains another model...
    fx.write_pipeline(&pipeline(MLP, "", ""));
    let plain = fx.path().join("plain");
    fx.run_in(&plain, &[], 2);
    let plain_model = model(&plain);
    // ...and mirrors alone, or padded crops alone, each change it too.
    for extra in [
        "  augment: {hflip: true}",
        "  augment: {crop: {padding: 2}}",
    ] {
        fx.write_pipeline(&pipeline(MLP, extra, ""));
        let c = fx.path().join(extra.len().to_string());
        fx.run_in(&c, &[], 2);
        assert_ne!(model(&c), plain_model, "{extra} did not change training");
    }
    fx.write_pipeline(&pipeline(MLP, aug, ""));
    assert_ne!(model(&a), plain_model);
    // `augment: {}` is no augmentation: the very same stages.
    fx.write_pipeline(&pipeline(MLP, "  augment: {}", ""));
    let report = fx.run_in(&plain, &[], 2);
    assert!(report.ran().is_empty(), "ran {:?}", report.ran());
}

/// IDX files with `counts[c]` samples of class `c` (8×8, class-coloured quadrant plus noise).
fn imbalanced(dir: &Path, counts: &[usize]) {
    let (mut px, mut lb) = (Vec::new(), Vec::new());
    let mut state = 7u64;
    for (c, &n) in counts.iter().enumerate() {
        for _ in 0..n {
            for r in 0..8 {
                for col in 0..8 {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let q = (r / 4) * 2 + col / 4;
                    let signal = if q == c { 60 } else { 0 };
                    px.push((signal + (state >> 57) as u16).min(255) as u8);
                }
            }
            lb.push(c as u8);
        }
    }
    write_idx(&dir.join("img.gz"), &[lb.len(), 8, 8], &px, true).unwrap();
    write_idx(&dir.join("lbl.gz"), &[lb.len()], &lb, true).unwrap();
}

#[test]
fn balanced_resampling_draws_classes_uniformly_from_an_imbalanced_set() {
    let fx = Fixture::with_pipeline(&pipeline(MLP, "  sampling: {kind: balanced}", ""));
    // Task 1: 200 of class 0, 20 of class 1; a quarter of each is held out.
    imbalanced(fx.path(), &[200, 20, 40, 40]);
    fx.run(&[]);
    let log = fx.json_of("naive/seed0/task1/train", "train.json");
    let epochs = log["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    let n = 150 + 15;
    for e in epochs {
        let counts: Vec<usize> = serde_json::from_value(e["class_counts"].clone()).unwrap();
        assert_eq!(counts.iter().sum::<usize>(), n, "{e}");
        // Binomial(165, ½): standard deviation 6.4; 4 of them either side.
        for c in &counts {
            assert!(c.abs_diff(n / 2) <= 26, "not balanced: {counts:?}");
        }
    }
    // Empirical sampling keeps the 10:1 imbalance (class 0: 150/165 of the draws).
    fx.write_pipeline(&pipeline(MLP, "  sampling: {kind: empirical}", ""));
    fx.run(&[]);
    let log = fx.json_of("naive/seed0/task1/train", "train.json");
    for e in log["epochs"].as_array().unwrap() {
        let counts: Vec<usize> = serde_json::from_value(e["class_counts"].clone()).unwrap();
        assert!(counts[0].abs_diff(150) <= 16, "{counts:?}");
    }
    // Without resampling every sample is seen once and nothing is logged per class.
    fx.write_pipeline(&pipeline(MLP, "", ""));
    fx.run(&[]);
    let log = fx.json_of("naive/seed0/task1/train", "train.json");
    assert!(log["epochs"][0].get("class_counts").is_none(), "{log}");
}

/// A conv model on 6×6 crops of the 8×8 fixture.
const CNN: &str = r#"name: protocol_cnn
dataset: {format: idx, images: IMG, labels: LBL, test_fraction: 0.25, split_seed: 0}
tasks: [[0, 1], [2, 3]]
model:
  kind: cnn
  input_shape: [1, 6, 6]
  layers:
    - conv: {out_channels: 4, kernel: 3, padding: 1}
    - max_pool: {kernel: 2}
    - flatten
    - dense: {units: 8}
training:
  optimizer: adam
  lr: 0.01
  batch_size: 16
  epochs: 2
  augment: {crop: {size: 6}, hflip: true}
TAIL
seeds: [0]
strategies:
  naive: {freeze: none}
"#;

#[test]
fn ten_crop_evaluation_is_the_mean_softmax_of_crops_cut_by_hand() {
    let fx = Fixture::with_pipeline(&CNN.replace("TAIL", "evaluation: {crops: ten}"));
    fx.run(&[]);
    let cache = fx.cache_dir();
    let host = fx.model_of("naive/seed0/task2/train");
    let dev = Cpu::default();
    let model = DeviceModel::from_host(&dev, &host);
    let split = decode(&fx.output_in(&cache, "split", "split.safetensors")).unwrap();
    let eval: serde_json::Value =
        serde_json::from_slice(&fx.output_in(&cache, "naive/seed0/task2/evaluate", "eval.json"))
            .unwrap();
    // Corners, centre (offset 1), each also mirrored: (top, left, mirrored).
    let windows: Vec<(usize, usize, bool)> = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
        .iter()
        .flat_map(|&(t, l)| [(t, l, false), (t, 2 - l, true)])
        .collect();
    let mut differs_from_centre = false;
    for task in 0..2 {
        let (x, y) = match (
            &split[&format!("task{task}.test.x")],
            &split[&format!("task{task}.test.y")],
        ) {
            (HostTensor::U8 { data: x, .. }, HostTensor::U8 { data: y, .. }) => (x, y),
            _ => panic!("unexpected split tensors"),
        };
        let mut correct = 0;
        for (img, &label) in x.chunks_exact(64).zip(y) {
            let mut mean = [0f64; 2];
            for &(top, left, mirrored) in &windows {
                let crop: Vec<u8> = (0..36)
                    .map(|k| {
                        let (r, c) = (k / 6, k % 6);
                        let c = if mirrored { 5 - c } else { c };
                        img[(top + r) * 8 + left + c]
                    })
                    .collect();
                let z = model.logits(&model.input(&crop), task, None).as_vec();
                let m = z[0].max(z[1]) as f64;
                let e = [(z[0] as f64 - m).exp(), (z[1] as f64 - m).exp()];
                for k in 0..2 {
                    mean[k] += e[k] / (e[0] + e[1]) / 10.0;
                }
            }
            let predicted = usize::from(mean[1] > mean[0]);
            correct += usize::from(predicted == label as usize);
            let centre: Vec<u8> = (0..36).map(|k| img[(1 + k / 6) * 8 + 1 + k % 6]).collect();
            let z = model.logits(&model.input(&centre), task, None).as_vec();
            differs_from_centre |= usize::from(z[1] > z[0]) != predicted;
        }
        let want = correct as f64 / y.len() as f64;
        assert_eq!(
            eval["accuracy"][task].as_f64(),
            Some(want),
            "task {task}: {eval}"
        );
    }
    // Not required for correctness, but shows the test can tell the protocols apart.
    eprintln!("ten-crop prediction differs from the centre crop somewhere: {differs_from_centre}");
}

/// `status --json` keys by stage id, after `set`.
fn keys(fx: &Fixture, set: &[&str]) -> std::collections::BTreeMap<String, String> {
    let p = fx.pipeline();
    let mut args = vec!["status", p.to_str().unwrap(), "--json"];
    for s in set {
        args.extend(["--set", s]);
    }
    let o = fx.cli(&args);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| {
            Some((
                s["id"].as_str()?.to_string(),
                s["key"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn every_protocol_choice_is_part_of_the_keys() {
    let fx = Fixture::with_pipeline(&CNN.replace("TAIL", ""));
    fx.run(&[]);
    let base = keys(&fx, &[]);
    let train = "naive/seed0/task1/train";
    let eval = "naive/seed0/task1/evaluate";
    assert!(
        base.contains_key(train) && base.contains_key(eval),
        "{base:?}"
    );
    for (set, changed) in [
        ("training.augment.hflip=false", train),
        ("training.sampling={kind: balanced}", train),
        ("training.sampling={kind: empirical}", train),
        ("evaluation={crops: ten}", eval),
    ] {
        let k = keys(&fx, &[set]);
        assert_ne!(
            k.get(changed),
            base.get(changed),
            "{set} kept the key of {changed}"
        );
        assert_eq!(k.get("split"), base.get("split"), "{set} changed the split");
    }
    // The defaults written out are the same stages.
    let k = keys(
        &fx,
        &[
            "evaluation={crops: center}",
            "training.sampling={kind: none}",
        ],
    );
    assert_eq!(k, base);
}

/// A CIFAR pipeline that needs no data (`dag`) with `training` lines and top-level `TAIL`.
const CIFAR: &str = r#"dataset: {format: cifar10, root: /nonexistent/cifar}
tasks: [[0, 1], [2, 3]]
model: {kind: small_cnn, input_shape: [3, INPUT, INPUT]}
training:
  optimizer: adam
  lr: 0.001
  batch_size: 8
  epochs: 1
EXTRA
TAIL
seeds: [0]
strategies: {naive: {freeze: none}}
"#;

#[test]
fn protocol_mistakes_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "32",
            "  augment: {crop: {size: 24}, jitter: 0.1}",
            "",
            "bad.yaml:9:31: training.augment.jitter: unknown field `jitter`, expected `crop` or `hflip`",
        ),
        (
            "32",
            "  sampling: {kind: stratified}",
            "",
            "training.sampling.kind: unknown variant `stratified`, expected one of `none`, `empirical`, `balanced`",
        ),
        (
            "32",
            "",
            "evaluation: {crops: five}",
            "evaluation.crops: unknown variant `five`, expected `center` or `ten`",
        ),
        (
            "32",
            "  augment: {crop: {size: 32, padding: 4}}",
            "",
            "bad.yaml:9:19: training.augment.crop: give either `size`",
        ),
        (
            "28",
            "  augment: {crop: {size: 24}}",
            "",
            "bad.yaml:9:26: training.augment.crop.size: crops must be the model's input size 28×28 (model.input_size / input_shape), found 24",
        ),
        (
            "28",
            "",
            "",
            "training: images are stored at 32×32 but the model takes 28×28: train on random crops with `augment: {crop: {size: 28}}`",
        ),
        (
            "28",
            "  augment: {crop: {padding: 4}}",
            "",
            "bad.yaml:9:29: training.augment.crop.padding: padded crops keep the stored size 32×32, but the model takes 28×28; use `size: 28`",
        ),
        (
            "32",
            "  augment: {crop: {size: 32}}",
            "",
            "training.augment.crop.size: images are stored at 32×32 already, so a 32×32 crop is the whole image",
        ),
        (
            "40",
            "",
            "",
            "bad.yaml:1:10: dataset: images are stored at 32×32, smaller than the model's 40×40 input",
        ),
        (
            "32",
            "  augment: {crop: {padding: 0}}",
            "",
            "bad.yaml:9:29: training.augment.crop.padding: expected a padding >= 1 pixel, found 0",
        ),
    ];
    for (input, extra, tail, want) in cases {
        let yaml = CIFAR
            .replace("INPUT", input)
            .replace("EXTRA", extra)
            .replace("TAIL", tail);
        let p = dir.path().join("bad.yaml");
        std::fs::write(&p, &yaml).unwrap();
        let o = common::cfpipe()
            .args(["dag", p.to_str().unwrap(), "--cache"])
            .arg(dir.path().join("cache"))
            .output()
            .unwrap();
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{yaml}\n{err}");
        assert!(err.contains(want), "missing `{want}` in:\n{err}\n{yaml}");
    }
    // An MLP takes the whole stored image: crops of a size need a conv model.
    let mlp = MLP
        .replace("EXTRA", "  augment: {crop: {size: 6}}")
        .replace("TAIL", "");
    let fx = Fixture::with_pipeline(&mlp);
    let o = fx.cli(&["dag", fx.pipeline().to_str().unwrap()]);
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("training.augment.crop.size: crops of a size need a convolutional model"),
        "{err}"
    );
}
