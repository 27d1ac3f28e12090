//! A remote copy of the cache that a team pushes entries to and pulls them from: an
//! S3-compatible bucket, a WebDAV/HTTP server, or a directory (`object_store` does the talking).
//!
//! Layout under the remote prefix (documented in docs/team.md):
//! - `blobs/<h0h1>/<blake3>` — every file of every entry (`out/` and `aux/`), named by its own
//!   blake3 and shared by all entries that hold the same bytes, as in the local cache
//!   (`blobs`): a push uploads only the blobs the remote lacks, and a pull downloads only the
//!   blobs the local cache lacks. Two pushers of one file write the same bytes under one name.
//! - `entries/<k0k1>/<key>/manifest.json` — the entry's manifest, uploaded *last*: an entry
//!   without one is an unfinished push and is invisible to pulls.
//! - `entries/<k0k1>/<key>/blobs/<blake3>` — where pushes before shared blobs put an entry's
//!   files; pulls still read them there when the shared name is absent.
//!
//! Nothing from a remote is trusted. A pull re-derives the key from the manifest's kind,
//! version, parameters and input hashes, recomputes the content hash from its file list, and
//! re-hashes every downloaded file against the manifest before the entry is published through
//! the cache's own atomic path; any mismatch is an error naming the key, the file, and the
//! expected and found hashes, and nothing lands. A push only sends entries that verify locally.
//!
//! `object_store` is async; a small tokio runtime (two worker threads) lives here, created on
//! first use, so the engine stays synchronous and a run that never needs the remote never builds a
//! client. Credentials come only from the backends' standard environment variables (or a URL's
//! user info for HTTP); every message that leaves this module is scrubbed of them.

use super::manifest::{Fault, Manifest, AUX_DIR, MANIFEST_FILE, OUT_DIR};
use super::{Cache, CacheError, Entry, Lookup, NewEntry};
use crate::digest::{ContentHash, StageKey};
#[cfg(test)]
use crate::digest::{KeyMaterial, KEY_SCHEME};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Files transferred at once per entry.
const PARALLEL_FILES: usize = 8;
/// Environment variables whose values are secrets and must never be printed.
const SECRET_VARS: [&str; 3] = [
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
];

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote cache `{url}`: {reason}")]
    Config { url: String, reason: String },
    #[error("remote cache {url}: {op} {path}: {message}")]
    Store {
        url: String,
        op: &'static str,
        path: String,
        message: String,
    },
    #[error(
        "remote entry {key}: file `{file}` does not match its manifest: expected {expected}, \
         found {found}; rejected, nothing was stored"
    )]
    Mismatch {
        key: StageKey,
        file: String,
        expected: String,
        found: String,
    },
    #[error("remote entry {key}: bad manifest: {reason}; rejected, nothing was stored")]
    BadManifest { key: StageKey, reason: String },
    #[error("entry {key} is not in the local cache or does not verify ({reason}); not pushed")]
    NotLocal { key: StageKey, reason: String },
    #[error("{0}")]
    Cache(#[from] CacheError),
}

/// Where the team's remote cache lives and how `run` uses it.
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    pub url: String,
    /// S3 endpoint for S3-compatible servers; default: `AWS_ENDPOINT_URL`, else AWS.
    pub endpoint: Option<String>,
    /// S3 region; default: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Permit `http://` endpoints (S3 and WebDAV); `http://` remote URLs imply it.
    pub allow_http: Option<bool>,
    /// `run` pulls a missing stage's entry before computing it.
    #[serde(default = "yes")]
    pub read_through: bool,
    /// `run` pushes every entry it computed.
    #[serde(default = "yes")]
    pub push: bool,
}

fn yes() -> bool {
    true
}

impl RemoteConfig {
    /// A remote given only by URL (`--remote`, `CFPIPE_REMOTE`): defaults for the rest.
    pub fn from_url(url: impl Into<String>) -> RemoteConfig {
        RemoteConfig {
            url: url.into(),
            endpoint: None,
            region: None,
            allow_http: None,
            read_through: true,
            push: true,
        }
    }
}

