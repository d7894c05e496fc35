//! Vigil: a highly available Kafka object-detection pipeline.
//!
//! One module per stage (`producer`, `detector`, `sink`), the model in `model`, the wire
//! format in `codec`, Kafka plumbing shared by the stages in `kafka`. Each stage exposes
//! one entry point taking typed settings, its dependencies and a shutdown token, and
//! returning a summary; the `vigil` binary parses the command line and calls them.

pub mod api;
mod backoff;
pub mod bench;
pub mod chaos;
mod codec;
pub mod detector;
mod failpoint;
mod fleet;
pub mod health;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod producer;
pub mod settings;
pub mod sink;
pub mod tail;
pub mod telemetry;
pub mod testing;
mod thread_actor;
pub mod up;
pub mod verify;
