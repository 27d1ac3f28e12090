//! Packed-panel sgemm (BLIS-style) over 12×32 tiles of `c`: both operands are repacked, block
//! of KC inner steps by block, into panels that the micro-kernel streams through
//! contiguously, and a few tasks, one per thread, each run their tiles through every block
//! in order. Every element of `c` is, for each block, `acc = 0; acc = fma(a, b, acc)` over
//! the block's steps in order, then `c = acc` (first block, no accumulation) or
//! `c = acc + c`: the blocks depend on the shapes only, never on the thread count or the
//! CPU (how the tiles are shared out does not touch a sum's order), and each micro-kernel
//! keeps that order exactly, so all of them give the same bits.

use super::Mat;
use rayon::prelude::*;
use std::mem::MaybeUninit;

const MR: usize = 12;
const NR: usize = 32;
/// Inner steps per block: a 32-column panel of `b` (KC·NR floats, 32 KiB) stays in L1
/// while the row panels of `a` pass over it.
const KC: usize = 256;
/// Products of fewer multiply-adds than this run on the calling thread (a 64×64×64 product
/// takes about 10 µs on one core, less than a round trip through the pool).
const SERIAL_BELOW: usize = 1 << 18;
/// Rows of `a` packed at a time: an MC×KC block (384 KiB) stays in L2.
const MC: usize = 32 * MR;
/// Columns of `b` packed at a time: a KC×NC block (2 MiB) stays in L2 or L3.
const NC: usize = 64 * NR;

/// Which micro-kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Scalar,
}

impl Isa {
    /// The fastest this CPU has; `CFPIPE_CONV_NO_AVX512` stops at AVX2 (to compare, in
    /// benches, with CPUs without AVX-512).
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f")
                    && std::env::var_os("CFPIPE_CONV_NO_AVX512").is_none()
                {
                    return Isa::Avx512;
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    return Isa::Avx2;
                }
            }
            Isa::Scalar
        })
    }

    /// Whether this CPU can run `self`.
    pub fn runs_here(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// `c = a · b` (or `+=`), `c` row-major, with the micro-kernel of `isa`. Panics if this CPU
/// cannot run it.
///
/// The product is cut into a few tasks, one per thread: runs of row panels times groups of
/// column panels, cut along the operand whose repacking costs less (each task packs the
/// parts of both operands it reads, so a cut repacks the other operand once more). Inside a
/// task, BLIS's loop order: for each NC-wide column block and each block of KC inner steps,
/// pack the block of `b` (kept in L2) and, MC rows at a time, the block of `a`, then run the
/// tiles column panel by column panel, so that a `b` panel (KC·NR floats) stays in L1 while
/// the `a` panels stream past it. Every element still takes the blocks of KC steps in order,
/// and none of these cuts depends on anything but the shapes and the pool's size, which
/// does not change a sum's order: the bits are the same for any thread count.
pub fn sgemm(a: Mat, b: Mat, c: &mut [f32], accumulate: bool, isa: Isa) {
    sgemm_on(
        Lhs::Mat(a),
        b,
        c,
        accumulate,
        isa,
        rayon::current_num_threads(),
    );
}

/// The left operand of a product: a matrix, packed as the product runs, or one packed
/// beforehand ([`PackedA`]), for a left operand that many products share.
#[derive(Debug, Clone, Copy)]
pub enum Lhs<'a> {
    Mat(Mat<'a>),
    Packed(&'a PackedA),
}

impl<'a> From<Mat<'a>> for Lhs<'a> {
    fn from(a: Mat<'a>) -> Self {
        Lhs::Mat(a)
    }
}

impl<'a> From<&'a PackedA> for Lhs<'a> {
    fn from(a: &'a PackedA) -> Self {
        Lhs::Packed(a)
    }
}

impl Lhs<'_> {
    /// Rows and columns of the matrix.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Lhs::Mat(a) => (a.rows, a.cols),
            Lhs::Packed(a) => a.shape(),
        }
    }
}

