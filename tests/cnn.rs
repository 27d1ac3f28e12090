//! Convolutional models through the whole pipeline: a small CNN on the bundled MNIST digits
//! (1×28×28) with naive and RNF strategies, frozen filters that keep their exact bits, pruning
//! as a masked view, torchvision VGG-16 files, LRP conservation through the model's own path,
//! gradients against finite differences, and located spec errors for impossible geometry.

mod common;
use cfpipe::cache::Cache;
use cfpipe::exec::resolve::resolve;
use cfpipe::nn::arch::{self, Arch, Op};
use cfpipe::nn::model::{DeviceModel, ModelParams};
use cfpipe::nn::tensorio::{decode, encode, TensorMapExt};
use cfpipe::nn::torchvision;
use cfpipe::spec::DataCheck;
use common::Fixture;
use dfdx::prelude::*;
use rand::SeedableRng;

const CNN_MODEL: &str = r#"model:
  kind: cnn
  input_shape: [1, 8, 8]
  layers:
    - conv: {out_channels: 4, kernel: 3, padding: 1}
    - max_pool: {kernel: 2}
    - conv: {out_channels: 6, kernel: 3, padding: 1}
    - flatten
    - dense: {units: 8}
  normalize: {mean: [0.2], std: [0.25]}
"#;

/// The fixture pipeline (8×8 quadrant images) with a small CNN instead of the MLP.
fn cnn_fixture() -> Fixture {
    // The CNN learns the quadrant task more slowly than the MLP: more epochs.
    let p = common::PIPELINE
        .replace("model:\n  kind: mlp\n  hidden: [16, 12]\n", CNN_MODEL)
        .replace("epochs: 3", "epochs: 12");
    assert!(p.contains("kind: cnn") && p.contains("epochs: 12"));
    Fixture::with_pipeline(&p)
}

use common::{model_at as model, unit_flags as flags};

