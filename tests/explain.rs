//! `cfpipe explain`: heatmaps of a cached model's LRP input relevance. The relevance written
//! must be what `xai::lrp::lrp` gives for that image (recomputed here from the cached model and
//! split), the explained logit the model's ground-truth logit, and the PNG's colours must follow
//! the relevance's signs. Bad stage ids, indices and heads exit 2 naming what was expected.

mod common;
use cfpipe::nn::model::{DeviceModel, ModelParams};
use cfpipe::nn::tensorio::{self, TensorMapExt};
use cfpipe::xai::lrp::{lrp, LrpRules};
use common::{stderr, stdout, Fixture};
use dfdx::prelude::*;

const STAGE: &str = "rnf/seed0/task1/train";

/// A file of the cached output of stage `id`.
#[test]
fn heatmaps_show_the_lrp_relevance_of_the_true_logit() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let out = f.path().join("explained");
    let out_s = out.to_str().unwrap();
    let args = [
        "explain", p, "--stage", STAGE, "--images", "0,3", "--out", out_s,
    ];

    // Nothing cached yet: the error names the command that computes it.
    let o = f.cli(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(STAGE) && stderr(&o).contains("cfpipe run"),
        "{}",
        stderr(&o)
    );

    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    let o = f.cli(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    // A PNG and an SVG per image, and relevance.json.
    assert!(stdout(&o).contains("wrote 5 files"), "{}", stdout(&o));

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("relevance.json")).unwrap()).unwrap();
    assert_eq!(json["head"], 1);
    let images = json["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);

    // Recompute from the cached model and split, without the explain code path.
    let model_bytes = f.output(STAGE, "model.safetensors");
    let host = ModelParams::from_tensors(tensorio::decode(&model_bytes).unwrap()).unwrap();
    let mut split = tensorio::decode(&f.output("split", "split.safetensors")).unwrap();
    let (xs, x) = split.take_u8("task0.test.x").unwrap();
    let (_, y) = split.take_labels("task0.test.y").unwrap();
    let dim = xs[1];
    assert_eq!(dim, 64);
    let dev = Cpu::default();
    let model = DeviceModel::from_host(&dev, &host);

    for (img, index) in images.iter().zip([0usize, 3]) {
        assert_eq!(img["index"], index);
        assert_eq!(img["label"], y[index]);
        assert_eq!(img["shape"], serde_json::json!([1, 8, 8]));
        let xi = &x[index * dim..(index + 1) * dim];
        let input = model.input(xi);
        let logit = model.logits(&input, 0, None).as_vec()[y[index] as usize];
        let written = |k: &str| img[k].as_f64().unwrap();
        assert!(
            (written("logit") - logit as f64).abs() < 1e-4,
            "{index}: logit {} vs {logit}",
            written("logit")
        );
        let expect = lrp(
            &model,
            &input,
            &y[index..=index],
            0,
            &LrpRules::epsilon(1e-6),
        )
        .input;
        let got: Vec<f64> = img["relevance"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), 64);
        for (g, e) in got.iter().zip(&expect) {
            assert!(
                (g - *e as f64).abs() <= 1e-6 * (1.0 + e.abs() as f64),
                "{g} vs {e}"
            );
        }
        let sum: f64 = got.iter().sum();
        assert!((written("relevance_sum") - sum).abs() < 1e-4);

        // The figure: the image and its heatmap as blocks of `cell` pixels, where
        // relevance.json says they are, under a title naming the class and the logit.
        let png = image::open(out.join(img["png"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        assert_eq!(png.dimensions(), (900, 470));
        let svg = std::fs::read_to_string(out.join(img["svg"].as_str().unwrap())).unwrap();
        let title = format!("class {}, logit {:.3}", img["class"], written("logit"));
        assert!(svg.contains(&title), "{index}: no title {title:?}");
        assert!(svg.contains("LRP dense ε (ε = 1e-6)"), "{index}: no rules");
        let layout = &img["layout"];
        let corner = |k: &str| {
            let v = layout[k].as_array().unwrap();
            (v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32)
        };
        let cell = layout["cell"].as_u64().unwrap() as u32;
        let ((ix, iy), (rx, ry)) = (corner("input"), corner("relevance"));
        assert_eq!(cell, 40, "8×8 pixels in a 320-pixel box");
        let max = got.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(max > 0.0, "{index}: all relevance is zero");
        let (mut red, mut blue) = (0, 0);
        for (p, &r) in got.iter().enumerate() {
            let (row, col) = ((p / 8) as u32, (p % 8) as u32);
            let c = png
                .get_pixel(rx + col * cell + cell / 2, ry + row * cell + cell / 2)
                .0;
            if r / max > 0.01 {
                assert!(
                    c[0] == 255 && c[2] < 255,
                    "{index} px {p}: R={r} drawn {c:?}"
                );
                red += 1;
            } else if r / max < -0.01 {
                assert!(
                    c[2] == 255 && c[0] < 255,
                    "{index} px {p}: R={r} drawn {c:?}"
                );
                blue += 1;
            }
            // The input half shows the stored bytes.
            let g = png
                .get_pixel(ix + col * cell + cell / 2, iy + row * cell + cell / 2)
                .0;
            assert_eq!(g, [xi[p]; 3]);
        }
        assert!(red > 0, "{index}: no positive relevance drawn");
        eprintln!("image {index}: {red} red, {blue} blue pixels, logit {logit:.3}, ΣR {sum:.3}");
    }
}

#[test]
fn bad_stage_index_and_head_exit_2_saying_what_was_expected() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    let out = f.path().join("x");
    let out = out.to_str().unwrap();
    for (extra, expect) in [
        (
            vec!["--stage", "rnf/seed0/task9/train"],
            "expected a train stage id such as",
        ),
        (vec!["--stage", "rnf/seed0/task1/score"], "is a score stage"),
        (
            vec!["--stage", STAGE, "--images", "0,30"],
            "image index 30 is out of range: task 1's test split has 30 images",
        ),
        (
            vec!["--stage", STAGE, "--head", "9"],
            "head 9 does not exist",
        ),
        (vec!["--stage", STAGE, "--head", "0"], "numbered from 1"),
        (vec!["--stage", STAGE, "--rule", "bogus"], "expected one of"),
    ] {
        let mut args = vec!["explain", p, "--out", out];
        args.extend(&extra);
        let o = f.cli(&args);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(expect), "{extra:?}: {}", stderr(&o));
    }
    assert!(
        !std::path::Path::new(out).exists(),
        "nothing written on errors"
    );
}

