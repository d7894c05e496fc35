//! Raw network outputs → detections.
//!
//! The heavy, regular part (best class per cell, softmax-integral of the distance
//! bins) runs on the device over the whole batch; only three small tensors come back
//! to the host, where the per-detection loop (threshold, box, NMS) stays short.

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use super::{ModelError, INPUT_SIZE};

/// One detected object, box in original image pixels (may extend past the edge).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub label: String,
    pub class_id: u32,
    pub score: f32,
    /// `[x_min, y_min, x_max, y_max]`.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

/// Post-processing settings.
#[derive(Debug, Clone)]
pub(crate) struct PostProcess {
    pub score_threshold: f32,
    pub nms_iou: f32,
    pub class_aware_nms: bool,
}

/// One output level: its class-score and distance-bin outputs and its cell grid.
#[derive(Debug, Clone)]
pub(crate) struct Level {
    pub scores_output: usize,
    pub bins_output: usize,
    pub grid: usize,
    pub stride: f32,
}

/// Pairs the network outputs into levels from their shapes alone: class outputs have
/// `classes` channels, distance outputs `4 × bins`; the cell count gives the grid.
pub(crate) fn levels(shapes: &[[usize; 3]], classes: usize) -> Result<(Vec<Level>, usize), ModelError> {
    let bad = |why: String| ModelError::Inference(format!("unexpected output layout: {why}"));
    let mut levels = Vec::new();
    let mut bins = None;
    for (i, s) in shapes.iter().enumerate().filter(|(_, s)| s[2] == classes) {
        let cells = s[1];
        let grid = (cells as f64).sqrt().round() as usize;
        if grid * grid != cells || INPUT_SIZE as usize % grid != 0 {
            return Err(bad(format!("{cells} cells is not a square grid dividing the input")));
        }
        let (j, b) = shapes
            .iter()
            .enumerate()
            .find(|(j, t)| *j != i && t[1] == cells && t[2] != classes && t[2] % 4 == 0)
            .ok_or_else(|| bad(format!("no distance output for the {grid}x{grid} level")))?;
        if bins.is_some_and(|n| n != b[2] / 4) {
            return Err(bad("levels disagree on the number of distance bins".into()));
        }
        bins = Some(b[2] / 4);
        levels.push(Level { scores_output: i, bins_output: j, grid, stride: (INPUT_SIZE as usize / grid) as f32 });
    }
    if levels.is_empty() || levels.len() * 2 != shapes.len() {
        return Err(bad(format!("{} outputs do not pair into levels with {classes} classes", shapes.len())));
    }
    levels.sort_by_key(|l| std::cmp::Reverse(l.grid));
    Ok((levels, bins.unwrap_or(0)))
}

/// Per-cell results for the whole batch, on the host.
pub(crate) struct CellResults {
    /// `[N, cells]` best class score.
    pub scores: Vec<f32>,
    /// `[N, cells]` best class index.
    pub classes: Vec<i64>,
    /// `[N, cells, 4]` left/top/right/bottom distances in input pixels.
    pub distances: Vec<f32>,
    pub cells: usize,
}

/// Device part: best class and expected distances for every cell of every level.
pub(crate) fn reduce_on_device(
    outputs: Vec<Tensor<3>>,
    levels: &[Level],
    bins: usize,
    device: &Device,
) -> Result<CellResults, ModelError> {
    let bin_values =
        Tensor::<1>::from_data(TensorData::new((0..bins).map(|b| b as f32).collect::<Vec<_>>(), [bins]), device)
            .reshape([1, 1, 1, bins]);
    let mut scores = Vec::new();
    let mut classes = Vec::new();
    let mut distances = Vec::new();
    for level in levels {
        let (best, class) = outputs[level.scores_output].clone().max_dim_with_indices(2);
        let [n, cells, channels] = outputs[level.bins_output].dims();
        let probs = softmax(outputs[level.bins_output].clone().reshape([n, cells, channels / bins, bins]), 3);
        let expected = (probs * bin_values.clone()).sum_dim(3).mul_scalar(level.stride);
        scores.push(best);
        classes.push(class);
        distances.push(expected.reshape([n, cells, channels / bins]));
    }
    let scores = Tensor::cat(scores, 1);
    let cells = scores.dims()[1];
    let host = |data: TensorData| {
        data.convert::<f32>().try_into_vec::<f32>().map_err(|e| ModelError::Inference(format!("{e:?}")))
    };
    Ok(CellResults {
        scores: host(scores.into_data())?,
        classes: Tensor::cat(classes, 1)
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| ModelError::Inference(format!("{e:?}")))?,
        distances: host(Tensor::cat(distances, 1).into_data())?,
        cells,
    })
}

