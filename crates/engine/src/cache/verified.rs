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
//! It is one small JSON file (`index/verified.json`, key → `stamp:content hash:files`); a save
//! merges what other processes saved since it was read, and replaces the file atomically. The
//! content hash and the list of stamped files let a hit serve the entry without reading or
//! parsing its manifest (a run needs only the key and the content hash of a cached stage; the
//! manifest is read if anything asks). Values written before they were kept (a bare stamp)
//! are not understood, so those entries are hashed once more and remembered anew.

use super::GroupPerms;
use crate::digest::{ContentHash, StageKey};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Debug)]
pub(crate) struct VerifiedMemo {
    path: PathBuf,
    stamps: Mutex<Stamps>,
    dirty: AtomicBool,
}

/// The memo as stored (key hex → value), and the content hash of each key parsed out of it
/// when first asked for: a cached rerun asks for every stage's before it checks any stamp.
#[derive(Debug, Default)]
struct Stamps {
    stored: BTreeMap<String, String>,
    hashes: Option<std::collections::HashMap<StageKey, ContentHash>>,
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
            stamps: Mutex::new(Stamps {
                stored: read(&path),
                hashes: None,
            }),
            path,
            dirty: AtomicBool::new(false),
        }
    }

    /// The content hash remembered for `key`, read alone (a cached rerun's pre-check derives
    /// every key from these before it checks any stamp; the file list is not needed then).
    pub(crate) fn content_hash(&self, key: &StageKey) -> Option<ContentHash> {
        let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        let Stamps { stored, hashes } = &mut *stamps;
        hashes
            .get_or_insert_with(|| {
                stored
                    .iter()
                    .filter_map(|(k, v)| {
                        let hash = ContentHash::from_hex(v.split(':').nth(1)?)?;
                        Some((StageKey::from_hex(k)?, hash))
                    })
                    .collect()
            })
            .get(key)
            .copied()
    }

    /// What is remembered of `key`'s entry, if it verified in full before.
    pub(crate) fn recall(&self, key: &str) -> Option<Recalled> {
        let stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        let mut parts = stamps.stored.get(key)?.splitn(3, ':');
        let (stamp, hash, files) = (parts.next()?, parts.next()?, parts.next()?);
        Some(Recalled {
            stamp: stamp.to_string(),
            content_hash: ContentHash::from_hex(hash)?,
            files: files.split(',').map(str::to_string).collect(),
        })
    }

    /// Remember that `key`'s entry, with content hash `hash`, verified in full with its files
    /// (names within the entry, the manifest first, as [`stamp`] took them) stamped `stamp`.
    pub(crate) fn record(&self, key: &str, stamp: &str, hash: &ContentHash, files: &[&str]) {
        let stamp = value(stamp, hash, files);
        let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        if stamps.stored.get(key) != Some(&stamp) {
            stamps.stored.insert(key.to_string(), stamp);
            if let (Some(hashes), Some(k)) = (&mut stamps.hashes, StageKey::from_hex(key)) {
                hashes.insert(k, *hash);
            }
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
            .stored
            .clone();
        let mut all = read(&self.path);
        all.extend(ours);
        let bytes = serde_json::to_vec(&all).expect("plain data");
        super::atomic_write_shared(&self.path, &bytes, perms)
    }
}

/// What the memo remembers of an entry.
pub(crate) struct Recalled {
    pub stamp: String,
    pub content_hash: ContentHash,
    /// The stamped files, within the entry, the manifest first.
    pub files: Vec<String>,
}

/// What the memo stores for an entry. File names hold neither `:` nor `,`
/// (`manifest::valid_file_name`).
pub(crate) fn value(stamp: &str, hash: &ContentHash, files: &[&str]) -> String {
    format!("{stamp}:{}:{}", hash.to_hex(), files.join(","))
}

/// The stamp of an entry's files (`(name within the entry, metadata)`), or `None` where the
/// platform gives no inode and ctime (then every lookup hashes). Also what other memos of
/// files (the data check's) stamp them with: any write changes it.
pub fn stamp(files: &[(String, std::fs::Metadata)]) -> Option<String> {
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
