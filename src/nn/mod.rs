//! dfdx glue: run-time-sized layers, the multi-head MLP, masked optimizers and tensor I/O.

pub mod arch;
pub mod conv;
pub mod mlp;
pub mod optim;
pub mod tensorio;
pub mod torchvision;
