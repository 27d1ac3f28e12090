//! Reader and writer for the IDX array format used by MNIST and Fashion-MNIST.
//!
//! An IDX file is a 4-byte magic number `00 00 TT NN` (TT = element type, NN = number of
//! dimensions), then NN big-endian `u32` dimension sizes, then the elements in row-major order.
//! This module is the only place that parses dataset files: [`read_idx`] turns a file on disk
//! (raw, or gzip-compressed as distributed; detected by the gzip magic bytes, not the extension)
//! into an [`IdxArray`] of unsigned bytes, and the dataset stages build tensors from that.
//! Input is treated as untrusted: a wrong magic, an element type other than unsigned byte
//! (`0x08`), a size overflow, a truncated payload or trailing bytes all yield an [`IdxError`]
//! naming the file and what was expected, never a panic. Memory is reserved from what the file
//! actually holds, not from what its header claims. [`write_idx`] writes the same format
//! (gzip with mtime 0, so output is byte-reproducible) and is used to build test fixtures.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use flate2::{Compression, GzBuilder};

/// IDX element type code for unsigned bytes, the only type this module supports.
const IDX_TYPE_U8: u8 = 0x08;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Cap on the up-front reservation for gzip payloads (the decompressed size is not known
/// before decoding; `read_to_end` grows past this if the data is really there).
const GZ_RESERVE_CAP: usize = 64 << 20;

/// An n-dimensional array of unsigned bytes, row-major; `data.len()` is the product of `dims`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Why an IDX file could not be read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error("IDX {}: cannot read file: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("IDX {}: gzip stream is corrupt, truncated or followed by non-gzip bytes: {source}", path.display())]
    Gzip { path: PathBuf, source: io::Error },

    #[error(
        "IDX {}: bad magic number 0x{found:08x}: expected 0x0000TTNN (two zero bytes, type, rank)",
        path.display()
    )]
    BadMagic { path: PathBuf, found: u32 },

    #[error(
        "IDX {}: unsupported element type 0x{code:02x}: only unsigned byte (0x08) is supported",
        path.display()
    )]
    UnsupportedType { path: PathBuf, code: u8 },

    #[error("IDX {}: rank {ndims} is not supported: expected at least 1 dimension", path.display())]
    BadRank { path: PathBuf, ndims: u8 },

    #[error("IDX {}: dimensions {dims:?} overflow the addressable size", path.display())]
    SizeOverflow { path: PathBuf, dims: Vec<u64> },

    #[error(
        "IDX {}: truncated: expected {expected} bytes (header + payload), found {found}",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        expected: usize,
        found: usize,
    },

    #[error(
        "IDX {}: trailing data: expected {expected} bytes (header + payload), found {found}",
        path.display()
    )]
    TrailingData {
        path: PathBuf,
        expected: usize,
        found: usize,
    },
}

/// Read an unsigned-byte IDX file, raw or gzip-compressed (detected by content).
pub fn read_idx(path: &Path) -> Result<IdxArray, IdxError> {
    read(path, true)
}

/// Check an IDX file as [`read_idx`] does, through to its end (a gzip stream is decoded), but
/// keep nothing of the payload: memory stays constant. Returns the dimensions.
pub fn check_idx(path: &Path) -> Result<Vec<usize>, IdxError> {
    read(path, false).map(|a| a.dims)
}

/// [`read_idx`], keeping the payload or only counting it.
fn read(path: &Path, keep: bool) -> Result<IdxArray, IdxError> {
    let io_err = |source: io::Error| IdxError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut reader = BufReader::new(file);

    let mut sniff = [0u8; 2];
    let n = read_full(&mut reader, &mut sniff).map_err(io_err)?;
    let sniff = sniff.get(..n).unwrap_or(&[]);
    let is_gz = sniff == GZIP_MAGIC;
    // Put the sniffed bytes back in front of the stream.
    let stream = sniff.chain(reader);

    if is_gz {
        let mut dec = MultiGzDecoder::new(stream);
        parse(path, &mut dec, GZ_RESERVE_CAP, keep, |source| {
            IdxError::Gzip {
                path: path.to_path_buf(),
                source,
            }
        })
    } else {
        let mut stream = stream;
        let cap = usize::try_from(file_len).unwrap_or(usize::MAX);
        parse(path, &mut stream, cap, keep, io_err)
    }
}

