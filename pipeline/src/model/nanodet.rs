//! [`NanoDet`]: the loaded network plus its pre- and post-processing, as a [`Detector`].

use burn::tensor::{Tensor, TensorData};

use super::backend::resolve;
use super::graph::TfjsGraph;
use super::network::{Network, OpProfile};
use super::postprocess::{cell_centres, levels, reduce_on_device, CellResults, Level};
use super::{
    Backend, DecodedFrame, Detection, Detector, ModelConfig, ModelError, PostProcess, ResolvedBackend, INPUT_SIZE,
};

/// COCO class names in model order.
const LABELS: &str = include_str!("coco.names");

/// NanoDet-g loaded on a burn device.
pub struct NanoDet {
    network: Network,
    backend: ResolvedBackend,
    levels: Vec<Level>,
    bins: usize,
    centres: Vec<[f32; 2]>,
    labels: Vec<String>,
    post: PostProcess,
}

impl NanoDet {
    /// Loads `nanodet.json` + `nanodet.bin` from `config.dir` onto the chosen backend and
    /// runs one warm-up frame, which also checks the network end to end. Missing weights are
    /// fetched first, or refused, as `config.fetch` says (`ensure_weights`).
    pub fn load(config: &ModelConfig, backend: Backend) -> Result<NanoDet, ModelError> {
        super::ensure_weights(config)?;
        let graph = TfjsGraph::load(&config.dir)?;
        let backend = resolve(backend, config.precision)?;
        let network = Network::compile(&graph, &backend.device)?;
        let labels: Vec<String> = LABELS.lines().map(str::to_string).collect();
        let zeros = blank_frame();
        let outputs = network.forward(input_tensor(std::slice::from_ref(&zeros), network.device()))?;
        let shapes: Vec<[usize; 3]> = outputs.iter().map(|t| t.dims()).collect();
        let (levels, bins) = levels(&shapes, labels.len())?;
        let centres = cell_centres(&levels);
        let post = PostProcess {
            score_threshold: config.score_threshold,
            nms_iou: config.nms_iou,
            class_aware_nms: config.class_aware_nms,
        };
        Ok(NanoDet { network, backend, levels, bins, centres, labels, post })
    }

    /// Runs every batch size in `tune_batches(max_batch)` through the network and the
    /// device reduction once, so that on wgpu CubeCL's autotune times its kernel candidates
    /// for those shapes now, not on the first real frames (autotune keys round the batch up
    /// to a power of two). The results stay in CubeCL's persistent cache, so a restart finds
    /// them. Does nothing on the CPU backend, which has nothing to tune. Returns the sizes run.
    pub fn pretune(&self, max_batch: usize) -> Result<Vec<usize>, ModelError> {
        if self.backend.backend == Backend::Cpu {
            return Ok(Vec::new());
        }
        let sizes = tune_batches(max_batch);
        let zeros = blank_frame();
        for &n in &sizes {
            let frames = vec![zeros.clone(); n];
            self.reduce(self.forward_raw(self.input(&frames))?)?;
        }
        Ok(sizes)
    }

    pub fn backend(&self) -> &ResolvedBackend {
        &self.backend
    }

    /// Batched input tensor `[N, 3, 416, 416]` on this model's device.
    pub fn input(&self, frames: &[DecodedFrame]) -> Tensor<4> {
        input_tensor(frames, self.network.device())
    }

    /// The graph's raw outputs, in signature order (class scores per level, then distance bins).
    pub fn forward_raw(&self, input: Tensor<4>) -> Result<Vec<Tensor<3>>, ModelError> {
        self.network.forward(input)
    }

    /// [`forward_raw`](Self::forward_raw) with per-operation wall times added to `profile`.
    pub fn forward_profiled(&self, input: Tensor<4>, profile: &mut OpProfile) -> Result<Vec<Tensor<3>>, ModelError> {
        self.network.forward_profiled(input, profile)
    }

    /// Device-side reduction of raw outputs to per-cell results (brings them to the host).
    pub(crate) fn reduce(&self, outputs: Vec<Tensor<3>>) -> Result<CellResults, ModelError> {
        reduce_on_device(outputs, &self.levels, self.bins, self.network.device())
    }

    /// Host-side thresholding, NMS and scaling for every frame.
    pub(crate) fn finish(&self, cells: &CellResults, frames: &[DecodedFrame]) -> Vec<Vec<Detection>> {
        frames
            .iter()
            .enumerate()
            .map(|(i, f)| self.post.frame_detections(cells, &self.centres, i, (f.width, f.height), &self.labels))
            .collect()
    }

    /// Raw outputs → detections for `frames` (device reduction, then host NMS).
    pub fn postprocess(
        &self,
        outputs: Vec<Tensor<3>>,
        frames: &[DecodedFrame],
    ) -> Result<Vec<Vec<Detection>>, ModelError> {
        let cells = self.reduce(outputs)?;
        Ok(self.finish(&cells, frames))
    }

    /// Waits for queued device work (for honest stage timings on asynchronous devices).
    pub fn sync(&self) -> Result<(), ModelError> {
        self.network.device().sync().map_err(|e| ModelError::Inference(format!("{e:?}")))
    }
}

impl Detector for NanoDet {
    fn model_name(&self) -> &str {
        "nanodet-g"
    }

    fn model_version(&self) -> &str {
        "human-models@3.0.4"
    }

    fn backend_name(&self) -> &str {
        match self.backend.backend {
            Backend::Cpu => "cpu",
            Backend::Wgpu => "wgpu",
            Backend::Auto => "auto",
        }
    }

    fn detect(&mut self, frames: &[DecodedFrame]) -> Result<Vec<Vec<Detection>>, ModelError> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let outputs = self.forward_raw(self.input(frames))?;
        self.postprocess(outputs, frames)
    }
}

/// The batch sizes [`NanoDet::pretune`] runs: the powers of two below `max_batch`, then
/// `max_batch` itself.
fn tune_batches(max_batch: usize) -> Vec<usize> {
    let max_batch = max_batch.max(1);
    let mut sizes: Vec<usize> =
        std::iter::successors(Some(1usize), |n| n.checked_mul(2)).take_while(|&n| n < max_batch).collect();
    sizes.push(max_batch);
    sizes
}

/// An all-zero input frame, for the warm-up and pre-tuning passes.
fn blank_frame() -> DecodedFrame {
    DecodedFrame { width: INPUT_SIZE, height: INPUT_SIZE, chw: vec![0.0; 3 * (INPUT_SIZE * INPUT_SIZE) as usize] }
}

fn input_tensor(frames: &[DecodedFrame], device: &burn::tensor::Device) -> Tensor<4> {
    let side = INPUT_SIZE as usize;
    let mut data = Vec::with_capacity(frames.len() * 3 * side * side);
    for frame in frames {
        data.extend_from_slice(&frame.chw);
    }
    Tensor::<4>::from_data(TensorData::new(data, [frames.len(), 3, side, side]), device)
}

#[cfg(test)]
mod tests {
    use super::tune_batches;

    #[test]
    fn tunes_the_powers_of_two_below_the_largest_batch_and_the_largest() {
        assert_eq!(tune_batches(1), [1]);
        assert_eq!(tune_batches(8), [1, 2, 4, 8]);
        assert_eq!(tune_batches(6), [1, 2, 4, 6]);
        assert_eq!(tune_batches(32), [1, 2, 4, 8, 16, 32]);
        assert_eq!(tune_batches(0), [1]);
    }
}
