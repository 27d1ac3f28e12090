//! One entry of `strategies:`, checked: the freezing policy, its score and prune search, EWC,
//! correlations and schedule, against each other and against the model.

use super::numbers::checked;
use super::raw::*;
use super::resolved::*;
use crate::xai::importance::{EwcMode, FisherLabels, GradientMode};
use crate::xai::lrp::{AbsMode, LrpBias, LrpMaxPool, LrpRule};
use std::collections::BTreeMap;

/// The LRP rule choice of a score spec, with only the parameters of the rules in use.
struct ChosenRules {
    dense: LrpRule,
    conv: Option<LrpRule>,
    first: Option<LrpRule>,
    alpha: Option<f64>,
    beta: Option<f64>,
    gamma: Option<f64>,
    low: Option<f64>,
    high: Option<f64>,
    bias: LrpBias,
    /// `None`: the default (1e-9), left out of the key.
    stabilizer: Option<f64>,
    max_pool: LrpMaxPool,
}

fn lrp_rules(sc: &RawScore, base: &str, e: &mut dyn FnMut(&str, String)) -> ChosenRules {
    use crate::spec::raw::Composite as C;
    let (dense, conv, first) = match sc.composite {
        None => (
            sc.rule.unwrap_or(LrpRule::Epsilon),
            sc.conv_rule,
            sc.first_layer,
        ),
        Some(c) => {
            for (field, set) in [
                ("rule", sc.rule.is_some()),
                ("conv_rule", sc.conv_rule.is_some()),
                ("first_layer", sc.first_layer.is_some()),
            ] {
                if set {
                    e(
                        &format!("{base}.{field}"),
                        format!("`composite: {c:?}` already sets the rules; drop `{field}` or the composite"),
                    );
                }
            }
            let (conv, first) = match c {
                C::EpsilonPlus => (LrpRule::Zplus, None),
                C::EpsilonPlusFlat => (LrpRule::Zplus, Some(LrpRule::Flat)),
                C::EpsilonAlpha2Beta1 => (LrpRule::AlphaBeta, None),
                C::EpsilonAlpha2Beta1Flat => (LrpRule::AlphaBeta, Some(LrpRule::Flat)),
                C::EpsilonGammaBox => (LrpRule::Gamma, Some(LrpRule::ZBox)),
            };
            (LrpRule::Epsilon, Some(conv), first)
        }
    };
    let used = |r: LrpRule| dense == r || conv == Some(r) || first == Some(r);
    let mut param = |name: &str, v: Option<f64>, rule: LrpRule, default: f64| -> Option<f64> {
        if !used(rule) {
            if v.is_some() {
                e(
                    &format!("{base}.{name}"),
                    format!("only used when a layer's rule is `{rule:?}`"),
                );
            }
            return None;
        }
        let v = v.unwrap_or(default);
        checked(e, &format!("{base}.{name}"), v, true, "a finite number");
        Some(v)
    };
    let alpha = param("alpha", sc.alpha, LrpRule::AlphaBeta, 2.0);
    let beta = param("beta", sc.beta, LrpRule::AlphaBeta, 1.0);
    let gamma = param("gamma", sc.gamma, LrpRule::Gamma, 0.25);
    let low = param("low", sc.low, LrpRule::ZBox, 0.0);
    let high = param("high", sc.high, LrpRule::ZBox, 1.0);
    if let (Some(a), Some(b)) = (alpha, beta) {
        if b < 0.0 || (a - b - 1.0).abs() > 1e-9 {
            e(
                &format!("{base}.alpha"),
                format!(
                    "αβ needs β >= 0 and α − β = 1 to conserve relevance, found α = {a}, β = {b}"
                ),
            );
        }
    }
    if let Some(g) = gamma {
        if g <= 0.0 {
            e(
                &format!("{base}.gamma"),
                format!("expected γ > 0, found {g}"),
            );
        }
    }
    if let (Some(l), Some(h)) = (low, high) {
        if l >= h {
            e(
                &format!("{base}.low"),
                format!("expected low < high, found {l} >= {h}"),
            );
        }
    }
    let zennit = sc.convention == Some(LrpConvention::Zennit);
    if zennit {
        for (field, set) in [
            ("bias", sc.bias.is_some()),
            ("stabilizer", sc.stabilizer.is_some()),
            ("max_pool", sc.max_pool.is_some()),
        ] {
            if set {
                e(
                    &format!("{base}.{field}"),
                    format!("`convention: zennit` already sets `{field}`; drop one of them"),
                );
            }
        }
        if used(LrpRule::Gamma) {
            e(
                &format!("{base}.convention"),
                "zennit 0.5.1's γ rule takes its denominator by the sign of each output (a⁺(w+γw⁺) + a⁻(w+γw⁻) where the output is positive); cfpipe's γ is the ε form with w + γw⁺, so it is not offered under zennit's name: use `convention: cfpipe` or another rule".into(),
            );
        }
    }
    let bias = match (zennit, sc.bias) {
        (true, _) => LrpBias::Include,
        (false, b) => b.unwrap_or_default(),
    };
    let stabilizer = match (zennit, sc.stabilizer) {
        (true, _) => Some(crate::xai::lrp::ZENNIT_STABILIZER),
        (false, Some(s)) => {
            checked(e, &format!("{base}.stabilizer"), s, s > 0.0, "a number > 0");
            Some(s)
        }
        (false, None) => None,
    }
    // The default is keyed by its absence, however it was spelled.
    .filter(|&s| s as f32 != crate::xai::lrp::STABILIZER);
    let max_pool = if zennit {
        LrpMaxPool::Gradient
    } else {
        sc.max_pool.unwrap_or_default()
    };
    ChosenRules {
        bias,
        stabilizer,
        max_pool,
        dense,
        conv,
        first,
        alpha,
        beta,
        gamma,
        low,
        high,
    }
}

