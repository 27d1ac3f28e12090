//! Optimizers whose *update* is masked, not only the gradient.
//!
//! Freezing by zeroing a gradient is not enough: Adam's moments carry momentum from earlier
//! steps, and L2 weight decay adds `λ·θ` to the gradient, so a "zero-gradient" weight still
//! moves. Here each parameter may carry a per-element learning-rate multiplier; where it is 0
//! the parameter and both moments are carried over bit for bit (`choose`, not arithmetic), and
//! where it is in (0, 1) the step is scaled. Parameters outside the active set (other tasks'
//! heads) are never touched.
//!
//! Two implementations, chosen by the device type as the layer ops are: on any dfdx device
//! the update is composed from public dfdx ops; on the CPU ([`host`]) it is one fused pass over
//! each parameter, with the moments and multipliers kept in host buffers. The fused pass
//! performs the very same f32 operations per element in the same order (no fused
//! multiply-add), so both give the same bits, which a test asserts; the composed form needs
//! about fifteen passes and as many buffers per parameter, which for VGG-16's 15 M weights
//! cost more than its dense layers.

use super::tensor::Vector;
use dfdx::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerConfig {
    Adam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    },
    Sgd {
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    },
}

/// Per-parameter state of the composed update.
struct Slot<D: Device<f32>> {
    m: Vector<D>,
    v: Vector<D>,
    /// Learning-rate multiplier per element; `None` means 1 everywhere.
    scale: Option<Vector<D>>,
    /// `scale > 0`: which elements may change at all.
    movable: Option<Tensor<(usize,), bool, D>>,
}

pub struct MaskedOptimizer<D: Device<f32>> {
    cfg: OptimizerConfig,
    state: State<D>,
    t: i32,
}

/// Where the per-parameter state lives.
enum State<D: Device<f32>> {
    Composed(Vec<Option<Slot<D>>>),
    Host(Vec<host::Slot>),
}

impl<D: Device<f32>> MaskedOptimizer<D> {
    /// `params` fixes the number and sizes of parameters; `scales[i]` is an optional
    /// per-element multiplier for parameter `i`.
    pub fn new(
        dev: &D,
        cfg: OptimizerConfig,
        params: &[Vector<D>],
        scales: Vec<Option<Vec<f32>>>,
    ) -> Self {
        if super::host::uses_cpu_fast_path::<D>() {
            Self::fused(cfg, params, scales)
        } else {
            Self::composed(dev, cfg, params, scales)
        }
    }

    /// The update composed from dfdx ops (any device).
    fn composed(
        dev: &D,
        cfg: OptimizerConfig,
        params: &[Vector<D>],
        scales: Vec<Option<Vec<f32>>>,
    ) -> Self {
        let slots = params
            .iter()
            .zip(scales)
            .map(|(p, s)| {
                let n = p.shape().0;
                let scale = s.map(|s| dev.tensor_from_vec(s, (n,)));
                let movable = scale.as_ref().map(|s: &Vector<D>| s.gt(0.0));
                Some(Slot {
                    m: dev.zeros_like(&(n,)),
                    v: dev.zeros_like(&(n,)),
                    scale,
                    movable,
                })
            })
            .collect();
        MaskedOptimizer {
            cfg,
            state: State::Composed(slots),
            t: 0,
        }
    }

    /// The fused host update (the `Cpu` device only).
    fn fused(cfg: OptimizerConfig, params: &[Vector<D>], scales: Vec<Option<Vec<f32>>>) -> Self {
        let slots = params
            .iter()
            .zip(scales)
            .map(|(p, scale)| host::Slot::new(p.shape().0, scale))
            .collect();
        MaskedOptimizer {
            cfg,
            state: State::Host(slots),
            t: 0,
        }
    }

    /// One step over the parameters that received gradients; others are untouched.
    pub fn step(&mut self, params: &mut [Vector<D>], grads: Vec<(usize, Vector<D>)>) {
        self.t += 1;
        let slots = match &mut self.state {
            State::Host(slots) => {
                host::step(self.cfg, self.t, slots, params, &grads);
                return;
            }
            State::Composed(slots) => slots,
        };
        for (i, g) in grads {
            let Some(slot) = slots[i].as_mut() else {
                continue;
            };
            let p = params[i].clone();
            let (new_p, new_m, new_v) = match self.cfg {
                OptimizerConfig::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => {
                    let g = if weight_decay > 0.0 {
                        g + p.clone() * weight_decay
                    } else {
                        g
                    };
                    let m = slot.m.clone() * beta1 + g.clone() * (1.0 - beta1);
                    let v = slot.v.clone() * beta2 + g.square() * (1.0 - beta2);
                    let mhat = m.clone() / (1.0 - beta1.powi(self.t));
                    let vhat = v.clone() / (1.0 - beta2.powi(self.t));
                    let mut step = mhat / (vhat.sqrt() + eps) * lr;
                    if let Some(s) = &slot.scale {
                        step = step * s.clone();
                    }
                    (p - step, m, v)
                }
                OptimizerConfig::Sgd {
                    lr,
                    momentum,
                    weight_decay,
                } => {
                    let g = if weight_decay > 0.0 {
                        g + p.clone() * weight_decay
                    } else {
                        g
                    };
                    let buf = if momentum > 0.0 {
                        if self.t == 1 {
                            g
                        } else {
                            slot.m.clone() * momentum + g
                        }
                    } else {
                        g
                    };
                    let mut step = buf.clone() * lr;
                    if let Some(s) = &slot.scale {
                        step = step * s.clone();
                    }
                    (p - step, buf, slot.v.clone())
                }
            };
            match &slot.movable {
                // Frozen elements keep their exact bits, and so do their moments.
                Some(mv) => {
                    params[i] = mv.clone().choose(new_p, params[i].clone());
                    slot.m = mv.clone().choose(new_m, slot.m.clone());
                    slot.v = mv.clone().choose(new_v, slot.v.clone());
                }
                None => {
                    params[i] = new_p;
                    slot.m = new_m;
                    slot.v = new_v;
                }
            }
        }
    }
}

