//! The pipeline's stages as commands: `produce`, `detect`, `sink`, and `up` (all of them
//! in one process).

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;
use vigil::detector::ModelThread;
use vigil::health::Health;
use vigil::producer::ProduceRequest;
use vigil::settings::Settings;
use vigil::up::{UpBroker, UpOptions};

use super::failure::Failure;
use super::model_flags::ModelFlags;
use super::EXIT_OK;

/// `vigil produce` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Publish images (files, directories, globs, or generated test images) to the images topic",
    long_about = "Publish images to the images topic (kafka.topics.images), one record per image: key = source id, \
        value = an Avro Frame (schemas/Frame.avsc) with a frame_id and a per-source sequence number. A file's \
        frame_id is derived from the source, its path below the PATH argument and its bytes, so running the same \
        command again (after a crash, say) sends the same frames and the sink stores each once; generated images \
        (--synthetic) get random ids.\n\n\
        Files are sent byte for byte and never decoded; a file whose format is not recognised from its magic \
        bytes is still sent, with a warning (the detector dead-letters what it cannot decode). The producer is \
        idempotent (enable.idempotence=true, acks=all). Missing topics are created with the configured \
        partition counts (images: 12 by default). Prints one summary line at the end; exits 1 if any frame \
        was not delivered (naming the first ones), 2 if the source id is blank, longer than 255 bytes or holds a \
        control character.",
    after_help = "Examples:\n  \
        vigil produce samples/                           # every file under samples/\n  \
        vigil produce 'photos/*.jpg' --source cam-7      # a glob (quote it), as camera cam-7\n  \
        vigil produce --synthetic 500                    # 500 generated 320x240 JPEGs\n  \
        vigil produce --synthetic 10 --fps 2 --loop      # a 2 frames/s test stream until Ctrl-C\n  \
        vigil --bootstrap 127.0.0.1:9092 produce img.jpg"
)]
pub(crate) struct ProduceArgs {
    /// Image files, directories (recursive) or glob patterns.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Source (camera) id: the record key; at most 255 bytes, no control characters [config: producer.source_id].
    #[arg(long, value_name = "ID")]
    source: Option<String>,
    /// Frames per second, 0 = as fast as possible [config: producer.frames_per_second].
    #[arg(long, value_name = "F")]
    fps: Option<f64>,
    /// Start over when the inputs are exhausted; runs until Ctrl-C (or --count).
    #[arg(long = "loop")]
    repeat: bool,
    /// Stop after N frames.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Also send N generated JPEG test images.
    #[arg(long, value_name = "N")]
    synthetic: Option<u64>,
}

impl ProduceArgs {
    /// Config keys these flags set.
    pub(crate) fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut o = Vec::new();
        if let Some(source) = &self.source {
            o.push(("producer.source_id", source.clone()));
        }
        if let Some(fps) = self.fps {
            o.push(("producer.frames_per_second", fps.to_string()));
        }
        o
    }
}

/// `vigil produce`: prints the summary line; exit 1 if a frame was not delivered.
pub(crate) async fn produce(
    settings: &Settings,
    args: ProduceArgs,
    shutdown: CancellationToken,
) -> Result<u8, Failure> {
    let request = ProduceRequest {
        paths: args.paths,
        synthetic: args.synthetic.unwrap_or(0),
        repeat: args.repeat,
        count: args.count,
        images_only: false,
        show_progress: true,
    };
    let summary = vigil::producer::run(settings, &request, shutdown).await?;
    println!("{}", summary.line(&settings.kafka.topics.images.name));
    summary.check()?;
    Ok(EXIT_OK)
}

