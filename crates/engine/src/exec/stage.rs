//! The contract between the executor and stage implementations: a stage is a pure function
//! from its parameters, input artifacts and input files to an output artifact. It never
//! touches the cache or the scheduler.

use super::resources::Resources;
use crate::cache::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A stage's result: named files. Deterministic bytes here are what make artifact hashes
/// reproducible, so stages must not put timings or paths in them (use the log for that).
#[derive(Debug, Default, Clone)]
pub struct Artifact {
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Artifact {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with(mut self, name: &str, bytes: Vec<u8>) -> Self {
        self.files.insert(name.to_string(), bytes);
        self
    }
    pub fn insert(&mut self, name: &str, bytes: Vec<u8>) {
        self.files.insert(name.to_string(), bytes);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The stage's parameters or inputs make no sense (a bug in the plan or a bad artifact).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The computation failed, e.g. a NaN loss.
    #[error("{0}")]
    Failed(String),
    #[error("interrupted")]
    Cancelled,
    #[error("reading input `{name}`: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

impl StageError {
    pub fn failed(msg: impl Into<String>) -> Self {
        StageError::Failed(msg.into())
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        StageError::Invalid(msg.into())
    }
}

/// Receives progress from a running stage; the executor decides how (or whether) to show it.
pub trait Progress: Send + Sync {
    /// Start a new phase with `len` steps (e.g. one epoch of batches).
    fn phase(&self, name: &str, len: u64);
    fn inc(&self, n: u64);
    /// The latest value of a quantity worth watching (e.g. the running mean loss of the
    /// epoch), shown beside the bar.
    fn metric(&self, _name: &str, _value: f64) {}
}

/// A progress sink that drops everything (for tests and non-TTY runs).
pub struct NoProgress;
impl Progress for NoProgress {
    fn phase(&self, _: &str, _: u64) {}
    fn inc(&self, _: u64) {}
}

/// Everything a stage may see.
pub struct StageContext<'a> {
    pub id: &'a str,
    pub params: &'a serde_json::Value,
    pub inputs: &'a BTreeMap<String, Entry>,
    pub files: &'a BTreeMap<String, PathBuf>,
    /// The name of the device the process computes on (`cpu`, `cuda:0`), as recorded in the
    /// manifest; never part of a key. The device itself is a [`Resources`] handle.
    pub device: &'a str,
    /// Handles the binary opened once for every stage (see [`Resources`]).
    pub resources: &'a Resources,
    pub progress: &'a dyn Progress,
    pub cancel: &'a AtomicBool,
    log: Mutex<String>,
    started: std::time::Instant,
}

impl<'a> StageContext<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: &'a str,
        params: &'a serde_json::Value,
        inputs: &'a BTreeMap<String, Entry>,
        files: &'a BTreeMap<String, PathBuf>,
        device: &'a str,
        resources: &'a Resources,
        progress: &'a dyn Progress,
        cancel: &'a AtomicBool,
    ) -> Self {
        StageContext {
            id,
            params,
            inputs,
            files,
            device,
            resources,
            progress,
            cancel,
            log: Mutex::new(String::new()),
            started: std::time::Instant::now(),
        }
    }

    /// The process-wide handle of type `T`, if the binary gave one.
    pub fn resource<T: std::any::Any + Send + Sync>(&self) -> Option<&T> {
        self.resources.get::<T>()
    }

    /// Append a line to the stage's log (stored in the entry's `aux/log.txt`).
    pub fn log(&self, line: impl AsRef<str>) {
        let t = self.started.elapsed().as_secs_f64();
        let mut l = self.log.lock().unwrap_or_else(|e| e.into_inner());
        l.push_str(&format!("[{t:9.3}s] {}\n", line.as_ref()));
    }

    pub fn take_log(&self) -> String {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Err(Cancelled) once Ctrl-C was pressed; stages call this between batches.
    pub fn check_cancel(&self) -> Result<(), StageError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(StageError::Cancelled)
        } else {
            Ok(())
        }
    }

    pub fn input(&self, slot: &str) -> Result<&Entry, StageError> {
        self.inputs
            .get(slot)
            .ok_or_else(|| StageError::invalid(format!("missing input slot `{slot}`")))
    }

    pub fn input_opt(&self, slot: &str) -> Option<&Entry> {
        self.inputs.get(slot)
    }

    /// Read one file of an input artifact.
    pub fn read_input(&self, slot: &str, file: &str) -> Result<Vec<u8>, StageError> {
        let e = self.input(slot)?;
        std::fs::read(e.output_path(file)).map_err(|source| StageError::Io {
            name: format!("{slot}/{file}"),
            source,
        })
    }

    pub fn file(&self, role: &str) -> Result<&PathBuf, StageError> {
        self.files
            .get(role)
            .ok_or_else(|| StageError::invalid(format!("missing input file `{role}`")))
    }

    /// Deserialize this stage's parameters.
    pub fn params<T: serde::de::DeserializeOwned>(&self) -> Result<T, StageError> {
        serde_json::from_value(self.params.clone())
            .map_err(|e| StageError::invalid(format!("parameters: {e}")))
    }
}

/// One kind of stage.
pub trait Stage: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Bump whenever the implementation's output could change for the same inputs.
    fn version(&self) -> u32;
    fn run(&self, ctx: &StageContext) -> Result<Artifact, StageError>;
}

/// Stage implementations by kind.
#[derive(Clone, Default)]
pub struct Registry {
    map: HashMap<String, Arc<dyn Stage>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn register(&mut self, stage: Arc<dyn Stage>) {
        self.map.insert(stage.kind().to_string(), stage);
    }
    /// Every registered kind, sorted.
    pub fn kinds(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.map.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Stage>> {
        self.map.get(kind)
    }
    pub fn version(&self, kind: &str) -> Option<u32> {
        self.map.get(kind).map(|s| s.version())
    }
}
