//! cfpipe's patch to dfdx 0.13.0 (see `vendor/dfdx/PATCH.md`): a contiguous CPU tensor's
//! elements as a slice, so code outside the crate can compute on them in place instead of
//! copying them out with `copy_into` and back with `copy_from`.

use super::Cpu;
use crate::{shapes::*, tensor::Tensor};

impl<S: Shape, E: Unit, T> Tensor<S, E, Cpu, T> {
    /// Whether the storage holds exactly the elements, in logical (row-major) order.
    fn is_contiguous(&self) -> bool {
        self.strides == self.shape.strides() && self.data.len() == self.shape.num_elements()
    }

    /// The elements in row-major order, or `None` for a tensor laid out otherwise (permuted
    /// or broadcast; `contiguous()` makes one that is not).
    pub fn as_contiguous_slice(&self) -> Option<&[E]> {
        self.is_contiguous().then(|| self.data.as_slice())
    }

    /// [`Self::as_contiguous_slice`], for writing: storage shared with a clone of this tensor
    /// is copied first, as `copy_from` does, so no other tensor changes.
    pub fn as_contiguous_mut_slice(&mut self) -> Option<&mut [E]> {
        if !self.is_contiguous() {
            return None;
        }
        Some(std::sync::Arc::make_mut(&mut self.data).as_mut_slice())
    }
}
