//! The manifest of one cache entry: what the stage was, what it was keyed on, and the blake3 of
//! every file it holds. `verify` trusts nothing but this file and the bytes on disk.

use crate::digest::{ContentHash, KeyMaterial, StageKey, KEY_SCHEME};
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

/// Why a manifest does not describe the entry it is filed as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("format {0} (this cfpipe reads {MANIFEST_FORMAT})")]
    Format(u32),
    #[error("it names key {named}, not {filed}")]
    NamesKey { named: StageKey, filed: StageKey },
    /// Its kind, version, parameters or inputs were edited: the entry claims to be a
    /// computation it is not.
    #[error(
        "the stage key derived from its kind, version, params and inputs is {derived}, not {filed}"
    )]
    Key { derived: StageKey, filed: StageKey },
    #[error("its content hash {listed} is not that of its output list ({computed})")]
    ContentHash {
        listed: ContentHash,
        computed: ContentHash,
    },
    #[error("file name `{0}` is not allowed")]
    FileName(String),
}

impl Manifest {
    /// The key of the computation this manifest describes, derived as the executor derives it.
    pub fn derived_key(&self) -> StageKey {
        KeyMaterial {
            scheme: KEY_SCHEME,
            kind: &self.kind,
            version: self.version,
            params: &self.params,
            inputs: &self.inputs,
            files: &self.files,
        }
        .key()
    }

    /// Check that this manifest describes the entry filed under `key`, trusting none of its
    /// fields: the key is re-derived and the content hash recomputed. Local lookups, `verify`,
    /// pushes and pulls all use this one check.
    pub fn check(&self, key: &StageKey) -> Result<(), Fault> {
        if self.format != MANIFEST_FORMAT {
            return Err(Fault::Format(self.format));
        }
        if self.key != *key {
            return Err(Fault::NamesKey {
                named: self.key,
                filed: *key,
            });
        }
        let derived = self.derived_key();
        if derived != *key {
            return Err(Fault::Key {
                derived,
                filed: *key,
            });
        }
        let computed = content_hash_of(&self.outputs);
        if computed != self.content_hash {
            return Err(Fault::ContentHash {
                listed: self.content_hash,
                computed,
            });
        }
        match self
            .outputs
            .keys()
            .chain(self.aux.keys())
            .find(|n| !valid_file_name(n))
        {
            Some(name) => Err(Fault::FileName(name.clone())),
            None => Ok(()),
        }
    }
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
