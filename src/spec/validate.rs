//! Raw pipeline → checked [`Pipeline`], one function per section (dataset, tasks, training,
//! seeds, data files; the model in `model`, strategies in `strategy`, the evaluation protocol
//! in `protocol`). Every section reports into one collector, so a file's problems are all
//! reported, with their locations, instead of stopping at the first.

use super::images::{self, ImageData, ImageTask, TaskClasses};
use super::numbers::checked;
use super::raw::*;
use super::resolved::*;
use super::{DataCheck, Locator, SpecError, SpecErrors};
use crate::data::ImageDatasetSpec;
use crate::nn::torchvision::PretrainedHead;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const START: super::Pos = super::Pos { line: 1, col: 1 };

pub(super) struct Ctx {
    pub file: PathBuf,
    pub locator: Locator,
    /// (key path, the override) of every `--set` value and sweep value.
    pub overridden: Vec<(String, super::sweep::Override)>,
}

impl Ctx {
    pub fn error(&self, path: &str, message: impl Into<String>) -> SpecError {
        self.error_at(path, message, false)
    }

    /// Like `error`, but points at the key rather than its value (for unknown keys).
    pub fn error_at(&self, path: &str, message: impl Into<String>, at_key: bool) -> SpecError {
        let over = self
            .overridden
            .iter()
            .find(|(k, _)| path == k || path.starts_with(&format!("{k}.")))
            .map(|(_, o)| o);
        let from_override = over.map(|o| o.label.clone());
        SpecError {
            file: self.file.clone(),
            // A path the locator cannot place (an empty file) is the file's start; a value from
            // the command line has no place in the file, one from a `sweep:` block has its own.
            pos: match (over, at_key) {
                (Some(o), _) => o.pos,
                (None, true) => self.locator.key(path).or(Some(START)),
                (None, false) => self.locator.value(path).or(Some(START)),
            },
            path: path.to_string(),
            message: message.into(),
            from_override,
        }
    }
}