/// What a pull of one key did.
#[derive(Debug)]
pub enum Pulled {
    /// Downloaded, verified and published; `bytes` transferred.
    Fetched { entry: Box<Entry>, bytes: u64 },
    /// Already in the local cache (verified); nothing transferred.
    Local(Box<Entry>),
    /// The remote has no complete entry for the key.
    Absent,
}

/// What a push of one key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Uploaded {
        bytes: u64,
    },
    /// A complete entry (a manifest) was already on the remote; first complete push wins.
    AlreadyThere,
    /// The remote's copy failed the manifest check (an edited or foreign manifest), so every
    /// pull rejected it; it was overwritten with this verified entry.
    Replaced {
        bytes: u64,
    },
}

/// What the remote holds under a key.
enum Held {
    Nothing,
    Good,
    Rejected,
}

enum Backend {
    S3 { bucket: String },
    Http { origin: String },
    Local { dir: std::path::PathBuf },
}

struct Connection {
    store: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Runtime,
}

/// A configured remote; connects on first use.
pub struct Remote {
    cfg: RemoteConfig,
    /// The URL with any user info replaced, for messages.
    shown: String,
    backend: Backend,
    prefix: String,
    secrets: Vec<String>,
    conn: OnceLock<Result<Connection, String>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.shown)
    }
}

/// `url` with user info (`user:password@`) replaced by `***@`, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("***");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(_) => url.to_string(),
        // Unparsable: cut anything before an '@' in the authority, to be safe.
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(a)) if a > s => format!("{}***{}", &url[..s + 3], &url[a..]),
            _ => url.to_string(),
        },
    }
}

impl Remote {
    /// Check the URL and settings; does not touch the network.
    pub fn new(cfg: RemoteConfig) -> Result<Remote, RemoteError> {
        let shown = redact_url(&cfg.url);
        let bad = |reason: String| RemoteError::Config {
            url: shown.clone(),
            reason,
        };
        let mut secrets: Vec<String> = SECRET_VARS
            .iter()
            .filter_map(|v| std::env::var(v).ok())
            .collect();
        let (backend, prefix) = if cfg.url.contains("://") {
            let u = url::Url::parse(&cfg.url).map_err(|e| bad(format!("not a URL: {e}")))?;
            if let Some(p) = u.password() {
                secrets.push(p.to_string());
                // A password written `p%40ss` is scrubbed as `p@ss` too.
                if let Ok(d) = percent_encoding::percent_decode_str(p).decode_utf8() {
                    secrets.push(d.into_owned());
                }
            }
            let path = u.path().trim_matches('/').to_string();
            match u.scheme() {
                "s3" | "s3a" => {
                    let bucket = u
                        .host_str()
                        .filter(|b| !b.is_empty())
                        .ok_or_else(|| bad("an S3 URL needs a bucket: s3://BUCKET/prefix".into()))?
                        .to_string();
                    (Backend::S3 { bucket }, path)
                }
                "http" | "https" => {
                    let origin = u[..url::Position::BeforePath].to_string();
                    (Backend::Http { origin }, path)
                }
                "file" => {
                    let dir = u
                        .to_file_path()
                        .map_err(|_| bad("not a local file URL".into()))?;
                    (Backend::Local { dir }, String::new())
                }
                other => {
                    return Err(bad(format!(
                        "unsupported scheme `{other}` (use s3://, http(s):// for WebDAV, \
                         file:// or a directory path)"
                    )))
                }
            }
        } else {
            (
                Backend::Local {
                    dir: std::path::PathBuf::from(&cfg.url),
                },
                String::new(),
            )
        };
        secrets.retain(|s| s.len() >= 4);
        Ok(Remote {
            cfg,
            shown,
            backend,
            prefix,
            secrets,
            conn: OnceLock::new(),
        })
    }

    /// The URL, safe to print.
    pub fn url(&self) -> &str {
        &self.shown
    }
    pub fn read_through(&self) -> bool {
        self.cfg.read_through
    }
    pub fn push_on_run(&self) -> bool {
        self.cfg.push
    }

