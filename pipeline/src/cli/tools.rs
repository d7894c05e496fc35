//! Commands that look at a pipeline without being part of it: `tail` and `verify`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vigil::settings::Settings;
use vigil::tail::TailOptions;

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
        {\"frames\", \"results\", \"rows\", \"dlq\", \"duplicates\", \"missing\", ...}\n\n\
        frames: distinct frames in images; results: distinct frame ids in detections; rows: database rows; \
        dlq: distinct frames dead-lettered; duplicates: frames with more than one outcome (two rows, or a row \
        and a dead letter); missing: frames with neither; unexpected: outcomes for frames not in images (a \
        database left from another run?). Also reported: raw record counts and topic-level redeliveries \
        (expected in at-least-once mode and on the in-memory broker, which does not hide aborted \
        transactions; the database is the exactly-once output).\n\n\
        Exit status: 0 when rows + dlq == frames and duplicates, missing and unexpected are 0; 1 otherwise \
        (or when the audit could not run). Run it after the pipeline has drained (no frames in flight).",
    after_help = "Examples:\n  \
        vigil verify --database sqlite://vigil.sqlite\n  \
        vigil --bootstrap 127.0.0.1:9092 verify --database postgres://vigil@127.0.0.1:5432/vigil | jq .\n  \
        vigil verify --timeout-ms 60000          # wait longer for open transactions to end"
)]
pub(crate) struct VerifyArgs {
    /// Sink database URL, sqlite://PATH or postgres://… [config: sink.database_url].
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// Longest time to read each topic to its end, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    timeout_ms: u64,
}

impl VerifyArgs {
    /// Config keys these flags set.
    pub(crate) fn overrides(&self) -> Vec<(&'static str, String)> {
        self.database.iter().map(|url| ("sink.database_url", url.clone())).collect()
    }
}

/// `vigil verify`: prints the report as JSON; exit 1 when the run is not exact.
pub(crate) async fn verify(settings: &Settings, args: VerifyArgs, shutdown: CancellationToken) -> Result<u8, Failure> {
    let report = vigil::verify::run(settings, Duration::from_millis(args.timeout_ms), shutdown).await?;
    println!("{}", serde_json::to_string(&report).map_err(Failure::runtime)?);
    if !report.exact {
        tracing::warn!(
            frames = report.frames,
            rows = report.rows,
            dlq = report.dlq,
            duplicates = report.duplicates,
            missing = report.missing,
            unexpected = report.unexpected,
            "the run is NOT exact"
        );
        return Ok(EXIT_RUNTIME);
    }
    Ok(EXIT_OK)
}
