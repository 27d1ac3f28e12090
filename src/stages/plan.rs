//! Compile a checked pipeline into stage declarations.
//!
//! Per strategy and seed: `split` → for each task t: `train` (from the previous task's model
//! and, for RNF, the previous mask) → `evaluate` on tasks 1..t; RNF adds `score` → `prune` →
//! `mask` after each training. Ids read `rnf/seed0/task2/prune`. Every declaration carries only
//! the parameters its result depends on, so the engine merges identical ones: the split is
//! shared by everything, and task-1 training (and its evaluation) is shared by every strategy
//! with the same seed and training settings.
//!
//! A `saliency` score reads its filter visualisations from a `visualize` stage declared next to
//! it (`…/taskT/visualize`, keyed by the model, the `visualize` options, the seed and the task
//! only), so scores that differ in anything else share one. A strategy with `final_mask: false`
//! declares no score, prune, visualize or mask after its last task: no later training reads
//! them.

use super::{consolidate, correlate, evaluate, mask, prune, score, split, train, visualize};
use crate::exec::Stage;
use crate::graph::StageDecl;
use crate::spec::{DataSource, FreezeSpec, Pipeline};
use serde_json::json;
use std::collections::BTreeMap;

pub const SPLIT_ID: &str = "split";

pub fn stage_id(strategy: &str, seed: u64, task: usize, kind: &str) -> String {
    format!("{strategy}/seed{seed}/task{}/{kind}", task + 1)
}

