//! The fused CPU update: one pass over all of a step's parameters, in place on their own
//! storage, the moments and the learning-rate multipliers kept on the host between steps.
//! Each element goes through the same f32 operations, in the same order, as the composed
//! update in the parent module (`m·β₁ + g·(1 − β₁)`, `g.powi(2)`, `m̂ / (√v̂ + ε) · lr`, …; Rust
//! never contracts them into fused multiply-adds), so both give the same bits. A frozen element (multiplier ≤ 0) keeps
//! its value and both moments untouched, as `choose` does there. Elements are independent, so
//! splitting them over threads changes nothing.

use super::OptimizerConfig;
use crate::nn::host::{host_slice, host_slice_mut, zeros};
use crate::nn::tensor::Vector;
use dfdx::prelude::*;
use rayon::prelude::*;

/// Elements per parallel task: large enough that scheduling costs little beside the pass.
const CHUNK: usize = 1 << 15;

/// One parameter's state. The parameter and its gradient are read and written in place, in
/// dfdx's own tensors ([`host_slice`]).
pub(super) struct Slot {
    m: Vec<f32>,
    v: Vec<f32>,
    /// Learning-rate multiplier per element; `None` means 1 everywhere.
    scale: Option<Vec<f32>>,
}

impl Slot {
    pub(super) fn new(n: usize, scale: Option<Vec<f32>>) -> Self {
        // A mask of another length would pair multipliers with the wrong elements (or read
        // past the end in a chunk); the optimizer builds both from the same parameter.
        assert!(
            scale.as_ref().is_none_or(|s| s.len() == n),
            "learning-rate multipliers for {n} elements have length {}",
            scale.as_ref().map_or(0, Vec::len)
        );
        // Written, not `calloc`ed: untouched pages read as the shared zero page, and the first
        // update's write to each then copied it and flushed the other threads' TLBs (a
        // quarter of a second on VGG-16's first step, perf).
        Slot {
            m: zeros(n),
            v: zeros(n),
            scale,
        }
    }
}

/// Step `t` (from 1) of every parameter `grads` names (each once), with its gradient: one
/// pass over the pool for all of them, in spans of at most [`CHUNK`] elements (one parallel
/// region a step, not one per large parameter: each costs the pool a wake-up).
pub(super) fn step<D: Device<f32>>(
    cfg: OptimizerConfig,
    t: i32,
    slots: &mut [Slot],
    params: &mut [Vector<D>],
    grads: &[(usize, Vector<D>)],
) {
    let rule = Rule::new(cfg, t);
    let mut grad_of: Vec<Option<&Vector<D>>> = vec![None; params.len()];
    for (i, g) in grads {
        assert!(
            grad_of[*i].replace(g).is_none(),
            "parameter {i} has two gradients in one step"
        );
    }
    let mut spans = Vec::new();
    for ((param, slot), grad) in params.iter_mut().zip(slots).zip(grad_of) {
        let Some(grad) = grad else { continue };
        let (p, g) = (host_slice_mut(param), host_slice(grad));
        assert_eq!(
            p.len(),
            g.len(),
            "a gradient of another length than its parameter"
        );
        let Slot { m, v, scale } = slot;
        let pieces = p.chunks_mut(CHUNK).zip(m.chunks_mut(CHUNK));
        for (c, ((p, m), v)) in pieces.zip(v.chunks_mut(CHUNK)).enumerate() {
            let at = c * CHUNK..c * CHUNK + p.len();
            spans.push(Span {
                p,
                m,
                v,
                g: &g[at.clone()],
                scale: scale.as_deref().map(|s| &s[at]),
            });
        }
    }
    let elements: usize = spans.iter().map(|s| s.p.len()).sum();
    if elements <= CHUNK {
        // Little work: on this thread, without a round trip through the pool.
        spans.into_iter().for_each(|s| s.update(&rule));
    } else {
        spans.into_par_iter().for_each(|s| s.update(&rule));
    }
}

/// The update's constants for one step.
#[derive(Clone, Copy)]
enum Rule {
    Adam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        /// `1 − β₁` and `1 − β₂`.
        c1: f32,
        c2: f32,
        /// The bias corrections `1 − β₁ᵗ` and `1 − β₂ᵗ`.
        bc1: f32,
        bc2: f32,
    },
    Sgd {
        lr: f32,
        momentum: f32,
        weight_decay: f32,
        first: bool,
    },
}