/// Cell centres in input pixels, in the order `reduce_on_device` concatenates levels.
pub(crate) fn cell_centres(levels: &[Level]) -> Vec<[f32; 2]> {
    levels
        .iter()
        .flat_map(|l| {
            (0..l.grid * l.grid).map(move |i| {
                let (row, col) = (i / l.grid, i % l.grid);
                [(col as f32 + 0.5) * l.stride, (row as f32 + 0.5) * l.stride]
            })
        })
        .collect()
}

impl PostProcess {
    /// Host part for frame `frame` of the batch: threshold, boxes, NMS, scaling.
    pub(crate) fn frame_detections(
        &self,
        cells: &CellResults,
        centres: &[[f32; 2]],
        frame: usize,
        size: (u32, u32),
        labels: &[String],
    ) -> Vec<Detection> {
        let base = frame * cells.cells;
        let mut candidates: Vec<(f32, usize, [f32; 4])> = (0..cells.cells)
            .filter(|&c| cells.scores[base + c] > self.score_threshold)
            .map(|c| {
                let d = &cells.distances[(base + c) * 4..(base + c) * 4 + 4];
                let [cx, cy] = centres[c];
                (cells.scores[base + c], cells.classes[base + c] as usize, [cx - d[0], cy - d[1], cx + d[2], cy + d[3]])
            })
            .collect();
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut kept: Vec<(f32, usize, [f32; 4])> = Vec::new();
        for candidate in candidates {
            let suppressed = kept
                .iter()
                .any(|k| (!self.class_aware_nms || k.1 == candidate.1) && iou(&k.2, &candidate.2) >= self.nms_iou);
            if !suppressed {
                kept.push(candidate);
            }
        }
        let (sx, sy) = (size.0 as f32 / INPUT_SIZE as f32, size.1 as f32 / INPUT_SIZE as f32);
        kept.into_iter()
            .map(|(score, class, b)| Detection {
                label: labels.get(class).cloned().unwrap_or_else(|| format!("class_{class}")),
                class_id: class as u32,
                score,
                bbox: [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy],
            })
            .collect()
    }
}

/// Intersection over union of two `[x0, y0, x1, y1]` boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter + 1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(scores: Vec<f32>, classes: Vec<i64>, distances: Vec<f32>) -> CellResults {
        let n = scores.len();
        CellResults { scores, classes, distances, cells: n }
    }

    #[test]
    fn pairs_levels_from_shapes() {
        let shapes = [[1, 2704, 80], [1, 676, 80], [1, 169, 80], [1, 2704, 44], [1, 676, 44], [1, 169, 44]];
        let (levels, bins) = levels(&shapes, 80).unwrap();
        assert_eq!(bins, 11);
        assert_eq!(
            levels.iter().map(|l| (l.grid, l.stride as usize)).collect::<Vec<_>>(),
            vec![(52, 8), (26, 16), (13, 32)]
        );
        assert_eq!((levels[0].scores_output, levels[0].bins_output), (0, 3));
        assert!(super::levels(&shapes[..5], 80).is_err());
    }

    #[test]
    fn nms_keeps_best_of_overlapping_boxes() {
        let pp = PostProcess { score_threshold: 0.3, nms_iou: 0.5, class_aware_nms: false };
        // Three cells at the same centre: two overlapping boxes, one below threshold.
        let centres = vec![[100.0, 100.0]; 3];
        let c = cells(vec![0.9, 0.8, 0.2], vec![1, 2, 3], vec![10.0; 12]);
        let labels: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
        let d = pp.frame_detections(&c, &centres, 0, (416, 832), &labels);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].label, "c1");
        assert_eq!(d[0].bbox, [90.0, 180.0, 110.0, 220.0]);
        let aware = PostProcess { class_aware_nms: true, ..pp };
        assert_eq!(aware.frame_detections(&c, &centres, 0, (416, 416), &labels).len(), 2);
    }

    #[test]
    fn iou_of_disjoint_and_identical_boxes() {
        assert!(iou(&[0.0, 0.0, 1.0, 1.0], &[2.0, 2.0, 3.0, 3.0]).abs() < 1e-6);
        assert!((iou(&[0.0, 0.0, 2.0, 2.0], &[0.0, 0.0, 2.0, 2.0]) - 1.0).abs() < 1e-6);
    }
}
