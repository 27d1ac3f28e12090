//! The repository's image pipelines themselves (`pipelines/imagenet_adience.yaml`,
//! `cifar_split.yaml`, `adience_split.yaml`), run through `--set` overrides against tiny
//! fixture datasets written here: an ImageFolder tree of JPEGs, a fake Adience tree with its
//! fold files, CIFAR binaries with a few records, and a width-reduced torchvision-named VGG-16.
//! Asserts the stages that ran, that a rerun runs none, that moving the data keeps every key,
//! and that `show` prints every task's accuracy.

mod common;

use cfpipe::nn::arch;
use cfpipe::nn::model::ModelParams;
use cfpipe::nn::tensorio::{decode, encode, HostTensor};
use cfpipe::nn::torchvision;
use cfpipe::stages::artifacts::read_model;
use image::{Rgb, RgbImage};
use rand::SeedableRng;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Output;

fn repo_pipeline(name: &str) -> String {
    format!("{}/pipelines/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A JPEG whose colour depends on its class, with a little per-image variation.
fn save_jpeg(path: &Path, class: usize, i: usize) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let base = [
        (class * 80 % 256) as u8,
        (255 - class * 60 % 256) as u8,
        (i * 30) as u8,
    ];
    RgbImage::from_fn(40, 36, |x, y| {
        Rgb([
            base[0].wrapping_add((x / 8) as u8),
            base[1],
            base[2].wrapping_add((y / 8) as u8),
        ])
    })
    .save(path)
    .unwrap();
}

/// ImageFolder trees `train/` and `val/` with `classes` classes of `n` images each.
fn imagenet_tree(root: &Path, classes: usize, n: usize) {
    for part in ["train", "val"] {
        for c in 0..classes {
            for i in 0..n {
                save_jpeg(&root.join(format!("{part}/n{c:04}/img{i}.JPEG")), c, i);
            }
        }
    }
}

const ADIENCE_HEADER: &str = "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\tfiducial_score";
const AGES: [&str; 8] = [
    "(0, 2)",
    "(4, 6)",
    "(8, 12)",
    "(15, 20)",
    "(25, 32)",
    "(38, 43)",
    "(48, 53)",
    "(60, 100)",
];

/// A fake Adience root with faces under `aligned/`: `folds` fold files, `per_class` faces of
/// every age group in each.
fn adience_tree(root: &Path, folds: usize, per_class: usize) {
    for k in 0..folds {
        let mut text = format!("{ADIENCE_HEADER}\n");
        for (c, age) in AGES.iter().enumerate() {
            for i in 0..per_class {
                let user = format!("u{k}");
                let face = 100 * k + 10 * c + i;
                let image = format!("im{face}.jpg");
                text.push_str(&format!(
                    "{user}\t{image}\t{face}\t{age}\tf\t0\t0\t10\t10\t0\t0\t50\n"
                ));
                save_jpeg(
                    &root.join(format!(
                        "aligned/{user}/landmark_aligned_face.{face}.{image}"
                    )),
                    c,
                    i,
                );
            }
        }
        fs::write(root.join(format!("fold_{k}_data.txt")), text).unwrap();
    }
}

/// A CIFAR record: label byte(s), then 3072 pixel bytes depending on the first label.
fn cifar_record(labels: &[u8], i: usize) -> Vec<u8> {
    let mut r = labels.to_vec();
    let c = *labels.last().unwrap() as usize;
    for ch in 0..3 {
        r.extend((0..1024).map(|p| ((c * 23 + ch * 50 + (p % 32) + i) % 256) as u8));
    }
    r
}

/// CIFAR-10 with `n` records of every class per batch file; CIFAR-100 likewise for classes
/// 0..20 (coarse label 0).
fn cifar_trees(root: &Path, n: usize) {
    let c10 = root.join("cifar-10-batches-bin");
    fs::create_dir_all(&c10).unwrap();
    let batch = |classes: usize, two: bool| -> Vec<u8> {
        (0..classes)
            .flat_map(|c| (0..n).map(move |i| (c, i)))
            .flat_map(|(c, i)| {
                let labels: Vec<u8> = if two { vec![0, c as u8] } else { vec![c as u8] };
                cifar_record(&labels, i)
            })
            .collect()
    };
    for b in 1..=5 {
        fs::write(c10.join(format!("data_batch_{b}.bin")), batch(10, false)).unwrap();
    }
    fs::write(c10.join("test_batch.bin"), batch(10, false)).unwrap();
    let c100 = root.join("cifar-100-binary");
    fs::create_dir_all(&c100).unwrap();
    fs::write(c100.join("train.bin"), batch(20, true)).unwrap();
    fs::write(c100.join("test.bin"), batch(20, true)).unwrap();
}

fn cfpipe(cmd: &str, pipeline: &str, cache: &Path, sets: &[String]) -> Output {
    let mut c = common::cfpipe();
    c.arg(cmd).arg(pipeline).arg("--cache").arg(cache);
    if cmd == "run" {
        c.arg("--quiet");
    }
    for s in sets {
        c.arg("--set").arg(s);
    }
    c.output().unwrap()
}

fn ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &common::stderr(o);
    assert!(o.status.success(), "{out}");
    out
}

