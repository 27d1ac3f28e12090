//! Dense (fully connected) layers with a fused activation, `act(W·x + b)`, on run-time-sized
//! matrices, for the MLP's layers and a conv model's classifier. The layout follows the conv
//! ops: one function, [`dense`], with two implementations chosen by the device type:
//! - the **composed** path uses public dfdx ops (matmul, broadcast add, relu/prelu), so it
//!   runs on every device, CUDA included, and dfdx derives its backward pass;
//! - the **CPU fast path** ([`host`]) computes on host buffers with the packed sgemm of
//!   [`crate::nn::gemm`] (AVX-512 on stable Rust where the CPU has it, the same bits on every
//!   CPU and thread count) and records one backward op that writes the weight, bias and input
//!   gradients straight into dfdx's gradient buffers. dfdx's own CPU matmul is gemm 0.15,
//!   which stops at AVX2 on stable, and its ReLU backward (`choose`) and broadcast adds cost
//!   a pass each; here bias, activation and their backward ride along the products.
//!
//! Where the batch sits is explicit ([`Side`]): the MLP computes in transposed form
//! (`zᵀ = W·xᵀ`, activations `[units, batch]`), a conv model's classifier in row form
//! (`z = x·Wᵀ`, `[batch, units]`); the fast path takes either as a free view.

use super::tensor::{Matrix, Vector};
use dfdx::prelude::*;

mod host;

/// The nonlinearity applied to a dense layer's output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Identity,
    Relu,
    /// Leaky ReLU with this negative slope, in (0, 1) (`spec` checks it).
    LeakyRelu(f32),
}

impl Activation {
    /// ReLU for slope 0, leaky ReLU otherwise (the model's `negative_slope` convention).
    pub fn hidden(negative_slope: f32) -> Self {
        if negative_slope == 0.0 {
            Activation::Relu
        } else {
            Activation::LeakyRelu(negative_slope)
        }
    }
}

/// Where the batch is in a dense layer's input or output matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `[batch, features]`: one sample per row.
    Rows,
    /// `[features, batch]`: one sample per column (the MLP's transposed form).
    Columns,
}

/// `act(W·x + b)` for every sample of `x`: `weight [out, in]`, `bias [out]`, `x` with the batch
/// on side `input`, the result with the batch on side `output`. Outputs carry the parameters'
/// tape `T`, which absorbs the input's (`T: Merge<TX>`); an untraced input (`NoneTape`) gets no
/// gradient, and the CPU path then skips that product.
///
/// Panics on mismatched shapes.
pub fn dense<D, T, TX>(
    x: Matrix<D, TX>,
    weight: Matrix<D, T>,
    bias: Vector<D, T>,
    act: Activation,
    input: Side,
    output: Side,
) -> Matrix<D, T>
where
    D: Device<f32>,
    T: Tape<f32, D> + Merge<TX>,
    TX: Tape<f32, D>,
{
    let (out, inp) = *weight.shape();
    let (batch, features) = match input {
        Side::Rows => *x.shape(),
        Side::Columns => (x.shape().1, x.shape().0),
    };
    assert_eq!(
        features, inp,
        "dense: the input has {features} features, the weight {inp}"
    );
    assert_eq!(bias.shape().0, out, "dense: bias and weight disagree");
    if super::host::uses_cpu_fast_path::<D>() {
        host::dense(x, weight, bias, act, input, output, batch)
    } else {
        composed(x, weight, bias, act, input, output, batch)
    }
}

/// [`dense`] from dfdx ops. The column form is the MLP's historical forward (`W·xᵀ`, the bias
/// broadcast along the batch), the row form the conv models' (`x·Wᵀ`).
fn composed<D, T, TX>(
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
    let out = weight.shape().0;
    // One tape for the whole layer; gradients are routed by tensor id, so an operand whose
    // tape was moved away still receives its gradient.
    let (x, tx) = x.split_tape();
    let (w, tw) = weight.split_tape();
    let (b, tb) = bias.split_tape();
    let tape = tw.merge(tb).merge(tx);
    let z = match output {
        Side::Columns => {
            let w = w.put_tape(tape);
            let wx = match input {
                Side::Columns => w.matmul(x),
                Side::Rows => w.matmul(x.permute::<_, Axes2<1, 0>>()),
            };
            wx + b.broadcast_like::<_, Axis<1>>(&(out, batch))
        }
        Side::Rows => {
            let xr = match input {
                Side::Rows => x.put_tape(tape),
                Side::Columns => x.permute::<_, Axes2<1, 0>>().put_tape(tape),
            };
            xr.matmul(w.permute::<_, Axes2<1, 0>>()) + b.broadcast_like::<_, Axis<0>>(&(batch, out))
        }
    };
    match act {
        Activation::Identity => z,
        Activation::Relu => z.relu(),
        Activation::LeakyRelu(s) => z.prelu(s),
    }
}

#[cfg(test)]
mod tests;
