//! cfpipe: continual-learning experiments as content-hashed, cached pipelines.
//!
//! A YAML pipeline (`spec`) is compiled into a DAG of stages (`graph`); the executor (`exec`)
//! keys each stage by blake3 over its kind, version, parameters and the *content* of its inputs,
//! and serves it from the on-disk store (`cache`) or runs it. Those four modules and `digest`
//! are the engine, a crate of their own (`crates/engine`, re-exported here under the same
//! paths) that does not depend on dfdx or on any stage kind: Cargo enforces the direction.
//!
//! This crate is the domain. `spec` parses and validates pipelines; `stages` holds one file per
//! stage kind and `plan`, which compiles a validated pipeline into stage declarations; `nn`
//! (the model and its one layer vocabulary, conv ops, optimizers, masks), `xai` (LRP,
//! FullGrad, saliency, importances), `data` (IDX and image datasets) and `report` (results,
//! tables and figures) serve them; `cli` is the command line that `main.rs` runs.

pub use cfpipe_engine::{cache, digest, exec, graph};

pub mod cli;
pub mod config;
pub mod data;
pub mod error;
pub mod nn;
pub mod report;
pub mod signals;
pub mod spec;
pub mod stages;
pub mod xai;

pub use stages::plan::{load, load_sweep, LoadError};