/// A left operand packed once into the row panels the micro-kernel reads, block of KC inner
/// steps by block (the panels of block `p0` start at `p0·MR·⌈rows/MR⌉`), as [`sgemm`] packs
/// its left operand as it runs: a product with it gives the same bits as with the matrix.
#[derive(Debug, Clone)]
pub struct PackedA {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl PackedA {
    pub fn new(a: Mat) -> PackedA {
        let (m, k) = (a.rows, a.cols);
        let panels = m.div_ceil(MR);
        let mut data = vec![0.0; panels * MR * k];
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            pack(
                &mut data[p0 * panels * MR..][..panels * MR * kc],
                a,
                MR,
                0,
                p0,
                kc,
            );
        }
        PackedA {
            data,
            rows: m,
            cols: k,
        }
    }

    /// `count` matrices of `rows × cols` that lie interleaved in `data`, element `(r, c)` of
    /// matrix `i` at `data[r·rs + c·cs + i]`, packed in one pass over the pool: the same
    /// panels as [`PackedA::new`] of each. For a 3×3 weight `[O, C, 3, 3]`'s nine taps (each
    /// `[O, C]` at `rs = 9C`, `cs = 9`, or transposed): panel by panel, a filter's taps read
    /// side by side, each panel's part of the weight read into cache once for all the taps.
    ///
    /// # Panics
    ///
    /// Where some element lies past the end of `data`.
    pub fn interleaved(
        data: &[f32],
        count: usize,
        (rows, cols): (usize, usize),
        (rs, cs): (usize, usize),
    ) -> Vec<PackedA> {
        let panels = rows.div_ceil(MR);
        let len = panels * MR * cols;
        let mut bufs: Vec<Vec<f32>> = (0..count).map(|_| Vec::with_capacity(len)).collect();
        if len == 0 || count == 0 {
            let empty = |data| PackedA { data, rows, cols };
            return bufs.into_iter().map(empty).collect();
        }
        let last = (rows - 1) * rs + (cols - 1) * cs + count - 1;
        assert!(
            last < data.len(),
            "PackedA::interleaved: matrices past the data"
        );
        // Every matrix's panels in the order of the data (block of KC steps, then panel),
        // regrouped so that each task holds one panel of every matrix. Written once, lanes
        // past the last row included (as zeros), with no pass of zeros before.
        let mut cut: Vec<_> = bufs
            .iter_mut()
            .map(|b| {
                b.spare_capacity_mut()[..len]
                    .chunks_mut(panels * MR * KC)
                    .flat_map(|block| block.chunks_mut(block.len() / panels))
            })
            .collect();
        let tasks: Vec<Vec<&mut [MaybeUninit<f32>]>> = (0..panels * cols.div_ceil(KC))
            .map(|_| cut.iter_mut().filter_map(Iterator::next).collect())
            .collect();
        tasks.into_par_iter().enumerate().for_each(|(i, mut mats)| {
            let (p0, q) = (i / panels * KC, i % panels);
            let live = MR.min(rows - q * MR);
            // Matrix by matrix: nine panels written in turn would share their cache sets
            // (the matrices are allocated alike, a multiple of 4 KiB apart), and the panel's
            // part of `data` stays in cache from one matrix to the next.
            for (m, panel) in mats.iter_mut().enumerate() {
                let src = &data[q * MR * rs + p0 * cs + m..];
                for (kk, steps) in panel.chunks_exact_mut(MR).enumerate() {
                    let (rows, past) = steps.split_at_mut(live);
                    for (r, d) in rows.iter_mut().enumerate() {
                        d.write(src[r * rs + kk * cs]);
                    }
                    past.iter_mut().for_each(|d| _ = d.write(0.0));
                }
            }
        });
        bufs.into_iter()
            .map(|mut data| {
                // SAFETY: the tasks' panels partition the first `len` floats (the blocks of
                // KC steps, each cut into `panels` panels of MR·kc), and each task wrote
                // every float of its panels.
                unsafe { data.set_len(len) };
                PackedA { data, rows, cols }
            })
            .collect()
    }

