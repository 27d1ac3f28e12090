//! What `run --executor slurm` costs the driver and the scheduler, as a plain harness
//! (`cargo bench --bench slurm`). Stages are `noop`s that write a few bytes, so every figure is
//! the executor's own cost, not a stage's.
//!
//! 1. **Toward real scale, simulated.** 5,000 stages (1,000 chains of 5) through the Slurm back
//!    end, with stand-in `sbatch`, `squeue` and `scancel` programs that only count their calls
//!    and answer at once: `sbatch` starts the stage as a detached process of this binary and
//!    prints its pid as the job id; `squeue` reports each such pid RUNNING while it lives and
//!    COMPLETED after. Reported: queue reads per minute (the goal: at most 12, whatever the
//!    number of jobs), submissions, and the driver's own CPU time per stage (the goal: under
//!    5 ms), from `getrusage(RUSAGE_SELF)`, so the stand-ins and the stages are not in it.
//! 2. **On a real Slurm** (when `sinfo` answers, e.g. after `scripts/slurm-local.sh up`): a
//!    chain of 10 dependent stages, whose wall time per stage is the latency a dependent stage
//!    pays (submission, scheduling, job start, publication seen), beside the same chain in
//!    process; and 40 independent stages with 8 jobs in flight, the throughput.
//!
//! The binary plays every role, by the name it is called under (the stand-ins are symlinks to
//! it) or by its first argument (`exec-stage KEY …`, what a job script runs).

use cfpipe::cache::Cache;
use cfpipe::exec::slurm::{SlurmConfig, SlurmRunner};
use cfpipe::exec::{Artifact, ExecOptions, Executor, Registry, Stage, StageContext, StageError};
use cfpipe::graph::{Dag, StageDecl};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A stage that writes its own parameters and its input's bytes: cheap, deterministic, and
/// distinct per stage.
struct Noop;
impl Stage for Noop {
    fn kind(&self) -> &'static str {
        "noop"
    }
    fn version(&self) -> u32 {
        1
    }
    fn run(&self, ctx: &StageContext) -> Result<Artifact, StageError> {
        let mut out = serde_json::to_vec(ctx.params).unwrap();
        if ctx.input_opt("prev").is_some() {
            out.extend(ctx.read_input("prev", "out.json")?);
        }
        Ok(Artifact::new().with("out.json", out))
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(Noop));
    r
}

/// `chains` chains of `len` noop stages each.
fn chains(chains: usize, len: usize) -> Dag {
    let mut decls = Vec::new();
    for c in 0..chains {
        for s in 0..len {
            decls.push(StageDecl {
                id: format!("c{c}/s{s}"),
                kind: "noop".into(),
                version: 1,
                params: serde_json::json!({"chain": c, "step": s}),
                inputs: if s == 0 {
                    BTreeMap::new()
                } else {
                    [("prev".to_string(), format!("c{c}/s{}", s - 1))].into()
                },
                files: BTreeMap::new(),
            });
        }
    }
    Dag::build(decls).unwrap()
}

/// One call counted: a byte appended to `counts/NAME` next to the stand-ins' directory.
fn count(me: &Path, name: &str) {
    let dir = me.parent().unwrap().parent().unwrap().join("counts");
    let _ = std::fs::create_dir_all(&dir);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join(name))
        .unwrap();
    f.write_all(b".").unwrap();
}

fn counted(root: &Path, name: &str) -> u64 {
    std::fs::metadata(root.join("counts").join(name)).map_or(0, |m| m.len())
}

/// `exec-stage KEY --cache DIR [--device D]`: compute one stage from its request file.
fn exec_stage(args: &[String]) {
    let key = &args[2];
    let cache = args
        .iter()
        .position(|a| a == "--cache")
        .map(|i| PathBuf::from(&args[i + 1]))
        .expect("--cache DIR");
    let cache = Cache::open(&cache).unwrap();
    let reg = registry();
    if let Err(e) = Executor::new(&cache, &reg, ExecOptions::default()).exec_request(key) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The stand-in `sbatch`: start the job script's command (each task's, for an array) as a
/// detached process and print a job id at once: the pid, or for an array the first task's pid,
/// its tasks being `ID_i` as in Slurm.
fn sbatch(me: &Path, args: &[String]) {
    count(me, "sbatch");
    let script = std::fs::read_to_string(args.last().unwrap()).unwrap();
    let line = script.lines().find(|l| l.starts_with("exec ")).unwrap();
    let words: Vec<String> = line
        .split_whitespace()
        .skip(2)
        .map(|w| w.trim_matches('\'').to_string())
        .collect();
    // An array's script picks its key by task index: `i) key=HEX ;;`.
    let keys: Vec<String> = script
        .lines()
        .filter_map(|l| l.split_once(") key=")?.1.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let spawn = |words: &[String]| {
        // Detached on purpose: this process exits at once, and init reaps the job.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(words)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child.id()
    };
    let jobs = me.parent().unwrap().parent().unwrap().join("jobs");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(jobs)
        .unwrap();
    if !args.iter().any(|a| a.starts_with("--array=")) {
        let pid = spawn(&words);
        writeln!(f, "{pid} {pid}").unwrap();
        println!("{pid}");
        return;
    }
    let mut array = None;
    for (i, key) in keys.iter().enumerate() {
        let w: Vec<String> = words
            .iter()
            .map(|w| {
                if w == "\"$key\"" {
                    key.clone()
                } else {
                    w.clone()
                }
            })
            .collect();
        let pid = spawn(&w);
        let a = *array.get_or_insert(pid);
        writeln!(f, "{a}_{i} {pid}").unwrap();
    }
    println!("{}", array.unwrap());
}

/// The stand-in `squeue`: every job `sbatch` started, RUNNING while its process lives.
fn squeue(me: &Path) {
    count(me, "squeue");
    let jobs = me.parent().unwrap().parent().unwrap().join("jobs");
    let text = std::fs::read_to_string(jobs).unwrap_or_default();
    let mut out = String::new();
    for (id, pid) in text.lines().filter_map(|l| l.split_once(' ')) {
        // A zombie has finished; so has a pid whose /proc entry is gone.
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        });
        let state = if alive { "RUNNING" } else { "COMPLETED" };
        out.push_str(&format!("{id}|{state}\n"));
    }
    print!("{out}");
}

