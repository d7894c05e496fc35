//! `vigil detect-image`: the model on local files, no Kafka involved.

mod annotate;
mod font;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;
use vigil::settings::Settings;

use super::failure::Failure;
use super::model_flags::{on_blocking_thread, ModelFlags};

use vigil::model::{decode_rgb8, resize_to_input, Backend, DecodeLimits, Detection, Detector, ModelConfig, NanoDet};

/// Run the detector on local image files (no Kafka): labels, scores, boxes.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  vigil detect-image samples/*.jpg\n  vigil detect-image --json samples/dog.jpg | jq .\n  \
vigil detect-image --annotate out/ --backend wgpu samples/horses.jpg\n\n\
Weights come from model.dir and are fetched there on first use unless model.fetch = never."
)]
pub(crate) struct DetectImageArgs {
    /// Print one JSON object per image: {"file","width","height","detections":[{"label","class_id","score","box"}]}.
    #[arg(long)]
    json: bool,
    /// Write each image with labelled boxes drawn on it as DIR/<name>.png.
    #[arg(long, value_name = "DIR")]
    annotate: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) model: ModelFlags,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    batch: u32,
    /// Image files (JPEG, PNG, GIF, BMP, WebP).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

#[derive(Serialize)]
struct ImageResult<'a> {
    file: String,
    width: u32,
    height: u32,
    detections: &'a [Detection],
}

/// `vigil detect-image`: the model work runs on a blocking thread, off the async runtime.
pub(crate) async fn run(settings: &Settings, args: DetectImageArgs) -> Result<u8, Failure> {
    on_blocking_thread(settings, args, detect_files).await
}

/// Runs the model over `args.files`; a file that cannot be read or decoded is reported
/// and skipped, and makes the command fail at the end.
fn detect_files(
    model: &ModelConfig,
    backend: Backend,
    limits: &DecodeLimits,
    args: &DetectImageArgs,
) -> anyhow::Result<()> {
    let mut detector = NanoDet::load(model, backend)?;
    tracing::info!(backend = %detector.backend().description, "model loaded");
    if let Some(dir) = &args.annotate {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut failed = 0usize;
    let stdout = std::io::stdout();
    for chunk in args.files.chunks(args.batch as usize) {
        let mut images = Vec::new();
        for file in chunk {
            match std::fs::read(file).map_err(anyhow::Error::from).and_then(|b| Ok(decode_rgb8(&b, limits)?)) {
                Ok(rgb) => images.push((file, rgb)),
                Err(e) => {
                    failed += 1;
                    eprintln!("{}: {e:#}", file.display());
                }
            }
        }
        if images.is_empty() {
            continue;
        }
        let frames: Vec<_> = images.iter().map(|(_, rgb)| resize_to_input(rgb)).collect();
        let results = detector.detect(&frames)?;
        for ((file, rgb), detections) in images.into_iter().zip(results) {
            let mut out = stdout.lock();
            if args.json {
                let result = ImageResult {
                    file: file.display().to_string(),
                    width: rgb.width(),
                    height: rgb.height(),
                    detections: &detections,
                };
                serde_json::to_writer(&mut out, &result)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{} ({}x{}): {} object(s)", file.display(), rgb.width(), rgb.height(), detections.len())?;
                for d in &detections {
                    let b = d.bbox;
                    writeln!(
                        out,
                        "  {:<14} {:.3}  [{:.1}, {:.1}, {:.1}, {:.1}]",
                        d.label, d.score, b[0], b[1], b[2], b[3]
                    )?;
                }
            }
            if let Some(dir) = &args.annotate {
                let mut canvas = rgb;
                annotate::draw(&mut canvas, &detections);
                let target = annotated_path(dir, file);
                canvas.save(&target).with_context(|| format!("cannot write {}", target.display()))?;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} file(s) could not be processed", args.files.len());
    }
    Ok(())
}

fn annotated_path(dir: &Path, file: &Path) -> PathBuf {
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    dir.join(format!("{stem}.png"))
}
