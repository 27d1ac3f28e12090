//! The content-addressed, on-disk store of stage results.
//!
//! Layout under the cache root:
//! - `entries/<k0k1>/<key>/` — one immutable entry per stage key: `manifest.json`, the
//!   artifact files under `out/`, and the log under `aux/`.
//! - `tmp/` — entries being written. An entry is built here, every file fsynced, then renamed
//!   into `entries/` in one step, so a reader (or a SIGKILL) never sees half an entry. `tmp/`
//!   must be on the same filesystem as `entries/` (checked at open) so the rename is atomic.
//! - `leases/<key>` — who is computing a key right now (see [`lease`]): a link(2)-created file
//!   with a heartbeat, safe across NFS clients where `flock` is not.
//! - `used/<key>` — an empty stamp whose mtime is the entry's last use (hit or publish), so gc
//!   spares recently used entries. Outside the entry, so it never touches hashed content.
//! - `roots/<id>.json` — the keys each registered pipeline reaches (see [`roots`]); gc keeps them.
//! - `blobs/<h0h1>/<blake3>` — one name for each distinct artifact file; entries hold hard links
//!   to it, so identical files are stored once (see [`blobs`]).
//! - `index/` — advisory records of the last key seen per stage id (for `status` to explain
//!   *why* a stage would rerun) and the data-file hash memo. Losing them costs nothing but
//!   explanations and rehashing.
//!
//! Nothing here knows what a stage computes.

pub mod blobs;
pub mod filehash;
pub mod lease;
pub mod manifest;
pub mod perms;
pub mod remote;
pub mod roots;
mod stage_index;
mod verified;

use crate::digest::{ContentHash, StageKey};
pub use manifest::{FileRecord, Manifest, RunInfo};
use manifest::{AUX_DIR, MANIFEST_FILE, OUT_DIR};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

pub use lease::Lease;
pub use perms::GroupPerms;
pub use verified::stamp as stamp_files;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("artifact file name `{0}` is not allowed (use letters, digits, '.', '_', '-')")]
    BadFileName(String),
    #[error(transparent)]
    Group(#[from] perms::GroupError),
    #[error("{tmp} and {entries} are on different filesystems, so publishing would not be atomic; keep the whole cache directory on one filesystem")]
    SplitFilesystem { tmp: PathBuf, entries: PathBuf },
    #[error("interrupted while waiting for another process computing this stage")]
    Cancelled,
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

/// A verified, published entry. Cheap to clone: every stage that reads it holds one, and the
/// manifest is shared, not copied. An entry served from the verified-entry memo has not read
/// its manifest: a cached rerun needs only the key and the content hash, and
/// [`Entry::manifest`] reads it on first use.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    key: StageKey,
    content_hash: ContentHash,
    manifest: Arc<OnceLock<Arc<Manifest>>>,
}

impl Entry {
    fn loaded(dir: PathBuf, manifest: Manifest) -> Entry {
        Entry {
            dir,
            key: manifest.key,
            content_hash: manifest.content_hash,
            manifest: Arc::new(OnceLock::from(Arc::new(manifest))),
        }
    }

    pub fn key(&self) -> StageKey {
        self.key
    }

    pub fn content_hash(&self) -> ContentHash {
        self.content_hash
    }

    /// The entry's manifest, read now if the lookup did not. It verified with the files as
    /// they are, so a failure here means it changed since (the next lookup will say how).
    pub fn manifest(&self) -> Result<Arc<Manifest>, CacheError> {
        if let Some(m) = self.manifest.get() {
            return Ok(m.clone());
        }
        let path = self.dir.join(MANIFEST_FILE);
        let changed = |why: String| CacheError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
        };
        let bytes = fs::read(&path).map_err(io(&path))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| changed(e.to_string()))?;
        if m.key != self.key || m.content_hash != self.content_hash {
            return Err(changed("the manifest changed since it was verified".into()));
        }
        Ok(self.manifest.get_or_init(|| Arc::new(m)).clone())
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

/// How this process shares the cache with others. Filled from the command line and
/// environment today; a team config file can fill the same fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Make everything cfpipe creates in the cache owned by this group (name or gid), g+rw,
    /// directories setgid. `None`: files get the umask's permissions.
    pub shared_group: Option<String>,
    /// Seconds without a heartbeat after which another process's lease is presumed dead.
    pub lease_timeout_s: f64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            shared_group: None,
            lease_timeout_s: lease::DEFAULT_TIMEOUT.as_secs_f64(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    perms: GroupPerms,
    lease_timeout: Duration,
    /// Opened by a command that must change nothing (see [`Cache::open_read_only`]).
    read_only: bool,
    /// Entries verified in full, loaded at the first lookup (see `verified`).
    verified: Arc<OnceLock<verified::VerifiedMemo>>,
    /// The keys stage records were last written with, per scope (see `stage_index`).
    stage_keys: Arc<std::sync::Mutex<HashMap<String, stage_index::ScopeKeys>>>,
}

/// Held while computing a key; released on drop (the lease's holder also releases it on
/// Ctrl-C); after a SIGKILL, others take it over once it goes stale.
pub type KeyLock = Lease;

/// An entry's last use is refreshed when older than this, so a cached rerun rarely writes.
/// gc's grace period is never shorter than twice this.
pub const USED_REFRESH: Duration = Duration::from_secs(60);

/// What `gc` keeps besides registered roots.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Keys to keep in any case (e.g. those of pipelines named on the command line).
    pub keep: BTreeSet<StageKey>,
    /// Entries used (hit or published) more recently than this are kept.
    pub grace: Duration,
    /// Roots not refreshed for this long are deleted and no longer keep anything.
    pub roots_max_age: Duration,
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub removed: Vec<StageKey>,
    pub freed: u64,
    /// Entries kept because a registered root or `keep` reaches them.
    pub kept_reachable: usize,
    /// Entries kept because they were used within the grace period.
    pub kept_recent: usize,
    /// Entries kept because a live lease holds their key.
    pub kept_leased: usize,
    /// Ids of the expired roots that were deleted.
    pub expired_roots: Vec<String>,
    /// Shared files that no entry linked any more, removed (their bytes are in `freed`).
    pub blobs_removed: usize,
}

impl Cache {
    /// Open (creating if needed) a cache directory, private to this user.
    pub fn open(root: impl Into<PathBuf>) -> Result<Cache, CacheError> {
        Self::open_with(root, &CacheConfig::default())
    }