/// `vigil detect` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(
    about = "Run a detector worker: images -> NanoDet-g -> detections, one Kafka transaction per batch",
    long_about = "Run a detector worker in the consumer group detector.group_id (default vigil-detector).\n\n\
        Frames from the images topic are batched (detector.max_batch frames or detector.max_wait_ms), decoded \
        and run through NanoDet-g on a dedicated thread; every frame yields one DetectionResult on the \
        detections topic, or, if it cannot be processed (not Avro, unknown schema, oversized, empty, corrupt \
        or too large an image), a dead letter on images.dlq with its original bytes and vigil.error.* headers.\n\n\
        In exactly-once mode (default) each batch is one Kafka transaction holding the results, the dead \
        letters and the input offsets (send_offsets_to_transaction with the consumer's group metadata). \
        Abortable errors abort, rewind to the last committed offsets and redo the batch; a fenced producer \
        is recreated. In at-least-once mode results are produced, then offsets committed (the sink removes \
        duplicates); use it only where transactions do not work, such as the in-memory broker.\n\n\
        The model weights come from model.dir and are fetched there on first use unless model.fetch = never.\n\n\
        Start as many workers as there are cores/GPUs; partitions are shared through the consumer group. \
        SIGTERM or Ctrl-C finishes and commits the current batch, then leaves the group, within \
        detector.shutdown_timeout_ms (else exit 1: a broker that is gone). A model backend that keeps failing \
        (a lost GPU) commits nothing and exits 1 after detector.backend_failure_limit_ms. On exit it prints \
        one `summary: {json}` line on stdout.\n\n\
        With telemetry.http_addr set it serves /healthz, /readyz (model loaded, group joined, a broker and the backend \
        answering) and /metrics (Prometheus text) on that address.",
    after_help = "Examples:\n  \
        vigil detect                                    # model on the GPU if there is one, else CPU\n  \
        vigil detect --backend cpu --instance-id det-1\n  \
        vigil detect --instance-id \"$POD_NAME\"          # stable id: a restart fences its predecessor at once\n  \
        vigil detect --delivery at-least-once           # for the in-memory broker (vigil broker)\n  \
        VIGIL__TELEMETRY__HTTP_ADDR=127.0.0.1:9464 vigil detect   # then: curl 127.0.0.1:9464/metrics\n  \
        VIGIL__DETECTOR__MAX_BATCH=16 VIGIL__DETECTOR__MAX_WAIT_MS=100 vigil detect"
)]
pub(crate) struct DetectArgs {
    #[command(flatten)]
    model: ModelFlags,
    /// Worker name; derives transactional.id = <group_id>-<instance_id>. Default: a fresh unique id
    /// per start [config: detector.instance_id].
    #[arg(long, value_name = "ID")]
    instance_id: Option<String>,
    /// exactly-once (Kafka transactions) or at-least-once [config: detector.delivery].
    #[arg(long, value_name = "MODE", value_parser = ["exactly-once", "at-least-once"])]
    delivery: Option<String>,
}

impl DetectArgs {
    /// Config keys these flags set.
    pub(crate) fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut o = self.model.overrides();
        if let Some(id) = &self.instance_id {
            o.push(("detector.instance_id", id.clone()));
        }
        if let Some(delivery) = &self.delivery {
            o.push(("detector.delivery", delivery.clone()));
        }
        o
    }
}

/// `vigil detect`: loads the model, runs until a signal, prints a `summary:` line.
pub(crate) async fn detect(settings: &Settings, shutdown: CancellationToken) -> Result<u8, Failure> {
    let health = Health::new();
    serve_http(settings, vec![("detector", health.clone())], &shutdown).await?;
    health.set_not_ready("loading the model");
    let model = ModelThread::nanodet(settings).await?;
    let summary = vigil::detector::run_with_health(settings, model, shutdown, health).await?;
    println!("summary: {}", serde_json::to_string(&summary).map_err(Failure::runtime)?);
    Ok(EXIT_OK)
}

