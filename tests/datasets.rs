//! The colour-image datasets on fixtures written here: CIFAR-10/100 binaries, ImageFolder trees
//! of JPEGs and PNGs, a fake Adience tree with the real files' irregular ages; the transforms'
//! geometry and class-balanced resampling. Every fixture is tiny, so this file runs in
//! well under a second of test time.

use cfpipe::data::adience::{age_class, parse_age, AgePolicy, DROP_BETWEEN, DROP_NONE, DROP_TIE};
use cfpipe::data::image_folder::{decode_image, index_image_folder, DecodeOptions, ResizePolicy};
use cfpipe::data::image_set::index_images;
use cfpipe::data::resample::{resample_indices, ClassWeights, ResampleError};
use cfpipe::data::transforms::{
    crop, hflip, mean_softmax, normalize, random_crop, random_hflip, resize_bilinear, ten_crop,
    ten_crop_origins, ten_crop_views, train_view, Chw, CropOrigin, TransformError,
};
use cfpipe::data::{data_files, load_images, DataError, ImageDatasetSpec, Part};
use image::{GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::fs;
use std::path::Path;

// ---------------------------------------------------------------- fixtures

/// A CIFAR record: label byte(s), then 3072 bytes whose value encodes (record, channel).
fn cifar_record(labels: &[u8], seed: u8) -> Vec<u8> {
    let mut r = labels.to_vec();
    for c in 0..3u8 {
        r.extend(std::iter::repeat_n(
            seed.wrapping_mul(3).wrapping_add(c),
            1024,
        ));
    }
    r
}

fn write_records(path: &Path, records: &[Vec<u8>]) {
    fs::write(path, records.concat()).unwrap();
}

/// CIFAR-10 tree: batch b holds records with labels (b, b+1) mod 10; test holds label 9 and 3.
fn cifar10_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    for b in 1..=5u8 {
        let recs = vec![
            cifar_record(&[b % 10], b * 10),
            cifar_record(&[(b + 1) % 10], b * 10 + 1),
        ];
        write_records(&root.join(format!("data_batch_{b}.bin")), &recs);
    }
    write_records(
        &root.join("test_batch.bin"),
        &[cifar_record(&[9], 200), cifar_record(&[3], 201)],
    );
}