/// Synaptic intelligence's path integral (Zenke et al. 2017): per parameter,
/// `ω = −Σ_steps g · Δθ`, where `g` is the gradient of the task loss at the step and `Δθ` the
/// update the optimizer actually applied (zero for frozen elements).
pub struct PathIntegral<D: Device<f32>> {
    pub omega: std::collections::BTreeMap<usize, Vector<D>>,
}

impl<D: Device<f32>> Default for PathIntegral<D> {
    fn default() -> Self {
        PathIntegral {
            omega: Default::default(),
        }
    }
}

impl<D: Device<f32>> PathIntegral<D> {
    /// Record one step: `grads` as given to the optimizer (before any regulariser), `before`
    /// the values of those parameters before the step (same order), `params` after it.
    pub fn record(
        &mut self,
        grads: Vec<(usize, Vector<D>)>,
        before: Vec<Vector<D>>,
        params: &[Vector<D>],
    ) {
        for ((i, g), old) in grads.into_iter().zip(before) {
            let path = g * (params[i].clone() - old);
            let acc = match self.omega.remove(&i) {
                Some(w) => w - path,
                None => path.negate(),
            };
            self.omega.insert(i, acc);
        }
    }
}

mod host;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn run(cfg: OptimizerConfig, scale: Option<Vec<f32>>) -> Vec<f32> {
        let dev = Cpu::default();
        let mut params = vec![dev.tensor_from_vec(vec![1.0f32, -2.0, 0.5], (3,))];
        let mut opt = MaskedOptimizer::new(&dev, cfg, &params, vec![scale]);
        for k in 0..5 {
            let g = dev.tensor_from_vec(vec![0.3, -0.1 * k as f32, 2.0], (3,));
            opt.step(&mut params, vec![(0, g)]);
        }
        params[0].as_vec()
    }

    #[test]
    fn si_path_integral_on_a_1d_quadratic_matches_the_closed_form() {
        // L(θ) = a/2 (θ − θ*)², plain gradient descent with step η: the error shrinks by
        // q = 1 − ηa per step, and −Σ g·Δθ = η Σ g_k² = η a² e₀² (1 − q^{2K}) / (1 − q²).
        let (a, target, theta0, lr, steps) = (2.0f32, 0.5f32, 3.0f32, 0.05f32, 40);
        let dev = Cpu::default();
        let mut params = vec![dev.tensor_from_vec(vec![theta0], (1,))];
        let cfg = OptimizerConfig::Sgd {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
        };
        let mut opt = MaskedOptimizer::new(&dev, cfg, &params, vec![None]);
        let mut si = PathIntegral::default();
        for _ in 0..steps {
            let theta = params[0].as_vec()[0];
            let g = dev.tensor_from_vec(vec![a * (theta - target)], (1,));
            let before = vec![params[0].clone()];
            opt.step(&mut params, vec![(0, g.clone())]);
            si.record(vec![(0, g)], before, &params);
        }
        let q = 1.0 - (lr * a) as f64;
        let e0 = (theta0 - target) as f64;
        let want =
            lr as f64 * (a as f64).powi(2) * e0 * e0 * (1.0 - q.powi(2 * steps)) / (1.0 - q * q);
        let got = si.omega[&0].as_vec()[0] as f64;
        assert!((got - want).abs() < 1e-4 * want, "{got} vs {want}");
        // In the small-step limit it is the loss that training removed.
        let drop = a as f64 / 2.0 * e0 * e0 * (1.0 - q.powi(2 * steps));
        assert!(
            (got - drop).abs() < 0.06 * drop,
            "{got} vs loss drop {drop}"
        );
    }

    /// Ten steps of random gradients through one implementation; every parameter's bits.
    fn ten_steps(fused: bool, cfg: OptimizerConfig, scale: Option<Vec<f32>>) -> Vec<u32> {
        let dev = Cpu::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let n = scale.as_ref().map_or(40_000, Vec::len);
        let init: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut params = vec![dev.tensor_from_vec(init, (n,))];
        let mut opt = if fused {
            MaskedOptimizer::fused(cfg, &params, vec![scale])
        } else {
            MaskedOptimizer::composed(&dev, cfg, &params, vec![scale])
        };
        for _ in 0..10 {
            let g: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect();
            opt.step(&mut params, vec![(0, dev.tensor_from_vec(g, (n,)))]);
        }
        params[0].as_vec().iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn the_fused_cpu_update_gives_the_composed_updates_bits() {
        // Frozen, slowed and free elements, past one parallel chunk.
        let scale: Vec<f32> = (0..40_000).map(|k| [0.0, 0.25, 1.0][k % 3]).collect();
        let adam = OptimizerConfig::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let sgd = OptimizerConfig::Sgd {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 0.001,
        };
        for cfg in [adam, sgd] {
            for s in [None, Some(scale.clone())] {
                let (fused, composed) = (
                    ten_steps(true, cfg, s.clone()),
                    ten_steps(false, cfg, s.clone()),
                );
                let differ = fused.iter().zip(&composed).filter(|(a, b)| a != b).count();
                assert_eq!(
                    differ,
                    0,
                    "{cfg:?} with scale {}: {differ} elements differ",
                    s.is_some()
                );
            }
        }
    }

    #[test]
    fn one_fused_step_over_several_parameters_updates_those_with_gradients_only() {
        // Three parameters, one past a parallel chunk, gradients for the first and last: the
        // fused step (one pass over all of them) gives the composed update's bits for those
        // two and leaves the middle one, another task's head, exactly as it was.
        let dev = Cpu::default();
        let cfg = OptimizerConfig::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let sizes = [40_000, 7, 401];
        let run = |fused: bool| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
            let mut params: Vec<Vector<Cpu>> = sizes
                .iter()
                .map(|&n| {
                    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
                    dev.tensor_from_vec(v, (n,))
                })
                .collect();
            let scales = vec![None, None, Some(vec![0.5; sizes[2]])];
            let mut opt = if fused {
                MaskedOptimizer::fused(cfg, &params, scales)
            } else {
                MaskedOptimizer::composed(&dev, cfg, &params, scales)
            };
            for _ in 0..3 {
                let grads = [2, 0]
                    .map(|i| {
                        let g: Vec<f32> = (0..sizes[i]).map(|_| rng.gen_range(-2.0..2.0)).collect();
                        (i, dev.tensor_from_vec(g, (sizes[i],)))
                    })
                    .to_vec();
                opt.step(&mut params, grads);
            }
            params
                .iter()
                .map(|p| p.as_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        let (fused, composed) = (run(true), run(false));
        assert!(
            fused == composed,
            "the fused step differs from the composed one"
        );
        let untouched: Vec<u32> = {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
            (0..sizes[0]).for_each(|_| {
                rng.gen_range(-1.0f32..1.0);
            });
            (0..sizes[1])
                .map(|_| rng.gen_range(-1.0f32..1.0).to_bits())
                .collect()
        };
        assert_eq!(fused[1], untouched, "a parameter without a gradient moved");
    }

    #[test]
    fn frozen_elements_keep_exact_bits_under_adam_with_weight_decay() {
        let cfg = OptimizerConfig::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let out = run(cfg, Some(vec![0.0, 1.0, 0.0]));
        assert_eq!(out[0].to_bits(), 1.0f32.to_bits());
        assert_eq!(out[2].to_bits(), 0.5f32.to_bits());
        assert_ne!(out[1], -2.0);
        // Unmasked, the same element moves (so the test can fail).
        assert_ne!(run(cfg, None)[0], 1.0);
    }

    #[test]
    fn adam_matches_the_reference_formula() {
        let cfg = OptimizerConfig::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let out = run(cfg, None);
        // Reference in f64 for element 0 (constant gradient 0.3): Adam moves by ~lr per step.
        let (mut p, mut m, mut v) = (1.0f64, 0.0f64, 0.0f64);
        for t in 1..=5 {
            let g = 0.3;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            p -=
                0.1 * (m / (1.0 - 0.9f64.powi(t))) / ((v / (1.0 - 0.999f64.powi(t))).sqrt() + 1e-8);
        }
        assert!((out[0] as f64 - p).abs() < 1e-5, "{} vs {p}", out[0]);
    }

    #[test]
    fn partial_scale_slows_the_update() {
        let cfg = OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.0,
            weight_decay: 0.0,
        };
        let full = run(cfg, None);
        let half = run(cfg, Some(vec![0.5, 0.5, 0.5]));
        assert!(((1.0 - half[0]) * 2.0 - (1.0 - full[0])).abs() < 1e-6);
    }
}
