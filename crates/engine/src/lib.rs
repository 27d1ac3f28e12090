//! cfpipe's engine: what turns declared stages into cached results, and nothing about what a
//! stage computes.
//!
//! - [`graph`]: the petgraph DAG of stage declarations, merging identical stages;
//! - [`digest`]: typed blake3 digests (a [`digest::StageKey`] names what was asked for, a
//!   [`digest::ContentHash`] what was produced) and the canonical encoding keys are hashed from;
//! - [`cache`]: the content-addressed store (atomic publish, verify, leases, gc roots, group
//!   permissions) and the remote cache;
//! - [`exec`]: the stage contract ([`exec::Stage`]), the executor that owns caching and
//!   scheduling, and `resolve`, which answers "what would run" without running.
//!
//! This crate does not depend on dfdx or on any stage kind; Cargo enforces that direction, and
//! its tests build in a fraction of the whole tree's time.

pub mod cache;
pub mod digest;
pub mod exec;
pub mod graph;
