//! `vigil bench pipeline`: producers, detectors and a sink under a measured load, next to
//! the model alone on the same backend and images (`vigil::bench`).

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;
use vigil::bench::{BenchPipelineConfig, PipelineReport};
use vigil::detector::Delivery;
use vigil::settings::Settings;

use crate::cli::failure::Failure;
use crate::cli::model_flags::ModelFlags;
use crate::cli::EXIT_OK;

#[derive(Debug, clap::Args)]
#[command(
    long_about = "Run producers, detectors and a sink as separate processes under a measured load, and report \
        throughput, capture-to-stored latency, the batches formed, CPU seconds per stage and peak memory per \
        process, next to the model's own speed on the same backend and images, measured first in the same run \
        (efficiency = pipeline frames/s ÷ model frames/s).\n\n\
        Without --bootstrap the embedded broker runs in this process (detectors at-least-once: it cannot run \
        exactly-once); with it, the named cluster (default exactly-once). Without --rate the producers send as \
        fast as they can (saturation: latency then includes the queue); with --rate the load is open-loop at \
        that many frames/s in all. Batching follows detector.max_batch and detector.max_wait_ms (--batch and \
        --max-wait-ms set them). Progress goes to stderr.",
    after_help = "Examples:\n  vigil bench pipeline --frames 600                       # saturation, 1 worker, embedded broker\n  \
        vigil bench pipeline --frames 300 --rate 10 --json       # open loop at 10 frames/s\n  \
        vigil bench pipeline --workers 2 --batch 4 --max-wait-ms 20\n  \
        vigil --bootstrap 127.0.0.1:9092 bench pipeline --delivery at-least-once\n\n\
        JSON keys: frames, seconds, frames_per_s, model_frames_per_s, efficiency, latency_ms {p50, p95, p99}, \
        latency_split_ms {capture_to_processed, processed_to_stored: {p50, p95, p99}}, batch_mean, workers, delivery, rate, broker, usage {producer, broker, detector, sink: {cpu_s, \
        peak_rss_mib}}, dead_letters, dir.\nBuild with --release: debug builds are not representative."
)]
pub(crate) struct BenchPipelineArgs {
    /// Frames to send in all.
    #[arg(long, default_value_t = 600)]
    frames: u64,
    /// Detector processes.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Producer processes, one source id each, in a partition of its own (1..=12); default
    /// 12, or --frames when fewer.
    #[arg(long, value_name = "N")]
    sources: Option<u32>,
    /// exactly-once or at-least-once (default: at-least-once on the embedded broker,
    /// exactly-once on a cluster).
    #[arg(long, value_name = "MODE", value_parser = ["exactly-once", "at-least-once"])]
    delivery: Option<String>,
    /// Offered load, frames per second in all (open loop); default: as fast as possible.
    #[arg(long, value_name = "FPS")]
    rate: Option<f64>,
    #[command(flatten)]
    pub(crate) model: ModelFlags,
    /// Most frames per inference batch [config: detector.max_batch].
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// Longest wait for a batch to fill while frames keep arriving [config: detector.max_wait_ms].
    #[arg(long, value_name = "MS")]
    max_wait_ms: Option<u64>,
    /// Images the producers cycle through (and the model is timed on).
    #[arg(long, default_value = "samples")]
    images: PathBuf,
    /// Seconds to time the model alone first.
    #[arg(long, default_value_t = 10.0)]
    model_seconds: f64,
    /// The vigil binary for the children (default: this one).
    #[arg(long, hide = true, value_name = "PATH")]
    vigil_bin: Option<PathBuf>,
    /// Where logs and the database go (default: a new directory under the system's temp dir).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// The global --bootstrap: a cluster instead of the embedded broker.
    #[arg(from_global)]
    bootstrap: Option<String>,
}

impl BenchPipelineArgs {
    /// Config keys these flags set.
    pub(crate) fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut keys = self.model.overrides();
        keys.extend(self.batch.map(|b| ("detector.max_batch", b.to_string())));
        keys.extend(self.max_wait_ms.map(|ms| ("detector.max_wait_ms", ms.to_string())));
        keys
    }
}

