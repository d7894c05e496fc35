//! Test doubles and fixtures shared by the detector's unit tests: a stand-in model and
//! Avro-encoded frames.

use std::collections::HashMap;
use std::io::Cursor;
use std::time::{Duration, Instant};

use super::judge::InputLimits;
use super::model_thread::InputRecord;
use super::overload::Overload;
use crate::codec::{Frame, ImageEncoding};
use crate::model::{DecodeLimits, DecodedFrame, Detection, Detector, ModelError, INPUT_SIZE};

/// A stand-in model for unit tests only (the product always runs NanoDet): one
/// "person" box covering the image, or a failure for frames whose first pixel is
/// pure red, so splitting a failed batch can be tested.
pub(crate) struct FakeModel {
    pub(crate) calls: usize,
}

impl Detector for FakeModel {
    fn model_name(&self) -> &str {
        "fake"
    }
    fn model_version(&self) -> &str {
        "0"
    }
    fn backend_name(&self) -> &str {
        "test"
    }
    fn detect(&mut self, frames: &[DecodedFrame]) -> Result<Vec<Vec<Detection>>, ModelError> {
        self.calls += 1;
        let plane = (INPUT_SIZE * INPUT_SIZE) as usize;
        if frames.iter().any(|f| f.chw[0] > 0.99 && f.chw[plane] < 0.01) {
            return Err(ModelError::Inference("red frame".into()));
        }
        Ok(frames
            .iter()
            .map(|f| {
                vec![Detection {
                    label: "person".into(),
                    class_id: 0,
                    score: 0.9,
                    bbox: [0.0, 0.0, f.width as f32, f.height as f32],
                }]
            })
            .collect())
    }
}

/// A model whose backend is broken (every call fails, as on a lost GPU) for `broken_for`
/// from its first call, forever when `None`; then it answers as [`FakeModel`].
pub(crate) struct BrokenModel {
    broken_for: Option<Duration>,
    first_call: Option<Instant>,
    inner: FakeModel,
}

impl BrokenModel {
    pub(crate) fn forever() -> Self {
        BrokenModel { broken_for: None, first_call: None, inner: FakeModel { calls: 0 } }
    }

    pub(crate) fn for_a_while(broken_for: Duration) -> Self {
        BrokenModel { broken_for: Some(broken_for), first_call: None, inner: FakeModel { calls: 0 } }
    }
}

impl Detector for BrokenModel {
    fn model_name(&self) -> &str {
        "broken"
    }
    fn model_version(&self) -> &str {
        "0"
    }
    fn backend_name(&self) -> &str {
        "test"
    }
    fn detect(&mut self, frames: &[DecodedFrame]) -> Result<Vec<Vec<Detection>>, ModelError> {
        let first_call = *self.first_call.get_or_insert_with(Instant::now);
        match self.broken_for {
            Some(broken_for) if first_call.elapsed() >= broken_for => self.inner.detect(frames),
            _ => Err(ModelError::Inference("device lost".into())),
        }
    }
}

/// [`FakeModel`], but its forward pass panics where that one fails (a red frame): a bug
/// in the model that one input triggers.
pub(crate) struct PanickingModel {
    pub(crate) inner: FakeModel,
}

impl Detector for PanickingModel {
    fn model_name(&self) -> &str {
        "panicking"
    }
    fn model_version(&self) -> &str {
        "0"
    }
    fn backend_name(&self) -> &str {
        "test"
    }
    fn detect(&mut self, frames: &[DecodedFrame]) -> Result<Vec<Vec<Detection>>, ModelError> {
        match self.inner.detect(frames) {
            Err(e) => panic!("injected panic in the forward pass: {e}"),
            ok => ok,
        }
    }
}

/// [`FakeModel`] taking `delay` per call, so that batches are in flight for a while.
pub(crate) struct SlowModel {
    pub(crate) delay: Duration,
    pub(crate) inner: FakeModel,
}

impl Detector for SlowModel {
    fn model_name(&self) -> &str {
        "slow"
    }
    fn model_version(&self) -> &str {
        "0"
    }
    fn backend_name(&self) -> &str {
        "test"
    }
    fn detect(&mut self, frames: &[DecodedFrame]) -> Result<Vec<Vec<Detection>>, ModelError> {
        std::thread::sleep(self.delay);
        self.inner.detect(frames)
    }
}

pub(crate) fn png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let mut out = Vec::new();
    image::RgbImage::from_pixel(width, height, image::Rgb(rgb))
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

pub(crate) fn frame_bytes(id: &str, data: Vec<u8>) -> Vec<u8> {
    Frame {
        frame_id: id.into(),
        source: "cam-1".into(),
        seq: 1,
        captured_at_us: 5,
        encoding: ImageEncoding::sniff(&data),
        width: None,
        height: None,
        data,
        attributes: HashMap::new(),
        session: None,
    }
    .encode()
    .unwrap()
}

pub(crate) fn record(offset: i64, payload: Option<Vec<u8>>) -> InputRecord {
    InputRecord {
        partition: 2,
        offset,
        key: Some(b"cam-1".to_vec()),
        payload,
        headers: vec![],
        epoch: 1,
        timestamp_ms: None,
        trace: Default::default(),
    }
}

pub(crate) fn limits_of(cfg: &super::DetectorConfig) -> InputLimits {
    InputLimits::of(cfg)
}

pub(crate) fn limits() -> InputLimits {
    InputLimits { max_record_bytes: 100_000, decode: DecodeLimits::default(), overload: Overload::default() }
}
