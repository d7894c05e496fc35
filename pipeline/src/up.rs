//! `vigil up`: the whole pipeline in one process.
//!
//! A broker → producer over `samples/` → one detector worker (NanoDet-g) → SQLite sink,
//! printing every stored detection, and the HTTP API with the viewer on `api.addr`
//! (`http://127.0.0.1:8080/` by default), so uploads and the live view work as with
//! `vigil serve`. Ctrl-C stops the producer, lets the detector commit its
//! batch and the sink store what it has read, then shuts the broker down (when it is ours).
//!
//! # Which broker
//!
//! [`UpBroker::Embedded`] (the default, no Kafka installation needed): an in-memory broker,
//! librdkafka's mock cluster, started and stopped with the run. [`UpBroker::Configured`]
//! (`vigil up --bootstrap HOST:PORT`): the Kafka cluster of `kafka.bootstrap_servers`;
//! nothing is started, the stages create their topics there as `vigil produce`, `detect`
//! and `sink` do, and the detector runs in the configured `detector.delivery` (default
//! exactly-once).
//!
//! # Delivery mode on the in-memory broker
//!
//! The mock acknowledges `TxnOffsetCommit` without storing the offsets and does no
//! read_committed filtering (see `docs/architecture.md`). So on it `up` runs the detector **at-least-once**
//! (produce, wait for delivery, then a plain offset commit, which the mock does store)
//! and relies on the sink for exactly-once: rows are idempotent on `frame_id` and the
//! sink's offsets live in the database with the rows. The database ends exact (one row
//! per frame); the `detections` topic may hold a duplicate after a failure. This is a
//! choice for the mock only: `vigil detect` defaults to exactly-once, and so does `up` on
//! a real cluster.
//!
//! On the in-memory broker the sink uses a consumer group unique to the run
//! (`<sink.group_id>-up-<run id>`): its topics start empty on every run, so offsets stored
//! by an earlier run in the same database must not apply (they would skip the new
//! records). On a real cluster the topics persist and the sink keeps `sink.group_id`, as
//! `vigil sink` does.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, ApiError};
use crate::codec::DetectionResult;
use crate::detector::{self, Delivery, DetectorError, ModelThread};
use crate::health::Health;
use crate::kafka::{DevBroker, DevBrokerOptions, KafkaPlumbingError};
use crate::producer::{self, ProduceRequest, ProducerError};
use crate::settings::Settings;
use crate::sink::{self, SinkError};

/// What `vigil up` sends and when it stops.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Images to send (files, directories, globs); files that are not images are left out.
    pub samples: Vec<PathBuf>,
    /// Stop producing after this many frames (default: loop until shutdown).
    pub count: Option<u64>,
    /// With `count`: return once that many results are stored.
    pub exit_when_done: bool,
    /// Which broker the stages use.
    pub broker: UpBroker,
    /// Kept up to date by the detector and the sink, for whoever serves them (`/readyz`).
    pub detector_health: Health,
    pub sink_health: Health,
    /// Serve the API and the viewer on `api.addr` (with the stages' health on the same port).
    pub serve_api: bool,
}

/// The broker of an `up` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpBroker {
    /// An in-memory broker started for the run (on 127.0.0.1:`port`, or a free port); the
    /// detector runs at-least-once.
    Embedded { port: Option<u16> },
    /// The cluster at `kafka.bootstrap_servers`; the detector runs `detector.delivery`.
    Configured,
}

