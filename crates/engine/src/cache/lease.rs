//! Per-key leases: which process is computing a key right now, in a form that works when the
//! cache is a directory on a network filesystem shared by several machines.
//!
//! `flock` is not enough there: NFS clients implement it through a lock manager that some
//! mounts disable (`nolock`) and that silently degrades to a client-local lock, and a lock a
//! dead client held lingers until the server reclaims it. A lease is a plain file instead:
//!
//! - **Creation** is `link(2)` of a fully written and closed (so flushed to the NFS server)
//!   private file onto `leases/<key>`.
//!   `link` is atomic on every NFS version, whereas `O_EXCL` was not on NFSv2 and on some older
//!   servers. A lost reply to a retried `link` is resolved the classic way: the private file's
//!   link count is 2 exactly when the link was made.
//! - **Heartbeat.** The holder's background thread rewrites the file in place (same inode, same
//!   length) every `timeout / 6` and syncs it to the server.
//! - **Staleness** never compares clocks of two machines: a waiter remembers the bytes it last
//!   saw and when (on its own monotonic clock); if they have not changed for the lease timeout,
//!   the holder is dead. On the same host a holder whose pid no longer exists is dead at once.
//!   A file that does not parse goes stale the same way, identified by a hash of its bytes.
//! - **Takeover** is exclusive per stale lease: the waiter first `link`s a breaker file named
//!   after the stale lease's unique token (only one waiter can), then removes the lease only if
//!   it still carries that token, and competes for a fresh one like everybody else.
//! - **Release** (success, failure, Ctrl-C) removes the file only if it still carries the
//!   holder's token. A holder killed by SIGKILL leaves its lease; the timeout recovers it.
//!
//! Losing a lease race never corrupts anything: entries are published by atomic rename and the
//! first published entry of a key wins. A wrong takeover costs a duplicate computation only.

use super::perms::GroupPerms;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Leases live here, one file per key being computed.
pub const LEASE_DIR: &str = "leases";

/// Default time without a heartbeat after which a lease is presumed dead.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a lease file holds. `heartbeat_unix_ms` is zero-padded so that every rewrite has the
/// same length and a rewrite in place never leaves stale trailing bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaseInfo {
    pub host: String,
    pub pid: u32,
    pub token: String,
    pub heartbeat_unix_ms: String,
    /// The holder's timeout; waiters use the larger of theirs and this, so a holder that beats
    /// slowly is never judged by a waiter's shorter setting.
    pub timeout_ms: u64,
    /// What is being computed (a stage id), for messages.
    pub what: String,
}

impl LeaseInfo {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("lease info is plain data")
    }
    pub fn holder(&self) -> String {
        format!("{} pid {}", self.host, self.pid)
    }

    /// Held by this very process: a twin of the waiting stage in the same run (two stages
    /// whose inputs came out identical) is computing it.
    pub fn is_this_process(&self) -> bool {
        self.pid == std::process::id() && self.host == host_id()
    }
}