#[test]
fn the_cnn_pipeline_runs_on_bundled_mnist_and_reruns_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{repo}/pipelines/cnn_mnist_split.yaml"))
        .unwrap()
        .replace("data/mnist/", &format!("{repo}/data/mnist/"));
    let path = dir.path().join("cnn.yaml");
    std::fs::write(&path, text).unwrap();
    let set: Vec<String> = [
        "seeds=[0]",
        "tasks=[[0, 1], [2, 3]]",
        "training.epochs=1",
        "model.layers.0.conv.out_channels=4",
        "model.layers.2.conv.out_channels=6",
        "model.layers.5.dense.units=16",
        "strategies.rnf.score.reference_size=30",
        "strategies.rnf.prune.step_ratio=0.2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (_, dag) = cfpipe::load(&path, &set, DataCheck::Required).unwrap();
    let cache = Cache::open(dir.path().join("cache")).unwrap();
    let registry = cfpipe::stages::registry();
    let run = || {
        cfpipe::exec::Executor::new(&cache, &registry, cfpipe::exec::ExecOptions::default())
            .run(&dag)
    };
    let first = run();
    assert!(first.failed().is_empty(), "{:?}", first.failed());
    let expect: Vec<String> = [
        "split",
        "naive/seed0/task1/train",
        "naive/seed0/task1/evaluate",
        "naive/seed0/task2/train",
        "naive/seed0/task2/evaluate",
        "rnf/seed0/task1/score",
        "rnf/seed0/task1/prune",
        "rnf/seed0/task1/mask",
        "rnf/seed0/task2/train",
        "rnf/seed0/task2/evaluate",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let ran = first.ran_all_ids();
    for id in &expect {
        assert!(ran.contains(id), "{id} did not run: {ran:?}");
    }
    assert!(!ran.iter().any(|id| id.contains("task3")));
    let again = run();
    assert!(again.ran().is_empty(), "a rerun ran {:?}", again.ran());
    assert!(again.failed().is_empty());
}

#[test]
fn frozen_filters_keep_their_bits_through_adam_and_l2_and_pruning_is_a_view() {
    let f = cnn_fixture();
    f.run(&[]);
    let e = f.entries();
    let before = model(&e("rnf/seed0/task1/train"));
    let after = model(&e("rnf/seed0/task2/train"));
    let mask = e("rnf/seed0/task1/mask");
    assert_eq!(before.trunk.len(), 3, "two conv layers and one dense layer");
    let (mut frozen_conv, mut free_moved) = (0, 0);
    for l in 0..before.trunk.len() {
        let (b, a) = (&before.trunk[l], &after.trunk[l]);
        for (j, frozen) in flags(&mask, l).into_iter().enumerate() {
            let row = j * b.in_dim..(j + 1) * b.in_dim;
            let same = b.weight[row.clone()]
                .iter()
                .zip(&a.weight[row])
                .all(|(x, y)| x.to_bits() == y.to_bits())
                && b.bias[j].to_bits() == a.bias[j].to_bits();
            if frozen {
                assert!(same, "frozen unit {j} of layer {l} moved");
                if l < 2 {
                    frozen_conv += 1;
                }
            } else if !same {
                free_moved += 1;
            }
        }
    }
    assert!(frozen_conv > 0, "the fixture must freeze some filters");
    assert!(free_moved > 0, "free units must train");
    assert_eq!(before.heads[0], after.heads[0]);

    // The prune stage pruned filters on a masked view: the model task 2 starts from is the
    // task-1 model's exact bytes, pruned filters included.
    let t1 = e("rnf/seed0/task1/train");
    assert_eq!(
        e("rnf/seed0/task2/train").manifest().unwrap().inputs["model"],
        t1.content_hash()
    );
    let pruned = flags(&e("rnf/seed0/task1/prune"), 0);
    assert!(pruned.iter().any(|&p| p), "the fixture must prune a filter");
}

/// A tiny conv model: 1×5×5 input, conv(2, k3, pad 1) → max pool 2 → conv(3, k2) → flatten →
/// dense 4, and one head of 3 classes.
fn tiny_arch() -> Arch {
    Arch {
        input: [1, 5, 5],
        layers: vec![
            Op::Conv {
                out_channels: 2,
                kernel: 3,
                stride: 1,
                padding: 1,
            },
            Op::MaxPool {
                kernel: 2,
                stride: 2,
            },
            Op::Conv {
                out_channels: 3,
                kernel: 2,
                stride: 1,
                padding: 0,
            },
            Op::Flatten,
            Op::Dense { units: 4 },
        ],
        normalize: None,
    }
}

fn tiny_model(seed: u64) -> ModelParams {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut p = ModelParams::init_arch(&tiny_arch(), &mut rng);
    p.push_head(3, &mut rng);
    p
}

fn pixels(n: usize) -> Vec<u8> {
    (0..n * 25).map(|i| ((i * 37 + 11) % 251) as u8).collect()
}

#[test]
fn cnn_gradients_match_finite_differences() {
    let dev = Cpu::default();
    let p = tiny_model(3);
    let m = DeviceModel::from_host(&dev, &p);
    let x = m.input(&pixels(3));
    let labels = [0u16, 2, 1];
    let (loss, grads) = m.loss_and_grads(&x, &labels, 0);
    let loss_of = |q: &ModelParams| {
        DeviceModel::from_host(&dev, q)
            .loss_and_grads(&x, &labels, 0)
            .0 as f64
    };
    assert!((loss_of(&p) - loss as f64).abs() < 1e-6);
    let mut checked = 0;
    for (flat, g) in grads {
        let g = g.as_vec();
        let layer = flat / 2;
        for (k, &gk) in g.iter().enumerate() {
            let bump = |d: f32| {
                let mut q = p.clone();
                let l = if layer < q.trunk.len() {
                    &mut q.trunk[layer]
                } else {
                    &mut q.heads[layer - q.trunk.len()]
                };
                let v = if flat % 2 == 0 {
                    &mut l.weight[k]
                } else {
                    &mut l.bias[k]
                };
                *v += d;
                q
            };
            let h = 1e-2f32;
            let fd = (loss_of(&bump(h)) - loss_of(&bump(-h))) / (2.0 * h as f64);
            assert!(
                (fd - gk as f64).abs() < 2e-3 + 0.02 * fd.abs(),
                "param {flat}[{k}]: finite difference {fd} vs gradient {gk}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * 9 + 2 + 3 * 2 * 4 + 3 + 4 * 3 + 4 + 3 * 4 + 3);
}

#[test]
fn conv_gradients_have_the_same_bits_on_one_thread_and_on_three() {
    // A 2-core laptop and a 16-core node must train the same model from one seed: the batch
    // split, and so the weight gradient's summation order, may not follow the thread count.
    let p = tiny_model(5);
    let n = 37;
    let labels: Vec<u16> = (0..n).map(|i| (i % 3) as u16).collect();
    let grads_on = |threads: usize| {
        common::on_threads(threads, || {
            let dev = Cpu::default();
            let m = DeviceModel::from_host(&dev, &p);
            let (loss, grads) = m.loss_and_grads(&m.input(&pixels(n)), &labels, 0);
            let bits: Vec<Vec<u32>> = grads
                .into_iter()
                .map(|(_, g)| g.as_vec().iter().map(|v| v.to_bits()).collect())
                .collect();
            (loss.to_bits(), bits)
        })
    };
    let one = grads_on(1);
    // Two convs, a dense layer and the head: a weight and a bias each.
    assert_eq!(one.1.len(), 2 * 4);
    assert_eq!(one, grads_on(3));
}

#[test]
fn unit_masks_zero_a_filter_without_touching_the_model() {
    let dev = Cpu::default();
    let p = tiny_model(5);
    let m = DeviceModel::from_host(&dev, &p);
    let x = m.input(&pixels(4));
    let before = m.logits(&x, 0, None).as_vec();
    // Pruning every filter of the second conv layer leaves only the biases downstream: every
    // sample then gets the same logits.
    let masks: Vec<_> = [vec![1.0f32, 1.0], vec![0.0; 3], vec![1.0; 4]]
        .into_iter()
        .map(|v| dev.tensor_from_vec(v.clone(), (v.len(),)))
        .collect();
    let pruned = m.logits(&x, 0, Some(&masks)).as_vec();
    assert_ne!(pruned, before);
    assert!(pruned.chunks(3).all(|r| r == &pruned[..3]));
    // Restoring = evaluating without the mask: bit-identical, parameters untouched.
    assert_eq!(m.logits(&x, 0, None).as_vec(), before);
    assert_eq!(m.to_host(), p);
}

#[test]
fn lrp_is_conservative_through_the_models_own_path() {
    let dev = Cpu::default();
    // Seed 9 gives explained logits of both signs and well away from 0.
    let mut p = tiny_model(9);
    for l in p.trunk.iter_mut().chain(p.heads.iter_mut()) {
        l.bias.iter_mut().for_each(|b| *b = 0.0);
    }
    let m = DeviceModel::from_host(&dev, &p);
    let x = m.input(&pixels(4));
    let labels = [0u16, 1, 2, 0];
    let mut rules = cfpipe::xai::lrp::LrpRules::epsilon(1e-9);
    rules.conv = cfpipe::xai::lrp::LrpRule::Zplus;
    let r = cfpipe::xai::lrp::lrp(&m, &x, &labels, 0, &rules);
    assert!(
        r.explained.iter().all(|v| v.abs() > 0.05),
        "{:?}",
        r.explained
    );
    // Rows of a conv layer are (sample, position) × filters: 4 samples × 5×5 positions × 2.
    assert_eq!(r.hidden[0].len(), 4 * 25 * 2);
    assert_eq!(r.hidden[1].len(), 4 * 3);
    // Per sample, every layer's relevance (both conv layers, the dense layer, the input)
    // sums to the explained logit: bias-free ε and z⁺ conserve, max pooling passes it on.
    let layers = r.hidden.iter().chain(std::iter::once(&r.input));
    for (l, h) in layers.enumerate() {
        for (n, chunk) in h.chunks(h.len() / 4).enumerate() {
            let s: f64 = chunk.iter().map(|&v| v as f64).sum();
            let want = r.explained[n] as f64;
            assert!(
                (s - want).abs() < 1e-4 * want.abs().max(1e-2),
                "layer {l}, sample {n}: {s} vs {want}"
            );
        }
    }
}

#[test]
fn gradient_x_input_of_a_bias_free_relu_cnn_sums_to_the_logit_at_every_layer() {
    // Bias-free ReLU + max-pool networks are positively homogeneous above every layer, so by
    // Euler's theorem Σ a·∂f/∂a equals the logit at every layer, the input included.
    let dev = Cpu::default();
    let mut p = tiny_model(9);
    for l in p.trunk.iter_mut().chain(p.heads.iter_mut()) {
        l.bias.iter_mut().for_each(|b| *b = 0.0);
    }
    let m = DeviceModel::from_host(&dev, &p);
    let x = m.input(&pixels(4));
    let r = cfpipe::xai::lrp::gradient_x_input(&m, &x, &[2, 1, 0, 2], 0);
    assert_eq!(r.hidden[0].len(), 4 * 25 * 2);
    for (l, h) in r.hidden.iter().chain(std::iter::once(&r.input)).enumerate() {
        for (n, chunk) in h.chunks(h.len() / 4).enumerate() {
            let s: f64 = chunk.iter().map(|&v| v as f64).sum();
            let want = r.explained[n] as f64;
            assert!(
                (s - want).abs() < 1e-4 * want.abs().max(1e-2),
                "layer {l}, sample {n}: {s} vs {want}"
            );
        }
    }
}

#[test]
fn a_torchvision_vgg16_file_round_trips_and_a_mismatch_lists_every_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let a = arch::vgg16(32, 16, 3);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut p = ModelParams::init_arch(&a, &mut rng);
    p.push_head(10, &mut rng);
    let named = torchvision::vgg16_to_tensors(&p);
    assert!(named.contains_key("features.28.weight"));
    assert!(named.contains_key("classifier.3.bias"));
    assert_eq!(named["features.0.weight"].shape(), &[4, 3, 3, 3]);
    assert_eq!(named.len(), 32);
    let file = dir.path().join("vgg.safetensors");
    std::fs::write(&file, encode(&named)).unwrap();
    let back =
        torchvision::load_vgg16(&file, &a, Some(10), torchvision::PretrainedHead::Task1).unwrap();
    assert_eq!(back, p);

    let mut bad = named.clone();
    bad.remove("features.7.bias");
    let w = bad.remove("classifier.0.weight").unwrap();
    bad.insert(
        "classifier.0.weight".into(),
        cfpipe::nn::tensorio::HostTensor::f32(
            vec![1, w.shape().iter().product()],
            w.as_f32().unwrap().to_vec(),
        ),
    );
    bad.insert(
        "features.30.weight".into(),
        cfpipe::nn::tensorio::HostTensor::f32(vec![1], vec![0.0]),
    );
    std::fs::write(&file, encode(&bad)).unwrap();
    let err = torchvision::load_vgg16(&file, &a, Some(10), torchvision::PretrainedHead::Task1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 tensors disagree"), "{err}");
    assert!(
        err.contains("features.7.bias: found nothing (missing), expected [8]"),
        "{err}"
    );
    assert!(
        err.contains("classifier.0.weight: found [1, 1024], expected [32, 32]"),
        "{err}"
    );
    assert!(
        err.contains("features.30.weight: found [1], expected nothing"),
        "{err}"
    );
}

#[test]
fn impossible_geometry_is_a_located_spec_error() {
    let broken = CNN_MODEL.replace(
        "    - conv: {out_channels: 6, kernel: 3, padding: 1}\n",
        "    - max_pool: {kernel: 2}\n    - max_pool: {kernel: 2}\n    - max_pool: {kernel: 2}\n",
    );
    let p = common::PIPELINE.replace("model:\n  kind: mlp\n  hidden: [16, 12]\n", &broken);
    let f = Fixture::with_pipeline(&p);
    let o = f.cli(&["dag", f.pipeline().to_str().unwrap()]);
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("pipeline.yaml:"), "{err}");
    assert!(err.contains("model.layers.4"), "{err}");
    assert!(err.contains("larger than its 1×1 input"), "{err}");
}

#[test]
fn a_model_input_that_does_not_fit_the_data_is_a_spec_error_before_any_work() {
    let p = common::PIPELINE.replace(
        "model:\n  kind: mlp\n  hidden: [16, 12]\n",
        &CNN_MODEL.replace("[1, 8, 8]", "[3, 8, 8]").replace(
            "mean: [0.2], std: [0.25]",
            "mean: [0.2, 0.2, 0.2], std: [0.25, 0.25, 0.25]",
        ),
    );
    let f = Fixture::with_pipeline(&p);
    let o = f.cli(&["run", f.pipeline().to_str().unwrap(), "--quiet"]);
    let err = common::stderr(&o);
    // Found when the data is checked, not after the split was cached (issue 13).
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("pipeline.yaml:11:16: model.input_shape"),
        "{err}"
    );
    assert!(err.contains("images of shape [1, 8, 8]"), "{err}");
    assert_eq!(common::published_entries(&f.cache_dir().join("entries")), 0);
}

#[test]
fn every_supported_strategy_runs_on_a_conv_model() {
    let extra = r#"  magnitude:
    freeze: until_threshold
    score: {method: magnitude, aggregate: {normalize: layer_max}}
    prune: {threshold: 0.3, step_ratio: 0.1, search: bisect}
  fisher:
    freeze: until_threshold
    score: {method: fisher, reference_size: 20}
    prune: {threshold: 0.3, step_ratio: 0.1}
  mas:
    freeze: top_share
    score: {method: mas, reference_size: 10}
    share: 0.5
  si:
    freeze: until_threshold
    score: {method: si}
    prune: {threshold: 0.3, step_ratio: 0.1}
  random:
    freeze: random
    like: rnf
  gxi:
    freeze: until_threshold
    score: {method: gradient_x_input, reference_size: 20, aggregate: {abs: after_sum}}
    prune: {threshold: 0.3, step_ratio: 0.1}
  rnf_isolated:
    freeze: until_threshold
    isolate: true
    score: {method: lrp, reference_size: 20, aggregate: {abs: before_sum}}
    prune: {threshold: 0.3, step_ratio: 0.1}
  ewc:
    freeze: none
    ewc:
      lambda: 10.0
      mode: separate
      importance: {method: fisher, reference_size: 20}
  sig:
    freeze: top_share
    score: {method: sig, reference_size: 10}
    share: 0.5
  mas_out:
    freeze: until_threshold
    score: {method: mas, reference_size: 10, unit_rule: outgoing}
    prune: {threshold: 0.3, step_ratio: 0.1}
"#;
    let p = common::PIPELINE
        .replace("model:\n  kind: mlp\n  hidden: [16, 12]\n", CNN_MODEL)
        .replace("epochs: 3", "epochs: 6");
    let f = Fixture::with_pipeline(&format!("{p}{extra}"));
    let report = f.run(&[]);
    let ran = report.ran_all_ids();
    for s in [
        "magnitude",
        "fisher",
        "mas",
        "si",
        "random",
        "rnf_isolated",
        "ewc",
        "sig",
        "mas_out",
    ] {
        assert!(
            ran.iter()
                .any(|id| id.starts_with(&format!("{s}/")) && id.ends_with("task2/evaluate")),
            "{s} did not finish: {ran:?}"
        );
    }
    assert!(ran.contains("ewc/seed0/task1/consolidate"));
    // Scores come per filter and per neuron: 4 and 6 filters, 8 neurons.
    let e = f.entries();
    for s in [
        "magnitude",
        "fisher",
        "si",
        "gxi",
        "rnf_isolated",
        "sig",
        "mas_out",
    ] {
        let mut m = decode(
            &std::fs::read(e(&format!("{s}/seed0/task1/score")).output_path("units.safetensors"))
                .unwrap(),
        )
        .unwrap();
        let sizes: Vec<usize> = (0..3)
            .map(|l| m.take_f32(&format!("layer{l}")).unwrap().1.len())
            .collect();
        assert_eq!(sizes, [4, 6, 8], "{s}");
    }
}

#[test]
fn a_pretrained_vgg16_file_starts_task_one_and_a_bad_one_fails_it_with_the_listing() {
    let dir = tempfile::tempdir().unwrap();
    // 32×32 one-channel images of four classes (a bright quadrant each).
    let n = 40;
    let mut px = Vec::new();
    let mut lb = Vec::new();
    for i in 0..n {
        let c = i % 4;
        for r in 0..32 {
            for col in 0..32 {
                let q = (r / 16) * 2 + col / 16;
                px.push(if q == c {
                    200
                } else {
                    ((i * 7 + r * 3 + col) % 50) as u8
                });
            }
        }
        lb.push(c as u8);
    }
    let d = dir.path();
    cfpipe::data::idx::write_idx(&d.join("img.gz"), &[n, 32, 32], &px, true).unwrap();
    cfpipe::data::idx::write_idx(&d.join("lbl.gz"), &[n], &lb, true).unwrap();
    let a = arch::vgg16(32, 16, 1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let mut p = ModelParams::init_arch(&a, &mut rng);
    p.push_head(2, &mut rng);
    let weights = d.join("vgg.safetensors");
    std::fs::write(&weights, encode(&torchvision::vgg16_to_tensors(&p))).unwrap();
    let yaml = format!(
        r#"dataset: {{format: idx, images: {img}, labels: {lbl}, test_fraction: 0.25}}
tasks: [[0, 1], [2, 3]]
model: {{kind: vgg16, input_size: 32, input_channels: 1, width_divisor: 16, pretrained: {w}}}
training: {{optimizer: sgd, lr: 1.0e-12, batch_size: 8, epochs: 1}}
seeds: [0]
strategies: {{naive: {{freeze: none}}}}
"#,
        img = d.join("img.gz").display(),
        lbl = d.join("lbl.gz").display(),
        w = weights.display()
    );
    let pipeline = d.join("p.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    let run = |args: &[&str]| {
        common::cfpipe()
            .args(args)
            .arg(pipeline.to_str().unwrap())
            .arg("--cache")
            .arg(d.join("cache"))
            .output()
            .unwrap()
    };
    let o = run(&["run", "--quiet"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let (_, dag) = cfpipe::load(&pipeline, &[], DataCheck::Required).unwrap();
    let cache = Cache::open(d.join("cache")).unwrap();
    let res = resolve(&dag, &cache);
    let n1 = dag.find("naive/seed0/task1/train").unwrap();
    let e1 = res
        .iter()
        .find(|r| r.node == n1)
        .unwrap()
        .entry
        .clone()
        .unwrap();
    let trained = model(&e1);
    // A learning rate of 1e-12 keeps the pretrained weights (a fresh init would differ).
    for (t, q) in trained.trunk.iter().zip(&p.trunk) {
        assert!(t
            .weight
            .iter()
            .zip(&q.weight)
            .all(|(a, b)| (a - b).abs() < 1e-6));
    }
    assert_eq!(trained.heads.len(), 1);

    // The same pipeline with a width-8 file: one stage fails, naming every tensor.
    let wrong = ModelParams::init_arch(&arch::vgg16(32, 8, 1), &mut rng);
    let mut wrong = wrong;
    wrong.push_head(2, &mut rng);
    std::fs::write(&weights, encode(&torchvision::vgg16_to_tensors(&wrong))).unwrap();
    let o = run(&["run", "--quiet"]);
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("task1/train"), "{err}");
    // Every tensor but the head's bias (2 classes either way).
    assert!(err.contains("31 tensors disagree"), "{err}");
    assert!(
        err.contains("features.0.weight: found [8, 1, 3, 3], expected [4, 1, 3, 3]"),
        "{err}"
    );
}

#[test]
fn conv_model_mistakes_are_located_spec_errors() {
    let cases = [
        (
            CNN_MODEL.replace("- flatten", "- flaten"),
            "model.layers.3: unknown layer `flaten`",
        ),
        (
            CNN_MODEL.replace("  kind: cnn\n", "  kind: cnn\n  hidden: [4]\n"),
            "model.hidden: not used by `kind: cnn`",
        ),
        (
            CNN_MODEL.replace("std: [0.25]", "std: [0.25, 0.5]"),
            "model.normalize.std: expected one value per input channel (1), found 2",
        ),
        (
            CNN_MODEL.replace(
                "- dense: {units: 8}",
                "- dense: {units: 8}\n    - conv: {out_channels: 2, kernel: 1}",
            ),
            "model.layers.5: conv needs image maps, but it follows `flatten`",
        ),
        (
            "model: {kind: vgg16, input_size: 64}\n".to_string(),
            "model.input_size: expected 224 (ImageNet) or 32 (CIFAR), found 64",
        ),
        (
            CNN_MODEL.replace("    - flatten\n", ""),
            "model.layers.3: dense needs flat features, but receives 6×4×4 maps",
        ),
        (
            "model: {kind: vgg16, input_size: 32, pretrained_head: drop}\n".to_string(),
            "model.pretrained_head: only with `model.pretrained`",
        ),
        (
            "model: {kind: vgg16, input_size: 32, pretrained: w.safetensors, pretrained_head: keep}\n"
                .to_string(),
            "unknown variant `keep`, expected `task1` or `drop`",
        ),
        (
            "model: {kind: mlp, hidden: [4], pretrained_head: drop}\n".to_string(),
            "model.pretrained_head: not used by `kind: mlp`",
        ),
    ];
    for (model, expect) in cases {
        let p = common::PIPELINE.replace("model:\n  kind: mlp\n  hidden: [16, 12]\n", &model);
        Fixture::with_pipeline(&p).assert_rejected(&[], expect);
    }
}

#[test]
fn normalisation_is_per_channel_on_byte_over_255() {
    let a = Arch {
        input: [2, 1, 2],
        layers: vec![Op::Flatten],
        normalize: Some(arch::Normalization {
            mean: vec![0.5, 0.0],
            std: vec![0.25, 2.0],
        }),
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut p = ModelParams::init_arch(&a, &mut rng);
    p.push_head(2, &mut rng);
    let m = DeviceModel::from_host(&Cpu::default(), &p);
    // Two samples, channel-major: [c0 c0 c1 c1].
    let x = m.input(&[255, 0, 255, 0, 0, 255, 0, 255]).as_vec();
    assert_eq!(x, [2.0, -2.0, 0.5, 0.0, -2.0, 2.0, 0.0, 0.5]);
}

#[test]
fn sig_and_outgoing_units_follow_the_conv_windows() {
    use cfpipe::xai::importance::{self, UnitRule};
    let p = tiny_model(8);
    let m = DeviceModel::from_host(&Cpu::default(), &p);
    let n = 6;
    let x = pixels(n);
    let y = vec![0u16; n];
    let s = importance::sig(
        &m,
        &importance::Batch {
            x: &x,
            y: &y,
            dim: 25,
        },
        0,
    );
    // Layer 0 is a 3×3 conv with padding 1 on 5×5 one-channel images: the centre tap reads
    // every pixel once, the top-left tap every pixel but the last row and column.
    let mean = |keep: &dyn Fn(usize, usize) -> bool| {
        let mut acc = 0f64;
        for img in x.chunks(25) {
            for r in 0..5 {
                for c in 0..5 {
                    if keep(r, c) {
                        acc += img[r * 5 + c] as f64 / 255.0;
                    }
                }
            }
        }
        acc / (n * 25) as f64
    };
    let w0 = &p.trunk[0].weight;
    let centre = (w0[4] as f64).abs() * mean(&|_, _| true);
    let corner = (w0[0] as f64).abs() * mean(&|r, c| r < 4 && c < 4);
    assert!(
        (s.layers[0].0[4] - centre).abs() < 1e-6,
        "{} vs {centre}",
        s.layers[0].0[4]
    );
    assert!(
        (s.layers[0].0[0] - corner).abs() < 1e-6,
        "{} vs {corner}",
        s.layers[0].0[0]
    );
    assert!(s.layers[0].0[0] < s.layers[0].0[4] * (w0[0] / w0[4]).abs() as f64);
    // Outgoing: filter j of layer 0 is read by layer 1's [:, j, :, :] (a 2×2 kernel).
    let out = importance::to_units(&s, UnitRule::Outgoing);
    assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), [2, 3, 4]);
    let (o1, i1) = s.shapes[1];
    assert_eq!((o1, i1), (3, 8));
    for (j, got) in out[0].iter().enumerate() {
        let want: f64 = (0..o1)
            .flat_map(|k| (0..4).map(move |t| k * i1 + j * 4 + t))
            .map(|ix| s.layers[1].0[ix])
            .sum();
        assert!((got - want).abs() < 1e-12);
    }
    // Layer 1's maps are 1×1, so the dense layer reads each filter through one column.
    let (o2, i2) = s.shapes[2];
    assert_eq!(i2, 3);
    for (j, got) in out[1].iter().enumerate() {
        let want: f64 = (0..o2).map(|k| s.layers[2].0[k * i2 + j]).sum();
        assert!((got - want).abs() < 1e-12);
    }
    // Every weight of the next layer is counted exactly once.
    for (l, units) in out.iter().enumerate() {
        let total: f64 = s.layers[l + 1].0.iter().sum();
        let units: f64 = units.iter().sum();
        assert!((total - units).abs() < 1e-9 * total.max(1.0), "layer {l}");
    }
}

#[test]
fn batches_shrink_to_the_activation_memory_of_big_models() {
    // VGG-16 at 224: the largest unfolded input is conv 64→64 at 224×224 (576 values per
    // position); at 32×32 the same layer has 1024 positions.
    for (size, unfolded) in [(224, 576 * 224 * 224), (32, 576 * 32 * 32)] {
        let a = arch::vgg16(size, 1, 3);
        let feats: usize = a.features().unwrap().iter().map(|f| f.len()).sum();
        assert_eq!(a.floats_per_sample() - feats, unfolded, "vgg16 at {size}");
    }
    // The tiny model fits the cap; a batch of its samples within 2 GiB is far above 1000.
    let m = DeviceModel::from_host(&Cpu::default(), &tiny_model(1));
    assert_eq!(m.batch_within(1000, 1, false), 1000);
    assert_eq!(m.batch_within(1000, 10, true), 1000);
    // A 224×224 VGG-16 (width 1/8 keeps the test's memory small; its maps are as large per
    // channel) is held to the batch its activations allow.
    let big = arch::vgg16(224, 8, 3);
    let per = big.floats_per_sample();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let mut p = ModelParams::init_arch(&big, &mut rng);
    p.push_head(2, &mut rng);
    let m = DeviceModel::from_host(&Cpu::default(), &p);
    let plain = m.batch_within(1000, 1, false);
    assert_eq!(plain, (2usize << 30) / (per * 4));
    assert!(plain < 1000);
    assert_eq!(
        m.batch_within(1000, 10, true),
        (2usize << 30) / (per * 4 * 30)
    );
    assert_eq!(m.batch_within(3, 1, false), 3);
}
