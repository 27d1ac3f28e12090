//! Identical files stored once: every artifact file of at least [`BLOB_MIN`] bytes is a hard
//! link to `blobs/<h0h1>/<blake3>`, so two entries whose stages produced the same bytes (a
//! model that a stage passes through unchanged, a training shared by strategies whose keys
//! differ only downstream, a pull of what is already here) share one inode.
//!
//! Links rather than references in the manifest keep everything else as it was: an entry is
//! still a directory of plain files that PyTorch, `cache verify` and a remote push read by
//! path, and the manifest, keys and content hashes do not change. The sharing is visible only
//! in link counts:
//! - a blob whose only name is the one under `blobs/` (link count 1) belongs to no entry, and
//!   gc removes it ([`sweep`]);
//! - damage to a shared blob is damage to every entry that links it, and each of them reports
//!   it on its next full verification (the bytes are the same inode);
//! - a blob is verified (size and blake3) before a new entry links it, so a damaged blob never
//!   spreads into a new entry: its name is dropped and the new bytes become the blob.
//!
//! Every step is crash-safe without a journal: a blob name is created only by linking a file
//! that is already complete and fsynced, a crash between the steps leaves at worst an
//! unlinked blob (gc's) or an entry that is not deduplicated (harmless), and a race with gc or
//! another publisher ends in a plain write of the bytes. Creating or removing a link changes
//! the inode's ctime, so the verified-entry memo (`verified`) rehashes the entries that share
//! it once; that costs a read, never a wrong hit.

use super::perms::GroupPerms;
use crate::digest::ContentHash;
use std::fs;
use std::path::{Path, PathBuf};

/// The store of shared files, under the cache root.
pub const BLOBS_DIR: &str = "blobs";

/// Files smaller than this are written into their entry as before: a link saves little on a
/// small JSON file and would add a name to `blobs/` for every stage.
pub const BLOB_MIN: u64 = 4096;

/// Where the blob of `hash` lives under the cache `root`.
pub fn blob_path(root: &Path, hash: &ContentHash) -> PathBuf {
    let hex = hash.to_hex();
    root.join(BLOBS_DIR).join(&hex[..2]).join(hex)
}

/// Whether the blob at `path` holds exactly `size` bytes hashing to `hash`.
fn blob_holds(path: &Path, hash: &ContentHash, size: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.len() == size)
        && super::filehash::hash_file(path).is_ok_and(|h| h == *hash)
}

/// Put `bytes` (whose blake3 is `hash`) at `dest` inside an entry being built: a link to the
/// verified blob if there is one, else a written, fsynced file that then becomes the blob.
/// `write` writes and fsyncs a file (the caller's, so both paths write alike).
pub fn place(
    root: &Path,
    perms: GroupPerms,
    dest: &Path,
    bytes: &[u8],
    hash: &ContentHash,
    write: impl Fn(&Path, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let size = bytes.len() as u64;
    if size < BLOB_MIN {
        return write(dest, bytes);
    }
    let blob = blob_path(root, hash);
    if blob.exists() {
        if blob_holds(&blob, hash, size) {
            // gc may remove the blob meanwhile (it had no other link): then write.
            if fs::hard_link(&blob, dest).is_ok() {
                return Ok(());
            }
        } else {
            // Damaged (or torn by a file system that lost a write): entries that link it
            // report it themselves; new ones must not link it.
            let _ = fs::remove_file(&blob);
        }
    }
    write(dest, bytes)?;
    let parent = blob.parent().expect("a blob path has a parent");
    // If this fails (another publisher stored the same bytes first, or this file system has
    // no hard links), the entry keeps its own copy: only the sharing is lost.
    let _ = perms
        .create_dir_all(parent)
        .and_then(|()| fs::hard_link(dest, &blob));
    Ok(())
}

/// The bytes of the blob of `hash`, if it exists and verifies: a pull takes them from here
/// rather than downloading them again.
pub fn read_verified(root: &Path, hash: &ContentHash, size: u64) -> Option<Vec<u8>> {
    if size < BLOB_MIN {
        return None;
    }
    let bytes = fs::read(blob_path(root, hash)).ok()?;
    (bytes.len() as u64 == size && ContentHash::of(&bytes) == *hash).then_some(bytes)
}

/// The bytes a file frees when this name of it is removed: its size if it is the inode's only
/// link, else nothing (a blob or another entry still holds it).
pub fn unshared_size(meta: &fs::Metadata) -> u64 {
    if is_only_link(meta) {
        meta.len()
    } else {
        0
    }
}

fn is_only_link(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.is_file() && meta.nlink() <= 1
}

/// What [`sweep`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub blobs: usize,
    pub bytes: u64,
}

/// Remove every blob that no entry links (link count 1). A publisher that verified such a blob
/// an instant before finds its link failing and writes the bytes instead; one that linked it
/// first raised the count, and the blob is kept (or, if removed in between, the entry keeps
/// the inode and only the sharing is lost).
pub fn sweep(root: &Path) -> Swept {
    let mut swept = Swept::default();
    let Ok(shards) = fs::read_dir(root.join(BLOBS_DIR)) else {
        return swept;
    };
    for shard in shards.flatten() {
        let Ok(files) = fs::read_dir(shard.path()) else {
            continue;
        };
        for f in files.flatten() {
            let p = f.path();
            let Ok(meta) = fs::symlink_metadata(&p) else {
                continue;
            };
            if is_only_link(&meta) && fs::remove_file(&p).is_ok() {
                swept.blobs += 1;
                swept.bytes += meta.len();
            }
        }
    }
    swept
}
