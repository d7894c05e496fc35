//! The TF.js weights manifest and its binary shard(s): names, shapes, dtypes, float16.
//!
//! Every tensor's byte size is computed from the manifest; the shards must add up
//! exactly, so a truncated or padded `.bin` is refused before any value is used.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::ModelError;

/// Tensor values as stored: floats (dequantised to f32) or integers (shape constants).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Values {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// One named constant of the graph.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct WeightTensor {
    pub shape: Vec<usize>,
    pub values: Values,
}

impl WeightTensor {
    /// Integer view, for shape/axis/paddings constants.
    pub(super) fn as_ints(&self) -> Option<Vec<i64>> {
        match &self.values {
            Values::I32(v) => Some(v.iter().map(|&x| i64::from(x)).collect()),
            Values::F32(_) => None,
        }
    }

    pub(super) fn as_floats(&self) -> Option<&[f32]> {
        match &self.values {
            Values::F32(v) => Some(v),
            Values::I32(_) => None,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ManifestGroup {
    pub paths: Vec<String>,
    pub weights: Vec<ManifestEntry>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ManifestEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    #[serde(default)]
    pub quantization: Option<Quantization>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Quantization {
    pub dtype: String,
}

/// How one manifest entry is stored in the shard.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Storage {
    F32,
    F16,
    I32,
}

impl Storage {
    fn of(entry: &ManifestEntry) -> Result<Storage, String> {
        match (entry.dtype.as_str(), entry.quantization.as_ref().map(|q| q.dtype.as_str())) {
            ("float32", None) => Ok(Storage::F32),
            ("float32", Some("float16")) => Ok(Storage::F16),
            ("int32", None) => Ok(Storage::I32),
            (dtype, q) => Err(format!("tensor `{}`: unsupported dtype {dtype} (quantization {q:?})", entry.name)),
        }
    }

    fn bytes_per_value(self) -> usize {
        match self {
            Storage::F16 => 2,
            Storage::F32 | Storage::I32 => 4,
        }
    }
}

/// Reads every manifest group's shards (relative to `dir`) and decodes all tensors.
pub(crate) fn load_weights(
    dir: &Path,
    manifest_path: &Path,
    groups: &[ManifestGroup],
) -> Result<HashMap<String, WeightTensor>, ModelError> {
    let mut tensors = HashMap::new();
    for group in groups {
        let mut bytes = Vec::new();
        let mut first_path = None;
        for shard in &group.paths {
            let path = dir.join(shard);
            if !path.exists() {
                return Err(ModelError::MissingFile { path });
            }
            let data = std::fs::read(&path).map_err(|error| ModelError::Io { path: path.clone(), error })?;
            bytes.extend_from_slice(&data);
            first_path.get_or_insert(path);
        }
        let shard_path = first_path.unwrap_or_else(|| manifest_path.to_path_buf());
        let layout = group
            .weights
            .iter()
            .map(|e| Storage::of(e).map(|s| (e, s)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| ModelError::BadGraph { path: manifest_path.to_path_buf(), reason })?;
        let expected: usize = layout.iter().map(|(e, s)| e.shape.iter().product::<usize>() * s.bytes_per_value()).sum();
        if expected != bytes.len() {
            return Err(ModelError::WeightsSize { path: shard_path, expected, actual: bytes.len() });
        }
        let mut offset = 0;
        for (entry, storage) in layout {
            let n: usize = entry.shape.iter().product();
            let raw = &bytes[offset..offset + n * storage.bytes_per_value()];
            offset += raw.len();
            let values = decode(raw, storage);
            tensors.insert(entry.name.clone(), WeightTensor { shape: entry.shape.clone(), values });
        }
    }
    Ok(tensors)
}

fn decode(raw: &[u8], storage: Storage) -> Values {
    match storage {
        Storage::F16 => {
            Values::F32(raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect())
        }
        Storage::F32 => {
            Values::F32(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        }
        Storage::I32 => {
            Values::I32(raw.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        }
    }
}
