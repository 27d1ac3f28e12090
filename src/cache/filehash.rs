//! Hashes of input data files, remembered by path + size + mtime so a large dataset is read
//! once, not on every run. The memo is advisory: a lost or garbled memo only costs a rehash.

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

/// Thread-safe memo of file hashes, persisted to one JSON file in the cache.
pub struct FileHasher {
    memo_path: PathBuf,
    memo: Mutex<BTreeMap<PathBuf, Stamp>>,
    dirty: Mutex<bool>,
    perms: super::GroupPerms,
}

impl FileHasher {
    pub fn load(memo_path: PathBuf) -> Self {
        let memo = std::fs::read(&memo_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        FileHasher {
            memo_path,
            memo: Mutex::new(memo),
            dirty: Mutex::new(false),
            perms: super::GroupPerms::NONE,
        }
    }

    /// Write the memo group-shared.
    pub fn with_perms(mut self, perms: super::GroupPerms) -> Self {
        self.perms = perms;
        self
    }

    /// blake3 of the file's bytes; reads the file only if its size or mtime changed.
    pub fn hash(&self, path: &Path) -> std::io::Result<ContentHash> {
        let abs = std::fs::canonicalize(path)?;
        let meta = std::fs::metadata(&abs)?;
        let mtime_ns = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
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

    /// Write the memo back if it changed (atomically; concurrent writers may drop each other's
    /// additions, which only costs a rehash later).
    pub fn save(&self) -> std::io::Result<()> {
        if !*lock(&self.dirty) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&*lock(&self.memo)).map_err(std::io::Error::other)?;
        super::atomic_write_shared(&self.memo_path, &bytes, self.perms)
    }
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
