//! The manifest of one cache entry: what the stage was, what it was keyed on, and the blake3 of
//! every file it holds. `verify` trusts nothing but this file and the bytes on disk.

use crate::digest::{ContentHash, StageKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MANIFEST_FORMAT: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
/// Artifact files (the stage's result) live here; they make up the content hash.
pub const OUT_DIR: &str = "out";
/// Log and other by-products live here; verified, but not part of the content hash, so that
/// timings in a log never defeat early cutoff or determinism.
pub const AUX_DIR: &str = "aux";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub blake3: ContentHash,
    pub size: u64,
}

/// How the result was produced; informational, never part of a key or content hash.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunInfo {
    pub wall_s: f64,
    pub device: String,
    pub started_unix_ms: u128,
    pub host: String,
    pub pid: u32,
    pub cfpipe_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub key: StageKey,
    /// The readable id of the stage that first produced this entry (others may share it).
    pub stage_id: String,
    pub kind: String,
    pub version: u32,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, ContentHash>,
    pub files: BTreeMap<String, ContentHash>,
    pub outputs: BTreeMap<String, FileRecord>,
    pub aux: BTreeMap<String, FileRecord>,
    /// blake3 over the canonical list of output names and hashes.
    pub content_hash: ContentHash,
    pub run: RunInfo,
}

/// The content hash of an artifact: a function of its file names and bytes only.
pub fn content_hash_of(outputs: &BTreeMap<String, FileRecord>) -> ContentHash {
    let mut h = blake3::Hasher::new();
    h.update(b"cfpipe-artifact-v1\0");
    for (name, rec) in outputs {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(rec.blake3.as_bytes());
    }
    ContentHash::from_bytes(*h.finalize().as_bytes())
}

/// Artifact file names are plain so they map to one file each, on every filesystem.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}
