//! The CPU fast path: loops and matrix products on host buffers, with backward ops written by
//! hand. Only reached when `D` is `Cpu` (checked by [`uses_cpu_fast_path`]); the entry points
//! stay generic over `D` so that the dispatching functions compile for every device.

use super::geom::*;
use super::*;
use crate::nn::gemm::{gemm, Mat};
use crate::nn::host::{add_row_sums, grow_zeroed, host_slice, host_vec, zeros, Fresh, Piece};
use std::mem::MaybeUninit;

pub(super) mod pairs;
pub(super) mod winograd;

/// How the CPU path computes a convolution, chosen by its shape alone (never the batch, so a
/// sample's output does not depend on the batch it came in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    /// im2col and one product per chunk of samples.
    Direct,
    /// Winograd's F(2×2, 3×3) for wide 3×3 stride-1 layers ([`winograd`]).
    Winograd,
    /// The same, band by band on each core, for narrower layers ([`winograd::banded`]).
    WinogradBanded,
    /// Products over the taps that land inside a small map ([`pairs`]).
    Pairs,
}

impl Method {
    pub(super) fn of(g: &ConvGeom) -> Method {
        if winograd::applies(g) {
            Method::Winograd
        } else if winograd::banded::applies(g) {
            Method::WinogradBanded
        } else if pairs::applies(g) {
            Method::Pairs
        } else {
            Method::Direct
        }
    }
}

/// The runs of `len` in `buf` grouped by row, for a buffer whose runs cycle through `rows`
/// rows: group `r` holds runs `r`, `rows + r`, … in order, and the groups follow each other
/// (take them with `chunks_mut(runs / rows)`). For a `[16, rows, len]` buffer, a row's 16
/// positions (so one task writes everything of one channel); for `[ns, rows, plane]`, a
/// channel's plane in every sample. One allocation: a vector per group cost the banded
/// path, which groups a band at a time, a tenth of its time in `malloc` and `free`.
fn by_row(buf: &mut [f32], rows: usize, len: usize) -> Vec<&mut [f32]> {
    grouped(buf.chunks_mut(len), rows)
}

/// A buffer of `runs · len` floats whose runs cycle through `rows` rows (see [`by_row`]),
/// written row by row over the pool: `f(state, r, runs)` with row `r`'s runs, which its task
/// zeroes first ([`Fresh`]: no pass of zeros through memory before), and a state per task
/// from `init`.
fn fresh_by_row<S>(
    runs: usize,
    rows: usize,
    len: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [&mut [f32]]) + Sync + Send,
) -> Vec<f32> {
    let mut buf = Fresh::new(runs * len);
    grouped(buf.pieces(len), rows)
        .into_par_iter()
        .chunks(runs / rows)
        .enumerate()
        .for_each_init(init, |state, (r, runs)| {
            let mut runs: Vec<&mut [f32]> = runs.into_iter().map(Piece::zeroed).collect();
            f(state, r, &mut runs);
        });
    buf.into_vec()
}

/// `f(state, o, filter)` for each filter's `len` floats of the weight gradient `gw`, over the
/// pool, `f` adding its filter's gradient. Where `gw` is empty (the weight had none yet: see
/// [`conv2d`]), a fresh gradient of `filters` filters whose tasks zero each filter first, in
/// cache, where dfdx zeroed the whole of it through memory.
fn add_by_filter<S>(
    gw: &mut Vec<f32>,
    filters: usize,
    len: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) {
    if gw.is_empty() {
        // One run a filter, each its own row.
        *gw = fresh_by_row(filters, filters, len, init, |s, o, runs| f(s, o, runs[0]));
        return;
    }
    gw.par_chunks_mut(len)
        .enumerate()
        .for_each_init(init, |s, (o, filter)| f(s, o, filter));
}

/// `runs` grouped by row as [`by_row`] groups a buffer's. The runs come in blocks of
/// `rows` (a sample's planes, or a position's rows), and row `r` takes the `r`-th of each
/// block: a few streams read in turn (blocks are few, 16 or a batch), where picking each run
/// by its index from a table of thousands missed the cache on every pick (a VGG-16 step's
/// calls took a millisecond on the thread that waits for the pool).
fn grouped<T>(runs: impl IntoIterator<Item = T>, rows: usize) -> Vec<T> {
    let mut runs: Vec<T> = runs.into_iter().collect();
    let total = runs.len();
    let per = total / rows.max(1);
    let mut blocks: Vec<std::vec::IntoIter<T>> = (0..per)
        .rev()
        .map(|k| runs.split_off(k * rows).into_iter())
        .collect();
    blocks.reverse();
    let mut out = Vec::with_capacity(total);
    for _ in 0..rows {
        out.extend(
            blocks
                .iter_mut()
                .map(|b| b.next().expect("a run of each block")),
        );
    }
    out
}