fn score_spec(sc: &RawScore, base: &str, e: &mut dyn FnMut(&str, String)) -> Option<ScoreSpec> {
    let m = sc.method;
    let mut only = |field: &str, set: bool, methods: &str| {
        if set {
            e(
                &format!("{base}.{field}"),
                format!("only used with `method: {methods}`"),
            );
        }
    };
    for (field, set) in [
        ("rule", sc.rule.is_some()),
        ("conv_rule", sc.conv_rule.is_some()),
        ("first_layer", sc.first_layer.is_some()),
        ("composite", sc.composite.is_some()),
        ("alpha", sc.alpha.is_some()),
        ("beta", sc.beta.is_some()),
        ("gamma", sc.gamma.is_some()),
        ("low", sc.low.is_some()),
        ("high", sc.high.is_some()),
        ("convention", sc.convention.is_some()),
        ("bias", sc.bias.is_some()),
        ("stabilizer", sc.stabilizer.is_some()),
        ("max_pool", sc.max_pool.is_some()),
    ] {
        only(field, set && m != ScoreMethod::Lrp, "lrp");
    }
    only(
        "epsilon",
        sc.epsilon.is_some() && m != ScoreMethod::Lrp,
        "lrp",
    );
    only(
        "aggregate.abs",
        sc.aggregate.abs != AbsMode::None
            && !matches!(m, ScoreMethod::Lrp | ScoreMethod::GradientXInput),
        "lrp` or `gradient_x_input",
    );
    only(
        "labels",
        sc.labels.is_some() && m != ScoreMethod::Fisher,
        "fisher",
    );
    only(
        "gradients",
        sc.gradients.is_some() && m != ScoreMethod::Fisher,
        "fisher",
    );
    only(
        "batch_size",
        sc.batch_size.is_some() && sc.gradients != Some(GradientMode::PerBatch),
        "fisher` with `gradients: per_batch",
    );
    let weight_level = matches!(
        m,
        ScoreMethod::Fisher | ScoreMethod::Mas | ScoreMethod::Sig | ScoreMethod::Si
    );
    only(
        "unit_rule",
        sc.unit_rule.is_some() && !weight_level,
        "fisher`, `mas`, `sig` or `si",
    );
    only(
        "damping",
        sc.damping.is_some() && m != ScoreMethod::Si,
        "si",
    );
    let sal = m == ScoreMethod::Saliency;
    only("similarity", sc.similarity.is_some() && !sal, "saliency");
    for (field, set) in [
        ("class_aggregate", sc.class_aggregate.is_some()),
        ("dense", sc.dense.is_some()),
        ("fullgrad_normalize", sc.fullgrad_normalize.is_some()),
        ("visualize", sc.visualize.is_some()),
    ] {
        only(field, set && !sal, "saliency");
    }
    let uses_reference = !matches!(
        m,
        ScoreMethod::Magnitude | ScoreMethod::Random | ScoreMethod::Si
    );
    only(
        "reference_size",
        sc.reference_size.is_some() && !uses_reference,
        "lrp`, `gradient_x_input`, `fisher`, `mas`, `sig` or `saliency",
    );
    only(
        "reference_split",
        sc.reference_split.is_some() && !uses_reference,
        "lrp`, `gradient_x_input`, `fisher`, `mas`, `sig` or `saliency",
    );
    let reference_size = match sc.reference_size {
        None if uses_reference => {
            e(
                &format!("{base}.reference_size"),
                "required: reference samples per task, e.g. 100".into(),
            );
            1
        }
        Some(r) if r < 1 => {
            e(
                &format!("{base}.reference_size"),
                format!("expected an integer >= 1, found {r}"),
            );
            1
        }
        Some(r) => r as usize,
        None => 0,
    };
    let reference_split = sc.reference_split.unwrap_or_default();
    let unit_rule = sc.unit_rule.unwrap_or_default();
    let normalize = sc.aggregate.normalize;
    Some(match m {
        ScoreMethod::Lrp => {
            let epsilon = sc.epsilon.unwrap_or(1e-6);
            checked(
                e,
                &format!("{base}.epsilon"),
                epsilon,
                epsilon > 0.0,
                "a number > 0",
            );
            let r = lrp_rules(sc, base, e);
            ScoreSpec::Lrp {
                rule: r.dense,
                conv_rule: r.conv,
                first_layer: r.first,
                alpha: r.alpha,
                beta: r.beta,
                gamma: r.gamma,
                low: r.low,
                high: r.high,
                bias: r.bias,
                stabilizer: r.stabilizer,
                max_pool: r.max_pool,
                epsilon,
                reference_size,
                reference_split,
                abs: sc.aggregate.abs,
                normalize,
            }
        }
        ScoreMethod::Magnitude => ScoreSpec::Magnitude { normalize },
        ScoreMethod::Fisher => {
            let gradients = sc.gradients.unwrap_or(GradientMode::PerSample);
            let batch_size = match (gradients, sc.batch_size) {
                (GradientMode::PerSample, _) => 1,
                (GradientMode::PerBatch, None) => {
                    e(
                        &format!("{base}.batch_size"),
                        "required with `gradients: per_batch`".into(),
                    );
                    1
                }
                (GradientMode::PerBatch, Some(b)) if b < 1 => {
                    e(
                        &format!("{base}.batch_size"),
                        format!("expected an integer >= 1, found {b}"),
                    );
                    1
                }
                (GradientMode::PerBatch, Some(b)) => b as usize,
            };
            ScoreSpec::Fisher {
                labels: sc.labels.unwrap_or(FisherLabels::GroundTruth),
                gradients,
                batch_size,
                reference_size,
                reference_split,
                unit_rule,
                normalize,
            }
        }
        ScoreMethod::Mas => ScoreSpec::Mas {
            reference_size,
            reference_split,
            unit_rule,
            normalize,
        },
        ScoreMethod::Sig => ScoreSpec::Sig {
            reference_size,
            reference_split,
            unit_rule,
            normalize,
        },
        ScoreMethod::Random => {
            if normalize != Normalize::None {
                e(
                    &format!("{base}.aggregate.normalize"),
                    "random scores are not normalised".into(),
                );
            }
            ScoreSpec::Random {}
        }
        ScoreMethod::Si => {
            let damping = sc.damping.unwrap_or(1e-3);
            checked(
                e,
                &format!("{base}.damping"),
                damping,
                damping > 0.0,
                "a damping ξ > 0",
            );
            ScoreSpec::Si {
                damping,
                unit_rule,
                normalize,
            }
        }
        ScoreMethod::GradientXInput => ScoreSpec::GradientXInput {
            reference_size,
            reference_split,
            abs: sc.aggregate.abs,
            normalize,
        },
        ScoreMethod::Saliency => {
            if normalize != Normalize::None {
                e(
                    &format!("{base}.aggregate.normalize"),
                    "saliency scores are similarities, compared within a layer; they are not normalised".into(),
                );
            }
            let similarity = sc.similarity.unwrap_or_else(|| {
                e(
                    &format!("{base}.similarity"),
                    "required with `method: saliency`: mse or pearson".into(),
                );
                crate::xai::saliency::Similarity::Mse
            });
            let visualize = sc.visualize.unwrap_or_default();
            if visualize.steps < 1 {
                e(
                    &format!("{base}.visualize.steps"),
                    "expected an integer >= 1".into(),
                );
            }
            for (field, v) in [("lr", visualize.lr), ("init_scale", visualize.init_scale)] {
                checked(
                    e,
                    &format!("{base}.visualize.{field}"),
                    v,
                    v > 0.0,
                    "a number > 0",
                );
            }
            ScoreSpec::Saliency {
                reference_size,
                reference_split,
                options: crate::xai::saliency::SaliencyOptions {
                    similarity,
                    class_aggregate: sc.class_aggregate.unwrap_or_default(),
                    dense: sc.dense.unwrap_or_default(),
                    fullgrad_normalize: sc.fullgrad_normalize.unwrap_or_default(),
                    visualize,
                },
            }
        }
    })
}

