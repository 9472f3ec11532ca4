//! Reading a checkpoint file into named f32 arrays.
//!
//! Both of HF's formats are read into the same map, so key-layout detection and module
//! construction ([`crate::load`]) never care where a tensor came from. Half-precision
//! checkpoints are widened to f32.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};

/// A checkpoint's weight files, in order of preference.
pub const WEIGHT_FILES: &[&str] = &["model.safetensors", "pytorch_model.bin"];

/// Largest safetensors checkpoint read: far above BERT-large's 1.3 GB in f32, and a bound on
/// what a device or an endless pipe given as the file could make it allocate.
const MAX_WEIGHTS_FILE: u64 = 16 << 30;

/// One tensor of a checkpoint, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl RawTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// A 2-d tensor transposed in memory (torch `[out, in]` <-> Burn `[in, out]`). Done on the
    /// host at load time rather than as a tensor view: a strided weight would be copied back
    /// into row-major order by every forward pass (most of the time of a one-text forward).
    pub fn transposed(&self) -> RawTensor {
        let [r, c] = self.shape[..] else {
            panic!("transposed: expected 2 dims, got {:?}", self.shape)
        };
        let mut data = vec![0.0; self.data.len()];
        for (i, row) in self.data.chunks_exact(c).enumerate() {
            for (j, &x) in row.iter().enumerate() {
                data[j * r + i] = x;
            }
        }
        RawTensor::new(vec![c, r], data)
    }

    /// A tensor's values on the host, as f32.
    pub fn from_tensor<const D: usize>(t: Tensor<D>) -> Result<Self> {
        let shape = t.dims().to_vec();
        let data = t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| ModelError::Other(format!("reading a tensor back: {e:?}")))?;
        Ok(Self::new(shape, data))
    }

    pub fn to_tensor<const D: usize>(&self, device: &Device) -> Tensor<D> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        )
    }
}

/// All tensors of one checkpoint file, by key.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, RawTensor>,
}

impl Checkpoint {
    /// Reads `model.safetensors` or `pytorch_model.bin` (by extension).
    pub fn read(path: &Path) -> Result<Self> {
        let tensors = match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => read_safetensors(path)?,
            _ => read_pytorch(path)?,
        };
        if tensors.is_empty() {
            return Err(weights_error(path, "the file holds no tensors"));
        }
        // A NaN or infinite weight makes every score NaN, which would reach users as a label.
        if let Some((name, _)) = tensors
            .iter()
            .find(|(_, t)| t.data.iter().any(|x| !x.is_finite()))
        {
            return Err(weights_error(
                path,
                format!("tensor {name} holds NaN or infinite values"),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }
}

fn weights_error(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Weights {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn read_safetensors(path: &Path) -> Result<BTreeMap<String, RawTensor>> {
    let bytes =
        crate::fsutil::read_limited(path, MAX_WEIGHTS_FILE).map_err(|e| ModelError::io(path, e))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| weights_error(path, format!("not a valid safetensors file ({e})")))?;
    let mut out = BTreeMap::new();
    for (name, view) in file.tensors() {
        let Some(data) = floats_from_bytes(safetensors_dtype(view.dtype()), view.data()) else {
            // Integer buffers (HF's `position_ids`) are not weights.
            continue;
        };
        out.insert(name, RawTensor::new(view.shape().to_vec(), data));
    }
    Ok(out)
}

fn read_pytorch(path: &Path) -> Result<BTreeMap<String, RawTensor>> {
    if !path.exists() {
        return Err(ModelError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        ));
    }
    let reader = pytorch_reader::PytorchReader::new(path)
        .map_err(|e| weights_error(path, format!("not a readable PyTorch checkpoint ({e})")))?;
    let mut out = BTreeMap::new();
    for (name, tensor) in reader.into_tensors() {
        let dtype = pytorch_dtype(tensor.dtype());
        let bytes = tensor
            .read()
            .map_err(|e| weights_error(path, format!("tensor {name}: {e}")))?;
        if let Some(data) = floats_from_bytes(dtype, &bytes) {
            out.insert(name, RawTensor::new(tensor.shape().to_vec(), data));
        }
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum FloatKind {
    F32,
    F16,
    BF16,
    F64,
    NotFloat,
}

fn safetensors_dtype(dtype: Dtype) -> FloatKind {
    match dtype {
        Dtype::F32 => FloatKind::F32,
        Dtype::F16 => FloatKind::F16,
        Dtype::BF16 => FloatKind::BF16,
        Dtype::F64 => FloatKind::F64,
        _ => FloatKind::NotFloat,
    }
}

fn pytorch_dtype(dtype: pytorch_reader::DType) -> FloatKind {
    use pytorch_reader::DType;
    match dtype {
        DType::F32 => FloatKind::F32,
        DType::F16 => FloatKind::F16,
        DType::BF16 => FloatKind::BF16,
        DType::F64 => FloatKind::F64,
        _ => FloatKind::NotFloat,
    }
}

/// Little-endian bytes -> f32s; `None` for non-float tensors.
fn floats_from_bytes(kind: FloatKind, bytes: &[u8]) -> Option<Vec<f32>> {
    let out = match kind {
        FloatKind::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        FloatKind::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        FloatKind::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        FloatKind::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        FloatKind::NotFloat => return None,
    };
    Some(out)
}

/// Writes tensors as a safetensors file, atomically (temp file + rename), so an interrupted
/// write never leaves a truncated checkpoint behind.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, RawTensor>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let data: Vec<std::borrow::Cow<'_, [u8]>> =
        tensors.values().map(|t| le_bytes(&t.data)).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&data)
        .map(|((name, t), bytes)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), bytes)
                .expect("shape matches data");
            (name.clone(), view)
        })
        .collect();
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| weights_error(path, format!("cannot serialise: {e}")))?;
    crate::fsutil::write_atomic(path, &bytes)
}