pub(super) fn validate(
    raw: RawPipeline,
    ctx: &Ctx,
    data: DataCheck,
) -> Result<Pipeline, SpecErrors> {
    // Errors at a key path's value, or (`ek`, for unknown keys and names) at the key.
    let errs: RefCell<Vec<SpecError>> = RefCell::new(Vec::new());
    let mut e = |p: &str, m: String| errs.borrow_mut().push(ctx.error(p, m));
    let mut ek =
        |p: &str, m: String, at_key: bool| errs.borrow_mut().push(ctx.error_at(p, m, at_key));

    // Dataset: IDX, or colour images (one `dataset:` or named `datasets:`).
    let source = parse_data(&raw, &mut ek);
    let idx = match &source {
        Some(ParsedData::Idx(d)) => Some(d),
        _ => None,
    };
    let (test_files, test_fraction) = idx.map_or((None, None), |d| idx_test_split(d, &mut e));
    let tasks = tasks(&raw, source.as_ref(), &mut e);
    let model = super::model::validate_model(&raw.model, &mut e);
    let optimizer = training(&raw.training, &mut e);
    let seeds = seeds(&raw.seeds, &mut e);

    let mut strategies = Vec::new();
    if raw.strategies.is_empty() {
        e(
            "strategies",
            "expected at least one strategy, e.g. `naive: {freeze: none}`".into(),
        );
    }
    for (name, s) in &raw.strategies {
        strategies.push(super::strategy::strategy(
            name,
            s,
            &raw.strategies,
            &model,
            &mut e,
            &mut ek,
        ));
    }

    scenario(&raw, &model, &tasks, &strategies, &mut e);

    if data == DataCheck::Required {
        pretrained_weights(&raw.model, &mut e);
        if let Some(d) = idx {
            idx_files(&raw, d, test_files.as_ref(), &model, &tasks, &mut e);
        }
    }

    let image_data = match &source {
        Some(ParsedData::Images {
            datasets, single, ..
        }) => {
            let mut d = check_images(datasets, *single, &tasks.images, data, &mut e);
            d.epochs = tasks.epochs.clone();
            d.epochs.resize(d.tasks.len(), None);
            Some(d)
        }
        _ => None,
    };

    let t = &raw.training;
    if t.record_replay && (t.augment.is_some() || t.sampling.is_some() || model.arch.is_some()) {
        e(
            "training.record_replay",
            "a replay records plain MLP training (each epoch a shuffle of the task's samples); drop `training.augment` and `training.sampling`, and use `model.kind: mlp`".into(),
        );
    }
    let single = matches!(&source, Some(ParsedData::Images { single: true, .. }));
    let selecting = raw
        .evaluation
        .as_ref()
        .is_some_and(|v| v.selection == super::protocol::Selection::Validation);
    if selecting && image_data.is_some() {
        e(
            "evaluation.selection",
            "a validation split is held out of IDX datasets only so far; image datasets select on `test`".into(),
        );
    }
    for (name, s) in &raw.strategies {
        let scores = [
            ("score", s.score.as_ref()),
            ("ewc.importance", s.ewc.as_ref().map(|w| &w.importance)),
        ];
        for (at, sc) in scores {
            if sc.and_then(|sc| sc.reference_split) == Some(ReferenceSplit::Validation)
                && !selecting
            {
                e(
                    &format!("strategies.{name}.{at}.reference_split"),
                    "the validation split exists with `evaluation.selection: validation` only"
                        .into(),
                );
            }
        }
    }
    let protocol = super::protocol::check(
        t.augment.as_ref(),
        t.sampling.as_ref(),
        raw.evaluation.as_ref(),
        image_data
            .as_ref()
            .map(|d| d.sample_shape)
            .filter(|s| s[1] > 0),
        model.arch.as_ref().map(|a| a.input),
        match image_data.as_ref().and_then(|d| d.datasets.values().next()) {
            Some(ImageDatasetSpec::Cifar10(_) | ImageDatasetSpec::Cifar100(_)) if single => {
                "dataset"
            }
            _ if single => "dataset.size",
            _ => "datasets",
        },
        &mut e,
    );

    let resources = super::resources::check(
        raw.resources.as_ref(),
        &crate::stages::registry().kinds(),
        &mut ek,
    );

    let errs = errs.into_inner();
    if !errs.is_empty() {
        return Err(SpecErrors(errs));
    }
    Ok(Pipeline {
        name: raw.name.unwrap_or_else(|| {
            ctx.file
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default()
        }),
        source: ctx.file.clone(),
        data: match (image_data, idx) {
            (Some(images), _) => DataSource::Images(images),
            (None, Some(d)) => DataSource::Idx(DatasetSpec {
                format: match d.format {
                    DataFormat::Idx => "idx",
                },
                images: d.images.clone(),
                labels: d.labels.clone(),
                test_files,
                test_fraction,
                split_seed: d.split_seed,
            }),
            (None, None) => unreachable!("no errors means a dataset was parsed"),
        },
        tasks: tasks.idx,
        permute_seed: tasks.permute_seed,
        model,
        training: TrainingSpec {
            optimizer,
            batch_size: t.batch_size as usize,
            epochs: t.epochs as usize,
            weight_decay: t.weight_decay,
            augment: protocol.augment,
            sampling: protocol.sampling,
            record_replay: t.record_replay,
        },
        test_crops: protocol.crops,
        selection: protocol.selection,
        validation_fraction: protocol.validation_fraction,
        forward_transfer: raw.evaluation.as_ref().is_some_and(|v| v.forward_transfer),
        seeds,
        // Resolved here, once, so the stages read what they are keyed on.
        strategies: strategies
            .into_iter()
            .map(|s| s.with_selection(protocol.selection))
            .collect(),
        resources,
    })
}

