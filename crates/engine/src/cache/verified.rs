//! A memo of entries verified in full, so that a cached rerun need not re-hash every file of
//! every entry it serves. An entry is remembered with a stamp of its files' metadata: name,
//! size, inode, mtime and ctime (each to the nanosecond). Any write to a file, a replaced
//! file or a restored mtime changes the ctime, which no user call can set back, so the stamp
//! no longer matches and the next lookup hashes the entry again. What the memo cannot see is
//! damage below the file system (a bit rotting on disk without a write): `cache verify`
//! always hashes everything, as do lookups on systems without these fields.
//!
//! The memo is advisory, like the data-file hash memo: a lost, stale or garbled one costs a
//! rehash, never a wrong hit, because a hit also needs the stamp of the files as they are now.
//! It is one small JSON file (`index/verified.json`, key → stamp); a save merges what other
//! processes saved since it was read, and replaces the file atomically.

use super::GroupPerms;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Debug)]
pub(crate) struct VerifiedMemo {
    path: PathBuf,
    stamps: Mutex<BTreeMap<String, String>>,
    dirty: AtomicBool,
}

fn read(path: &Path) -> BTreeMap<String, String> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

impl VerifiedMemo {
    pub(crate) fn load(path: PathBuf) -> VerifiedMemo {
        VerifiedMemo {
            stamps: Mutex::new(read(&path)),
            path,
            dirty: AtomicBool::new(false),
        }
    }

    /// Whether `key`'s entry was verified in full with its files as `stamp` describes them.
    pub(crate) fn holds(&self, key: &str, stamp: &str) -> bool {
        let stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        stamps.get(key).is_some_and(|s| s == stamp)
    }

    /// Remember that `key`'s entry verified in full with files stamped `stamp`.
    pub(crate) fn record(&self, key: &str, stamp: String) {
        let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        if stamps.get(key) != Some(&stamp) {
            stamps.insert(key.to_string(), stamp);
            self.dirty.store(true, Ordering::SeqCst);
        }
    }

    /// Write what this process learned, merged over what others saved meanwhile (ours wins:
    /// it was stamped from the files as they are). Nothing is written when nothing is new.
    pub(crate) fn save(&self, perms: GroupPerms) -> std::io::Result<()> {
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let ours = self
            .stamps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut all = read(&self.path);
        all.extend(ours);
        let bytes = serde_json::to_vec(&all).expect("plain data");
        super::atomic_write_shared(&self.path, &bytes, perms)
    }
}

/// The stamp of an entry's files (`(name within the entry, metadata)`), or `None` where the
/// platform gives no inode and ctime (then every lookup hashes).
pub(crate) fn stamp(files: &[(String, std::fs::Metadata)]) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mut h = blake3::Hasher::new();
        for (name, m) in files {
            h.update(name.as_bytes());
            h.update(&[0]);
            for v in [
                m.len() as i64,
                m.dev() as i64,
                m.ino() as i64,
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            ] {
                h.update(&v.to_le_bytes());
            }
        }
        Some(h.finalize().to_hex()[..32].to_string())
    }
    #[cfg(not(unix))]
    {
        let _ = files;
        None
    }
}
