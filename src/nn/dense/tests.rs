//! The CPU fast path against the composed dfdx path: forward values and the weight, bias and
//! input gradients agree within 1e-5 relative on odd shapes, every activation and every
//! layout; an untraced input gets no gradient; results do not depend on the thread count.

use super::*;
use rand::{Rng, SeedableRng};

fn uniform(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// Forward values and gradients of `Σ c ⊙ dense(x)` (a fixed random cotangent `c`, so every
/// output element's gradient differs) through one path.
struct Run {
    y: Vec<f32>,
    gw: Vec<f32>,
    gb: Vec<f32>,
    gx: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn run(
    fast: bool,
    (out, inp, batch): (usize, usize, usize),
    act: Activation,
    input: Side,
    output: Side,
    seed: u64,
) -> Run {
    let dev = Cpu::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let w: Matrix<Cpu> = dev.tensor_from_vec(uniform(&mut rng, out * inp), (out, inp));
    let b: Vector<Cpu> = dev.tensor_from_vec(uniform(&mut rng, out), (out,));
    let xshape = match input {
        Side::Rows => (batch, inp),
        Side::Columns => (inp, batch),
    };
    let x: Matrix<Cpu> = dev.tensor_from_vec(uniform(&mut rng, batch * inp), xshape);
    let c = uniform(&mut rng, out * batch);
    let yshape = match output {
        Side::Rows => (batch, out),
        Side::Columns => (out, batch),
    };
    let c: Matrix<Cpu> = dev.tensor_from_vec(c, yshape);
    let (tw, tb) = (w.leaky_trace(), b.leaky_trace());
    // The input on the weight's tape too, so its gradient is computed.
    let tx = x.leaky_trace();
    let (y, grads) = if fast {
        let y = host::dense(tx, tw, tb, act, input, output, batch);
        let v = y.as_vec();
        (v, (y * c).sum::<(), _>().backward())
    } else {
        let y = composed(tx, tw, tb, act, input, output, batch);
        let v = y.as_vec();
        (v, (y * c).sum::<(), _>().backward())
    };
    Run {
        y,
        gw: grads.get(&w).as_vec(),
        gb: grads.get(&b).as_vec(),
        gx: grads.get(&x).as_vec(),
    }
}

fn close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * scale,
            "{what}[{i}]: fast {g} vs composed {w} (scale {scale})"
        );
    }
}

#[test]
fn the_fast_path_equals_the_composed_path_in_values_and_gradients() {
    let acts = [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu(0.1),
    ];
    let sides = [Side::Rows, Side::Columns];
    // Odd sizes: edge tiles of the 12×32 micro-kernel, an inner dimension over one 256 block.
    for (k, dims) in [(1, 1, 1), (7, 13, 5), (33, 300, 9), (10, 784, 128)]
        .into_iter()
        .enumerate()
    {
        for act in acts {
            for input in sides {
                for output in sides {
                    let seed = k as u64 * 31 + 7;
                    let fast = run(true, dims, act, input, output, seed);
                    let slow = run(false, dims, act, input, output, seed);
                    let at = format!("{dims:?} {act:?} in {input:?} out {output:?}");
                    close(&format!("y {at}"), &fast.y, &slow.y);
                    close(&format!("∂W {at}"), &fast.gw, &slow.gw);
                    close(&format!("∂b {at}"), &fast.gb, &slow.gb);
                    close(&format!("∂x {at}"), &fast.gx, &slow.gx);
                }
            }
        }
    }
}

#[test]
fn an_untraced_input_gets_no_gradient_and_the_parameters_still_do() {
    let dev = Cpu::default();
    let w: Matrix<Cpu> = dev.tensor_from_vec(vec![1.0, -2.0, 0.5, 3.0], (2, 2));
    let b: Vector<Cpu> = dev.tensor_from_vec(vec![0.5, -0.5], (2,));
    let x: Matrix<Cpu> = dev.tensor_from_vec(vec![1.0, 2.0, -1.0, 0.25], (2, 2));
    let y = dense(
        x.clone(),
        w.leaky_trace(),
        b.leaky_trace(),
        Activation::Relu,
        Side::Rows,
        Side::Rows,
    );
    // Rows: sample 0 = (1, 2): z = (1·1 − 2·2 + 0.5, 0.5·1 + 3·2 − 0.5) = (−2.5, 6) → (0, 6).
    // Sample 1 = (−1, 0.25): z = (−1 − 0.5 + 0.5, −0.5 + 0.75 − 0.5) = (−1, −0.25) → (0, 0).
    assert_eq!(y.as_vec(), vec![0.0, 6.0, 0.0, 0.0]);
    let grads = y.sum::<(), _>().backward();
    // Only unit 1 of sample 0 is active: ∂W row 1 = x₀, ∂b = (0, 1).
    assert_eq!(grads.get(&w).as_vec(), vec![0.0, 0.0, 1.0, 2.0]);
    assert_eq!(grads.get(&b).as_vec(), vec![0.0, 1.0]);
}

#[test]
fn the_fast_path_gives_the_same_bits_on_one_thread_and_on_three() {
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                run(
                    true,
                    (37, 517, 65),
                    Activation::Relu,
                    Side::Rows,
                    Side::Columns,
                    3,
                )
            })
    };
    let (a, b) = (on(1), on(3));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.y), bits(&b.y));
    assert_eq!(bits(&a.gw), bits(&b.gw));
    assert_eq!(bits(&a.gb), bits(&b.gb));
    assert_eq!(bits(&a.gx), bits(&b.gx));
}