/// Asks the CPU to bring `data` into its caches (a hint: no effect on results).
#[inline]
fn prefetch(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(16) {
        // SAFETY: `_mm_prefetch` only hints; SSE is part of every x86-64 CPU.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// One filter's taps `[C, kk]` written tap-major: tap `t` of channel `c` to `dst[t][c]`.
fn tap_major(filter: &[f32], dst: &mut [&mut [f32]]) {
    let mut done = 0;
    if let Ok(dst) = <&mut [&mut [f32]; 9]>::try_from(&mut *dst) {
        // 3×3 kernels, eight channels at a time: fixed-size blocks that the compiler turns
        // into shuffles and whole-vector stores (an element at a time, with its bounds
        // check, took 5% of a 512→512 layer's time).
        for (b, block) in filter.chunks_exact(9 * CHANNEL_BLOCK).enumerate() {
            let taps: [&[f32; 9]; CHANNEL_BLOCK] =
                std::array::from_fn(|i| block[9 * i..][..9].try_into().expect("9"));
            for (t, d) in dst.iter_mut().enumerate() {
                let d: &mut [f32; CHANNEL_BLOCK] = (&mut d[b * CHANNEL_BLOCK..][..CHANNEL_BLOCK])
                    .try_into()
                    .expect("block");
                *d = std::array::from_fn(|i| taps[i][t]);
            }
        }
        done = filter.len() / 9 / CHANNEL_BLOCK * CHANNEL_BLOCK;
    }
    for (c, taps) in filter.chunks_exact(dst.len()).enumerate().skip(done) {
        for (d, &v) in dst.iter_mut().zip(taps) {
            d[c] = v;
        }
    }
}

/// `filter[c·9 + t] += taps[t][c]` for a 3×3 filter `[C, 9]` and its nine taps of `C`
/// channels each: [`tap_major`]'s adjoint, added on, blocked the same way.
fn add_channel_major(taps: [&[f32]; 9], filter: &mut [f32]) {
    let mut done = 0;
    for (b, block) in filter.chunks_exact_mut(9 * CHANNEL_BLOCK).enumerate() {
        let runs: [&[f32; CHANNEL_BLOCK]; 9] = std::array::from_fn(|t| {
            taps[t][b * CHANNEL_BLOCK..][..CHANNEL_BLOCK]
                .try_into()
                .expect("block")
        });
        for (i, k) in block.chunks_exact_mut(9).enumerate() {
            for (t, d) in k.iter_mut().enumerate() {
                *d += runs[t][i];
            }
        }
        done += CHANNEL_BLOCK;
    }
    for (c, k) in filter.chunks_exact_mut(9).enumerate().skip(done) {
        for (t, d) in k.iter_mut().enumerate() {
            *d += taps[t][c];
        }
    }
}

/// The planes of each block of [`BIAS_BLOCK`] channels (the last block maybe fewer) in a
/// batch's `[N, O, P]` buffer: block by block, one run of the block's planes per sample, in
/// sample order.
fn channel_blocks(buf: &mut [f32], o: usize, p: usize) -> Vec<Vec<&mut [f32]>> {
    let mut blocks: Vec<Vec<&mut [f32]>> =
        (0..o.div_ceil(BIAS_BLOCK)).map(|_| Vec::new()).collect();
    for sample in buf.chunks_exact_mut(o * p) {
        for (block, planes) in blocks.iter_mut().zip(sample.chunks_mut(BIAS_BLOCK * p)) {
            block.push(planes);
        }
    }
    blocks
}

/// Channels whose bias gradients one task sums.
const BIAS_BLOCK: usize = 16;

/// Output gradients from which the bias gradients are summed over the pool (256 KiB).
const POOL_BIAS_SUMS: usize = 1 << 16;

/// Channels [`tap_major`] and [`add_channel_major`] move at a time.
const CHANNEL_BLOCK: usize = 8;

/// Input channels from which the CPU path computes a stride-1 input gradient as a transposed
/// convolution rather than by col2im. That product has only `C` rows, so each element of its
/// (im2col'd, packed) right operand is reused `C` times; with few channels packing dominates
/// and col2im's product (`C·kh·kw` rows, inner dimension `O`) is faster. Measured with
/// `cargo bench --bench conv`: slower at 16 channels (`small_cnn`), faster at 64.
const TRANSPOSED_MIN_CHANNELS: usize = 64;

fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

/// The convolution, then ReLU where `relu` says (see [`super::conv2d_fused`]).
pub(super) fn conv2d<D, T, TX>(
    x: Tensor4<D, TX>,
    weight: Tensor4<D, T>,
    bias: Vector<D, T>,
    g: ConvGeom,
    relu: bool,
) -> Tensor4<D, T>
where
    D: Device<f32>,
    T: Tape<f32, D> + Merge<TX>,
    TX: Tape<f32, D>,
{
    let (x, tx) = x.contiguous().split_tape();
    let (w, tw) = weight.contiguous().split_tape();
    let (b, tb) = bias.contiguous().split_tape();
    let dev = x.device().clone();
    let (o, p, k, chw) = (g.o, g.p(), g.k(), g.c * g.h * g.w);
    let (chunk, span) = g.split();
    let (xs, bs, ws) = (host_slice(&x), host_slice(&b), host_slice(&w));
    let layer = Layer {
        xs,
        ws,
        bs,
        g: &g,
        relu,
    };

    // Wide 3×3 stride-1 layers take Winograd's transforms and small maps the pairs of taps
    // inside them; each keeps what its backward pass reads. The direct path keeps its columns
    // where the whole batch is one chunk (see `direct_forward`).
    let mut kept_cols: Option<Vec<f32>> = None;
    let (out, saved) = match Method::of(&g) {
        Method::Winograd => {
            let (out, saved) = winograd::forward(layer);
            (out, Some(Saved::Winograd(saved)))
        }
        Method::WinogradBanded => {
            let (out, saved) = winograd::banded::forward(layer);
            (out, Some(Saved::WinogradBanded(saved)))
        }
        Method::Pairs => {
            let (out, saved) = pairs::forward(layer);
            (out, Some(Saved::Pairs(saved)))
        }
        Method::Direct => (direct_forward(layer, &mut kept_cols), None),
    };
    let out: Tensor4<D> = dev.tensor_from_vec(out, (g.n, o, g.ho, g.wo));
    // What the backward pass masks the gradient by: the output itself (positive exactly
    // where the convolution's was), shared, not copied.
    let kept = relu.then(|| out.clone());

    let mut tape = tw.merge(tb).merge(tx);
    let (x_id, w_id, b_id, out_id) = (x.ghost(), w.ghost(), b.ghost(), out.ghost());
    let need_x = TX::OWNS_TAPE;
    tape.add_backward_op(move |grads| {
        // The input and weight tensors themselves, shared with the forward pass's callers.
        let (xs, ws) = (host_slice(&x), host_slice(&w));
        // Moved out (and back) so the other gradients can be borrowed meanwhile.
        let mut gout = std::mem::take(host_vec::<D>(grads.get_or_alloc_mut(&out_id)?));
        let ys = kept.as_ref().map(|kept| host_slice(kept));
        let gb = host_vec::<D>(grads.get_or_alloc_mut(&b_id)?);
        // Blocks of channels over the pool (on the calling thread, a VGG-16 step's bias
        // gradients were 2 ms of the pool's waiting; small layers stay on this thread, short
        // of a wake-up). Each block's planes, sample by sample: first ReLU's backward pass in
        // place where the op is fused ([`relu_grad`] from 0); then each plane's sum added to
        // its channel's, in sample order. One pass over the output gradient, while each plane
        // is in cache, where the mask and the sums took one each.
        let sums = |(i, (gb, planes)): (usize, (&mut [f32], Vec<&mut [f32]>))| {
            for (j, planes) in planes.into_iter().enumerate() {
                if let Some(ys) = ys {
                    let ys = &ys[j * o * p + i * BIAS_BLOCK * p..][..planes.len()];
                    planes
                        .iter_mut()
                        .zip(ys)
                        .for_each(|(g, &y)| *g = relu_grad(0.0, y, *g));
                }
                add_row_sums(planes, p, gb);
            }
        };
        let blocks = channel_blocks(&mut gout, o, p);
        let work = gb.chunks_mut(BIAS_BLOCK).zip(blocks);
        if o * p * g.n < POOL_BIAS_SUMS {
            work.enumerate().for_each(sums);
        } else {
            work.collect::<Vec<_>>()
                .into_par_iter()
                .enumerate()
                .for_each(sums);
        }
        // The transforms' and the pairs' own backward passes; the direct one follows.
        if let Some(saved) = &saved {
            // Taken out (and put back) so that the input gradient can be borrowed meanwhile;
            // empty where the weight has no gradient yet, for the backward pass to write.
            let gw = grads.get_or_insert_empty_mut(&w_id)?;
            let mut gw = std::mem::take(host_vec::<D>(gw));
            let gx = match need_x {
                true => Some(host_vec::<D>(grads.get_or_alloc_mut(&x_id)?).as_mut_slice()),
                false => None,
            };
            match saved {
                Saved::Winograd(saved) => winograd::backward(xs, saved, &gout, &g, &mut gw, gx),
                Saved::WinogradBanded(saved) => {
                    winograd::banded::backward(xs, saved, &gout, &g, &mut gw, gx)
                }
                Saved::Pairs(saved) => pairs::backward(saved, ws, &gout, &g, &mut gw, gx),
            }
            *host_vec::<D>(grads.get_or_alloc_mut(&w_id)?) = gw;
            *host_vec::<D>(grads.get_or_alloc_mut(&out_id)?) = gout;
            return Ok(());
        }
        let spans = g.n.div_ceil(span);
        let gx_spans: Vec<Option<&mut [f32]>> = if need_x {
            let gx = host_vec::<D>(grads.get_or_alloc_mut(&x_id)?);
            gx.chunks_mut(span * chw).map(Some).collect()
        } else {
            (0..spans).map(|_| None).collect()
        };
        // dX through the transposed convolution where the geometry allows (see
        // `ConvGeom::transposed`), with the kernel rotated by 180° and its channel axes
        // swapped: `[C, O·kh·kw]`.
        let gt = g.transposed().filter(|_| g.c >= TRANSPOSED_MIN_CHANNELS);
        let wrot: Vec<f32> = match gt {
            Some(_) if need_x => {
                // Rotating a row-major kh×kw kernel by 180° reverses its taps. Blocks of
                // channels over the pool, each reading a filter's taps for all its channels as
                // one run (the weight is [O, C, kh, kw]): one channel at a time read 9 floats
                // per 18 KiB of a 512-channel weight, on one thread.
                const BLOCK: usize = 16;
                let kk = g.kh * g.kw;
                let mut r = zeros(g.c * o * kk);
                r.par_chunks_mut(BLOCK * o * kk)
                    .enumerate()
                    .for_each(|(b, rows)| {
                        let n = rows.len() / (o * kk);
                        for oc in 0..o {
                            let src = &ws[(oc * g.c + b * BLOCK) * kk..][..n * kk];
                            let rows = rows.chunks_exact_mut(o * kk);
                            for (row, taps) in rows.zip(src.chunks_exact(kk)) {
                                let dst = &mut row[oc * kk..][..kk];
                                dst.iter_mut()
                                    .zip(taps.iter().rev())
                                    .for_each(|(d, s)| *d = *s);
                            }
                        }
                    });
                r
            }
            _ => Vec::new(),
        };
        // Each thread sums its span's weight gradient; the sums are added at the end, in
        // span order, so the result does not depend on how rayon schedules the spans.
        let gws: Vec<Vec<f32>> = gx_spans
            .into_par_iter()
            .enumerate()
            .map(|(si, mut gx)| {
                let (mut sc, mut gw) = (Scratch::default(), vec![0.0; o * k]);
                let samples = si * span..(si * span + span).min(g.n);
                for s0 in samples.clone().step_by(chunk) {
                    let s = s0..(s0 + chunk).min(samples.end);
                    let m = s.len() * p;
                    // The forward pass's columns where it kept them (the whole batch in one
                    // chunk, as here), else built again.
                    let xcols = match &kept_cols {
                        Some(cols) => {
                            debug_assert_eq!(cols.len(), k * m, "kept for the whole batch");
                            cols.as_slice()
                        }
                        None => {
                            im2col(&xs[s.start * chw..s.end * chw], &g, s.len(), &mut sc.cols);
                            sc.cols.as_slice()
                        }
                    };
                    // The output gradient laid out like y: [O, samples·P] (one sample's
                    // is a slice of gout as it is).
                    let gs = &gout[s.start * o * p..s.end * o * p];
                    let g2 = if s.len() == 1 {
                        Mat::new(gs, o, m)
                    } else {
                        // Filter by filter over the pool (a span's loop runs on the
                        // calling thread where the layer is one span).
                        grow_zeroed(&mut sc.y, o * m);
                        sc.y[..o * m]
                            .par_chunks_exact_mut(m)
                            .enumerate()
                            .for_each(|(oc, row)| {
                                for (n, dst) in row.chunks_exact_mut(p).enumerate() {
                                    dst.copy_from_slice(&gs[(n * o + oc) * p..][..p]);
                                }
                            });
                        Mat::new(&sc.y[..o * m], o, m)
                    };
                    let cols = Mat::new(xcols, k, m).t();
                    gemm(g2, cols, &mut gw, true);
                    let Some(gx) = gx.as_deref_mut() else {
                        continue;
                    };
                    let offset = (s.start - samples.start) * chw;
                    let gx = &mut gx[offset..offset + s.len() * chw];
                    if let Some(gt) = &gt {
                        let (kt, mt) = (gt.k(), s.len() * gt.p());
                        im2col(gs, gt, s.len(), &mut sc.cols);
                        let wr = Mat::new(&wrot, g.c, kt);
                        let cols = Mat::new(&sc.cols, kt, mt);
                        if s.len() == 1 {
                            gemm(wr, cols, gx, true);
                        } else {
                            // [C, samples·H·W] → gx's [samples, C, H·W].
                            sc.dcols.resize(g.c * mt, 0.0);
                            gemm(wr, cols, &mut sc.dcols, false);
                            let hw = g.h * g.w;
                            for (j, gx) in gx.chunks_exact_mut(chw).enumerate() {
                                for (ci, gx) in gx.chunks_exact_mut(hw).enumerate() {
                                    add_into(gx, &sc.dcols[ci * mt + j * hw..][..hw]);
                                }
                            }
                        }
                    } else {
                        sc.dcols.resize(k * m, 0.0);
                        let wt = Mat::new(ws, o, k).t();
                        gemm(wt, g2, &mut sc.dcols, false);
                        col2im(&sc.dcols, &g, s.len(), gx);
                    }
                }
                gw
            })
            .collect();
        let gw_host = host_vec::<D>(grads.get_or_alloc_mut(&w_id)?);
        for gw in &gws {
            add_into(gw_host, gw);
        }
        *host_vec::<D>(grads.get_or_alloc_mut(&out_id)?) = gout;
        Ok(())
    });
    out.put_tape(tape)
}

/// The forward pass through im2col and one product per chunk: `[N, O, Ho, Wo]`. Each thread
/// takes a span of samples, chunk by chunk, with its own buffers; the ops inside are parallel
/// too, which rayon folds into the same thread when all are busy.
///
/// Where the whole batch is one chunk (its columns fit `geom::WHOLE_BATCH_BUDGET`: the small
/// CNN's layers, VGG's first), the columns are handed to `keep` for the backward pass, which
/// would otherwise build them again (half of the small CNN's im2col time).
fn direct_forward(layer: Layer, keep: &mut Option<Vec<f32>>) -> Vec<f32> {
    let (xs, ws, bs, g, relu) = layer.parts();
    let (o, p, k, chw) = (g.o, g.p(), g.k(), g.c * g.h * g.w);
    let (chunk, span) = g.split();
    let mut out = zeros(g.n * o * p);
    let whole = chunk >= g.n;
    let kept = std::sync::Mutex::new(None);
    out.par_chunks_mut(span * o * p)
        .zip(xs.par_chunks(span * chw))
        .for_each(|(out, xs)| {
            let mut sc = Scratch::default();
            for (out, xs) in out.chunks_mut(chunk * o * p).zip(xs.chunks(chunk * chw)) {
                let ns = xs.len() / chw;
                let m = ns * p;
                im2col(xs, g, ns, &mut sc.cols);
                let w = Mat::new(ws, o, k);
                let cols = Mat::new(&sc.cols, k, m);
                if ns == 1 {
                    // One sample's y is its output plane stack already: start from the
                    // bias and add the product in place.
                    for (row, &b) in out.chunks_exact_mut(p).zip(bs) {
                        row.fill(b);
                    }
                    gemm(w, cols, out, true);
                    if relu {
                        relu_in_place(out);
                    }
                    continue;
                }
                sc.y.resize(o * m, 0.0);
                gemm(w, cols, &mut sc.y, false);
                // y is [O, samples·P]; the output wants [samples, O, P], plus the bias.
                // Sample by sample over the pool: a layer of one span runs this loop on the
                // thread that called it, which alone took 0.8 ms of VGG-16's first layer.
                let y = &sc.y;
                out.par_chunks_exact_mut(o * p)
                    .enumerate()
                    .for_each(|(j, dst)| {
                        for (oc, row) in dst.chunks_exact_mut(p).enumerate() {
                            let src = &y[oc * m + j * p..][..p];
                            row.iter_mut()
                                .zip(src)
                                .for_each(|(d, v)| *d = activated(v + bs[oc], relu));
                        }
                    });
            }
            if whole {
                *kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(sc.cols);
            }
        });
    *keep = kept.into_inner().unwrap_or_else(|e| e.into_inner());
    out
}

/// What every method's forward pass reads: the input `[N, C, H, W]`, the weight and the bias
/// of a convolution of shape `g`, and whether ReLU follows it (each method applies it where it
/// writes its outputs: [`activated`]).
#[derive(Clone, Copy)]
struct Layer<'a> {
    xs: &'a [f32],
    ws: &'a [f32],
    bs: &'a [f32],
    g: &'a ConvGeom,
    relu: bool,
}

impl<'a> Layer<'a> {
    /// Input, weight, bias, shape, ReLU.
    fn parts(self) -> (&'a [f32], &'a [f32], &'a [f32], &'a ConvGeom, bool) {
        (self.xs, self.ws, self.bs, self.g, self.relu)
    }
}

/// What a forward pass other than the direct one keeps for its backward pass, by [`Method`]
/// (the direct path keeps its columns where they are one chunk, else rebuilds them).
enum Saved {
    Winograd(winograd::Saved),
    WinogradBanded(winograd::Saved),
    Pairs(pairs::Saved),
}

/// One thread's buffers for a convolution, reused across its chunks.
#[derive(Default)]
struct Scratch {
    cols: Vec<f32>,
    /// The output `[O, samples·P]`, or its gradient in the backward pass.
    y: Vec<f32>,
    dcols: Vec<f32>,
}

/// Columns `[C·kh·kw, samples·Ho·Wo]` of the `ns` samples in `xs`, written over `cols`
/// (reused across chunks). Every float is written, padding as zeros, with no pass of zeros
/// before: the buffer is as large as the layer's input nine times over (on the Zen 4 VM the
/// small CNN's step spent 3.8% of its samples zeroing buffers grown this way, this one among
/// them; without it, whole processes took 0.988× the time: perf and farm-bench, issue 19).
fn im2col(xs: &[f32], g: &ConvGeom, ns: usize, cols: &mut Vec<f32>) {
    let (p, hw) = (g.p(), g.h * g.w);
    let m = ns * p;
    let len = g.k() * m;
    cols.clear();
    cols.reserve(len);
    cols.spare_capacity_mut()[..len]
        .par_chunks_mut(m.max(1))
        .enumerate()
        .for_each(|(row, dst)| {
            let (c, ki, kj) = (row / (g.kh * g.kw), row / g.kw % g.kh, row % g.kw);
            let ox = g.valid_cols(kj);
            if g.stride == 1 && g.wo == g.w && !ox.is_empty() {
                return same_width_rows(xs, g, ns, (c, ki, kj), dst);
            }
            // Sample by sample, output row by output row: `wo` floats each, `m` in all.
            for j in 0..ns {
                let plane = &xs[(j * g.c + c) * hw..][..hw];
                for oy in 0..g.ho {
                    let dst = &mut dst[j * p + oy * g.wo..][..g.wo];
                    let iy = match g.src(oy, ki, g.h) {
                        Some(iy) if !ox.is_empty() => iy,
                        _ => {
                            zero(dst);
                            continue;
                        }
                    };
                    zero(&mut dst[..ox.start]);
                    zero(&mut dst[ox.end..]);
                    let src = &plane[iy * g.w..][..g.w];
                    let ix0 = ox.start * g.stride + kj - g.pad;
                    if g.stride == 1 {
                        dst[ox.clone()].write_copy_of_slice(&src[ix0..ix0 + ox.len()]);
                    } else {
                        for (i, d) in dst[ox.clone()].iter_mut().enumerate() {
                            d.write(src[ix0 + i * g.stride]);
                        }
                    }
                }
            }
        });
    // SAFETY: the rows of `m` floats partition the first `len`, and each row's task wrote
    // `wo` floats for each of its `ns · ho` output rows, `ns · p = m` in all (a panic on the
    // way leaves the length at zero); `same_width_rows` writes each sample's `p` too: the
    // rows outside the map, then the block inside it (the copy and each row's edges).
    unsafe { cols.set_len(len) };
}

/// Writes zeros over `dst` (im2col's padding, into memory it has not zeroed before).
fn zero(dst: &mut [MaybeUninit<f32>]) {
    dst.iter_mut().for_each(|d| _ = d.write(0.0));
}

/// One row of [`im2col`] (channel `c`, kernel tap `(ki, kj)`) where the output is as wide as
/// the input at stride 1 (a "same" padding): then a sample's part of the row is its input
/// plane shifted by the tap, whole rows at once. Its rows inside the input are one copy,
/// after which the floats that the shift carried across a row's edge are overwritten by the
/// padding's zeros. Where maps are narrow (14 floats a row) a copy and two fills per output
/// row were mostly the calls' own cost. The same values as the general loop, so the same bits.
fn same_width_rows(
    xs: &[f32],
    g: &ConvGeom,
    ns: usize,
    (c, ki, kj): (usize, usize, usize),
    dst: &mut [MaybeUninit<f32>],
) {
    let (w, hw, p) = (g.w, g.h * g.w, g.p());
    // Output rows whose input row is inside the map: one run `oy0..oy1`.
    let inside = |oy: usize| g.src(oy, ki, g.h).is_some();
    let oy0 = (0..g.ho).find(|&oy| inside(oy)).unwrap_or(g.ho);
    let oy1 = (oy0..g.ho).find(|&oy| !inside(oy)).unwrap_or(g.ho);
    // Output column `x` reads input column `x + kj − pad`: the left edge is cut by `lead`
    // floats, the right by `trail` (at most one of them is non-zero).
    let (lead, trail) = (g.pad.saturating_sub(kj), (kj + w).saturating_sub(g.pad + w));
    for j in 0..ns {
        let dst = &mut dst[j * p..][..p];
        zero(&mut dst[..oy0 * w]);
        zero(&mut dst[oy1 * w..]);
        if oy0 == oy1 {
            continue;
        }
        let iy0 = g.src(oy0, ki, g.h).expect("inside");
        let n = (oy1 - oy0) * w;
        let src = &xs[(j * g.c + c) * hw + iy0 * w..][..n];
        let block = &mut dst[oy0 * w..][..n];
        block[lead..n - trail].write_copy_of_slice(&src[trail..n - lead]);
        // Mostly one float a row (a padding of 1): written as one, not a call to memset.
        let edge = |dst: &mut [MaybeUninit<f32>]| match dst {
            [] => {}
            [one] => _ = one.write(0.0),
            _ => zero(dst),
        };
        for row in block.chunks_exact_mut(w) {
            edge(&mut row[..lead]);
            edge(&mut row[w - trail..]);
        }
    }
}

/// Adds the columns' gradients `[C·kh·kw, samples·Ho·Wo]` of `ns` samples back onto their
/// input gradient `gx`.
fn col2im(dcols: &[f32], g: &ConvGeom, ns: usize, gx: &mut [f32]) {
    let (p, hw, kk) = (g.p(), g.h * g.w, g.kh * g.kw);
    let m = ns * p;
    // One task per (sample, channel) plane: the planes are disjoint, so no two tasks write
    // the same element.
    gx[..ns * g.c * hw]
        .par_chunks_mut(hw)
        .enumerate()
        .for_each(|(plane_i, plane)| {
            let (j, c) = (plane_i / g.c, plane_i % g.c);
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let src = &dcols[(c * kk + ki * g.kw + kj) * m + j * p..][..p];
                    let ox = g.valid_cols(kj);
                    if ox.is_empty() {
                        continue;
                    }
                    for oy in 0..g.ho {
                        let Some(iy) = g.src(oy, ki, g.h) else {
                            continue;
                        };
                        let row = &src[oy * g.wo..][ox.clone()];
                        let ix0 = ox.start * g.stride + kj - g.pad;
                        let dst = &mut plane[iy * g.w..][..g.w];
                        if g.stride == 1 {
                            add_into(&mut dst[ix0..ix0 + row.len()], row);
                        } else {
                            for (d, v) in dst[ix0..].iter_mut().step_by(g.stride).zip(row) {
                                *d += v;
                            }
                        }
                    }
                }
            }
        });
}

