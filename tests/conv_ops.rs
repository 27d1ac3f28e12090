//! Convolution, pooling, flatten and dropout (`cfpipe::nn::conv`) against naive f64 reference
//! loops written here: forwards on assorted shapes (odd sizes, strides, paddings, kernels
//! 1/3/5, several channels and samples), gradients by central finite differences of the
//! reference, and a few by finite differences of the ops themselves. Both the CPU fast path
//! (`conv::*`) and the composed path (`conv::composed::*`) are checked, and the tests listed in
//! `device_tests!` also run on the GPU when built with `--features cuda` (`NAME::cuda`, the
//! composed path, run by scripts/gpu_run.sh). The CPU's ReLU is checked against dfdx's own,
//! bit for bit.

mod common;

use cfpipe::nn::conv::{self, composed};
use cfpipe::nn::tensor::Tensor4;
use dfdx::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Dims = (usize, usize, usize, usize);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    Fast,
    Composed,
}

const PATHS: [Path; 2] = [Path::Fast, Path::Composed];

/// Each listed test, a generic `fn NAME<D>(dev: &D, paths: &[Path])`, runs once per device, as
/// candle's op tests do: `NAME::cpu` on the CPU through both paths, and, built with `--features
/// cuda`, `NAME::cuda` on the GPU through the composed path (the only one it has), ignored
/// unless asked for (`-- --ignored` on a GPU machine).
macro_rules! device_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn cpu() {
                super::$name(&dfdx::prelude::Cpu::default(), &super::PATHS);
            }

            #[cfg(feature = "cuda")]
            #[test]
            #[ignore = "needs an NVIDIA GPU"]
            fn cuda() {
                super::$name(&dfdx::prelude::Cuda::default(), &[super::Path::Composed]);
            }
        }
    )*};
}