/// This machine's name as other holders see it: `$CFPIPE_HOSTNAME` if set (containers that
/// share a hostname must set it), else the kernel's hostname.
pub fn host_id() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::env::var("CFPIPE_HOSTNAME")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .or_else(|| fs::read_to_string("/etc/hostname").ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown-host".into())
    })
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return true;
    };
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// A name unique across processes and hosts: `<host>-<pid>-<ms>-<counter>`, the host with
/// anything but ASCII letters and digits replaced by `_`.
pub(crate) fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{:x}-{:x}",
        sanitized_host(),
        std::process::id(),
        now_ms(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Create `path` holding `bytes` if nothing is there, atomically even over NFS. Returns the
/// open file (the new inode) when this call created it, `None` when something already exists.
pub fn create_exclusive(
    path: &Path,
    bytes: &[u8],
    perms: GroupPerms,
) -> io::Result<Option<fs::File>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("f");
    let tmp = dir.join(format!(".{name}.{}.tmp", unique()));
    let result = (|| {
        let mut w = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        w.write_all(bytes)?;
        // Closing flushes the bytes to an NFS server (close-to-open consistency) before the
        // link makes them visible, without fsync's wait for a local disk, where the page cache
        // is coherent anyway and a lease need not survive a reboot.
        drop(w);
        perms.apply(&tmp)?;
        let f = fs::OpenOptions::new().read(true).write(true).open(&tmp)?;
        let linked = fs::hard_link(&tmp, path);
        let won = match &linked {
            Ok(()) => true,
            Err(_) => f.metadata().map(|m| m.nlink() == 2).unwrap_or(false),
        };
        match linked {
            _ if won => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
            Ok(()) => unreachable!("a successful link always wins"),
        }
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// Read a lease file: its bytes (for change detection) and, if they parse, its content.
pub(crate) fn read(path: &Path) -> io::Result<(Vec<u8>, Option<LeaseInfo>)> {
    let bytes = fs::read(path)?;
    let info = serde_json::from_slice(&bytes).ok();
    Ok((bytes, info))
}

/// What stands for a lease file that does not parse (a write lost to a full disk, a stray
/// file): its token is derived from its bytes, so it can go stale and be broken like any other.
fn garbage(bytes: &[u8]) -> LeaseInfo {
    LeaseInfo {
        host: "(unreadable lease)".into(),
        pid: 0,
        token: garbage_token(bytes),
        heartbeat_unix_ms: String::new(),
        timeout_ms: 0,
        what: String::new(),
    }
}

fn garbage_token(bytes: &[u8]) -> String {
    format!("raw{}", &blake3::hash(bytes).to_hex()[..24])
}

/// The token of the lease file holding `bytes`.
fn token_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<LeaseInfo>(bytes)
        .map(|i| i.token)
        .unwrap_or_else(|_| garbage_token(bytes))
}

/// Remove the lease at `path` only if it carries `token`. The file is first renamed aside (so
/// what is inspected is exactly what was removed); a different lease found there is linked
/// back, same inode, so its holder's heartbeat carries on.
fn remove_if_token(path: &Path, token: &str) -> io::Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("f");
    let aside = dir.join(format!(".{name}.{}.gone", unique()));
    match fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let ours = fs::read(&aside).is_ok_and(|b| token_of(&b) == token);
    if !ours {
        let _ = fs::hard_link(&aside, path);
    }
    let _ = fs::remove_file(&aside);
    Ok(ours)
}

/// Leases this process holds, so that a hard exit (second Ctrl-C) can still release them.
static HELD: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

fn held() -> std::sync::MutexGuard<'static, Vec<(PathBuf, String)>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Release every lease this process holds; for exit paths that skip destructors.
pub fn release_all_held() {
    for (path, token) in held().drain(..) {
        let _ = remove_if_token(&path, &token);
    }
}

/// A held lease. Dropping it stops the heartbeat and releases the lease.
pub struct Lease {
    path: PathBuf,
    token: String,
    stop: Option<mpsc::Sender<()>>,
    beat: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("path", &self.path)
            .field("token", &self.token)
            .finish()
    }
}

impl Lease {
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.beat.take() {
            let _ = t.join();
        }
        held().retain(|(_, t)| *t != self.token);
        let _ = remove_if_token(&self.path, &self.token);
    }
}

/// Try once to take the lease at `path`. With `heartbeat`, a background thread keeps it alive
/// until the returned lease is dropped.
pub fn try_acquire(
    path: &Path,
    what: &str,
    timeout: Duration,
    heartbeat: bool,
    perms: GroupPerms,
) -> io::Result<Option<Lease>> {
    let mut info = LeaseInfo {
        host: host_id().to_string(),
        pid: std::process::id(),
        token: unique(),
        heartbeat_unix_ms: format!("{:020}", now_ms()),
        timeout_ms: timeout.as_millis() as u64,
        what: what.to_string(),
    };
    let Some(file) = create_exclusive(path, &info.encode(), perms)? else {
        return Ok(None);
    };
    let token = info.token.clone();
    held().push((path.to_path_buf(), token.clone()));
    let (stop, beat) = if heartbeat {
        let (tx, rx) = mpsc::channel::<()>();
        let every = (timeout / 6).max(Duration::from_millis(50));
        let t = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                info.heartbeat_unix_ms = format!("{:020}", now_ms());
                // Same length every time, so an in-place rewrite never leaves a torn tail;
                // sync so other NFS clients see the change.
                let _ = file.write_all_at(&info.encode(), 0);
                let _ = file.sync_data();
            }
        });
        (Some(tx), Some(t))
    } else {
        (None, None)
    };
    Ok(Some(Lease {
        path: path.to_path_buf(),
        token,
        stop,
        beat,
    }))
}

/// Why a waiter decided a lease was dead.
#[derive(Debug, Clone)]
pub enum Stale {
    ProcessGone,
    NoHeartbeat(Duration),
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stale::ProcessGone => write!(f, "its process is gone"),
            Stale::NoHeartbeat(d) => write!(f, "no heartbeat for {:.1} s", d.as_secs_f64()),
        }
    }
}