impl Rule {
    fn new(cfg: OptimizerConfig, t: i32) -> Self {
        match cfg {
            OptimizerConfig::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => Rule::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                c1: 1.0 - beta1,
                c2: 1.0 - beta2,
                bc1: 1.0 - beta1.powi(t),
                bc2: 1.0 - beta2.powi(t),
            },
            OptimizerConfig::Sgd {
                lr,
                momentum,
                weight_decay,
            } => Rule::Sgd {
                lr,
                momentum,
                weight_decay,
                first: t == 1,
            },
        }
    }

    /// One element: its new value and moments `(p, m, v)` before the multiplier `s`.
    #[inline(always)]
    fn apply(&self, p: f32, g: f32, m: f32, v: f32, s: f32) -> (f32, f32, f32) {
        match *self {
            Rule::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                c1,
                c2,
                bc1,
                bc2,
            } => {
                let g = if weight_decay > 0.0 {
                    g + p * weight_decay
                } else {
                    g
                };
                let m1 = m * beta1 + g * c1;
                let v1 = v * beta2 + g.powi(2) * c2;
                let step = m1 / bc1 / ((v1 / bc2).sqrt() + eps) * lr;
                (p - step * s, m1, v1)
            }
            Rule::Sgd {
                lr,
                momentum,
                weight_decay,
                first,
            } => {
                let g = if weight_decay > 0.0 {
                    g + p * weight_decay
                } else {
                    g
                };
                let buf = if momentum > 0.0 && !first {
                    m * momentum + g
                } else {
                    g
                };
                (p - buf * lr * s, buf, v)
            }
        }
    }
}

/// One thread's share of a parameter.
struct Span<'a> {
    p: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    g: &'a [f32],
    scale: Option<&'a [f32]>,
}

impl Span<'_> {
    /// The update on the widest vectors this CPU has. The element function is the same on
    /// every path and IEEE operations round alike at any vector width, so the bits are too.
    fn update(self, rule: &Rule) {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F, checked just above.
                return unsafe { self.update_avx512(rule) };
            }
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, checked just above.
                return unsafe { self.update_avx2(rule) };
            }
        }
        self.update_any(rule)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn update_avx512(self, rule: &Rule) {
        self.update_any(rule)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn update_avx2(self, rule: &Rule) {
        self.update_any(rule)
    }

    /// Branch-free per element (a frozen element is selected back, not skipped), so the
    /// compiler vectorises it.
    #[inline(always)]
    fn update_any(self, rule: &Rule) {
        let Span { p, m, v, g, scale } = self;
        let rule = *rule;
        let elems = p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g);
        match scale {
            None => {
                for (((p, m), v), &g) in elems {
                    // `step · 1` is `step` exactly, as the composed update without a scale.
                    (*p, *m, *v) = rule.apply(*p, g, *m, *v, 1.0);
                }
            }
            Some(s) => {
                for ((((p, m), v), &g), &s) in elems.zip(s) {
                    let (np, nm, nv) = rule.apply(*p, g, *m, *v, s);
                    // `s > 0` is false for 0 (and NaN): frozen, bit for bit.
                    let movable = s > 0.0;
                    *p = if movable { np } else { *p };
                    *m = if movable { nm } else { *m };
                    *v = if movable { nv } else { *v };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every vector width this CPU runs gives the bits of the plain loop, for Adam and SGD,
    /// with and without multipliers (the parent module checks the dispatched path against
    /// the composed update).
    #[test]
    fn every_simd_path_gives_the_same_bits() {
        let n = 1000;
        let f = |k: usize, a: f32| (k as f32 * a).sin() * 2.0;
        let scale: Vec<f32> = (0..n).map(|k| [0.0, 0.5, 1.0][k % 3]).collect();
        let rules = [
            Rule::new(
                OptimizerConfig::Adam {
                    lr: 0.01,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.01,
                },
                3,
            ),
            Rule::new(
                OptimizerConfig::Sgd {
                    lr: 0.1,
                    momentum: 0.9,
                    weight_decay: 0.0,
                },
                2,
            ),
        ];
        for rule in rules {
            for s in [None, Some(&scale[..])] {
                let run = |path: usize| {
                    let mut p: Vec<f32> = (0..n).map(|k| f(k, 0.3)).collect();
                    let mut m: Vec<f32> = (0..n).map(|k| f(k, 0.7) * 0.1).collect();
                    let mut v: Vec<f32> = (0..n).map(|k| f(k, 1.1).abs() * 0.01).collect();
                    let g: Vec<f32> = (0..n).map(|k| f(k, 1.9)).collect();
                    let span = Span {
                        p: &mut p,
                        m: &mut m,
                        v: &mut v,
                        g: &g,
                        scale: s,
                    };
                    match path {
                        0 => span.update_any(&rule),
                        #[cfg(target_arch = "x86_64")]
                        1 => unsafe { span.update_avx2(&rule) },
                        #[cfg(target_arch = "x86_64")]
                        _ => unsafe { span.update_avx512(&rule) },
                        #[cfg(not(target_arch = "x86_64"))]
                        _ => span.update_any(&rule),
                    }
                    [p, m, v].map(|x| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
                };
                let plain = run(0);
                #[cfg(target_arch = "x86_64")]
                for (path, feature) in [(1, "avx2"), (2, "avx512f")] {
                    let here = match feature {
                        "avx2" => is_x86_feature_detected!("avx2"),
                        _ => is_x86_feature_detected!("avx512f"),
                    };
                    if here {
                        assert!(run(path) == plain, "{feature} differs from the plain loop");
                    }
                }
            }
        }
    }
}
