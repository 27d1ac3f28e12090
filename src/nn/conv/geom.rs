//! The sizes of one convolution or pooling, checked once up front, and how the CPU path
//! cuts a batch into spans and chunks. Both paths of every op read their index arithmetic
//! from here.

use std::ops::Range;

/// Sizes of one convolution, checked once up front.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvGeom {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

/// Floats of im2col columns the CPU path materialises at once per thread: 4 MiB, big enough
/// for an efficient gemm, small enough to stay cache-friendly and to bound memory on large
/// batches.
pub(super) const COLS_BUDGET: usize = 1 << 20;

/// How many spans the CPU path cuts a batch into at most (see [`ConvGeom::split`]).
pub(super) const SPANS: usize = 8;
/// Column floats (16 MiB) up to which a whole batch is one chunk (see [`ConvGeom::split`]).
pub(super) const WHOLE_BATCH_BUDGET: usize = 1 << 22;

impl ConvGeom {
    pub(super) fn new(
        (n, c, h, w): (usize, usize, usize, usize),
        (o, wc, kh, kw): (usize, usize, usize, usize),
        bias_len: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        assert_eq!(
            wc, c,
            "conv2d: weight [O, C, kh, kw] has C = {wc}, input has {c} channels"
        );
        assert_eq!(
            bias_len, o,
            "conv2d: bias has {bias_len} entries for {o} filters"
        );
        assert!(c > 0 && h > 0 && w > 0, "conv2d: empty input {c}×{h}×{w}");
        assert!(stride > 0, "conv2d: stride must be positive");
        assert!(kh > 0 && kw > 0, "conv2d: empty kernel");
        assert!(
            h + 2 * pad >= kh && w + 2 * pad >= kw,
            "conv2d: kernel {kh}×{kw} larger than padded input {}×{}",
            h + 2 * pad,
            w + 2 * pad
        );
        let ho = (h + 2 * pad - kh) / stride + 1;
        let wo = (w + 2 * pad - kw) / stride + 1;
        ConvGeom {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            stride,
            pad,
            ho,
            wo,
        }
    }

    /// The convolution that computes this one's input gradient from its output gradient, where
    /// that is a plain convolution: stride 1, a square kernel and `padding < kernel`. It reads
    /// the output gradient `[N, O, Ho, Wo]` padded by `kernel − 1 − padding`, and its weight is
    /// this one's rotated by 180° with the channel axes swapped. Every input pixel then gathers
    /// its gradient in one product over `O·kh·kw`, instead of a product over `O` followed by
    /// col2im's scattered adds.
    pub(super) fn transposed(&self) -> Option<ConvGeom> {
        (self.stride == 1 && self.kh == self.kw && self.pad < self.kh).then(|| ConvGeom {
            c: self.o,
            h: self.ho,
            w: self.wo,
            o: self.c,
            pad: self.kh - 1 - self.pad,
            ho: self.h,
            wo: self.w,
            ..*self
        })
    }

    /// Length of one receptive field, `C·kh·kw`.
    pub(super) fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output pixels per sample.
    pub(super) fn p(&self) -> usize {
        self.ho * self.wo
    }

    /// Input position read by output position `o` along an axis for kernel offset `k`, if it is
    /// inside the unpadded input of length `len`.
    pub(super) fn src(&self, o: usize, k: usize, len: usize) -> Option<usize> {
        (o * self.stride + k)
            .checked_sub(self.pad)
            .filter(|&i| i < len)
    }

    /// Output columns `lo..hi` whose input column for kernel offset `kj` is inside the input.
    pub(super) fn valid_cols(&self, kj: usize) -> Range<usize> {
        let lo = self.pad.saturating_sub(kj).div_ceil(self.stride);
        let hi = if self.w + self.pad > kj {
            ((self.w + self.pad - kj - 1) / self.stride + 1).min(self.wo)
        } else {
            0
        };
        lo..hi.max(lo)
    }

