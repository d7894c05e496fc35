//! Model configuration (the `[model]` section).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the weights are and how raw outputs become detections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Directory holding `nanodet.json` and `nanodet.bin` (from `scripts/fetch-model.sh`).
    pub dir: PathBuf,
    /// Keep cells whose best class score is above this (0..1).
    pub score_threshold: f32,
    /// Non-maximum suppression IoU threshold (0..1).
    pub nms_iou: f32,
    /// Suppress only boxes of the same class (the reference is class-agnostic).
    pub class_aware_nms: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("models"), score_threshold: 0.3, nms_iou: 0.5, class_aware_nms: false }
    }
}
