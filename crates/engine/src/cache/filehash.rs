//! Hashes of input data files, remembered by path + size + mtime so a large dataset is read
//! once, not on every run. The memo is advisory: a lost or garbled memo only costs a rehash.
//!
//! A declared input may also be a *directory* (an ImageFolder class folder): its digest is
//! blake3 over every regular file below it (symlinks followed, 16 levels at most), in order of
//! relative path, of the path, the size and the file's content hash, so it depends on names
//! and contents but not on where the folder lives. It is remembered per directory under a
//! digest of its *listing* (relative paths, sizes, mtimes): a rerun lists the folder and stats
//! each file once, and reads nothing unless a file was added, removed, renamed, resized or
//! touched. One memo entry per directory keeps the memo small for an ImageNet of 1.2M files,
//! whose per-file memo would be loaded and searched on every run.

use crate::digest::ContentHash;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: u128,
    blake3: ContentHash,
}

/// A directory's listing digest and its content digest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct DirStamp {
    listing: ContentHash,
    blake3: ContentHash,
}

/// Nesting below a declared directory that its digest follows (guards against symlink loops).
const MAX_DIR_DEPTH: usize = 16;

/// Thread-safe memo of file hashes, persisted to one JSON file in the cache (and directory
/// digests to a second one next to it).
pub struct FileHasher {
    memo_path: PathBuf,
    memo: Mutex<BTreeMap<PathBuf, Stamp>>,
    dirs_path: PathBuf,
    dirs: Mutex<BTreeMap<PathBuf, DirStamp>>,
    dirty: Mutex<bool>,
    perms: super::GroupPerms,
}