    /// Open (creating if needed) a cache directory shared as `config` says.
    pub fn open_with(root: impl Into<PathBuf>, config: &CacheConfig) -> Result<Cache, CacheError> {
        let root = root.into();
        let perms = match &config.shared_group {
            Some(g) => GroupPerms::resolve(g)?,
            None => GroupPerms::NONE,
        };
        perms.create_dir_all(&root).map_err(io(&root))?;
        perms.apply_if_owned(&root).map_err(io(&root))?;
        for sub in [
            "entries",
            "tmp",
            "index",
            "index/stages",
            "trash",
            lease::LEASE_DIR,
            USED_DIR,
            roots::ROOTS_DIR,
            blobs::BLOBS_DIR,
        ] {
            let p = root.join(sub);
            perms.create_dir_all(&p).map_err(io(&p))?;
        }
        let (tmp, entries) = (root.join("tmp"), root.join("entries"));
        let dev = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(p).map(|m| m.dev()).map_err(io(p))
        };
        if dev(&tmp)? != dev(&entries)? {
            return Err(CacheError::SplitFilesystem { tmp, entries });
        }
        let cache = Cache {
            root,
            perms,
            // Clamped: a day is already far past any useful heartbeat gap, and an overflowing
            // Duration would panic.
            lease_timeout: Duration::from_secs_f64(config.lease_timeout_s.clamp(0.05, 86_400.0)),
            read_only: false,
            verified: Arc::default(),
            stage_keys: Arc::default(),
        };
        let tag = cache.root.join("CACHEDIR.TAG");
        if !tag.exists() {
            let body = b"Signature: 8a477f597d28d172789f06886806bc55\n# cfpipe cache; see README\n";
            cache.write_atomic(&tag, body)?;
        }
        Ok(cache)
    }

    /// A cache for commands that only read (`status`, `show`, `report`, `cache ls`): nothing
    /// is created, and a directory that does not exist reads as an empty cache. Memos (file
    /// hashes) are not saved through it.
    pub fn open_read_only(root: impl Into<PathBuf>) -> Cache {
        Cache {
            root: root.into(),
            perms: GroupPerms::NONE,
            lease_timeout: lease::DEFAULT_TIMEOUT,
            read_only: true,
            verified: Arc::default(),
            stage_keys: Arc::default(),
        }
    }

    fn verified(&self) -> &verified::VerifiedMemo {
        self.verified.get_or_init(|| {
            verified::VerifiedMemo::load(self.root.join("index").join("verified.json"))
        })
    }

    /// Save what lookups learned about verified entries, and the keys stage records were
    /// written with (advisory; never through a read-only handle).
    pub fn save_verified(&self) -> Result<(), CacheError> {
        if self.read_only {
            return Ok(());
        }
        for scope in self.stage_keys().values_mut() {
            let _ = scope.save(self.perms);
        }
        match self.verified.get() {
            Some(m) => {
                let path = self.root.join("index").join("verified.json");
                m.save(self.perms).map_err(io(&path))
            }
            _ => Ok(()),
        }
    }

    fn stage_keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, stage_index::ScopeKeys>> {
        self.stage_keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `stage_id`'s record in `scope` was last written with `key` (as far as this
    /// scope's index knows): then [`Cache::put_stage_record`] has nothing to do.
    pub fn stage_record_is(&self, scope: &str, stage_id: &str, key: &StageKey) -> bool {
        let mut all = self.stage_keys();
        // Asked for every stage of a run: the scope is copied only the first time.
        if let Some(index) = all.get(scope) {
            return index.holds(stage_id, key);
        }
        let index = all.entry(scope.to_string()).or_insert_with(|| {
            let h = blake3::hash(format!("keys\0{scope}").as_bytes()).to_hex();
            let path = self
                .root
                .join("index")
                .join("stages")
                .join(format!("{}.keys", &h[..32]));
            stage_index::ScopeKeys::load(path)
        });
        index.holds(stage_id, key)
    }

    /// Whether this handle must not write (see [`Cache::open_read_only`]).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn perms(&self) -> GroupPerms {
        self.perms
    }

    pub fn lease_timeout(&self) -> Duration {
        self.lease_timeout
    }

    /// Write a file atomically, group-shared as configured.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
        atomic_write_shared(path, bytes, self.perms).map_err(io(path))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn file_hasher(&self) -> filehash::FileHasher {
        filehash::FileHasher::load(self.root.join("index").join("filehashes.json"))
            .with_perms(self.perms)
    }

    pub fn entry_dir(&self, key: &StageKey) -> PathBuf {
        let hex = key.to_hex();
        // Built in place: asked for every stage of a cached rerun.
        let mut dir = PathBuf::with_capacity(self.root.as_os_str().len() + 80);
        dir.push(&self.root);
        dir.push("entries");
        dir.push(&hex[..2]);
        dir.push(hex);
        dir
    }

    /// Whether an entry directory exists, without verifying it.
    pub fn contains(&self, key: &StageKey) -> bool {
        self.entry_dir(key).join(MANIFEST_FILE).is_file()
    }

    /// Find and verify an entry: every file's size must match the manifest, and its blake3
    /// too unless the entry verified in full before with its files exactly as they are now
    /// (same inode, size, mtime and ctime: see `verified`).
    pub fn lookup(&self, key: &StageKey) -> Lookup {
        self.lookup_as(key, true)
    }

    /// The content hash the verified-entry memo remembers for `key`'s entry, without looking
    /// at the disk: what the entry held when it last verified, which [`Cache::recall`] then
    /// confirms or not.
    pub fn remembered_content_hash(&self, key: &StageKey) -> Option<ContentHash> {
        self.verified().content_hash(key)
    }

    /// The entry of `key` if the verified-entry memo serves it (every file stamped as when it
    /// last verified in full), and `None` otherwise, without reading anything else: the check
    /// a cached rerun can afford inline, before a full [`Self::lookup`].
    pub fn recall(&self, key: &StageKey) -> Option<Entry> {
        self.remembered(&self.entry_dir(key), key, &key.to_hex())
    }

    /// Find and fully verify an entry, hashing every file whatever the memo says (`cache
    /// verify`).
    pub fn lookup_full(&self, key: &StageKey) -> Lookup {
        self.lookup_as(key, false)
    }

    fn lookup_as(&self, key: &StageKey, memo: bool) -> Lookup {
        let dir = self.entry_dir(key);
        let mpath = dir.join(MANIFEST_FILE);
        let read = |p: &Path| -> std::io::Result<(Vec<u8>, fs::Metadata)> {
            use std::io::Read;
            let mut f = fs::File::open(p)?;
            let meta = f.metadata()?;
            let mut b = Vec::with_capacity(meta.len() as usize);
            f.read_to_end(&mut b)?;
            Ok((b, meta))
        };
        let hex = key.to_hex();
        // The memo's fast path: every file's metadata as it was when the entry verified in
        // full; then neither the manifest nor any file is read. The memo stamps every file
        // the entry held then, so any file added, removed, grown or rewritten since misses.
        if memo {
            if let Some(hit) = self.remembered(&dir, key, &hex) {
                return Lookup::Hit(Box::new(hit));
            }
        }
        let (bytes, mmeta) = match read(&mpath) {
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
        let all: Vec<_> = manifest
            .outputs
            .iter()
            .map(|(n, r)| (OUT_DIR, n, r))
            .chain(manifest.aux.iter().map(|(n, r)| (AUX_DIR, n, r)))
            .collect();
        // The manifest is stamped too: an entry remembered as verified had its manifest
        // checked (names, key and content hash), and any edit since changes its ctime.
        let mut stats = Vec::with_capacity(all.len() + 1);
        stats.push((MANIFEST_FILE.to_string(), mmeta));
        for &(sub, name, rec) in &all {
            let p = dir.join(sub).join(name);
            let rel = format!("{sub}/{name}");
            match fs::metadata(&p) {
                Ok(m) if m.len() == rec.size => stats.push((rel, m)),
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
        }
        let stamp = verified::stamp(&stats);
        if let Err(fault) = manifest.check(key) {
            return Lookup::Corrupt {
                file: MANIFEST_FILE.into(),
                reason: fault.to_string(),
            };
        }
        for &(sub, name, rec) in &all {
            let p = dir.join(sub).join(name);
            let rel = format!("{sub}/{name}");
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
        if let Some(s) = stamp {
            let files: Vec<&str> = stats.iter().map(|(rel, _)| rel.as_str()).collect();
            self.verified()
                .record(&hex, &s, &manifest.content_hash, &files);
        }
        Lookup::Hit(Box::new(Entry::loaded(dir, manifest)))
    }

    /// The entry of `key` (in `dir`, `hex`) served from the verified-entry memo: the files it
    /// stamped are still exactly as they were when the entry verified in full.
    fn remembered(&self, dir: &Path, key: &StageKey, hex: &str) -> Option<Entry> {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let r = self.verified().recall(hex)?;
        let mut stats = Vec::with_capacity(r.files.len());
        // One buffer for every file's path (a cached rerun stats thousands of them).
        let mut path = dir.as_os_str().to_os_string().into_vec();
        let dir_len = path.len();
        for rel in r.files {
            path.truncate(dir_len);
            path.push(b'/');
            path.extend_from_slice(rel.as_bytes());
            let m = fs::metadata(Path::new(std::ffi::OsStr::from_bytes(&path))).ok()?;
            stats.push((rel, m));
        }
        (verified::stamp(&stats)? == r.stamp).then(|| Entry {
            dir: dir.to_path_buf(),
            key: *key,
            content_hash: r.content_hash,
            manifest: Arc::default(),
        })
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
            .join(format!("{}.{}", key.to_hex(), lease::unique()));
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
        // Named after host and pid, so gc on any machine can tell a dead writer's leftovers.
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.{}", new.key.to_hex(), lease::unique()));
        let result = fs::create_dir(&tmp)
            .and_then(|()| self.perms.apply(&tmp))
            .map_err(io(&tmp))
            .and_then(|()| self.write_and_rename(&tmp, new));
        if tmp.exists() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    fn write_and_rename(&self, tmp: &Path, new: NewEntry) -> Result<Entry, CacheError> {
        let write_all = |sub: &str, files: &BTreeMap<String, Vec<u8>>| {
            let d = tmp.join(sub);
            self.perms.create_dir_all(&d).map_err(io(&d))?;
            let mut recs = BTreeMap::new();
            for (name, bytes) in files {
                let p = d.join(name);
                let blake3 = ContentHash::of(bytes);
                blobs::place(&self.root, self.perms, &p, bytes, &blake3, write_synced)
                    .map_err(io(&p))?;
                self.perms.apply(&p).map_err(io(&p))?;
                recs.insert(
                    name.clone(),
                    FileRecord {
                        blake3,
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
        self.perms.apply(&mp).map_err(io(&mp))?;
        sync_dir(tmp).map_err(io(tmp))?;

        let dest = self.entry_dir(&new.key);
        let parent = dest.parent().expect("entry dir has a parent");
        self.perms.create_dir_all(parent).map_err(io(parent))?;
        // rename(2) of a directory onto an existing non-empty one fails, on NFS too, so a
        // second publisher of the same key can never replace the first's entry.
        match fs::rename(tmp, &dest) {
            Ok(()) => {
                sync_dir(parent).map_err(io(parent))?;
                self.mark_used(&new.key);
                Ok(Entry::loaded(dest, manifest))
            }
            // Someone else won the race (or, on NFS, our own rename's reply was lost and the
            // retry found the entry already moved); an existing entry is never replaced.
            Err(_) if dest.join(MANIFEST_FILE).exists() => match self.lookup(&new.key) {
                Lookup::Hit(e) => {
                    self.mark_used(&new.key);
                    Ok(*e)
                }
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

    fn lease_path(&self, key: &StageKey) -> PathBuf {
        self.root.join(lease::LEASE_DIR).join(key.to_hex())
    }

    /// Who holds a live lease on `key` (a process computing it, on any machine sharing the
    /// cache), if anyone; judged without waiting, by the lease's heartbeat.
    pub fn computing_elsewhere(&self, key: &StageKey) -> Option<String> {
        let path = self.lease_path(key);
        if !lease::looks_live(&path, self.lease_timeout) {
            return None;
        }
        lease::read(&path)
            .ok()
            .and_then(|(_, info)| info)
            .map(|i| i.holder())
    }

    /// Block until this process holds the key's lease, taking over a stale one. `what` names
    /// the stage in the lease and in messages; `cancelled` is polled while waiting.
    pub fn lock_key(
        &self,
        key: &StageKey,
        what: &str,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<KeyLock, CacheError> {
        let path = self.lease_path(key);
        let mut watch = lease::Watch::default();
        let mut pause = Duration::from_millis(10);
        let max_pause =
            (self.lease_timeout / 4).clamp(Duration::from_millis(20), Duration::from_millis(500));
        let mut told = false;
        loop {
            if let Some(l) = lease::try_acquire(&path, what, self.lease_timeout, true, self.perms)
                .map_err(io(&path))?
            {
                return Ok(l);
            }
            if cancelled() {
                return Err(CacheError::Cancelled);
            }
            if let Some((info, why)) = watch.check(&path, self.lease_timeout) {
                if lease::break_stale(&path, &info, self.perms).map_err(io(&path))? {
                    eprintln!("note: took over `{what}` from {} ({why})", info.holder());
                    continue;
                }
                // Another waiter is breaking it; compete for the fresh lease after a pause.
            }
            if !told {
                // A twin in this same run is nothing to report: the run waits for it as
                // for any input.
                if let Some(info) = watch.last().filter(|i| !i.is_this_process()) {
                    eprintln!("waiting for `{what}`: {} is computing it", info.holder());
                    told = true;
                }
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(max_pause);
        }
    }

    fn used_path(&self, key: &StageKey) -> PathBuf {
        let mut p = PathBuf::with_capacity(self.root.as_os_str().len() + 72);
        p.push(&self.root);
        p.push(USED_DIR);
        p.push(key.to_hex());
        p
    }

    /// Record that an entry is in use (call *before* reading it): gc spares entries used within
    /// its grace period. One `stat` when the stamp is fresh; otherwise a touch.
    pub fn mark_used(&self, key: &StageKey) {
        let p = self.used_path(key);
        match fs::metadata(&p).and_then(|m| m.modified()) {
            Ok(m) if m.elapsed().map(|e| e < USED_REFRESH).unwrap_or(true) => {}
            Ok(_) => {
                let _ = touch_now(&p);
            }
            Err(_) => {
                if fs::File::create(&p).is_ok() {
                    let _ = self.perms.apply(&p);
                }
            }
        }
    }

    /// When an entry was last used: its stamp, else (entries older than stamps) its manifest.
    fn last_used(&self, key: &StageKey) -> Option<SystemTime> {
        fs::metadata(self.used_path(key))
            .or_else(|_| fs::metadata(self.entry_dir(key).join(MANIFEST_FILE)))
            .and_then(|m| m.modified())
            .ok()
    }

    /// The record of `stage_id` in the id namespace `scope` (a pipeline's); the empty scope
    /// is where records were kept before scopes, and keeps that path.
    fn record_path(&self, scope: &str, stage_id: &str) -> PathBuf {
        let h = if scope.is_empty() {
            blake3::hash(stage_id.as_bytes())
        } else {
            blake3::hash(format!("{scope}\0{stage_id}").as_bytes())
        }
        .to_hex();
        self.root
            .join("index")
            .join("stages")
            .join(format!("{}.json", &h[..32]))
    }

    /// The last run of `stage_id` in `scope`, else (a cache written before scopes) in the
    /// shared namespace.
    pub fn stage_record(&self, scope: &str, stage_id: &str) -> Option<StageRecord> {
        let read = |scope: &str| -> Option<StageRecord> {
            let bytes = fs::read(self.record_path(scope, stage_id)).ok()?;
            serde_json::from_slice(&bytes).ok()
        };
        read(scope).or_else(|| read(""))
    }

    /// Remember the key a stage id last resolved to in `scope` (skipped when unchanged, to
    /// keep cached reruns free of writes).
    pub fn put_stage_record(&self, scope: &str, rec: &StageRecord) -> Result<(), CacheError> {
        if self.stage_record_is(scope, &rec.id, &rec.key) {
            return Ok(());
        }
        let p = self.record_path(scope, &rec.id);
        let bytes = serde_json::to_vec_pretty(rec).expect("record is plain data");
        // Compared as bytes: a record the index did not know may be current all the same.
        if !fs::read(&p).is_ok_and(|old| old == bytes) {
            self.write_atomic(&p, &bytes)?;
        }
        if let Some(index) = self.stage_keys().get_mut(scope) {
            index.note(&rec.id, rec.key);
        }
        Ok(())
    }

    /// Every key with an entry directory (verified or not).
    pub fn keys(&self) -> Result<Vec<StageKey>, CacheError> {
        let root = self.root.join("entries");
        let mut out = Vec::new();
        if self.read_only && !root.exists() {
            return Ok(out);
        }
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

    /// Bytes on disk of one entry, as if it shared nothing.
    pub fn entry_size(&self, key: &StageKey) -> u64 {
        dir_size(&self.entry_dir(key), &mut fs::Metadata::len)
    }

    /// Bytes of one entry's files not yet counted in `seen` (files as `(device, inode)`),
    /// which it extends: summed over entries, each shared file counts once (`cache du`).
    pub fn entry_size_once(&self, key: &StageKey, seen: &mut HashSet<(u64, u64)>) -> u64 {
        use std::os::unix::fs::MetadataExt;
        dir_size(&self.entry_dir(key), &mut |m: &fs::Metadata| {
            if seen.insert((m.dev(), m.ino())) {
                m.len()
            } else {
                0
            }
        })
    }

    /// Read a manifest without verifying files (for listings).
    pub fn read_manifest(&self, key: &StageKey) -> Option<Manifest> {
        let b = fs::read(self.entry_dir(key).join(MANIFEST_FILE)).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// The stage id an entry was made for, found even when its manifest does not parse (for
    /// messages about corrupt entries): the manifest's own field if it is still JSON, else the
    /// request the executor wrote before running it, else the index of last-seen keys.
    pub fn stage_id_of(&self, key: &StageKey) -> Option<String> {
        let id_in = |path: PathBuf, field: &str| {
            let v: serde_json::Value = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
            v.get(field)?.as_str().map(str::to_string)
        };
        id_in(self.entry_dir(key).join(MANIFEST_FILE), "stage_id")
            .or_else(|| {
                let req = self
                    .root
                    .join("requests")
                    .join(format!("{}.json", key.to_hex()));
                id_in(req, "id")
            })
            .or_else(|| {
                fs::read_dir(self.root.join("index").join("stages"))
                    .ok()?
                    .flatten()
                    .filter_map(|e| fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice::<StageRecord>(&b).ok())
                    .find(|r| r.key == *key)
                    .map(|r| r.id)
            })
    }

    /// Delete entries that no registered root and no `opts.keep` reaches, that no live lease
    /// holds, and that nobody used within the grace period; then leftovers of dead writers.
    /// Safe while other processes use the cache: an entry is renamed aside first and restored
    /// if it was used meanwhile.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport, CacheError> {
        let mut rep = GcReport::default();
        let grace = opts.grace.max(2 * USED_REFRESH);
        let mut keep = opts.keep.clone();
        for r in self.roots()? {
            let age = r.modified.elapsed().unwrap_or_default();
            if age > opts.roots_max_age {
                self.remove_root(&r.id)?;
                rep.expired_roots.push(r.id);
            } else {
                keep.extend(r.set.keys);
            }
        }
        let recent = |k: &StageKey| {
            self.last_used(k)
                .is_some_and(|t| t.elapsed().map(|e| e < grace).unwrap_or(true))
        };
        for key in self.keys()? {
            if keep.contains(&key) {
                rep.kept_reachable += 1;
                continue;
            }
            if lease::looks_live(&self.lease_path(&key), grace) {
                rep.kept_leased += 1;
                continue;
            }
            if recent(&key) {
                rep.kept_recent += 1;
                continue;
            }
            // Hold the key's lease so nobody publishes it while it is moved.
            let Some(_lease) = lease::try_acquire(
                &self.lease_path(&key),
                "gc",
                self.lease_timeout,
                false,
                self.perms,
            )
            .map_err(io(&self.lease_path(&key)))?
            else {
                rep.kept_leased += 1;
                continue;
            };
            // A run may have marked the entry used between the check above and the lease.
            if recent(&key) {
                rep.kept_recent += 1;
                continue;
            }
            let used_before = self.last_used(&key);
            // Files shared with a blob are freed by the sweep below, if no entry keeps them.
            let size = dir_size(&self.entry_dir(&key), &mut blobs::unshared_size);
            let dir = self.entry_dir(&key);
            let trash =
                self.root
                    .join("trash")
                    .join(format!("{}.{}", key.to_hex(), lease::unique()));
            match fs::rename(&dir, &trash) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir)(e)),
            }
            // A run marks an entry used before reading it; if one did so since we looked,
            // put the entry back (a reader that looked in between recomputes, nothing breaks).
            let used_after = fs::metadata(self.used_path(&key))
                .and_then(|m| m.modified())
                .ok();
            if used_after.is_some() && used_after != used_before && fs::rename(&trash, &dir).is_ok()
            {
                rep.kept_recent += 1;
                continue;
            }
            fs::remove_dir_all(&trash).map_err(io(&trash))?;
            let _ = fs::remove_file(self.used_path(&key));
            rep.freed += size;
            rep.removed.push(key);
        }
        let swept = blobs::sweep(&self.root);
        rep.blobs_removed = swept.blobs;
        rep.freed += swept.bytes;
        self.clean_dead_leftovers();
        self.clean_tmp(grace)?;
        self.clean_leftovers(grace);
        Ok(rep)
    }

    /// Remove what provably belongs to nobody: temp entries, trash and temp files of dead
    /// processes of this host, and leases that are dead or expired (see [`lease::clean_dir`]).
    /// Every run does this (the temp files while it schedules, the leases when it ends), so
    /// SIGKILLs leave nothing behind for long; other hosts' leftovers wait for gc's grace
    /// period. Returns how many were removed.
    pub fn clean_dead_leftovers(&self) -> usize {
        self.clean_dead_temps() + self.clean_dead_leases()
    }

    /// The part of [`Self::clean_dead_leftovers`] that removes only what dead processes left
    /// (temp entries, trash, temp files), and so may run while this process takes leases.
    pub fn clean_dead_temps(&self) -> usize {
        if self.read_only {
            return 0;
        }
        let mut removed = 0;
        // Only names that start with `dot` can be leftovers where `dot` is true: the others
        // (thousands of stage records in `index/stages`) are passed over before a name or a
        // path is made of them.
        let names = |dir: PathBuf, dot: bool| {
            use std::os::unix::ffi::OsStrExt;
            fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(move |e| !dot || e.file_name().as_bytes().first() == Some(&b'.'))
                .map(|e| (e.file_name().to_string_lossy().to_string(), e.path()))
        };
        // Entries being written and entries being deleted: `<key>.<unique>`.
        for sub in ["tmp", "trash"] {
            for (name, path) in names(self.root.join(sub), false) {
                let maker = name.split_once('.').map(|(_, m)| m).unwrap_or("");
                if lease::dead_here(maker) && fs::remove_dir_all(&path).is_ok() {
                    removed += 1;
                }
            }
        }
        // Temp files of `atomic_write`: `.<name>.<unique>`.
        for sub in ["", "index", "index/stages", roots::ROOTS_DIR, "requests"] {
            for (name, path) in names(self.root.join(sub), true) {
                let dead = lease::temp_maker(&name).is_some_and(lease::dead_here);
                if dead && fs::remove_file(&path).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// The part of [`Self::clean_dead_leftovers`] that cleans the lease directory. It also
    /// removes the lease breakers this process made, which must stay while it may still take
    /// leases: a run calls it when it ends.
    pub fn clean_dead_leases(&self) -> usize {
        if self.read_only {
            return 0;
        }
        lease::clean_dir(
            &self.root.join(lease::LEASE_DIR),
            self.lease_timeout,
            self.perms,
        )
    }

    /// Old stamps of entries that no longer exist, and lease breakers and temp files of
    /// processes that died mid-way.
    fn clean_leftovers(&self, grace: Duration) {
        let old = |p: &Path| {
            fs::symlink_metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|e| e > grace)
        };
        if let Ok(rd) = fs::read_dir(self.root.join(USED_DIR)) {
            for e in rd.flatten() {
                let p = e.path();
                let gone = e
                    .file_name()
                    .to_str()
                    .and_then(StageKey::from_hex)
                    .is_none_or(|k| !self.entry_dir(&k).exists());
                if gone && old(&p) {
                    let _ = fs::remove_file(p);
                }
            }
        }
        if let Ok(rd) = fs::read_dir(self.root.join(lease::LEASE_DIR)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let leftover = name.starts_with('.') || name.contains(".break.");
                if leftover && old(&e.path()) {
                    let _ = fs::remove_file(e.path());
                } else if !leftover {
                    // Leases of holders killed after publishing, which nobody will contend for.
                    let _ = lease::remove_if_dead(&e.path(), grace, self.perms);
                }
            }
        }
    }

    /// Remove temp dirs whose writing process no longer exists: known for this host; on other
    /// hosts, presumed once the directory is older than `grace` (an entry is written in seconds).
    fn clean_tmp(&self, grace: Duration) -> Result<(), CacheError> {
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let maker = name.split_once('.').map(|(_, m)| m).unwrap_or("");
            let modified = e.metadata().and_then(|m| m.modified()).ok();
            if !lease::maker_alive(maker, modified, grace) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }
}

const USED_DIR: &str = "used";

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
    atomic_write_shared(path, bytes, GroupPerms::NONE)
}

/// `atomic_write`, giving the file (and any directory it creates) to the shared group.
pub fn atomic_write_shared(path: &Path, bytes: &[u8], perms: GroupPerms) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    perms.create_dir_all(parent)?;
    // Named after host and pid (see `lease::unique`), so a run can tell a dead writer's temp.
    let tmp = parent.join(format!(
        ".{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        lease::unique()
    ));
    write_synced(&tmp, bytes)
        .and_then(|()| perms.apply(&tmp))
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// What `size` counts of each file under `p`, summed.
fn dir_size(p: &Path, size: &mut dyn FnMut(&fs::Metadata) -> u64) -> u64 {
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    let mut total = 0;
    for e in rd.flatten() {
        total += match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path(), size),
            Ok(m) => size(&m),
            Err(_) => 0,
        };
    }
    total
}

/// Set a file's modification time to now. `UTIME_NOW` needs only write permission, where an
/// explicit time (`File::set_modified`) needs ownership: in a group-shared cache a teammate's
/// use must still refresh a stamp someone else created.
pub(crate) fn touch_now(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let now = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    };
    let times = [now, now];
    // SAFETY: `c` is a valid NUL-terminated path and `times` two initialised timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of the test entry named `tag`, derived from its params as the executor would
    /// derive it (a lookup re-derives it and rejects any other).
    fn k(tag: &[u8]) -> StageKey {
        new_entry(tag, b"").key
    }

    fn new_entry(tag: &[u8], out: &[u8]) -> NewEntry {
        let params = serde_json::json!({ "tag": ContentHash::of(tag).to_hex() });
        let key = crate::exec::stage_key("k", 1, &params, &BTreeMap::new(), &BTreeMap::new());
        NewEntry {
            key,
            stage_id: "s".into(),
            kind: "k".into(),
            version: 1,
            params,
            inputs: Default::default(),
            files: Default::default(),
            outputs: [("a.json".to_string(), out.to_vec())].into(),
            aux: [("log.txt".to_string(), b"log".to_vec())].into(),
            run: RunInfo::default(),
        }
    }

    #[test]
    fn touch_now_refreshes_an_old_stamp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("stamp");
        let f = fs::File::create(&p).unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(7200);
        f.set_modified(old).unwrap();
        drop(f);
        super::touch_now(&p).unwrap();
        let m = fs::metadata(&p).unwrap().modified().unwrap();
        assert!(
            m.elapsed().unwrap() < std::time::Duration::from_secs(60),
            "{m:?}"
        );
        assert!(super::touch_now(&d.path().join("missing")).is_err());
    }

    #[test]
    fn the_verified_memo_spares_the_hash_and_cache_verify_never_trusts_it() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let key = k(b"m1");
        c.publish(new_entry(b"m1", b"hello")).unwrap();
        assert!(matches!(c.lookup(&key), Lookup::Hit(_)));
        c.save_verified().unwrap();
        // A fresh handle reads the memo back.
        let c = Cache::open(d.path()).unwrap();
        let p = c.entry_dir(&key).join("out/a.json");
        let memo = d.path().join("index/verified.json");
        let saved: BTreeMap<String, String> =
            serde_json::from_slice(&fs::read(&memo).unwrap()).unwrap();
        assert!(saved.contains_key(&key.to_hex()));
        // Damage the memo cannot see (as a bit rotting below the file system would be): the
        // bytes change, and the memo is forged to stamp the files as they are now.
        fs::write(&p, b"jello").unwrap();
        let dir = c.entry_dir(&key);
        let stats: Vec<(String, fs::Metadata)> = ["manifest.json", "out/a.json", "aux/log.txt"]
            .iter()
            .map(|r| (r.to_string(), fs::metadata(dir.join(r)).unwrap()))
            .collect();
        let names = ["manifest.json", "out/a.json", "aux/log.txt"];
        let hash = c.read_manifest(&key).unwrap().content_hash;
        let forged: BTreeMap<String, String> = [(
            key.to_hex(),
            verified::value(&verified::stamp(&stats).unwrap(), &hash, &names),
        )]
        .into();
        fs::write(&memo, serde_json::to_vec(&forged).unwrap()).unwrap();
        let c = Cache::open(d.path()).unwrap();
        let Lookup::Hit(hit) = c.lookup(&key) else {
            panic!("a memo hit reads no file")
        };
        assert_eq!(hit.content_hash(), hash);
        assert_eq!(hit.manifest().unwrap().key, key, "read when asked for");
        assert!(
            matches!(c.lookup_full(&key), Lookup::Corrupt { file, .. } if file == "out/a.json"),
            "cache verify hashes whatever the memo says"
        );
        // Without the forgery, the rewrite alone changed the stamp: found out.
        fs::remove_file(&memo).unwrap();
        let c = Cache::open(d.path()).unwrap();
        assert!(matches!(c.lookup(&key), Lookup::Corrupt { .. }));
    }

    /// A cached rerun derives keys from the content hashes the memo remembers, read from
    /// an index of them made when first asked for; an entry published again under the same
    /// key (after damage) and checked is remembered with its new hash there too.
    #[test]
    fn the_remembered_content_hash_follows_an_entry_published_again() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let key = k(b"again");
        c.publish(new_entry(b"again", b"first")).unwrap();
        assert!(matches!(c.lookup(&key), Lookup::Hit(_)));
        let first = c
            .remembered_content_hash(&key)
            .expect("remembered once checked in full");
        c.evict(&key).unwrap();
        let e = c.publish(new_entry(b"again", b"second")).unwrap();
        assert!(matches!(c.lookup(&key), Lookup::Hit(_)));
        assert_ne!(e.content_hash(), first);
        assert_eq!(c.remembered_content_hash(&key), Some(e.content_hash()));
    }

    #[test]
    fn a_stage_record_is_written_once_per_key_and_rewritten_when_its_key_moves() {
        let d = tempfile::tempdir().unwrap();
        let rec = |key: StageKey| StageRecord {
            id: "naive/seed0/task1/train".into(),
            key,
            params: serde_json::json!({ "lr": 1 }),
            inputs: Default::default(),
            files: Default::default(),
        };
        let (k1, k2) = (k(b"r1"), k(b"r2"));
        let c = Cache::open(d.path()).unwrap();
        c.put_stage_record("p", &rec(k1)).unwrap();
        c.save_verified().unwrap();
        let path = c.record_path("p", "naive/seed0/task1/train");
        let written = fs::metadata(&path).unwrap().modified().unwrap();
        // A fresh process reads the scope's index and finds the record current.
        let c = Cache::open(d.path()).unwrap();
        assert!(c.stage_record_is("p", "naive/seed0/task1/train", &k1));
        assert!(!c.stage_record_is("other", "naive/seed0/task1/train", &k1));
        c.put_stage_record("p", &rec(k1)).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), written);
        // Another key: the record and the index follow it.
        c.put_stage_record("p", &rec(k2)).unwrap();
        assert_eq!(
            c.stage_record("p", "naive/seed0/task1/train").unwrap().key,
            k2
        );
        c.save_verified().unwrap();
        let c = Cache::open(d.path()).unwrap();
        assert!(c.stage_record_is("p", "naive/seed0/task1/train", &k2));
    }

    #[test]
    fn publish_then_lookup_verifies_and_detects_a_flipped_byte() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let key = k(b"k1");
        assert!(matches!(c.lookup(&key), Lookup::Missing));
        let e = c.publish(new_entry(b"k1", b"hello")).unwrap();
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
    fn an_edited_manifest_fails_lookup_because_its_key_is_rederived() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let key = k(b"m");
        c.publish(new_entry(b"m", b"x")).unwrap();
        let mp = c.entry_dir(&key).join(MANIFEST_FILE);
        let text = fs::read_to_string(&mp).unwrap();
        let tag = ContentHash::of(b"m").to_hex();
        fs::write(&mp, text.replace(&tag, &ContentHash::of(b"n").to_hex())).unwrap();
        match c.lookup(&key) {
            Lookup::Corrupt { file, reason } => {
                assert_eq!(file, MANIFEST_FILE);
                assert!(reason.contains("derived from its kind"), "{reason}");
            }
            other => panic!("expected corrupt, got {other:?}"),
        }
        // Its stage id is still named, even once the manifest no longer parses.
        fs::write(&mp, b"{ not json").unwrap();
        c.write_atomic(
            &c.root()
                .join("requests")
                .join(format!("{}.json", key.to_hex())),
            br#"{"id": "a/b/train"}"#,
        )
        .unwrap();
        assert_eq!(c.stage_id_of(&key).as_deref(), Some("a/b/train"));
    }

    #[test]
    fn content_hash_ignores_aux_but_not_outputs() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let a = c.publish(new_entry(b"1", b"x")).unwrap();
        let mut n = new_entry(b"2", b"x");
        n.aux.insert("log.txt".into(), b"different log".to_vec());
        let b = c.publish(n).unwrap();
        let d2 = c.publish(new_entry(b"3", b"y")).unwrap();
        assert_eq!(a.content_hash(), b.content_hash());
        assert_ne!(a.content_hash(), d2.content_hash());
    }

    #[test]
    fn second_publish_of_a_key_keeps_the_first() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let key = k(b"k");
        let a = c.publish(new_entry(b"k", b"first")).unwrap();
        let b = c.publish(new_entry(b"k", b"second")).unwrap();
        assert_eq!(a.content_hash(), b.content_hash());
        assert_eq!(
            c.read_manifest(&key).unwrap().content_hash,
            a.content_hash()
        );
        assert!(fs::read_dir(d.path().join("tmp")).unwrap().next().is_none());
    }

    fn opts(keep: &[StageKey]) -> GcOptions {
        GcOptions {
            keep: keep.iter().copied().collect(),
            grace: Duration::from_secs(3600),
            roots_max_age: Duration::from_secs(86400),
        }
    }

    /// Pretend an entry was last used two hours ago.
    fn age(c: &Cache, key: &StageKey) {
        let old = SystemTime::now() - Duration::from_secs(7200);
        fs::File::options()
            .write(true)
            .open(c.used_path(key))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    #[test]
    fn gc_keeps_what_is_reachable_recent_or_leased_and_deletes_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let keys: Vec<_> = (0..5u8).map(|i| k(&[i])).collect();
        for i in 0..5u8 {
            c.publish(new_entry(&[i], &[i])).unwrap();
        }
        // 0: named; 1: recent; 2: leased; 3: in another pipeline's root; 4: garbage.
        for k in [0, 2, 3, 4] {
            age(&c, &keys[k]);
        }
        let _lease = c.lock_key(&keys[2], "x", &|| false).unwrap();
        let rec = roots::RootRecorder::new(
            &c,
            roots::RootOwner::new("other", Path::new("/nonexistent.yaml"), &[]),
        );
        rec.record(keys[3], false);
        rec.finish(true).unwrap();
        let rep = c.gc(&opts(&keys[..1])).unwrap();
        assert_eq!(rep.removed, vec![keys[4]]);
        assert_eq!(
            (rep.kept_reachable, rep.kept_recent, rep.kept_leased),
            (2, 1, 1)
        );
        let mut left = c.keys().unwrap();
        left.sort();
        let mut want = keys[..4].to_vec();
        want.sort();
        assert_eq!(left, want);
        assert!(!c.used_path(&keys[4]).exists());
    }

    /// Bytes large enough to be stored as a shared blob, distinct per `tag`.
    fn big(tag: u8) -> Vec<u8> {
        (0..blobs::BLOB_MIN as usize * 2)
            .map(|i| (i as u8).wrapping_mul(31) ^ tag)
            .collect()
    }

    fn inode(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn identical_files_of_two_entries_are_one_blob_and_small_files_are_not_shared() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let (a, b) = (k(b"a"), k(b"b"));
        c.publish(new_entry(b"a", &big(1))).unwrap();
        c.publish(new_entry(b"b", &big(1))).unwrap();
        let file = |k: &StageKey| c.entry_dir(k).join("out/a.json");
        let blob = blobs::blob_path(c.root(), &ContentHash::of(&big(1)));
        assert_eq!(inode(&file(&a)), inode(&file(&b)));
        assert_eq!(inode(&file(&a)), inode(&blob));
        // The logs ("log", 3 bytes) are each entry's own.
        let log = |k: &StageKey| c.entry_dir(k).join("aux/log.txt");
        assert_ne!(inode(&log(&a)), inode(&log(&b)));
        let mut seen = HashSet::new();
        let once = c.entry_size_once(&a, &mut seen) + c.entry_size_once(&b, &mut seen);
        assert_eq!(
            c.entry_size(&a) + c.entry_size(&b) - once,
            big(1).len() as u64,
            "du counts the shared file once"
        );
        for k in [a, b] {
            assert!(matches!(c.lookup_full(&k), Lookup::Hit(_)));
        }
    }

    #[test]
    fn a_deduplicated_blob_shared_by_two_entries_survives_gc_of_one_and_damage_is_reported_for_both(
    ) {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let (a, b) = (k(b"a"), k(b"b"));
        c.publish(new_entry(b"a", &big(7))).unwrap();
        c.publish(new_entry(b"b", &big(7))).unwrap();
        for k in [a, b] {
            assert!(matches!(c.lookup(&k), Lookup::Hit(_)));
        }
        c.save_verified().unwrap();
        age(&c, &a);
        let rep = c.gc(&opts(&[b])).unwrap();
        assert_eq!(rep.removed, vec![a]);
        assert_eq!(rep.blobs_removed, 0, "b still links the blob");
        assert!(
            rep.freed < big(7).len() as u64,
            "the shared bytes were not freed"
        );
        let Lookup::Hit(e) = c.lookup_full(&b) else {
            panic!("b must survive gc of a")
        };
        assert_eq!(fs::read(e.output_path("a.json")).unwrap(), big(7));

        // Both entries again, then damage the one shared inode (through the blob's name).
        c.publish(new_entry(b"a", &big(7))).unwrap();
        let blob = blobs::blob_path(c.root(), &ContentHash::of(&big(7)));
        let mut bytes = fs::read(&blob).unwrap();
        bytes[100] ^= 1;
        fs::OpenOptions::new()
            .write(true)
            .open(&blob)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        let c = Cache::open(d.path()).unwrap();
        for k in [a, b] {
            assert!(
                matches!(c.lookup(&k), Lookup::Corrupt { ref file, .. } if file == "out/a.json"),
                "a run finds the damage in {}",
                c.stage_id_of(&k).unwrap()
            );
            assert!(matches!(c.lookup_full(&k), Lookup::Corrupt { .. }));
        }
        // A new entry with those bytes does not link the damaged blob: it stores them afresh.
        let fresh = k(b"c");
        c.publish(new_entry(b"c", &big(7))).unwrap();
        assert!(matches!(c.lookup_full(&fresh), Lookup::Hit(_)));
        assert_eq!(
            fs::read(&blob).unwrap(),
            big(7),
            "the blob is the good copy now"
        );
    }

    #[test]
    fn gc_removes_a_blob_once_no_entry_links_it() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let (a, b) = (k(b"a"), k(b"b"));
        c.publish(new_entry(b"a", &big(3))).unwrap();
        c.publish(new_entry(b"b", &big(3))).unwrap();
        age(&c, &a);
        age(&c, &b);
        let blob = blobs::blob_path(c.root(), &ContentHash::of(&big(3)));
        let rep = c.gc(&opts(&[])).unwrap();
        assert_eq!(rep.removed.len(), 2);
        assert_eq!(rep.blobs_removed, 1);
        assert!(!blob.exists());
        // The two logs and manifests, and the shared file once.
        assert!(rep.freed >= big(3).len() as u64);
        assert!(rep.freed < 2 * big(3).len() as u64, "{}", rep.freed);
    }

    #[test]
    fn expired_roots_are_deleted_and_keep_nothing() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let k = k(b"r");
        c.publish(new_entry(b"r", b"r")).unwrap();
        age(&c, &k);
        let rec = roots::RootRecorder::new(
            &c,
            roots::RootOwner::new("p", Path::new("/nonexistent.yaml"), &[]),
        );
        rec.record(k, true);
        rec.finish(true).unwrap();
        assert_eq!(c.gc(&opts(&[])).unwrap().removed, vec![]);
        let mut o = opts(&[]);
        o.roots_max_age = Duration::ZERO;
        let rep = c.gc(&o).unwrap();
        assert_eq!(rep.removed, vec![k]);
        assert_eq!(rep.expired_roots.len(), 1);
        assert!(c.roots().unwrap().is_empty());
    }

    #[test]
    fn marking_an_old_entry_used_protects_it_from_gc() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let k = k(b"u");
        c.publish(new_entry(b"u", b"u")).unwrap();
        age(&c, &k);
        c.mark_used(&k);
        assert!(c.gc(&opts(&[])).unwrap().removed.is_empty());
        assert!(matches!(c.lookup(&k), Lookup::Hit(_)));
    }

    /// A name as `lease::unique` makes it, for a process of this host that has exited.
    fn dead_maker() -> String {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let me = lease::unique();
        let host = me.split('-').next().unwrap();
        format!("{host}-{pid}-0-0")
    }

    #[test]
    fn a_dead_processs_leftovers_are_cleaned_and_a_live_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let (dead, live) = (dead_maker(), lease::unique());
        let key = StageKey::of(b"k").to_hex();
        let root = d.path();
        let made = |rel: String, dir: bool| {
            let p = root.join(rel);
            if dir {
                fs::create_dir_all(p.join("out")).unwrap();
            } else {
                fs::write(&p, b"x").unwrap();
            }
            p
        };
        let mut doomed = vec![
            made(format!("tmp/{key}.{dead}"), true),
            made(format!("trash/{key}.{dead}"), true),
            made(format!("index/.filehashes.json.{dead}"), false),
            made(format!("leases/.{key}.{dead}.tmp"), false),
            made(format!("leases/.{key}.{dead}.gone"), false),
            // A breaker left by a dead waiter, whose lease is gone.
            made(format!("leases/{key}.break.{dead}"), false),
        ];
        fs::write(&doomed[5], format!("{dead}\ntrain")).unwrap();
        let kept = vec![
            made(format!("tmp/{key}.{live}"), true),
            made(format!("trash/{key}.{live}"), true),
            made(format!("index/.filehashes.json.{live}"), false),
            made(format!("leases/.{key}.{live}.tmp"), false),
            // Another host's: it may be alive, so a run leaves it to gc's grace period.
            made(format!("tmp/{key}.otherbox-1-0-0"), true),
        ];
        // A lease whose holder died (written as a holder writes it) and one held right now.
        let dead_lease = root.join("leases").join(&key);
        let held = c
            .lock_key(&StageKey::of(b"held"), "live", &|| false)
            .unwrap();
        let info = fs::read_to_string(held.path()).unwrap();
        let pid = std::process::id().to_string();
        let dead_pid = dead.split('-').nth(1).unwrap();
        fs::write(
            &dead_lease,
            info.replace(&format!("\"pid\":{pid}"), &format!("\"pid\":{dead_pid}")),
        )
        .unwrap();
        doomed.push(dead_lease);
        assert_eq!(c.clean_dead_leftovers(), doomed.len());
        for p in &doomed {
            assert!(!p.exists(), "{} should be gone", p.display());
        }
        for p in &kept {
            assert!(p.exists(), "{} should be kept", p.display());
        }
        assert!(held.path().exists());
        // Nothing is removed through a read-only handle.
        drop(held);
        made(format!("tmp/{key}.{dead}"), true);
        assert_eq!(Cache::open_read_only(root).clean_dead_leftovers(), 0);
    }

    #[test]
    fn bad_output_names_are_rejected() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let mut n = new_entry(b"1", b"a");
        n.outputs.insert("../evil".into(), vec![]);
        assert!(matches!(c.publish(n), Err(CacheError::BadFileName(_))));
    }
}