/// Parse a decoded IDX byte stream. `reserve_cap` bounds the up-front allocation; without
/// `keep` the payload is counted, not stored; `stream_err` classifies read errors (I/O vs.
/// corrupt gzip).
fn parse<R: Read>(
    path: &Path,
    r: &mut R,
    reserve_cap: usize,
    keep: bool,
    stream_err: impl Fn(io::Error) -> IdxError,
) -> Result<IdxArray, IdxError> {
    let truncated = |expected: usize, found: usize| IdxError::Truncated {
        path: path.to_path_buf(),
        expected,
        found,
    };

    let mut magic = [0u8; 4];
    let got = read_full(r, &mut magic).map_err(&stream_err)?;
    if got < magic.len() {
        return Err(truncated(magic.len(), got));
    }
    let [z0, z1, code, ndims] = magic;
    if z0 != 0 || z1 != 0 {
        return Err(IdxError::BadMagic {
            path: path.to_path_buf(),
            found: u32::from_be_bytes(magic),
        });
    }
    if code != IDX_TYPE_U8 {
        return Err(IdxError::UnsupportedType {
            path: path.to_path_buf(),
            code,
        });
    }
    if ndims == 0 {
        return Err(IdxError::BadRank {
            path: path.to_path_buf(),
            ndims,
        });
    }

    let rank = usize::from(ndims);
    let header_len = 4 + 4 * rank;
    let mut raw_dims: Vec<u64> = Vec::with_capacity(rank);
    for i in 0..rank {
        let mut d = [0u8; 4];
        let got = read_full(r, &mut d).map_err(&stream_err)?;
        if got < d.len() {
            return Err(truncated(header_len, 4 + 4 * i + got));
        }
        raw_dims.push(u64::from(u32::from_be_bytes(d)));
    }
    let overflow = || IdxError::SizeOverflow {
        path: path.to_path_buf(),
        dims: raw_dims.clone(),
    };
    let dims: Vec<usize> = raw_dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| overflow())?;
    let payload = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    let expected = header_len.checked_add(payload).ok_or_else(overflow)?;

    let mut data = Vec::new();
    let payload_u64 = u64::try_from(payload).map_err(|_| overflow())?;
    let got = if keep {
        data.try_reserve(payload.min(reserve_cap))
            .map_err(|_| overflow())?;
        r.by_ref()
            .take(payload_u64)
            .read_to_end(&mut data)
            .map_err(&stream_err)?;
        data.len()
    } else {
        let n =
            io::copy(&mut r.by_ref().take(payload_u64), &mut io::sink()).map_err(&stream_err)?;
        usize::try_from(n).unwrap_or(usize::MAX)
    };
    if got < payload {
        return Err(truncated(expected, header_len.saturating_add(got)));
    }

    // Anything after the payload is an error; count it (constant memory) for the message.
    let extra = io::copy(r, &mut io::sink()).map_err(&stream_err)?;
    if extra > 0 {
        let found = usize::try_from(extra)
            .ok()
            .and_then(|e| expected.checked_add(e))
            .unwrap_or(usize::MAX);
        return Err(IdxError::TrailingData {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }

    Ok(IdxArray { dims, data })
}

/// Fill `buf` as far as the stream allows; returns the number of bytes read (short only at EOF).
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = buf.get_mut(filled..).unwrap_or(&mut []);
        match r.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Write an unsigned-byte IDX file. With `gzip`, the output is gzip-compressed with a fixed
/// header (mtime 0, no file name), so identical inputs give identical bytes.
/// Fails with `InvalidInput` if `dims` is empty, has more than 255 entries, has an entry above
/// `u32::MAX`, or its product is not `data.len()`.
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8], gzip: bool) -> io::Result<()> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let ndims = u8::try_from(dims.len())
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| invalid(format!("IDX rank must be 1..=255, got {}", dims.len())))?;
    let product = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if product != Some(data.len()) {
        return Err(invalid(format!(
            "IDX dims {dims:?} do not match data length {}",
            data.len()
        )));
    }
    let mut header = Vec::with_capacity(4 + 4 * dims.len());
    header.extend_from_slice(&[0, 0, IDX_TYPE_U8, ndims]);
    for &d in dims {
        let d = u32::try_from(d).map_err(|_| invalid(format!("IDX dimension {d} exceeds u32")))?;
        header.extend_from_slice(&d.to_be_bytes());
    }

    let out = BufWriter::new(File::create(path)?);
    if gzip {
        let mut enc = GzBuilder::new().mtime(0).write(out, Compression::best());
        enc.write_all(&header)?;
        enc.write_all(data)?;
        enc.finish()?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
    } else {
        let mut out = out;
        out.write_all(&header)?;
        out.write_all(data)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;

    /// Hand-written 2x3 IDX: magic 00 00 08 02, dims 2 and 3 big-endian, 6 payload bytes.
    const TINY: [u8; 18] = [
        0x00, 0x00, 0x08, 0x02, // magic: u8, rank 2
        0x00, 0x00, 0x00, 0x02, // dim 0 = 2
        0x00, 0x00, 0x00, 0x03, // dim 1 = 3
        0, 1, 2, 253, 254, 255, // payload
    ];

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn put(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn tiny_expected() -> IdxArray {
        IdxArray {
            dims: vec![2, 3],
            data: vec![0, 1, 2, 253, 254, 255],
        }
    }

    #[test]
    fn reads_hand_written_raw() {
        let dir = tempfile::tempdir().unwrap();
        let a = read_idx(&put(&dir, "tiny.idx", &TINY)).unwrap();
        assert_eq!(a, tiny_expected());
    }

    #[test]
    fn reads_hand_written_gz() {
        let dir = tempfile::tempdir().unwrap();
        let a = read_idx(&put(&dir, "tiny.idx.gz", &gz(&TINY))).unwrap();
        assert_eq!(a, tiny_expected());
    }

    #[test]
    fn gzip_detected_by_content_not_extension() {
        let dir = tempfile::tempdir().unwrap();
        // gzip bytes under a non-.gz name, raw bytes under a .gz name: both must read.
        let a = read_idx(&put(&dir, "no_extension", &gz(&TINY))).unwrap();
        assert_eq!(a, tiny_expected());
        let b = read_idx(&put(&dir, "lies.gz", &TINY)).unwrap();
        assert_eq!(b, tiny_expected());
    }

    #[test]
    fn write_idx_raw_is_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.idx");
        write_idx(&p, &[2, 3], &[0, 1, 2, 253, 254, 255], false).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), TINY.to_vec());
        assert_eq!(read_idx(&p).unwrap(), tiny_expected());
    }

    #[test]
    fn write_idx_gz_round_trip_and_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let p1 = dir.path().join("a.gz");
        let p2 = dir.path().join("b.gz");
        let dims = [4usize, 2, 5];
        let data: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
        write_idx(&p1, &dims, &data, true).unwrap();
        write_idx(&p2, &dims, &data, true).unwrap();
        let b1 = std::fs::read(&p1).unwrap();
        assert_eq!(b1.get(..2), Some(&GZIP_MAGIC[..]));
        assert_eq!(
            b1.get(4..8),
            Some(&[0u8, 0, 0, 0][..]),
            "gzip mtime must be 0"
        );
        assert_eq!(b1, std::fs::read(&p2).unwrap());
        let a = read_idx(&p1).unwrap();
        assert_eq!(a.dims, vec![4, 2, 5]);
        assert_eq!(a.data, data);
    }

    #[test]
    fn write_idx_rejects_bad_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        for (dims, len) in [(vec![2usize, 3], 5usize), (vec![], 0), (vec![1; 256], 1)] {
            let e = write_idx(&p, &dims, &vec![0; len], false).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "dims {dims:?}");
        }
    }

    #[test]
    fn bad_magic() {
        let dir = tempfile::tempdir().unwrap();
        for (b0, b1, want) in [
            (0x01, 0x02, 0x0102_0802u32),
            (0x00, 0x01, 0x0001_0802),
            (0x01, 0x00, 0x0100_0802),
        ] {
            let mut b = TINY;
            b[0] = b0;
            b[1] = b1;
            match read_idx(&put(&dir, "m", &b)) {
                Err(IdxError::BadMagic { found, .. }) => assert_eq!(found, want),
                other => panic!("expected BadMagic 0x{want:08x}, got {other:?}"),
            }
        }
    }

    #[test]
    fn unsupported_type_and_rank() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = TINY;
        b[2] = 0x0D; // float
        match read_idx(&put(&dir, "t", &b)) {
            Err(IdxError::UnsupportedType { code, .. }) => assert_eq!(code, 0x0D),
            other => panic!("expected UnsupportedType, got {other:?}"),
        }
        match read_idx(&put(&dir, "r", &[0, 0, 8, 0, 7])) {
            Err(IdxError::BadRank { ndims, .. }) => assert_eq!(ndims, 0),
            other => panic!("expected BadRank, got {other:?}"),
        }
    }

    #[test]
    fn truncated_payload_raw_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        let short = &TINY[..TINY.len() - 1];
        for (name, bytes) in [("s.idx", short.to_vec()), ("s.gz", gz(short))] {
            match read_idx(&put(&dir, name, &bytes)) {
                Err(IdxError::Truncated {
                    expected, found, ..
                }) => {
                    assert_eq!((expected, found), (18, 17), "{name}")
                }
                other => panic!("{name}: expected Truncated, got {other:?}"),
            }
        }
    }

    #[test]
    fn truncated_header() {
        let dir = tempfile::tempdir().unwrap();
        match read_idx(&put(&dir, "empty", &[])) {
            Err(IdxError::Truncated {
                expected, found, ..
            }) => assert_eq!((expected, found), (4, 0)),
            other => panic!("expected Truncated, got {other:?}"),
        }
        match read_idx(&put(&dir, "h", &TINY[..9])) {
            Err(IdxError::Truncated {
                expected, found, ..
            }) => assert_eq!((expected, found), (12, 9)),
            other => panic!("expected Truncated, got {other:?}"),
        }
    }

    #[test]
    fn huge_claimed_dims_do_not_allocate_or_panic() {
        let dir = tempfile::tempdir().unwrap();
        // Claims 0xFFFFFFFF bytes, holds 2.
        let b = [0, 0, 8, 1, 0xff, 0xff, 0xff, 0xff, 1, 2];
        match read_idx(&put(&dir, "big", &b)) {
            #[cfg(target_pointer_width = "64")]
            Err(IdxError::Truncated {
                expected, found, ..
            }) => {
                assert_eq!((expected, found), (8 + 0xffff_ffff, 10))
            }
            #[cfg(not(target_pointer_width = "64"))]
            Err(IdxError::SizeOverflow { .. }) => {}
            other => panic!("expected Truncated, got {other:?}"),
        }
        // Product 2^96 overflows usize on every target.
        let mut b = vec![0, 0, 8, 3];
        b.extend_from_slice(&[0xff; 12]);
        match read_idx(&put(&dir, "ovf", &b)) {
            Err(IdxError::SizeOverflow { dims, .. }) => assert_eq!(dims, vec![0xffff_ffff; 3]),
            other => panic!("expected SizeOverflow, got {other:?}"),
        }
    }

    #[test]
    fn trailing_data_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut long = TINY.to_vec();
        long.extend_from_slice(&[9, 9, 9]);
        for (name, bytes) in [("l.idx", long.clone()), ("l.gz", gz(&long))] {
            match read_idx(&put(&dir, name, &bytes)) {
                Err(IdxError::TrailingData {
                    expected, found, ..
                }) => {
                    assert_eq!((expected, found), (18, 21), "{name}")
                }
                other => panic!("{name}: expected TrailingData, got {other:?}"),
            }
        }
        // Non-gzip garbage after a complete gzip member.
        let mut g = gz(&TINY);
        g.extend_from_slice(b"garbage");
        match read_idx(&put(&dir, "g.gz", &g)) {
            Err(IdxError::Gzip { .. }) => {}
            other => panic!("expected Gzip error, got {other:?}"),
        }
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let g = gz(&TINY);
        let cut = &g[..g.len() - 10]; // drops the CRC/size trailer and part of the stream
        match read_idx(&put(&dir, "c.gz", cut)) {
            Err(IdxError::Gzip { .. }) | Err(IdxError::Truncated { .. }) => {}
            other => panic!("expected Gzip/Truncated error, got {other:?}"),
        }
    }

    #[test]
    fn missing_file_is_io_error_naming_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("does-not-exist");
        let e = read_idx(&p).unwrap_err();
        assert!(matches!(e, IdxError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("does-not-exist"), "{e}");
    }

    /// Every prefix and every single-byte corruption of valid raw and gzip files must give
    /// `Ok` or `Err`, never a panic.
    #[test]
    fn never_panics_on_mangled_input() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        for base in [TINY.to_vec(), gz(&TINY)] {
            for cut in 0..base.len() {
                std::fs::write(&p, &base[..cut]).unwrap();
                assert!(read_idx(&p).is_err(), "prefix {cut} of {base:?} accepted");
            }
            for i in 0..base.len() {
                for v in [0x00u8, 0x01, 0x7f, 0x80, 0xff] {
                    let mut b = base.clone();
                    b[i] = v;
                    std::fs::write(&p, &b).unwrap();
                    let _ = read_idx(&p);
                }
            }
        }
    }

    /// The MNIST subset bundled with the crate (see data/mnist/README.md).
    #[test]
    fn bundled_mnist10k() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
        let img = read_idx(&dir.join("mnist10k-images-idx3-ubyte.gz")).unwrap();
        let lbl = read_idx(&dir.join("mnist10k-labels-idx1-ubyte.gz")).unwrap();
        assert_eq!(img.dims, vec![10_000, 28, 28]);
        assert_eq!(img.data.len(), 10_000 * 784);
        assert_eq!(lbl.dims, vec![10_000]);
        let mut counts = [0usize; 10];
        for &l in &lbl.data {
            counts[usize::from(l)] += 1;
        }
        assert_eq!(
            counts,
            [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
        );
        assert_eq!(img.data.iter().copied().max(), Some(255));
    }

    /// Full Fashion-MNIST as installed by Debian's `dataset-fashion-mnist`
    /// (`apt-get install dataset-fashion-mnist`). Run with `cargo test -- --ignored`.
    #[test]
    #[ignore = "needs /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist)"]
    fn system_fashion_mnist() {
        let dir = Path::new("/usr/share/datasets/fashion-mnist");
        for (split, n) in [("train", 60_000usize), ("t10k", 10_000)] {
            let img = read_idx(&dir.join(format!("{split}-images-idx3-ubyte.gz"))).unwrap();
            let lbl = read_idx(&dir.join(format!("{split}-labels-idx1-ubyte.gz"))).unwrap();
            assert_eq!(img.dims, vec![n, 28, 28]);
            assert_eq!(img.data.len(), n * 784);
            assert_eq!(lbl.dims, vec![n]);
            let mut counts = [0usize; 10];
            for &l in &lbl.data {
                counts[usize::from(l)] += 1;
            }
            assert_eq!(
                counts,
                [n / 10; 10],
                "{split}: Fashion-MNIST is class-balanced"
            );
        }
    }
}
