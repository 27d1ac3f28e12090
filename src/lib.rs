//! cfpipe: continual-learning experiments as content-hashed, cached pipelines.
//!
//! A YAML pipeline (`spec`) is compiled into a DAG of stages (`graph`); the executor (`exec`)
//! keys each stage by blake3 over its kind, version, parameters and the *content* of its inputs,
//! and serves it from the on-disk store (`cache`) or runs it. Those four modules are the engine
//! and know nothing about neural networks. The science lives in `stages` (one file per stage
//! kind), `nn` (dfdx layers, optimizers, masks), `xai` (LRP) and `data` (IDX datasets).

pub mod cache;
pub mod cli;
pub mod config;
pub mod data;
pub mod digest;
pub mod error;
pub mod exec;
pub mod graph;
pub mod nn;
pub mod report;
pub mod signals;
pub mod spec;
pub mod stages;
pub mod xai;
