//! Compile a checked pipeline into stage declarations.
//!
//! Per strategy and seed: `split` → for each task t: `train` (from the previous task's model
//! and, for RNF, the previous mask) → `evaluate` on tasks 1..t; RNF adds `score` → `prune` →
//! `mask` after each training. Ids read `rnf/seed0/task2/prune`. Every declaration carries only
//! the parameters its result depends on, so the engine merges identical ones: the split is
//! shared by everything, and task-1 training (and its evaluation) is shared by every strategy
//! with the same seed and training settings.
//!
//! Each declaration's parameters are the typed `Params` of its stage kind, built here from the
//! checked [`Pipeline`] and serialised once (see [`decl`]), so a setting the plan leaves out is
//! a compile error rather than a default the stage fills in silently.
//!
//! A `saliency` score reads its filter visualisations from a `visualize` stage declared next to
//! it (`…/taskT/visualize`, keyed by the model, the `visualize` options, the seed and the task
//! only), so scores that differ in anything else share one. A strategy with `final_mask: false`
//! declares no score, prune, visualize or mask after its last task: no later training reads
//! them.

use super::{consolidate, correlate, evaluate, mask, prune, score, split, train, visualize};
use crate::exec::Stage;
use crate::graph::{Dag, GraphError, StageDecl};
use crate::spec::sweep::{Axis, Override};
use crate::spec::{DataCheck, DataSource, FreezeSpec, Pipeline, SpecErrors};
use serde::Serialize;
use std::collections::BTreeMap;

pub const SPLIT_ID: &str = "split";

/// Why a pipeline file did not become a DAG.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Spec(#[from] SpecErrors),
    #[error("pipeline graph: {0}")]
    Graph(#[from] GraphError),
}

/// Read and check the pipeline file at `path` with the `--set` overrides `set`, and compile it
/// into its DAG: the one way from a file to stages, which the binary, the tests and the
/// benches share (`cfpipe::load`). A `sweep:` block in the file is expanded as by
/// [`load_sweep`].
pub fn load(
    path: &std::path::Path,
    set: &[String],
    data: DataCheck,
) -> Result<(Pipeline, Dag), LoadError> {
    load_sweep(path, set, &[], data)
}

/// [`load`] with `--sweep KEY=V1,V2,…` axes beside the file's own `sweep:` block. Every grid
/// point is checked like a `--set` value; the returned pipeline lists every strategy variant
/// (`rnf@threshold=0.05`), and the DAG holds every point's stages once (see
/// [`crate::spec::sweep`]).
pub fn load_sweep(
    path: &std::path::Path,
    set: &[String],
    sweep: &[String],
    data: DataCheck,
) -> Result<(Pipeline, Dag), LoadError> {
    let src = crate::spec::read(path)?;
    let mut axes = src.axes.clone();
    for arg in sweep {
        let axis = crate::spec::sweep::parse_flag(arg).map_err(|message| {
            SpecErrors(vec![crate::spec::SpecError {
                file: path.to_path_buf(),
                pos: None,
                path: arg.split('=').next().unwrap_or("").trim().to_string(),
                message,
                from_override: Some(format!("--sweep {arg}")),
            }])
        })?;
        axes.push(axis);
    }
    let set: Vec<Override> = set.iter().map(|o| Override::set(o)).collect();
    let base = crate::spec::resolve(&src, &set, data)?;
    // Reruns are explained against this pipeline's own last run, not another's with the same
    // stage ids.
    if axes.is_empty() {
        let mut dag = Dag::build(compile(&base))?.with_scope(&base.name);
        drop_unread_si(&mut dag);
        return Ok((base, dag));
    }
    let p = expand(&src, &base, &set, &axes, data)?;
    let mut dag = Dag::build(p.decls)?.with_scope(&p.pipeline.name);
    drop_unread_si(&mut dag);
    Ok((p.pipeline, dag))
}

