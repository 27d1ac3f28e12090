//! LRP through a small CNN: relevance is conserved layer by layer for every rule.

use cfpipe::nn::seq::Layer;
use cfpipe::nn::tensor::Tensor4;
use cfpipe::xai::lrp::conv::{filter_scores, lrp_sequential};
use cfpipe::xai::lrp::{AbsMode, LrpRule, LrpRules};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};

/// conv(3→6, 3×3, pad 1) → ReLU → max-pool 2 → conv(6→8, 3×3, stride 2) → ReLU → avg-pool
/// → flatten → dense 8·2·2→12 → ReLU → dense 12→3, all bias-free so conservation is exact.
fn network(dev: &Cpu, seed: u64) -> Vec<Layer<Cpu>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut t = |n: usize, scale: f32| -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
    };
    let conv = |w: Vec<f32>, shape: (usize, usize, usize, usize), stride, padding| Layer::Conv {
        weight: dev.tensor_from_vec(w, shape),
        bias: dev.zeros_like(&(shape.0,)),
        stride,
        padding,
    };
    let dense = |w: Vec<f32>, o: usize, i: usize| Layer::Dense {
        weight: dev.tensor_from_vec(w, (o, i)),
        bias: dev.zeros_like(&(o,)),
    };
    vec![
        conv(t(6 * 3 * 9, 0.5), (6, 3, 3, 3), 1, 1),
        Layer::Relu,
        Layer::MaxPool {
            kernel: 2,
            stride: 2,
        },
        conv(t(8 * 6 * 9, 0.4), (8, 6, 3, 3), 2, 0),
        Layer::Relu,
        Layer::AvgPool {
            kernel: 1,
            stride: 1,
        },
        Layer::Flatten,
        dense(t(12 * 32, 0.4), 12, 32),
        Layer::Relu,
        dense(t(3 * 12, 0.6), 3, 12),
    ]
}

fn input(dev: &Cpu) -> Tensor4<Cpu> {
    // Two 3×10×10 images with values in [0, 1].
    let x: Vec<f32> = (0..2 * 3 * 100)
        .map(|i| ((i * 37 % 101) as f32) / 100.0)
        .collect();
    dev.tensor_from_vec(x, (2, 3, 10, 10))
}

#[test]
fn relevance_is_conserved_through_a_cnn_for_every_rule() {
    let dev = Cpu::default();
    let layers = network(&dev, 4);
    let labels = [0u16, 2];
    let cases: Vec<(&str, LrpRules)> = {
        let base = LrpRules::epsilon(1e-9);
        let with = |f: &dyn Fn(&mut LrpRules)| {
            let mut r = base;
            f(&mut r);
            r
        };
        vec![
            ("EpsilonPlus", with(&|r| r.conv = LrpRule::Zplus)),
            (
                "EpsilonAlpha2Beta1",
                with(&|r| {
                    r.conv = LrpRule::AlphaBeta;
                    r.alpha = 2.0;
                    r.beta = 1.0
                }),
            ),
            (
                "EpsilonPlusFlat",
                with(&|r| {
                    r.conv = LrpRule::Zplus;
                    r.first = Some(LrpRule::Flat)
                }),
            ),
            (
                "EpsilonGammaBox",
                with(&|r| {
                    r.conv = LrpRule::Gamma;
                    r.first = Some(LrpRule::ZBox);
                    r.low = 0.0;
                    r.high = 1.0
                }),
            ),
            ("epsilon everywhere", with(&|r| r.conv = LrpRule::Epsilon)),
            // w² and flat ignore activations, so they belong on the first layer: deeper, they
            // hand relevance to dead units, where the pooling above drops it.
            (
                "EpsilonPlus with w² first",
                with(&|r| {
                    r.conv = LrpRule::Zplus;
                    r.first = Some(LrpRule::WSquare)
                }),
            ),
        ]
    };
    for (name, rules) in cases {
        let r = lrp_sequential(&layers, input(&dev), &labels, &rules);
        for i in 0..2 {
            let f = r.explained[i] as f64;
            for (l, rel) in r.per_layer.iter().enumerate() {
                let per = rel.len() / 2;
                let s: f64 = rel[i * per..(i + 1) * per].iter().map(|&v| v as f64).sum();
                assert!(
                    (s - f).abs() <= 1e-3 * f.abs().max(1e-3),
                    "{name}: sample {i}, relevance into layer {l}: {s} vs explained {f}"
                );
            }
        }
    }
}

#[test]
fn z_plus_relevance_of_a_positive_logit_is_non_negative_and_max_pool_is_winner_take_all() {
    let dev = Cpu::default();
    let layers = network(&dev, 4);
    let mut rules = LrpRules::epsilon(1e-9);
    rules.dense = LrpRule::Zplus;
    rules.conv = LrpRule::Zplus;
    let x = input(&dev);
    let logits = cfpipe::nn::seq::forward(&layers, x.clone())
        .last()
        .unwrap()
        .as_vec();
    // Explain, per sample, its largest logit if positive.
    let labels: Vec<u16> = (0..2)
        .map(|i| {
            let row = &logits[i * 3..(i + 1) * 3];
            (0..3).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap() as u16
        })
        .collect();
    let r = lrp_sequential(&layers, x, &labels, &rules);
    for i in 0..2 {
        if r.explained[i] > 0.0 {
            for rel in &r.per_layer {
                let per = rel.len() / 2;
                assert!(rel[i * per..(i + 1) * per].iter().all(|&v| v >= -1e-6));
            }
        }
    }
    // Into the max-pool (layer 2) relevance sits on at most one position of each 2×2 window.
    let into_pool = &r.per_layer[2];
    let (n, c, h, wd) = (2, 6, 10, 10);
    for i in 0..n {
        for ch in 0..c {
            for y in (0..h).step_by(2) {
                for x in (0..wd).step_by(2) {
                    let at =
                        |dy: usize, dx: usize| into_pool[((i * c + ch) * h + y + dy) * wd + x + dx];
                    let nonzero = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)]
                        .iter()
                        .filter(|v| **v != 0.0)
                        .count();
                    assert!(nonzero <= 1, "window at {i},{ch},{y},{x}");
                }
            }
        }
    }
}

#[test]
fn filter_scores_sum_over_positions_with_the_chosen_abs() {
    // One sample, two filters of 2×1 positions: filter 0 gets [1, -3], filter 1 gets [2, 2].
    let r = [1.0f32, -3.0, 2.0, 2.0];
    let shape = (1, 2, 2, 1);
    assert_eq!(filter_scores(&r, shape, AbsMode::None), vec![-2.0, 4.0]);
    assert_eq!(filter_scores(&r, shape, AbsMode::BeforeSum), vec![4.0, 4.0]);
    assert_eq!(filter_scores(&r, shape, AbsMode::AfterSum), vec![2.0, 4.0]);
}
