//! `vigil bench model`: where a frame's time goes, per stage, on one backend.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rayon::prelude::*;
use serde::Serialize;

use vigil::settings::Settings;

use super::median;
use crate::cli::failure::Failure;
use crate::cli::model_flags::{on_blocking_thread, ModelFlags};
use vigil::model::{decode_rgb8, resize_to_input, Backend, DecodeLimits, ModelConfig, NanoDet, OpProfile};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  vigil bench model --backend cpu --batch 1\n  vigil bench model --backend cpu --profile\n  vigil bench model --backend wgpu --batch 8 --seconds 20 --json\n\n\
Stage times are medians per batch after warm-up; frames/s counts all four stages.\n\
A batch's frames are decoded and resized in parallel, as the detector does.\n\
--profile adds the forward pass's time per kind of operation (mean ms per batch); it\n\
synchronises the device after every operation, so on a GPU its frames/s are lower.\n\
Build with --release: debug builds are not representative."
)]
pub(crate) struct BenchModelArgs {
    #[command(flatten)]
    pub(crate) model: ModelFlags,
    /// Frames per forward pass.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    batch: u32,
    /// How long to measure, after warm-up.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Warm-up batches, not measured (shader compilation, caches).
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// Directory of JPEG/PNG images to cycle through.
    #[arg(long, default_value = "samples")]
    images: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also time the forward pass per kind of operation (convolution, concat, resize…).
    #[arg(long)]
    profile: bool,
}

