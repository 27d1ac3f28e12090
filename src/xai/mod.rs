//! Explanation methods used to score unit importance. LRP for now; the importance issue adds
//! Fisher, MAS, SI and friends behind the same `score` stage.

pub mod importance;
pub mod lrp;