/// `N stages: X ran, Y cached` → (N, X + Y) on a fresh run: every stage computed or met an
/// identical key computed earlier in the same run (early cutoff: e.g. an evaluation whose
/// model came out bit-identical in two strategies).
fn fresh(out: &str) -> (usize, usize) {
    let (n, x) = ran(out);
    let y: usize = out
        .lines()
        .find(|l| l.contains(" stages: "))
        .and_then(|l| l.split("ran, ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|y| y.parse().ok())
        .unwrap();
    assert!(x > 0, "{out}");
    (n, x + y)
}

/// `N stages: X ran, Y cached` → (N, X).
fn ran(out: &str) -> (usize, usize) {
    let line = out
        .lines()
        .find(|l| l.contains(" stages: "))
        .unwrap_or_else(|| panic!("no summary line in {out}"));
    let n: usize = line.split(' ').next().unwrap().parse().unwrap();
    let x: usize = line
        .split("stages: ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (n, x)
}

/// The cache entry of stage `id`.
fn entry(cache: &Path, id: &str) -> std::path::PathBuf {
    fs::read_dir(cache.join("entries"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .find(|e| {
            fs::read_to_string(e.join("manifest.json"))
                .is_ok_and(|m| m.contains(&format!("\"stage_id\": \"{id}\"")))
        })
        .unwrap_or_else(|| panic!("no entry for {id}"))
}

/// The parameters stage `id` ran with, from its manifest.
fn params(cache: &Path, id: &str) -> serde_json::Value {
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(entry(cache, id).join("manifest.json")).unwrap()).unwrap();
    m["params"].clone()
}

/// The split's stored sample shape.
fn stored_shape(cache: &Path) -> serde_json::Value {
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(entry(cache, "split").join("out/split.json")).unwrap())
            .unwrap();
    meta["sample_shape"].clone()
}

fn sets(list: &[(&str, String)]) -> Vec<String> {
    list.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// `show` lists each strategy's matrix with a row per task and a value in every cell seen.
fn assert_show_has_tasks(out: &str, strategies: &[&str], tasks: usize) {
    for s in strategies {
        assert!(out.contains(&format!("{s} / seed 0")), "{out}");
    }
    let row = format!("task {tasks}");
    let last = out
        .lines()
        .find(|l| l.starts_with(&row))
        .unwrap_or_else(|| panic!("{out}"));
    let numbers = last
        .split_whitespace()
        .filter(|w| w.trim_end_matches('%').parse::<f64>().is_ok())
        .count();
    // The last task's row: its accuracy, the mean and the free capacity.
    assert!(numbers >= 3, "{last}\n{out}");
    let first = out.lines().find(|l| l.starts_with("task 1")).unwrap();
    assert!(
        first
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse::<f64>()
            .is_ok(),
        "{out}"
    );
}

#[test]
fn the_imagenet_adience_pipeline_runs_on_fixtures_and_reruns_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // More classes than a byte holds: task 1's labels travel as u16 (ImageNet has 1000).
    let classes = 300;
    imagenet_tree(&data.join("imagenet"), classes, 1);
    adience_tree(&data.join("adience"), 2, 2);
    let a = arch::vgg16(32, 16, 3);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut p = ModelParams::init_arch(&a, &mut rng);
    p.push_head(classes, &mut rng);
    fs::write(
        data.join("vgg.safetensors"),
        encode(&torchvision::vgg16_to_tensors(&p)),
    )
    .unwrap();
    let overrides = |data: &Path| {
        let d = data.display();
        sets(&[
            ("datasets.imagenet.train", format!("{d}/imagenet/train")),
            ("datasets.imagenet.test", format!("{d}/imagenet/val")),
            ("datasets.imagenet.size", "36".into()),
            ("datasets.imagenet.shorter_side", "36".into()),
            ("datasets.adience.root", format!("{d}/adience")),
            ("datasets.adience.train_folds", "[0]".into()),
            ("datasets.adience.test_folds", "[1]".into()),
            ("datasets.adience.size", "36".into()),
            ("datasets.adience.shorter_side", "36".into()),
            ("model.input_size", "32".into()),
            ("training.augment.crop.size", "32".into()),
            ("model.width_divisor", "16".into()),
            ("model.pretrained", format!("{d}/vgg.safetensors")),
            ("training.epochs", "1".into()),
            ("training.batch_size", "8".into()),
            ("seeds", "[0]".into()),
            ("strategies.rnf.score.reference_size", "4".into()),
        ])
    };
    let pipeline = repo_pipeline("imagenet_adience.yaml");
    let cache = dir.path().join("cache");
    let out = ok(&cfpipe("run", &pipeline, &cache, &overrides(&data)));
    assert_eq!(fresh(&out), (13, 13), "{out}");
    // split; task 1 train + evaluate shared; naive task 2 train + evaluate; rnf score, prune,
    // mask after both tasks and its own task-2 train + evaluate.
    let out = ok(&cfpipe("run", &pipeline, &cache, &overrides(&data)));
    assert_eq!(ran(&out), (13, 0), "{out}");
    // The key holds the data's relative layout and content, not where it lives.
    let moved = dir.path().join("elsewhere");
    fs::rename(&data, &moved).unwrap();
    let out = ok(&cfpipe("run", &pipeline, &cache, &overrides(&moved)));
    assert_eq!(ran(&out), (13, 0), "{out}");
    let out = ok(&cfpipe("show", &pipeline, &cache, &overrides(&moved)));
    assert_show_has_tasks(&out, &["naive", "rnf"], 2);
    // The split read both datasets.
    let entry = |id: &str| entry(&cache, id);
    let log = fs::read_to_string(entry("split").join("aux/log.txt")).unwrap();
    assert!(
        log.contains("dataset adience: 8 classes, 16 train, 16 test"),
        "{log}"
    );
    assert!(
        log.contains("dataset imagenet: 300 classes, 300 train, 300 test"),
        "{log}"
    );
    let split = decode(&fs::read(entry("split").join("out/split.safetensors")).unwrap()).unwrap();
    match &split["task0.test.y"] {
        HostTensor::U16 { data, .. } => {
            assert_eq!(data.iter().max(), Some(&(classes as u16 - 1)))
        }
        other => panic!("task 1's 300 labels are not U16: {:?}", other.shape()),
    }
    assert!(matches!(split["task1.test.y"], HostTensor::U8 { .. }));
    // `epochs: 0`: task 1 is the pretrained file, bit for bit.
    let t1 = entry("naive/seed0/task1/train");
    let trained = read_model(&t1.join("out"), "model").unwrap();
    assert!(trained.trunk == p.trunk, "task 1's trunk moved");
    assert!(trained.heads == p.heads, "task 1's head moved");
    // ...and task 2 did train its shared trunk (naive finetuning).
    let t2 = entry("naive/seed0/task2/train");
    let after = read_model(&t2.join("out"), "model").unwrap();
    assert!(after.trunk != p.trunk, "task 2 did not train the trunk");
    // The A.5 protocol: 36×36 stored, 32×32 random crops and mirrors, balanced resampling,
    // ten-crop testing (prune too).
    assert_eq!(stored_shape(&cache), serde_json::json!([3, 36, 36]));
    let train = params(&cache, "naive/seed0/task2/train");
    assert_eq!(
        train["training"]["augment"],
        serde_json::json!({"crop": {"size": 32}, "hflip": true})
    );
    assert_eq!(train["training"]["sampling"], "balanced");
    assert_eq!(params(&cache, "naive/seed0/task2/evaluate")["crops"], "ten");
    assert_eq!(params(&cache, "rnf/seed0/task2/prune")["crops"], "ten");
    let log: serde_json::Value =
        serde_json::from_slice(&fs::read(t2.join("out/train.json")).unwrap()).unwrap();
    let counts = &log["epochs"][0]["class_counts"];
    assert_eq!(counts.as_array().map(Vec::len), Some(8), "{log}");
    // ImageFolder inputs are class folders: a changed, an added and a removed image each
    // make the split rerun, naming the folder.
    let img = moved.join("imagenet/val/n0005/img0.JPEG");
    let original = fs::read(&img).unwrap();
    let mut changed = original.clone();
    *changed.last_mut().unwrap() ^= 1;
    let extra = moved.join("imagenet/train/n0007/img9.JPEG");
    for (what, folder) in [
        ("changed", "imagenet/1/n0005"),
        ("added", "imagenet/0/n0007"),
        ("removed", "imagenet/1/n0005"),
    ] {
        match what {
            "changed" => fs::write(&img, &changed).unwrap(),
            "added" => {
                fs::write(&img, &original).unwrap();
                fs::copy(moved.join("imagenet/train/n0007/img0.JPEG"), &extra).unwrap();
            }
            _ => {
                fs::remove_file(&extra).unwrap();
                fs::remove_file(&img).unwrap();
            }
        }
        let out = ok(&cfpipe("status", &pipeline, &cache, &overrides(&moved)));
        let split = out
            .lines()
            .find(|l| l.starts_with("split"))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(split.contains(folder), "{what}: {out}");
    }
}

#[test]
fn the_cifar_split_pipeline_runs_on_fixtures_and_reruns_nothing() {
    let dir = tempfile::tempdir().unwrap();
    cifar_trees(dir.path(), 2);
    let d = dir.path().display();
    let overrides = sets(&[
        ("datasets.cifar10.root", format!("{d}/cifar-10-batches-bin")),
        ("datasets.cifar100.root", format!("{d}/cifar-100-binary")),
        ("tasks.2.classes", "[10, 11, 12, 13, 14, 15, 16, 17, 18, 19]".into()),
        (
            "model.layers",
            "[{conv: {out_channels: 4, kernel: 3, padding: 1}}, {max_pool: {kernel: 4}}, flatten, {dense: {units: 8}}]".into(),
        ),
        ("training.epochs", "1".into()),
        ("seeds", "[0]".into()),
        ("strategies.rnf.score.reference_size", "8".into()),
    ]);
    // Keep the two tasks the fixture's CIFAR-100 covers (classes 0..20).
    let mut overrides = overrides;
    overrides.push(
        "tasks=[{dataset: cifar10, classes: all}, {dataset: cifar100, classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}, {dataset: cifar100, classes: [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]}]".into(),
    );
    overrides.retain(|s| !s.starts_with("tasks.2"));
    let pipeline = repo_pipeline("cifar_split.yaml");
    let cache = dir.path().join("cache");
    let out = ok(&cfpipe("run", &pipeline, &cache, &overrides));
    // split; task 1 train + evaluate shared; naive 2 × (train, evaluate); rnf 3 × (score,
    // prune, mask) and 2 × (train, evaluate).
    assert_eq!(fresh(&out), (20, 20), "{out}");
    let out = ok(&cfpipe("run", &pipeline, &cache, &overrides));
    assert_eq!(ran(&out), (20, 0), "{out}");
    let out = ok(&cfpipe("show", &pipeline, &cache, &overrides));
    assert_show_has_tasks(&out, &["naive", "rnf"], 3);
    // CIFAR's augmentation: zero padding 4, random 32×32 windows, mirrors; stored at 32.
    assert_eq!(stored_shape(&cache), serde_json::json!([3, 32, 32]));
    let train = params(&cache, "naive/seed0/task2/train");
    assert_eq!(
        train["training"]["augment"],
        serde_json::json!({"crop": {"padding": 4}, "hflip": true})
    );
    assert!(train["training"].get("sampling").is_none(), "{train}");
    assert!(params(&cache, "naive/seed0/task2/evaluate")
        .get("crops")
        .is_none());
    // One changed pixel in CIFAR-100's test file: the split says why it reruns.
    let test_bin = dir.path().join("cifar-100-binary/test.bin");
    let mut bytes = fs::read(&test_bin).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    fs::write(&test_bin, bytes).unwrap();
    let out = ok(&cfpipe("status", &pipeline, &cache, &overrides));
    let split = out
        .lines()
        .find(|l| l.starts_with("split"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(split.contains("cifar100/0/test.bin"), "{out}");
    let out = ok(&cfpipe("run", &pipeline, &cache, &overrides));
    assert!(ran(&out).1 >= 1, "{out}");
}

#[test]
fn the_adience_split_pipeline_runs_mixed_and_ordered() {
    let dir = tempfile::tempdir().unwrap();
    adience_tree(&dir.path().join("adience"), 2, 2);
    // ImageNet weights with a 1000-way classifier.6 that `pretrained_head: drop` ignores.
    let a = arch::vgg16(32, 16, 3);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut p = ModelParams::init_arch(&a, &mut rng);
    p.push_head(1000, &mut rng);
    fs::write(
        dir.path().join("vgg.safetensors"),
        encode(&torchvision::vgg16_to_tensors(&p)),
    )
    .unwrap();
    let d = dir.path().display();
    let base = sets(&[
        ("model.pretrained", format!("{d}/vgg.safetensors")),
        ("dataset.root", format!("{d}/adience")),
        ("dataset.train_folds", "[0]".into()),
        ("dataset.test_folds", "[1]".into()),
        ("dataset.size", "36".into()),
        ("dataset.shorter_side", "36".into()),
        ("model.input_size", "32".into()),
        ("training.augment.crop.size", "32".into()),
        ("model.width_divisor", "16".into()),
        ("training.epochs", "1".into()),
        ("training.batch_size", "8".into()),
        ("seeds", "[0]".into()),
        ("strategies.rnf.score.reference_size", "4".into()),
    ]);
    let pipeline = repo_pipeline("adience_split.yaml");
    let cache = dir.path().join("cache");
    // Without the weights, nothing runs and the error says how to make them.
    let mut missing = base.clone();
    missing[0] = "model.pretrained=/nonexistent/vgg16.safetensors".into();
    let o = cfpipe("run", &pipeline, &cache, &missing);
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "model.pretrained: weights file /nonexistent/vgg16.safetensors does not exist; convert"
        ),
        "{err}"
    );
    let out = ok(&cfpipe("run", &pipeline, &cache, &base));
    assert_eq!(fresh(&out), (13, 13), "{out}");
    let mut ordered = base.clone();
    ordered.push("tasks=[[0, 1, 2, 3], [4, 5, 6, 7]]".into());
    // Another split, so every stage is new.
    let out = ok(&cfpipe("run", &pipeline, &cache, &ordered));
    assert_eq!(fresh(&out), (13, 13), "{out}");
    let out = ok(&cfpipe("run", &pipeline, &cache, &base));
    assert_eq!(ran(&out), (13, 0), "{out}");
    let out = ok(&cfpipe("show", &pipeline, &cache, &ordered));
    assert_show_has_tasks(&out, &["naive", "rnf"], 2);
    assert_eq!(stored_shape(&cache), serde_json::json!([3, 36, 36]));
    assert_eq!(params(&cache, "naive/seed0/task2/evaluate")["crops"], "ten");
    // Training at the stored size without crops is refused before any work, located.
    let mut uncropped = base.clone();
    uncropped.retain(|s| !s.starts_with("training.augment"));
    uncropped.push("training.augment={hflip: true}".into());
    let o = cfpipe("run", &pipeline, &cache, &uncropped);
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("training.augment: images are stored at 36×36 but the model takes 32×32: train on random crops with `augment: {crop: {size: 32}}`"),
        "{err}"
    );
    // With a learning rate too small to move a weight, task 1's model is the ImageNet trunk bit
    // for bit under a fresh four-way head: the pretrained trunk was loaded, its head dropped.
    let mut still = base.clone();
    still.push("training.lr=1.0e-30".into());
    let still_cache = dir.path().join("still");
    ok(&cfpipe("run", &pipeline, &still_cache, &still));
    let t1 = entry(&still_cache, "naive/seed0/task1/train");
    let trained = read_model(&t1.join("out"), "model").unwrap();
    assert!(
        trained.trunk == p.trunk,
        "task 1 did not start from the pretrained trunk"
    );
    assert_eq!(trained.heads.len(), 1);
    assert_eq!(
        trained.heads[0].out_dim, 4,
        "task 1's head is its own, not ImageNet's"
    );
}

/// The cache entry of stage `id` (any of the ids a merged stage answers to).
fn entry_of(cache: &Path, ids: &[&str]) -> std::path::PathBuf {
    fs::read_dir(cache.join("entries"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .find(|e| {
            fs::read_to_string(e.join("manifest.json")).is_ok_and(|m| {
                ids.iter()
                    .any(|id| m.contains(&format!("\"stage_id\": \"{id}\"")))
            })
        })
        .unwrap_or_else(|| panic!("no entry for {ids:?}"))
}

#[test]
fn the_saliency_freeze_pipeline_runs_on_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    cifar_trees(dir.path(), 3);
    let d = dir.path().display();
    let mut overrides = sets(&[
        ("dataset.root", format!("{d}/cifar-100-binary")),
        ("model.width_divisor", "16".into()),
        ("training.epochs", "1".into()),
        ("training.batch_size", "8".into()),
        ("seeds", "[0]".into()),
    ]);
    for s in [
        "saliency_mse_25",
        "saliency_mse_50",
        "saliency_mse_75",
        "saliency_pearson_50",
    ] {
        overrides.push(format!("strategies.{s}.score.reference_size=8"));
        overrides.push(format!(
            "strategies.{s}.score.visualize={{steps: 3, lr: 0.1, init_scale: 0.1}}"
        ));
    }
    let pipeline = repo_pipeline("saliency_freeze.yaml");
    let cache = dir.path().join("cache");
    // Through the library, to see which stages computed: split; task 1 train + evaluate shared
    // by all six sequential strategies; naive task 2 train + evaluate; after task 1 one
    // visualisation shared by all four saliency strategies, one score shared by the three MSE
    // shares and one Pearson score, five masks; five task-2 trainings and evaluations; joint
    // train + evaluate. `final_mask: false`: nothing scored, visualised or masked after task 2.
    let report = run_lib(&pipeline, &cache, &overrides);
    assert_eq!(report.events.len(), 25, "{:?}", report.ran());
    assert_eq!(report.ran().len() + report.cached().len(), 25);
    let ids_of = |kind: &str| -> Vec<BTreeSet<String>> {
        report
            .events
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| {
                std::iter::once(e.id.clone())
                    .chain(e.aliases.clone())
                    .collect()
            })
            .collect()
    };
    let saliency = [
        "saliency_mse_25",
        "saliency_mse_50",
        "saliency_mse_75",
        "saliency_pearson_50",
    ];
    let visualize = ids_of("visualize");
    assert_eq!(
        visualize,
        vec![saliency
            .iter()
            .map(|s| format!("{s}/seed0/task1/visualize"))
            .collect::<BTreeSet<_>>()],
        "one visualisation, shared by MSE and Pearson"
    );
    let ran_all = report.ran_all_ids();
    assert!(ran_all.contains("saliency_pearson_50/seed0/task1/visualize"));
    let mut scores = ids_of("score");
    scores.sort();
    assert_eq!(
        scores,
        vec![
            saliency[..3]
                .iter()
                .map(|s| format!("{s}/seed0/task1/score"))
                .collect::<BTreeSet<_>>(),
            ["saliency_pearson_50/seed0/task1/score".to_string()].into(),
        ]
    );
    assert!(scores.iter().flatten().all(|id| ran_all.contains(id)));
    assert_eq!(ids_of("mask").len(), 5);
    assert!(
        report.events.iter().all(|e| !(e.id.contains("task2/")
            && ["mask", "score", "visualize"].contains(&e.kind.as_str()))),
        "final_mask: false declares nothing after task 2"
    );
    let out = ok(&cfpipe("run", &pipeline, &cache, &overrides));
    assert_eq!(ran(&out), (25, 0), "{out}");
    let out = ok(&cfpipe("show", &pipeline, &cache, &overrides));
    // Not computed by design is neither 0 nor missing.
    assert!(
        out.contains("free capacity after task 2: not computed (final_mask: false)"),
        "{out}"
    );
    assert!(!out.contains("missing"), "{out}");
    assert_show_has_tasks(
        &out,
        &[
            "naive",
            "saliency_mse_25",
            "saliency_mse_50",
            "saliency_mse_75",
            "saliency_pearson_50",
            "random_50",
        ],
        2,
    );
    // The shares freeze round(share · filters) of each conv layer and no dense unit
    // (`dense: free`); random freezing matches MSE-50's counts.
    let mask = |s: &str| -> serde_json::Value {
        let e = entry_of(&cache, &[&format!("{s}/seed0/task1/mask")]);
        serde_json::from_slice(&fs::read(e.join("out/mask.json")).unwrap()).unwrap()
    };
    let counts = |v: &serde_json::Value, k: &str| -> Vec<u64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let units = counts(&mask("saliency_mse_50"), "units_per_layer");
    assert_eq!(
        units,
        [4, 4, 8, 8, 16, 16, 16, 32, 32, 32, 32, 32, 32, 32, 32]
    );
    for (s, share) in [
        ("saliency_mse_25", 0.25),
        ("saliency_mse_50", 0.5),
        ("saliency_mse_75", 0.75),
        ("saliency_pearson_50", 0.5),
    ] {
        let frozen = counts(&mask(s), "frozen_per_layer");
        let want: Vec<u64> = units
            .iter()
            .enumerate()
            .map(|(l, &u)| {
                if l < 13 {
                    (share * u as f64).round() as u64
                } else {
                    0
                }
            })
            .collect();
        assert_eq!(frozen, want, "{s}");
    }
    assert_eq!(
        counts(&mask("random_50"), "newly_frozen_per_layer"),
        counts(&mask("saliency_mse_50"), "newly_frozen_per_layer")
    );
    // The score stage keeps its maps and logs that the visualisations raised the filters'
    // activations; MSE and Pearson pick different filters.
    let score = entry_of(
        &cache,
        &[
            "saliency_mse_25/seed0/task1/score",
            "saliency_mse_50/seed0/task1/score",
        ],
    );
    let maps = decode(&fs::read(score.join("out/saliency.safetensors")).unwrap()).unwrap();
    assert_eq!(maps["class_maps"].shape(), &[10, 32, 32]);
    assert_eq!(maps["visualizations.12"].shape(), &[32, 32, 32]);
    let log = fs::read_to_string(score.join("aux/log.txt")).unwrap();
    assert!(
        log.contains("conv layer 12: mean visualised activation"),
        "{log}"
    );
    let frozen_flags = |s: &str| {
        let e = entry_of(&cache, &[&format!("{s}/seed0/task1/mask")]);
        fs::read(e.join("out/units.safetensors")).unwrap()
    };
    assert_ne!(
        frozen_flags("saliency_mse_50"),
        frozen_flags("saliency_pearson_50")
    );
    // The visualize stage stores `[O, C, H, W]` images per conv layer.
    let vis = entry_of(&cache, &["saliency_mse_25/seed0/task1/visualize"]);
    let vis = decode(&fs::read(vis.join("out/visualize.safetensors")).unwrap()).unwrap();
    assert_eq!(vis["images.12"].shape(), &[32, 3, 32, 32]);
    assert_eq!(vis["after.0"].shape(), &[4]);
    assert!(!vis.contains_key("images.13"), "dense layers have none");

    // The report shows the final free capacity as not computed, and exports no value for it.
    let rep = dir.path().join("report");
    let mut c = common::cfpipe();
    c.arg("report").arg(&pipeline).arg("--cache").arg(&cache);
    c.arg("--out").arg(&rep);
    for s in &overrides {
        c.arg("--set").arg(s);
    }
    let out = ok(&c.output().unwrap());
    assert!(out.contains("wrote"), "{out}");
    let md = fs::read_to_string(rep.join("report.md")).unwrap();
    assert!(
        md.lines()
            .any(|l| l.starts_with("| saliency_mse_50 |") && l.ends_with("| not computed |")),
        "{md}"
    );
    let summary = fs::read_to_string(rep.join("summary.csv")).unwrap();
    assert!(
        summary.contains("saliency_mse_50,free_capacity,1,"),
        "{summary}"
    );
    assert!(
        !summary.contains("saliency_mse_50,free_capacity,2,"),
        "{summary}"
    );
    assert!(summary.contains("naive,free_capacity,2,"), "{summary}");

    // `final_mask: true` (the default) declares the stages after the last task again: a
    // visualisation and a score per saliency strategy (their task-2 models differ) and five
    // masks, 13 more; everything of the first run stays cached.
    let mut all = overrides.clone();
    for s in saliency.iter().chain(&["random_50"]) {
        all.push(format!("strategies.{s}.final_mask=true"));
    }
    let report = run_lib(&pipeline, &cache, &all);
    assert_eq!(report.events.len(), 38);
    assert_eq!(report.ran().len(), 13, "{:?}", report.ran());
    assert!(report.ran_all_ids().iter().all(|id| id.contains("/task2/")));
    let visualize: Vec<_> = report
        .events
        .iter()
        .filter(|e| e.kind == "visualize")
        .collect();
    assert_eq!(visualize.len(), 5, "one after task 1, four after task 2");
}

/// Run `pipeline` with `--set` overrides through the library executor, which reports every
/// stage's id, aliases, kind and outcome.
fn run_lib(pipeline: &str, cache: &Path, sets: &[String]) -> cfpipe::exec::RunReport {
    let (_, dag) =
        cfpipe::load(Path::new(pipeline), sets, cfpipe::spec::DataCheck::Required).unwrap();
    let cache = cfpipe::cache::Cache::open(cache).unwrap();
    let registry = cfpipe::stages::registry();
    let report = cfpipe::exec::Executor::new(&cache, &registry, Default::default()).run(&dag);
    assert!(report.failed().is_empty(), "{:?}", report.failed());
    report
}

#[test]
fn image_pipelines_compile_without_data_and_name_missing_data() {
    let cache = tempfile::tempdir().unwrap();
    for p in [
        "imagenet_adience.yaml",
        "adience_split.yaml",
        "cifar_split.yaml",
    ] {
        let o = cfpipe("dag", &repo_pipeline(p), cache.path(), &[]);
        let out = ok(&o);
        assert!(out.contains("split  [split]"), "{p}: {out}");
    }
    // Task 1 of imagenet_adience is ImageNet's own head; without it there is nothing to keep.
    let o = cfpipe(
        "dag",
        &repo_pipeline("imagenet_adience.yaml"),
        cache.path(),
        &["model.pretrained_head=drop".into()],
    );
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "tasks.0.epochs: 0 epochs only for task 1 with `model.pretrained` and its head kept"
        ),
        "{err}"
    );
    let o = cfpipe(
        "status",
        &repo_pipeline("cifar_split.yaml"),
        cache.path(),
        &["datasets.cifar10.root=/nonexistent/cifar10".into()],
    );
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("datasets.cifar10: CIFAR-10: /nonexistent/cifar10 does not exist; download"),
        "{err}"
    );
}

