//! Adience aligned faces (Eidinger, Enbar & Hassner 2014) with the eight age groups as classes.
//!
//! Layout under `root`: `fold_0_data.txt` … `fold_4_data.txt` (tab-separated, one header line
//! naming the columns `user_id, original_image, face_id, age, gender, x, y, dx, dy, tilt_ang,
//! fiducial_yaw_angle, fiducial_score`) and the faces at
//! `<faces_dir>/<user_id>/<prefix>.<face_id>.<original_image>` (defaults `faces` and
//! `landmark_aligned_face`; the authors' `aligned.tar.gz` unpacks to `aligned/`). Columns are
//! found by header name, so their order does not matter. Folds are subject-exclusive, so a
//! protocol picks whole folds for training and testing.
//!
//! The age column is irregular in the released files. Besides the eight published intervals
//! (`(0, 2)` `(4, 6)` `(8, 12)` `(15, 20)` `(25, 32)` `(38, 43)` `(48, 53)` `(60, 100)`) it
//! holds other intervals (`(8, 23)`, `(38, 42)`, `(27, 32)`, `(38, 48)`), bare numbers (`35`,
//! `3`, `57`) and `None`. [`AgePolicy`] makes the mapping explicit; rows it cannot place are
//! left out and counted by reason in [`ImageIndex::dropped`]. A row with missing columns, a
//! fold file without the needed header, or a listed face that is not on disk is an error.

use super::image_folder::{ImageIndex, IndexEntry};
use super::DataError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const FOLDS: u8 = 5;
pub const ADIENCE_HINT: &str = "get the aligned faces (aligned.tar.gz) and \
fold_0_data.txt … fold_4_data.txt from the dataset authors \
(https://talhassner.github.io/home/projects/Adience/Adience-data.html), put the fold files in \
`dataset.root` and the faces in `dataset.root`/`dataset.faces_dir`";

/// The eight age groups, in class order. The upper bound of the last group is open.
pub const AGE_GROUPS: [(u32, u32); 8] = [
    (0, 2),
    (4, 6),
    (8, 13),
    (15, 20),
    (25, 32),
    (38, 43),
    (48, 53),
    (60, u32::MAX),
];
pub const AGE_CLASS_NAMES: [&str; 8] = [
    "0-2", "4-6", "8-13", "15-20", "25-32", "38-43", "48-53", "60-",
];

/// How an age string becomes one of the eight classes. Part of a dataset's cache key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgePolicy {
    /// Only the published group intervals (`(8, 12)` and `(8, 13)` both mean group 2,
    /// `(60, 100)` is group 7); any other interval or number is dropped.
    Exact,
    /// An interval stands for its midpoint, a number for itself; the class is the group whose
    /// closed range contains that age (`(8, 23)` → 15.5 → 15-20, `(27, 32)` → 25-32,
    /// `(38, 42)` and `(38, 48)` → 38-43, `13` → 8-13). Ages between groups (`3`, `35`, `57`)
    /// are dropped as ambiguous.
    #[default]
    Midpoint,
    /// As `midpoint`, but an age between groups goes to the group at the smaller distance
    /// (`57` → 60-, `45` → 38-43); an exact tie (`3`, `35`) is still dropped.
    Nearest,
}

/// A parsed age field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Age {
    Interval(u32, u32),
    Years(u32),
    /// The literal `None`.
    Unknown,
}

/// Parse `"(25, 32)"`, `"35"` or `"None"`; anything else is `None` (the caller counts it).
pub fn parse_age(s: &str) -> Option<Age> {
    let s = s.trim();
    if s == "None" {
        return Some(Age::Unknown);
    }
    if let Some(inner) = s.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        let (a, b) = inner.split_once(',')?;
        let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        return (a <= b).then_some(Age::Interval(a, b));
    }
    s.parse().ok().map(Age::Years)
}

/// Why a row's age was not mapped to a class (the keys of [`ImageIndex::dropped`]).
pub const DROP_NONE: &str = "age None";
pub const DROP_UNPARSEABLE: &str = "age not an interval or a number";
pub const DROP_NOT_CANONICAL: &str = "age not a published group (policy exact)";
pub const DROP_BETWEEN: &str = "age between groups";
pub const DROP_TIE: &str = "age equidistant from two groups";

/// The class of `age` under `policy`, or the reason it has none.
pub fn age_class(age: Age, policy: AgePolicy) -> Result<u16, &'static str> {
    let value = match (age, policy) {
        (Age::Unknown, _) => return Err(DROP_NONE),
        (Age::Interval(a, b), AgePolicy::Exact) => {
            return match (a, b) {
                (8, 12) => Ok(2),
                (60, 100) => Ok(7),
                _ => AGE_GROUPS
                    .iter()
                    .position(|&g| g == (a, b))
                    .map(|c| c as u16)
                    .ok_or(DROP_NOT_CANONICAL),
            }
        }
        (Age::Years(_), AgePolicy::Exact) => return Err(DROP_NOT_CANONICAL),
        (Age::Interval(a, b), _) => (a as f64 + b as f64) / 2.0,
        (Age::Years(y), _) => y as f64,
    };
    if let Some(c) = AGE_GROUPS
        .iter()
        .position(|&(lo, hi)| value >= lo as f64 && value <= hi as f64)
    {
        return Ok(c as u16);
    }
    if policy == AgePolicy::Midpoint {
        return Err(DROP_BETWEEN);
    }
    // Between group c and c+1 (below group 0 is impossible: ages are >= 0).
    let c = AGE_GROUPS
        .iter()
        .rposition(|&(_, hi)| value > hi as f64)
        .ok_or(DROP_BETWEEN)?;
    let below = value - AGE_GROUPS[c].1 as f64;
    let above = AGE_GROUPS[c + 1].0 as f64 - value;
    match below.partial_cmp(&above) {
        Some(std::cmp::Ordering::Less) => Ok(c as u16),
        Some(std::cmp::Ordering::Greater) => Ok(c as u16 + 1),
        _ => Err(DROP_TIE),
    }
}