    /// Rows and columns of the matrix it holds.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Row panels `r0..r1` of the block of inner steps from `p0` (`kc` of them).
    fn panels(&self, r0: usize, r1: usize, p0: usize, kc: usize) -> &[f32] {
        let panels = self.rows.div_ceil(MR);
        &self.data[p0 * panels * MR + r0 * MR * kc..][..(r1 - r0) * MR * kc]
    }
}

/// [`sgemm`] on at most `threads` threads (the bits are the same for any number).
pub(crate) fn sgemm_on(a: Lhs, b: Mat, c: &mut [f32], accumulate: bool, isa: Isa, threads: usize) {
    assert!(isa.runs_here(), "sgemm: this CPU cannot run {isa:?}");
    let ((m, k), n) = (a.shape(), b.cols);
    assert!(b.rows == k && c.len() == m * n, "sgemm: shapes");
    if k == 0 && !accumulate {
        c.fill(0.0);
    }
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let (mp, np) = (m.div_ceil(MR), n.div_ceil(NR));
    // Small products run on the calling thread, without the pool's round trip (tens of µs
    // from a thread outside it, as much as a small product takes).
    let threads = if is_parallel(m, k, n) {
        threads.max(1)
    } else {
        1
    };
    // Runs × groups: as many tasks as threads, at most (fewer where the tiles run out), cut
    // to repack as little as possible: each of `runs` runs of rows packs all of its task's
    // columns of `b`, and each of `groups` groups of columns all of its rows of `a`.
    let (runs, groups) = (1..=threads.min(mp))
        .map(|r| (r, (threads / r).min(np)))
        .max_by_key(|&(r, g)| {
            let repacked = (g - 1) * m * k + (r - 1) * k * n;
            (r * g, std::cmp::Reverse(repacked))
        })
        .unwrap_or((1, 1));
    let (run_len, group_len) = (mp.div_ceil(runs), np.div_ceil(groups));
    let out = SharedOut(c.as_mut_ptr());
    let task = |t: usize| {
        let (rows, cols) = (t % runs * run_len, t / runs * group_len);
        let (rows, cols) = (
            rows..(rows + run_len).min(mp),
            cols..(cols + group_len).min(np),
        );
        PACKED.with(|cell| {
            // Taken, not borrowed: a task never waits on the pool, but if one ever did,
            // another task on this thread would pack into fresh buffers, not these.
            let mut bufs = cell.take();
            run_task(a, b, out, n, rows, cols, accumulate, isa, &mut bufs);
            cell.set(bufs);
        });
    };
    if runs * groups > 1 {
        (0..runs * groups).into_par_iter().for_each(task);
    } else {
        task(0);
    }
}

/// Whether an `m×k · k×n` product is large enough to split over the pool.
pub(crate) fn is_parallel(m: usize, k: usize, n: usize) -> bool {
    m * n * k >= SERIAL_BELOW
}

thread_local! {
    /// Each thread's packing buffers, kept between products.
    pub(crate) static PACKED: std::cell::Cell<(Vec<f32>, Vec<f32>)> = Default::default();
}

