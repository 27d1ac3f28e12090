//! The engine on its own, with toy stages: failure isolation, skipping, and parallel order.

use cfpipe::cache::Cache;
use cfpipe::exec::{
    Artifact, ExecOptions, Executor, Outcome, Registry, Stage, StageContext, StageError,
};
use cfpipe::graph::{Dag, StageDecl};
use serde_json::json;
use std::sync::Arc;

/// Concatenates its inputs' `out` files and its `text` parameter; fails if `fail` is set.
struct Concat;
impl Stage for Concat {
    fn kind(&self) -> &'static str {
        "concat"
    }
    fn version(&self) -> u32 {
        1
    }
    fn run(&self, ctx: &StageContext) -> Result<Artifact, StageError> {
        if ctx.params["fail"].as_bool() == Some(true) {
            return Err(StageError::failed("asked to fail"));
        }
        let mut out = Vec::new();
        for slot in ctx.inputs.keys() {
            out.extend(ctx.read_input(slot, "out")?);
        }
        out.extend(ctx.params["text"].as_str().unwrap_or("").bytes());
        Ok(Artifact::new().with("out", out))
    }
}

fn decl(id: &str, text: &str, fail: bool, inputs: &[&str]) -> StageDecl {
    StageDecl {
        id: id.into(),
        kind: "concat".into(),
        version: 1,
        params: json!({"text": text, "fail": fail}),
        inputs: inputs
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("in{i}"), s.to_string()))
            .collect(),
        files: Default::default(),
    }
}

fn run(dag: &Dag, cache: &Cache, jobs: usize) -> cfpipe::exec::RunReport {
    let mut reg = Registry::new();
    reg.register(Arc::new(Concat));
    Executor::new(
        cache,
        &reg,
        ExecOptions {
            jobs,
            ..Default::default()
        },
    )
    .run(dag)
}

#[test]
fn a_failure_skips_its_dependents_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let dag = Dag::build(vec![
        decl("a", "a", false, &[]),
        decl("bad", "b", true, &[]),
        decl("after_bad", "c", false, &["bad"]),
        decl("after_after", "d", false, &["after_bad", "a"]),
        decl("ok", "e", false, &["a"]),
    ])
    .unwrap();
    let r = run(&dag, &cache, 2);
    assert!(!r.ok());
    assert_eq!(r.ran(), ["a", "ok"].iter().map(|s| s.to_string()).collect());
    assert_eq!(
        r.failed().iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec!["bad"]
    );
    assert_eq!(
        r.skipped(),
        ["after_bad", "after_after"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    let failed = r.failed()[0];
    assert!(
        matches!(&failed.outcome, Outcome::Failed { error } if error.contains("asked to fail") && error.contains("`bad`"))
    );
    // Nothing of the failed stage is in the cache: 2 entries only.
    assert_eq!(cache.keys().unwrap().len(), 2);
    assert_eq!(
        r.summary_line().split(" (").next().unwrap(),
        "5 stages: 2 ran, 0 cached"
    );
}

#[test]
fn results_are_independent_of_parallelism() {
    let decls = || {
        let mut v = vec![decl("root", "r", false, &[])];
        for i in 0..12 {
            v.push(decl(&format!("mid{i}"), &i.to_string(), false, &["root"]));
        }
        let mids: Vec<String> = (0..12).map(|i| format!("mid{i}")).collect();
        let refs: Vec<&str> = mids.iter().map(|s| s.as_str()).collect();
        v.push(decl("sink", "s", false, &refs));
        v
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (c1, c2) = (
        Cache::open(d1.path()).unwrap(),
        Cache::open(d2.path()).unwrap(),
    );
    let r1 = run(&Dag::build(decls()).unwrap(), &c1, 1);
    let r8 = run(&Dag::build(decls()).unwrap(), &c2, 8);
    assert!(r1.ok() && r8.ok());
    assert_eq!(c1.keys().unwrap(), c2.keys().unwrap());
    assert_eq!(r1.ran().len(), 14);
}

/// A handle that is dear to open, as a CUDA device is.
struct Opened;

/// Records which handle it computed with (its address), failing when it was given none.
struct UsesHandle;
impl Stage for UsesHandle {
    fn kind(&self) -> &'static str {
        "concat"
    }
    fn version(&self) -> u32 {
        1
    }
    fn run(&self, ctx: &StageContext) -> Result<Artifact, StageError> {
        let h = ctx
            .resource::<Arc<Opened>>()
            .ok_or_else(|| StageError::failed("no handle"))?;
        let at = Arc::as_ptr(h) as usize;
        Ok(Artifact::new().with("out", at.to_le_bytes().to_vec()))
    }
}

#[test]
fn every_stage_of_a_run_computes_with_the_one_handle_the_binary_opened() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let dag = Dag::build(vec![
        decl("a", "a", false, &[]),
        decl("b", "b", false, &[]),
        decl("c", "c", false, &["a", "b"]),
    ])
    .unwrap();
    let mut reg = Registry::new();
    reg.register(Arc::new(UsesHandle));
    let handle = Arc::new(Opened);
    let opts = ExecOptions {
        jobs: 2,
        resources: cfpipe::exec::Resources::new().with(handle.clone()),
        ..Default::default()
    };
    let r = Executor::new(&cache, &reg, opts).run(&dag);
    assert!(r.ok(), "{:?}", r.failed());
    let want = (Arc::as_ptr(&handle) as usize).to_le_bytes().to_vec();
    for id in ["a", "b", "c"] {
        let entry = &r.entries[&dag.find(id).unwrap()];
        assert_eq!(
            std::fs::read(entry.output_path("out")).unwrap(),
            want,
            "{id}"
        );
    }
}