    /// How the CPU path splits the batch: `(chunk, span)` samples, where a chunk's columns fit
    /// the budget, and each thread takes one span of whole chunks.
    ///
    /// The weight gradient is summed per span, then over spans in order, so the split fixes
    /// its rounding: it depends on the shapes only, never on the thread count, or a 2-core
    /// laptop and a 16-core cluster node would train different bits from the same seed.
    /// [`SPANS`] spans keep that many threads busy.
    ///
    /// A batch whose columns all fit [`WHOLE_BATCH_BUDGET`] (the deep, small-map layers, where
    /// the weights are largest) is one chunk in one span: its products are large enough for
    /// the sgemm's tiles to keep every thread busy, and eight spans would each repack the whole
    /// weight and allocate, zero and finally sum a full weight gradient of their own.
    pub(super) fn split(&self) -> (usize, usize) {
        if self.k() * self.p() * self.n <= WHOLE_BATCH_BUDGET {
            return (self.n.max(1), self.n.max(1));
        }
        let fit = COLS_BUDGET / (self.k() * self.p()).max(1);
        let chunk = fit.min(self.n.div_ceil(SPANS)).max(1);
        (chunk, self.n.div_ceil(chunk).div_ceil(SPANS).max(1) * chunk)
    }
}

/// Which reduction a pooling window applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PoolKind {
    Max,
    Avg,
}

/// Per-axis pooling bins: output index `i` covers input indices `start[i]..end[i]`.
#[derive(Debug, Clone)]
pub(super) struct Bins {
    pub(super) start: Vec<usize>,
    pub(super) end: Vec<usize>,
}

impl Bins {
    pub(super) fn windows(len: usize, kernel: usize, stride: usize) -> Self {
        assert!(
            kernel > 0 && stride > 0,
            "pooling: kernel and stride must be positive"
        );
        assert!(
            len >= kernel,
            "pooling: kernel {kernel} larger than input side {len}"
        );
        let out = (len - kernel) / stride + 1;
        let start: Vec<usize> = (0..out).map(|i| i * stride).collect();
        let end = start.iter().map(|s| s + kernel).collect();
        Bins { start, end }
    }

    pub(super) fn adaptive(len: usize, out: usize) -> Self {
        assert!(out > 0, "adaptive pooling: output size must be positive");
        assert!(len > 0, "adaptive pooling: empty input");
        Bins {
            start: (0..out).map(|i| i * len / out).collect(),
            end: (0..out).map(|i| ((i + 1) * len).div_ceil(out)).collect(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.start.len()
    }

    pub(super) fn range(&self, i: usize) -> Range<usize> {
        self.start[i]..self.end[i]
    }

    /// Whether bin `i` is `2i..2i + 2` for every `i` (2-wide windows at stride 2).
    pub(super) fn pairs(&self) -> bool {
        (0..self.len()).all(|i| self.range(i) == (2 * i..2 * i + 2))
    }

    pub(super) fn widest(&self) -> usize {
        (0..self.len())
            .map(|i| self.range(i).len())
            .max()
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
pub(super) struct PoolGeom {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) bh: Bins,
    pub(super) bw: Bins,
}

impl PoolGeom {
    pub(super) fn windows(
        (n, c, h, w): (usize, usize, usize, usize),
        kernel: usize,
        stride: usize,
    ) -> Self {
        PoolGeom {
            n,
            c,
            h,
            w,
            bh: Bins::windows(h, kernel, stride),
            bw: Bins::windows(w, kernel, stride),
        }
    }

    pub(super) fn adaptive(
        (n, c, h, w): (usize, usize, usize, usize),
        oh: usize,
        ow: usize,
    ) -> Self {
        PoolGeom {
            n,
            c,
            h,
            w,
            bh: Bins::adaptive(h, oh),
            bw: Bins::adaptive(w, ow),
        }
    }

    pub(super) fn out_shape(&self) -> (usize, usize, usize, usize) {
        (self.n, self.c, self.bh.len(), self.bw.len())
    }

    /// Output cells per plane.
    pub(super) fn p(&self) -> usize {
        self.bh.len() * self.bw.len()
    }

    /// Input elements of output cell `(i, j)` in one plane, row-major.
    pub(super) fn cell(&self, i: usize, j: usize) -> impl Iterator<Item = usize> + '_ {
        self.cell_rows(i, j).flatten()
    }

    /// Output cells `(i, j)` of a plane, row-major.
    pub(super) fn cells(&self) -> impl Iterator<Item = (usize, usize)> {
        let ow = self.bw.len();
        (0..self.bh.len()).flat_map(move |i| (0..ow).map(move |j| (i, j)))
    }

    /// The same elements as [`Self::cell`], one contiguous range per input row.
    pub(super) fn cell_rows(&self, i: usize, j: usize) -> impl Iterator<Item = Range<usize>> + '_ {
        let (w, cols) = (self.w, self.bw.range(j));
        self.bh
            .range(i)
            .map(move |y| y * w + cols.start..y * w + cols.end)
    }
}
