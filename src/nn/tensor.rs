//! Tensor aliases with run-time dims (cfpipe's layers are sized by the pipeline, not the type
//! system) and the conversions between host data and them that every model and stage shares.

use dfdx::prelude::*;

/// A class label local to a task's head. 16 bits, so that a head can have more than 256
/// classes (ImageNet's 1000); stored as U8 in split artifacts when every label fits, as U16
/// otherwise.
pub type Label = u16;

pub type Vector<D, T = NoneTape> = Tensor<(usize,), f32, D, T>;
pub type Matrix<D, T = NoneTape> = Tensor<(usize, usize), f32, D, T>;

/// `[N, C, H, W]`, row-major (NCHW), like PyTorch.
pub type Tensor4<D, T = NoneTape> = Tensor<(usize, usize, usize, usize), f32, D, T>;

/// `[batch, in]` f32 tensor from byte images scaled to k/255.
pub fn images_to_tensor<D: Device<f32>>(dev: &D, pixels: &[u8], dim: usize) -> Matrix<D> {
    let data: Vec<f32> = pixels.iter().map(|&p| p as f32 / 255.0).collect();
    dev.tensor_from_vec(data, (pixels.len() / dim.max(1), dim))
}

/// One-hot targets, transposed: `[classes, batch]`.
pub fn one_hot_t<D: Device<f32>>(dev: &D, labels: &[Label], classes: usize) -> Matrix<D> {
    let n = labels.len();
    let mut data = vec![0f32; n * classes];
    for (i, &y) in labels.iter().enumerate() {
        data[y as usize * n + i] = 1.0;
    }
    dev.tensor_from_vec(data, (classes, n))
}

/// Index of the largest logit per row (first wins on ties, like `torch.argmax`).
pub fn argmax_rows(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks_exact(classes)
        .map(|row| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            best
        })
        .collect()
}