/// `vigil sink` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(
    about = "Store detections in a database (SQLite or PostgreSQL), exactly once",
    long_about = "Store every result of the detections topic (kafka.topics.detections) as one row of the \
        `detections` table, exactly once.\n\n\
        The consumer reads with isolation.level=read_committed. Each batch is ONE database transaction that \
        inserts the rows (idempotent on frame_id) and upserts the consumer offsets \
        (table consumer_offsets: group, topic, partition -> next offset). On partition assignment the sink \
        seeks to the offsets stored in the database, so a sink killed at any moment resumes where its last \
        committed batch ended, and a redelivered result is skipped. Offsets are also committed to Kafka, \
        after the database, for lag monitoring only.\n\n\
        The schema is created or migrated at start-up. Several sinks may share the consumer group \
        (sink.group_id) and the database.\n\n\
        A second consumer, in group sink.group_id + \".dead-letters\", stores the dead-letter topic \
        (kafka.topics.dlq) in the `dead_letters` table (one row per images record: frame id, source, error kind \
        and message), the same way, so that `vigil serve` can say what became of a frame without a result.\n\n\
        With telemetry.http_addr set it serves /healthz, /readyz (not ready while the database or every broker is \
        unavailable) and /metrics (Prometheus text) on that address.",
    after_help = "Examples:\n  \
        vigil sink                                             # sqlite://vigil.sqlite (sink.database_url)\n  \
        vigil sink --database sqlite://vigil-data/run1.sqlite\n  \
        vigil sink --database postgres://vigil@127.0.0.1:5432/vigil\n  \
        VIGIL__SINK__MAX_BATCH=1000 vigil sink\n  \
        sqlite3 vigil.sqlite 'SELECT source, seq, detection_count FROM detections ORDER BY stored_at_us DESC LIMIT 5'"
)]
pub(crate) struct SinkArgs {
    /// Database URL: sqlite://PATH or postgres://USER[:PASS]@HOST:PORT/DB [config: sink.database_url].
    #[arg(long, value_name = "URL")]
    database: Option<String>,
}

impl SinkArgs {
    /// Config keys these flags set.
    pub(crate) fn overrides(&self) -> Vec<(&'static str, String)> {
        self.database.iter().map(|url| ("sink.database_url", url.clone())).collect()
    }
}

/// `vigil sink`: runs until a signal, then stores what it has read.
pub(crate) async fn sink(settings: &Settings, shutdown: CancellationToken) -> Result<u8, Failure> {
    let health = Health::new();
    serve_http(settings, vec![("sink", health.clone())], &shutdown).await?;
    vigil::sink::run_with_health(settings, None, shutdown, health).await?;
    Ok(EXIT_OK)
}

/// `vigil serve` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(
    about = "Serve the HTTP API: upload images, read their detections",
    long_about = "Serve the pipeline over HTTP, for cameras and apps that cannot speak Kafka. Stateless: run \
        as many replicas as you like behind a load balancer.\n\n\
        POST /v1/frames?source=ID takes an image (body with Content-Type image/*, or the `image` part of a \
        multipart/form-data form) and answers 202 {\"frame_id\": ...} once the brokers have acknowledged the \
        frame on kafka.topics.images (idempotent producer, acks=all). With an Idempotency-Key header a \
        retried upload gets the same frame_id. 503 with Retry-After while the producer cannot take more.\n\n\
        GET /v1/frames/FRAME_ID answers the stored result (the sink's database, sink.database_url), 404 until \
        it is stored; ?wait=SECONDS long-polls. GET /v1/sources lists the sources, \
        GET /v1/sources/SOURCE/detections pages through one source's results, newest first \
        (since=RFC3339, label=, min_score=, limit=, cursor=).\n\n\
        With api.tokens set (VIGIL__API__TOKENS=tok1,tok2:read) every /v1 route needs \
        `Authorization: Bearer TOKEN`; a `:read` token may not upload. Requests are rate limited per token \
        (api.rate_limit_per_s, api.rate_limit_burst; 429 with Retry-After). Errors are JSON: \
        {\"error\": {\"code\", \"message\"}}. /healthz, /readyz (a broker and the database answer) and /metrics \
        are served on the same port. On SIGTERM it stops taking connections and finishes the uploads in progress.",
    after_help = "Examples:\n  \
        vigil serve                                           # http://127.0.0.1:8080 (api.addr)\n  \
        curl -s -H 'Content-Type: image/jpeg' --data-binary @samples/dog.jpg \\\n       \
        'http://127.0.0.1:8080/v1/frames?source=cam-1'\n  \
        curl -s 'http://127.0.0.1:8080/v1/frames/FRAME_ID?wait=10'\n  \
        curl -s 'http://127.0.0.1:8080/v1/sources/cam-1/detections?label=dog&limit=5'\n  \
        VIGIL__API__TOKENS=$(openssl rand -hex 24) vigil serve --addr 0.0.0.0:8080"
)]
pub(crate) struct ServeArgs {
    /// Listen address [config: api.addr].
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// Database the sink writes: sqlite://PATH or postgres://... [config: sink.database_url].
    #[arg(long, value_name = "URL")]
    database: Option<String>,
}