/// Elements per task of the element-wise ops; smaller tensors stay on the calling thread (a
/// round trip through the pool costs more than they do).
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// A fused convolution's output value: `v`, then ReLU where `relu` says, as `relu`
/// computes it (`max(v, 0)`). Each method applies it where it writes its output, while the
/// values are in cache, instead of a pass over the whole output after.
#[inline(always)]
fn activated(v: f32, relu: bool) -> f32 {
    if relu {
        v.max(0.0)
    } else {
        v
    }
}

/// [`activated`] with ReLU over outputs written already (in cache).
fn relu_in_place(dst: &mut [f32]) {
    dst.iter_mut().for_each(|v| *v = activated(*v, true));
}

/// ReLU's backward pass for one element: `acc + [y > 0]·∂y`, with `y` its input or its output
/// (positive at the same places). `relu` adds onto its zeroed input gradient, the fused op
/// starts from 0 in place: the same operations, so −0 and NaN come out alike.
#[inline(always)]
fn relu_grad(acc: f32, y: f32, dy: f32) -> f32 {
    acc + if y > 0.0 { 1.0 } else { 0.0 } * dy
}

/// `f` over `(dst, a, b)` element-wise, over the pool's threads in chunks of
/// [`ELEMENTWISE_CHUNK`] when there are several.
fn zip3(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(&mut f32, f32, f32) + Sync) {
    let run = |(d, (a, b)): (&mut [f32], (&[f32], &[f32]))| {
        d.iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(d, (&a, &b))| f(d, a, b))
    };
    if dst.len() <= ELEMENTWISE_CHUNK {
        run((dst, (a, b)));
    } else {
        dst.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(
                a.par_chunks(ELEMENTWISE_CHUNK)
                    .zip(b.par_chunks(ELEMENTWISE_CHUNK)),
            )
            .for_each(run);
    }
}