/// What a waiter has seen of someone else's lease.
#[derive(Default)]
pub struct Watch {
    seen: Option<(Vec<u8>, Instant)>,
}

impl Watch {
    /// Look at the lease at `path`: `None` if it is live (or gone), otherwise its content and
    /// why it is stale.
    pub fn check(&mut self, path: &Path, timeout: Duration) -> Option<(LeaseInfo, Stale)> {
        let (bytes, info) = read(path).ok()?;
        let now = Instant::now();
        let since = match &self.seen {
            Some((b, t)) if *b == bytes => *t,
            _ => {
                self.seen = Some((bytes, now));
                now
            }
        };
        // A lease that does not parse goes stale like any other once it stops changing.
        let info = info.unwrap_or_else(|| garbage(&self.seen.as_ref().expect("just set").0));
        if info.pid != 0 && info.host == host_id() && !pid_alive(info.pid) {
            return Some((info, Stale::ProcessGone));
        }
        let limit = timeout.max(Duration::from_millis(info.timeout_ms));
        let quiet = now.duration_since(since);
        (quiet >= limit).then_some((info, Stale::NoHeartbeat(quiet)))
    }

    /// The content last seen, if it parsed.
    pub fn last(&self) -> Option<LeaseInfo> {
        self.seen
            .as_ref()
            .and_then(|(b, _)| serde_json::from_slice(b).ok())
    }
}

/// Remove a stale lease, exclusively: of several waiters that judged the same lease stale, only
/// the one that creates its breaker file removes it. True if this call removed it.
///
/// A breaker whose creator died before removing the lease would block everyone, so a breaker
/// older than twice the lease's timeout (plus a minute for clock skew) is itself removed.
/// Exclusivity is an economy, not what keeps takeover safe: `remove_if_token` only ever removes
/// the stale token's file.
pub fn break_stale(path: &Path, stale: &LeaseInfo, perms: GroupPerms) -> io::Result<bool> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("f");
    let breaker = path.with_file_name(format!("{name}.break.{}", stale.token));
    // The breaker names its creator, so that a later run can tell one left by a dead process.
    let body = format!("{}\n{}", unique(), stale.what);
    if create_exclusive(&breaker, body.as_bytes(), perms)?.is_none() {
        let limit = 2 * Duration::from_millis(stale.timeout_ms) + Duration::from_secs(60);
        let abandoned = fs::metadata(&breaker)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > limit);
        if abandoned {
            let _ = fs::remove_file(&breaker);
        }
        return Ok(false);
    }
    broken().push(breaker);
    remove_if_token(path, &stale.token)
}

/// Breakers this process created. They stay while it runs, so that a waiter that read the
/// same stale lease cannot break its successor; [`clean_dir`] removes them afterwards.
fn broken() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    static BROKEN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    BROKEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a name made by [`unique`] belongs to a process of this host that no longer exists:
/// the one case where a leftover provably has no owner.
pub(crate) fn dead_here(unique_name: &str) -> bool {
    matches!(owner_of(unique_name), Some((host, pid)) if host == sanitized_host() && !pid_alive(pid))
}

/// The [`unique`] part of a temp name made by [`create_exclusive`] (`.NAME.UNIQUE.tmp`),
/// [`remove_if_token`] (`.NAME.UNIQUE.gone`) or `atomic_write` (`.NAME.UNIQUE`).
pub(crate) fn temp_maker(file_name: &str) -> Option<&str> {
    let rest = file_name.strip_prefix('.')?;
    let rest = rest
        .strip_suffix(".tmp")
        .or_else(|| rest.strip_suffix(".gone"))
        .unwrap_or(rest);
    rest.rsplit_once('.').map(|(_, maker)| maker)
}