/// Writes a fresh number on every run (a stage whose bits are not a function of its key,
/// as a GPU kernel's can be), so a recomputed input reaches its dependents with new content.
struct Fresh;
static FRESH_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
impl Stage for Fresh {
    fn kind(&self) -> &'static str {
        "fresh"
    }
    fn version(&self) -> u32 {
        1
    }
    fn run(&self, _: &StageContext) -> Result<Artifact, StageError> {
        let n = FRESH_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Artifact::new().with("out", format!("run {n}").into_bytes()))
    }
}

/// Two stages declared differently (their inputs are different stages) can still derive one
/// key, when their inputs hold the same bytes: the second is served by the first's entry, and
/// on a cached rerun both are served from the one check of that entry before scheduling.
#[test]
fn stages_that_reach_one_key_through_different_inputs_share_one_entry_and_one_check() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let dag = Dag::build(vec![
        decl("whole", "ab", false, &[]),
        decl("head", "a", false, &[]),
        decl("head_then_tail", "b", false, &["head"]),
        decl("after_whole", "!", false, &["whole"]),
        decl("after_parts", "!", false, &["head_then_tail"]),
    ])
    .unwrap();
    assert_eq!(dag.len(), 5, "declared differently, so not merged");
    let first = run(&dag, &cache, 1);
    let key = |r: &cfpipe::exec::RunReport, id: &str| {
        r.events.iter().find(|e| e.id == id).unwrap().key.unwrap()
    };
    assert_eq!(key(&first, "after_whole"), key(&first, "after_parts"));
    assert_eq!(first.ran().len(), 4);
    assert_eq!(first.cached().len(), 1);
    // The second run checks every entry in full and remembers it; the third is served by
    // the memo alone.
    assert!(run(&dag, &cache, 1).ran().is_empty());
    let third = run(&dag, &cache, 1);
    assert_eq!(third.cached().len(), 5);
    assert_eq!(third.prechecked, 5);
}

/// A cached rerun checks the entries the verified-entry memo remembers before scheduling,
/// with each stage's key derived from what the memo says its inputs hold. A dependent is
/// served from there only while that is still so: when its input's file is damaged and the
/// input computes other bytes, the dependent runs again, and when the input's file is only
/// touched (same bytes), the dependent stays cached.
#[test]
fn a_stage_served_from_the_memo_before_scheduling_reruns_when_its_input_changed_content() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let dag = Dag::build(vec![
        StageDecl {
            id: "root".into(),
            kind: "fresh".into(),
            version: 1,
            params: json!({}),
            inputs: Default::default(),
            files: Default::default(),
        },
        decl("child", "c", false, &["root"]),
        decl("grandchild", "g", false, &["child"]),
    ])
    .unwrap();
    let run = || {
        let mut reg = Registry::new();
        reg.register(Arc::new(Concat));
        reg.register(Arc::new(Fresh));
        Executor::new(&cache, &reg, ExecOptions::default()).run(&dag)
    };
    let first = run();
    assert_eq!(first.ran().len(), 3);
    // The second run verifies every entry in full and remembers it; the third is served by
    // the memo alone, every stage from the check before scheduling.
    assert!(run().ran().is_empty());
    let third = run();
    assert!(third.ran().is_empty());
    assert_eq!(third.prechecked, 3);
    let root = first.events.iter().find(|e| e.id == "root").unwrap();
    let out = cache.entry_dir(&root.key.unwrap()).join("out/out");

    // Touched, same bytes: the root's stamp no longer matches, it is hashed again and found
    // whole, and nothing reruns; the stages after it, reached after that, are checked again
    // when they are served.
    let bytes = std::fs::read(&out).unwrap();
    std::fs::write(&out, &bytes).unwrap();
    let touched = run();
    assert!(touched.ran().is_empty());
    assert_eq!(touched.prechecked, 0);

    // Damaged: the root recomputes other bytes, and both stages after it rerun, although
    // the memo still remembers their entries under the keys of the root's old content.
    std::fs::write(&out, b"damaged").unwrap();
    let r = run();
    let ran = r.ran();
    assert_eq!(
        ran.iter()
            .map(|s| s.as_str())
            .collect::<std::collections::BTreeSet<_>>(),
        ["child", "grandchild", "root"].into()
    );
    assert!(run().ran().is_empty());
}