/// One task of [`sgemm`]: the tiles of row panels `rows` × column panels `cols`.
#[allow(clippy::too_many_arguments)]
fn run_task(
    a: Lhs,
    b: Mat,
    out: SharedOut,
    n: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    accumulate: bool,
    isa: Isa,
    (pa, pb): &mut (Vec<f32>, Vec<f32>),
) {
    let (m, k) = a.shape();
    for c0 in cols.clone().step_by(NC / NR) {
        let c1 = (c0 + NC / NR).min(cols.end);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let overwrite = !accumulate && p0 == 0;
            // Stale contents are harmless: packing writes every lane that is stored.
            pb.resize(pb.len().max((c1 - c0) * NR * kc), 0.0);
            pack(&mut pb[..(c1 - c0) * NR * kc], b.t(), NR, c0, p0, kc);
            for r0 in rows.clone().step_by(MC / MR) {
                let r1 = (r0 + MC / MR).min(rows.end);
                let panels = match a {
                    Lhs::Mat(a) => {
                        pa.resize(pa.len().max((r1 - r0) * MR * kc), 0.0);
                        pack(&mut pa[..(r1 - r0) * MR * kc], a, MR, r0, p0, kc);
                        &pa[..(r1 - r0) * MR * kc]
                    }
                    Lhs::Packed(a) => a.panels(r0, r1, p0, kc),
                };
                for j in c0..c1 {
                    let b = &pb[(j - c0) * NR * kc..][..NR * kc];
                    let width = NR.min(n - j * NR);
                    for i in r0..r1 {
                        let a = &panels[(i - r0) * MR * kc..][..MR * kc];
                        let height = MR.min(m - i * MR);
                        let c = out.at(i * MR * n + j * NR);
                        // SAFETY: this CPU runs `isa` (asserted by `sgemm`). The panels hold
                        // kc·MR and kc·NR floats. Tile (i, j) is the `height`×`width` block
                        // of `c` at row i·MR, column j·NR, inside `c`; each task writes its
                        // own tiles only, and `c` outlives the tasks.
                        unsafe {
                            #[cfg(target_arch = "x86_64")]
                            let simd = match isa {
                                Isa::Avx512 => Some(kernel_avx512 as Kernel),
                                Isa::Avx2 => Some(kernel_avx2 as Kernel),
                                Isa::Scalar => None,
                            };
                            #[cfg(not(target_arch = "x86_64"))]
                            let simd: Option<Kernel> = None;
                            match simd {
                                Some(kernel) => kernel(
                                    kc,
                                    a.as_ptr(),
                                    b.as_ptr(),
                                    c,
                                    n,
                                    height,
                                    width,
                                    overwrite,
                                ),
                                None => kernel_scalar(kc, a, b, c, n, height, width, overwrite),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A SIMD micro-kernel: `(kc, a panel, b panel, c, ldc, rows, cols, overwrite)`.
type Kernel = unsafe fn(usize, *const f32, *const f32, *mut f32, usize, usize, usize, bool);

/// The output pointer shared by the tile tasks, which write disjoint tiles.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: only used by `sgemm`, whose tasks never write the same element.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Panels `q0..` of `w` rows of `s` over inner steps `p0..p0 + kc`: panel `q0 + q` holds
/// `s[(q0 + q)·w + r][p0 + kk]` at `(q·kc + kk)·w + r` of `dst`. Lanes past the last row keep
/// stale values: they only feed accumulators that the kernel never stores.
fn pack(dst: &mut [f32], s: Mat, w: usize, q0: usize, p0: usize, kc: usize) {
    let (rs, cs) = s.strides();
    dst.chunks_mut(kc * w).enumerate().for_each(|(q, panel)| {
        let q = q0 + q;
        let live = w.min(s.rows - q * w);
        if cs == 1 {
            // A transpose: rows in blocks of eight, then four, through AVX shuffles where
            // the CPU has them, eight inner steps at a time; what is left one by one.
            let row = |r: usize| &s.data[(q * w + r) * rs + p0..][..kc];
            let mut r0 = 0;
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx") {
                let k8 = kc - kc % 8;
                while r0 + 4 <= live {
                    let n = if r0 + 8 <= live { 8 } else { 4 };
                    let rows: [*const f32; 8] =
                        std::array::from_fn(|t| row(r0 + t.min(n - 1)).as_ptr());
                    for kk in (0..k8).step_by(8) {
                        // SAFETY: AVX is available; each of the rows holds kc ≥ kk + 8
                        // floats, and the panel's steps kk..kk + 8 hold w ≥ r0 + n lanes.
                        unsafe {
                            let at = panel.as_mut_ptr().add(kk * w + r0);
                            if n == 8 {
                                transpose8(rows.map(|p| p.add(kk)), at, w);
                            } else {
                                transpose4(rows.map(|p| p.add(kk)), at, w);
                            }
                        }
                    }
                    for r in r0..r0 + n {
                        for (kk, &v) in row(r).iter().enumerate().skip(k8) {
                            panel[kk * w + r] = v;
                        }
                    }
                    r0 += n;
                }
            }
            for r in r0..live {
                for (kk, &v) in row(r).iter().enumerate() {
                    panel[kk * w + r] = v;
                }
            }
        } else {
            let base = q * w * rs + p0 * cs;
            match (w, live) {
                (MR, MR) => copy_rows::<MR>(panel, &s.data[base..], cs, kc),
                (NR, NR) => copy_rows::<NR>(panel, &s.data[base..], cs, kc),
                _ => {
                    for kk in 0..kc {
                        let src = &s.data[base + kk * cs..][..live];
                        panel[kk * w..][..live].copy_from_slice(src);
                    }
                }
            }
        }
    });
}

/// `kc` runs of `W` floats, every `stride` floats of `src`, one after another into `panel`:
/// a fixed-size copy the compiler keeps in registers (a libc call per 48-byte run cost more
/// than the copy).
fn copy_rows<const W: usize>(panel: &mut [f32], src: &[f32], stride: usize, kc: usize) {
    for (kk, dst) in panel[..kc * W].chunks_exact_mut(W).enumerate() {
        let run: &[f32; W] = src[kk * stride..][..W].try_into().expect("W floats");
        dst.copy_from_slice(run);
    }
}

/// `dst[k·stride + r] = rows[r][k]` for 8 rows and 8 steps: the 8×8 transpose of AVX's
/// unpack, shuffle and lane-permute steps.
///
/// # Safety
/// AVX must be available; each row pointer must be readable for 8 floats and `dst` writable
/// at `k·stride + r` for k, r < 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8(rows: [*const f32; 8], dst: *mut f32, stride: usize) {
    use std::arch::x86_64::*;
    let lo = interleave4([0, 1, 2, 3].map(|i| _mm256_loadu_ps(rows[i])));
    let hi = interleave4([4, 5, 6, 7].map(|i| _mm256_loadu_ps(rows[i])));
    for k in 0..4 {
        let first = _mm256_permute2f128_ps::<0x20>(lo[k], hi[k]);
        let second = _mm256_permute2f128_ps::<0x31>(lo[k], hi[k]);
        _mm256_storeu_ps(dst.add(k * stride), first);
        _mm256_storeu_ps(dst.add((k + 4) * stride), second);
    }
}

/// [`transpose8`] for the first 4 rows: `dst[k·stride + r] = rows[r][k]`, r < 4, k < 8.
///
/// # Safety
/// As for [`transpose8`], with `dst` writable at `k·stride + r` for r < 4 only.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose4(rows: [*const f32; 8], dst: *mut f32, stride: usize) {
    use std::arch::x86_64::*;
    let u = interleave4([0, 1, 2, 3].map(|i| _mm256_loadu_ps(rows[i])));
    for (k, u) in u.iter().enumerate() {
        _mm_storeu_ps(dst.add(k * stride), _mm256_castps256_ps128(*u));
        _mm_storeu_ps(dst.add((k + 4) * stride), _mm256_extractf128_ps::<1>(*u));
    }
}

/// Four rows of 8 steps, regrouped by step: result `k` holds step k of the 4 rows in its low
/// 128 bits and step k + 4 in its high 128 bits.
///
/// # Safety
/// AVX must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn interleave4(r: [std::arch::x86_64::__m256; 4]) -> [std::arch::x86_64::__m256; 4] {
    use std::arch::x86_64::*;
    let t = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
    ];
    [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
    ]
}

/// The order every micro-kernel keeps, one element at a time.
///
/// # Safety
/// `c` must point at a `rows`×`cols` tile (row stride `ldc`) no one else writes.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_scalar(
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    overwrite: bool,
) {
    for r in 0..rows {
        for j in 0..cols {
            let mut acc = 0.0f32;
            for kk in 0..kc {
                acc = a[kk * MR + r].mul_add(b[kk * NR + j], acc);
            }
            let p = c.add(r * ldc + j);
            *p = if overwrite { acc } else { acc + *p };
        }
    }
}

/// [`kernel_scalar`]'s order on AVX2 with FMA: the 12×32 tile as six 4×16 blocks, eight
/// accumulators each, so they stay in the 16 registers.
///
/// # Safety
/// AVX2 and FMA must be available; the panels hold `kc`·MR and `kc`·NR floats; `c` as
/// for [`kernel_scalar`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx2(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    overwrite: bool,
) {
    use std::arch::x86_64::*;
    for r0 in (0..rows).step_by(4) {
        for c0 in (0..cols).step_by(16) {
            let mut acc = [[_mm256_setzero_ps(); 2]; 4];
            for kk in 0..kc {
                let b0 = _mm256_loadu_ps(b.add(kk * NR + c0));
                let b1 = _mm256_loadu_ps(b.add(kk * NR + c0 + 8));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_ps(*a.add(kk * MR + r0 + r));
                    acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                }
            }
            let width = (cols - c0).min(16);
            for (r, acc) in acc.iter().enumerate().take(rows - r0) {
                let mut lanes = [0.0f32; 16];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[1]);
                let row = c.add((r0 + r) * ldc + c0);
                for (j, &v) in lanes.iter().enumerate().take(width) {
                    let p = row.add(j);
                    *p = if overwrite { v } else { v + *p };
                }
            }
        }
    }
}

