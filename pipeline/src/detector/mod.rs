//! The detect stage: consumer group on `images`, dynamic batches through the model,
//! one Kafka transaction per batch to `detections` (and `images.dlq`).

pub mod config;
pub use config::*;