/// Remove from the lease directory what provably has no owner (a run calls this when it ends,
/// gc too), and count what was removed:
/// - leases whose holder is a dead process of this host, or that nobody rewrote for two of
///   their holder's timeouts (and at least `timeout`);
/// - temp files of dead processes of this host;
/// - breakers whose lease no longer carries the broken token, once their creator is this
///   process or a dead one of this host, or once they are older than a breaker's useful life.
pub fn clean_dir(dir: &Path, timeout: Duration, perms: GroupPerms) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    let mine: Vec<PathBuf> = broken().clone();
    let mut removed = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let path = e.path();
        let gone = if name.starts_with('.') {
            temp_maker(&name).is_some_and(dead_here) && fs::remove_file(&path).is_ok()
        } else if let Some((key, token)) = name.split_once(".break.") {
            let current = read(&dir.join(key)).ok().map(|(b, _)| token_of(&b));
            let done = current.as_deref() != Some(token);
            let creator_gone = mine.contains(&path)
                || fs::read_to_string(&path)
                    .ok()
                    .and_then(|b| b.lines().next().map(dead_here))
                    .unwrap_or(false);
            let limit = 2 * timeout + Duration::from_secs(60);
            let old = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > limit);
            done && (creator_gone || old) && fs::remove_file(&path).is_ok()
        } else {
            remove_if_dead(&path, timeout, perms).unwrap_or(false)
        };
        removed += usize::from(gone);
    }
    broken().retain(|p| p.exists());
    removed
}

/// The host (as written by [`unique`]) and pid that a name made by [`unique`] carries.
pub(crate) fn owner_of(unique_name: &str) -> Option<(&str, u32)> {
    let mut parts = unique_name.split('-');
    let host = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    Some((host, pid))
}

/// Whether the process that made a name with [`unique`] is alive: known for this host; for
/// other hosts, presumed while `modified` is within `quiet`.
pub(crate) fn maker_alive(
    unique_name: &str,
    modified: Option<SystemTime>,
    quiet: Duration,
) -> bool {
    match owner_of(unique_name) {
        Some((host, pid)) if host == sanitized_host() => pid_alive(pid),
        _ => modified
            .and_then(|m| m.elapsed().ok())
            .is_none_or(|age| age < quiet),
    }
}

fn sanitized_host() -> String {
    host_id().replace(|c: char| !c.is_ascii_alphanumeric(), "_")
}

/// Whether a lease file at `path` may belong to a live holder, judged without waiting (for
/// gc): yes unless it is this host's and its process is gone, or nothing rewrote it for `quiet`
/// and two of the holder's timeouts (a live holder rewrites it every `timeout / 6`; `quiet` is
/// far longer than any clock skew).
pub fn looks_live(path: &Path, quiet: Duration) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    let (bytes, info) = match read(path) {
        Ok(r) => r,
        Err(e) => return e.kind() != io::ErrorKind::NotFound,
    };
    let info = info.unwrap_or_else(|| garbage(&bytes));
    if info.pid != 0 && info.host == host_id() && !pid_alive(info.pid) {
        return false;
    }
    // A holder with a long timeout beats rarely; never call it dead before two of its periods.
    let quiet = quiet.max(2 * Duration::from_millis(info.timeout_ms));
    meta.modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .is_none_or(|e| e <= quiet)
}