#[test]
fn image_dataset_mistakes_are_located_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"datasets:
  c10: {format: cifar10, root: /nonexistent/c10}
  c100: {format: cifar100, root: /nonexistent/c100, labels: coarse}
  faces: {format: adience, root: /nonexistent/a, train_folds: [0, 1], test_folds: [1], size: 64}
  spare: {format: cifar10, root: /nonexistent/c10}
tasks:
  - {dataset: c10, classes: all}
  - {dataset: c100, classes: [3, 20]}
  - {dataset: c100, classes: [3, 4]}
  - {dataset: imagenet, classes: all}
  - {dataset: faces, classes: all}
model: {kind: small_cnn, input_shape: [3, 32, 32]}
training: {optimizer: adam, lr: 0.001, batch_size: 8, epochs: 1}
seeds: [0]
strategies: {naive: {freeze: none}}
"#;
    let pipeline = dir.path().join("bad.yaml");
    fs::write(&pipeline, yaml).unwrap();
    let o = cfpipe(
        "dag",
        pipeline.to_str().unwrap(),
        &dir.path().join("c"),
        &[],
    );
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for want in [
        "bad.yaml:8:34: tasks.1.classes.1: class 20 is out of range: dataset `c100` has 20 classes",
        "bad.yaml:9:31: tasks.2.classes.0: class 3 is already in task 2",
        "bad.yaml:10:15: tasks.3.dataset: no dataset `imagenet` under `datasets:`",
        "bad.yaml:4:83: datasets.faces.test_folds: fold 1 is also a training fold",
        "bad.yaml:4:10: datasets.faces: decodes to samples of shape [3, 64, 64], but dataset `c10` to [3, 32, 32]",
        "bad.yaml:5:10: datasets.spare: not used by any task",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
}
