//! CIFAR-10 and CIFAR-100 in their "binary version" layout (Krizhevsky's tarballs).
//!
//! CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin` … `data_batch_5.bin` (train) and
//! `test_batch.bin`, each a sequence of 3073-byte records: one label byte (0..10), then 3072
//! pixel bytes, channel-major (1024 red, 1024 green, 1024 blue), each plane row-major 32×32 —
//! exactly the CHW layout of [`ImageSet`], so records are copied as they are.
//! CIFAR-100 (`cifar-100-binary/`): `train.bin` and `test.bin`, 3074-byte records: coarse
//! label (0..20), fine label (0..100), then the same 3072 pixel bytes; [`Cifar100Labels`]
//! chooses which label becomes the class. Class names come from `batches.meta.txt` /
//! `fine_label_names.txt` / `coarse_label_names.txt` when present (they ship in the tarballs),
//! else from the published lists below. A file whose size is not a positive multiple of the
//! record size, or a label out of range, is a [`DataError`] naming the file.

use super::{DataError, ImageSet, Part};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CIFAR_SHAPE: [usize; 3] = [3, 32, 32];
const PIXELS: usize = 3 * 32 * 32;
pub const CIFAR10_TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const CIFAR10_TEST_FILE: &str = "test_batch.bin";
pub const CIFAR100_TRAIN_FILE: &str = "train.bin";
pub const CIFAR100_TEST_FILE: &str = "test.bin";

pub const CIFAR10_HINT: &str =
    "download the CIFAR-10 binary version (cifar-10-binary.tar.gz) from \
https://www.cs.toronto.edu/~kriz/cifar.html, unpack it and pass `dataset.root: \
path/to/cifar-10-batches-bin`";
pub const CIFAR100_HINT: &str =
    "download the CIFAR-100 binary version (cifar-100-binary.tar.gz) from \
https://www.cs.toronto.edu/~kriz/cifar.html, unpack it and pass `dataset.root: \
path/to/cifar-100-binary`";

const CIFAR10_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

const CIFAR100_COARSE_NAMES: [&str; 20] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];

const CIFAR100_FINE_NAMES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// Which CIFAR-100 label is the class: the 100 fine classes or the 20 superclasses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cifar100Labels {
    #[default]
    Fine,
    Coarse,
}

/// The CIFAR-10 binary files of `part` under `root`, in reading order.
pub fn cifar10_files(root: &Path, part: Part) -> Vec<PathBuf> {
    match part {
        Part::Train => CIFAR10_TRAIN_FILES.iter().map(|f| root.join(f)).collect(),
        Part::Test => vec![root.join(CIFAR10_TEST_FILE)],
    }
}

/// The CIFAR-100 binary file of `part` under `root`.
pub fn cifar100_file(root: &Path, part: Part) -> PathBuf {
    root.join(match part {
        Part::Train => CIFAR100_TRAIN_FILE,
        Part::Test => CIFAR100_TEST_FILE,
    })
}

/// Read CIFAR-10 `part` from `root` (train: 50 000 images in batch order; test: 10 000).
pub fn load_cifar10(root: &Path, part: Part) -> Result<ImageSet, DataError> {
    require_dir(root, "CIFAR-10", CIFAR10_HINT)?;
    let mut set = empty_set(class_names(&root.join("batches.meta.txt"), &CIFAR10_NAMES)?);
    for file in cifar10_files(root, part) {
        read_records(&file, "CIFAR-10", 1, 0, 10, &mut set, CIFAR10_HINT)?;
    }
    Ok(set)
}

/// Read CIFAR-100 `part` from `root` with the fine or coarse label as class.
pub fn load_cifar100(
    root: &Path,
    part: Part,
    labels: Cifar100Labels,
) -> Result<ImageSet, DataError> {
    require_dir(root, "CIFAR-100", CIFAR100_HINT)?;
    let (names_file, fallback, label_byte): (_, &[&str], _) = match labels {
        Cifar100Labels::Fine => ("fine_label_names.txt", &CIFAR100_FINE_NAMES, 1),
        Cifar100Labels::Coarse => ("coarse_label_names.txt", &CIFAR100_COARSE_NAMES, 0),
    };
    let mut set = empty_set(class_names(&root.join(names_file), fallback)?);
    let classes = fallback.len();
    read_records(
        &cifar100_file(root, part),
        "CIFAR-100",
        2,
        label_byte,
        classes,
        &mut set,
        CIFAR100_HINT,
    )?;
    Ok(set)
}

fn require_dir(root: &Path, dataset: &'static str, hint: &'static str) -> Result<(), DataError> {
    if root.is_dir() {
        Ok(())
    } else {
        Err(DataError::Missing {
            path: root.to_path_buf(),
            dataset,
            hint,
        })
    }
}

fn empty_set(class_names: Vec<String>) -> ImageSet {
    ImageSet {
        sample_shape: CIFAR_SHAPE,
        pixels: Vec::new(),
        labels: Vec::new(),
        class_names,
        dropped: Default::default(),
    }
}

/// Names from a one-name-per-line metadata file if it exists (blank lines ignored), else the
/// published list. A metadata file with the wrong number of names is ignored rather than
/// trusted, since the label range is fixed by the format.
fn class_names(meta: &Path, fallback: &[&str]) -> Result<Vec<String>, DataError> {
    if meta.is_file() {
        let text = std::fs::read_to_string(meta).map_err(|e| DataError::io(meta, e))?;
        let names: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if names.len() == fallback.len() {
            return Ok(names);
        }
    }
    Ok(fallback.iter().map(|s| s.to_string()).collect())
}

/// Append every record of `path` (`label_bytes` leading label bytes, of which byte
/// `label_byte` is the class) to `set`.
fn read_records(
    path: &Path,
    format: &'static str,
    label_bytes: usize,
    label_byte: usize,
    classes: usize,
    set: &mut ImageSet,
    hint: &'static str,
) -> Result<(), DataError> {
    if !path.is_file() {
        return Err(DataError::Missing {
            path: path.to_path_buf(),
            dataset: format,
            hint,
        });
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let record = label_bytes + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(DataError::RecordSize {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            record,
            format,
        });
    }
    let n = bytes.len() / record;
    set.pixels.reserve(n * PIXELS);
    set.labels.reserve(n);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let label = rec[label_byte];
        if label as usize >= classes {
            return Err(DataError::LabelRange {
                path: path.to_path_buf(),
                record: i,
                label,
                classes,
            });
        }
        set.labels.push(label as u16);
        set.pixels.extend_from_slice(&rec[label_bytes..]);
    }
    Ok(())
}
