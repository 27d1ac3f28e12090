//! The `saliency` score method (`xai::saliency`): FullGrad's completeness before any
//! post-processing, activation maximisation that raises the filter's activation, the MSE and
//! Pearson rankings and the class aggregation on hand-built maps, bit-identical scores for one
//! seed, and the typed errors on a model without conv layers (library and pipeline).

mod common;

use cfpipe::nn::arch;
use cfpipe::nn::model::{DeviceModel, ModelParams};
use cfpipe::nn::seq::Layer;
use cfpipe::stages::visualize;
use cfpipe::xai::saliency::{
    filter_score, fullgrad_parts, saliency_scores, saliency_scores_with, similarity,
    upsample_bilinear, visualize_filters, visualize_layer, ClassAggregate, DensePolicy,
    MapNormalize, SaliencyError, SaliencyOptions, Similarity, Visualize,
};
use common::{stderr, Fixture, PIPELINE};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn randn(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.gen::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

/// conv 2→3 (pad 1) → ReLU → max pool 2 → conv 3→4 → leaky ReLU → avg pool 2 → flatten →
/// dense 4→5 → ReLU → dense 5→3: every kind of piecewise-linear layer, all with biases.
fn tiny_net(dev: &Cpu, rng: &mut ChaCha8Rng) -> Vec<Layer<Cpu>> {
    let mut conv = |o: usize, c: usize, padding: usize| Layer::Conv {
        weight: dev.tensor_from_vec(randn(rng, o * c * 9, 0.5), (o, c, 3, 3)),
        bias: dev.tensor_from_vec(randn(rng, o, 0.3), (o,)),
        stride: 1,
        padding,
    };
    let c1 = conv(3, 2, 1);
    let c2 = conv(4, 3, 0);
    let mut dense = |o: usize, i: usize| Layer::Dense {
        weight: dev.tensor_from_vec(randn(rng, o * i, 0.5), (o, i)),
        bias: dev.tensor_from_vec(randn(rng, o, 0.3), (o,)),
    };
    let d1 = dense(5, 4);
    let d2 = dense(3, 5);
    vec![
        c1,
        Layer::Relu,
        Layer::MaxPool {
            kernel: 2,
            stride: 2,
        },
        c2,
        Layer::LeakyRelu(0.1),
        Layer::AvgPool {
            kernel: 2,
            stride: 2,
        },
        Layer::Flatten,
        d1,
        Layer::Relu,
        d2,
    ]
}

#[test]
fn fullgrad_parts_sum_to_the_explained_logit() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let layers = tiny_net(&dev, &mut rng);
    let (n, c, h, w) = (3, 2, 8, 8);
    let x = dev.tensor_from_vec(randn(&mut rng, n * c * h * w, 1.0), (n, c, h, w));
    let labels = [0u16, 2, 1];
    let p = fullgrad_parts(&layers, x, &labels);
    assert_eq!(p.conv.len(), 2);
    assert_eq!(
        p.dense.len(),
        2,
        "the head's bias part is the last dense part"
    );
    assert_eq!(p.conv[0].0, (3, 8, 8));
    assert_eq!(p.conv[1].0, (4, 2, 2));
    let per_sample = |v: &[f32], i: usize| -> f64 {
        let len = v.len() / n;
        v[i * len..(i + 1) * len].iter().map(|&a| a as f64).sum()
    };
    for (i, &f) in p.explained.iter().enumerate() {
        let input = per_sample(&p.input, i);
        let bias: f64 = p.conv.iter().map(|(_, v)| per_sample(v, i)).sum::<f64>()
            + p.dense.iter().map(|(_, v)| per_sample(v, i)).sum::<f64>();
        let total = input + bias;
        assert!(
            (total - f as f64).abs() < 1e-4 * (1.0 + f.abs() as f64),
            "sample {i}: input {input} + biases {bias} = {total}, logit {f}"
        );
        // The bias parts matter: the input part alone is not complete.
        assert!(bias.abs() > 1e-3, "sample {i}: bias parts vanish ({bias})");
    }
}