/// `vigil bench pipeline`: the model timed first, then the pipeline; both off the runtime.
pub(crate) async fn run(
    settings: &Settings,
    args: BenchPipelineArgs,
    shutdown: CancellationToken,
) -> Result<u8, Failure> {
    let bootstrap = args.bootstrap.clone();
    let delivery = match args.delivery.as_deref() {
        Some("exactly-once") => Delivery::ExactlyOnce,
        Some(_) => Delivery::AtLeastOnce,
        None if bootstrap.is_some() => Delivery::ExactlyOnce,
        None => Delivery::AtLeastOnce,
    };
    let config = BenchPipelineConfig {
        frames: args.frames,
        workers: args.workers,
        sources: args.sources.unwrap_or_else(|| args.frames.clamp(1, 12) as u32),
        delivery,
        rate: args.rate,
        bootstrap,
        images: args.images.clone(),
        vigil_bin: match &args.vigil_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe().map_err(Failure::runtime)?,
        },
        work_dir: match &args.work_dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir().join(format!("vigil-bench-{}", uuid::Uuid::new_v4().simple())),
        },
    };
    // Before the model is timed: a wrong command line fails at once.
    vigil::bench::validate(&config)?;
    let settings = settings.clone();
    let json = args.json;
    let report = tokio::task::spawn_blocking(move || -> Result<PipelineReport, Failure> {
        let model_frames_per_s = time_model_alone(&settings, &args, &config.vigil_bin)?;
        let bar = progress_bar(json, config.frames);
        let report = vigil::bench::run(&settings, &config, model_frames_per_s, &shutdown, &|done, all| {
            bar.set_length(all);
            bar.set_position(done);
        });
        bar.finish_and_clear();
        Ok(report?)
    })
    .await
    .map_err(Failure::runtime)??;
    if json {
        println!("{}", serde_json::to_string(&report).map_err(Failure::runtime)?);
    } else {
        print_report(&report);
    }
    Ok(EXIT_OK)
}

/// Frames/s of `vigil bench model` at `detector.max_batch` on the same backend and images,
/// in a process of its own (so its memory and CPU stay out of the pipeline's figures).
fn time_model_alone(settings: &Settings, args: &BenchPipelineArgs, bin: &std::path::Path) -> Result<f64, Failure> {
    let d = &settings.detector;
    if !args.json {
        eprintln!("timing the model alone ({} s at batch {}, backend {})…", args.model_seconds, d.max_batch, d.backend);
    }
    let out = std::process::Command::new(bin)
        .args(["bench", "model", "--json", "--backend", &d.backend.to_string()])
        .args(["--precision", &settings.model.precision.to_string()])
        .args(["--batch", &d.max_batch.to_string(), "--seconds", &args.model_seconds.to_string()])
        .arg("--images")
        .arg(&args.images)
        .env("VIGIL__MODEL__DIR", &settings.model.dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Failure::runtime(anyhow::anyhow!("cannot run {} bench model: {e}", bin.display())))?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Failure::runtime(anyhow::anyhow!("vigil bench model ({}) printed no report: {e}", out.status)))?;
    report["frames_per_s"]
        .as_f64()
        .ok_or_else(|| Failure::runtime(anyhow::anyhow!("vigil bench model reported no frames_per_s: {report}")))
}

fn progress_bar(hidden: bool, frames: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(frames);
    if hidden {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    } else if let Ok(style) =
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} frames stored ({per_sec})")
    {
        bar.set_style(style);
    }
    bar
}

fn print_report(r: &PipelineReport) {
    let rate = r.rate.map_or("as fast as possible".to_string(), |f| format!("{f} frames/s offered"));
    println!("{} worker(s), {}, {} broker, {rate}", r.workers, r.delivery, r.broker);
    println!("frames stored        {} in {:.1} s ({} dead letters)", r.frames, r.seconds, r.dead_letters);
    println!("pipeline             {:.1} frames/s", r.frames_per_s);
    println!("model alone          {:.1} frames/s", r.model_frames_per_s);
    println!("efficiency           {:.2}", r.efficiency);
    println!(
        "latency (ms)         p50 {:.1}  p95 {:.1}  p99 {:.1}",
        r.latency_ms.p50, r.latency_ms.p95, r.latency_ms.p99
    );
    let split = &r.latency_split_ms;
    for (name, l) in [("  to the result", &split.capture_to_processed), ("  result to row", &split.processed_to_stored)]
    {
        println!("{name:<20} p50 {:.1}  p95 {:.1}  p99 {:.1}", l.p50, l.p95, l.p99);
    }
    println!("batch size (mean)    {:.2}", r.batch_mean);
    println!("{:<20} {:>8} {:>14}", "stage", "cpu s", "peak RSS MiB");
    let u = &r.usage;
    for (name, usage) in [("producer", u.producer), ("broker", u.broker), ("detector", u.detector), ("sink", u.sink)] {
        println!("{name:<20} {:>8.1} {:>14.0}", usage.cpu_s, usage.peak_rss_mib);
    }
    println!("logs and database in {}", r.dir);
}
