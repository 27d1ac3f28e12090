//! dfdx glue: the multi-head model (`model`: an MLP or a conv trunk, on the host and on a
//! device), the layer vocabulary that its forward pass, LRP, FullGrad and the importance
//! methods share (`seq`), tensor aliases (`tensor`), architectures (`arch`), conv and pooling
//! ops (`conv`), dense layers (`dense`), the CPU paths' matrix product (`gemm`) and host
//! buffers (`host`), masked optimizers (`optim`), safetensors I/O and torchvision weights.

pub mod arch;
pub mod conv;
pub mod dense;
pub mod gemm;
pub mod host;
pub mod model;
pub mod optim;
pub mod scenario;
pub mod seq;
pub mod tensor;
pub mod tensorio;
pub mod torchvision;
