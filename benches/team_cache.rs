//! Costs the shared-cache machinery adds, as a plain harness (`cargo bench --bench team_cache`):
//! - taking and releasing a key's lease (link, fsync, heartbeat thread start and join),
//! - marking an entry used when its stamp is fresh (one `stat`), which every cache hit pays,
//! - `cache gc` over 500 entries that it all keeps (roots, stamps and lease checks).
//!
//! Run it with the cache on the filesystem you care about: `CFPIPE_BENCH_DIR=/shared/x`.
//! Figures go in the issue notes; tests never depend on timing.

use cfpipe::cache::{Cache, GcOptions, NewEntry, RunInfo};
use cfpipe::digest::StageKey;
use std::time::{Duration, Instant};

fn per_op(n: u32, mut f: impl FnMut(u32)) -> Duration {
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    t.elapsed() / n
}

fn main() {
    let base = std::env::var_os("CFPIPE_BENCH_DIR").map(std::path::PathBuf::from);
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let cache = Cache::open(dir.path()).unwrap();
    let lease = per_op(200, |i| {
        let k = StageKey::of(&i.to_le_bytes());
        drop(cache.lock_key(&k, "bench", &|| false).unwrap());
    });
    println!(
        "lease acquire + release: {:.1} µs",
        lease.as_secs_f64() * 1e6
    );

    let keys: Vec<StageKey> = (0..500u32)
        .map(|i| StageKey::of(&i.to_le_bytes()))
        .collect();
    for k in &keys {
        cache
            .publish(NewEntry {
                key: *k,
                stage_id: "s".into(),
                kind: "k".into(),
                version: 1,
                params: serde_json::json!({}),
                inputs: Default::default(),
                files: Default::default(),
                outputs: [("a.json".to_string(), k.to_hex().into_bytes())].into(),
                aux: Default::default(),
                run: RunInfo::default(),
            })
            .unwrap();
    }
    let used = per_op(5000, |i| cache.mark_used(&keys[i as usize % keys.len()]));
    println!("mark_used, fresh stamp: {:.2} µs", used.as_secs_f64() * 1e6);

    let gc = per_op(5, |_| {
        let rep = cache
            .gc(&GcOptions {
                keep: Default::default(),
                grace: Duration::from_secs(3600),
                roots_max_age: Duration::from_secs(86400),
            })
            .unwrap();
        assert!(rep.removed.is_empty());
    });
    println!(
        "gc over 500 recently used entries: {:.1} ms",
        gc.as_secs_f64() * 1e3
    );
}