/// A conv model goes through `lrp::conv` (z⁺ on conv layers by default) and its input
/// normalisation; the relevance written is still exactly what `xai::lrp::lrp` returns.
#[test]
fn conv_models_are_explained_through_the_same_lrp() {
    let conv = "model:
  kind: cnn
  input_shape: [1, 8, 8]
  layers:
    - conv: {out_channels: 4, kernel: 3, padding: 1}
    - max_pool: {kernel: 2}
    - flatten
    - dense: {units: 8}
  normalize: {mean: [0.2], std: [0.25]}
";
    let text = common::PIPELINE.replace("model:\n  kind: mlp\n  hidden: [16, 12]\n", conv);
    assert!(text.contains("kind: cnn"));
    let f = Fixture::with_pipeline(&text);
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    let stage = "naive/seed0/task2/train";
    let out = f.path().join("conv");
    // Task 2's model explained by task 1's head, on task 1's test images.
    let o = f.cli(&[
        "explain",
        p,
        "--stage",
        stage,
        "--head",
        "1",
        "--images",
        "5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("relevance.json")).unwrap()).unwrap();
    let img = &json["images"][0];

    let host = f.model_of(stage);
    let mut split = tensorio::decode(&f.output("split", "split.safetensors")).unwrap();
    let (_, x) = split.take_u8("task0.test.x").unwrap();
    let (_, y) = split.take_labels("task0.test.y").unwrap();
    let model = DeviceModel::from_host(&Cpu::default(), &host);
    let input = model.input(&x[5 * 64..6 * 64]);
    let r = lrp(&model, &input, &y[5..6], 0, &LrpRules::epsilon(1e-6));
    let got: Vec<f64> = img["relevance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), 64);
    assert!(got.iter().any(|&v| v != 0.0));
    for (g, e) in got.iter().zip(&r.input) {
        assert!(
            (g - *e as f64).abs() <= 1e-6 * (1.0 + e.abs() as f64),
            "{g} vs {e}"
        );
    }
    assert!((img["logit"].as_f64().unwrap() - r.explained[0] as f64).abs() < 1e-5);
    let png = image::open(out.join("test5.png")).unwrap();
    assert_eq!((png.width(), png.height()), (900, 470));
    let svg = std::fs::read_to_string(out.join("test5.svg")).unwrap();
    assert!(
        svg.contains("conv z⁺"),
        "a conv model's figure names its conv rule"
    );
}

#[test]
fn explain_is_a_cached_stage_so_a_second_call_computes_nothing_and_device_applies() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    let before = common::published_entries(&f.cache_dir());
    let out = f.path().join("x");
    let args = ["explain", p, "--stage", STAGE, "--images", "1,2", "--out"];
    let explain = |dir: &str, extra: &[&str]| {
        let mut a = args.to_vec();
        a.push(dir);
        a.extend(extra);
        f.cli(&a)
    };
    let first = explain(out.to_str().unwrap(), &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("relevance computed"),
        "{}",
        stdout(&first)
    );
    assert_eq!(common::published_entries(&f.cache_dir()), before + 1);

    // The same images again: served from the cache, the same bytes written.
    let again = f.path().join("y");
    let second = explain(again.to_str().unwrap(), &[]);
    assert!(
        stdout(&second).contains("relevance cached"),
        "{}",
        stdout(&second)
    );
    assert_eq!(common::published_entries(&f.cache_dir()), before + 1);
    for file in ["test1.png", "test1.svg", "test2.png", "relevance.json"] {
        assert_eq!(
            std::fs::read(out.join(file)).unwrap(),
            std::fs::read(again.join(file)).unwrap(),
            "{file}"
        );
    }
    // Other images are another stage.
    let third = f.cli(&[
        "explain",
        p,
        "--stage",
        STAGE,
        "--images",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        stdout(&third).contains("relevance computed"),
        "{}",
        stdout(&third)
    );

    // `--device` is parsed as `run` parses it: a CPU-only build refuses CUDA, as bad input.
    if !cfg!(feature = "cuda") {
        let o = explain(out.to_str().unwrap(), &["--device", "cuda"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("--features cuda"), "{}", stderr(&o));
    }
}