impl ServeArgs {
    /// Config keys these flags set.
    pub(crate) fn overrides(&self) -> Vec<(&'static str, String)> {
        let addr = self.addr.iter().map(|a| ("api.addr", a.clone()));
        addr.chain(self.database.iter().map(|url| ("sink.database_url", url.clone()))).collect()
    }
}

/// `vigil serve`: until a signal, then the uploads in progress are finished.
pub(crate) async fn serve(settings: &Settings, shutdown: CancellationToken) -> Result<u8, Failure> {
    vigil::api::run(settings, shutdown).await?;
    Ok(EXIT_OK)
}

/// Serves the health of `stages` and the metrics on `telemetry.http_addr`, when set,
/// until `shutdown`.
async fn serve_http(
    settings: &Settings,
    stages: vigil::http::Stages,
    shutdown: &CancellationToken,
) -> Result<(), Failure> {
    if let Some(addr) = &settings.telemetry.http_addr {
        vigil::http::serve(addr, stages, shutdown.clone()).await?;
    }
    Ok(())
}

/// `vigil up` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Run everything in one process: broker (in-memory, or --bootstrap), producer, detector, SQLite sink, API and viewer",
    long_about = "Run the whole pipeline in one process: a producer sending the sample images (samples/) in a \
        loop, one detector worker running NanoDet-g, and a sink storing every result in SQLite \
        (sink.database_url, default sqlite://vigil.sqlite). Each stored detection is printed as it lands, and \
        the HTTP API with the viewer runs on api.addr (default http://127.0.0.1:8080/: open it in a browser to \
        see boxes on the live frames; POST your own images to /v1/frames, as with `vigil serve`). \
        Ctrl-C stops cleanly: the producer stops, the detector commits its batch, the sink stores what it \
        read. The model weights are fetched into model.dir on first use (npm, ~140 MB).\n\n\
        Without --bootstrap it needs no Kafka or Docker: it starts an in-memory broker (librdkafka's mock \
        cluster) for the run. There the detector runs at-least-once and the sink provides exactly-once \
        (idempotent rows, offsets in the database), because the in-memory broker does not store \
        transactional offsets (docs/architecture.md).\n\n\
        With --bootstrap HOST:PORT it starts no broker and runs against that Kafka cluster: the stages \
        create their topics there (kafka.topics.*) as `vigil produce`, `detect` and `sink` do, the detector \
        runs in the configured detector.delivery (default exactly-once: one Kafka transaction per batch), \
        and the sink keeps sink.group_id, so a second run with the same database resumes where the first \
        stopped. Credentials and other client settings come from kafka.client.* (configuration file or \
        VIGIL__KAFKA__CLIENT__* environment), as for every command.\n\n\
        The API's port also serves /healthz, /readyz (ready when the API, the detector and the sink all are) \
        and /metrics; telemetry.http_addr, when set, serves the same on a second address. With OTEL_EXPORTER_OTLP_ENDPOINT (or telemetry.otlp_endpoint) \
        set it exports every frame's spans as service vigil-up.",
    after_help = "Examples:\n  \
        vigil up                                        # samples/ at 2 frames/s until Ctrl-C; viewer on :8080\n  \
        vigil up --api-addr 127.0.0.1:9000              # the viewer and API on another port\n  \
        vigil up --broker-port 9092                     # your own clients: --bootstrap 127.0.0.1:9092\n  \
        VIGIL__TELEMETRY__HTTP_ADDR=127.0.0.1:9464 vigil up   # then: curl 127.0.0.1:9464/metrics\n  \
        vigil up --fps 0 --count 70                     # 70 frames as fast as possible, keep running\n  \
        vigil up --count 14 --exit-when-done            # stop once 14 results are stored\n  \
        vigil up --database sqlite://vigil-data/demo.sqlite --backend cpu\n  \
        vigil up --bootstrap 127.0.0.1:9092 --count 7 --exit-when-done   # a real cluster, exactly-once\n  \
        sqlite3 vigil.sqlite 'SELECT source, seq, detections FROM detections LIMIT 3'"
)]
pub(crate) struct UpArgs {
    /// Images to send (files, directories, globs); files that are not images are left out.
    #[arg(long = "samples", value_name = "PATH", default_value = "samples")]
    samples: Vec<PathBuf>,
    /// Frames per second sent by the producer (0 = as fast as possible) [config: producer.frames_per_second].
    #[arg(long, default_value_t = 2.0, value_name = "F")]
    fps: f64,
    /// Stop producing after N frames (default: loop until Ctrl-C).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// With --count: exit once N results are stored (smoke tests, demos in scripts).
    #[arg(long, requires = "count")]
    exit_when_done: bool,
    /// Database URL [config: sink.database_url].
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    #[command(flatten)]
    model: ModelFlags,
    /// Address of the API and viewer [config: api.addr; default 127.0.0.1:8080; port 0 picks a free one].
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "no_api")]
    api_addr: Option<String>,
    /// Do not serve the API and viewer.
    #[arg(long)]
    no_api: bool,
    /// Port of the in-memory broker, on 127.0.0.1, for your own Kafka clients (examples/);
    /// default: a free port, printed at start ("vigil up: broker 127.0.0.1:PORT").
    #[arg(long, value_name = "PORT")]
    broker_port: Option<u16>,
    /// The global --bootstrap: given, `up` uses that cluster instead of starting an in-memory
    /// broker. Only the flag decides, not kafka.bootstrap_servers from a file or the
    /// environment, so that a configuration made for the other commands does not turn the
    /// no-installation demo into one that needs a cluster.
    #[arg(from_global)]
    bootstrap: Option<String>,
}