/// The scenario (`model.heads`) against the tasks and the strategies: a shared head needs
/// tasks of one size; class-incremental evaluation has no task id for isolation to pick a
/// mask by; LwF distils whole old heads, which a growing head does not keep; torchvision's
/// head is task 1's, not every task's.
fn scenario(
    raw: &RawPipeline,
    model: &super::ModelSpec,
    tasks: &Tasks,
    strategies: &[super::Strategy],
    e: &mut dyn FnMut(&str, String),
) {
    use crate::nn::scenario::{ClassOutputs, Scenario};
    let s = model.scenario;
    let sizes: Vec<usize> = tasks.groups.iter().map(Vec::len).collect();
    if let Err(m) = s.check(&sizes) {
        e("model.heads", m);
    }
    if s == (Scenario::ClassIncremental {
        outputs: ClassOutputs::Upfront,
    }) && raw.model.pretrained.is_some()
        && raw.model.pretrained_head != Some(crate::nn::torchvision::PretrainedHead::Drop)
    {
        e(
            "model.class_outputs",
            "torchvision's classifier.6 becomes task 1's outputs, but `upfront` needs every task's from the start; use `class_outputs: grow` or `pretrained_head: drop`".into(),
        );
    }
    for st in strategies {
        if st.isolate && s.is_class_incremental() {
            e(
                &format!("strategies.{}.isolate", st.name),
                "isolation evaluates an old task with its own mask, picked by its task id, which class-incremental evaluation does not have; drop `isolate` or use `heads: per_task` or `shared`".into(),
            );
        }
        if st.lwf.is_some() && s.grows() {
            e(
                &format!("strategies.{}.lwf", st.name),
                "LwF distils the old heads' whole outputs, and a growing class-incremental head gains outputs the old model lacks; use `class_outputs: upfront`".into(),
            );
        }
    }
}

/// An IDX dataset's test data: given test files, or a share of the pooled data (one of the
/// two, never both).
fn idx_test_split(
    d: &RawDataset,
    e: &mut dyn FnMut(&str, String),
) -> (Option<(PathBuf, PathBuf)>, Option<f64>) {
    let test_files = match (&d.test_images, &d.test_labels) {
        (None, None) => None,
        (Some(i), Some(l)) => Some((i.clone(), l.clone())),
        (Some(_), None) => {
            e(
                "dataset.test_labels",
                "required when `test_images` is given".into(),
            );
            None
        }
        (None, Some(_)) => {
            e(
                "dataset.test_images",
                "required when `test_labels` is given".into(),
            );
            None
        }
    };
    let test_fraction = match (&test_files, d.test_fraction) {
        (Some(_), Some(_)) => {
            e(
                "dataset.test_fraction",
                "not allowed with test files: the split is given".into(),
            );
            None
        }
        (None, None) => {
            e(
                "dataset",
                "expected `test_fraction` (a number in (0, 1)) or `test_images` and `test_labels`"
                    .into(),
            );
            None
        }
        (None, Some(f))
            if !checked(
                e,
                "dataset.test_fraction",
                f,
                f > 0.0 && f < 1.0,
                "a number in (0, 1)",
            ) =>
        {
            None
        }
        (_, f) => f,
    };
    (test_files, test_fraction)
}

/// The checked `tasks:` section.
struct Tasks {
    /// Class groups as written (IDX class groups, or the permuted tasks' one group repeated);
    /// empty for tasks that name datasets.
    groups: Vec<Vec<i64>>,
    /// The IDX tasks' class groups, checked ([`Pipeline::tasks`]).
    idx: Vec<Vec<u16>>,
    permute_seed: Option<u64>,
    /// Image tasks, each with the key path of its classes.
    images: Vec<(ImageTask, String)>,
    /// `tasks.N.epochs` of tasks that name datasets.
    epochs: Vec<Option<usize>>,
}

impl Tasks {
    /// Where task `t`'s class group is written: permuted tasks share one.
    fn group_path(&self, t: usize) -> String {
        match self.permute_seed {
            Some(_) => "tasks.permuted.classes".to_string(),
            None => format!("tasks.{t}"),
        }
    }