device_tests!(
    conv2d_forward_matches_the_naive_reference,
    conv2d_gradients_match_finite_differences_of_the_reference,
    conv2d_gradients_match_finite_differences_of_the_op,
    conv2d_with_an_untraced_input_and_flat_parameters,
    conv2d_accepts_a_permuted_input,
    pooling_forward_matches_the_naive_reference,
    pooling_gradients_match_finite_differences,
    max_pool_gradients_match_finite_differences_of_the_op,
    flatten_keeps_pytorch_order_and_passes_gradients_through,
    a_small_network_backpropagates_through_every_layer,
    dropout_is_deterministic_per_seed,
    dropout_preserves_the_expectation,
    dropout_is_the_identity_at_p_zero_and_outside_training,
    dropout_gradient_is_the_mask,
);

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn uniform(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// Distinct values 0.01 apart in random order, so that no max-pool window has a near-tie.
fn distinct(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.01 - n as f32 * 0.005).collect();
    v.shuffle(rng);
    v
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn numel((a, b, c, d): Dims) -> usize {
    a * b * c * d
}

// ---------------------------------------------------------------- naive f64 references

/// The output dims of a convolution.
fn conv_dims(
    (n, _, h, w): Dims,
    (o, kh, kw): (usize, usize, usize),
    stride: usize,
    pad: usize,
) -> Dims {
    (
        n,
        o,
        (h + 2 * pad - kh) / stride + 1,
        (w + 2 * pad - kw) / stride + 1,
    )
}

/// Every product a convolution sums, as `(output, input, weight)` flat indices, in the order of
/// the naive loops (output by output, then channel, kernel row, kernel column); taps that fall
/// on padding are skipped.
fn conv_products(
    xd: Dims,
    wd: (usize, usize, usize),
    stride: usize,
    pad: usize,
    mut visit: impl FnMut(usize, usize, usize),
) {
    let ((n, c, h, w), (o, kh, kw)) = (xd, wd);
    let (_, _, ho, wo) = conv_dims(xd, wd, stride, pad);
    for s in 0..n {
        for f in 0..o {
            for oy in 0..ho {
                for ox in 0..wo {
                    let out = ((s * o + f) * ho + oy) * wo + ox;
                    for ch in 0..c {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let iy = (oy * stride + ki) as isize - pad as isize;
                                let ix = (ox * stride + kj) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xi = ((s * c + ch) * h + iy as usize) * w + ix as usize;
                                visit(out, xi, ((f * c + ch) * kh + ki) * kw + kj);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn conv_ref(
    x: &[f64],
    xd: Dims,
    wt: &[f64],
    wd: (usize, usize, usize),
    b: &[f64],
    stride: usize,
    pad: usize,
) -> (Vec<f64>, Dims) {
    let od = conv_dims(xd, wd, stride, pad);
    let plane = od.2 * od.3;
    // Each output starts from its filter's bias.
    let mut out: Vec<f64> = (0..numel(od)).map(|i| b[i / plane % od.1]).collect();
    conv_products(xd, wd, stride, pad, |o, xi, wi| out[o] += x[xi] * wt[wi]);
    (out, od)
}

/// The gradients of `Σ probe · conv_ref(x, w, b)` with respect to `x` and `w`: each output's
/// probe weight flows back along every product it summed.
fn conv_ref_grads(
    x: &[f64],
    xd: Dims,
    wt: &[f64],
    wd: (usize, usize, usize),
    probe: &[f64],
    (stride, pad): (usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; wt.len()]);
    conv_products(xd, wd, stride, pad, |o, xi, wi| {
        dx[xi] += probe[o] * wt[wi];
        dw[wi] += probe[o] * x[xi];
    });
    (dx, dw)
}

/// Pools every plane over per-axis bins `(start, end)` with `reduce`.
fn pool_ref(
    x: &[f64],
    (n, c, h, w): Dims,
    rows: &[(usize, usize)],
    cols: &[(usize, usize)],
    reduce: fn(&[f64]) -> f64,
) -> (Vec<f64>, Dims) {
    let mut out = Vec::new();
    for plane in 0..n * c {
        for &(y0, y1) in rows {
            for &(x0, x1) in cols {
                let mut cell = Vec::new();
                for y in y0..y1 {
                    for xx in x0..x1 {
                        cell.push(x[plane * h * w + y * w + xx]);
                    }
                }
                out.push(reduce(&cell));
            }
        }
    }
    (out, (n, c, rows.len(), cols.len()))
}

fn max_of(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
}

fn mean_of(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn window_bins(len: usize, k: usize, s: usize) -> Vec<(usize, usize)> {
    (0..=(len - k) / s).map(|i| (i * s, i * s + k)).collect()
}

/// PyTorch's adaptive rule, written with float floor/ceil as in its documentation.
fn adaptive_bins(len: usize, out: usize) -> Vec<(usize, usize)> {
    (0..out)
        .map(|i| {
            let a = (i as f64 * len as f64 / out as f64).floor() as usize;
            let b = ((i + 1) as f64 * len as f64 / out as f64).ceil() as usize;
            (a, b)
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// ---------------------------------------------------------------- checking helpers

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// [`assert_close`] against the root mean square of `want` rather than each element: a
/// weight gradient sums thousands of products, and an entry near zero by cancellation
/// carries the rounding of its large terms.
fn assert_close_to_scale(what: &str, got: &[f32], want: &[f64], tol: f64) {
    let rms = (want.iter().map(|w| w * w).sum::<f64>() / want.len().max(1) as f64).sqrt();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + rms),
            "{what}[{i}]: got {g}, want {w} (rms {rms})"
        );
    }
}

/// Central differences of `f` at `x0`, coordinate by coordinate, against `analytic`.
fn check_fd(what: &str, f: impl Fn(&[f64]) -> f64, x0: &[f64], analytic: &[f32], eps: f64) {
    check_fd_every(what, f, x0, analytic, eps, 1);
}

/// [`check_fd`] on every `step`-th coordinate only, for large inputs.
fn check_fd_every(
    what: &str,
    f: impl Fn(&[f64]) -> f64,
    x0: &[f64],
    analytic: &[f32],
    eps: f64,
    step: usize,
) {
    assert_eq!(x0.len(), analytic.len(), "{what}: gradient length");
    let mut x = x0.to_vec();
    for i in (0..x.len()).step_by(step) {
        x[i] = x0[i] + eps;
        let up = f(&x);
        x[i] = x0[i] - eps;
        let down = f(&x);
        x[i] = x0[i];
        let fd = (up - down) / (2.0 * eps);
        let a = analytic[i] as f64;
        assert!(
            (fd - a).abs() <= 1e-3 * (1.0 + fd.abs()),
            "{what}[{i}]: finite difference {fd}, backward {a}"
        );
    }
}

fn t4<D: Device<f32>>(dev: &D, v: &[f32], d: Dims) -> Tensor4<D> {
    dev.tensor_from_vec(v.to_vec(), d)
}

fn t1<D: Device<f32>>(dev: &D, v: &[f32]) -> Tensor<(usize,), f32, D> {
    dev.tensor_from_vec(v.to_vec(), (v.len(),))
}

fn conv_via<D, T, TX>(
    path: Path,
    x: Tensor4<D, TX>,
    w: Tensor4<D, T>,
    b: Tensor<(usize,), f32, D, T>,
    stride: usize,
    pad: usize,
) -> Tensor4<D, T>
where
    D: Device<f32>,
    T: Tape<f32, D> + Merge<TX>,
    TX: Tape<f32, D>,
{
    match path {
        Path::Fast => conv::conv2d(x, w, b, stride, pad),
        Path::Composed => composed::conv2d(x, w, b, stride, pad),
    }
}

/// A convolution's forward and gradients on `path`: `[y, ∂x, ∂w, ∂b]` of `Σ probe · y`, with
/// `y` the convolution of `x`, `w` and `b` (every one traced), and `probe` as long as `y`.
fn conv_and_grads<D: Device<f32>>(
    dev: &D,
    path: Path,
    (x, xd): (&[f32], Dims),
    (wt, wd): (&[f32], Dims),
    b: &[f32],
    (stride, pad): (usize, usize),
    probe: &[f32],
) -> [Vec<f32>; 4] {
    let (xt, wt_t, bt) = (t4(dev, x, xd), t4(dev, wt, wd), t1(dev, b));
    let out = conv_via(
        path,
        xt.leaky_trace(),
        wt_t.leaky_trace(),
        bt.leaky_trace(),
        stride,
        pad,
    );
    let (y, od) = (out.as_vec(), *out.shape());
    let grads = (out * t4(dev, probe, od)).sum::<(), _>().backward();
    [
        y,
        grads.get(&xt).as_vec(),
        grads.get(&wt_t).as_vec(),
        grads.get(&bt).as_vec(),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Pool {
    Max(usize, usize),
    Avg(usize, usize),
    Adaptive(usize, usize),
}

fn pool_via<D: Device<f32>, T: Tape<f32, D>>(
    path: Path,
    pool: Pool,
    x: Tensor4<D, T>,
) -> Tensor4<D, T> {
    match (path, pool) {
        (Path::Fast, Pool::Max(k, s)) => conv::max_pool2d(x, k, s),
        (Path::Fast, Pool::Avg(k, s)) => conv::avg_pool2d(x, k, s),
        (Path::Fast, Pool::Adaptive(h, w)) => conv::adaptive_avg_pool2d(x, h, w),
        (Path::Composed, Pool::Max(k, s)) => composed::max_pool2d(x, k, s),
        (Path::Composed, Pool::Avg(k, s)) => composed::avg_pool2d(x, k, s),
        (Path::Composed, Pool::Adaptive(h, w)) => composed::adaptive_avg_pool2d(x, h, w),
    }
}

fn pool_reference(pool: Pool, x: &[f64], d: Dims) -> (Vec<f64>, Dims) {
    match pool {
        Pool::Max(k, s) => pool_ref(
            x,
            d,
            &window_bins(d.2, k, s),
            &window_bins(d.3, k, s),
            max_of,
        ),
        Pool::Avg(k, s) => pool_ref(
            x,
            d,
            &window_bins(d.2, k, s),
            &window_bins(d.3, k, s),
            mean_of,
        ),
        Pool::Adaptive(oh, ow) => pool_ref(
            x,
            d,
            &adaptive_bins(d.2, oh),
            &adaptive_bins(d.3, ow),
            mean_of,
        ),
    }
}

/// `(N, C, H, W, O, kh, kw, stride, padding)`
type ConvCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

const CONV_CASES: [ConvCase; 8] = [
    (2, 3, 7, 6, 4, 3, 3, 1, 1),
    (3, 2, 9, 8, 5, 5, 5, 2, 2),
    (2, 4, 5, 5, 3, 1, 1, 1, 0),
    (2, 3, 8, 7, 2, 3, 3, 2, 1),
    (1, 2, 6, 9, 3, 3, 5, 1, 2),
    (2, 1, 5, 4, 2, 5, 5, 1, 2),
    (3, 2, 4, 4, 2, 3, 3, 3, 0),
    (2, 2, 3, 3, 3, 5, 5, 2, 2),
];

// ---------------------------------------------------------------- convolution

#[test]
fn the_cpu_takes_the_fast_path() {
    assert!(conv::uses_cpu_fast_path::<Cpu>());
}

fn conv2d_forward_matches_the_naive_reference<D: Device<f32>>(dev: &D, paths: &[Path]) {
    let mut r = rng(1);
    for (case, &(n, c, h, w, o, kh, kw, s, p)) in CONV_CASES.iter().enumerate() {
        let xd = (n, c, h, w);
        let x = uniform(&mut r, numel(xd));
        let wt = uniform(&mut r, o * c * kh * kw);
        let b = uniform(&mut r, o);
        let (want, od) = conv_ref(&f64s(&x), xd, &f64s(&wt), (o, kh, kw), &f64s(&b), s, p);
        for &path in paths {
            let out = conv_via(
                path,
                t4(dev, &x, xd),
                t4(dev, &wt, (o, c, kh, kw)),
                t1(dev, &b),
                s,
                p,
            );
            assert_eq!(*out.shape(), od, "case {case} {path:?}: shape");
            assert_close(&format!("case {case} {path:?}"), &out.as_vec(), &want, 1e-5);
        }
    }
}

fn conv2d_gradients_match_finite_differences_of_the_reference<D: Device<f32>>(
    dev: &D,
    paths: &[Path],
) {
    let mut r = rng(2);
    for (case, &(n, c, h, w, o, kh, kw, s, p)) in CONV_CASES.iter().enumerate() {
        let xd = (n, c, h, w);
        let wd = (o, c, kh, kw);
        let x = uniform(&mut r, numel(xd));
        let wt = uniform(&mut r, numel(wd));
        let b = uniform(&mut r, o);
        let od = conv_dims(xd, (o, kh, kw), s, p);
        let probe = uniform(&mut r, numel(od));
        let (x64, w64, b64, r64) = (f64s(&x), f64s(&wt), f64s(&b), f64s(&probe));
        let loss = |x: &[f64], wt: &[f64], b: &[f64]| {
            dot(&conv_ref(x, xd, wt, (o, kh, kw), b, s, p).0, &r64)
        };
        for &path in paths {
            let [_, dx, dw, db] =
                conv_and_grads(dev, path, (&x, xd), (&wt, wd), &b, (s, p), &probe);
            let tag = format!("case {case} {path:?}");
            check_fd(
                &format!("{tag} d/dx"),
                |v| loss(v, &w64, &b64),
                &x64,
                &dx,
                1e-3,
            );
            check_fd(
                &format!("{tag} d/dweight"),
                |v| loss(&x64, v, &b64),
                &w64,
                &dw,
                1e-3,
            );
            check_fd(
                &format!("{tag} d/dbias"),
                |v| loss(&x64, &w64, v),
                &b64,
                &db,
                1e-3,
            );
        }
    }
}

/// Finite differences through the ops themselves (f32 forward, f64 sum, eps = 1e-2) rather
/// than through the reference: the backward must match the function actually computed.
fn conv2d_gradients_match_finite_differences_of_the_op<D: Device<f32>>(dev: &D, paths: &[Path]) {
    let mut r = rng(3);
    let (xd, wd, s, p) = ((2, 3, 6, 5), (4, 3, 3, 3), 2, 1);
    let x = uniform(&mut r, numel(xd));
    let wt = uniform(&mut r, numel(wd));
    let b = uniform(&mut r, 4);
    for &path in paths {
        let od = *conv_via(path, t4(dev, &x, xd), t4(dev, &wt, wd), t1(dev, &b), s, p).shape();
        let probe = uniform(&mut r, numel(od));
        let loss = |x: &[f32], wt: &[f32], b: &[f32]| -> f64 {
            let out = conv_via(path, t4(dev, x, xd), t4(dev, wt, wd), t1(dev, b), s, p);
            dot(&f64s(&out.as_vec()), &f64s(&probe))
        };
        let (xt, wt_t, bt) = (t4(dev, &x, xd), t4(dev, &wt, wd), t1(dev, &b));
        let out = conv_via(
            path,
            xt.leaky_trace(),
            wt_t.leaky_trace(),
            bt.leaky_trace(),
            s,
            p,
        );
        let grads = (out * t4(dev, &probe, od)).sum::<(), _>().backward();
        let (gx, gw, gb) = (
            grads.get(&xt).as_vec(),
            grads.get(&wt_t).as_vec(),
            grads.get(&bt).as_vec(),
        );
        let eps = 1e-2f32;
        let fd = |f: &dyn Fn(f32) -> f64| (f(eps) - f(-eps)) / (2.0 * eps as f64);
        let near = |what: String, fd: f64, a: f32| {
            assert!(
                (fd - a as f64).abs() <= 1e-2 * (1.0 + fd.abs()),
                "{path:?} {what}: finite difference {fd}, backward {a}"
            );
        };
        for i in (0..x.len()).step_by(7) {
            let bump = |d: f32| {
                let mut v = x.clone();
                v[i] += d;
                loss(&v, &wt, &b)
            };
            near(format!("d/dx[{i}]"), fd(&bump), gx[i]);
        }
        for i in (0..wt.len()).step_by(5) {
            let bump = |d: f32| {
                let mut v = wt.clone();
                v[i] += d;
                loss(&x, &v, &b)
            };
            near(format!("d/dw[{i}]"), fd(&bump), gw[i]);
        }
        for i in 0..b.len() {
            let bump = |d: f32| {
                let mut v = b.clone();
                v[i] += d;
                loss(&x, &wt, &v)
            };
            near(format!("d/db[{i}]"), fd(&bump), gb[i]);
        }
    }
}

/// The first layer's input is untraced: parameters still get their gradients, and flat 1-D
/// parameters (as the MLP keeps them) reshaped on the way in find theirs by their own id.
fn conv2d_with_an_untraced_input_and_flat_parameters<D: Device<f32>>(dev: &D, paths: &[Path]) {
    let mut r = rng(4);
    let (xd, (o, c, kh, kw), s, p) = ((2, 3, 7, 7), (4, 3, 3, 3), 1, 1);
    let x = uniform(&mut r, numel(xd));
    let wt = uniform(&mut r, o * c * kh * kw);
    let b = uniform(&mut r, o);
    let od = conv_dims(xd, (o, kh, kw), s, p);
    let probe = uniform(&mut r, numel(od));
    let (x64, b64, r64) = (f64s(&x), f64s(&b), f64s(&probe));
    for &path in paths {
        let (wf, bt) = (t1(dev, &wt), t1(dev, &b));
        let w4 = wf.leaky_trace().reshape_like(&(o, c, kh, kw));
        let out = conv_via(path, t4(dev, &x, xd), w4, bt.leaky_trace(), s, p);
        let grads = (out * t4(dev, &probe, od)).sum::<(), _>().backward();
        check_fd(
            &format!("{path:?} flat d/dweight"),
            |v| dot(&conv_ref(&x64, xd, v, (o, kh, kw), &b64, s, p).0, &r64),
            &f64s(&wt),
            &grads.get(&wf).as_vec(),
            1e-3,
        );
    }
}

/// A permuted (non-contiguous) input: dfdx 0.13 has mishandled strides in some backward
/// kernels, so the gradient must land on the original tensor correctly.
fn conv2d_accepts_a_permuted_input<D: Device<f32>>(dev: &D, paths: &[Path]) {
    let mut r = rng(5);
    let (n, c, h, w) = (2, 2, 5, 6);
    let (o, k, s, p) = (3, 3, 1, 1);
    // Stored as [N, C, W, H] and viewed as [N, C, H, W].
    let stored = uniform(&mut r, n * c * w * h);
    let mut x = vec![0.0; stored.len()];
    for pl in 0..n * c {
        for y in 0..h {
            for xx in 0..w {
                x[pl * h * w + y * w + xx] = stored[pl * w * h + xx * h + y];
            }
        }
    }
    let wt = uniform(&mut r, o * c * k * k);
    let b = uniform(&mut r, o);
    let (want, od) = conv_ref(
        &f64s(&x),
        (n, c, h, w),
        &f64s(&wt),
        (o, k, k),
        &f64s(&b),
        s,
        p,
    );
    let probe = uniform(&mut r, numel(od));
    for &path in paths {
        let xs = t4(dev, &stored, (n, c, w, h));
        let xv = xs.leaky_trace().permute::<_, Axes4<0, 1, 3, 2>>();
        let (wt_t, bt) = (t4(dev, &wt, (o, c, k, k)), t1(dev, &b));
        let out = conv_via(path, xv, wt_t.leaky_trace(), bt.leaky_trace(), s, p);
        assert_close(&format!("{path:?} forward"), &out.as_vec(), &want, 1e-5);
        let grads = (out * t4(dev, &probe, od)).sum::<(), _>().backward();
        let (w64, b64, r64) = (f64s(&wt), f64s(&b), f64s(&probe));
        // The reference reads the stored layout through the same permutation.
        let loss = |st: &[f64]| {
            let mut v = vec![0.0; st.len()];
            for pl in 0..n * c {
                for y in 0..h {
                    for xx in 0..w {
                        v[pl * h * w + y * w + xx] = st[pl * w * h + xx * h + y];
                    }
                }
            }
            dot(
                &conv_ref(&v, (n, c, h, w), &w64, (o, k, k), &b64, s, p).0,
                &r64,
            )
        };
        check_fd(
            &format!("{path:?} d/dstored"),
            loss,
            &f64s(&stored),
            &grads.get(&xs).as_vec(),
            1e-3,
        );
    }
}

#[test]
fn fast_and_composed_convolutions_agree_on_a_wider_layer() {
    let dev = Cpu::default();
    let mut r = rng(6);
    let (xd, wd) = ((3, 8, 12, 11), (6, 8, 3, 3));
    let x = uniform(&mut r, numel(xd));
    let wt = uniform(&mut r, numel(wd));
    let b = uniform(&mut r, 6);
    let probe = uniform(&mut rng(7), numel(conv_dims(xd, (6, 3, 3), 1, 1)));
    let [a, b] =
        PATHS.map(|path| conv_and_grads(&dev, path, (&x, xd), (&wt, wd), &b, (1, 1), &probe));
    for (i, (what, tol)) in [
        ("forward", 1e-5),
        ("d/dx", 1e-4),
        ("d/dw", 1e-4),
        ("d/db", 1e-4),
    ]
    .into_iter()
    .enumerate()
    {
        assert_close(what, &a[i], &f64s(&b[i]), tol);
    }
}

/// 32 channels × 3×3 makes receptive fields of 288, more than one block of the CPU kernel's
/// inner dimension, and 5 samples split unevenly over threads and chunks. 64 channels take
/// the CPU path's transposed-convolution input gradient (`TRANSPOSED_MIN_CHANNELS`), here
/// with 3 samples (chunks of one and of several samples) and a 5×5 kernel; 72 channels
/// end its rotated kernel's last block of channels part way.
#[test]
fn a_deep_layer_matches_the_reference_on_both_paths() {
    deep_layer_matches_the_reference((5, 32, 6, 7), (10, 32, 3, 3), 1, 1, 8);
    deep_layer_matches_the_reference((3, 64, 5, 4), (6, 64, 5, 5), 1, 2, 9);
    deep_layer_matches_the_reference((2, 72, 4, 5), (5, 72, 3, 3), 1, 1, 10);
}

fn deep_layer_matches_the_reference(xd: Dims, wd: Dims, s: usize, p: usize, seed: u64) {
    let dev = Cpu::default();
    let mut r = rng(seed);
    let (o, _, kh, kw) = wd;
    let x = uniform(&mut r, numel(xd));
    let wt = uniform(&mut r, numel(wd));
    let b = uniform(&mut r, o);
    let (want, od) = conv_ref(&f64s(&x), xd, &f64s(&wt), (o, kh, kw), &f64s(&b), s, p);
    let probe = uniform(&mut r, numel(od));
    let (x64, w64, b64, r64) = (f64s(&x), f64s(&wt), f64s(&b), f64s(&probe));
    for path in PATHS {
        let [y, dx, dw, _] = conv_and_grads(&dev, path, (&x, xd), (&wt, wd), &b, (s, p), &probe);
        assert_close(&format!("{path:?} forward"), &y, &want, 1e-5);
        let loss = |x: &[f64], w: &[f64]| dot(&conv_ref(x, xd, w, (o, kh, kw), &b64, s, p).0, &r64);
        // A sample of coordinates: each costs two reference runs.
        check_fd_every(
            &format!("{path:?} d/dx"),
            |v| loss(v, &w64),
            &x64,
            &dx,
            1e-3,
            29,
        );
        check_fd_every(
            &format!("{path:?} d/dw"),
            |v| loss(&x64, v),
            &w64,
            &dw,
            1e-3,
            37,
        );
    }
}

/// 3×3 stride-1 layers wide enough (`C·O/(C+O)` ≥ 80) with outputs of 3×3 or more take the
/// CPU path's Winograd transforms (F(2×2, 3×3)): odd output sizes end in partial tiles,
/// paddings 0 to 2 move the tiles' reach past the edges, 260 filters end the products' row
/// panels part way, 163 channels end the kernel transforms' blocks of eight channels part
/// way, and 26 samples of 16×16 make two chunks of unequal size (the weight gradient summed
/// over both). Forward, input and weight gradients against the f64 reference, on both paths.
#[test]
fn winograd_layers_match_the_reference() {
    layers_match_the_reference(&[
        ((2, 160, 5, 7), (160, 160, 3, 3), (1, 1), 11),
        ((2, 163, 4, 5), (170, 163, 3, 3), (1, 1), 10),
        ((1, 128, 5, 6), (260, 128, 3, 3), (1, 0), 12),
        ((3, 160, 3, 4), (160, 160, 3, 3), (1, 2), 13),
        ((26, 160, 16, 16), (160, 160, 3, 3), (1, 1), 14),
    ]);
}

/// Narrower 3×3 stride-1 layers (`C·O/(C+O)` from 32 to 80) on maps of 32 tiles or more take
/// the banded Winograd path: each sample in bands of tile rows, the weight gradient summed per
/// span of samples. 9 samples make 5 spans (the last of one sample); 27 output rows make 14
/// tile rows in bands of 3, the last of 2; 29 columns end in partial tiles; paddings 0 to 2;
/// 128 filters from 64 channels, and 80 from 80.
#[test]
fn banded_winograd_layers_match_the_reference() {
    layers_match_the_reference(&[
        ((9, 80, 27, 29), (80, 80, 3, 3), (1, 1), 21),
        ((2, 64, 16, 18), (128, 64, 3, 3), (1, 0), 22),
        ((3, 80, 12, 13), (80, 80, 3, 3), (1, 2), 23),
    ]);
}

/// Wide layers (`C·O/(C+O)` ≥ 192) on maps so small that at most half of a kernel's taps land
/// inside them take the CPU path's products over those taps (`host::pairs`): VGG-16's 2×2
/// layers (here 400 channels, two blocks of the products' inner dimension, 5 samples, and 410
/// filters, ending a row panel part way), a 1×1 map (the centre tap only), a 5×5 kernel with
/// padding 2, and stride 2 with padding 2 on a 3×3 map.
#[test]
fn small_maps_match_the_reference() {
    layers_match_the_reference(&[
        ((5, 400, 2, 2), (410, 400, 3, 3), (1, 1), 16),
        ((3, 400, 1, 1), (400, 400, 3, 3), (1, 1), 17),
        ((2, 400, 2, 2), (400, 400, 5, 5), (1, 2), 18),
        ((3, 400, 3, 3), (400, 400, 3, 3), (2, 2), 19),
    ]);
}

/// Forward, input and weight gradients of each layer `(input, weight, (stride, padding),
/// seed)` against the f64 reference and its analytic gradients, on both paths.
fn layers_match_the_reference(layers: &[(Dims, Dims, (usize, usize), u64)]) {
    for &(xd, wd, (s, p), seed) in layers {
        let dev = Cpu::default();
        let mut r = rng(seed);
        let (o, _, kh, kw) = wd;
        let (x, wt, b) = (
            uniform(&mut r, numel(xd)),
            uniform(&mut r, numel(wd)),
            uniform(&mut r, o),
        );
        let (want, od) = conv_ref(&f64s(&x), xd, &f64s(&wt), (o, kh, kw), &f64s(&b), s, p);
        let probe = uniform(&mut r, numel(od));
        let (want_dx, want_dw) = conv_ref_grads(
            &f64s(&x),
            xd,
            &f64s(&wt),
            (o, kh, kw),
            &f64s(&probe),
            (s, p),
        );
        for path in PATHS {
            let [y, dx, dw, _] =
                conv_and_grads(&dev, path, (&x, xd), (&wt, wd), &b, (s, p), &probe);
            let what = format!("{path:?} {xd:?} stride {s} pad {p}");
            assert_close_to_scale(&format!("{what} forward"), &y, &want, 1e-5);
            assert_close_to_scale(&format!("{what} d/dx"), &dx, &want_dx, 1e-5);
            assert_close_to_scale(&format!("{what} d/dw"), &dw, &want_dw, 1e-5);
        }
    }
}

/// The Winograd (whole-batch and banded) and small-map paths' bits follow the shapes only: a
/// 2-core laptop and a 16-core node train the same model. Forward and both gradients of a
/// two-chunk Winograd layer, a banded one and a 2×2 map on one thread and on three.
#[test]
fn winograd_and_small_map_layers_give_the_same_bits_on_one_thread_and_on_three() {
    for (xd, wd, seed) in [
        ((26, 160, 16, 16), (160, 160, 3, 3), 15),
        ((7, 400, 2, 2), (400, 400, 3, 3), 20),
        ((9, 80, 27, 29), (80, 80, 3, 3), 24),
    ] {
        let (o, ..) = wd;
        let mut r = rng(seed);
        let (x, wt, b) = (
            uniform(&mut r, numel(xd)),
            uniform(&mut r, numel(wd)),
            uniform(&mut r, o),
        );
        let run = |threads: usize| {
            common::on_threads(threads, || {
                let dev = Cpu::default();
                let (xt, wt_t, bt) = (t4(&dev, &x, xd), t4(&dev, &wt, wd), t1(&dev, &b));
                let out =
                    conv::conv2d(xt.leaky_trace(), wt_t.leaky_trace(), bt.leaky_trace(), 1, 1);
                let fwd = out.as_vec();
                let grads = out.square().sum::<(), _>().backward();
                let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
                (
                    bits(fwd),
                    bits(grads.get(&xt).as_vec()),
                    bits(grads.get(&wt_t).as_vec()),
                )
            })
        };
        assert!(
            run(1) == run(3),
            "{xd:?}: the bits depend on the thread count"
        );
    }
}

#[test]
#[should_panic(expected = "input has 2 channels")]
fn conv2d_rejects_a_channel_mismatch() {
    let dev = Cpu::default();
    let x: Tensor4<Cpu> = dev.zeros_like(&(1, 2, 5, 5));
    let w: Tensor4<Cpu> = dev.zeros_like(&(4, 3, 3, 3));
    let b: Tensor<(usize,), f32, Cpu> = dev.zeros_like(&(4,));
    let _ = conv::conv2d(x, w, b, 1, 0);
}

#[test]
#[should_panic(expected = "larger than padded input")]
fn conv2d_rejects_a_kernel_larger_than_the_input() {
    let dev = Cpu::default();
    let x: Tensor4<Cpu> = dev.zeros_like(&(1, 1, 3, 3));
    let w: Tensor4<Cpu> = dev.zeros_like(&(1, 1, 5, 5));
    let b: Tensor<(usize,), f32, Cpu> = dev.zeros_like(&(1,));
    let _ = conv::conv2d(x, w, b, 1, 0);
}

// ---------------------------------------------------------------- pooling

const POOL_CASES: [(Pool, Dims); 14] = [
    (Pool::Max(2, 2), (2, 3, 7, 9)),
    (Pool::Max(2, 2), (1, 2, 8, 8)),
    (Pool::Max(3, 2), (2, 2, 9, 8)),
    (Pool::Max(3, 1), (1, 3, 5, 6)),
    (Pool::Max(1, 1), (2, 1, 3, 4)),
    (Pool::Avg(2, 2), (2, 3, 7, 9)),
    (Pool::Avg(3, 2), (2, 2, 9, 8)),
    (Pool::Avg(3, 1), (1, 3, 5, 6)),
    (Pool::Adaptive(3, 4), (2, 2, 7, 9)),
    (Pool::Adaptive(7, 7), (1, 2, 5, 5)),
    (Pool::Adaptive(1, 1), (2, 3, 6, 6)),
    (Pool::Adaptive(4, 4), (1, 2, 4, 4)),
    (Pool::Adaptive(3, 3), (2, 1, 8, 8)),
    (Pool::Adaptive(2, 5), (1, 2, 7, 3)),
];

fn pooling_forward_matches_the_naive_reference<D: Device<f32>>(dev: &D, paths: &[Path]) {
    let mut r = rng(10);
    for (case, &(pool, d)) in POOL_CASES.iter().enumerate() {
        let x = uniform(&mut r, numel(d));
        let (want, od) = pool_reference(pool, &f64s(&x), d);
        for &path in paths {
            let out = pool_via(path, pool, t4(dev, &x, d));
            assert_eq!(*out.shape(), od, "case {case} {pool:?} {path:?}: shape");
            assert_close(
                &format!("case {case} {pool:?} {path:?}"),
                &out.as_vec(),
                &want,
                1e-6,
            );
        }
    }
}

fn pooling_gradients_match_finite_differences<D: Device<f32>>(dev: &D, paths: &[Path]) {
    let mut r = rng(11);
    for (case, &(pool, d)) in POOL_CASES.iter().enumerate() {
        let x = distinct(&mut r, numel(d));
        let (_, od) = pool_reference(pool, &f64s(&x), d);
        let probe = uniform(&mut r, numel(od));
        let r64 = f64s(&probe);
        for &path in paths {
            let xt = t4(dev, &x, d);
            let out = pool_via(path, pool, xt.leaky_trace());
            let grads = (out * t4(dev, &probe, od)).sum::<(), _>().backward();
            check_fd(
                &format!("case {case} {pool:?} {path:?}"),
                |v| dot(&pool_reference(pool, v, d).0, &r64),
                &f64s(&x),
                &grads.get(&xt).as_vec(),
                1e-4,
            );
        }
    }
}

fn max_pool_gradients_match_finite_differences_of_the_op<D: Device<f32>>(dev: &D, paths: &[Path]) {
    let mut r = rng(12);
    let d = (2, 2, 7, 9);
    let x = distinct(&mut r, numel(d));
    for &path in paths {
        let od = *pool_via(path, Pool::Max(2, 2), t4(dev, &x, d)).shape();
        let probe = uniform(&mut r, numel(od));
        let xt = t4(dev, &x, d);
        let out = pool_via(path, Pool::Max(2, 2), xt.leaky_trace());
        let g = (out * t4(dev, &probe, od))
            .sum::<(), _>()
            .backward()
            .get(&xt)
            .as_vec();
        let loss = |v: &[f32]| {
            let out = pool_via(path, Pool::Max(2, 2), t4(dev, v, d));
            dot(&f64s(&out.as_vec()), &f64s(&probe))
        };
        let eps = 2e-3f32;
        for i in 0..x.len() {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += eps;
            down[i] -= eps;
            let fd = (loss(&up) - loss(&down)) / (2.0 * eps as f64);
            assert!(
                (fd - g[i] as f64).abs() <= 1e-2 * (1.0 + fd.abs()),
                "{path:?} d/dx[{i}]: finite difference {fd}, backward {}",
                g[i]
            );
        }
    }
}

#[test]
fn max_pool_passes_the_gradient_to_the_first_maximum_on_the_cpu() {
    let dev = Cpu::default();
    let x = t4(&dev, &[1.0, 3.0, 3.0, 2.0], (1, 1, 2, 2));
    let out = conv::max_pool2d(x.leaky_trace(), 2, 2);
    assert_eq!(out.as_vec(), vec![3.0]);
    let g = out.sum::<(), _>().backward().get(&x).as_vec();
    assert_eq!(g, vec![0.0, 1.0, 0.0, 0.0]);
}

/// 2×2 windows at stride 2 (VGG's pools, the CPU path's own loop): a NaN wins over numbers
/// and the first NaN over later ones, a later larger value over an earlier one, and of equal
/// zeros the first (−0 here) keeps its sign; the gradient goes to the winner.
#[test]
fn max_pool_propagates_nan_and_keeps_the_first_of_equals_on_the_cpu() {
    let dev = Cpu::default();
    let nan = f32::NAN;
    #[rustfmt::skip]
    let plane = [
        1.0, nan, 5.0, 5.0, -0.0, 0.0,
        7.0, nan, 7.0, 9.0, -0.0, -1.0,
    ];
    let x = t4(&dev, &plane, (1, 1, 2, 6));
    let out = conv::max_pool2d(x.leaky_trace(), 2, 2);
    let bits: Vec<u32> = out.as_vec().iter().map(|v| v.to_bits()).collect();
    assert_eq!(bits, [nan, 9.0, -0.0].map(f32::to_bits));
    let g = out.sum::<(), _>().backward().get(&x).as_vec();
    #[rustfmt::skip]
    let want = [
        0.0, 1.0, 0.0, 0.0, 1.0, 0.0,
        0.0, 0.0, 0.0, 1.0, 0.0, 0.0,
    ];
    assert_eq!(g, want);
}

fn flatten_keeps_pytorch_order_and_passes_gradients_through<D: Device<f32>>(dev: &D, _: &[Path]) {
    let mut r = rng(13);
    let d = (3, 2, 4, 5);
    let x = uniform(&mut r, numel(d));
    let xt = t4(dev, &x, d);
    let flat = conv::flatten(xt.leaky_trace());
    assert_eq!(*flat.shape(), (3, 40));
    assert_eq!(flat.as_vec(), x);
    let probe = uniform(&mut r, 120);
    let grads = (flat * dev.tensor_from_vec(probe.clone(), (3, 40)))
        .sum::<(), _>()
        .backward();
    check_fd(
        "flatten",
        |v| dot(v, &f64s(&probe)),
        &f64s(&x),
        &grads.get(&xt).as_vec(),
        1e-3,
    );
    // A permuted input flattens in its logical order.
    let xs = t4(dev, &x, (3, 2, 5, 4));
    let flat = conv::flatten(xs.permute::<_, Axes4<0, 1, 3, 2>>());
    let v = flat.as_vec();
    assert_eq!(
        v[1], x[4],
        "element (0,0,0,1) of the view is stored at (0,0,1,0)"
    );
}

// ---------------------------------------------------------------- a small network

/// conv(3→4, 3×3, pad 1) → ReLU → max-pool 2/2 → conv(4→5, 3×3, stride 2, pad 1) → flatten →
/// linear(20→3): chained tapes through every op, checked against the reference end to end.
fn a_small_network_backpropagates_through_every_layer<D: Device<f32>>(dev: &D, paths: &[Path]) {
    let mut r = rng(20);
    let xd = (2, 3, 9, 9);
    let (w1d, w2d) = ((4, 3, 3, 3), (5, 4, 3, 3));
    let params: Vec<Vec<f32>> = vec![
        uniform(&mut r, numel(xd)),
        uniform(&mut r, numel(w1d)),
        uniform(&mut r, 4),
        uniform(&mut r, numel(w2d)),
        uniform(&mut r, 5),
        uniform(&mut r, 3 * 20),
        uniform(&mut r, 3),
    ];
    let probe = uniform(&mut r, 2 * 3);
    let r64 = f64s(&probe);
    let reference = |p: &[Vec<f64>]| -> f64 {
        let (h1, d1) = conv_ref(&p[0], xd, &p[1], (4, 3, 3), &p[2], 1, 1);
        let h1: Vec<f64> = h1.iter().map(|v| v.max(0.0)).collect();
        let (h2, d2) = pool_ref(
            &h1,
            d1,
            &window_bins(9, 2, 2),
            &window_bins(9, 2, 2),
            max_of,
        );
        let (h3, d3) = conv_ref(&h2, d2, &p[3], (5, 3, 3), &p[4], 2, 1);
        assert_eq!(d3, (2, 5, 2, 2));
        let mut logits = Vec::new();
        for s in 0..2 {
            for k in 0..3 {
                logits.push(p[6][k] + dot(&p[5][k * 20..(k + 1) * 20], &h3[s * 20..(s + 1) * 20]));
            }
        }
        dot(&logits, &r64)
    };
    let p64: Vec<Vec<f64>> = params.iter().map(|v| f64s(v)).collect();
    for &path in paths {
        let x = t4(dev, &params[0], xd);
        let w1 = t4(dev, &params[1], w1d);
        let b1 = t1(dev, &params[2]);
        let w2 = t4(dev, &params[3], w2d);
        let b2 = t1(dev, &params[4]);
        let wl = dev.tensor_from_vec(params[5].clone(), (3, 20));
        let bl = t1(dev, &params[6]);
        let h = conv_via(
            path,
            x.leaky_trace(),
            w1.leaky_trace(),
            b1.leaky_trace(),
            1,
            1,
        )
        .relu();
        let h = pool_via(path, Pool::Max(2, 2), h);
        let h = conv_via(path, h, w2.leaky_trace(), b2.leaky_trace(), 2, 1);
        let flat = conv::flatten(h);
        let logits = flat.matmul(wl.leaky_trace().permute::<_, Axes2<1, 0>>())
            + bl.leaky_trace().broadcast_like::<_, Axis<0>>(&(2, 3));
        let value = dot(&f64s(&logits.as_vec()), &r64);
        assert!(
            (value - reference(&p64)).abs() < 1e-4,
            "{path:?}: network output {value} vs reference {}",
            reference(&p64)
        );
        let grads = (logits * dev.tensor_from_vec(probe.clone(), (2, 3)))
            .sum::<(), _>()
            .backward();
        let analytic = [
            grads.get(&x).as_vec(),
            grads.get(&w1).as_vec(),
            grads.get(&b1).as_vec(),
            grads.get(&w2).as_vec(),
            grads.get(&b2).as_vec(),
            grads.get(&wl).as_vec(),
            grads.get(&bl).as_vec(),
        ];
        for (i, a) in analytic.iter().enumerate() {
            check_fd(
                &format!("{path:?} parameter {i}"),
                |v| {
                    let mut p = p64.clone();
                    p[i] = v.to_vec();
                    reference(&p)
                },
                &p64[i],
                a,
                1e-5,
            );
        }
    }
}

// ---------------------------------------------------------------- dropout

fn dropout_is_deterministic_per_seed<D: Device<f32>>(dev: &D, _: &[Path]) {
    let x: Tensor<(usize, usize), f32, D> = dev.ones_like(&(40, 50));
    let a = conv::dropout(x.clone(), 0.5, 7, true).as_vec();
    let b = conv::dropout(x.clone(), 0.5, 7, true).as_vec();
    let c = conv::dropout(x, 0.5, 8, true).as_vec();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a, conv::dropout_mask(2000, 0.5, 7));
}

fn dropout_preserves_the_expectation<D: Device<f32>>(dev: &D, _: &[Path]) {
    let n = 200_000;
    let x: Tensor<(usize,), f32, D> = dev.ones_like(&(n,));
    let out = conv::dropout(x, 0.3, 1, true).as_vec();
    let zeros = out.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
    let mean = out.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    assert!((zeros - 0.3).abs() < 0.01, "dropped share {zeros}");
    assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
    assert!(out
        .iter()
        .all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
}

fn dropout_is_the_identity_at_p_zero_and_outside_training<D: Device<f32>>(dev: &D, _: &[Path]) {
    let v = uniform(&mut rng(30), 600);
    let x = t4(dev, &v, (2, 3, 10, 10));
    assert_eq!(conv::dropout(x.clone(), 0.0, 3, true).as_vec(), v);
    assert_eq!(conv::dropout(x.clone(), 0.5, 3, false).as_vec(), v);
    let all = conv::dropout(x, 1.0, 3, true).as_vec();
    assert!(
        all.iter().all(|&v| v == 0.0),
        "p = 1 drops everything, without NaN"
    );
}

fn dropout_gradient_is_the_mask<D: Device<f32>>(dev: &D, _: &[Path]) {
    let v = uniform(&mut rng(31), 300);
    let probe = uniform(&mut rng(32), 300);
    let x: Tensor<(usize, usize), f32, D> = dev.tensor_from_vec(v, (10, 30));
    let out = conv::dropout(x.leaky_trace(), 0.4, 9, true);
    let g = (out * dev.tensor_from_vec(probe.clone(), (10, 30)))
        .sum::<(), _>()
        .backward()
        .get(&x)
        .as_vec();
    let mask = conv::dropout_mask(300, 0.4, 9);
    for i in 0..300 {
        assert!((g[i] - mask[i] * probe[i]).abs() < 1e-6, "d/dx[{i}]");
    }
}

#[test]
fn relu_gives_dfdx_relus_bits_forward_and_backward() {
    // The CPU's parallel ReLU against dfdx's own, on a map past one task's chunk and on a
    // small one: NaN, infinities, signed zeros, subnormals and ordinary values, with output
    // gradients that include infinities and NaN (`0 · ∞` must stay NaN, as in dfdx).
    let dev = Cpu::default();
    let special = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1e-40,
        -1e-40,
        2.5,
        -2.5,
    ];
    let mut r = rng(11);
    for d in [(2, 3, 4, 5), (3, 8, 41, 47)] {
        let n = numel(d);
        let mut x = uniform(&mut r, n);
        let mut g = uniform(&mut r, n);
        for i in 0..n {
            if i % 7 == 0 {
                x[i] = special[(i / 7) % special.len()];
            }
            if i % 11 == 0 {
                g[i] = special[(i / 11) % special.len()];
            }
        }
        let run = |ours: bool| {
            let xt = t4(&dev, &x, d);
            let y = if ours {
                conv::relu(xt.clone())
            } else {
                xt.clone().relu()
            };
            let traced = if ours {
                conv::relu(xt.clone().leaky_traced())
            } else {
                xt.clone().leaky_traced().relu()
            };
            let grads = (traced * t4(&dev, &g, d)).sum().backward();
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            (bits(y.as_vec()), bits(grads.get(&xt).as_vec()))
        };
        let (ours, dfdx) = (run(true), run(false));
        assert!(ours.0 == dfdx.0, "forward differs from dfdx's at {d:?}");
        assert!(ours.1 == dfdx.1, "gradient differs from dfdx's at {d:?}");
    }
}

#[test]
fn a_convolution_and_its_relu_in_one_op_give_the_bits_of_the_two_apart() {
    // Each of the CPU path's methods (whole-batch and banded Winograd, the products over
    // taps on a 2×2 map, the direct path), biases that push about half the outputs below
    // zero, and output gradients with signed zeros, infinities and NaN where ReLU passes
    // them and where it blocks them (`0 · ∞` is NaN either way): outputs and the gradients
    // of the input, the weight and the bias, bit for bit.
    let dev = Cpu::default();
    let special = [f32::NAN, f32::INFINITY, -0.0, 0.0, f32::NEG_INFINITY];
    for (xd, wd, seed) in [
        ((3, 160, 6, 6), (160, 160, 3, 3), 41),
        ((2, 64, 16, 18), (128, 64, 3, 3), 42),
        // Maps whose tile rows the register kernels transform (VGG's 8×8 and 16×16 widths),
        // where the output is written row by row.
        ((2, 160, 8, 8), (160, 160, 3, 3), 45),
        ((2, 64, 16, 16), (64, 64, 3, 3), 46),
        ((3, 400, 2, 2), (410, 400, 3, 3), 43),
        ((2, 3, 9, 7), (8, 3, 3, 3), 44),
    ] {
        let mut r = rng(seed);
        let (x, wt) = (uniform(&mut r, numel(xd)), uniform(&mut r, numel(wd)));
        let b: Vec<f32> = uniform(&mut r, wd.0).iter().map(|v| v - 0.5).collect();
        let od = (xd.0, wd.0, xd.2, xd.3);
        let mut probe = uniform(&mut r, numel(od));
        for (i, p) in probe.iter_mut().enumerate().filter(|(i, _)| i % 13 == 0) {
            *p = special[(i / 13) % special.len()];
        }
        let run = |fused: bool| {
            let (xt, wt_t, bt) = (t4(&dev, &x, xd), t4(&dev, &wt, wd), t1(&dev, &b));
            let (xl, wl, bl) = (xt.leaky_trace(), wt_t.leaky_trace(), bt.leaky_trace());
            let out = match fused {
                true => conv::conv2d_fused(xl, wl, bl, 1, 1, true),
                false => conv::relu(conv::conv2d(xl, wl, bl, 1, 1)),
            };
            let y = out.as_vec();
            let grads = (out * t4(&dev, &probe, od)).sum::<(), _>().backward();
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            [
                y,
                grads.get(&xt).as_vec(),
                grads.get(&wt_t).as_vec(),
                grads.get(&bt).as_vec(),
            ]
            .map(bits)
        };
        let (fused, apart) = (run(true), run(false));
        assert!(
            fused[0].iter().filter(|&&y| y == 0).count() > fused[0].len() / 5,
            "ReLU blocks a good part of the outputs at {xd:?}"
        );
        for (k, what) in ["output", "d/dx", "d/dw", "d/db"].iter().enumerate() {
            assert!(fused[k] == apart[k], "{what} differs at {xd:?}");
        }
    }
}

#[test]
fn a_weight_two_convolutions_share_gets_the_sum_of_their_gradients() {
    // The first backward pass to reach the weight writes its gradient whole, the second adds
    // to it: the Winograd, banded and small-map paths, against each use's gradient alone.
    let dev = Cpu::default();
    for (xd, wd, seed) in [
        ((2, 160, 6, 6), (160, 160, 3, 3), 51),
        ((2, 64, 16, 18), (128, 64, 3, 3), 52),
        ((2, 400, 2, 2), (410, 400, 3, 3), 53),
    ] {
        let mut r = rng(seed);
        let (x1, x2) = (uniform(&mut r, numel(xd)), uniform(&mut r, numel(xd)));
        let (wt, b) = (uniform(&mut r, numel(wd)), uniform(&mut r, wd.0));
        let od = (xd.0, wd.0, xd.2, xd.3);
        let (p1, p2) = (uniform(&mut r, numel(od)), uniform(&mut r, numel(od)));
        // d/dw of Σ p1·conv(x1, w) (+ Σ p2·conv(x2, w) where both are used).
        let grad = |uses: &[(&[f32], &[f32])]| {
            let (w, bt) = (t4(&dev, &wt, wd), t1(&dev, &b));
            // Each use traced on its own tape, merged in the sum: one gradient for `w`'s id.
            let loss = uses
                .iter()
                .map(|(x, p)| {
                    let y =
                        conv::conv2d(t4(&dev, x, xd), w.leaky_trace(), bt.clone().retaped(), 1, 1);
                    (y * t4(&dev, p, od)).sum::<(), _>()
                })
                .reduce(|a, b| a + b)
                .expect("a use");
            let grads = loss.backward();
            grads.get(&w).as_vec()
        };
        let (one, two) = (grad(&[(&x1, &p1)]), grad(&[(&x2, &p2)]));
        let both = grad(&[(&x1, &p1), (&x2, &p2)]);
        let sum: Vec<f32> = one.iter().zip(&two).map(|(a, b)| a + b).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&both) == bits(&sum), "shared weight at {xd:?}");
    }
}