    /// Scrub every known secret from a message.
    pub fn redact(&self, msg: &str) -> String {
        let mut m = msg.to_string();
        for s in &self.secrets {
            m = m.replace(s.as_str(), "***");
        }
        // URLs that carry user info (`scheme://user:pass@host`) in anything the client printed.
        let mut out = String::with_capacity(m.len());
        let mut rest = m.as_str();
        while let Some(i) = rest.find("://") {
            let (head, tail) = rest.split_at(i + 3);
            out.push_str(head);
            let end = tail
                .find(|c: char| c == '/' || c.is_whitespace() || c == ')' || c == '"')
                .unwrap_or(tail.len());
            match tail[..end].rfind('@') {
                Some(at) => {
                    out.push_str("***");
                    out.push_str(&tail[at..end]);
                }
                None => out.push_str(&tail[..end]),
            }
            rest = &tail[end..];
        }
        out.push_str(rest);
        out
    }

    fn connect(&self) -> Result<&Connection, RemoteError> {
        let c = self
            .conn
            .get_or_init(|| self.build().map_err(|e| self.redact(&e)));
        c.as_ref().map_err(|reason| RemoteError::Config {
            url: self.shown.clone(),
            reason: reason.clone(),
        })
    }

    fn build(&self) -> Result<Connection, String> {
        let allow_http = self
            .cfg
            .allow_http
            .unwrap_or_else(|| self.cfg.url.starts_with("http://"));
        let client = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(300));
        // A remote is an optimisation: give up quickly rather than stall a run for minutes.
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            ..RetryConfig::default()
        };
        let store: Arc<dyn ObjectStore> = match &self.backend {
            Backend::S3 { bucket } => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_client_options(client)
                    .with_retry(retry);
                if let Some(e) = &self.cfg.endpoint {
                    b = b.with_endpoint(e);
                }
                if let Some(r) = &self.cfg.region {
                    b = b.with_region(r);
                }
                if let Some(a) = self.cfg.allow_http {
                    b = b.with_allow_http(a);
                } else if std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .is_ok_and(|e| e.starts_with("http://"))
                    || self
                        .cfg
                        .endpoint
                        .as_deref()
                        .is_some_and(|e| e.starts_with("http://"))
                {
                    b = b.with_allow_http(true);
                }
                Arc::new(b.build().map_err(|e| e.to_string())?)
            }
            Backend::Http { origin } => Arc::new(
                object_store::http::HttpBuilder::new()
                    .with_url(origin)
                    .with_client_options(client)
                    .with_retry(retry)
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
            Backend::Local { dir } => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(dir)
                        .map_err(|e| e.to_string())?,
                )
            }
        };
        // Multi-threaded so that the stage threads of `run` and the workers of `cache pull`
        // can all wait on transfers at once.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cfpipe-remote")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the I/O runtime: {e}"))?;
        Ok(Connection { store, rt })
    }

    fn entry_prefix(&self, key: &StageKey) -> String {
        let hex = key.to_hex();
        let rel = format!("entries/{}/{hex}", &hex[..2]);
        if self.prefix.is_empty() {
            rel
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }
    fn manifest_path(&self, key: &StageKey) -> ObjPath {
        ObjPath::from(format!("{}/{MANIFEST_FILE}", self.entry_prefix(key)))
    }
    /// Where a file's bytes are stored, shared by every entry that holds them.
    fn blob_path(&self, hash: &ContentHash) -> ObjPath {
        let hex = hash.to_hex();
        let rel = format!("blobs/{}/{hex}", &hex[..2]);
        ObjPath::from(if self.prefix.is_empty() {
            rel
        } else {
            format!("{}/{rel}", self.prefix)
        })
    }
    /// Where pushes before shared blobs stored an entry's files.
    fn legacy_blob_path(&self, key: &StageKey, hash: &ContentHash) -> ObjPath {
        ObjPath::from(format!(
            "{}/blobs/{}",
            self.entry_prefix(key),
            hash.to_hex()
        ))
    }

    fn store_err(&self, op: &'static str, path: &ObjPath, e: object_store::Error) -> RemoteError {
        RemoteError::Store {
            url: self.shown.clone(),
            op,
            path: self.redact(path.as_ref()),
            message: self.redact(&e.to_string()),
        }
    }

    /// The bytes of one object, or `None` if it does not exist.
    fn get(&self, c: &Connection, path: &ObjPath) -> Result<Option<Vec<u8>>, RemoteError> {
        let r = c.rt.block_on(async {
            match c.store.get(path).await {
                Ok(g) => g.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        r.map(|b| b.map(|b| b.to_vec()))
            .map_err(|e| self.store_err("GET", path, e))
    }

    /// Whether the remote holds an entry for `key` whose manifest passes [`Manifest::check`].
    /// A GET rather than a HEAD: a copy that every pull would reject must not count as there.
    fn held(&self, key: &StageKey) -> Result<Held, RemoteError> {
        let c = self.connect()?;
        match self.get(c, &self.manifest_path(key))? {
            None => Ok(Held::Nothing),
            Some(bytes) => match check_manifest(key, &bytes) {
                Ok(_) => Ok(Held::Good),
                Err(_) => Ok(Held::Rejected),
            },
        }
    }

    /// Upload a locally verified entry: blobs first, manifest last. Skipped when the remote
    /// already has a complete entry for the key that passes the manifest check; a rejected
    /// copy is replaced. An entry that fails the check locally is never uploaded.
    pub fn push(&self, cache: &Cache, key: &StageKey) -> Result<Pushed, RemoteError> {
        let entry = match cache.lookup(key) {
            Lookup::Hit(e) => e,
            Lookup::Missing => {
                return Err(RemoteError::NotLocal {
                    key: *key,
                    reason: "missing".into(),
                })
            }
            Lookup::Corrupt { file, reason } => {
                return Err(RemoteError::NotLocal {
                    key: *key,
                    reason: format!("{file}: {reason}"),
                })
            }
        };
        self.push_entry(&entry)
    }

    /// Upload an entry the caller has just verified or published.
    pub fn push_entry(&self, entry: &Entry) -> Result<Pushed, RemoteError> {
        match self.held(&entry.key())? {
            Held::Good => Ok(Pushed::AlreadyThere),
            Held::Nothing => self.upload(entry).map(|bytes| Pushed::Uploaded { bytes }),
            Held::Rejected => self.upload(entry).map(|bytes| Pushed::Replaced { bytes }),
        }
    }

    /// Upload the blobs the remote lacks, then the manifest; returns the bytes sent. A blob
    /// already there with the right size is not sent again (its bytes are checked by every
    /// pull that reads it).
    fn upload(&self, entry: &Entry) -> Result<u64, RemoteError> {
        let c = self.connect()?;
        let key = entry.key();
        let manifest = entry.manifest()?;
        let manifest_bytes =
            std::fs::read(entry.dir.join(MANIFEST_FILE)).map_err(|source| CacheError::Io {
                path: entry.dir.join(MANIFEST_FILE),
                source,
            })?;
        // Files are re-read and re-hashed here: what is uploaded is exactly what was checked.
        let mut files: BTreeMap<ContentHash, (String, u64)> = BTreeMap::new();
        for (sub, recs) in [(OUT_DIR, &manifest.outputs), (AUX_DIR, &manifest.aux)] {
            for (name, rec) in recs {
                files.insert(rec.blake3, (format!("{sub}/{name}"), rec.size));
            }
        }
        let dir = entry.dir.clone();
        let uploads = files.into_iter().map(|(hash, (rel, size))| {
            let dir = dir.clone();
            let path = self.blob_path(&hash);
            async move {
                match c.store.head(&path).await {
                    Ok(meta) if meta.size == size => return Ok(0),
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.store_err("HEAD", &path, e)),
                }
                let p = dir.join(&rel);
                let bytes = std::fs::read(&p).map_err(|source| CacheError::Io {
                    path: p.clone(),
                    source,
                })?;
                let found = ContentHash::of(&bytes);
                if found != hash {
                    return Err(RemoteError::NotLocal {
                        key,
                        reason: format!("{rel} changed while pushing"),
                    });
                }
                c.store
                    .put(&path, bytes.into())
                    .await
                    .map_err(|e| self.store_err("PUT", &path, e))?;
                Ok(size)
            }
        });
        let sent: Vec<u64> = c.rt.block_on(
            stream::iter(uploads)
                .buffer_unordered(PARALLEL_FILES)
                .try_collect(),
        )?;
        let total: u64 = sent.iter().sum();
        let mp = self.manifest_path(&key);
        let mlen = manifest_bytes.len() as u64;
        c.rt.block_on(c.store.put(&mp, manifest_bytes.into()))
            .map_err(|e| self.store_err("PUT", &mp, e))?;
        Ok(total + mlen)
    }

    /// Download, verify and publish the entry of `key`. Nothing lands unless every check
    /// passes.
    pub fn pull(&self, cache: &Cache, key: &StageKey) -> Result<Pulled, RemoteError> {
        if let Lookup::Hit(e) = cache.lookup(key) {
            return Ok(Pulled::Local(e));
        }
        let c = self.connect()?;
        let Some(mbytes) = self.get(c, &self.manifest_path(key))? else {
            return Ok(Pulled::Absent);
        };
        let m = check_manifest(key, &mbytes)?;
        let mut wanted: BTreeMap<ContentHash, Vec<(String, String, u64)>> = BTreeMap::new();
        for (sub, recs) in [(OUT_DIR, &m.outputs), (AUX_DIR, &m.aux)] {
            for (name, rec) in recs {
                wanted.entry(rec.blake3).or_default().push((
                    sub.to_string(),
                    name.clone(),
                    rec.size,
                ));
            }
        }
        let downloads = wanted.iter().map(|(hash, files)| {
            let hash = *hash;
            let size = files[0].2;
            async move {
                // Bytes the local cache already holds (verified) are not downloaded again.
                if let Some(local) = super::blobs::read_verified(cache.root(), &hash, size) {
                    return Ok((hash, local, false));
                }
                for path in [self.blob_path(&hash), self.legacy_blob_path(key, &hash)] {
                    match c.store.get(&path).await {
                        Ok(g) => {
                            let got = g
                                .bytes()
                                .await
                                .map_err(|e| self.store_err("GET", &path, e))?;
                            return Ok((hash, got.to_vec(), true));
                        }
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(self.store_err("GET", &path, e)),
                    }
                }
                Err(RemoteError::BadManifest {
                    key: *key,
                    reason: format!("blob {} is missing", hash.to_hex()),
                })
            }
        });
        let blobs: Vec<(ContentHash, Vec<u8>, bool)> = c.rt.block_on(
            stream::iter(downloads)
                .buffer_unordered(PARALLEL_FILES)
                .try_collect(),
        )?;
        let mut outputs = BTreeMap::new();
        let mut aux = BTreeMap::new();
        let mut bytes_in = mbytes.len() as u64;
        for (hash, data, downloaded) in blobs {
            if downloaded {
                bytes_in += data.len() as u64;
            }
            let found = ContentHash::of(&data);
            for (sub, name, size) in &wanted[&hash] {
                let file = format!("{sub}/{name}");
                if data.len() as u64 != *size {
                    return Err(RemoteError::Mismatch {
                        key: *key,
                        file,
                        expected: format!("{size} bytes, blake3 {}", hash.to_hex()),
                        found: format!("{} bytes, blake3 {}", data.len(), found.to_hex()),
                    });
                }
                if found != hash {
                    return Err(RemoteError::Mismatch {
                        key: *key,
                        file,
                        expected: format!("blake3 {}", hash.to_hex()),
                        found: format!("blake3 {}", found.to_hex()),
                    });
                }
                let target = if sub == OUT_DIR {
                    &mut outputs
                } else {
                    &mut aux
                };
                target.insert(name.clone(), data.to_vec());
            }
        }
        let content_hash = m.content_hash;
        let entry = cache.publish(NewEntry {
            key: *key,
            stage_id: m.stage_id,
            kind: m.kind,
            version: m.version,
            params: m.params,
            inputs: m.inputs,
            files: m.files,
            outputs,
            aux,
            run: m.run,
        })?;
        // `publish` keeps an entry another process published meanwhile; either way it must be
        // the artifact the manifest promised.
        if entry.content_hash() != content_hash {
            return Err(RemoteError::Mismatch {
                key: *key,
                file: "out/".into(),
                expected: format!("content hash {}", content_hash.to_hex()),
                found: format!(
                    "content hash {} (local entry)",
                    entry.content_hash().to_hex()
                ),
            });
        }
        Ok(Pulled::Fetched {
            entry: Box::new(entry),
            bytes: bytes_in,
        })
    }

    /// Every key with a complete entry on the remote.
    pub fn keys(&self) -> Result<Vec<StageKey>, RemoteError> {
        let c = self.connect()?;
        let root = if self.prefix.is_empty() {
            ObjPath::from("entries")
        } else {
            ObjPath::from(format!("{}/entries", self.prefix))
        };
        // A missing prefix lists as empty on every backend; a missing bucket is an error.
        let shards =
            c.rt.block_on(c.store.list_with_delimiter(Some(&root)))
                .map_err(|e| self.store_err("LIST", &root, e))?
                .common_prefixes;
        let listings = shards.iter().map(|shard| async move {
            c.store
                .list_with_delimiter(Some(shard))
                .await
                .map_err(|e| self.store_err("LIST", shard, e))
        });
        let listed: Vec<object_store::ListResult> = c.rt.block_on(
            stream::iter(listings)
                .buffer_unordered(PARALLEL_FILES)
                .try_collect(),
        )?;
        let mut keys: Vec<StageKey> = listed
            .iter()
            .flat_map(|l| &l.common_prefixes)
            .filter_map(|k| k.filename().and_then(StageKey::from_hex))
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

/// Parse a downloaded manifest and check it describes `key` (see [`Manifest::check`]).
fn check_manifest(key: &StageKey, bytes: &[u8]) -> Result<Manifest, RemoteError> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| RemoteError::BadManifest {
        key: *key,
        reason: e.to_string(),
    })?;
    let mismatch = |expected: String, found: String| RemoteError::Mismatch {
        key: *key,
        file: MANIFEST_FILE.into(),
        expected,
        found,
    };
    match m.check(key) {
        Ok(()) => Ok(m),
        Err(Fault::Key { derived, filed }) => Err(mismatch(
            format!("stage key {}", filed.to_hex()),
            format!(
                "stage key {} (derived from its kind, params and inputs)",
                derived.to_hex()
            ),
        )),
        Err(Fault::ContentHash { listed, computed }) => Err(mismatch(
            format!("content hash {}", listed.to_hex()),
            format!("content hash {} (of its output list)", computed.to_hex()),
        )),
        Err(fault) => Err(RemoteError::BadManifest {
            key: *key,
            reason: fault.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::RunInfo;

    /// An entry whose key is derived from its contents, as the executor derives it.
    fn entry(tag: &str) -> NewEntry {
        let params = serde_json::json!({ "tag": tag });
        let key = KeyMaterial {
            scheme: KEY_SCHEME,
            kind: "k",
            version: 1,
            params: &params,
            inputs: &Default::default(),
            files: &Default::default(),
        }
        .key();
        NewEntry {
            key,
            stage_id: format!("s-{tag}"),
            kind: "k".into(),
            version: 1,
            params,
            inputs: Default::default(),
            files: Default::default(),
            outputs: [("a.json".to_string(), tag.as_bytes().to_vec())].into(),
            aux: [("log.txt".to_string(), b"log".to_vec())].into(),
            run: RunInfo::default(),
        }
    }

    #[test]
    fn user_info_and_secrets_are_scrubbed() {
        assert_eq!(
            redact_url("https://bob:pa%40ss@dav.lab/x"),
            "https://***@dav.lab/x"
        );
        assert_eq!(redact_url("s3://bucket/p"), "s3://bucket/p");
        let r = Remote::new(RemoteConfig::from_url("http://bob:pa%40ss@dav.lab/x")).unwrap();
        assert_eq!(r.url(), "http://***@dav.lab/x");
        let msg = r.redact("GET http://bob:pa%40ss@dav.lab/x/y failed; password pa@ss");
        assert!(!msg.contains("pa%40ss") && !msg.contains("pa@ss"), "{msg}");
        assert!(msg.contains("http://***@dav.lab/x/y"), "{msg}");
    }

    #[test]
    fn unsupported_schemes_and_bucketless_urls_are_rejected() {
        for url in ["ftp://host/x", "s3:///prefix"] {
            let e = Remote::new(RemoteConfig::from_url(url)).unwrap_err();
            assert!(matches!(e, RemoteError::Config { .. }), "{url}: {e}");
        }
    }

    #[test]
    fn push_refuses_an_edited_local_entry_and_replaces_a_rejected_remote_copy() {
        let d = tempfile::tempdir().unwrap();
        let a = Cache::open(d.path().join("a")).unwrap();
        let n = entry("one");
        let key = n.key;
        a.publish(n).unwrap();
        let remote_dir = d.path().join("remote");
        let r = Remote::new(RemoteConfig::from_url(remote_dir.to_str().unwrap())).unwrap();
        // The remote holds a copy whose manifest was edited: its params no longer give its key.
        assert!(matches!(r.push(&a, &key), Ok(Pushed::Uploaded { .. })));
        let mp = remote_dir.join(r.manifest_path(&key).as_ref());
        let good = std::fs::read_to_string(&mp).unwrap();
        std::fs::write(&mp, good.replace("\"one\"", "\"two\"")).unwrap();
        let b = Cache::open(d.path().join("b")).unwrap();
        assert!(matches!(
            r.pull(&b, &key),
            Err(RemoteError::Mismatch { .. })
        ));
        assert!(matches!(r.push(&a, &key), Ok(Pushed::Replaced { .. })));
        assert!(matches!(r.pull(&b, &key), Ok(Pulled::Fetched { .. })));
        assert_eq!(r.push(&a, &key).unwrap(), Pushed::AlreadyThere);

        // A local entry edited the same way is never uploaded.
        let c = Cache::open(d.path().join("c")).unwrap();
        let n = entry("three");
        let k3 = n.key;
        c.publish(n).unwrap();
        let lp = c.entry_dir(&k3).join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&lp).unwrap();
        std::fs::write(&lp, text.replace("\"three\"", "\"four\"")).unwrap();
        assert!(matches!(r.push(&c, &k3), Err(RemoteError::NotLocal { .. })));
        assert!(!remote_dir.join(r.manifest_path(&k3).as_ref()).exists());
    }

    /// An entry like [`entry`] whose output is `bytes`.
    fn entry_with(tag: &str, bytes: &[u8]) -> NewEntry {
        let mut n = entry(tag);
        n.outputs = [("model.bin".to_string(), bytes.to_vec())].into();
        n
    }

    #[test]
    fn a_file_two_entries_share_is_pushed_once_and_not_pulled_again() {
        let d = tempfile::tempdir().unwrap();
        let a = Cache::open(d.path().join("a")).unwrap();
        let shared: Vec<u8> = (0..super::super::blobs::BLOB_MIN as usize * 4)
            .map(|i| (i % 251) as u8)
            .collect();
        let (n1, n2) = (entry_with("one", &shared), entry_with("two", &shared));
        let (k1, k2) = (n1.key, n2.key);
        a.publish(n1).unwrap();
        a.publish(n2).unwrap();
        let remote_dir = d.path().join("remote");
        let r = Remote::new(RemoteConfig::from_url(remote_dir.to_str().unwrap())).unwrap();
        let sent = |p: Pushed| match p {
            Pushed::Uploaded { bytes } => bytes,
            other => panic!("expected an upload, got {other:?}"),
        };
        let first = sent(r.push(&a, &k1).unwrap());
        let second = sent(r.push(&a, &k2).unwrap());
        assert!(first > shared.len() as u64);
        assert!(
            second < shared.len() as u64,
            "the second push sent the shared file again: {second} bytes"
        );
        assert!(remote_dir
            .join(r.blob_path(&ContentHash::of(&shared)).as_ref())
            .exists());

        let b = Cache::open(d.path().join("b")).unwrap();
        let got = |p: Pulled| match p {
            Pulled::Fetched { bytes, .. } => bytes,
            other => panic!("expected a fetch, got {other:?}"),
        };
        assert!(got(r.pull(&b, &k1).unwrap()) > shared.len() as u64);
        assert!(
            got(r.pull(&b, &k2).unwrap()) < shared.len() as u64,
            "the shared file was downloaded again"
        );
        use std::os::unix::fs::MetadataExt;
        let ino = |k: &StageKey| {
            std::fs::metadata(b.entry_dir(k).join("out/model.bin"))
                .unwrap()
                .ino()
        };
        assert_eq!(ino(&k1), ino(&k2), "pulled entries share the file too");
        for k in [k1, k2] {
            assert!(matches!(b.lookup_full(&k), Lookup::Hit(_)));
        }
    }

    #[test]
    fn entries_pushed_before_shared_blobs_still_pull() {
        let d = tempfile::tempdir().unwrap();
        let a = Cache::open(d.path().join("a")).unwrap();
        let n = entry("old");
        let key = n.key;
        a.publish(n).unwrap();
        let remote_dir = d.path().join("remote");
        let r = Remote::new(RemoteConfig::from_url(remote_dir.to_str().unwrap())).unwrap();
        r.push(&a, &key).unwrap();
        // Move every blob to where older pushes put them, beside the manifest.
        let e = a.read_manifest(&key).unwrap();
        for rec in e.outputs.values().chain(e.aux.values()) {
            let new = remote_dir.join(r.blob_path(&rec.blake3).as_ref());
            let old = remote_dir.join(r.legacy_blob_path(&key, &rec.blake3).as_ref());
            std::fs::create_dir_all(old.parent().unwrap()).unwrap();
            std::fs::rename(new, old).unwrap();
        }
        let b = Cache::open(d.path().join("b")).unwrap();
        assert!(matches!(r.pull(&b, &key), Ok(Pulled::Fetched { .. })));
        assert!(matches!(b.lookup_full(&key), Lookup::Hit(_)));
    }

    #[test]
    fn directory_remote_round_trip_and_a_tampered_blob_is_rejected() {
        let d = tempfile::tempdir().unwrap();
        let a = Cache::open(d.path().join("a")).unwrap();
        let n = entry("one");
        let key = n.key;
        a.publish(n).unwrap();
        let remote_dir = d.path().join("remote");
        let r = Remote::new(RemoteConfig::from_url(remote_dir.to_str().unwrap())).unwrap();
        assert!(matches!(r.push(&a, &key), Ok(Pushed::Uploaded { .. })));
        assert_eq!(r.push(&a, &key).unwrap(), Pushed::AlreadyThere);
        assert_eq!(r.keys().unwrap(), vec![key]);

        let b = Cache::open(d.path().join("b")).unwrap();
        assert!(matches!(r.pull(&b, &key), Ok(Pulled::Fetched { .. })));
        assert!(matches!(b.lookup(&key), Lookup::Hit(_)));
        assert!(matches!(r.pull(&b, &key), Ok(Pulled::Local(_))));
        let absent = entry("two").key;
        assert!(matches!(r.pull(&b, &absent), Ok(Pulled::Absent)));

        let blob = remote_dir.join(r.blob_path(&ContentHash::of(b"one")).as_ref());
        std::fs::write(&blob, b"two").unwrap();
        let c = Cache::open(d.path().join("c")).unwrap();
        match r.pull(&c, &key) {
            Err(RemoteError::Mismatch {
                file,
                expected,
                found,
                ..
            }) => {
                assert_eq!(file, "out/a.json");
                assert!(expected.contains(&ContentHash::of(b"one").to_hex()));
                assert!(found.contains(&ContentHash::of(b"two").to_hex()));
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert!(matches!(c.lookup(&key), Lookup::Missing));
        assert_eq!(std::fs::read_dir(c.root().join("tmp")).unwrap().count(), 0);
    }
}