#[test]
fn activation_maximisation_raises_every_live_filter() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let layers = tiny_net(&dev, &mut rng);
    let v = Visualize {
        steps: 15,
        lr: 0.05,
        init_scale: 0.1,
    };
    for conv_at in [0, 3] {
        let vis = visualize_layer(&dev, &layers, conv_at, [2, 8, 8], &v, 64, &mut rng);
        assert_eq!(vis.images.len(), vis.after.len() * 2 * 64);
        for (k, (b, a)) in vis.before.iter().zip(&vis.after).enumerate() {
            assert!(
                a > b,
                "layer at {conv_at}, filter {k}: activation {b} -> {a} did not rise"
            );
        }
    }
    // Zero steps leave the noise as it was.
    let none = Visualize { steps: 0, ..v };
    let vis = visualize_layer(&dev, &layers, 0, [2, 8, 8], &none, 64, &mut rng);
    assert_eq!(vis.before, vis.after);
    // Filters in chunks of one image (as a big model's memory bound makes them) ascend the
    // same way as all at once: each image feeds only its own filter's objective.
    let at = |chunk: usize| {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        visualize_layer(&dev, &layers, 3, [2, 8, 8], &v, chunk, &mut rng)
    };
    let (whole, single) = (at(64), at(1));
    assert_eq!(whole.images.len(), single.images.len());
    for (a, b) in whole.images.iter().zip(&single.images) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
    }
}

/// An 8×8 map with a 4×4 block of `value` at `(r, c)`.
fn blob(r: usize, c: usize, value: f32) -> Vec<f32> {
    let mut m = vec![0f32; 64];
    for y in r..r + 4 {
        for x in c..c + 4 {
            m[y * 8 + x] = value;
        }
    }
    m
}

#[test]
fn mse_and_pearson_rank_hand_built_maps() {
    let class = vec![Some(blob(0, 0, 1.0))];
    let same = blob(0, 0, 1.0);
    let half = blob(0, 0, 0.5);
    let shifted = blob(2, 2, 1.0);
    let opposite = blob(4, 4, 1.0);
    let score = |v: &[f32], k| filter_score(v, &class, k, ClassAggregate::Mean);
    // MSE: identical > dimmer copy > partly overlapping > disjoint.
    assert_eq!(score(&same, Similarity::Mse), 0.0);
    assert_eq!(score(&half, Similarity::Mse), -(16.0 * 0.25) / 64.0);
    assert!(score(&half, Similarity::Mse) > score(&shifted, Similarity::Mse));
    assert!(score(&shifted, Similarity::Mse) > score(&opposite, Similarity::Mse));
    // Pearson ignores scale: a dimmer copy is perfectly correlated.
    assert!((score(&half, Similarity::Pearson) - 1.0).abs() < 1e-9);
    assert!(score(&shifted, Similarity::Pearson) > score(&opposite, Similarity::Pearson));
    assert!(score(&opposite, Similarity::Pearson) < 0.0);
    assert_eq!(similarity(&vec![0.3; 64], &same, Similarity::Pearson), 0.0);
    // Two classes (top left, bottom right): `mean` prefers a filter half-matching both,
    // `max` one matching one class exactly.
    let classes = vec![Some(blob(0, 0, 1.0)), None, Some(blob(4, 4, 1.0))];
    let mut both = blob(0, 0, 0.5);
    both.iter_mut()
        .zip(blob(4, 4, 0.5))
        .for_each(|(a, b)| *a += b);
    let agg = |v: &[f32], a| filter_score(v, &classes, Similarity::Mse, a);
    assert!(agg(&both, ClassAggregate::Mean) > agg(&same, ClassAggregate::Mean));
    assert!(agg(&same, ClassAggregate::Max) > agg(&both, ClassAggregate::Max));
    assert_eq!(agg(&same, ClassAggregate::Mean), -0.25);
}

