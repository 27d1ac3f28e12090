//! The `cache` subcommands (ls, du, verify, gc, roots, push, pull) and the remote they talk
//! to: what a teammate runs to inspect, check, share and trim the store, apart from the
//! commands that run pipelines.

use super::output::out;
use super::{human_bytes, open_cache, open_cache_read, set_args, CacheLoc, RemoteArgs, TeamArgs};
use crate::cache::remote::Remote;
use crate::cache::{GcOptions, Lookup};
use crate::config::{Config, RemoteConfig};
use crate::error::CliError;
use crate::exec::resolve;
use crate::exec::sync::{self, SyncReport};
use crate::spec::DataCheck;
use clap::Subcommand;
use std::collections::BTreeSet;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum CacheCmd {
    /// List entries.
    Ls,
    /// Disk usage per stage kind.
    Du,
    /// Check every entry against its manifest; exit 3 if any fails.
    Verify,
    /// Delete entries that no registered root (see `cache roots`) and none of the given
    /// pipelines reach, unless used within the grace period or leased right now.
    Gc {
        /// Pipelines whose cached stages are kept, besides the registered roots.
        pipelines: Vec<PathBuf>,
        /// `--set` overrides applied to every pipeline.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Keep entries used within this many seconds (at least 120).
        #[arg(long, value_name = "SECS", default_value_t = 3600)]
        grace: u64,
        /// Delete roots no run refreshed for this many days.
        #[arg(long, value_name = "DAYS", default_value_t = 30.0)]
        roots_max_age: f64,
        #[command(flatten)]
        team: TeamArgs,
    },
    /// Pipelines registered as gc roots (every `run` registers its own).
    Roots {
        #[command(subcommand)]
        cmd: RootsCmd,
    },
    /// Upload verified entries to the remote cache: those the pipelines reach, else all.
    Push {
        /// Pipelines whose cached stages are pushed [default: every local entry].
        pipelines: Vec<PathBuf>,
        /// `--set` overrides applied to every pipeline.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Download, verify and store entries from the remote cache: those the pipelines need,
    /// else all.
    Pull {
        /// Pipelines whose stages are pulled [default: every remote entry].
        pipelines: Vec<PathBuf>,
        /// `--set` overrides applied to every pipeline.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[command(flatten)]
        team: TeamArgs,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// The remote for commands about `pipelines`: `--remote`, else `$CFPIPE_REMOTE`, else the config
/// file's `[remote]`. A URL from the flag or variable keeps the config's other settings.
/// `none` turns the remote off.
pub fn open_remote(
    flag: &Option<String>,
    pipelines: &[PathBuf],
) -> Result<Option<Remote>, CliError> {
    let config = Config::for_pipelines(pipelines)?;
    let url = flag.clone().or_else(|| {
        std::env::var("CFPIPE_REMOTE")
            .ok()
            .filter(|u| !u.is_empty())
    });
    let cfg = match (url, config.remote) {
        (Some(u), _) if u == "none" => return Ok(None),
        (Some(u), Some(c)) => RemoteConfig { url: u, ..c },
        (Some(u), None) => RemoteConfig::from_url(u),
        (None, Some(c)) => c,
        (None, None) => return Ok(None),
    };
    Remote::new(cfg).map(Some).map_err(CliError::Remote)
}

fn print_sync(op: &str, rep: &SyncReport, remote: &Remote) -> Result<(), CliError> {
    for (id, e) in &rep.errors {
        eprintln!("FAILED {op} {id}: {e}");
    }
    out!(
        "{op}: {} entries ({}) {} {} in {:.2} s; {} already there, {} unavailable, {} failed",
        rep.moved.len(),
        human_bytes(rep.bytes()),
        if op == "pull" { "from" } else { "to" },
        remote.url(),
        rep.wall_s,
        rep.present,
        rep.unavailable.len(),
        rep.errors.len()
    );
    if rep.errors.is_empty() {
        Ok(())
    } else {
        Err(CliError::SyncFailed {
            op: if op == "pull" { "pull" } else { "push" },
            failed: rep.errors.len(),
        })
    }
}

fn sync_cmd(
    push: bool,
    pipelines: &[PathBuf],
    set: &[String],
    remote_flag: &Option<String>,
    cache: &CacheLoc,
) -> Result<(), CliError> {
    let remote = open_remote(remote_flag, pipelines)?.ok_or(CliError::NoRemote)?;
    // A push only reads the local cache.
    let cache = if push {
        open_cache_read(cache)
    } else {
        open_cache(cache)?
    };
    let mut dags = Vec::new();
    for p in pipelines {
        dags.push(crate::load(p, set, DataCheck::Required)?.1);
    }
    let rep = match (push, dags.is_empty()) {
        (true, true) => sync::push_all(&cache, &remote).map_err(CliError::Remote)?,
        (true, false) => sync::push_dags(&dags, &cache, &remote),
        (false, true) => sync::pull_all(&cache, &remote).map_err(CliError::Remote)?,
        (false, false) => sync::pull_dags(&dags, &cache, &remote),
    };
    print_sync(if push { "push" } else { "pull" }, &rep, &remote)
}

#[derive(Debug, Subcommand)]
pub enum RootsCmd {
    /// List roots: id, age, keys, user, pipeline and overrides.
    Ls,
    /// Unregister roots by id (a unique prefix is enough).
    Rm {
        /// Root ids, or unique prefixes of them (see `cfpipe cache roots ls`).
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub(super) fn cache_cmd(cmd: CacheCmd, c: &CacheLoc) -> Result<(), CliError> {
    // Push and pull open the cache their own way (a push only reads it).
    match &cmd {
        CacheCmd::Push {
            pipelines,
            set,
            remote,
        } => return sync_cmd(true, pipelines, set, &remote.remote, c),
        CacheCmd::Pull {
            pipelines,
            set,
            remote,
            ..
        } => return sync_cmd(false, pipelines, set, &remote.remote, c),
        _ => {}
    }
    // Only gc and `roots rm` change the cache; the rest must not even create it.
    let cache = &match cmd {
        CacheCmd::Gc { .. }
        | CacheCmd::Roots {
            cmd: RootsCmd::Rm { .. },
        } => open_cache(c)?,
        _ => open_cache_read(c),
    };
    match cmd {
        CacheCmd::Push { .. } | CacheCmd::Pull { .. } => {
            unreachable!("push and pull returned above")
        }
        CacheCmd::Ls => {
            for k in cache.keys()? {
                match cache.read_manifest(&k) {
                    Some(m) => out!(
                        "{}  {:<8}  {:>10}  {:>8.2}s  {}",
                        k.short(),
                        m.kind,
                        human_bytes(cache.entry_size(&k)),
                        m.run.wall_s,
                        m.stage_id
                    ),
                    None => out!("{}  (unreadable manifest)", k.short()),
                }
            }
            Ok(())
        }
        CacheCmd::Du => {
            let mut by_kind: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
            let mut total = 0;
            // A file shared by several entries (one blob) counts once, for the first of them.
            let mut seen = std::collections::HashSet::new();
            let mut apparent = 0;
            for k in cache.keys()? {
                apparent += cache.entry_size(&k);
                let size = cache.entry_size_once(&k, &mut seen);
                total += size;
                let kind = cache
                    .read_manifest(&k)
                    .map(|m| m.kind)
                    .unwrap_or_else(|| "?".into());
                let e = by_kind.entry(kind).or_default();
                e.0 += 1;
                e.1 += size;
            }
            for (kind, (n, size)) in &by_kind {
                out!("{kind:<10} {n:>5} entries  {:>10}", human_bytes(*size));
            }
            out!(
                "{:<10} {:>5} entries  {:>10}",
                "total",
                by_kind.values().map(|v| v.0).sum::<usize>(),
                human_bytes(total)
            );
            if apparent > total {
                out!(
                    "(identical files stored once: {} would be {} without sharing)",
                    human_bytes(total),
                    human_bytes(apparent)
                );
            }
            Ok(())
        }
        CacheCmd::Verify => {
            let keys = cache.keys()?;
            let mut bad = 0;
            for k in &keys {
                if let Lookup::Corrupt { file, reason } = cache.lookup_full(k) {
                    bad += 1;
                    let id = cache
                        .stage_id_of(k)
                        .unwrap_or_else(|| "(stage unknown)".into());
                    out!("CORRUPT {} {id}: {file}: {reason}", k.short());
                }
            }
            out!("{} entries verified, {} corrupt", keys.len(), bad);
            if bad > 0 {
                return Err(CliError::VerifyFailed(bad));
            }
            Ok(())
        }
        CacheCmd::Gc {
            pipelines,
            set,
            grace,
            roots_max_age,
            ..
        } => {
            let mut keep = BTreeSet::new();
            for p in &pipelines {
                let (_, dag) = crate::load(p, &set, DataCheck::Required)?;
                for r in resolve::resolve(&dag, cache) {
                    if let (Some(k), true) = (r.key, r.entry.is_some()) {
                        keep.insert(k);
                    }
                }
            }
            if !(roots_max_age.is_finite() && roots_max_age >= 0.0) {
                return Err(CliError::BadOption(format!(
                    "--roots-max-age must be a non-negative number of days, got {roots_max_age}"
                )));
            }
            let rep = cache.gc(&GcOptions {
                keep,
                grace: std::time::Duration::from_secs(grace),
                // At most ~100 years: beyond that an expiry means nothing, and a larger
                // Duration would overflow.
                roots_max_age: std::time::Duration::from_secs_f64(
                    (roots_max_age * 86400.0).min(3.2e9),
                ),
            })?;
            for id in &rep.expired_roots {
                out!("expired root {id}");
            }
            out!(
                "removed {} entries and {} orphaned blobs ({}); kept {} reachable, {} recently used, {} leased",
                rep.removed.len(),
                rep.blobs_removed,
                human_bytes(rep.freed),
                rep.kept_reachable,
                rep.kept_recent,
                rep.kept_leased
            );
            Ok(())
        }
        CacheCmd::Roots { cmd: RootsCmd::Ls } => {
            for r in cache.roots()? {
                let age = r.modified.elapsed().unwrap_or_default().as_secs_f64();
                out!(
                    "{}  {:>7.1}d  {:>4} keys  {:<10} {}{}",
                    r.id,
                    age / 86400.0,
                    r.set.keys.len(),
                    r.set.owner.user,
                    r.set.owner.pipeline.display(),
                    set_args(&r.set.owner.set)
                );
            }
            Ok(())
        }
        CacheCmd::Roots {
            cmd: RootsCmd::Rm { ids },
        } => {
            let all = cache.roots()?;
            for id in &ids {
                let hits: Vec<_> = all
                    .iter()
                    .filter(|r| r.id.starts_with(id.as_str()))
                    .collect();
                match hits.as_slice() {
                    [r] => {
                        cache.remove_root(&r.id)?;
                        out!("removed root {}", r.id);
                    }
                    [] => {
                        return Err(CliError::BadOption(format!(
                            "no root with id `{id}` (see `cfpipe cache roots ls`)"
                        )))
                    }
                    _ => {
                        return Err(CliError::BadOption(format!(
                            "root id `{id}` is ambiguous; give more digits"
                        )))
                    }
                }
            }
            Ok(())
        }
    }
}