/// Where the Adience files are and how rows become classes.
#[derive(Debug, Clone, PartialEq)]
pub struct AdienceLayout {
    pub root: PathBuf,
    /// Folder under `root` holding `<user_id>/` folders of faces.
    pub faces_dir: String,
    /// File name prefix before `.<face_id>.<original_image>`.
    pub prefix: String,
    pub age_policy: AgePolicy,
}

impl AdienceLayout {
    pub fn fold_file(&self, fold: u8) -> PathBuf {
        self.root.join(format!("fold_{fold}_data.txt"))
    }

    fn face_path(&self, user: &str, face_id: &str, original: &str) -> PathBuf {
        self.root
            .join(&self.faces_dir)
            .join(user)
            .join(format!("{}.{face_id}.{original}", self.prefix))
    }
}

/// Index the faces of `folds` (in the given order, rows in file order) with their age class.
pub fn index_adience(layout: &AdienceLayout, folds: &[u8]) -> Result<ImageIndex, DataError> {
    if !layout.root.is_dir() {
        return Err(DataError::Missing {
            path: layout.root.clone(),
            dataset: "Adience",
            hint: ADIENCE_HINT,
        });
    }
    let faces = layout.root.join(&layout.faces_dir);
    if !faces.is_dir() {
        return Err(DataError::Missing {
            path: faces,
            dataset: "Adience",
            hint: ADIENCE_HINT,
        });
    }
    let mut index = ImageIndex {
        class_names: AGE_CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        entries: Vec::new(),
        dropped: BTreeMap::new(),
    };
    for &fold in folds {
        read_fold(layout, fold, &mut index)?;
    }
    Ok(index)
}

fn read_fold(layout: &AdienceLayout, fold: u8, index: &mut ImageIndex) -> Result<(), DataError> {
    let path = layout.fold_file(fold);
    if !path.is_file() {
        return Err(DataError::Missing {
            path,
            dataset: "Adience",
            hint: ADIENCE_HINT,
        });
    }
    let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines().enumerate();
    let bad = |line: usize, msg: String| DataError::BadLine {
        path: path.clone(),
        line: line + 1,
        msg,
    };
    let (_, header) = lines
        .next()
        .ok_or_else(|| bad(0, "empty fold file; expected a header line".into()))?;
    let names: Vec<&str> = header.split('\t').map(str::trim).collect();
    let column = |name: &str| {
        names.iter().position(|&n| n == name).ok_or_else(|| {
            bad(
                0,
                format!("header has no `{name}` column (found {names:?})"),
            )
        })
    };
    let (c_user, c_image, c_face, c_age) = (
        column("user_id")?,
        column("original_image")?,
        column("face_id")?,
        column("age")?,
    );
    let needed = c_user.max(c_image).max(c_face).max(c_age) + 1;
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        if fields.len() < needed {
            return Err(bad(
                n,
                format!(
                    "{} tab-separated fields, expected at least {needed}",
                    fields.len()
                ),
            ));
        }
        let label = match parse_age(fields[c_age]) {
            None => Err(DROP_UNPARSEABLE),
            Some(age) => age_class(age, layout.age_policy),
        };
        let label = match label {
            Ok(l) => l,
            Err(reason) => {
                *index.dropped.entry(reason.to_string()).or_default() += 1;
                continue;
            }
        };
        let (user, image, face) = (fields[c_user], fields[c_image], fields[c_face]);
        if [user, image, face]
            .iter()
            .any(|f| f.is_empty() || f.contains(['/', '\\']) || *f == "..")
        {
            return Err(bad(
                n,
                format!("user_id, original_image and face_id must be plain names, found {user:?}, {image:?}, {face:?}"),
            ));
        }
        let face_path = layout.face_path(user, face, image);
        if !face_path.is_file() {
            return Err(bad(
                n,
                format!(
                    "face image {} is missing ({})",
                    face_path.display(),
                    ADIENCE_HINT
                ),
            ));
        }
        index.entries.push(IndexEntry {
            path: face_path,
            label,
        });
    }
    Ok(())
}

/// Check a fold selection: indices in `0..5`, no repeats within a list.
pub fn check_folds(field: &'static str, folds: &[u8]) -> Result<(), DataError> {
    if folds.is_empty() {
        return Err(DataError::Invalid {
            field,
            msg: "expected at least one fold in 0..5".into(),
        });
    }
    let mut seen = [false; FOLDS as usize];
    for &f in folds {
        if f >= FOLDS {
            return Err(DataError::Invalid {
                field,
                msg: format!("fold {f} does not exist; Adience has folds 0..=4"),
            });
        }
        if std::mem::replace(&mut seen[f as usize], true) {
            return Err(DataError::Invalid {
                field,
                msg: format!("fold {f} is listed twice"),
            });
        }
    }
    Ok(())
}

/// Fold files read by an index of `folds` (for content hashing).
pub fn fold_files(layout: &AdienceLayout, folds: &[u8]) -> Vec<PathBuf> {
    folds.iter().map(|&f| layout.fold_file(f)).collect()
}