#[test]
fn bilinear_upsampling_aligns_corners() {
    let up = upsample_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, 3, 3);
    assert_eq!(up, vec![0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0]);
    assert_eq!(upsample_bilinear(&[5.0], 1, 1, 2, 2), vec![5.0; 4]);
}

fn options(similarity: Similarity, dense: DensePolicy) -> SaliencyOptions {
    SaliencyOptions {
        similarity,
        class_aggregate: ClassAggregate::Mean,
        dense,
        fullgrad_normalize: MapNormalize::PerLayer,
        visualize: Visualize {
            steps: 3,
            lr: 0.1,
            init_scale: 0.1,
        },
    }
}

fn small_model(rng: &mut ChaCha8Rng) -> ModelParams {
    let a = arch::small_cnn([3, 8, 8]);
    let mut p = ModelParams::init_arch(&a, rng);
    p.push_head(3, rng);
    p
}

#[test]
fn scores_are_deterministic_per_seed_and_cover_every_unit() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let host = small_model(&mut rng);
    let model = DeviceModel::from_host(&dev, &host);
    let pixels: Vec<u8> = (0..10 * 192).map(|_| rng.gen()).collect();
    let labels: Vec<u16> = (0..10).map(|i| (i % 3) as u16).collect();
    let run = |seed: u64, o: &SaliencyOptions| {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        saliency_scores(&model, &pixels, &labels, 0, o, 4, &mut r, || {
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap()
    };
    let o = options(Similarity::Mse, DensePolicy::Free);
    let a = run(1, &o);
    let b = run(1, &o);
    let bits = |s: &[Vec<f64>]| -> Vec<Vec<u64>> {
        s.iter()
            .map(|l| l.iter().map(|v| v.to_bits()).collect())
            .collect()
    };
    assert_eq!(bits(&a.scores), bits(&b.scores));
    assert_eq!(
        a.scores.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![16, 32, 64]
    );
    // Conv filters get −MSE in [−1, 0]; `dense: free` leaves the dense layer unfreezable.
    for l in &a.scores[..2] {
        assert!(l.iter().all(|&s| (-1.0..=0.0).contains(&s)), "{l:?}");
        assert!(l.iter().any(|&s| s != l[0]), "all filters tie: {l:?}");
    }
    assert!(a.scores[2].iter().all(|&s| s == f64::NEG_INFINITY));
    assert_eq!(a.maps["class_maps"].shape(), &[3, 8, 8]);
    assert_eq!(a.maps["visualizations.1"].shape(), &[32, 8, 8]);
    // Another seed draws other noise images, hence other visualisations.
    assert_ne!(bits(&run(2, &o).scores), bits(&a.scores));
    // `dense: fullgrad` scores dense units by their bias share, ≥ 0 and not all 0; Pearson
    // ranks filters differently from MSE.
    let f = run(1, &options(Similarity::Pearson, DensePolicy::Fullgrad));
    assert!(f.scores[2].iter().all(|&s| s >= 0.0));
    assert!(f.scores[2].iter().any(|&s| s > 0.0));
    assert_ne!(bits(&f.scores[..2]), bits(&a.scores[..2]));
}

#[test]
fn scores_from_stored_visualisations_equal_inline_ones_bit_for_bit() {
    // The pipeline visualises in a `visualize` stage and scores from its artifact; that must
    // give exactly what scoring with inline visualisation gives, for MSE and Pearson alike.
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let host = small_model(&mut rng);
    let model = DeviceModel::from_host(&dev, &host);
    let pixels: Vec<u8> = (0..9 * 192).map(|_| rng.gen()).collect();
    let labels: Vec<u16> = (0..9).map(|i| (i % 3) as u16).collect();
    let ok = || Ok::<(), ()>(());
    let o = options(Similarity::Mse, DensePolicy::Free);
    let vis = visualize_filters(
        &model,
        0,
        &o.visualize,
        &mut ChaCha8Rng::seed_from_u64(3),
        ok,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        vis.keys().copied().collect::<Vec<_>>(),
        vec![0, 1],
        "conv layers only"
    );
    let stored = visualize::decode(&visualize::encode(&vis, [3, 8, 8])).unwrap();
    assert_eq!(stored, vis);
    let tensors = cfpipe::nn::tensorio::decode(&visualize::encode(&vis, [3, 8, 8])).unwrap();
    assert_eq!(tensors["images.1"].shape(), &[32, 3, 8, 8]);
    assert_eq!(tensors["before.0"].shape(), &[16]);
    let bits = |s: &[Vec<f64>]| -> Vec<Vec<u64>> {
        s.iter()
            .map(|l| l.iter().map(|v| v.to_bits()).collect())
            .collect()
    };
    for sim in [Similarity::Mse, Similarity::Pearson] {
        let o = options(sim, DensePolicy::Fullgrad);
        let inline = saliency_scores(
            &model,
            &pixels,
            &labels,
            0,
            &o,
            4,
            &mut ChaCha8Rng::seed_from_u64(3),
            ok,
        )
        .unwrap()
        .unwrap();
        let staged = saliency_scores_with(&model, &pixels, &labels, 0, &o, 4, &stored, ok)
            .unwrap()
            .unwrap();
        assert_eq!(bits(&inline.scores), bits(&staged.scores), "{sim:?}");
        assert_eq!(inline.maps, staged.maps, "{sim:?}");
        assert_eq!(inline.activation_gain, staged.activation_gain);
        assert_eq!(inline.explained.to_bits(), staged.explained.to_bits());
    }
    // Visualisations of another model's shape are refused, not misread.
    let mut short = stored.clone();
    short.get_mut(&1).unwrap().after.pop();
    let e = saliency_scores_with(&model, &pixels, &labels, 0, &o, 4, &short, ok)
        .unwrap()
        .err()
        .expect("a filter short");
    assert!(matches!(e, SaliencyError::VisualizationMismatch(_)), "{e}");
    let mut missing = stored;
    missing.remove(&0);
    let e = saliency_scores_with(&model, &pixels, &labels, 0, &o, 4, &missing, ok)
        .unwrap()
        .err()
        .expect("a layer missing");
    assert!(e.to_string().contains("conv layer 0"), "{e}");
}

#[test]
fn a_model_without_conv_layers_is_a_typed_error() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut host = ModelParams::init(12, &[8], &mut rng);
    host.push_head(2, &mut rng);
    let model = DeviceModel::from_host(&dev, &host);
    let o = options(Similarity::Mse, DensePolicy::Free);
    let e = saliency_scores(&model, &[0u8; 24], &[0, 1], 0, &o, 4, &mut rng, || {
        Ok::<(), ()>(())
    })
    .unwrap()
    .err()
    .expect("an MLP has no filters");
    assert_eq!(e, SaliencyError::NoConvLayers);
    assert!(e.to_string().contains("score.method"), "{e}");
}

#[test]
fn the_pipeline_names_the_field_when_saliency_meets_an_mlp() {
    let text = PIPELINE.replace(
        "method: lrp\n      rule: epsilon\n      epsilon: 1.0e-6",
        "method: saliency\n      similarity: mse",
    );
    assert_ne!(text, PIPELINE);
    let f = Fixture::with_pipeline(&text);
    let o = f.cli(&["run", f.pipeline().to_str().unwrap(), "--quiet"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("strategies.rnf.score.method: `saliency` needs conv layers"),
        "{e}"
    );
    // Saliency options on another method are located too.
    let text = PIPELINE.replace("epsilon: 1.0e-6", "epsilon: 1.0e-6\n      similarity: mse");
    let f = Fixture::with_pipeline(&text);
    let o = f.cli(&["run", f.pipeline().to_str().unwrap(), "--quiet"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("strategies.rnf.score.similarity: only used with `method: saliency`"),
        "{e}"
    );
}