/// `c[..rows][..cols] (+)= a_panel · b_panel` over `kc` steps: [`kernel_rows`] with as many
/// rows of accumulators as the tile has (an edge tile of 4 rows does the work of 4, not 12).
///
/// # Safety
/// AVX-512F must be available; otherwise as for [`kernel_avx2`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx512(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    overwrite: bool,
) {
    macro_rules! by_rows {
        ($($r:literal)*) => {
            match rows {
                $($r => kernel_rows::<$r>(kc, a, b, c, ldc, cols, overwrite),)*
                _ => unreachable!("a tile has 1 to {MR} rows"),
            }
        };
    }
    const _: () = assert!(MR == 12, "kernel_avx512 lists every row count up to MR");
    by_rows!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// `c[..R][..cols] (+)= a_panel · b_panel` over `kc` steps, two accumulators of 16 lanes per
/// row (24 of the 32 registers for a full tile); masked loads and stores clip the columns.
/// Each row's sums are the same whatever `R` is: rows never meet.
///
/// # Safety
/// AVX-512F must be available; otherwise as for [`kernel_avx2`], with `R` ≤ MR rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_rows<const R: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    overwrite: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for kk in 0..kc {
        let b0 = _mm512_loadu_ps(b.add(kk * NR));
        let b1 = _mm512_loadu_ps(b.add(kk * NR + 16));
        for (r, acc) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(kk * MR + r));
            acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
        }
    }
    let mask = |n: usize| -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    };
    let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
    for (r, acc) in acc.iter().enumerate() {
        let (p, q) = (c.add(r * ldc), c.add(r * ldc).wrapping_add(16));
        let (mut v0, mut v1) = (acc[0], acc[1]);
        if !overwrite {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, p));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, q));
        }
        _mm512_mask_storeu_ps(p, m0, v0);
        _mm512_mask_storeu_ps(q, m1, v1);
    }
}