#[derive(Debug, Serialize)]
struct StageTimes {
    decode: f64,
    resize: f64,
    forward: f64,
    postprocess: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct BenchReport {
    backend: String,
    device: String,
    /// `model.precision`: the network's float type.
    precision: String,
    batch: u32,
    batches: usize,
    /// Frames/s over all stages.
    frames_per_s: f64,
    /// Frames/s of the forward pass alone (batch / median forward time).
    forward_frames_per_s: f64,
    /// Median milliseconds per batch.
    stages_ms: StageTimes,
    /// With --profile: mean forward milliseconds per batch, by kind of operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    forward_ops_ms: Option<BTreeMap<&'static str, f64>>,
}

/// `vigil bench model`: the measurement runs on a blocking thread, off the async runtime.
pub(crate) async fn run(settings: &Settings, args: BenchModelArgs) -> Result<u8, Failure> {
    on_blocking_thread(settings, args, measure).await
}

fn measure(model: &ModelConfig, backend: Backend, limits: &DecodeLimits, args: &BenchModelArgs) -> anyhow::Result<()> {
    let report = time_model(model, backend, limits, args)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

impl BenchModelArgs {
    /// A plain measurement of `seconds` at `batch` over the images in `images` (what
    /// `vigil plan --measure` and `vigil bench pipeline` time the model with); `quiet`
    /// hides the progress spinner.
    pub(crate) fn plain(batch: u32, seconds: f64, images: PathBuf, quiet: bool) -> Self {
        BenchModelArgs { model: ModelFlags::default(), batch, seconds, warmup: 2, images, json: quiet, profile: false }
    }
}

impl BenchReport {
    /// Milliseconds one frame takes through decode, resize, forward and post-processing.
    pub(crate) fn ms_per_frame(&self) -> f64 {
        1000.0 / self.frames_per_s
    }

    /// Frames per second through all four stages.
    pub(crate) fn frames_per_s(&self) -> f64 {
        self.frames_per_s
    }
}

/// Times the per-frame path on `backend` as `args` says.
pub(crate) fn time_model(
    model: &ModelConfig,
    backend: Backend,
    limits: &DecodeLimits,
    args: &BenchModelArgs,
) -> anyhow::Result<BenchReport> {
    if args.seconds.is_nan() || args.seconds <= 0.0 {
        bail!("--seconds must be positive, got {}", args.seconds);
    }
    let images = read_images(&args.images)?;
    let detector = NanoDet::load(model, backend)?;
    let batch = args.batch as usize;
    let mut times: [Vec<f64>; 4] = Default::default();
    let progress = indicatif::ProgressBar::new_spinner();
    if args.json {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    progress.set_message(format!("warming up {} (batch {batch})", detector.backend().description));
    progress.enable_steady_tick(Duration::from_millis(200));
    let mut next_image = 0;
    let started = Instant::now();
    let mut measured = Duration::ZERO;
    let mut iteration = 0u32;
    let mut profile = OpProfile::default();
    while iteration < args.warmup || measured.as_secs_f64() < args.seconds {
        let mut stage = [0.0f64; 4];
        let mut clock = Instant::now();
        let mut lap = |i: usize, clock: &mut Instant| {
            stage[i] = clock.elapsed().as_secs_f64() * 1e3;
            *clock = Instant::now();
        };
        // In parallel, as the detector decodes a batch.
        let picked: Vec<&Vec<u8>> = (0..batch).map(|i| &images[(next_image + i) % images.len()]).collect();
        next_image += batch;
        let rgbs = picked.par_iter().map(|bytes| decode_rgb8(bytes, limits)).collect::<Result<Vec<_>, _>>()?;
        lap(0, &mut clock);
        let frames: Vec<_> = rgbs.par_iter().map(resize_to_input).collect();
        lap(1, &mut clock);
        let input = detector.input(&frames);
        let outputs = if args.profile && iteration >= args.warmup {
            detector.forward_profiled(input, &mut profile)?
        } else {
            detector.forward_raw(input)?
        };
        detector.sync()?;
        lap(2, &mut clock);
        let detections = detector.postprocess(outputs, &frames)?;
        lap(3, &mut clock);
        std::hint::black_box(detections);
        iteration += 1;
        if iteration > args.warmup {
            measured += Duration::from_secs_f64(stage.iter().sum::<f64>() / 1e3);
            for (all, t) in times.iter_mut().zip(stage) {
                all.push(t);
            }
            progress.set_message(format!(
                "{} batches, {:.0}s of {:.0}s",
                times[0].len(),
                measured.as_secs_f64(),
                args.seconds
            ));
        }
    }
    progress.finish_and_clear();
    let batches = times[0].len();
    let frames = (batches * batch) as f64;
    let [decode, resize, forward, postprocess] = times.map(|mut t| median(&mut t));
    let report = BenchReport {
        backend: detector.backend().backend.to_string(),
        device: detector.backend().description.clone(),
        precision: detector.backend().precision.to_string(),
        batch: args.batch,
        batches,
        frames_per_s: frames / measured.as_secs_f64(),
        forward_frames_per_s: batch as f64 / (forward / 1e3),
        stages_ms: StageTimes { decode, resize, forward, postprocess },
        forward_ops_ms: args
            .profile
            .then(|| profile.ms.iter().map(|(&op, &ms)| (op, ms / f64::from(profile.passes.max(1)))).collect()),
    };
    tracing::debug!(wall_s = started.elapsed().as_secs_f64(), "bench finished");
    Ok(report)
}

fn print_table(r: &BenchReport) {
    println!("backend {} ({}), batch {}, {} batches measured", r.backend, r.device, r.batch, r.batches);
    println!("{:<12} {:>12} {:>12}", "stage", "ms/batch", "ms/frame");
    let per_frame = |ms: f64| ms / f64::from(r.batch);
    for (name, ms) in [
        ("decode", r.stages_ms.decode),
        ("resize", r.stages_ms.resize),
        ("forward", r.stages_ms.forward),
        ("postprocess", r.stages_ms.postprocess),
    ] {
        println!("{name:<12} {ms:>12.2} {:>12.2}", per_frame(ms));
    }
    println!("frames/s: {:.1} end to end, {:.1} forward only", r.frames_per_s, r.forward_frames_per_s);
    if let Some(ops) = &r.forward_ops_ms {
        let mut ops: Vec<_> = ops.iter().collect();
        ops.sort_by(|a, b| b.1.total_cmp(a.1));
        let width = ops.iter().map(|(op, _)| op.len()).max().unwrap_or(0).max(26);
        println!("\n{:<width$} {:>12}", "forward operation", "ms/batch");
        for (op, ms) in ops {
            println!("{op:<width$} {ms:>12.2}");
        }
    }
}

fn read_images(dir: &PathBuf) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| {
            format!("cannot read --images {} (the repo's samples/ holds the darknet sample JPEGs)", dir.display())
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_string_lossy().to_lowercase().as_str()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no .jpg/.jpeg/.png images in {}", dir.display());
    }
    files.iter().map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))).collect()
}