/// `data` as safetensors stores it, little-endian: the values' own memory on a little-endian
/// target (no copy of a large checkpoint), a converted copy on a big-endian one.
fn le_bytes(data: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        // SAFETY: the slice covers exactly `data`'s `size_of_val(data)` initialised bytes
        // (`f32` has no padding, `u8` has alignment 1 and every byte is a valid `u8`) and
        // borrows `data` for its lifetime. Reinterpreting is sound on any target; the
        // `target_endian` check above is what makes the bytes little-endian.
        std::borrow::Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data))
        })
    } else {
        std::borrow::Cow::Owned(data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_bytes_are_little_endian() {
        let data = [1.0f32, -2.5, f32::MIN_POSITIVE, f32::NAN];
        let expected: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(&*le_bytes(&data), expected.as_slice());
        assert!(le_bytes(&[]).is_empty());
    }

    #[test]
    fn safetensors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let mut map = BTreeMap::new();
        map.insert(
            "a.weight".to_string(),
            RawTensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]),
        );
        write_safetensors(&path, &map, None).unwrap();
        let back = Checkpoint::read(&path).unwrap();
        assert_eq!(back.tensors, map);
    }

    #[test]
    fn corrupt_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, b"definitely not safetensors").unwrap();
        let err = Checkpoint::read(&path).unwrap_err().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        assert!(err.contains("not a valid safetensors"), "{err}");

        let path = dir.path().join("pytorch_model.bin");
        std::fs::write(&path, b"garbage").unwrap();
        let err = Checkpoint::read(&path).unwrap_err().to_string();
        assert!(err.contains("pytorch_model.bin"), "{err}");
    }

    #[test]
    fn half_precision_widens() {
        let h = half::f16::from_f32(0.5).to_le_bytes();
        assert_eq!(floats_from_bytes(FloatKind::F16, &h).unwrap(), vec![0.5]);
        let b = half::bf16::from_f32(-2.0).to_le_bytes();
        assert_eq!(floats_from_bytes(FloatKind::BF16, &b).unwrap(), vec![-2.0]);
    }

    #[test]
    fn transposed_in_memory() {
        let t = RawTensor::new(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let tt = t.transposed();
        assert_eq!(tt.shape, vec![3, 2]);
        assert_eq!(tt.data, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        assert_eq!(tt.transposed().data, t.data);
    }
}