/// Whether a stage reads SI's path integral from its `model` input: a score by `si`, a
/// correlation with an `si` method, or EWC whose importance is `si`.
fn reads_si(kind: &str, params: &serde_json::Value) -> bool {
    use crate::spec::ScoreSpec;
    let si = |s: &ScoreSpec| matches!(s, ScoreSpec::Si { .. });
    fn parse<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Option<T> {
        serde_json::from_value(v.clone()).ok()
    }
    // Parameters that do not parse (never from `compile`) count as reading it: keeping the
    // path integral is only a cost, dropping one that is read a failed stage.
    match kind {
        "score" => parse(params).is_none_or(|p: score::Params| si(&p.method)),
        "correlate" => {
            parse(params).is_none_or(|p: correlate::Params| p.correlate.methods.values().any(si))
        }
        "consolidate" => parse(params).is_none_or(|p: consolidate::Params| si(&p.importance)),
        _ => false,
    }
}

/// Trainings whose path integral no stage reads do not record it (`train::Params::record_si`).
/// Decided on the merged graph, so a training shared by several strategies records it when
/// any of them reads it, and stays one stage.
pub fn drop_unread_si(dag: &mut Dag) {
    let read: std::collections::BTreeSet<_> = dag
        .topo_order()
        .iter()
        .map(|&n| dag.node(n))
        .filter(|n| reads_si(&n.kind, &n.params))
        .filter_map(|n| n.inputs.get("model").copied())
        .collect();
    let unread: Vec<_> = dag
        .topo_order()
        .iter()
        .copied()
        .filter(|n| dag.node(*n).kind == "train" && !read.contains(n))
        .collect();
    for n in unread {
        if let Some(m) = dag.params_mut(n).as_object_mut() {
            m.insert("record_si".into(), serde_json::Value::Bool(false));
        }
    }
}

/// Every grid point of a sweep, compiled and merged.
struct Expanded {
    /// The base pipeline with every strategy variant in place of its strategies.
    pipeline: Pipeline,
    decls: Vec<StageDecl>,
}

/// The axes that can change strategy `name`: its own, those of the strategy whose masks it
/// copies (`like:`, transitively), and every axis outside `strategies.`.
fn affecting(name: &str, p: &Pipeline, axes: &[Axis]) -> Vec<usize> {
    let mut names = vec![name.to_string()];
    while let Some(FreezeSpec::Random { like, .. }) = p
        .strategies
        .iter()
        .find(|s| Some(&s.name) == names.last())
        .map(|s| &s.freeze)
    {
        if names.contains(like) {
            break;
        }
        names.push(like.clone());
    }
    (0..axes.len())
        .filter(|&i| {
            axes[i]
                .strategy()
                .is_none_or(|s| names.iter().any(|n| n == s))
        })
        .collect()
}

fn same_decl(a: &StageDecl, b: &StageDecl) -> bool {
    a.kind == b.kind
        && a.version == b.version
        && a.params == b.params
        && a.inputs == b.inputs
        && a.files == b.files
}