/// One entry of `strategies:`, checked: its freezing, EWC, correlation and schedule options
/// against each other and against the model (`saliency` needs conv layers). `all` is every
/// strategy, for `like:` references.
pub(super) fn strategy(
    name: &str,
    s: &RawStrategy,
    all: &BTreeMap<String, RawStrategy>,
    model: &ModelSpec,
    e: &mut dyn FnMut(&str, String),
    ek: &mut dyn FnMut(&str, String, bool),
) -> Strategy {
    let base = format!("strategies.{name}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        ek(
            &base,
            "strategy names may use letters, digits, '_' and '-' only".into(),
            true,
        );
    }
    // Saliency compares filter visualisations with saliency maps: no filters, no method.
    let has_conv = model.arch.as_ref().is_some_and(|a| {
        a.layers
            .iter()
            .any(|l| matches!(l, crate::nn::arch::Op::Conv { .. }))
    });
    let saliency_at = [
        ("score", s.score.as_ref()),
        ("ewc.importance", s.ewc.as_ref().map(|w| &w.importance)),
    ];
    for (field, sc) in saliency_at {
        if !has_conv && sc.is_some_and(|sc| sc.method == ScoreMethod::Saliency) {
            e(
                &format!("{base}.{field}.method"),
                format!("`saliency` needs conv layers, but `model.kind: {}` has none; use `cnn`, `small_cnn` or `vgg16`, or another method", model.kind),
            );
        }
    }
    let only_with = |field: &str, set: bool, kind: &str, e: &mut dyn FnMut(&str, String)| {
        if set {
            e(
                &format!("{base}.{field}"),
                format!("only used with `freeze: {kind}`"),
            );
        }
    };
    // The score a freezing policy ranks units by: required, and checked.
    let required_score = |kind: &str, e: &mut dyn FnMut(&str, String)| match &s.score {
        None => {
            e(
                &format!("{base}.score"),
                format!("required with `freeze: {kind}`"),
            );
            None
        }
        Some(sc) => score_spec(sc, &format!("{base}.score"), e),
    };
    let lr_frozen = s.lr_frozen.unwrap_or(0.0);
    checked(
        e,
        &format!("{base}.lr_frozen"),
        lr_frozen,
        (0.0..=1.0).contains(&lr_frozen),
        "a multiplier in [0, 1]",
    );
    if s.schedule == Schedule::Joint && s.freeze != FreezeKind::None {
        e(
            &format!("{base}.freeze"),
            "a joint schedule trains once on all tasks; use `freeze: none`".into(),
        );
    }
    let ewc = s.ewc.as_ref().and_then(|w| {
        let eb = format!("{base}.ewc");
        if s.schedule == Schedule::Joint {
            e(
                &eb,
                "a joint schedule has no earlier tasks to consolidate".into(),
            );
        }
        checked(
            e,
            &format!("{eb}.lambda"),
            w.lambda,
            w.lambda >= 0.0,
            "a penalty strength >= 0",
        );
        let decay = match (w.mode, w.decay) {
            (EwcMode::Separate, Some(_)) => {
                e(
                    &format!("{eb}.decay"),
                    "only used with `mode: online`".into(),
                );
                None
            }
            (EwcMode::Separate, None) => None,
            (EwcMode::Online, d) => {
                let d = d.unwrap_or(1.0);
                checked(
                    e,
                    &format!("{eb}.decay"),
                    d,
                    d > 0.0 && d <= 1.0,
                    "a decay in (0, 1]",
                );
                Some(d)
            }
        };
        // Any method: unit-level scores become weight-level by the rule of
        // `score::ewc_importance`.
        let ib = format!("{eb}.importance");
        let importance = score_spec(&w.importance, &ib, e)?;
        Some(EwcSpec {
            lambda: w.lambda,
            mode: w.mode,
            decay,
            importance,
        })
    });
    let correlate = s.correlate.as_ref().map(|c| {
        let cb = format!("{base}.correlate");
        if s.schedule == Schedule::Joint {
            e(
                &cb,
                "correlations are taken after each task; a joint schedule has one".into(),
            );
        }
        if c.methods.len() + c.squared.len() < 2 {
            e(
                &format!("{cb}.methods"),
                "expected at least two methods to correlate".into(),
            );
        }
        let mut methods = std::collections::BTreeMap::new();
        for (name, m) in &c.methods {
            let mb = format!("{cb}.methods.{name}");
            if name.contains('^') || name.contains('/') {
                e(&mb, "method names may not contain '^' or '/'".into());
            }
            if !matches!(
                m.method,
                ScoreMethod::Fisher
                    | ScoreMethod::Mas
                    | ScoreMethod::Sig
                    | ScoreMethod::Si
                    | ScoreMethod::Random
            ) {
                e(
                    &format!("{mb}.method"),
                    "expected a weight-level method: fisher, mas, sig, si or random".into(),
                );
                continue;
            }
            if let Some(spec) = score_spec(m, &mb, e) {
                methods.insert(name.clone(), spec);
            }
        }
        for (i, q) in c.squared.iter().enumerate() {
            if !c.methods.contains_key(q) {
                e(
                    &format!("{cb}.squared.{i}"),
                    format!(
                        "no method `{q}`; expected one of {:?}",
                        c.methods.keys().collect::<Vec<_>>()
                    ),
                );
            }
        }
        CorrelateSpec {
            methods,
            squared: c.squared.clone(),
            accumulate: c.accumulate,
        }
    });
    if s.final_mask.is_some() && s.freeze == FreezeKind::None {
        e(
            &format!("{base}.final_mask"),
            "only meaningful with a freezing policy (`freeze: until_threshold`, `top_share` or `random`): without one nothing is scored or masked".into(),
        );
    }
    if let (FreezeKind::Random, Some(like)) = (s.freeze, &s.like) {
        let like_final = all.get(like).is_none_or(|o| o.final_mask.unwrap_or(true));
        if s.final_mask.unwrap_or(true) && !like_final {
            e(
                &format!("{base}.like"),
                format!("strategy `{like}` has `final_mask: false`, so it has no mask after the last task to match; give this strategy `final_mask: false` too"),
            );
        }
    }
    if s.isolate && s.freeze == FreezeKind::None {
        e(
            &format!("{base}.isolate"),
            "isolation masks old tasks down to their frozen units; it needs `freeze: until_threshold`, `top_share` or `random`".into(),
        );
    }
    if s.freeze != FreezeKind::TopShare {
        only_with("share", s.share.is_some(), "top_share", e);
    }
    let freeze = match s.freeze {
        FreezeKind::TopShare => {
            only_with("prune", s.prune.is_some(), "until_threshold", e);
            only_with("like", s.like.is_some(), "random", e);
            let share = match s.share {
                Some(v)
                    if checked(
                        e,
                        &format!("{base}.share"),
                        v,
                        v > 0.0 && v <= 1.0,
                        "a share in (0, 1]",
                    ) =>
                {
                    v
                }
                Some(_) => 1.0,
                None => {
                    e(
                        &format!("{base}.share"),
                        "required with `freeze: top_share`, e.g. 0.5".into(),
                    );
                    1.0
                }
            };
            let score = required_score("top_share", e);
            match score {
                Some(score) => FreezeSpec::TopShare {
                    score,
                    share,
                    lr_frozen,
                },
                None => FreezeSpec::None,
            }
        }
        FreezeKind::None => {
            only_with("score", s.score.is_some(), "until_threshold", e);
            only_with("prune", s.prune.is_some(), "until_threshold", e);
            only_with(
                "lr_frozen",
                s.lr_frozen.is_some(),
                "until_threshold` or `freeze: random",
                e,
            );
            only_with("like", s.like.is_some(), "random", e);
            FreezeSpec::None
        }
        FreezeKind::Random => {
            only_with("score", s.score.is_some(), "until_threshold", e);
            only_with("prune", s.prune.is_some(), "until_threshold", e);
            match &s.like {
                None => {
                    e(
                        &format!("{base}.like"),
                        "required with `freeze: random`: the strategy whose frozen counts to match"
                            .into(),
                    );
                    FreezeSpec::None
                }
                Some(like) => {
                    match all.get(like) {
                        Some(o)
                            if matches!(
                                o.freeze,
                                FreezeKind::UntilThreshold | FreezeKind::TopShare
                            ) => {}
                        Some(_) => e(
                            &format!("{base}.like"),
                            format!("strategy `{like}` must use `freeze: until_threshold` or `freeze: top_share`"),
                        ),
                        None => e(
                            &format!("{base}.like"),
                            format!(
                                "no strategy `{like}`; expected one of {:?}",
                                all.keys().collect::<Vec<_>>()
                            ),
                        ),
                    }
                    FreezeSpec::Random {
                        like: like.clone(),
                        lr_frozen,
                    }
                }
            }
        }
        FreezeKind::UntilThreshold => {
            only_with("like", s.like.is_some(), "random", e);
            let score = required_score("until_threshold", e);
            let prune = match &s.prune {
                None => {
                    e(
                        &format!("{base}.prune"),
                        "required with `freeze: until_threshold`".into(),
                    );
                    None
                }
                Some(p) => {
                    checked(
                        e,
                        &format!("{base}.prune.threshold"),
                        p.threshold,
                        p.threshold > 0.0 && p.threshold < 1.0,
                        "an accuracy drop in (0, 1)",
                    );
                    checked(
                        e,
                        &format!("{base}.prune.step_ratio"),
                        p.step_ratio,
                        p.step_ratio > 0.0 && p.step_ratio <= 1.0,
                        "a share in (0, 1]",
                    );
                    Some(PruneSpec {
                        threshold: p.threshold,
                        step_ratio: p.step_ratio,
                        search: p.search,
                    })
                }
            };
            match (score, prune) {
                (Some(score), Some(prune)) => FreezeSpec::UntilThreshold {
                    score,
                    prune,
                    lr_frozen,
                },
                _ => FreezeSpec::None,
            }
        }
    };
    let replay = s.replay.as_ref().map(|r| {
        if r.per_class < 1 {
            e(
                &format!("{base}.replay.per_class"),
                format!("expected an integer >= 1, found {}", r.per_class),
            );
        }
        checked(
            e,
            &format!("{base}.replay.ratio"),
            r.ratio,
            (0.0..1.0).contains(&r.ratio),
            "a share of each batch in [0, 1)",
        );
        if s.schedule == Schedule::Joint {
            e(
                &format!("{base}.replay"),
                "joint training sees every task's data already; drop `replay` or `schedule: joint`"
                    .into(),
            );
        }
        ReplaySpec {
            per_class: r.per_class.max(1) as usize,
            ratio: r.ratio,
            buffer: ReplayBuffer::ClassBalanced,
        }
    });
    let lwf = s.lwf.as_ref().map(|l| {
        let temperature = l.temperature.unwrap_or(2.0);
        checked(
            e,
            &format!("{base}.lwf.lambda"),
            l.lambda,
            l.lambda >= 0.0,
            "a number >= 0",
        );
        checked(
            e,
            &format!("{base}.lwf.temperature"),
            temperature,
            temperature > 0.0,
            "a temperature > 0",
        );
        if s.schedule == Schedule::Joint {
            e(
                &format!("{base}.lwf"),
                "joint training has no old heads to distil; drop `lwf` or `schedule: joint`".into(),
            );
        }
        LwfSpec {
            lambda: l.lambda,
            temperature,
        }
    });
    let retrain = s.retrain.as_ref().map(|r| {
        if !(1..=100_000).contains(&r.epochs) {
            e(
                &format!("{base}.retrain.epochs"),
                format!("expected an integer in 1..=100000, found {}", r.epochs),
            );
        }
        if !matches!(s.freeze, FreezeKind::TopShare | FreezeKind::UntilThreshold) {
            e(
                &format!("{base}.retrain"),
                "retraining trains a task on the units its mask keeps; it needs `freeze: top_share` or `until_threshold`".into(),
            );
        }
        if s.schedule == Schedule::Joint {
            e(
                &format!("{base}.retrain"),
                "joint training has no per-task masks to retrain on; drop `retrain` or `schedule: joint`".into(),
            );
        }
        // A retrained task learned without its silenced units, so only its own mask
        // evaluates what was trained; and EWC's anchors and the correlations would be taken
        // at the model before retraining, not the one the next task starts from.
        if !s.isolate {
            e(
                &format!("{base}.retrain"),
                "a retrained task is evaluated on the units it kept; add `isolate: true`".into(),
            );
        }
        for (key, present) in [("ewc", s.ewc.is_some()), ("correlate", s.correlate.is_some())] {
            if present {
                e(
                    &format!("{base}.{key}"),
                    format!("`{key}` reads each task's model before its retraining, not the one the next task starts from; it is not combined with `retrain`"),
                );
            }
        }
        RetrainSpec {
            epochs: r.epochs.clamp(1, 100_000) as usize,
        }
    });
    Strategy {
        name: name.to_string(),
        freeze,
        joint: s.schedule == Schedule::Joint,
        isolate: s.isolate,
        final_mask: s.final_mask.unwrap_or(true),
        ewc,
        correlate,
        replay,
        lwf,
        retrain,
        point: Vec::new(),
    }
}
