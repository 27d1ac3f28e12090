//! Safetensors encoding of named host tensors. Cached tensors use this format so a teammate can
//! open them from PyTorch (`safetensors.torch.load_file`). Output is deterministic: tensors are
//! written in name order with no metadata that varies between runs.

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::BTreeMap;

/// A host tensor: f32 or u8 data with a shape.
#[derive(Debug, Clone, PartialEq)]
pub enum HostTensor {
    F32 {
        shape: Vec<usize>,
        data: Vec<f32>,
    },
    U8 {
        shape: Vec<usize>,
        data: Vec<u8>,
    },
    /// Labels of data sets with more than 256 classes.
    U16 {
        shape: Vec<usize>,
        data: Vec<u16>,
    },
}

impl HostTensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor::F32 { shape, data }
    }
    pub fn u8(shape: Vec<usize>, data: Vec<u8>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor::U8 { shape, data }
    }
    pub fn shape(&self) -> &[usize] {
        match self {
            HostTensor::F32 { shape, .. }
            | HostTensor::U8 { shape, .. }
            | HostTensor::U16 { shape, .. } => shape,
        }
    }
    /// The data, if the tensor is f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            HostTensor::F32 { data, .. } => Some(data),
            HostTensor::U8 { .. } | HostTensor::U16 { .. } => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TensorIoError {
    #[error("safetensors: {0}")]
    Format(String),
    #[error("tensor `{0}` is missing")]
    Missing(String),
    #[error("tensor `{name}` has dtype {found}, expected {expected}")]
    Dtype {
        name: String,
        found: String,
        expected: &'static str,
    },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
}

pub fn encode(tensors: &BTreeMap<String, HostTensor>) -> Vec<u8> {
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| match t {
            HostTensor::F32 { shape, data } => (
                n.clone(),
                Dtype::F32,
                shape.clone(),
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            HostTensor::U8 { shape, data } => (n.clone(), Dtype::U8, shape.clone(), data.clone()),
            HostTensor::U16 { shape, data } => (
                n.clone(),
                Dtype::U16,
                shape.clone(),
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                TensorView::new(*d, s.clone(), b).expect("shape matches data length"),
            )
        })
        .collect();
    safetensors::serialize(views, &None).expect("serialising in-memory tensors cannot fail")
}

pub fn decode(bytes: &[u8]) -> Result<BTreeMap<String, HostTensor>, TensorIoError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| TensorIoError::Format(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let t = match view.dtype() {
            Dtype::F32 => HostTensor::F32 {
                shape,
                data: view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            },
            Dtype::U8 => HostTensor::U8 {
                shape,
                data: view.data().to_vec(),
            },
            Dtype::U16 => HostTensor::U16 {
                shape,
                data: view
                    .data()
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            },
            other => {
                return Err(TensorIoError::Dtype {
                    name,
                    found: format!("{other:?}"),
                    expected: "F32 or U8",
                })
            }
        };
        out.insert(name, t);
    }
    Ok(out)
}

/// Typed access to a decoded tensor map.
pub trait TensorMapExt {
    fn take_f32(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>), TensorIoError>;
    fn take_u8(&mut self, name: &str) -> Result<(Vec<usize>, Vec<u8>), TensorIoError>;
    /// Integer labels stored as U8 or U16, widened to u16.
    fn take_labels(&mut self, name: &str) -> Result<(Vec<usize>, Vec<u16>), TensorIoError>;
}

impl TensorMapExt for BTreeMap<String, HostTensor> {
    fn take_f32(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>), TensorIoError> {
        match self.remove(name) {
            Some(HostTensor::F32 { shape, data }) => Ok((shape, data)),
            Some(_) => Err(TensorIoError::Dtype {
                name: name.into(),
                found: "an integer type".into(),
                expected: "F32",
            }),
            None => Err(TensorIoError::Missing(name.into())),
        }
    }
    fn take_u8(&mut self, name: &str) -> Result<(Vec<usize>, Vec<u8>), TensorIoError> {
        match self.remove(name) {
            Some(HostTensor::U8 { shape, data }) => Ok((shape, data)),
            Some(_) => Err(TensorIoError::Dtype {
                name: name.into(),
                found: "F32 or U16".into(),
                expected: "U8",
            }),
            None => Err(TensorIoError::Missing(name.into())),
        }
    }
    fn take_labels(&mut self, name: &str) -> Result<(Vec<usize>, Vec<u16>), TensorIoError> {
        match self.remove(name) {
            Some(HostTensor::U8 { shape, data }) => {
                Ok((shape, data.into_iter().map(u16::from).collect()))
            }
            Some(HostTensor::U16 { shape, data }) => Ok((shape, data)),
            Some(_) => Err(TensorIoError::Dtype {
                name: name.into(),
                found: "F32".into(),
                expected: "U8 or U16",
            }),
            None => Err(TensorIoError::Missing(name.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_exact_and_deterministic() {
        let mut m = BTreeMap::new();
        m.insert(
            "w".to_string(),
            HostTensor::f32(vec![2, 2], vec![1.0, -0.0, f32::MIN_POSITIVE, 3.5]),
        );
        m.insert("y".to_string(), HostTensor::u8(vec![3], vec![0, 7, 255]));
        m.insert(
            "wide".to_string(),
            HostTensor::U16 {
                shape: vec![2],
                data: vec![999, 65535],
            },
        );
        let a = encode(&m);
        assert_eq!(a, encode(&m));
        let back = decode(&a).unwrap();
        assert_eq!(back, m);
        assert!(decode(&a[..a.len() - 1]).is_err());
    }
}