/// An axis under `strategies.NAME.` for a strategy the pipeline does not have.
fn unknown_strategy(
    src: &crate::spec::Source,
    base: &Pipeline,
    axes: &[Axis],
) -> Option<SpecErrors> {
    let a = axes.iter().find(|a| {
        a.strategy()
            .is_some_and(|s| !base.strategies.iter().any(|b| b.name == s))
    })?;
    let first = a.point(0);
    Some(SpecErrors(vec![crate::spec::SpecError {
        file: src.path().to_path_buf(),
        pos: first.pos,
        path: a.key.clone(),
        message: format!(
            "no strategy `{}` to sweep (strategies: {})",
            a.strategy().unwrap_or_default(),
            base.strategies
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        from_override: Some(first.label),
    }]))
}

fn expand(
    src: &crate::spec::Source,
    base: &Pipeline,
    set: &[Override],
    axes: &[Axis],
    data: DataCheck,
) -> Result<Expanded, SpecErrors> {
    if let Some(e) = unknown_strategy(src, base, axes) {
        return Err(e);
    }
    let short = crate::spec::sweep::short_names(axes);
    let name_of = |point: &[usize], which: &[usize]| -> String {
        which
            .iter()
            .map(|&a| format!("{}={}", short[a], axes[a].shown[point[a]]))
            .collect::<Vec<_>>()
            .join(",")
    };
    let affects: BTreeMap<String, Vec<usize>> = base
        .strategies
        .iter()
        .map(|s| (s.name.clone(), affecting(&s.name, base, axes)))
        .collect();
    let mut variants: Vec<Vec<crate::spec::Strategy>> = vec![Vec::new(); base.strategies.len()];
    let mut decls: Vec<StageDecl> = Vec::new();
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors: Vec<crate::spec::SpecError> = Vec::new();
    // The base pipeline's data were checked with the base settings; a point needs its own
    // check only where an axis can change what the check reads: the data files, the model's
    // input shape or the training crop (reading a gzipped dataset once per point is most of
    // a cached rerun's time otherwise).
    let touches_data = axes.iter().any(|a| {
        ["dataset", "model", "training.augment"]
            .iter()
            .any(|k| a.key == *k || a.key.starts_with(&format!("{k}.")))
    });
    let point_data = if touches_data { data } else { DataCheck::Skip };
    // Per strategy, in the pipeline's order (which every point keeps): its settings at the
    // first point, where no axis names it.
    let mut first_settings: Option<Vec<Option<String>>> = None;
    for point in crate::spec::sweep::grid(axes) {
        let mut ov = set.to_vec();
        ov.extend(point.iter().enumerate().map(|(a, &i)| axes[a].point(i)));
        let mut p = match crate::spec::resolve(src, &ov, point_data) {
            Ok(p) => p,
            Err(SpecErrors(e)) => {
                for e in e {
                    if !errors.contains(&e) {
                        errors.push(e);
                    }
                }
                continue;
            }
        };
        let renamed: BTreeMap<String, String> = p
            .strategies
            .iter()
            .map(|s| {
                let which = &affects[&s.name];
                let name = match which.is_empty() {
                    true => s.name.clone(),
                    false => format!("{}@{}", s.name, name_of(&point, which)),
                };
                (s.name.clone(), name)
            })
            .collect();
        for s in &mut p.strategies {
            s.point = affects[&s.name]
                .iter()
                .map(|&a| (short[a].clone(), axes[a].shown[point[a]].clone()))
                .collect();
            s.name = renamed[&s.name].clone();
            if let FreezeSpec::Random { like, .. } = &mut s.freeze {
                *like = renamed[like.as_str()].clone();
            }
        }
        for (i, s) in p.strategies.iter().enumerate() {
            if !variants[i].iter().any(|v| v.name == s.name) {
                variants[i].push(s.clone());
            }
        }
        // A strategy no axis names, resolved to the same settings as at the first point,
        // compiles to the same declarations (compile reads a strategy's settings and the
        // pipeline's, and an axis outside `strategies.` names every strategy): it is compiled
        // once, and its later copies, which the merge below would drop as duplicates, are
        // not made (most of a large sweep's cached rerun was compiling them). The settings
        // are compared as well, so that anything an axis reaches without naming the strategy
        // is compiled as before.
        // (A strategy an axis names has a non-empty `point`.)
        let settings: Vec<Option<String>> = p
            .strategies
            .iter()
            .map(|s| s.point.is_empty().then(|| format!("{s:?}")))
            .collect();
        match &first_settings {
            None => first_settings = Some(settings),
            Some(first) => {
                let mut i = 0;
                p.strategies.retain(|_| {
                    let same = settings[i].is_some() && settings[i] == first[i];
                    i += 1;
                    !same
                });
            }
        }
        // A stage outside every strategy (the split) that differs between points gets the
        // point's name; the stages that read it follow.
        let mut moved: BTreeMap<String, String> = BTreeMap::new();
        let point_name = name_of(&point, &(0..axes.len()).collect::<Vec<_>>());
        for mut d in compile(&p) {
            for input in d.inputs.values_mut() {
                if let Some(to) = moved.get(input) {
                    *input = to.clone();
                }
            }
            match by_id.get(&d.id) {
                Some(&k) if same_decl(&decls[k], &d) => {}
                Some(_) => {
                    let to = format!("{}@{point_name}", d.id);
                    moved.insert(d.id.clone(), to.clone());
                    d.id = to;
                    by_id.insert(d.id.clone(), decls.len());
                    decls.push(d);
                }
                None => {
                    by_id.insert(d.id.clone(), decls.len());
                    decls.push(d);
                }
            }
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.pos.map_or((usize::MAX, 0), |p| (p.line, p.col)));
        return Err(SpecErrors(errors));
    }
    let mut pipeline = base.clone();
    pipeline.strategies = variants.into_iter().flatten().collect();
    Ok(Expanded { pipeline, decls })
}

pub fn stage_id(strategy: &str, seed: u64, task: usize, kind: &str) -> String {
    format!("{strategy}/seed{seed}/task{}/{kind}", task + 1)
}

/// A declaration of `stage` with its typed parameters, serialised here once: the key is taken
/// over exactly this JSON.
pub(crate) fn decl<S: Into<String>>(
    id: String,
    stage: &dyn Stage,
    params: &impl Serialize,
    inputs: Vec<(S, String)>,
) -> StageDecl {
    StageDecl {
        id,
        kind: stage.kind().to_string(),
        version: stage.version(),
        params: serde_json::to_value(params).expect("stage parameters are plain data"),
        inputs: inputs.into_iter().map(|(s, i)| (s.into(), i)).collect(),
        files: BTreeMap::new(),
    }
}

/// The score stage of task `t` with its inputs; for `saliency`, also the `visualize` stage it
/// reads.
fn score_decls(
    sc: &crate::spec::ScoreSpec,
    t: usize,
    seed: u64,
    id: &dyn Fn(&str) -> String,
    split_in: (&'static str, String),
    trained: (&'static str, String),
) -> Vec<StageDecl> {
    let mut out = Vec::new();
    let mut inputs = vec![split_in, trained.clone()];
    if let crate::spec::ScoreSpec::Saliency { options, .. } = sc {
        let vp = visualize::Params {
            task_index: t,
            seed,
            visualize: options.visualize,
        };
        out.push(decl(
            id("visualize"),
            &visualize::Visualize,
            &vp,
            vec![trained],
        ));
        inputs.push(("visualize", id("visualize")));
    }
    let sp = score::Params {
        task_index: t,
        seed,
        method: sc.clone(),
    };
    out.push(decl(id("score"), &score::Score, &sp, inputs));
    out
}

fn lr_frozen(f: &FreezeSpec) -> f64 {
    match f {
        FreezeSpec::None => 1.0,
        FreezeSpec::UntilThreshold { lr_frozen, .. }
        | FreezeSpec::Random { lr_frozen, .. }
        | FreezeSpec::TopShare { lr_frozen, .. } => *lr_frozen,
    }
}

/// The stage-id suffix of PackNet's retraining of a task (`strategies.NAME.retrain`).
pub const RETRAIN: &str = "retrain";

/// Stage-id suffixes of the trainings of one task alone (`evaluation.forward_transfer`).
pub const ALONE_TRAIN: &str = "alone_train";
pub const ALONE_EVALUATE: &str = "alone_evaluate";

pub fn compile(p: &Pipeline) -> Vec<StageDecl> {
    let mut out = Vec::new();
    let split_decl = match &p.data {
        DataSource::Idx(d) => {
            let sp = split::Params::Idx(split::IdxSplit {
                tasks: p.tasks.clone(),
                test_fraction: d.test_fraction,
                split_seed: d.split_seed,
                permute_seed: p.permute_seed,
                validation_fraction: p.validation_fraction,
            });
            let mut split_decl = decl(
                SPLIT_ID.into(),
                &split::Split,
                &sp,
                Vec::<(&str, String)>::new(),
            );
            split_decl.files.insert("images".into(), d.images.clone());
            split_decl.files.insert("labels".into(), d.labels.clone());
            if let Some((i, l)) = &d.test_files {
                split_decl.files.insert("test_images".into(), i.clone());
                split_decl.files.insert("test_labels".into(), l.clone());
            }
            split_decl
        }
        DataSource::Images(d) => {
            // Paths stay out of the key: the declared files carry the data's relative layout
            // and content, so a cache is shared by users who keep the data elsewhere.
            let sp = split::Params::Images(split::ImageSplit {
                datasets: d
                    .datasets
                    .iter()
                    .map(|(n, s)| (n.clone(), crate::spec::images::key_params(s)))
                    .collect(),
                image_tasks: d.tasks.clone(),
            });
            let mut split_decl = decl(
                SPLIT_ID.into(),
                &split::Split,
                &sp,
                Vec::<(&str, String)>::new(),
            );
            split_decl.files = d.files.clone();
            split_decl
        }
    };
    out.push(split_decl);

    let split_in = || ("split", SPLIT_ID.to_string());
    let task_epochs = |t: usize| match &p.data {
        DataSource::Images(d) => d.epochs.get(t).copied().flatten(),
        DataSource::Idx(_) => None,
    };
    let train_params = |t: usize, seed: u64| {
        let mut training = p.training.clone();
        if let Some(n) = task_epochs(t) {
            training.epochs = n;
        }
        train::Params {
            task_index: t,
            seed,
            model: p.model.clone(),
            training,
            lr_frozen: None,
            joint: false,
            alone: false,
            retrain: false,
            replay: None,
            lwf: None,
            ewc_lambda: None,
            record_si: true,
        }
    };
    // The test protocol of every accuracy (evaluate, prune).
    let eval_params = |tasks_seen: usize, isolate: bool| evaluate::Params {
        tasks_seen,
        isolate,
        crops: p.test_crops,
    };
    for s in &p.strategies {
        for &seed in &p.seeds {
            if s.joint {
                // One training on every task, evaluated on every task.
                let last = p.task_count() - 1;
                let id = |kind: &str| format!("{}/seed{seed}/{kind}", s.name);
                let params = train::Params {
                    joint: true,
                    ..train_params(last, seed)
                };
                let mut d = decl(id("train"), &train::Train, &params, vec![split_in()]);
                if let Some(w) = &p.model.pretrained {
                    d.files.insert(train::PRETRAINED_FILE.into(), w.clone());
                }
                out.push(d);
                out.push(decl(
                    id("evaluate"),
                    &evaluate::Evaluate,
                    &eval_params(p.task_count(), false),
                    vec![split_in(), ("model", id("train"))],
                ));
                continue;
            }
            let mut prev_model: Option<String> = None;
            let mut prev_mask: Option<String> = None;
            let mut prev_penalty: Option<String> = None;
            let mut prev_correlate: Option<String> = None;
            for t in 0..p.task_count() {
                let id = |kind: &str| stage_id(&s.name, seed, t, kind);
                let mut params = train_params(t, seed);
                let mut inputs = vec![split_in()];
                if let Some(m) = &prev_model {
                    inputs.push(("model", m.clone()));
                }
                if let Some(m) = &prev_mask {
                    inputs.push(("mask", m.clone()));
                    params.lr_frozen = Some(lr_frozen(&s.freeze));
                }
                if let (Some(w), Some(c)) = (&s.ewc, &prev_penalty) {
                    inputs.push(("penalty", c.clone()));
                    params.ewc_lambda = Some(w.lambda);
                }
                if t > 0 {
                    params.replay = s.replay.clone();
                    params.lwf = s.lwf.clone();
                }
                let trained = ("model", id("train"));
                let mut d = decl(id("train"), &train::Train, &params, inputs);
                if let (0, Some(w)) = (t, &p.model.pretrained) {
                    d.files.insert(train::PRETRAINED_FILE.into(), w.clone());
                }
                out.push(d);
                if p.forward_transfer && t > 0 {
                    // Task t alone from the sequence's own start (the same seeded trunk and
                    // heads, the same pretrained weights): the reference of forward transfer.
                    // Its parameters do not depend on the strategy, so every strategy's copy
                    // merges into one stage per seed and task.
                    let alone = train::Params {
                        alone: true,
                        ..train_params(t, seed)
                    };
                    let mut d = decl(id(ALONE_TRAIN), &train::Train, &alone, vec![split_in()]);
                    if let Some(w) = &p.model.pretrained {
                        d.files.insert(train::PRETRAINED_FILE.into(), w.clone());
                    }
                    out.push(d);
                    out.push(decl(
                        id(ALONE_EVALUATE),
                        &evaluate::Evaluate,
                        &eval_params(t + 1, false),
                        vec![split_in(), ("model", id(ALONE_TRAIN))],
                    ));
                }
                if let Some(c) = &s.correlate {
                    let cp = correlate::Params {
                        task_index: t,
                        seed,
                        correlate: c.clone(),
                    };
                    let mut cin = vec![split_in(), trained.clone()];
                    if let Some(prev) = prev_correlate.as_ref().filter(|_| c.accumulate) {
                        cin.push(("previous", prev.clone()));
                    }
                    out.push(decl(id("correlate"), &correlate::Correlate, &cp, cin));
                    prev_correlate = Some(id("correlate"));
                }
                if let Some(w) = s.ewc.as_ref().filter(|_| t + 1 < p.task_count()) {
                    let cp = consolidate::Params {
                        task_index: t,
                        seed,
                        mode: w.mode,
                        decay: w.decay.unwrap_or(1.0),
                        importance: w.importance.clone(),
                    };
                    let mut cin = vec![split_in(), trained.clone()];
                    if let Some(c) = &prev_penalty {
                        cin.push(("penalty", c.clone()));
                    }
                    out.push(decl(id("consolidate"), &consolidate::Consolidate, &cp, cin));
                    prev_penalty = Some(id("consolidate"));
                }
                // The evaluation of tasks 0..=t on `model`, with tasks 0..isolated each on its
                // own mask (`isolate` is only set when some task is, so every other evaluation
                // keeps its key and is shared with the non-isolated strategy).
                let evaluation = |model: String, isolated: usize| {
                    let mut eval_in: Vec<(String, String)> =
                        vec![("split".into(), SPLIT_ID.into()), ("model".into(), model)];
                    eval_in.extend((0..isolated).map(|j| {
                        (
                            evaluate::isolate_slot(j),
                            stage_id(&s.name, seed, j, "mask"),
                        )
                    }));
                    decl(
                        id("evaluate"),
                        &evaluate::Evaluate,
                        &eval_params(t + 1, isolated > 0),
                        eval_in,
                    )
                };
                let masked = (t + 1 != p.task_count() || s.final_mask)
                    && !matches!(s.freeze, FreezeSpec::None);
                // PackNet's retraining comes before the task's evaluation, which then reads
                // the retrained model with the task on its own mask too.
                let retrained = s.retrain.filter(|_| masked);
                if retrained.is_none() {
                    out.push(evaluation(id("train"), if s.isolate { t } else { 0 }));
                }
                let mut mask_in = Vec::new();
                if t + 1 == p.task_count() && !s.final_mask {
                    continue;
                }
                let policy = match &s.freeze {
                    FreezeSpec::None => {
                        prev_model = Some(id("train"));
                        continue;
                    }
                    FreezeSpec::UntilThreshold {
                        score: sc,
                        prune: pr,
                        ..
                    } => {
                        out.extend(score_decls(sc, t, seed, &id, split_in(), trained.clone()));
                        let pp = prune::Params {
                            task_index: t,
                            prune: pr.clone(),
                            crops: p.test_crops,
                            selection: p.selection,
                        };
                        let mut pin = vec![split_in(), trained.clone(), ("score", id("score"))];
                        if let Some(m) = &prev_mask {
                            pin.push(("mask", m.clone()));
                        }
                        out.push(decl(id("prune"), &prune::Prune, &pp, pin));
                        mask_in.push(("prune", id("prune")));
                        mask::Policy::KeepUnpruned
                    }
                    FreezeSpec::TopShare {
                        score: sc, share, ..
                    } => {
                        out.extend(score_decls(sc, t, seed, &id, split_in(), trained.clone()));
                        mask_in.push(("score", id("score")));
                        mask::Policy::TopShare { share: *share }
                    }
                    FreezeSpec::Random { like, .. } => {
                        mask_in.push(("like", stage_id(like, seed, t, "mask")));
                        mask::Policy::Random { seed }
                    }
                };
                if let Some(m) = &prev_mask {
                    mask_in.push(("mask", m.clone()));
                }
                let mp = mask::Params {
                    task_index: t,
                    hidden: p.model.hidden.clone(),
                    policy,
                };
                out.push(decl(id("mask"), &mask::Mask, &mp, mask_in));
                prev_model = Some(id("train"));
                if let Some(r) = retrained {
                    let mut training = train_params(t, seed).training;
                    training.epochs = r.epochs;
                    let rp = train::Params {
                        retrain: true,
                        lr_frozen: prev_mask.as_ref().map(|_| lr_frozen(&s.freeze)),
                        training,
                        ..train_params(t, seed)
                    };
                    let mut rin = vec![split_in(), trained.clone(), ("keep", id("mask"))];
                    if let Some(m) = &prev_mask {
                        rin.push(("mask", m.clone()));
                    }
                    out.push(decl(id(RETRAIN), &train::Train, &rp, rin));
                    out.push(evaluation(id(RETRAIN), if s.isolate { t + 1 } else { 0 }));
                    prev_model = Some(id(RETRAIN));
                }
                prev_mask = Some(id("mask"));
            }
        }
    }
    out
}