/// Why `vigil up` failed.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Broker(#[from] KafkaPlumbingError),
    #[error(transparent)]
    Producer(#[from] ProducerError),
    #[error(transparent)]
    Detector(#[from] DetectorError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("{0} (or run `vigil up --no-api`)")]
    Api(#[from] ApiError),
    #[error("a stage task failed: {0}")]
    Join(tokio::task::JoinError),
}

impl UpError {
    /// Whether the command was used wrongly (exit code 2) rather than failing at run time.
    pub fn is_usage(&self) -> bool {
        match self {
            UpError::Broker(e) => e.is_usage(),
            UpError::Producer(e) => e.is_usage(),
            UpError::Detector(e) => e.is_usage(),
            UpError::Sink(e) => e.is_usage(),
            UpError::Api(e) => e.is_usage(),
            UpError::Join(_) => false,
        }
    }
}

/// What an `up` run stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpSummary {
    pub produced: u64,
    pub stored: u64,
}

/// Starts the in-memory broker with the configured topics and points `settings` at it:
/// at-least-once detector, a sink group of its own (see the module docs).
/// `kafka.fetch_wait_max_ms` on the embedded broker.
pub(crate) const EMBEDDED_FETCH_WAIT_MS: u64 = 5;

async fn embedded_broker(settings: &mut Settings, port: Option<u16>) -> Result<DevBroker, UpError> {
    let broker = DevBroker::start_with(&DevBrokerOptions { brokers: 1, port, ..DevBrokerOptions::default() }).await?;
    // One process, one consumer per group: no reason to wait for more members.
    broker.group_initial_rebalance_delay(Duration::from_millis(0));
    settings.kafka.bootstrap_servers = broker.bootstrap_servers().to_owned();
    broker.create_topics(&settings.kafka)?;
    settings.detector.delivery = Delivery::AtLeastOnce;
    // The mock holds an empty fetch for all of fetch.wait.max.ms (see the setting).
    settings.kafka.fetch_wait_max_ms = EMBEDDED_FETCH_WAIT_MS;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    settings.sink.group_id = format!("{}-up-{}", settings.sink.group_id, &run_id[..12]);
    Ok(broker)
}

/// Runs the pipeline until `shutdown` (or, with `exit_when_done`, until `count`
/// results are stored). The stages are the ones `vigil produce`, `vigil detect` and
/// `vigil sink` run, with the same entry points.
pub async fn run(settings: &Settings, options: &UpOptions, shutdown: CancellationToken) -> Result<UpSummary, UpError> {
    let request = ProduceRequest {
        paths: options.samples.clone(),
        repeat: true,
        count: options.count,
        images_only: true,
        ..ProduceRequest::default()
    };
    // Refuse a samples path without images before starting anything.
    producer::files_to_send(&request)?;

    let mut settings = settings.clone();
    // Held until every stage has returned; dropping it stops the in-memory broker.
    let broker = match options.broker {
        UpBroker::Embedded { port } => Some(embedded_broker(&mut settings, port).await?),
        UpBroker::Configured => None,
    };
    let what = match options.broker {
        UpBroker::Embedded { .. } => {
            "in-memory broker up; detector at-least-once + exactly-once sink (see `vigil up --help`)"
        }
        UpBroker::Configured => "using the Kafka cluster at kafka.bootstrap_servers; nothing started",
    };
    info!(
        bootstrap = %settings.kafka.bootstrap_servers,
        delivery = %settings.detector.delivery,
        database = %sink::redact_url(&settings.sink.database_url),
        "{what}"
    );
    println!(
        "vigil up: broker {}{}, detector {}, samples from {}, database {}; Ctrl-C to stop",
        settings.kafka.bootstrap_servers,
        if broker.is_some() { " (in-memory)" } else { "" },
        settings.detector.delivery,
        options.samples.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        sink::redact_url(&settings.sink.database_url)
    );

    // One token stops every stage at once (`shutdown`, or all results stored): the
    // producer flushes, the detector commits the batch in its model, the sink stores what
    // it read. The broker is dropped last, after all three have returned.
    let stop = CancellationToken::new();
    let (seen_tx, mut seen_rx) = mpsc::channel::<DetectionResult>(256);

    let model = ModelThread::nanodet(&settings).await?;
    let api = match options.serve_api {
        false => None,
        true => {
            let stages = vec![("detector", options.detector_health.clone()), ("sink", options.sink_health.clone())];
            let server = api::start(&settings, Health::new(), stages, stop.clone()).await?;
            println!("vigil up: viewer and API on http://{}/ (POST images to /v1/frames?source=ID)", server.addr);
            Some(server)
        }
    };
    let detect = {
        let settings = settings.clone();
        let stop = stop.clone();
        let health = options.detector_health.clone();
        tokio::spawn(async move { detector::run_with_health(&settings, model, stop, health).await })
    };
    let sink = {
        let settings = settings.clone();
        let stop = stop.clone();
        let health = options.sink_health.clone();
        tokio::spawn(async move { sink::run_with_health(&settings, Some(seen_tx), stop, health).await })
    };
    let produce = {
        let settings = settings.clone();
        let stop = stop.clone();
        tokio::spawn(async move { producer::run(&settings, &request, stop).await })
    };

    let started = Instant::now();
    let mut stored = 0u64;
    let target = options.count.filter(|_| options.exit_when_done);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            seen = seen_rx.recv() => match seen {
                Some(result) => {
                    stored += 1;
                    println!("{}", result.line());
                    if target.is_some_and(|n| stored >= n) {
                        info!(stored, elapsed_s = started.elapsed().as_secs_f64(), "all results stored");
                        break;
                    }
                }
                None => break, // the sink stopped (its error is reported below)
            },
        }
    }
    stop.cancel();
    let produced = match produce.await {
        Ok(Ok(summary)) => summary.delivered,
        Ok(Err(e)) => {
            warn!(error = %e, "producer failed");
            0
        }
        Err(e) => return Err(UpError::Join(e)),
    };
    let detected = detect.await.map_err(UpError::Join)?;
    let stored_by_sink = sink.await.map_err(UpError::Join)?;
    if let Some(api) = api {
        // Uploads in progress are delivered before the broker goes.
        if api.task.await.is_err() {
            warn!("the API server task panicked");
        }
    }
    drop(broker);
    let detected = detected?;
    let sunk = stored_by_sink?;
    println!(
        "vigil up: produced {produced}, detected {} (+{} dead letters), stored {} rows ({} duplicates skipped) in {:.1} s",
        detected.results,
        detected.dead_letters,
        sunk.inserted,
        sunk.duplicates,
        started.elapsed().as_secs_f64()
    );
    Ok(UpSummary { produced, stored: sunk.inserted })
}
