//! What computing the split stage's key costs on an ImageFolder tree, as a plain harness
//! (`cargo bench --bench filekeys`): before, every image was a declared input file (listed
//! by the index, then canonicalised, stat-ed and looked up in the per-file hash memo, a memo
//! with one entry per image that is loaded from and saved to JSON); now every class folder is
//! one declared input whose digest is remembered per folder under a digest of its listing.
//! A synthetic tree of `CLASSES` × `PER_CLASS` tiny files (train) plus one file per class (val)
//! is built in a temp dir; "cold" is the first run with an empty memo (every file read),
//! "warm" a rerun with the memo loaded from disk (what every `cfpipe run` pays), median of 5.

use cfpipe::cache::filehash::FileHasher;
use cfpipe::data::{data_files, ImageDatasetSpec, Part};
use cfpipe::spec::images::declared_files;
use std::path::{Path, PathBuf};
use std::time::Instant;

const CLASSES: usize = 100;
const PER_CLASS: usize = 200;

fn tree(root: &Path) {
    for (part, n) in [("train", PER_CLASS), ("val", 1)] {
        for c in 0..CLASSES {
            let dir = root.join(format!("{part}/n{c:04}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                std::fs::write(dir.join(format!("img{i}.JPEG")), format!("{part}{c}/{i}")).unwrap();
            }
        }
    }
}

/// The declared inputs of the old scheme: every image of both parts.
fn per_file(spec: &ImageDatasetSpec) -> Vec<PathBuf> {
    let mut files = data_files(spec, Part::Train).unwrap();
    files.extend(data_files(spec, Part::Test).unwrap());
    files
}

/// The declared inputs now: class folders.
fn per_dir(spec: &ImageDatasetSpec) -> Vec<PathBuf> {
    declared_files("imagenet", spec)
        .unwrap()
        .into_values()
        .collect()
}

/// Seconds to declare and hash the inputs, with the memo at `memo` (saved afterwards).
fn key_cost(
    spec: &ImageDatasetSpec,
    memo: &Path,
    declare: fn(&ImageDatasetSpec) -> Vec<PathBuf>,
) -> (f64, usize) {
    let t = Instant::now();
    let hasher = FileHasher::load(memo.to_path_buf());
    let inputs = declare(spec);
    for p in &inputs {
        hasher.hash(p).unwrap();
    }
    hasher.save().unwrap();
    (t.elapsed().as_secs_f64(), inputs.len())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path());
    let spec: ImageDatasetSpec = serde_json::from_value(serde_json::json!({
        "format": "image_folder",
        "train": tmp.path().join("train"),
        "test": tmp.path().join("val"),
        "size": 32,
    }))
    .unwrap();
    let files = CLASSES * (PER_CLASS + 1);
    println!("ImageFolder key cost, {files} files in {CLASSES} class folders per part");
    for (name, declare) in [
        (
            "per file (before)",
            per_file as fn(&ImageDatasetSpec) -> Vec<PathBuf>,
        ),
        ("per class folder (now)", per_dir),
    ] {
        let memo = tmp
            .path()
            .join(format!("memo-{}/filehashes.json", name.len()));
        std::fs::create_dir_all(memo.parent().unwrap()).unwrap();
        let (cold, inputs) = key_cost(&spec, &memo, declare);
        let warm = median((0..5).map(|_| key_cost(&spec, &memo, declare).0).collect());
        let memo_bytes: u64 = std::fs::read_dir(memo.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        println!(
            "{name:>24}: {inputs:>6} declared inputs, cold {:>8.1} ms, warm {:>8.1} ms, memo {:>8} bytes",
            cold * 1e3,
            warm * 1e3,
            memo_bytes
        );
    }
}