impl FileHasher {
    pub fn load(memo_path: PathBuf) -> Self {
        let memo = std::fs::read(&memo_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let dirs_path = memo_path.with_file_name("dirhashes.json");
        let dirs = std::fs::read(&dirs_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        FileHasher {
            memo_path,
            memo: Mutex::new(memo),
            dirs_path,
            dirs: Mutex::new(dirs),
            dirty: Mutex::new(false),
            perms: super::GroupPerms::NONE,
        }
    }

    /// Write the memo group-shared.
    pub fn with_perms(mut self, perms: super::GroupPerms) -> Self {
        self.perms = perms;
        self
    }

    /// blake3 of the file's bytes, or a directory's digest (see the module doc); reads a file
    /// only if its size or mtime changed.
    pub fn hash(&self, path: &Path) -> std::io::Result<ContentHash> {
        let abs = std::fs::canonicalize(path)?;
        let meta = std::fs::metadata(&abs)?;
        if meta.is_dir() {
            return self.hash_dir(&abs);
        }
        let mtime_ns = mtime_ns(&meta)?;
        let size = meta.len();
        if let Some(s) = lock(&self.memo).get(&abs) {
            if s.size == size && s.mtime_ns == mtime_ns {
                return Ok(s.blake3);
            }
        }
        let blake3 = hash_file(&abs)?;
        lock(&self.memo).insert(
            abs,
            Stamp {
                size,
                mtime_ns,
                blake3,
            },
        );
        *lock(&self.dirty) = true;
        Ok(blake3)
    }

    fn hash_dir(&self, abs: &Path) -> std::io::Result<ContentHash> {
        let mut files = Vec::new();
        list_files(abs, "", 0, &mut files)?;
        files.sort_by(|a, b| a.rel.cmp(&b.rel));
        let mut h = blake3::Hasher::new();
        for f in &files {
            h.update(f.rel.as_bytes());
            h.update(&[0]);
            h.update(&f.size.to_le_bytes());
            h.update(&f.mtime_ns.to_le_bytes());
        }
        let listing = ContentHash::from_bytes(*h.finalize().as_bytes());
        if let Some(s) = lock(&self.dirs).get(abs) {
            if s.listing == listing {
                return Ok(s.blake3);
            }
        }
        use rayon::prelude::*;
        let contents: Vec<ContentHash> = files
            .par_iter()
            .map(|f| hash_file(&f.path))
            .collect::<std::io::Result<_>>()?;
        let mut h = blake3::Hasher::new();
        h.update(b"cfpipe-dir-v1\0");
        for (f, c) in files.iter().zip(&contents) {
            h.update(f.rel.as_bytes());
            h.update(&[0]);
            h.update(&f.size.to_le_bytes());
            h.update(c.as_bytes());
        }
        let blake3 = ContentHash::from_bytes(*h.finalize().as_bytes());
        lock(&self.dirs).insert(abs.to_path_buf(), DirStamp { listing, blake3 });
        *lock(&self.dirty) = true;
        Ok(blake3)
    }

    /// Write the memos back if they changed (atomically; concurrent writers may drop each
    /// other's additions, which only costs a rehash later).
    pub fn save(&self) -> std::io::Result<()> {
        if !*lock(&self.dirty) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&*lock(&self.memo)).map_err(std::io::Error::other)?;
        super::atomic_write_shared(&self.memo_path, &bytes, self.perms)?;
        let bytes = serde_json::to_vec(&*lock(&self.dirs)).map_err(std::io::Error::other)?;
        super::atomic_write_shared(&self.dirs_path, &bytes, self.perms)
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> std::io::Result<u128> {
    Ok(meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0))
}

/// One regular file below a declared directory.
struct Listed {
    /// Path relative to the directory, `/`-separated.
    rel: String,
    size: u64,
    mtime_ns: u128,
    path: PathBuf,
}

/// Every regular file below `dir` (one stat each; symlinks followed).
fn list_files(
    dir: &Path,
    prefix: &str,
    depth: usize,
    out: &mut Vec<Listed>,
) -> std::io::Result<()> {
    if depth > MAX_DIR_DEPTH {
        return Err(std::io::Error::other(format!(
            "{}: folders nest more than {MAX_DIR_DEPTH} levels deep (a symlink loop?)",
            dir.display()
        )));
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = format!("{prefix}{name}");
        let path = entry.path();
        let meta = if entry.file_type()?.is_symlink() {
            std::fs::metadata(&path)?
        } else {
            entry.metadata()?
        };
        if meta.is_dir() {
            list_files(&path, &format!("{rel}/"), depth + 1, out)?;
        } else if meta.is_file() {
            out.push(Listed {
                rel,
                size: meta.len(),
                mtime_ns: mtime_ns(&meta)?,
                path,
            });
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stream a file through blake3.
pub fn hash_file(path: &Path) -> std::io::Result<ContentHash> {
    let mut f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(ContentHash::from_bytes(*h.finalize().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// Write `bytes` and set a distinct mtime, so a same-size rewrite is never hidden by a
    /// coarse file-system clock.
    fn write(path: &Path, bytes: &[u8], tick: u64) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000 + tick);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn a_directory_digest_changes_with_any_file_and_not_with_the_location() {
        let tmp = tempfile::tempdir().unwrap();
        let class = tmp.path().join("data/n01");
        write(&class.join("a.jpg"), b"aaaa", 1);
        write(&class.join("sub/b.jpg"), b"bbbb", 2);
        let hasher = FileHasher::load(tmp.path().join("memo.json"));
        let base = hasher.hash(&class).unwrap();
        assert_eq!(hasher.hash(&class).unwrap(), base, "not stable");
        let mut seen = vec![base];
        let mut check = |what: &str| {
            let h = hasher.hash(&class).unwrap();
            assert!(!seen.contains(&h), "{what} kept the digest");
            seen.push(h);
        };
        write(&class.join("a.jpg"), b"aaab", 3);
        check("a changed file of the same size");
        write(&class.join("c.jpg"), b"cc", 4);
        check("an added file");
        write(&class.join("sub/deeper/d.jpg"), b"dd", 5);
        check("a file added in a nested folder");
        std::fs::remove_file(class.join("sub/b.jpg")).unwrap();
        check("a removed file");
        std::fs::rename(class.join("c.jpg"), class.join("e.jpg")).unwrap();
        check("a renamed file");
        // A copy elsewhere, with other mtimes, has the same content digest.
        let now = hasher.hash(&class).unwrap();
        let copy = tmp.path().join("elsewhere/n01");
        for (rel, tick) in [("a.jpg", 10), ("e.jpg", 11), ("sub/deeper/d.jpg", 12)] {
            write(
                &copy.join(rel),
                &std::fs::read(class.join(rel)).unwrap(),
                tick,
            );
        }
        assert_eq!(hasher.hash(&copy).unwrap(), now);
        // The memo survives a save and load, one entry per directory.
        hasher.save().unwrap();
        let again = FileHasher::load(tmp.path().join("memo.json"));
        assert_eq!(lock(&again.dirs).len(), 2);
        assert_eq!(again.hash(&class).unwrap(), now);
    }
}
