//! Registered roots: each pipeline run records the keys it reaches in `roots/<id>.json`, so
//! that `cache gc` keeps what *any* teammate's pipeline needs, not just the caller's (DVC's
//! `gc` deletes other projects' data for lack of this). A root is identified by the pipeline's
//! name, absolute path, `--set` overrides and the user, so each variant of an ablation has its
//! own. Roots that nobody refreshed for a while (`gc --roots-max-age`) expire.

use super::{io, Cache, CacheError};
use crate::digest::StageKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

pub const ROOTS_DIR: &str = "roots";
/// A cached rerun with an unchanged key set only refreshes the root's mtime, and only when it is
/// older than this, so reruns stay free of writes.
const REFRESH: Duration = Duration::from_secs(3600);

/// Who registered a root; identifies it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RootOwner {
    pub name: String,
    pub pipeline: PathBuf,
    pub set: Vec<String>,
    pub user: String,
}

impl RootOwner {
    pub fn new(name: &str, pipeline: &Path, set: &[String]) -> RootOwner {
        RootOwner {
            name: name.to_string(),
            pipeline: pipeline
                .canonicalize()
                .unwrap_or_else(|_| pipeline.to_path_buf()),
            set: set.to_vec(),
            user: std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_default(),
        }
    }

    /// Stable id: blake3 of the owner's fields, 16 hex digits.
    pub fn id(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("plain data");
        blake3::hash(&bytes).to_hex()[..16].to_string()
    }
}

/// The content of a root file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootSet {
    pub owner: RootOwner,
    pub host: String,
    pub keys: BTreeSet<StageKey>,
}

/// A root as found on disk.
#[derive(Debug, Clone)]
pub struct RootFile {
    pub id: String,
    pub path: PathBuf,
    pub modified: SystemTime,
    pub set: RootSet,
}

impl Cache {
    fn root_path(&self, id: &str) -> PathBuf {
        self.root.join(ROOTS_DIR).join(format!("{id}.json"))
    }

    /// Every readable root file. Unreadable ones are skipped (they are written atomically, so
    /// that only happens to files cfpipe did not write).
    pub fn roots(&self) -> Result<Vec<RootFile>, CacheError> {
        let dir = self.root.join(ROOTS_DIR);
        let mut out = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&dir)(e)),
        };
        for e in rd.flatten() {
            let path = e.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| !n.starts_with('.'))
                .map(str::to_string)
            else {
                continue;
            };
            let Ok(modified) = e.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            let Some(set) = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            else {
                continue;
            };
            out.push(RootFile {
                id,
                path,
                modified,
                set,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub fn remove_root(&self, id: &str) -> Result<bool, CacheError> {
        let p = self.root_path(id);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(&p)(e)),
        }
    }

    fn write_root(&self, set: &RootSet) -> Result<(), CacheError> {
        let p = self.root_path(&set.owner.id());
        let bytes = serde_json::to_vec_pretty(set).expect("plain data");
        self.write_atomic(&p, &bytes)
    }
}

/// Keeps one pipeline's root up to date during a run: the keys of the previous run stay
/// registered until this run has completed, each newly computed key is registered as soon as it
/// exists, and a complete run leaves exactly its own key set.
#[derive(Debug)]
pub struct RootRecorder {
    cache: Cache,
    state: Mutex<RecorderState>,
}

#[derive(Debug)]
struct RecorderState {
    owner: RootOwner,
    previous: BTreeSet<StageKey>,
    seen: BTreeSet<StageKey>,
    on_disk: Option<(BTreeSet<StageKey>, SystemTime)>,
}

impl RootRecorder {
    pub fn new(cache: &Cache, owner: RootOwner) -> RootRecorder {
        let p = cache.root_path(&owner.id());
        let on_disk = fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice::<RootSet>(&b).ok())
            .and_then(|s| {
                let m = fs::metadata(&p).and_then(|m| m.modified()).ok()?;
                Some((s.keys, m))
            });
        RootRecorder {
            cache: cache.clone(),
            state: Mutex::new(RecorderState {
                owner,
                previous: on_disk.as_ref().map(|(k, _)| k.clone()).unwrap_or_default(),
                seen: BTreeSet::new(),
                on_disk,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecorderState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stage of the run resolved to `key`; `computed` if it was just published. The root is
    /// rewritten at once for a computed key and for a cached or pulled key it did not hold yet,
    /// so gc protects everything the run has used while it goes on (a first run over a
    /// teammate's cache pays one small write per stage). A rerun of a registered pipeline
    /// writes nothing here.
    pub fn record(&self, key: StageKey, computed: bool) {
        let mut s = self.lock();
        s.seen.insert(key);
        let unprotected = !s.previous.contains(&key)
            && !s.on_disk.as_ref().is_some_and(|(k, _)| k.contains(&key));
        if computed || unprotected {
            let keys: BTreeSet<_> = s.previous.union(&s.seen).copied().collect();
            // Best effort mid-run; `finish` reports a failure to write.
            let _ = self.store(&mut s, keys);
        }
    }

    /// The run ended. A complete run replaces the root with its own keys; an incomplete one
    /// keeps the previous keys too.
    pub fn finish(&self, complete: bool) -> Result<(), CacheError> {
        let mut s = self.lock();
        let keys: BTreeSet<_> = if complete {
            s.seen.clone()
        } else {
            s.previous.union(&s.seen).copied().collect()
        };
        match &s.on_disk {
            Some((k, m)) if *k == keys && m.elapsed().map(|e| e < REFRESH).unwrap_or(false) => {
                Ok(())
            }
            Some((k, _)) if *k == keys => {
                let p = self.cache.root_path(&s.owner.id());
                let _ = super::touch_now(&p);
                Ok(())
            }
            _ => self.store(&mut s, keys),
        }
    }

    fn store(&self, s: &mut RecorderState, keys: BTreeSet<StageKey>) -> Result<(), CacheError> {
        if s.on_disk.as_ref().is_some_and(|(k, _)| *k == keys) {
            return Ok(());
        }
        self.cache.write_root(&RootSet {
            owner: s.owner.clone(),
            host: super::lease::host_id().to_string(),
            keys: keys.clone(),
        })?;
        s.on_disk = Some((keys, SystemTime::now()));
        Ok(())
    }
}