impl UpArgs {
    /// The cluster of `--bootstrap`, or an in-memory broker.
    fn broker(&self) -> Result<UpBroker, Failure> {
        match (&self.bootstrap, self.broker_port) {
            (Some(_), Some(_)) => Err(Failure::usage(
                "--broker-port sets the port of the in-memory broker, and --bootstrap means no in-memory broker: \
                 give one of them",
            )),
            (Some(_), None) => Ok(UpBroker::Configured),
            (None, port) => Ok(UpBroker::Embedded { port }),
        }
    }

    /// Config keys these flags set.
    pub(crate) fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut o = vec![("producer.frames_per_second", self.fps.to_string())];
        if let Some(url) = &self.database {
            o.push(("sink.database_url", url.clone()));
        }
        if let Some(addr) = &self.api_addr {
            o.push(("api.addr", addr.clone()));
        }
        o.extend(self.model.overrides());
        o
    }
}

/// `vigil up`: the whole pipeline until a signal (or `--exit-when-done`).
pub(crate) async fn up(settings: &Settings, args: UpArgs, shutdown: CancellationToken) -> Result<u8, Failure> {
    let broker = args.broker()?;
    let (detector_health, sink_health) = (Health::new(), Health::new());
    let stages = vec![("detector", detector_health.clone()), ("sink", sink_health.clone())];
    serve_http(settings, stages, &shutdown).await?;
    let options = UpOptions {
        samples: args.samples,
        count: args.count,
        exit_when_done: args.exit_when_done,
        broker,
        detector_health,
        sink_health,
        serve_api: !args.no_api,
    };
    vigil::up::run(settings, &options, shutdown).await?;
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
    use super::*;

    fn up_broker(argv: &[&str]) -> Result<UpBroker, Failure> {
        match Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}")).command {
            Command::Up(args) => args.broker(),
            other => panic!("{argv:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn up_uses_a_cluster_only_when_bootstrap_is_given() {
        assert_eq!(up_broker(&["vigil", "up"]).unwrap(), UpBroker::Embedded { port: None });
        assert_eq!(
            up_broker(&["vigil", "up", "--broker-port", "9092"]).unwrap(),
            UpBroker::Embedded { port: Some(9092) }
        );
        assert_eq!(up_broker(&["vigil", "--bootstrap", "h:1", "up"]).unwrap(), UpBroker::Configured);
        assert_eq!(up_broker(&["vigil", "up", "--bootstrap", "h:1", "--count", "7"]).unwrap(), UpBroker::Configured);
        let both = up_broker(&["vigil", "--bootstrap", "h:1", "up", "--broker-port", "9092"]).unwrap_err();
        assert_eq!(both.report(), crate::cli::EXIT_USAGE);
    }
}