pub(super) fn relu<S: Shape, D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor<S, f32, D, T>,
) -> Tensor<S, f32, D, T> {
    let (x, mut tape) = x.contiguous().split_tape();
    let xs = host_slice(&x);
    let mut out = zeros(xs.len());
    // Unary: the second operand is the input again, unread.
    zip3(&mut out, xs, xs, |o, x, _| *o = activated(x, true));
    let out: Tensor<S, f32, D> = x.device().tensor_from_vec(out, *x.shape());
    let (x_id, out_id) = (x.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let gout = std::mem::take(host_vec::<D>(grads.get_or_alloc_mut(&out_id)?));
        let gx = host_vec::<D>(grads.get_or_alloc_mut(&x_id)?);
        zip3(gx, host_slice(&x), &gout, |g, x, go| {
            *g = relu_grad(*g, x, go)
        });
        *host_vec::<D>(grads.get_or_alloc_mut(&out_id)?) = gout;
        Ok(())
    });
    out.put_tape(tape)
}

/// Whether `v` replaces `best` as a window's maximum: like PyTorch, the first maximum wins and
/// NaN propagates.
#[inline(always)]
fn beats(v: f32, best: f32) -> bool {
    v > best || (v.is_nan() && !best.is_nan())
}

/// Max-pooling of one plane `x` (`w` columns) by 2×2 windows at stride 2 (VGG's pools), `ow`
/// outputs a row: each window's four entries compared in the general loop's order
/// (row-major), a window per lane of a loop the compiler vectorises (the general loop reads
/// each window's start from a table, a scalar gather).
fn max_pool_2x2(x: &[f32], w: usize, ow: usize, out: &mut [f32], arg: &mut [u32]) {
    let rows = out.chunks_exact_mut(ow).zip(arg.chunks_exact_mut(ow));
    for (i, (out, arg)) in rows.enumerate() {
        let (r0, r1) = (&x[2 * i * w..][..2 * ow], &x[(2 * i + 1) * w..][..2 * ow]);
        let windows = r0.chunks_exact(2).zip(r1.chunks_exact(2));
        let (base0, base1) = ((2 * i * w) as u32, ((2 * i + 1) * w) as u32);
        for (j, ((o, a), (top, bottom))) in
            out.iter_mut().zip(arg.iter_mut()).zip(windows).enumerate()
        {
            let at = 2 * j as u32;
            let (mut best, mut k) = (top[0], base0 + at);
            for (v, kv) in [
                (top[1], base0 + at + 1),
                (bottom[0], base1 + at),
                (bottom[1], base1 + at + 1),
            ] {
                if beats(v, best) {
                    (best, k) = (v, kv);
                }
            }
            (*o, *a) = (best, k);
        }
    }
}

