//! The content-addressed, on-disk store of stage results.
//!
//! Layout under the cache root:
//! - `entries/<k0k1>/<key>/` — one immutable entry per stage key: `manifest.json`, the
//!   artifact files under `out/`, and the log under `aux/`.
//! - `tmp/` — entries being written. An entry is built here, every file fsynced, then renamed
//!   into `entries/` in one step, so a reader (or a SIGKILL) never sees half an entry.
//! - `locks/<key>.lock` — advisory per-key locks (`flock`), so two processes sharing the cache
//!   do not compute the same stage at once; the kernel drops them if the holder dies.
//! - `index/` — advisory records of the last key seen per stage id (for `status` to explain
//!   *why* a stage would rerun) and the data-file hash memo. Losing them costs nothing but
//!   explanations and rehashing.
//!
//! Nothing here knows what a stage computes.

pub mod filehash;
pub mod manifest;
pub mod remote;

use crate::digest::{ContentHash, StageKey};
pub use manifest::{FileRecord, Manifest, RunInfo};
use manifest::{AUX_DIR, MANIFEST_FILE, OUT_DIR};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("artifact file name `{0}` is not allowed (use letters, digits, '.', '_', '-')")]
    BadFileName(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Box<Entry>),
    Missing,
    /// The entry exists but does not match its manifest; `file` says which part.
    Corrupt {
        file: String,
        reason: String,
    },
}

/// A verified, published entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Entry {
    pub fn content_hash(&self) -> ContentHash {
        self.manifest.content_hash
    }
    pub fn output_path(&self, name: &str) -> PathBuf {
        self.dir.join(OUT_DIR).join(name)
    }
    pub fn aux_path(&self, name: &str) -> PathBuf {
        self.dir.join(AUX_DIR).join(name)
    }
}

/// An entry ready to publish: its manifest (hashes are filled in by `publish`) and bytes.
pub struct NewEntry {
    pub key: StageKey,
    pub stage_id: String,
    pub kind: String,
    pub version: u32,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, ContentHash>,
    pub files: BTreeMap<String, ContentHash>,
    pub outputs: BTreeMap<String, Vec<u8>>,
    pub aux: BTreeMap<String, Vec<u8>>,
    pub run: RunInfo,
}

/// Last key seen for a stage id; lets `status` say which parameter or input changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageRecord {
    pub id: String,
    pub key: StageKey,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, ContentHash>,
    pub files: BTreeMap<String, ContentHash>,
}

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// Held while computing a key; released on drop or when the process dies.
pub struct KeyLock {
    _file: fs::File,
}