fn cpu_s() -> f64 {
    // SAFETY: getrusage writes into the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

struct Outcome {
    wall_s: f64,
    driver_cpu_s: f64,
    ran: usize,
}

fn run_through(runner: Option<Arc<SlurmRunner>>, cache: &Cache, dag: &Dag, jobs: usize) -> Outcome {
    let reg = registry();
    let opts = ExecOptions {
        jobs,
        slurm: runner,
        ..ExecOptions::default()
    };
    let cpu0 = cpu_s();
    let rep = Executor::new(cache, &reg, opts).run(dag);
    assert!(rep.failed().is_empty(), "failed: {:?}", rep.failed());
    Outcome {
        wall_s: rep.wall_s,
        driver_cpu_s: cpu_s() - cpu0,
        ran: rep.ran().len(),
    }
}

fn simulated(me: &Path) {
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["sbatch", "squeue", "scancel"] {
        std::os::unix::fs::symlink(me, bin.join(name)).unwrap();
    }
    let stand_in = |n: &str| bin.join(n).display().to_string();
    let cfg = SlurmConfig {
        sbatch: stand_in("sbatch"),
        squeue: stand_in("squeue"),
        scancel: stand_in("scancel"),
        ..SlurmConfig::default()
    };
    let cache_dir = root.path().join("cache");
    let cache = Cache::open(&cache_dir).unwrap();
    let dag = chains(1000, 5);
    let runner = SlurmRunner::new(cfg, me.to_path_buf(), &cache_dir, "cpu", BTreeMap::new());
    let o = run_through(Some(runner), &cache, &dag, 100);
    let reads = counted(root.path(), "squeue");
    let submits = counted(root.path(), "sbatch");
    println!(
        "simulated, {} stages, 100 jobs in flight: wall {:.1} s; {submits} sbatch calls; \
         {reads} squeue calls = {:.1} a minute; driver CPU {:.2} ms a stage",
        o.ran,
        o.wall_s,
        reads as f64 / (o.wall_s / 60.0),
        o.driver_cpu_s / o.ran as f64 * 1e3,
    );
}

fn slurm_answers() -> bool {
    std::process::Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn real(me: &Path) {
    if !slurm_answers() {
        println!(
            "real Slurm: skipped (no `sinfo` answers; start one with scripts/slurm-local.sh up)"
        );
        return;
    }
    let base = std::env::var_os("CFPIPE_BENCH_DIR").map(PathBuf::from);
    let tmp = match &base {
        Some(b) => tempfile::tempdir_in(b).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let runner = |dir: &Path| {
        let cfg = SlurmConfig {
            // The bench measures latency: the test cluster answers fast, so read it often.
            max_queries_per_min: 120.0,
            ..SlurmConfig::default()
        };
        SlurmRunner::new(cfg, me.to_path_buf(), dir, "cpu", BTreeMap::new())
    };
    for (label, dag, jobs) in [
        ("a chain of 10 dependent stages", chains(1, 10), 8),
        ("40 independent stages, 8 in flight", chains(40, 1), 8),
    ] {
        let local_dir = tmp.path().join(format!("local-{jobs}-{}", dag.len()));
        let local = run_through(None, &Cache::open(&local_dir).unwrap(), &dag, jobs);
        let dir = tmp.path().join(format!("slurm-{jobs}-{}", dag.len()));
        let cache = Cache::open(&dir).unwrap();
        let o = run_through(Some(runner(&dir)), &cache, &dag, jobs);
        println!(
            "real Slurm, {label}: {:.0} ms a stage (in process: {:.2} ms a stage); driver CPU {:.2} ms a stage",
            o.wall_s / o.ran as f64 * 1e3,
            local.wall_s / local.ran as f64 * 1e3,
            o.driver_cpu_s / o.ran as f64 * 1e3,
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let me = PathBuf::from(&args[0]);
    let name = me.file_name().unwrap().to_string_lossy().to_string();
    match (name.as_str(), args.get(1).map(String::as_str)) {
        ("sbatch", _) => return sbatch(&me, &args),
        ("squeue", _) => return squeue(&me),
        ("scancel", _) => return count(&me, "scancel"),
        (_, Some("exec-stage")) => return exec_stage(&args),
        _ => {}
    }
    let me = std::env::current_exe().unwrap();
    // `cargo bench` passes `--bench`; any other argument picks one part.
    let only = args.iter().skip(1).find(|a| !a.starts_with("--"));
    if only.is_none_or(|o| o == "simulated") {
        simulated(&me);
    }
    if only.is_none_or(|o| o == "real") {
        real(&me);
    }
}
