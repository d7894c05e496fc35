//! Commands that look at a pipeline without being part of it: `tail` and `verify`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vigil::settings::Settings;
use vigil::tail::TailOptions;
use vigil::verify::VerifyOptions;

use super::failure::Failure;
use super::{EXIT_OK, EXIT_RUNTIME};

/// `vigil tail` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Show detection results as they arrive (read_committed)",
    long_about = "Show detection results from the detections topic (kafka.topics.detections) as they arrive, one \
        line per frame: source, sequence number, labels with scores, image size, capture-to-result latency and \
        where the frame came from (images partition@offset). Reads with isolation.level=read_committed and \
        outside any consumer group (it commits nothing and disturbs nobody). Starts at the end of the topic \
        unless --from-beginning; waits for the topic if it does not exist yet.",
    after_help = "Examples:\n  \
        vigil tail                              # new results only\n  \
        vigil tail --from-beginning --limit 20  # the first 20 results, then exit\n  \
        vigil tail --json | jq .frame_id        # one JSON object per line (the DetectionResult fields)"
)]
pub(crate) struct TailArgs {
    /// Start at the beginning of the topic instead of the end.
    #[arg(long)]
    from_beginning: bool,
    /// One JSON object per line (all DetectionResult fields) instead of text.
    #[arg(long)]
    json: bool,
    /// Exit after printing N results.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

/// `vigil tail`: prints results until a signal or `--limit`.
pub(crate) async fn tail(settings: &Settings, args: TailArgs, shutdown: CancellationToken) -> Result<u8, Failure> {
    let options = TailOptions { from_beginning: args.from_beginning, json: args.json, limit: args.limit };
    vigil::tail::run(settings, &options, shutdown).await?;
    Ok(EXIT_OK)
}

/// `vigil verify` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Audit a run: every frame has exactly one outcome (a database row or a dead letter)",
    long_about = "Audit a run end to end. Reads images, detections and images.dlq to their end (read_committed) \
        and the sink database, then compares frame ids as sets and prints one JSON object on stdout:\n\n  \
        {\"frames\", \"results\", \"rows\", \"dlq\", \"duplicates\", \"missing\", \"unexpected\", \
        \"topic_duplicates\", \"input_resends\", \"open_transactions\", ..., \"exact\"}\n\n\
        frames: distinct frames in images; results: distinct frame ids in detections; rows: database rows; \
        dlq: distinct frames dead-lettered; duplicates: frames with more than one outcome (a row and a dead \
        letter); missing: frames with neither; unexpected: outcomes for frames not in images (a database left \
        from another run?).\n\n\
        topic_duplicates: committed results and dead letters beyond one per images record (partition, offset), \
        a result and a dead letter for the same record included. input_resends: images records beyond one per \
        frame id, a frame sent twice on purpose: each copy is processed, the database keeps one row, so they are \
        not duplicates. open_transactions: partitions of detections and images.dlq whose last stable offset is \
        still below the high watermark after --timeout-ms (a transaction left open).\n\n\
        Exit status: 0 when rows + dlq == frames and duplicates, missing and unexpected are 0; 1 otherwise \
        (or when the audit could not run). topic_duplicates and open_transactions are reported but only fail \
        the audit with --topics-exact: at-least-once detectors, and the in-memory broker (it does not hide \
        aborted transactions), legitimately leave redeliveries in the topics, which the sink's idempotent insert \
        removes; the database is then the exactly-once output. Use --topics-exact on real Kafka with \
        exactly-once detectors, where read_committed topics hold one outcome per record. Run it after the \
        pipeline has drained (no frames in flight).",
    after_help = "Examples:\n  \
        vigil verify --database sqlite://vigil.sqlite\n  \
        vigil --bootstrap 127.0.0.1:9092 verify --topics-exact --database postgres://vigil@127.0.0.1:5432/vigil | jq .\n  \
        vigil verify --timeout-ms 60000          # wait longer for open transactions to end"
)]
pub(crate) struct VerifyArgs {
    /// Sink database URL, sqlite://PATH or postgres://… [config: sink.database_url].
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// Longest time to read each topic to its end, milliseconds (an open transaction is
    /// waited for this long, then counted in open_transactions).
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    timeout_ms: u64,
    /// Also fail when the topics hold more than one outcome per images record
    /// (topic_duplicates) or a transaction is left open (open_transactions): real Kafka,
    /// exactly-once detectors.
    #[arg(long)]
    topics_exact: bool,
}

impl VerifyArgs {
    /// Config keys these flags set.
    pub(crate) fn overrides(&self) -> Vec<(&'static str, String)> {
        self.database.iter().map(|url| ("sink.database_url", url.clone())).collect()
    }
}

/// `vigil verify`: prints the report as JSON; exit 1 when the run is not exact.
pub(crate) async fn verify(settings: &Settings, args: VerifyArgs, shutdown: CancellationToken) -> Result<u8, Failure> {
    let options = VerifyOptions { timeout: Duration::from_millis(args.timeout_ms), topics_exact: args.topics_exact };
    let report = vigil::verify::run(settings, &options, shutdown).await?;
    println!("{}", serde_json::to_string(&report).map_err(Failure::runtime)?);
    if !report.exact {
        tracing::warn!(
            frames = report.frames,
            rows = report.rows,
            dlq = report.dlq,
            duplicates = report.duplicates,
            missing = report.missing,
            unexpected = report.unexpected,
            topic_duplicates = report.topic_duplicates,
            open_transactions = report.open_transactions,
            topics_exact = report.topics_exact,
            "the run is NOT exact"
        );
        return Ok(EXIT_RUNTIME);
    }
    Ok(EXIT_OK)
}
