//! The CPU fast path of [`super::dense`]: the products on host buffers through
//! [`crate::nn::gemm`], the bias and activation fused into the output pass, and a backward op
//! written by hand. Only reached when `D` is `Cpu`.
//!
//! The forward pass starts each output element from its bias and accumulates the product into
//! it; the backward pass masks the output gradient by the activation's derivative (taken from
//! the output's sign: with a slope in (0, 1), `act(z) > 0` exactly when `z > 0`), sums the
//! bias gradient over the batch in sample order, and accumulates `∂W` and `∂x` into dfdx's
//! gradient buffers. Every sum has a fixed order, so the bits do not depend on the thread
//! count.

use super::{Activation, Side};
use crate::nn::gemm::{gemm, gemm_pair, Mat};
use crate::nn::host::{add_row_sums, host_slice, host_vec};
use crate::nn::tensor::{Matrix, Vector};
use dfdx::prelude::*;

/// A `[rows, cols]` buffer with the batch on `side`, viewed as `[features, batch]`.
fn columns(data: &[f32], side: Side, features: usize, batch: usize) -> Mat<'_> {
    match side {
        Side::Columns => Mat::new(data, features, batch),
        Side::Rows => Mat::new(data, batch, features).t(),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn dense<D, T, TX>(
    x: Matrix<D, TX>,
    weight: Matrix<D, T>,
    bias: Vector<D, T>,
    act: Activation,
    input: Side,
    output: Side,
    batch: usize,
) -> Matrix<D, T>
where
    D: Device<f32>,
    T: Tape<f32, D> + Merge<TX>,
    TX: Tape<f32, D>,
{
    let (x, tx) = x.contiguous().split_tape();
    let (w, tw) = weight.contiguous().split_tape();
    let (b, tb) = bias.contiguous().split_tape();
    let (out, inp) = *w.shape();
    let dev = x.device().clone();
    let (xs, ws, bs) = (host_slice(&x), host_slice(&w), host_slice(&b));

    // z = W·x + b, in the output's layout: the bias first, the product accumulated onto it.
    let mut zs = vec![0.0f32; out * batch];
    let wm = Mat::new(ws, out, inp);
    let xc = columns(xs, input, inp, batch);
    match output {
        Side::Columns => {
            for (row, &bv) in zs.chunks_exact_mut(batch.max(1)).zip(bs) {
                row.fill(bv);
            }
            gemm(wm, xc, &mut zs, true);
        }
        Side::Rows => {
            for row in zs.chunks_exact_mut(out.max(1)) {
                row.copy_from_slice(bs);
            }
            gemm(xc.t(), wm.t(), &mut zs, true);
        }
    }
    match act {
        Activation::Identity => {}
        Activation::Relu => zs.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::LeakyRelu(s) => zs.iter_mut().for_each(|v| {
            if *v <= 0.0 {
                *v *= s
            }
        }),
    }
    // ∂x is computed only when the input carries a tape of its own: a hidden layer's input
    // (the previous layer's output) or an input traced for saliency. The first layer's input
    // is untraced in training, and its [batch, 784] gradient would be thrown away.
    let need_x = TX::OWNS_TAPE;
    let keep = T::OWNS_TAPE || need_x;
    let shape = match output {
        Side::Columns => (out, batch),
        Side::Rows => (batch, out),
    };
    let result: Matrix<D> = dev.tensor_from_vec(zs, shape);
    let mut tape = tw.merge(tb).merge(tx);
    if !keep {
        return result.put_tape(tape);
    }
    let (x_id, w_id, b_id, out_id) = (x.ghost(), w.ghost(), b.ghost(), result.ghost());
    // The backward pass reads the output's signs, the input and the weight: the tensors
    // themselves, shared (nothing writes a tensor in place while another holds it).
    let output_t = result.clone();
    tape.add_backward_op(move |grads| {
        let (xs, ws, signs) = (host_slice(&x), host_slice(&w), host_slice(&output_t));
        // Moved out (and back, masked) so the other gradients can be borrowed meanwhile.
        let mut gz = std::mem::take(host_vec::<D>(grads.get_or_alloc_mut(&out_id)?));
        match act {
            Activation::Identity => {}
            // Selects, not conditional stores, so the masks vectorise.
            Activation::Relu => gz
                .iter_mut()
                .zip(signs)
                .for_each(|(g, &a)| *g = if a <= 0.0 { 0.0 } else { *g }),
            Activation::LeakyRelu(s) => gz
                .iter_mut()
                .zip(signs)
                .for_each(|(g, &a)| *g = if a <= 0.0 { *g * s } else { *g }),
        }
        let gc = columns(&gz, output, out, batch);
        {
            let gb = host_vec::<D>(grads.get_or_alloc_mut(&b_id)?);
            match output {
                Side::Columns => add_row_sums(&gz, batch, gb),
                Side::Rows => {
                    let mut sums = vec![0.0f32; out];
                    for row in gz.chunks_exact(out.max(1)) {
                        sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                    }
                    gb.iter_mut().zip(&sums).for_each(|(g, s)| *g += s);
                }
            }
        }
        // ∂W [out, in] += ∂z [out, batch] · xᵀ [batch, in].
        let xt = columns(xs, input, inp, batch).t();
        if need_x {
            // ∂x in the input's layout: Wᵀ·∂z as columns, or ∂z·W as rows; both products at
            // once. ∂x is moved out (and back) so that ∂W can be borrowed meanwhile.
            let mut gx = std::mem::take(host_vec::<D>(grads.get_or_alloc_mut(&x_id)?));
            let gw = host_vec::<D>(grads.get_or_alloc_mut(&w_id)?);
            let wm = Mat::new(ws, out, inp);
            let (a, b) = match input {
                Side::Columns => (wm.t(), gc),
                Side::Rows => (gc.t(), wm),
            };
            gemm_pair((gc, xt, gw, true), (a, b, &mut gx, true));
            *host_vec::<D>(grads.get_or_alloc_mut(&x_id)?) = gx;
        } else {
            let gw = host_vec::<D>(grads.get_or_alloc_mut(&w_id)?);
            gemm(gc, xt, gw, true);
        }
        // The masked ∂z goes back under the output's id (the buffer was only borrowed):
        // nothing reads an intermediate's gradient after its backward op, but dfdx expects
        // every allocated gradient to keep its length.
        *host_vec::<D>(grads.get_or_alloc_mut(&out_id)?) = gz;
        Ok(())
    });
    result.put_tape(tape)
}