fn spec(yaml: &str) -> ImageDatasetSpec {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

fn save_rgb(path: &Path, w: u32, h: u32, colour: [u8; 3]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_pixel(w, h, Rgb(colour)).save(path).unwrap();
}

/// An ImageFolder tree. Classes by sorted name: `a_red` (JPEG 40×20, JPEG 20×40 in a nested
/// folder, PNG), `b_gray` (8-bit grayscale PNG), `c_blue` (RGBA PNG + a text file to ignore).
fn folder_tree(root: &Path) {
    save_rgb(&root.join("a_red/x1.jpg"), 40, 20, [250, 0, 0]);
    save_rgb(&root.join("a_red/sub/x0.JPEG"), 20, 40, [250, 0, 0]);
    save_rgb(&root.join("a_red/x2.png"), 17, 23, [200, 10, 10]);
    fs::create_dir_all(root.join("b_gray")).unwrap();
    GrayImage::from_pixel(12, 12, Luma([90]))
        .save(root.join("b_gray/g.png"))
        .unwrap();
    fs::create_dir_all(root.join("c_blue")).unwrap();
    RgbaImage::from_pixel(30, 30, Rgba([0, 0, 240, 7]))
        .save(root.join("c_blue/b.png"))
        .unwrap();
    fs::write(root.join("c_blue/README.txt"), "not an image").unwrap();
}

fn mean_of_channel(pixels: &[u8], c: usize, plane: usize) -> f64 {
    pixels[c * plane..(c + 1) * plane]
        .iter()
        .map(|&p| p as f64)
        .sum::<f64>()
        / plane as f64
}

const ADIENCE_HEADER: &str = "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\tfiducial_score";

/// A fake Adience root: each fold file lists `(user, image, face, age)` rows; every listed face
/// exists as a 24×24 JPEG whose red channel encodes its row (for order checks).
fn adience_tree(root: &Path, folds: &[&[(&str, &str, u32, &str)]]) {
    for (k, rows) in folds.iter().enumerate() {
        let mut text = String::from(ADIENCE_HEADER);
        text.push('\n');
        for (user, image, face, age) in rows.iter() {
            text.push_str(&format!(
                "{user}\t{image}\t{face}\t{age}\tf\t0\t0\t10\t10\t0\t0\t50\n"
            ));
            save_rgb(
                &root.join(format!("faces/{user}/landmark_aligned_face.{face}.{image}")),
                24,
                24,
                [(face * 20) as u8, 100, 100],
            );
        }
        fs::write(root.join(format!("fold_{k}_data.txt")), text).unwrap();
    }
}

fn adience_spec(root: &Path, train: &str, test: &str, policy: &str) -> ImageDatasetSpec {
    spec(&format!(
        "{{format: adience, root: {}, train_folds: {train}, test_folds: {test}, age_policy: {policy}, size: 16, resize: stretch}}",
        root.display()
    ))
}

// ---------------------------------------------------------------- spec

#[test]
fn spec_yaml_shapes_and_defaults() {
    let s = spec("{format: cifar100, root: /d}");
    assert_eq!(s.sample_shape(), [3, 32, 32]);
    assert!(
        matches!(s, ImageDatasetSpec::Cifar100(cfpipe::data::image_set::Cifar100Spec { labels, .. }) if labels == cifar100_fine())
    );
    let s = spec("{format: image_folder, train: /t, test: /v, size: 224, shorter_side: 256}");
    assert_eq!(s.sample_shape(), [3, 224, 224]);
    assert_eq!(
        s.decode_options().unwrap(),
        DecodeOptions {
            size: 224,
            resize: ResizePolicy::CenterCrop,
            shorter_side: Some(256)
        }
    );
    let s = spec("{format: adience, root: /a, train_folds: [0, 1], test_folds: [4], size: 8}");
    match s {
        ImageDatasetSpec::Adience(cfpipe::data::image_set::AdienceSpec {
            faces_dir,
            prefix,
            age_policy,
            ..
        }) => {
            assert_eq!(faces_dir, "faces");
            assert_eq!(prefix, "landmark_aligned_face");
            assert_eq!(age_policy, AgePolicy::Midpoint);
        }
        other => panic!("{other:?}"),
    }
}

fn cifar100_fine() -> cfpipe::data::cifar::Cifar100Labels {
    cfpipe::data::cifar::Cifar100Labels::Fine
}

#[test]
fn spec_rejects_unknown_keys_and_formats() {
    for bad in [
        "{format: cifar10, root: /d, size: 32}",
        "{format: image_folder, train: /t, test: /v, size: 8, colour: rgb}",
        "{format: adience, root: /a, train_folds: [0], test_folds: [1], size: 8, folds: 5}",
        "{format: svhn, root: /d}",
        "{format: cifar100, root: /d, labels: medium}",
    ] {
        let err = serde_yaml::from_str::<ImageDatasetSpec>(bad);
        assert!(err.is_err(), "accepted {bad}");
    }
}

#[test]
fn spec_validation_names_the_field() {
    let cases = [
        ("{format: image_folder, train: /t, test: /v, size: 0}", "size"),
        ("{format: image_folder, train: /t, test: /v, size: 32, shorter_side: 16}", "shorter_side"),
        ("{format: image_folder, train: /t, test: /v, size: 32, resize: stretch, shorter_side: 40}", "shorter_side"),
        ("{format: image_folder, train: /t, test: /v, size: 32, max_per_class: 0}", "max_per_class"),
        ("{format: adience, root: /a, train_folds: [0, 5], test_folds: [1], size: 8}", "train_folds"),
        ("{format: adience, root: /a, train_folds: [0, 1], test_folds: [1], size: 8}", "test_folds"),
        ("{format: adience, root: /a, train_folds: [], test_folds: [1], size: 8}", "train_folds"),
        ("{format: adience, root: /a, train_folds: [0, 0], test_folds: [1], size: 8}", "train_folds"),
    ];
    for (yaml, field) in cases {
        match spec(yaml).validate() {
            Err(DataError::Invalid { field: f, .. }) => assert_eq!(f, field, "{yaml}"),
            other => panic!("{yaml}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- CIFAR

#[test]
fn cifar10_reads_batches_in_order_with_exact_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cifar-10-batches-bin");
    cifar10_tree(&root);
    let s = spec(&format!("{{format: cifar10, root: {}}}", root.display()));
    let train = load_images(&s, Part::Train).unwrap();
    assert_eq!(train.sample_shape, [3, 32, 32]);
    assert_eq!(train.labels, vec![1, 2, 2, 3, 3, 4, 4, 5, 5, 6]);
    assert_eq!(train.pixels.len(), 10 * 3072);
    // Record 3 is batch 2's second record: seed 21; channel c holds 21*3 + c.
    let s3 = train.sample(3);
    assert_eq!((s3[0], s3[1024], s3[2048], s3[3071]), (63, 64, 65, 65));
    assert_eq!(train.class_names[0], "airplane");
    assert_eq!(train.class_names.len(), 10);
    let test = load_images(&s, Part::Test).unwrap();
    assert_eq!(test.labels, vec![9, 3]);
    assert_eq!(test.class_counts()[9], 1);
    let sub = train.subset(&[3, 0]).unwrap();
    assert_eq!(sub.labels, vec![3, 1]);
    assert_eq!(sub.sample(0), train.sample(3));
    assert!(matches!(
        train.subset(&[10]),
        Err(DataError::Invalid { .. })
    ));

    // Names come from batches.meta.txt when it is there.
    let names: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    fs::write(root.join("batches.meta.txt"), names.join("\n") + "\n\n").unwrap();
    assert_eq!(load_images(&s, Part::Test).unwrap().class_names, names);
    let files = data_files(&s, Part::Train).unwrap();
    assert_eq!(files.len(), 6);
    assert!(files[0].ends_with("batches.meta.txt"));
    assert!(files[5].ends_with("data_batch_5.bin"));
}

#[test]
fn cifar100_fine_or_coarse_labels() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_records(
        &root.join("train.bin"),
        &[
            cifar_record(&[19, 99], 1),
            cifar_record(&[0, 4], 2),
            cifar_record(&[7, 42], 3),
        ],
    );
    write_records(&root.join("test.bin"), &[cifar_record(&[3, 55], 4)]);
    let fine = spec(&format!("{{format: cifar100, root: {}}}", root.display()));
    let coarse = spec(&format!(
        "{{format: cifar100, root: {}, labels: coarse}}",
        root.display()
    ));
    let f = load_images(&fine, Part::Train).unwrap();
    assert_eq!(f.labels, vec![99, 4, 42]);
    assert_eq!(f.class_names.len(), 100);
    assert_eq!(f.class_names[99], "worm");
    assert_eq!(f.sample(1)[1024], 7);
    let c = load_images(&coarse, Part::Train).unwrap();
    assert_eq!(c.labels, vec![19, 0, 7]);
    assert_eq!(c.class_names.len(), 20);
    assert_eq!(c.class_names[19], "vehicles_2");
    assert_eq!(c.pixels, f.pixels);
    assert_eq!(load_images(&coarse, Part::Test).unwrap().labels, vec![3]);
}

#[test]
fn cifar_rejects_truncated_files_bad_labels_and_missing_roots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("c10");
    cifar10_tree(&root);
    let s = spec(&format!("{{format: cifar10, root: {}}}", root.display()));
    let mut bytes = fs::read(root.join("data_batch_3.bin")).unwrap();
    bytes.pop();
    fs::write(root.join("data_batch_3.bin"), &bytes).unwrap();
    match load_images(&s, Part::Train) {
        Err(DataError::RecordSize {
            path, len, record, ..
        }) => {
            assert!(path.ends_with("data_batch_3.bin"));
            assert_eq!((len, record), (2 * 3073 - 1, 3073));
        }
        other => panic!("{other:?}"),
    }
    // An empty file holds no record: also an error.
    fs::write(root.join("test_batch.bin"), b"").unwrap();
    assert!(matches!(
        load_images(&s, Part::Test),
        Err(DataError::RecordSize { len: 0, .. })
    ));
    // A label of 10 in CIFAR-10.
    write_records(
        &root.join("test_batch.bin"),
        &[cifar_record(&[2], 0), cifar_record(&[10], 1)],
    );
    match load_images(&s, Part::Test) {
        Err(DataError::LabelRange {
            record,
            label,
            classes,
            ..
        }) => {
            assert_eq!((record, label, classes), (1, 10, 10))
        }
        other => panic!("{other:?}"),
    }
    // CIFAR-100's fine label 100.
    write_records(&root.join("test.bin"), &[cifar_record(&[1, 100], 0)]);
    let s100 = spec(&format!("{{format: cifar100, root: {}}}", root.display()));
    assert!(matches!(
        load_images(&s100, Part::Test),
        Err(DataError::LabelRange {
            label: 100,
            classes: 100,
            ..
        })
    ));

    let missing = dir.path().join("nowhere");
    let s = spec(&format!("{{format: cifar10, root: {}}}", missing.display()));
    for err in [
        load_images(&s, Part::Train).unwrap_err(),
        data_files(&s, Part::Train).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(
            matches!(&err, DataError::Missing { path, .. } if *path == missing),
            "{err:?}"
        );
        assert!(
            msg.contains("cs.toronto.edu") && msg.contains("dataset.root"),
            "{msg}"
        );
    }
    // A missing file in an existing root names the file.
    cifar10_tree(&root);
    fs::remove_file(root.join("data_batch_5.bin")).unwrap();
    let s = spec(&format!("{{format: cifar10, root: {}}}", root.display()));
    assert!(matches!(
        load_images(&s, Part::Train),
        Err(DataError::Missing { path, .. }) if path.ends_with("data_batch_5.bin")
    ));
}

// ---------------------------------------------------------------- ImageFolder

#[test]
fn image_folder_index_classes_order_and_colours() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("train");
    folder_tree(&root);
    let index = index_image_folder(&root, None, 0).unwrap();
    assert_eq!(index.class_names, ["a_red", "b_gray", "c_blue"]);
    let rel: Vec<String> = index
        .entries
        .iter()
        .map(|e| e.path.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    // torchvision order: by folder, then file name; the text file is not picked up.
    assert_eq!(
        rel,
        [
            "a_red/x1.jpg",
            "a_red/x2.png",
            "a_red/sub/x0.JPEG",
            "b_gray/g.png",
            "c_blue/b.png"
        ]
    );
    assert_eq!(index.class_counts(), vec![3, 1, 1]);

    let opts = DecodeOptions::new(8, ResizePolicy::CenterCrop);
    let set = index.decode_all(&opts).unwrap();
    assert_eq!(set.sample_shape, [3, 8, 8]);
    assert_eq!(set.labels, vec![0, 0, 0, 1, 2]);
    let plane = 64;
    let rgb = |i: usize| -> [f64; 3] {
        let s = set.sample(i);
        [0, 1, 2].map(|c| mean_of_channel(s, c, plane))
    };
    for (i, want) in [
        (0, [250.0, 0.0, 0.0]),
        (1, [200.0, 10.0, 10.0]),
        (2, [250.0, 0.0, 0.0]),
        (3, [90.0, 90.0, 90.0]), // grayscale → equal channels
        (4, [0.0, 0.0, 240.0]),  // alpha dropped, not blended
    ] {
        let got = rgb(i);
        for c in 0..3 {
            assert!(
                (got[c] - want[c]).abs() <= 4.0,
                "sample {i}: {got:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn nested_files_follow_torchvision_string_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for f in [
        "k/b/d/z.png",
        "k/b-c/y.png",
        "k/b/x.png",
        "k/a.png",
        "k/B.png",
    ] {
        save_rgb(&root.join(f), 2, 2, [0; 3]);
    }
    let index = index_image_folder(root, None, 0).unwrap();
    let rel: Vec<String> = index
        .entries
        .iter()
        .map(|e| e.path.strip_prefix(root).unwrap().display().to_string())
        .collect();
    // Python: sorted roots "k" < "k/b" < "k/b-c" < "k/b/d" ('-' sorts before '/').
    assert_eq!(
        rel,
        [
            "k/B.png",
            "k/a.png",
            "k/b/x.png",
            "k/b-c/y.png",
            "k/b/d/z.png"
        ]
    );
}

#[test]
fn center_crop_and_stretch_geometry() {
    let dir = tempfile::tempdir().unwrap();
    // 40×20: left half black, right half white (PNG, lossless).
    let img = RgbImage::from_fn(
        40,
        20,
        |x, _| if x < 20 { Rgb([0; 3]) } else { Rgb([255; 3]) },
    );
    let path = dir.path().join("half.png");
    img.save(&path).unwrap();
    let col = |px: &[u8], size: usize, x: usize| -> f64 {
        (0..size).map(|y| px[y * size + x] as f64).sum::<f64>() / size as f64
    };
    // Shorter side 20 → 10: 20×10, crop the middle 10 columns (5..15): five dark, five light.
    let cc = decode_image(&path, &DecodeOptions::new(10, ResizePolicy::CenterCrop)).unwrap();
    assert_eq!(cc.len(), 300);
    assert!(col(&cc, 10, 0) < 10.0 && col(&cc, 10, 3) < 10.0, "{cc:?}");
    assert!(col(&cc, 10, 6) > 245.0 && col(&cc, 10, 9) > 245.0, "{cc:?}");
    // Stretch squeezes the whole width in: still half dark, half light.
    let st = decode_image(&path, &DecodeOptions::new(10, ResizePolicy::Stretch)).unwrap();
    assert!(col(&st, 10, 0) < 10.0 && col(&st, 10, 3) < 10.0);
    assert!(col(&st, 10, 6) > 245.0 && col(&st, 10, 9) > 245.0);
    // Shorter side 20 kept, crop 10: columns 15..25 of the original, boundary at column 5.
    let opts = DecodeOptions {
        size: 10,
        resize: ResizePolicy::CenterCrop,
        shorter_side: Some(20),
    };
    let ss = decode_image(&path, &opts).unwrap();
    let cols: Vec<u8> = (0..10).map(|x| ss[x]).collect();
    assert_eq!(cols, [0, 0, 0, 0, 0, 255, 255, 255, 255, 255]);
}

#[test]
fn subsample_per_class_is_seeded_and_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for i in 0..6 {
        save_rgb(&root.join(format!("k/{i}.png")), 4, 4, [i as u8; 3]);
    }
    save_rgb(&root.join("j/0.png"), 4, 4, [9; 3]);
    let full = index_image_folder(root, None, 0).unwrap();
    let a = index_image_folder(root, Some(3), 7).unwrap();
    assert_eq!(a, index_image_folder(root, Some(3), 7).unwrap());
    assert_eq!(a.class_counts(), vec![1, 3]);
    let positions: Vec<usize> = a
        .entries
        .iter()
        .map(|e| full.entries.iter().position(|f| f == e).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let picks: std::collections::BTreeSet<Vec<usize>> = (0..20u64)
        .map(|seed| {
            index_image_folder(root, Some(3), seed)
                .unwrap()
                .entries
                .iter()
                .map(|e| full.entries.iter().position(|f| f == e).unwrap())
                .collect()
        })
        .collect();
    assert!(picks.len() > 1, "every seed picked the same subsample");
    // A new class does not change the other classes' subsamples.
    save_rgb(&root.join("a/0.png"), 4, 4, [1; 3]);
    let b = index_image_folder(root, Some(3), 7).unwrap();
    let paths = |i: &cfpipe::data::image_folder::ImageIndex| -> Vec<std::path::PathBuf> {
        i.entries.iter().map(|e| e.path.clone()).collect()
    };
    assert_eq!(paths(&b)[1..], paths(&a)[..]);
}

#[test]
fn decoding_in_chunks_equals_decoding_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for i in 0..7u8 {
        save_rgb(
            &root.join(format!("c{}/{i}.png", i % 3)),
            9 + i as u32,
            7,
            [i * 30, 255 - i * 30, i],
        );
    }
    let index = index_image_folder(root, None, 0).unwrap();
    let opts = DecodeOptions::new(6, ResizePolicy::CenterCrop);
    let whole = index.decode_all(&opts).unwrap();
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let ranges: Vec<_> = index.chunks(3).collect();
    assert_eq!(ranges, vec![0..3, 3..6, 6..7]);
    for r in ranges {
        let part = index.decode_range(r, &opts).unwrap();
        pixels.extend(part.pixels);
        labels.extend(part.labels);
    }
    assert_eq!(
        (pixels, labels),
        (whole.pixels.clone(), whole.labels.clone())
    );
    let picked = index.decode(&[5, 0], &opts).unwrap();
    assert_eq!(picked.sample(1), whole.sample(0));
    assert_eq!(picked.labels, vec![whole.labels[5], whole.labels[0]]);
    assert!(matches!(
        index.decode(&[7], &opts),
        Err(DataError::Invalid { .. })
    ));
}

#[test]
fn image_folder_train_and_test_trees() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = (dir.path().join("train"), dir.path().join("val"));
    folder_tree(&train);
    folder_tree(&val);
    let s = spec(&format!(
        "{{format: image_folder, train: {}, test: {}, size: 4, test_max_per_class: 1}}",
        train.display(),
        val.display()
    ));
    assert_eq!(
        load_images(&s, Part::Train).unwrap().labels,
        vec![0, 0, 0, 1, 2]
    );
    assert_eq!(load_images(&s, Part::Test).unwrap().labels, vec![0, 1, 2]);
    assert_eq!(data_files(&s, Part::Test).unwrap().len(), 3);
    // A val tree with a class the training tree lacks.
    save_rgb(&val.join("d_extra/e.png"), 4, 4, [1, 2, 3]);
    match load_images(&s, Part::Test) {
        Err(DataError::ClassMismatch {
            found, expected, ..
        }) => assert_eq!((found, expected), (4, 3)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn image_folder_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    folder_tree(&root);
    let opts = DecodeOptions::new(8, ResizePolicy::Stretch);

    // A truncated JPEG.
    let jpg = root.join("a_red/x1.jpg");
    let bytes = fs::read(&jpg).unwrap();
    fs::write(&jpg, &bytes[..bytes.len() / 3]).unwrap();
    let index = index_image_folder(&root, None, 0).unwrap();
    match index.decode_all(&opts) {
        Err(DataError::Decode { path, .. }) => assert_eq!(path, jpg),
        other => panic!("{other:?}"),
    }
    // A file with an image extension but text content.
    fs::write(&jpg, "hello").unwrap();
    let err = index.decode(&[0], &opts).unwrap_err();
    assert!(err.to_string().contains("x1.jpg"), "{err}");

    // An empty class folder (only a non-image file).
    fs::create_dir_all(root.join("d_empty")).unwrap();
    fs::write(root.join("d_empty/notes.txt"), "x").unwrap();
    assert!(matches!(
        index_image_folder(&root, None, 0),
        Err(DataError::EmptyClass { path }) if path.ends_with("d_empty")
    ));
    // No class folders at all, and no root.
    let flat = dir.path().join("flat");
    save_rgb(&flat.join("img.png"), 2, 2, [0; 3]);
    assert!(matches!(
        index_image_folder(&flat, None, 0),
        Err(DataError::NoClasses { .. })
    ));
    let gone = dir.path().join("gone");
    let s = spec(&format!(
        "{{format: image_folder, train: {}, test: {}, size: 4}}",
        gone.display(),
        root.display()
    ));
    match load_images(&s, Part::Test) {
        Err(DataError::Missing { path, .. }) => assert_eq!(path, gone),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- Adience

#[test]
fn adience_age_strings_under_each_policy() {
    use AgePolicy::*;
    let table: [(&str, [Result<u16, &str>; 3]); 16] = [
        ("(0, 2)", [Ok(0), Ok(0), Ok(0)]),
        ("(4, 6)", [Ok(1), Ok(1), Ok(1)]),
        ("(8, 12)", [Ok(2), Ok(2), Ok(2)]),
        ("(8, 23)", [Err("x"), Ok(3), Ok(3)]),
        ("(15, 20)", [Ok(3), Ok(3), Ok(3)]),
        ("(27, 32)", [Err("x"), Ok(4), Ok(4)]),
        ("(38, 42)", [Err("x"), Ok(5), Ok(5)]),
        ("(38, 48)", [Err("x"), Ok(5), Ok(5)]),
        ("(48, 53)", [Ok(6), Ok(6), Ok(6)]),
        ("(60, 100)", [Ok(7), Ok(7), Ok(7)]),
        ("13", [Err("x"), Ok(2), Ok(2)]),
        ("35", [Err("x"), Err(DROP_BETWEEN), Err(DROP_TIE)]),
        ("3", [Err("x"), Err(DROP_BETWEEN), Err(DROP_TIE)]),
        ("57", [Err("x"), Err(DROP_BETWEEN), Ok(7)]),
        ("45", [Err("x"), Err(DROP_BETWEEN), Ok(5)]),
        ("None", [Err(DROP_NONE), Err(DROP_NONE), Err(DROP_NONE)]),
    ];
    for (s, want) in table {
        let age = parse_age(s).unwrap_or_else(|| panic!("{s}"));
        for (policy, w) in [Exact, Midpoint, Nearest].into_iter().zip(want) {
            let got = age_class(age, policy);
            match (got, w) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{s} {policy:?}"),
                (Err(g), Err(w)) if w != "x" => assert_eq!(g, w, "{s} {policy:?}"),
                (Err(_), Err(_)) => {}
                (g, w) => panic!("{s} {policy:?}: got {g:?}, want {w:?}"),
            }
        }
    }
    for bad in ["", "(8 12)", "(12, 8)", "adult", "(a, b)", "-3"] {
        assert_eq!(parse_age(bad), None, "{bad}");
    }
}

#[test]
fn adience_folds_labels_and_dropped_counts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    adience_tree(
        root,
        &[
            &[
                ("u1", "a.jpg", 1, "(0, 2)"),
                ("u1", "b.jpg", 2, "(8, 23)"),
                ("u2", "c.jpg", 3, "None"),
                ("u2", "d.jpg", 4, "35"),
            ],
            &[
                ("u3", "e.jpg", 5, "(60, 100)"),
                ("u3", "f.jpg", 6, "(27, 32)"),
                ("u3", "g.jpg", 7, "57"),
            ],
            &[("u4", "h.jpg", 8, "(38, 42)"), ("u4", "i.jpg", 9, "junk")],
        ],
    );
    let s = adience_spec(root, "[1, 0]", "[2]", "midpoint");
    let train = load_images(&s, Part::Train).unwrap();
    // Fold 1 first (listed first), then fold 0; None, 35 and 57 dropped.
    assert_eq!(train.labels, vec![7, 4, 0, 3]);
    assert_eq!(train.sample_shape, [3, 16, 16]);
    assert_eq!(train.class_names[7], "60-");
    let red: Vec<u8> = (0..4).map(|i| train.sample(i)[0]).collect();
    for (got, face) in red.iter().zip([5u32, 6, 1, 2]) {
        assert!((*got as i32 - (face * 20) as i32).abs() <= 4, "{red:?}");
    }
    let dropped: Vec<(&str, usize)> = train
        .dropped
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(dropped, vec![(DROP_NONE, 1), (DROP_BETWEEN, 2)]);
    let test = load_images(&s, Part::Test).unwrap();
    assert_eq!(test.labels, vec![5]);
    assert_eq!(test.dropped.values().sum::<usize>(), 1);

    let nearest =
        load_images(&adience_spec(root, "[0, 1]", "[2]", "nearest"), Part::Train).unwrap();
    assert_eq!(nearest.labels, vec![0, 3, 7, 4, 7]);
    assert_eq!(nearest.dropped.get(DROP_TIE), Some(&1));
    let exact = index_images(&adience_spec(root, "[0, 1]", "[2]", "exact"), Part::Train).unwrap();
    assert_eq!(
        exact.entries.iter().map(|e| e.label).collect::<Vec<_>>(),
        vec![0, 7]
    );
    assert_eq!(exact.dropped.values().sum::<usize>(), 5);

    let files = data_files(&s, Part::Train).unwrap();
    assert!(files[0].ends_with("fold_1_data.txt") && files[1].ends_with("fold_0_data.txt"));
    assert_eq!(files.len(), 2 + 4);
}

#[test]
fn adience_bad_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    adience_tree(
        root,
        &[
            &[("u1", "a.jpg", 1, "(0, 2)")],
            &[("u2", "b.jpg", 2, "(4, 6)")],
        ],
    );
    let s = adience_spec(root, "[0]", "[1]", "midpoint");
    assert_eq!(load_images(&s, Part::Test).unwrap().labels, vec![1]);

    // A fold that is not on disk.
    let err = load_images(&adience_spec(root, "[0]", "[3]", "midpoint"), Part::Test).unwrap_err();
    assert!(matches!(&err, DataError::Missing { path, .. } if path.ends_with("fold_3_data.txt")));
    assert!(err.to_string().contains("fold_0_data.txt"), "{err}");
    // A listed face missing from faces/.
    fs::remove_file(root.join("faces/u2/landmark_aligned_face.2.b.jpg")).unwrap();
    match load_images(&s, Part::Test) {
        Err(DataError::BadLine { line, msg, .. }) => {
            assert_eq!(line, 2);
            assert!(msg.contains("landmark_aligned_face.2.b.jpg"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    // A short row and a header without the age column.
    fs::write(
        root.join("fold_1_data.txt"),
        format!("{ADIENCE_HEADER}\nu2\tb.jpg\n"),
    )
    .unwrap();
    assert!(matches!(
        load_images(&s, Part::Test),
        Err(DataError::BadLine { line: 2, .. })
    ));
    fs::write(
        root.join("fold_1_data.txt"),
        "user_id\toriginal_image\tface_id\n",
    )
    .unwrap();
    match load_images(&s, Part::Test) {
        Err(DataError::BadLine { line: 1, msg, .. }) => assert!(msg.contains("`age`"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // A user_id that would escape the faces folder.
    fs::write(
        root.join("fold_1_data.txt"),
        format!("{ADIENCE_HEADER}\n..\ta.jpg\t1\t(0, 2)\tf\n"),
    )
    .unwrap();
    assert!(matches!(
        load_images(&s, Part::Test),
        Err(DataError::BadLine { line: 2, .. })
    ));
    // A truncated face JPEG.
    let face = root.join("faces/u1/landmark_aligned_face.1.a.jpg");
    let bytes = fs::read(&face).unwrap();
    fs::write(&face, &bytes[..bytes.len() / 2]).unwrap();
    assert!(
        matches!(load_images(&s, Part::Train), Err(DataError::Decode { path, .. }) if path == face)
    );
    // No faces folder, no root.
    let s = adience_spec(&root.join("nope"), "[0]", "[1]", "midpoint");
    let err = load_images(&s, Part::Train).unwrap_err();
    assert!(
        matches!(&err, DataError::Missing { .. }) && err.to_string().contains("Adience"),
        "{err}"
    );
}

// ---------------------------------------------------------------- transforms

/// A [1, h, w] image whose value at (y, x) is y·100 + x.
fn coords(h: usize, w: usize) -> Chw {
    Chw::new(
        [1, h, w],
        (0..h)
            .flat_map(|y| (0..w).map(move |x| (y * 100 + x) as f32))
            .collect(),
    )
    .unwrap()
}

#[test]
fn ten_crop_origins_and_mirroring_follow_torchvision() {
    let img = coords(5, 7);
    let o = |top, left, mirrored| CropOrigin {
        top,
        left,
        mirrored,
    };
    let origins = ten_crop_origins(img.shape, 3, 4).unwrap();
    // W − w = 3 is odd: the centre's left is round(1.5) = 2, the mirrored centre's is 3 − 2 = 1.
    assert_eq!(
        origins,
        [
            o(0, 0, false),
            o(0, 3, false),
            o(2, 0, false),
            o(2, 3, false),
            o(1, 2, false),
            o(0, 3, true),
            o(0, 0, true),
            o(2, 3, true),
            o(2, 0, true),
            o(1, 1, true),
        ]
    );
    let crops = ten_crop(&img, 3, 4).unwrap();
    assert_eq!(crops.len(), 10);
    for (k, (c, o)) in crops.iter().zip(origins).enumerate() {
        assert_eq!(c.shape, [1, 3, 4]);
        for y in 0..3 {
            for x in 0..4 {
                let sx = if o.mirrored {
                    o.left + 3 - x
                } else {
                    o.left + x
                };
                assert_eq!(
                    c.at(0, y, x),
                    ((o.top + y) * 100 + sx) as f32,
                    "crop {k} at ({y}, {x})"
                );
            }
        }
    }
    assert!(matches!(
        ten_crop(&img, 6, 4),
        Err(TransformError::Crop { .. })
    ));
}

#[test]
fn crops_flips_and_normalisation() {
    let img = coords(4, 6);
    let c = crop(&img, 1, 2, 2, 3).unwrap();
    assert_eq!(c.data, vec![102.0, 103.0, 104.0, 202.0, 203.0, 204.0]);
    assert!(crop(&img, 3, 0, 2, 2).is_err());
    assert_eq!(hflip(&img).at(0, 2, 0), 205.0);
    assert_eq!(hflip(&hflip(&img)), img);

    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let r = random_crop(&img, 2, 3, &mut rng).unwrap();
        let (top, left) = (
            (r.at(0, 0, 0) as usize) / 100,
            (r.at(0, 0, 0) as usize) % 100,
        );
        assert!(top <= 2 && left <= 3);
        assert_eq!(r, crop(&img, top, left, 2, 3).unwrap());
        seen.insert((top, left));
    }
    assert_eq!(seen.len(), 12, "every offset of the 3×4 grid is reachable");
    let draw = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..10)
            .map(|_| random_crop(&img, 2, 3, &mut rng).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(9), draw(9));
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let flips = (0..400)
        .filter(|_| random_hflip(&img, &mut rng) != img)
        .count();
    assert!((150..250).contains(&flips), "{flips} flips in 400");

    let mut rgb = Chw::from_u8([3, 1, 2], &[0, 255, 51, 102, 255, 255]).unwrap();
    normalize(&mut rgb, &[0.5, 0.2, 1.0], &[0.5, 0.4, 2.0]).unwrap();
    let want = [-1.0, 1.0, 0.0, 0.5, 0.0, 0.0];
    for (g, w) in rgb.data.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{:?}", rgb.data);
    }
    assert!(matches!(
        normalize(&mut rgb, &[0.0; 2], &[1.0; 2]),
        Err(TransformError::Channels { .. })
    ));
    assert!(matches!(
        normalize(&mut rgb, &[0.0; 3], &[1.0, 0.0, 1.0]),
        Err(TransformError::Std { channel: 1, .. })
    ));
    assert!(Chw::new([3, 2, 2], vec![0.0; 11]).is_err());
}

#[test]
fn bilinear_resize_matches_pytorch_align_corners_false() {
    let img = Chw::new([1, 2, 2], vec![0.0, 1.0, 2.0, 3.0]).unwrap();
    let up = resize_bilinear(&img, 4, 4).unwrap();
    // torch.nn.functional.interpolate(torch.arange(4.).view(1,1,2,2), size=4, mode="bilinear")
    let want = [
        0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
    ];
    assert_eq!(up.data, want);
    let down = resize_bilinear(&coords(4, 4), 2, 2).unwrap();
    assert_eq!(down.data, vec![50.5, 52.5, 250.5, 252.5]);
    assert!(resize_bilinear(&img, 0, 3).is_err());
}

#[test]
fn mean_softmax_over_crops() {
    let ln3 = 3f32.ln();
    // Two samples × two crops × two classes.
    let logits = [0.0, 0.0, ln3, 0.0, 1000.0, 0.0, 0.0, 1000.0];
    let p = mean_softmax(&logits, 2, 2).unwrap();
    let want = [0.625, 0.375, 0.5, 0.5];
    for (g, w) in p.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{p:?}");
    }
    assert!(mean_softmax(&logits, 3, 2).is_err());
}

#[test]
fn training_and_test_views_compose_the_transforms() {
    let img = coords(5, 7);
    let (mean, std) = ([10.0], [2.0]);
    let mut a = ChaCha8Rng::seed_from_u64(11);
    let mut b = ChaCha8Rng::seed_from_u64(11);
    let mut mirrored = 0;
    for _ in 0..50 {
        let view = train_view(&img, 3, 4, &mean, &std, &mut a).unwrap();
        // The same draws by hand: crop, flip, normalise.
        let mut want = random_hflip(&random_crop(&img, 3, 4, &mut b).unwrap(), &mut b);
        normalize(&mut want, &mean, &std).unwrap();
        assert_eq!(view, want);
        // Undo the normalisation: a row of a crop ascends unless mirrored.
        let row: Vec<f32> = (0..4).map(|x| view.at(0, 0, x) * 2.0 + 10.0).collect();
        mirrored += usize::from(row[0] > row[3]);
    }
    assert!((10..40).contains(&mirrored), "{mirrored} of 50 mirrored");
    let views = ten_crop_views(&img, 3, 4, &mean, &std).unwrap();
    let plain = ten_crop(&img, 3, 4).unwrap();
    for (v, p) in views.iter().zip(&plain) {
        for (x, y) in v.data.iter().zip(&p.data) {
            assert_eq!(*x, (*y - 10.0) / 2.0);
        }
    }
}

// ---------------------------------------------------------------- resampling

fn imbalanced() -> Vec<u16> {
    // 90 of class 0, 9 of class 1, 1 of class 2, interleaved.
    let mut l = vec![0u16; 100];
    for i in 0..9 {
        l[i * 11 + 5] = 1;
    }
    l[99] = 2;
    l
}

fn frequencies(labels: &[u16], idx: &[usize], classes: usize) -> Vec<f64> {
    let mut f = vec![0.0; classes];
    for &i in idx {
        f[labels[i] as usize] += 1.0 / idx.len() as f64;
    }
    f
}

#[test]
fn resampling_hits_the_requested_class_probabilities() {
    let labels = imbalanced();
    let n = 30_000;
    let uniform = resample_indices(&labels, &ClassWeights::Uniform, n, 1).unwrap();
    assert_eq!(uniform.len(), n);
    for f in frequencies(&labels, &uniform, 3) {
        assert!((f - 1.0 / 3.0).abs() < 0.015, "{f}");
    }
    // Within a class, samples are uniform: each of class 1's nine members gets ≈ 1/27.
    let mut per_member = std::collections::BTreeMap::<usize, usize>::new();
    for &i in uniform.iter().filter(|&&i| labels[i] == 1) {
        *per_member.entry(i).or_default() += 1;
    }
    assert_eq!(per_member.len(), 9);
    for &count in per_member.values() {
        assert!(
            (count as f64 / n as f64 - 1.0 / 27.0).abs() < 0.006,
            "{per_member:?}"
        );
    }
    let given = ClassWeights::Given(vec![2.0, 5.0, 3.0]);
    let idx = resample_indices(&labels, &given, n, 2).unwrap();
    for (f, w) in frequencies(&labels, &idx, 3).iter().zip([0.2, 0.5, 0.3]) {
        assert!((f - w).abs() < 0.015, "{f} vs {w}");
    }
    assert_eq!(idx, resample_indices(&labels, &given, n, 2).unwrap());
    assert_ne!(idx, resample_indices(&labels, &given, n, 3).unwrap());
    // A zero weight means never.
    let none =
        resample_indices(&labels, &ClassWeights::Given(vec![1.0, 0.0, 1.0]), 1000, 0).unwrap();
    assert!(none.iter().all(|&i| labels[i] != 1));
}

#[test]
fn resampling_errors() {
    let labels = vec![0u16, 0, 2];
    assert_eq!(
        resample_indices(&labels, &ClassWeights::Given(vec![1.0, 1.0, 1.0]), 5, 0),
        Err(ResampleError::EmptyClass {
            class: 1,
            weight: 1.0
        })
    );
    // Uniform skips the empty class rather than failing.
    let idx = resample_indices(&labels, &ClassWeights::Uniform, 2000, 0).unwrap();
    assert!(frequencies(&labels, &idx, 3)[1] == 0.0);
    assert!(matches!(
        resample_indices(&labels, &ClassWeights::Given(vec![1.0, 1.0]), 5, 0),
        Err(ResampleError::Unweighted { label: 2, .. })
    ));
    assert!(matches!(
        resample_indices(&labels, &ClassWeights::Given(vec![1.0, -1.0, 1.0]), 5, 0),
        Err(ResampleError::Weights(_))
    ));
    assert_eq!(
        resample_indices(&[], &ClassWeights::Uniform, 5, 0),
        Err(ResampleError::Empty)
    );
}

// ---------------------------------------------------------------- errors inside a pipeline's blocks

/// Load `pipelines/imagenet_adience.yaml` with `edit` applied (structure only: the data is not
/// here); the error lines.
fn imagenet_adience_errors(edit: impl Fn(&str) -> String) -> Vec<String> {
    let src = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/imagenet_adience.yaml"),
    )
    .unwrap();
    let text = edit(&src);
    assert_ne!(text, src, "the edit changed nothing");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    fs::write(&path, text).unwrap();
    match cfpipe::spec::load(&path, &[], cfpipe::spec::DataCheck::Skip) {
        Ok(_) => panic!("the edited pipeline was accepted"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn an_error_inside_an_image_dataset_block_is_reported_at_its_own_key() {
    let cases = [
        (
            "    resize: center_crop\n",
            "    resize: squash\n",
            "17:13: datasets.imagenet.resize",
            "unknown variant `squash`",
        ),
        (
            "    subsample_seed: 0\n",
            "    subsample_seed: 0\n    colour: rgb\n",
            "22:5: datasets.imagenet.colour",
            "unknown field `colour`",
        ),
        (
            "max_per_class: 2 ",
            "max_per_class: -1 ",
            "19:20: datasets.imagenet.max_per_class",
            "invalid value: integer `-1`",
        ),
        (
            "    size: 256                      # stored",
            "    size: big                      # stored",
            "16:11: datasets.imagenet.size",
            "expected u32",
        ),
        (
            "age_policy: midpoint",
            "age_policy: oldest",
            "28:17: datasets.adience.age_policy",
            "unknown variant `oldest`",
        ),
    ];
    for (from, to, at, words) in cases {
        let errs = imagenet_adience_errors(|s| s.replacen(from, to, 1));
        assert!(
            errs.iter().any(|e| e.contains(at) && e.contains(words)),
            "expected `{at}` with `{words}` in: {errs:#?}"
        );
        // The dataset is still named, so the tasks that use it are no follow-up errors.
        assert!(
            errs.iter().all(|e| !e.contains("no dataset")),
            "follow-up error in: {errs:#?}"
        );
        assert_eq!(errs.len(), 1, "{errs:#?}");
    }
}