pub(super) fn pool<D: Device<f32>, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    g: PoolGeom,
    kind: PoolKind,
) -> Tensor4<D, T> {
    let (x, mut tape) = x.contiguous().split_tape();
    let dev = x.device().clone();
    let (hw, p) = (g.h * g.w, g.p());
    let xs = host_slice(&x);
    let mut out = zeros(g.n * g.c * p);
    // Flat in-plane index of each output's maximum, for the backward pass.
    let mut arg = vec![0u32; if kind == PoolKind::Max { out.len() } else { 0 }];
    let pairs = g.bh.pairs() && g.bw.pairs();
    match kind {
        PoolKind::Max => out
            .par_chunks_mut(p)
            .zip(arg.par_chunks_mut(p))
            .zip(xs.par_chunks(hw))
            .for_each(|((out, arg), x)| {
                if pairs {
                    return max_pool_2x2(x, g.w, g.bw.len(), out, arg);
                }
                // Output row by output row, one window offset `(dy, dx)` at a time (in the
                // window's row-major order) across the whole row: the row's running maxima
                // are independent of each other, so the comparisons pipeline instead of
                // waiting on one chain per window. Max windows are uniform (`Bins::windows`).
                let (ow, kx) = (g.bw.len(), g.bw.widest());
                for i in 0..g.bh.len() {
                    let rows = g.bh.range(i);
                    let out = &mut out[i * ow..][..ow];
                    let arg = &mut arg[i * ow..][..ow];
                    let xr = &x[rows.start * g.w..][..g.w];
                    for (j, (o, a)) in out.iter_mut().zip(arg.iter_mut()).enumerate() {
                        let first = g.bw.start[j];
                        (*o, *a) = (xr[first], (rows.start * g.w + first) as u32);
                    }
                    for y in rows {
                        let xr = &x[y * g.w..][..g.w];
                        for dx in 0..kx {
                            let cells = out.iter_mut().zip(arg.iter_mut());
                            for ((o, a), &s0) in cells.zip(&g.bw.start) {
                                let v = xr[s0 + dx];
                                if beats(v, *o) {
                                    (*o, *a) = (v, (y * g.w + s0 + dx) as u32);
                                }
                            }
                        }
                    }
                }
            }),
        PoolKind::Avg => out
            .par_chunks_mut(p)
            .zip(xs.par_chunks(hw))
            .for_each(|(out, x)| {
                for ((i, j), o) in g.cells().zip(out.iter_mut()) {
                    let (mut sum, mut cnt) = (0.0, 0usize);
                    for r in g.cell_rows(i, j) {
                        cnt += r.len();
                        sum += x[r].iter().sum::<f32>();
                    }
                    *o = sum / cnt as f32;
                }
            }),
    }
    let out: Tensor4<D> = dev.tensor_from_vec(out, g.out_shape());
    let (x_id, out_id) = (x.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let gout = std::mem::take(host_vec::<D>(grads.get_or_alloc_mut(&out_id)?));
        let gx = host_vec::<D>(grads.get_or_alloc_mut(&x_id)?);
        let planes = gx.par_chunks_mut(hw).zip(gout.par_chunks(p));
        match kind {
            PoolKind::Max => planes.zip(arg.par_chunks(p)).for_each(|((gx, gout), arg)| {
                for (&go, &a) in gout.iter().zip(arg) {
                    gx[a as usize] += go;
                }
            }),
            PoolKind::Avg => planes.for_each(|(gx, gout)| {
                for ((i, j), &go) in g.cells().zip(gout) {
                    let share = go / (g.bh.range(i).len() * g.bw.range(j).len()) as f32;
                    for r in g.cell_rows(i, j) {
                        gx[r].iter_mut().for_each(|v| *v += share);
                    }
                }
            }),
        }
        *host_vec::<D>(grads.get_or_alloc_mut(&out_id)?) = gout;
        Ok(())
    });
    out.put_tape(tape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_grouped_by_row_take_the_row_of_every_block_in_block_order() {
        // Four blocks (samples) of three rows (channels): row by row, block by block.
        let runs: Vec<usize> = (0..12).collect();
        assert_eq!(grouped(runs, 3), [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]);
        // A buffer's runs, as `by_row` cuts it: each group is one row's runs.
        let mut buf: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let rows: Vec<Vec<f32>> = by_row(&mut buf, 2, 2).iter().map(|r| r.to_vec()).collect();
        let want = [[0., 1.], [4., 5.], [8., 9.], [2., 3.], [6., 7.], [10., 11.]];
        assert_eq!(rows, want.map(|r| r.to_vec()));
    }
}
