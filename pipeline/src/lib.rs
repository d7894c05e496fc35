//! Vigil: a highly available Kafka object-detection pipeline.
//!
//! One module per stage (`producer`, `detector`, `sink`), the model in `model`,
//! the wire format in `codec`, Kafka plumbing shared by the stages in `kafka`.

pub mod codec;
pub mod bench;
pub mod detect_image;
pub mod detector;
pub mod kafka;
pub mod model;
pub mod producer;
pub mod settings;
pub mod sink;
pub mod tail;
pub mod telemetry;
pub mod testing;
pub mod up;
pub mod verify;