    /// The class groups as written in the file: permuted tasks' one group once.
    fn written_groups(&self) -> impl Iterator<Item = (usize, &Vec<i64>)> {
        let n = if self.permute_seed.is_some() {
            1
        } else {
            usize::MAX
        };
        self.groups.iter().enumerate().take(n)
    }
}

/// Class groups, permuted tasks, or tasks that name datasets, checked against the data source
/// (`source` is `None` when the dataset block had errors; no follow-up errors then).
fn tasks(raw: &RawPipeline, source: Option<&ParsedData>, e: &mut dyn FnMut(&str, String)) -> Tasks {
    let image_source = matches!(source, Some(ParsedData::Images { .. }));
    let mut images: Vec<(ImageTask, String)> = Vec::new();
    let mut epochs: Vec<Option<usize>> = Vec::new();
    let (groups, permute_seed) = match &raw.tasks {
        RawTasks::Groups(g) => (g.clone(), None),
        RawTasks::Permuted(p) => {
            if !(1..=1000).contains(&p.count) {
                e(
                    "tasks.permuted.count",
                    format!("expected a task count in 1..=1000, found {}", p.count),
                );
            }
            if image_source {
                e(
                    "tasks.permuted",
                    "permuted tasks need an IDX dataset (`format: idx`)".into(),
                );
            }
            (
                vec![p.classes.clone(); p.count.clamp(1, 1000) as usize],
                Some(p.seed),
            )
        }
        RawTasks::FromDatasets(list) => {
            let names = match source {
                Some(ParsedData::Images {
                    names,
                    single: false,
                    ..
                }) => Some(names),
                Some(_) => {
                    e(
                        "tasks",
                        "tasks of the form `{dataset: NAME, classes: ..}` name datasets under `datasets:`; with one `dataset:`, give class groups like [[0, 1], [2, 3]]".into(),
                    );
                    None
                }
                None => None,
            };
            for (t, task) in list.iter().enumerate() {
                let path = format!("tasks.{t}");
                // A dataset whose block has errors is still named: no follow-up error here.
                if let Some(names) = names.filter(|n| !n.contains(&task.dataset)) {
                    e(
                        &format!("{path}.dataset"),
                        format!(
                            "no dataset `{}` under `datasets:` (named: {})",
                            task.dataset,
                            names.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
                epochs.push(task_epochs(task.epochs, t, &raw.model, &path, e));
                let classes = match &task.classes {
                    RawClasses::All => TaskClasses::All,
                    RawClasses::List(l) => {
                        TaskClasses::List(images::labels(l, &format!("{path}.classes"), e))
                    }
                };
                images.push((
                    ImageTask {
                        dataset: task.dataset.clone(),
                        classes,
                    },
                    format!("{path}.classes"),
                ));
            }
            (Vec::new(), None)
        }
    };
    if groups.is_empty() && images.is_empty() {
        e(
            "tasks",
            "expected at least one class group, e.g. `[[0, 1], [2, 3]]`".into(),
        );
    }
    if let (RawTasks::Groups(g), Some(ParsedData::Images { single, .. })) = (&raw.tasks, source) {
        if !*single {
            e(
                "tasks",
                "with `datasets:`, each task names its dataset: `- {dataset: NAME, classes: all | [..]}`".into(),
            );
        }
        for (t, group) in g.iter().enumerate() {
            let path = format!("tasks.{t}");
            images.push((
                ImageTask {
                    dataset: images::SINGLE.to_string(),
                    classes: TaskClasses::List(images::labels(group, &path, e)),
                },
                path,
            ));
        }
    }
    let mut tasks = Tasks {
        groups,
        idx: Vec::new(),
        permute_seed,
        images,
        epochs,
    };
    if !image_source {
        tasks.idx = idx_class_groups(&tasks, e);
    }
    tasks
}

/// `tasks.N.epochs`: 0 only keeps task 1's loaded weights, so it needs them and their head.
fn task_epochs(
    epochs: Option<i64>,
    t: usize,
    model: &RawModel,
    path: &str,
    e: &mut dyn FnMut(&str, String),
) -> Option<usize> {
    match epochs {
        None => None,
        Some(0)
            if t > 0
                || model.pretrained.is_none()
                || model.pretrained_head == Some(PretrainedHead::Drop) =>
        {
            e(
                &format!("{path}.epochs"),
                "0 epochs only for task 1 with `model.pretrained` and its head kept (`pretrained_head: task1`): keep the loaded weights".into(),
            );
            None
        }
        Some(n) if n < 0 => {
            e(
                &format!("{path}.epochs"),
                format!("expected an integer >= 0, found {n}"),
            );
            None
        }
        Some(n) => Some(n as usize),
    }
}

/// IDX class groups: at least two labels each, in range, no label in two tasks.
fn idx_class_groups(tasks: &Tasks, e: &mut dyn FnMut(&str, String)) -> Vec<Vec<u16>> {
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    let mut checked_groups: Vec<Vec<u16>> = Vec::new();
    for (t, group) in tasks.groups.iter().enumerate() {
        if tasks.permute_seed.is_some() && t > 0 {
            // Permuted tasks repeat one class group by construction.
            checked_groups.push(checked_groups[0].clone());
            continue;
        }
        let gpath = tasks.group_path(t);
        if group.len() < 2 {
            e(
                &gpath,
                format!("a task needs at least two classes, found {}", group.len()),
            );
        }
        let mut g = Vec::new();
        for (i, &c) in group.iter().enumerate() {
            let p = format!("{gpath}.{i}");
            if !(0..=65535).contains(&c) {
                e(
                    &p,
                    format!("expected a class label in 0..=65535, found {c}"),
                );
                continue;
            }
            if let Some(prev) = seen.insert(c, t) {
                if prev == t {
                    e(&p, format!("class {c} appears twice in task {t}"));
                } else {
                    e(
                        &p,
                        format!(
                            "class {c} is already in task {prev}; class groups must not overlap"
                        ),
                    );
                }
            }
            g.push(c as u16);
        }
        checked_groups.push(g);
    }
    checked_groups
}

/// `training:` (the optimizer and its settings; augmentation and sampling are checked with
/// the evaluation protocol).
fn training(t: &RawTraining, e: &mut dyn FnMut(&str, String)) -> OptimizerSpec {
    checked(e, "training.lr", t.lr, t.lr > 0.0, "a learning rate > 0");
    if t.batch_size < 1 {
        e(
            "training.batch_size",
            format!("expected an integer >= 1, found {}", t.batch_size),
        );
    }
    if t.epochs < 1 {
        e(
            "training.epochs",
            format!("expected an integer >= 1, found {}", t.epochs),
        );
    }
    checked(
        e,
        "training.weight_decay",
        t.weight_decay,
        t.weight_decay >= 0.0,
        "a number >= 0",
    );
    match t.optimizer {
        OptimizerKind::Adam => {
            for (i, &b) in t.betas.iter().enumerate() {
                checked(
                    e,
                    &format!("training.betas.{i}"),
                    b,
                    (0.0..1.0).contains(&b),
                    "a number in [0, 1)",
                );
            }
            checked(e, "training.eps", t.eps, t.eps > 0.0, "a number > 0");
            if t.momentum != 0.0 {
                e(
                    "training.momentum",
                    "only used with `optimizer: sgd`".into(),
                );
            }
            OptimizerSpec::Adam {
                lr: t.lr,
                beta1: t.betas[0],
                beta2: t.betas[1],
                eps: t.eps,
            }
        }
        OptimizerKind::Sgd => {
            checked(
                e,
                "training.momentum",
                t.momentum,
                (0.0..1.0).contains(&t.momentum),
                "a number in [0, 1)",
            );
            OptimizerSpec::Sgd {
                lr: t.lr,
                momentum: t.momentum,
            }
        }
    }
}

/// `seeds:`: at least one, each >= 0 and listed once.
fn seeds(raw: &[i64], e: &mut dyn FnMut(&str, String)) -> Vec<u64> {
    let mut seeds = Vec::new();
    if raw.is_empty() {
        e("seeds", "expected at least one seed, e.g. `[0]`".into());
    }
    for (i, &s) in raw.iter().enumerate() {
        if s < 0 {
            e(
                &format!("seeds.{i}"),
                format!("expected a seed >= 0, found {s}"),
            );
        } else if seeds.contains(&(s as u64)) {
            e(&format!("seeds.{i}"), format!("seed {s} is listed twice"));
        } else {
            seeds.push(s as u64);
        }
    }
    seeds
}

/// `model.pretrained` names a file that exists.
fn pretrained_weights(model: &RawModel, e: &mut dyn FnMut(&str, String)) {
    if let Some(w) = model.pretrained.as_ref().filter(|w| !w.is_file()) {
        e(
            "model.pretrained",
            format!(
                "weights file {} does not exist; convert torchvision's VGG-16 with the one-line Python command in README.md (\"VGG-16\")",
                w.display()
            ),
        );
    }
}

/// An IDX dataset's files (headers, counts, shapes against the model's input), and the
/// classes the tasks name against the labels present.
fn idx_files(
    raw: &RawPipeline,
    d: &RawDataset,
    test_files: Option<&(PathBuf, PathBuf)>,
    model: &ModelSpec,
    tasks: &Tasks,
    e: &mut dyn FnMut(&str, String),
) {
    let input = model.arch.as_ref().map(|a| super::idx_data::ModelInput {
        shape: a.input,
        key: if raw.model.input_shape.is_some() {
            "model.input_shape"
        } else if raw.model.input_size.is_some() {
            "model.input_size"
        } else {
            "model.kind"
        },
        crop: raw
            .training
            .augment
            .as_ref()
            .and_then(|a| a.crop.as_ref())
            .and_then(|c| c.size)
            .and_then(|s| usize::try_from(s).ok()),
    });
    let pairs = super::idx_data::pairs(&d.images, &d.labels, test_files);
    let Some(present) = super::idx_data::check(&pairs, input, e) else {
        return;
    };
    for (t, group) in tasks.written_groups() {
        let gpath = tasks.group_path(t);
        for (i, &c) in group.iter().enumerate() {
            if (0..=65535).contains(&c) && !present.iter().any(|&p| p as i64 == c) {
                e(
                    &format!("{gpath}.{i}"),
                    format!(
                        "class {c} does not occur in the dataset (its classes are {:?})",
                        present
                    ),
                );
            }
        }
    }
}

enum ParsedData {
    Idx(RawDataset),
    Images {
        /// The datasets whose blocks deserialized.
        datasets: BTreeMap<String, ImageDatasetSpec>,
        /// Every name under `datasets:`, also those whose blocks have errors.
        names: BTreeSet<String>,
        /// From one `dataset:` (named [`images::SINGLE`]) rather than `datasets:`.
        single: bool,
    },
}

/// Deserialize an IDX dataset block, collecting every error inside it with its key path.
fn parse_idx(
    v: &serde_yaml::Value,
    path: &str,
    e: &mut dyn FnMut(&str, String, bool),
) -> Option<RawDataset> {
    let c = super::collect::deserialize::<RawDataset>(v.clone(), path);
    for f in c.errors {
        e(&f.path, f.message, f.at_key);
    }
    c.value.filter(|_| c.clean)
}

fn is_idx(v: &serde_yaml::Value) -> bool {
    v.get("format").and_then(|f| f.as_str()) == Some("idx")
}

fn parse_data(raw: &RawPipeline, e: &mut dyn FnMut(&str, String, bool)) -> Option<ParsedData> {
    match (&raw.dataset, &raw.datasets) {
        (Some(_), Some(_)) => {
            e(
                "datasets",
                "give either one `dataset:` or named `datasets:`, not both".into(),
                false,
            );
            None
        }
        (None, None) => {
            e(
                "dataset",
                "missing: expected `dataset:` (one dataset) or `datasets:` (named datasets, one per task)".into(),
                false,
            );
            None
        }
        (Some(v), None) if is_idx(v) => parse_idx(v, "dataset", e).map(ParsedData::Idx),
        (Some(v), None) => {
            let spec = images::parse_dataset(v, "dataset", true, e)?;
            Some(ParsedData::Images {
                datasets: [(images::SINGLE.to_string(), spec)].into(),
                names: [images::SINGLE.to_string()].into(),
                single: true,
            })
        }
        (None, Some(map)) => {
            let mut datasets = BTreeMap::new();
            if map.is_empty() {
                e(
                    "datasets",
                    "expected at least one named dataset".into(),
                    false,
                );
            }
            for (name, v) in map {
                let path = format!("datasets.{name}");
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    e(&path, "dataset names use only [A-Za-z0-9_-]".into(), true);
                }
                if is_idx(v) {
                    e(
                        &format!("{path}.format"),
                        "IDX data is only supported as the single `dataset:`; named datasets are cifar10 | cifar100 | image_folder | adience".into(),
                        false,
                    );
                    continue;
                }
                if let Some(spec) = images::parse_dataset(v, &path, false, e) {
                    datasets.insert(name.clone(), spec);
                }
            }
            Some(ParsedData::Images {
                datasets,
                names: map.keys().cloned().collect(),
                single: false,
            })
        }
    }
}

/// Options, classes, one sample shape, and (with data required) the files of image datasets.
fn check_images(
    datasets: &BTreeMap<String, ImageDatasetSpec>,
    single: bool,
    tasks: &[(ImageTask, String)],
    data: DataCheck,
    e: &mut dyn FnMut(&str, String),
) -> ImageData {
    let path = |name: &str| images::dataset_path(name, single);
    let mut valid = BTreeSet::new();
    for (name, spec) in datasets {
        match spec.validate() {
            Ok(()) => {
                valid.insert(name.clone());
            }
            Err(crate::data::DataError::Invalid { field, msg }) => {
                e(&format!("{}.{field}", path(name)), msg)
            }
            Err(err) => e(&path(name), err.to_string()),
        }
    }
    let plain: Vec<ImageTask> = tasks.iter().map(|(t, _)| t.clone()).collect();
    for name in images::unused(datasets, &plain) {
        e(&path(&name), "not used by any task".into());
    }
    let mut shapes = datasets.iter().map(|(n, s)| (n, s.sample_shape()));
    let first = shapes.next();
    if let Some((n0, s0)) = first {
        for (n, s) in shapes {
            if s != s0 {
                e(
                    &path(n),
                    format!(
                        "decodes to samples of shape {s:?}, but dataset `{n0}` to {s0:?}; every task feeds one model, so give every dataset the same `size` (CIFAR is fixed at 32)"
                    ),
                );
            }
        }
    }
    let mut counts: BTreeMap<String, usize> = datasets
        .iter()
        .filter_map(|(n, s)| images::known_class_count(s).map(|c| (n.clone(), c)))
        .collect();
    let mut files = BTreeMap::new();
    if data == DataCheck::Required {
        for (name, spec) in datasets.iter().filter(|(n, _)| valid.contains(*n)) {
            if let ImageDatasetSpec::ImageFolder(crate::data::image_set::ImageFolderSpec {
                train,
                ..
            }) = spec
            {
                match crate::data::image_folder::class_folders(train) {
                    Ok(c) => {
                        counts.insert(name.clone(), c.len());
                    }
                    Err(err) => {
                        e(&path(name), err.to_string());
                        continue;
                    }
                }
            }
            match images::declared_files(name, spec) {
                Ok(f) => files.extend(f),
                Err(err) => e(&path(name), err.to_string()),
            }
        }
    }
    images::check_tasks(tasks, &|d| counts.get(d).copied(), e);
    ImageData {
        datasets: datasets.clone(),
        tasks: plain,
        files,
        sample_shape: first.map_or([3, 0, 0], |(_, s)| s),
        epochs: Vec::new(),
    }
}
