//! The TF.js graph model file (`nanodet.json`): topology, signature and weights.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value as Json;

use super::weights::{load_weights, ManifestGroup, WeightTensor};
use super::ModelError;

/// Graph file name inside the model directory.
pub(super) const GRAPH_FILE: &str = "nanodet.json";

/// One node of the graph, attributes kept as JSON until the network reads them.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct GraphNode {
    pub name: String,
    pub op: String,
    #[serde(default)]
    pub input: Vec<String>,
    #[serde(default)]
    pub attr: HashMap<String, Json>,
}

impl GraphNode {
    /// An integer list attribute such as `strides` or `ksize`.
    pub(super) fn int_list(&self, key: &str) -> Option<Vec<i64>> {
        self.attr.get(key)?.get("list")?.get("i")?.as_array()?.iter().map(|v| v.as_str()?.parse().ok()).collect()
    }

    /// A base64-encoded string attribute such as `padding` or `data_format`, decoded.
    pub(super) fn string(&self, key: &str) -> Option<String> {
        decode_base64(self.attr.get(key)?.get("s")?.as_str()?)
    }

    pub(super) fn float(&self, key: &str) -> Option<f32> {
        self.attr.get(key)?.get("f")?.as_f64().map(|f| f as f32)
    }

    pub(super) fn bool(&self, key: &str) -> Option<bool> {
        self.attr.get(key)?.get("b")?.as_bool()
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModelJson {
    format: String,
    model_topology: Topology,
    weights_manifest: Vec<ManifestGroup>,
    signature: Signature,
}

#[derive(Debug, Deserialize)]
struct Topology {
    node: Vec<GraphNode>,
}

#[derive(Debug, Deserialize)]
struct Signature {
    inputs: HashMap<String, Json>,
    outputs: HashMap<String, Json>,
}

/// The parsed graph with all constants decoded.
#[derive(Debug)]
pub(super) struct TfjsGraph {
    pub nodes: Vec<GraphNode>,
    pub consts: HashMap<String, WeightTensor>,
    pub input: String,
    /// Output node names, sorted (`Identity`, `Identity_1`, …).
    pub outputs: Vec<String>,
}

impl TfjsGraph {
    /// Loads `dir/nanodet.json` and the shards its manifest names.
    pub(super) fn load(dir: &Path) -> Result<TfjsGraph, ModelError> {
        let path = dir.join(GRAPH_FILE);
        if !path.exists() {
            return Err(ModelError::MissingFile { path });
        }
        let text = std::fs::read_to_string(&path).map_err(|error| ModelError::Io { path: path.clone(), error })?;
        let bad = |reason: String| ModelError::BadGraph { path: path.clone(), reason };
        let model: ModelJson = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if model.format != "graph-model" {
            return Err(bad(format!("format is `{}`, expected `graph-model`", model.format)));
        }
        let consts = load_weights(dir, &path, &model.weights_manifest)?;
        let strip = |name: &String| name.trim_end_matches(":0").to_string();
        let inputs: Vec<String> = model.signature.inputs.keys().map(strip).collect();
        let [input] = inputs.as_slice() else {
            return Err(bad(format!("expected one input, found {}", inputs.len())));
        };
        let mut outputs: Vec<String> = model.signature.outputs.keys().map(strip).collect();
        outputs.sort_by_key(|name| output_index(name));
        let graph = TfjsGraph { nodes: model.model_topology.node, consts, input: input.clone(), outputs };
        graph.check_consts()?;
        Ok(graph)
    }

    /// Every `Const` node must have a weight of the declared shape, and every weight a node.
    fn check_consts(&self) -> Result<(), ModelError> {
        let mut used = 0;
        for node in self.nodes.iter().filter(|n| n.op == "Const") {
            let tensor =
                self.consts.get(&node.name).ok_or_else(|| ModelError::MissingTensor { name: node.name.clone() })?;
            used += 1;
            if let Some(declared) = declared_shape(node) {
                if declared != tensor.shape {
                    return Err(ModelError::BadShape {
                        name: node.name.clone(),
                        expected: format!("{declared:?}"),
                        actual: tensor.shape.clone(),
                    });
                }
            }
        }
        if used != self.consts.len() {
            let nodes: std::collections::HashSet<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            if let Some(name) = self.consts.keys().find(|k| !nodes.contains(k.as_str())) {
                return Err(ModelError::UnusedTensor { name: name.clone() });
            }
        }
        Ok(())
    }
}

/// `Identity_3` → 3, `Identity` → 0: the graph's output order.
fn output_index(name: &str) -> usize {
    name.rsplit_once('_').and_then(|(_, n)| n.parse().ok()).unwrap_or(0)
}

/// The shape a `Const` node declares in its `value` attribute (dims without a size are 0).
fn declared_shape(node: &GraphNode) -> Option<Vec<usize>> {
    let dims = node.attr.get("value")?.get("tensor")?.get("tensorShape")?;
    let Some(dims) = dims.get("dim").and_then(Json::as_array) else { return Some(vec![]) };
    dims.iter().map(|d| d.get("size").and_then(Json::as_str).unwrap_or("0").parse().ok()).collect()
}

fn decode_base64(text: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_tfjs_string_attrs() {
        assert_eq!(decode_base64("VkFMSUQ=").as_deref(), Some("VALID"));
        assert_eq!(decode_base64("TkhXQw==").as_deref(), Some("NHWC"));
    }

    #[test]
    fn orders_outputs_by_suffix() {
        assert_eq!(output_index("Identity"), 0);
        assert_eq!(output_index("Identity_5"), 5);
    }
}