impl Cache {
    /// Open (creating if needed) a cache directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Cache, CacheError> {
        let root = root.into();
        for sub in ["entries", "tmp", "locks", "index/stages", "trash"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io(&p))?;
        }
        let tag = root.join("CACHEDIR.TAG");
        if !tag.exists() {
            let body = b"Signature: 8a477f597d28d172789f06886806bc55\n# cfpipe cache; see README\n";
            atomic_write(&tag, body).map_err(io(&tag))?;
        }
        Ok(Cache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn file_hasher(&self) -> filehash::FileHasher {
        filehash::FileHasher::load(self.root.join("index").join("filehashes.json"))
    }

    pub fn entry_dir(&self, key: &StageKey) -> PathBuf {
        let hex = key.to_hex();
        self.root.join("entries").join(&hex[..2]).join(hex)
    }

    /// Whether an entry directory exists, without verifying it.
    pub fn contains(&self, key: &StageKey) -> bool {
        self.entry_dir(key).join(MANIFEST_FILE).is_file()
    }

    /// Find and fully verify an entry: every file's size and blake3 must match the manifest.
    pub fn lookup(&self, key: &StageKey) -> Lookup {
        let dir = self.entry_dir(key);
        let mpath = dir.join(MANIFEST_FILE);
        let bytes = match fs::read(&mpath) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => {
                return Lookup::Missing
            }
            Err(e) => {
                return Lookup::Corrupt {
                    file: MANIFEST_FILE.into(),
                    reason: e.to_string(),
                }
            }
        };
        let manifest: Manifest = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                return Lookup::Corrupt {
                    file: MANIFEST_FILE.into(),
                    reason: e.to_string(),
                }
            }
        };
        if manifest.key != *key {
            return Lookup::Corrupt {
                file: MANIFEST_FILE.into(),
                reason: format!(
                    "manifest names key {} but lives under {}",
                    manifest.key, key
                ),
            };
        }
        if manifest::content_hash_of(&manifest.outputs) != manifest.content_hash {
            return Lookup::Corrupt {
                file: MANIFEST_FILE.into(),
                reason: "content hash does not match the output list".into(),
            };
        }
        let all = manifest
            .outputs
            .iter()
            .map(|(n, r)| (OUT_DIR, n, r))
            .chain(manifest.aux.iter().map(|(n, r)| (AUX_DIR, n, r)));
        for (sub, name, rec) in all {
            let p = dir.join(sub).join(name);
            let rel = format!("{sub}/{name}");
            match fs::metadata(&p) {
                Ok(m) if m.len() == rec.size => {}
                Ok(m) => {
                    return Lookup::Corrupt {
                        file: rel,
                        reason: format!("size {} != manifest {}", m.len(), rec.size),
                    }
                }
                Err(e) => {
                    return Lookup::Corrupt {
                        file: rel,
                        reason: e.to_string(),
                    }
                }
            }
            match filehash::hash_file(&p) {
                Ok(h) if h == rec.blake3 => {}
                Ok(_) => {
                    return Lookup::Corrupt {
                        file: rel,
                        reason: "blake3 does not match".into(),
                    }
                }
                Err(e) => {
                    return Lookup::Corrupt {
                        file: rel,
                        reason: e.to_string(),
                    }
                }
            }
        }
        Lookup::Hit(Box::new(Entry { dir, manifest }))
    }

    /// Move an entry out of the way (used for corrupt entries); later lookups see `Missing`.
    pub fn evict(&self, key: &StageKey) -> Result<(), CacheError> {
        let dir = self.entry_dir(key);
        if !dir.exists() {
            return Ok(());
        }
        let trash = self
            .root
            .join("trash")
            .join(format!("{}.{}", key.to_hex(), nonce()));
        fs::rename(&dir, &trash).map_err(io(&dir))?;
        fs::remove_dir_all(&trash).map_err(io(&trash))
    }

    /// Publish an entry atomically. If another process published the same key first, its entry
    /// is kept (both computed the same thing) and returned.
    pub fn publish(&self, new: NewEntry) -> Result<Entry, CacheError> {
        for name in new.outputs.keys().chain(new.aux.keys()) {
            if !manifest::valid_file_name(name) {
                return Err(CacheError::BadFileName(name.clone()));
            }
        }
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}.{}",
            new.key.to_hex(),
            std::process::id(),
            nonce()
        ));
        let result = self.write_and_rename(&tmp, new);
        if tmp.exists() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    fn write_and_rename(&self, tmp: &Path, new: NewEntry) -> Result<Entry, CacheError> {
        let write_all = |sub: &str, files: &BTreeMap<String, Vec<u8>>| {
            let d = tmp.join(sub);
            fs::create_dir_all(&d).map_err(io(&d))?;
            let mut recs = BTreeMap::new();
            for (name, bytes) in files {
                let p = d.join(name);
                write_synced(&p, bytes).map_err(io(&p))?;
                recs.insert(
                    name.clone(),
                    FileRecord {
                        blake3: ContentHash::of(bytes),
                        size: bytes.len() as u64,
                    },
                );
            }
            sync_dir(&d).map_err(io(&d))?;
            Ok::<_, CacheError>(recs)
        };
        let outputs = write_all(OUT_DIR, &new.outputs)?;
        let aux = write_all(AUX_DIR, &new.aux)?;
        let manifest = Manifest {
            format: manifest::MANIFEST_FORMAT,
            key: new.key,
            stage_id: new.stage_id,
            kind: new.kind,
            version: new.version,
            params: new.params,
            inputs: new.inputs,
            files: new.files,
            content_hash: manifest::content_hash_of(&outputs),
            outputs,
            aux,
            run: new.run,
        };
        let mbytes = serde_json::to_vec_pretty(&manifest).expect("manifest is plain data");
        let mp = tmp.join(MANIFEST_FILE);
        write_synced(&mp, &mbytes).map_err(io(&mp))?;
        sync_dir(tmp).map_err(io(tmp))?;

        let dest = self.entry_dir(&new.key);
        let parent = dest.parent().expect("entry dir has a parent");
        fs::create_dir_all(parent).map_err(io(parent))?;
        match fs::rename(tmp, &dest) {
            Ok(()) => {
                sync_dir(parent).map_err(io(parent))?;
                Ok(Entry {
                    dir: dest,
                    manifest,
                })
            }
            // Someone else won the race; an existing entry is never replaced in place.
            Err(_) if dest.join(MANIFEST_FILE).exists() => match self.lookup(&new.key) {
                Lookup::Hit(e) => Ok(*e),
                _ => Err(CacheError::Io {
                    path: dest,
                    source: std::io::Error::other("a concurrent entry exists but does not verify"),
                }),
            },
            Err(e) => Err(CacheError::Io {
                path: dest,
                source: e,
            }),
        }
    }

    /// Block until this process holds the key's lock.
    pub fn lock_key(&self, key: &StageKey) -> Result<KeyLock, CacheError> {
        let p = self
            .root
            .join("locks")
            .join(format!("{}.lock", key.to_hex()));
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io(&p))?;
        f.lock().map_err(io(&p))?;
        Ok(KeyLock { _file: f })
    }

    fn record_path(&self, stage_id: &str) -> PathBuf {
        let h = blake3::hash(stage_id.as_bytes()).to_hex();
        self.root
            .join("index")
            .join("stages")
            .join(format!("{}.json", &h[..32]))
    }

    pub fn stage_record(&self, stage_id: &str) -> Option<StageRecord> {
        let bytes = fs::read(self.record_path(stage_id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Remember the key a stage id last resolved to (skipped when unchanged, to keep cached
    /// reruns free of writes).
    pub fn put_stage_record(&self, rec: &StageRecord) -> Result<(), CacheError> {
        if self.stage_record(&rec.id).as_ref() == Some(rec) {
            return Ok(());
        }
        let p = self.record_path(&rec.id);
        let bytes = serde_json::to_vec_pretty(rec).expect("record is plain data");
        atomic_write(&p, &bytes).map_err(io(&p))
    }

    /// Every key with an entry directory (verified or not).
    pub fn keys(&self) -> Result<Vec<StageKey>, CacheError> {
        let root = self.root.join("entries");
        let mut out = Vec::new();
        for shard in fs::read_dir(&root).map_err(io(&root))? {
            let shard = shard.map_err(io(&root))?.path();
            if !shard.is_dir() {
                continue;
            }
            for e in fs::read_dir(&shard).map_err(io(&shard))? {
                let e = e.map_err(io(&shard))?;
                if let Some(k) = e.file_name().to_str().and_then(StageKey::from_hex) {
                    out.push(k);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Bytes on disk of one entry.
    pub fn entry_size(&self, key: &StageKey) -> u64 {
        dir_size(&self.entry_dir(key))
    }

    /// Read a manifest without verifying files (for listings).
    pub fn read_manifest(&self, key: &StageKey) -> Option<Manifest> {
        let b = fs::read(self.entry_dir(key).join(MANIFEST_FILE)).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Delete every entry whose key is not in `keep`, and leftovers of dead writers in `tmp/`.
    /// Returns the deleted keys and bytes freed.
    pub fn gc(&self, keep: &BTreeSet<StageKey>) -> Result<(Vec<StageKey>, u64), CacheError> {
        let mut removed = Vec::new();
        let mut freed = 0;
        for key in self.keys()? {
            if keep.contains(&key) {
                continue;
            }
            // Never delete what another process is computing or publishing right now.
            let p = self
                .root
                .join("locks")
                .join(format!("{}.lock", key.to_hex()));
            if let Ok(f) = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&p)
            {
                if f.try_lock().is_err() {
                    continue;
                }
                freed += self.entry_size(&key);
                self.evict(&key)?;
                removed.push(key);
                drop(f);
                let _ = fs::remove_file(&p);
            }
        }
        self.clean_tmp()?;
        Ok((removed, freed))
    }

    /// Remove temp dirs whose writing process no longer exists.
    fn clean_tmp(&self) -> Result<(), CacheError> {
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let pid = name.split('.').nth(1).and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }
}

fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{t:x}{:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Write a file so readers see the old or the new bytes, never a mix.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".{}.{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        std::process::id(),
        nonce()
    ));
    write_synced(&tmp, bytes)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_entry(key: StageKey, out: &[u8]) -> NewEntry {
        NewEntry {
            key,
            stage_id: "s".into(),
            kind: "k".into(),
            version: 1,
            params: serde_json::json!({}),
            inputs: Default::default(),
            files: Default::default(),
            outputs: [("a.json".to_string(), out.to_vec())].into(),
            aux: [("log.txt".to_string(), b"log".to_vec())].into(),
            run: RunInfo::default(),
        }
    }

    #[test]
    fn publish_then_lookup_verifies_and_detects_a_flipped_byte() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let key = StageKey::of(b"k1");
        assert!(matches!(c.lookup(&key), Lookup::Missing));
        let e = c.publish(new_entry(key, b"hello")).unwrap();
        let Lookup::Hit(hit) = c.lookup(&key) else {
            panic!("expected hit")
        };
        assert_eq!(hit.content_hash(), e.content_hash());
        let p = hit.output_path("a.json");
        let mut b = fs::read(&p).unwrap();
        b[0] ^= 1;
        fs::write(&p, b).unwrap();
        match c.lookup(&key) {
            Lookup::Corrupt { file, .. } => assert_eq!(file, "out/a.json"),
            other => panic!("expected corrupt, got {other:?}"),
        }
        c.evict(&key).unwrap();
        assert!(matches!(c.lookup(&key), Lookup::Missing));
    }

    #[test]
    fn content_hash_ignores_aux_but_not_outputs() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let a = c.publish(new_entry(StageKey::of(b"1"), b"x")).unwrap();
        let mut n = new_entry(StageKey::of(b"2"), b"x");
        n.aux.insert("log.txt".into(), b"different log".to_vec());
        let b = c.publish(n).unwrap();
        let d2 = c.publish(new_entry(StageKey::of(b"3"), b"y")).unwrap();
        assert_eq!(a.content_hash(), b.content_hash());
        assert_ne!(a.content_hash(), d2.content_hash());
    }

    #[test]
    fn second_publish_of_a_key_keeps_the_first() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let key = StageKey::of(b"k");
        let a = c.publish(new_entry(key, b"first")).unwrap();
        let b = c.publish(new_entry(key, b"second")).unwrap();
        assert_eq!(a.content_hash(), b.content_hash());
        assert!(fs::read_dir(d.path().join("tmp")).unwrap().next().is_none());
    }

    #[test]
    fn gc_keeps_only_roots() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let k1 = StageKey::of(b"1");
        let k2 = StageKey::of(b"2");
        c.publish(new_entry(k1, b"a")).unwrap();
        c.publish(new_entry(k2, b"b")).unwrap();
        let (removed, _) = c.gc(&[k1].into()).unwrap();
        assert_eq!(removed, vec![k2]);
        assert_eq!(c.keys().unwrap(), vec![k1]);
    }

    #[test]
    fn bad_output_names_are_rejected() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let mut n = new_entry(StageKey::of(b"1"), b"a");
        n.outputs.insert("../evil".into(), vec![]);
        assert!(matches!(c.publish(n), Err(CacheError::BadFileName(_))));
    }
}