/// Remove the lease at `path` if it does not `looks_live`; true if removed.
pub fn remove_if_dead(path: &Path, quiet: Duration, perms: GroupPerms) -> io::Result<bool> {
    if looks_live(path, quiet) {
        return Ok(false);
    }
    match read(path) {
        Ok((_, Some(info))) => break_stale(path, &info, perms),
        Ok((bytes, None)) => break_stale(path, &garbage(&bytes), perms),
        Err(_) => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_holder_at_a_time_and_release_frees_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let t = Duration::from_secs(60);
        let a = try_acquire(&p, "a", t, true, GroupPerms::NONE)
            .unwrap()
            .unwrap();
        assert!(try_acquire(&p, "b", t, false, GroupPerms::NONE)
            .unwrap()
            .is_none());
        drop(a);
        assert!(!p.exists());
        let b = try_acquire(&p, "b", t, false, GroupPerms::NONE).unwrap();
        assert!(b.is_some());
        drop(b);
        // No temp files left behind.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_heartbeat_changes_the_file_and_keeps_a_waiter_from_judging_it_stale() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        // Generous: an fsync on a loaded CI machine may stall well past a few hundred ms.
        let t = Duration::from_secs(3);
        let _a = try_acquire(&p, "a", t, true, GroupPerms::NONE)
            .unwrap()
            .unwrap();
        let first = fs::read(&p).unwrap();
        let mut w = Watch::default();
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline {
            assert!(w.check(&p, t).is_none(), "a beating lease was judged stale");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_ne!(
            fs::read(&p).unwrap(),
            first,
            "the heartbeat never rewrote the lease"
        );
    }

    #[test]
    fn a_silent_lease_goes_stale_and_exactly_one_of_many_waiters_breaks_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let t = Duration::from_millis(100);
        // No heartbeat: the holder looks dead after the timeout though its pid lives.
        let dead = try_acquire(&p, "a", t, false, GroupPerms::NONE)
            .unwrap()
            .unwrap();
        let mut w = Watch::default();
        assert!(w.check(&p, t).is_none());
        std::thread::sleep(Duration::from_millis(150));
        let (info, why) = w.check(&p, t).expect("stale after the timeout");
        assert!(matches!(why, Stale::NoHeartbeat(_)));
        let wins: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| break_stale(&p, &info, GroupPerms::NONE).unwrap() as usize))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1);
        assert!(!p.exists());
        // A fresh lease is never removed by the old holder's release nor a late breaker.
        let fresh = try_acquire(&p, "c", t, false, GroupPerms::NONE)
            .unwrap()
            .unwrap();
        assert!(!break_stale(&p, &info, GroupPerms::NONE).unwrap());
        drop(dead);
        assert!(p.exists(), "the old holder's release removed a newer lease");
        drop(fresh);
        assert!(!p.exists());
    }

    #[test]
    fn an_abandoned_breaker_does_not_block_takeover_forever() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let _dead = try_acquire(&p, "a", Duration::from_millis(10), false, GroupPerms::NONE)
            .unwrap()
            .unwrap();
        let (_, info) = read(&p).unwrap();
        let info = info.unwrap();
        // A waiter created the breaker, then died before removing the lease.
        let breaker = d.path().join(format!("k.break.{}", info.token));
        fs::write(&breaker, b"").unwrap();
        assert!(!break_stale(&p, &info, GroupPerms::NONE).unwrap());
        let old = SystemTime::now() - Duration::from_secs(3600);
        let f = fs::File::options().write(true).open(&breaker).unwrap();
        f.set_modified(old).unwrap();
        assert!(!break_stale(&p, &info, GroupPerms::NONE).unwrap());
        assert!(break_stale(&p, &info, GroupPerms::NONE).unwrap());
        assert!(!p.exists());
    }

    #[test]
    fn names_from_unique_tell_this_hosts_dead_makers() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let me = unique();
        // Built, not substituted: the hostname may contain the pid's digits.
        let dead = format!("{}-{pid}-0-0", sanitized_host());
        let hour = Duration::from_secs(3600);
        let now = Some(SystemTime::now());
        assert!(maker_alive(&me, now, hour));
        assert!(!maker_alive(&dead, now, hour));
        // Another host's: alive while recent.
        assert!(maker_alive("otherbox-1-0-0", now, hour));
        assert!(!maker_alive(
            "otherbox-1-0-0",
            Some(SystemTime::now() - 2 * hour),
            hour
        ));
    }

    #[test]
    fn an_unreadable_lease_goes_stale_and_is_broken() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        fs::write(&p, b"").unwrap();
        let t = Duration::from_millis(50);
        let mut w = Watch::default();
        assert!(w.check(&p, t).is_none());
        std::thread::sleep(Duration::from_millis(80));
        let (info, _) = w.check(&p, t).expect("stale");
        assert!(break_stale(&p, &info, GroupPerms::NONE).unwrap());
        assert!(!p.exists());
    }

    #[test]
    fn a_dead_pid_on_this_host_is_stale_at_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let info = LeaseInfo {
            host: host_id().into(),
            pid,
            token: "t".into(),
            heartbeat_unix_ms: format!("{:020}", now_ms()),
            timeout_ms: 3_600_000,
            what: "x".into(),
        };
        fs::write(&p, info.encode()).unwrap();
        let (_, why) = Watch::default()
            .check(&p, Duration::from_secs(3600))
            .unwrap();
        assert!(matches!(why, Stale::ProcessGone));
        assert!(!looks_live(&p, Duration::from_secs(3600)));
        let mut live = info.clone();
        live.pid = std::process::id();
        let q = d.path().join("q");
        fs::write(&q, live.encode()).unwrap();
        let f = fs::File::options().write(true).open(&q).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(5400))
            .unwrap();
        // Quiet for 90 minutes with a one-hour timeout: not yet dead; with a 1 s timeout it is.
        assert!(looks_live(&q, Duration::from_secs(120)));
        live.timeout_ms = 1000;
        fs::write(&q, live.encode()).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(5400))
            .unwrap();
        assert!(!looks_live(&q, Duration::from_secs(120)));
        assert!(remove_if_dead(&p, Duration::from_secs(3600), GroupPerms::NONE).unwrap());
        assert!(!p.exists());
    }
}