fn decl<S: Into<String>>(
    id: String,
    stage: &dyn Stage,
    params: serde_json::Value,
    inputs: Vec<(S, String)>,
) -> StageDecl {
    StageDecl {
        id,
        kind: stage.kind().to_string(),
        version: stage.version(),
        params,
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
    let mut sp = serde_json::to_value(sc).expect("plain data");
    sp["task_index"] = json!(t);
    sp["seed"] = json!(seed);
    let mut inputs = vec![split_in, trained.clone()];
    if let crate::spec::ScoreSpec::Saliency { options, .. } = sc {
        out.push(decl(
            id("visualize"),
            &visualize::Visualize,
            json!({"task_index": t, "seed": seed, "visualize": options.visualize}),
            vec![trained],
        ));
        inputs.push(("visualize", id("visualize")));
    }
    out.push(decl(id("score"), &score::Score, sp, inputs));
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

pub fn compile(p: &Pipeline) -> Vec<StageDecl> {
    let mut out = Vec::new();
    let split_decl = match &p.data {
        DataSource::Idx(d) => {
            let mut split_decl = decl(
                SPLIT_ID.into(),
                &split::Split,
                json!({
                    "format": d.format,
                    "tasks": p.tasks,
                    "test_fraction": d.test_fraction,
                    "split_seed": d.split_seed,
                    "permute_seed": p.permute_seed,
                }),
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
            let datasets: serde_json::Map<String, serde_json::Value> = d
                .datasets
                .iter()
                .map(|(n, s)| (n.clone(), crate::spec::images::key_params(s)))
                .collect();
            let mut split_decl = decl(
                SPLIT_ID.into(),
                &split::Split,
                json!({
                    "format": "images",
                    "datasets": datasets,
                    "image_tasks": d.tasks,
                }),
                Vec::<(&str, String)>::new(),
            );
            split_decl.files = d.files.clone();
            split_decl
        }
    };
    out.push(split_decl);

    let split_in = || ("split", SPLIT_ID.to_string());
    // The test protocol of every accuracy (evaluate, prune); the default is left out of the
    // parameters so pipelines without `evaluation:` keep their keys.
    let with_crops = |mut v: serde_json::Value| {
        if !p.test_crops.is_center() {
            v["crops"] = json!(p.test_crops);
        }
        v
    };
    let task_epochs = |t: usize| match &p.data {
        DataSource::Images(d) => d.epochs.get(t).copied().flatten(),
        DataSource::Idx(_) => None,
    };
    let base_params = |t: usize, seed: u64| {
        let mut v =
            json!({"task_index": t, "seed": seed, "model": p.model, "training": p.training});
        if let Some(n) = task_epochs(t) {
            v["training"]["epochs"] = json!(n);
        }
        v
    };
    for s in &p.strategies {
        for &seed in &p.seeds {
            if s.joint {
                // One training on every task, evaluated on every task.
                let last = p.task_count() - 1;
                let id = |kind: &str| format!("{}/seed{seed}/{kind}", s.name);
                let mut params = base_params(last, seed);
                params["joint"] = json!(true);
                let mut d = decl(id("train"), &train::Train, params, vec![split_in()]);
                if let Some(w) = &p.model.pretrained {
                    d.files.insert(train::PRETRAINED_FILE.into(), w.clone());
                }
                out.push(d);
                out.push(decl(
                    id("evaluate"),
                    &evaluate::Evaluate,
                    with_crops(json!({"tasks_seen": p.task_count()})),
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
                let mut params = base_params(t, seed);
                let mut inputs = vec![split_in()];
                if let Some(m) = &prev_model {
                    inputs.push(("model", m.clone()));
                }
                if let Some(m) = &prev_mask {
                    inputs.push(("mask", m.clone()));
                    params["lr_frozen"] = json!(lr_frozen(&s.freeze));
                }
                if let (Some(w), Some(c)) = (&s.ewc, &prev_penalty) {
                    inputs.push(("penalty", c.clone()));
                    params["ewc_lambda"] = json!(w.lambda);
                }
                let trained = ("model", id("train"));
                let mut d = decl(id("train"), &train::Train, params, inputs);
                if let (0, Some(w)) = (t, &p.model.pretrained) {
                    d.files.insert(train::PRETRAINED_FILE.into(), w.clone());
                }
                out.push(d);
                if let Some(c) = &s.correlate {
                    let cp = json!({
                        "task_index": t,
                        "seed": seed,
                        "methods": c.methods,
                        "squared": c.squared,
                        "accumulate": c.accumulate,
                    });
                    let mut cin = vec![split_in(), trained.clone()];
                    if let Some(prev) = prev_correlate.as_ref().filter(|_| c.accumulate) {
                        cin.push(("previous", prev.clone()));
                    }
                    out.push(decl(id("correlate"), &correlate::Correlate, cp, cin));
                    prev_correlate = Some(id("correlate"));
                }
                if let Some(w) = s.ewc.as_ref().filter(|_| t + 1 < p.task_count()) {
                    let mut cp = json!({
                        "task_index": t,
                        "seed": seed,
                        "mode": w.mode,
                        "importance": w.importance,
                    });
                    cp["decay"] = json!(w.decay.unwrap_or(1.0));
                    let mut cin = vec![split_in(), trained.clone()];
                    if let Some(c) = &prev_penalty {
                        cin.push(("penalty", c.clone()));
                    }
                    out.push(decl(id("consolidate"), &consolidate::Consolidate, cp, cin));
                    prev_penalty = Some(id("consolidate"));
                }
                let mut eval_params = with_crops(json!({"tasks_seen": t + 1}));
                let mut eval_in: Vec<(String, String)> = [split_in(), trained.clone()]
                    .map(|(slot, i)| (slot.to_string(), i))
                    .into();
                if s.isolate && t > 0 {
                    // Only set when some old task is isolated, so every other evaluation keeps
                    // its key and is shared with the non-isolated strategy.
                    eval_params["isolate"] = json!(true);
                    eval_in.extend((0..t).map(|j| {
                        (
                            evaluate::isolate_slot(j),
                            stage_id(&s.name, seed, j, "mask"),
                        )
                    }));
                }
                out.push(decl(
                    id("evaluate"),
                    &evaluate::Evaluate,
                    eval_params,
                    eval_in,
                ));
                let mut mask_params = json!({"task_index": t, "hidden": p.model.hidden});
                let mut mask_in = Vec::new();
                if t + 1 == p.task_count() && !s.final_mask {
                    continue;
                }
                match &s.freeze {
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
                        let mut pp = serde_json::to_value(pr).expect("plain data");
                        pp["task_index"] = json!(t);
                        let pp = with_crops(pp);
                        let mut pin = vec![split_in(), trained.clone(), ("score", id("score"))];
                        if let Some(m) = &prev_mask {
                            pin.push(("mask", m.clone()));
                        }
                        out.push(decl(id("prune"), &prune::Prune, pp, pin));
                        mask_params["policy"] = json!({"kind": "keep_unpruned"});
                        mask_in.push(("prune", id("prune")));
                    }
                    FreezeSpec::TopShare {
                        score: sc, share, ..
                    } => {
                        out.extend(score_decls(sc, t, seed, &id, split_in(), trained.clone()));
                        mask_params["policy"] = json!({"kind": "top_share", "share": share});
                        mask_in.push(("score", id("score")));
                    }
                    FreezeSpec::Random { like, .. } => {
                        mask_params["policy"] = json!({"kind": "random", "seed": seed});
                        mask_in.push(("like", stage_id(like, seed, t, "mask")));
                    }
                }
                if let Some(m) = &prev_mask {
                    mask_in.push(("mask", m.clone()));
                }
                out.push(decl(id("mask"), &mask::Mask, mask_params, mask_in));
                prev_mask = Some(id("mask"));
                prev_model = Some(id("train"));
            }
        }
    }
    out
}
