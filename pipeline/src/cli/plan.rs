//! `vigil plan`: how many detector workers (and partitions) a frame rate needs, from the
//! M/M/c queue (`vigil::plan`).

use std::path::PathBuf;

use vigil::model::{Backend, DecodeLimits, ModelConfig};
use vigil::plan::{plan, Plan, PlanRequest};
use vigil::settings::Settings;

use super::bench::model::{time_model, BenchModelArgs};
use super::failure::Failure;
use super::model_flags::{on_blocking_thread, ModelFlags};
use super::EXIT_OK;

#[derive(Debug, clap::Args)]
#[command(
    about = "Size the detector group for a frame rate (M/M/c queue, Erlang C)",
    long_about = "Size the detector group for a frame rate (M/M/c queue, Erlang C).\n\n\
Frames arrive as a Poisson stream at --rate; each worker takes --service-ms per frame on\n\
average (exponentially distributed), or the time measured here with --measure. The plan is\n\
the smallest number of workers whose 99th-percentile response time (wait + service) meets\n\
--p99-ms, or without it the smallest whose utilisation stays at or under --max-utilization.\n\
`partitions` is the worker count the same criterion needs at twice the rate: give `images`\n\
that many partitions so the group can scale out without repartitioning. The single-worker\n\
M/M/1 figures are printed too (null when one worker cannot keep up).",
    after_help = "Examples:\n  vigil plan --rate 100 --service-ms 25\n  \
vigil plan --rate 100 --service-ms 25 --p99-ms 250 --json\n  \
vigil plan --rate 60 --measure --backend cpu          # time this machine's model first\n\n\
The model is optimistic where the consumer group's unit of balance, the partition, is\n\
coarse: few sources, or uneven ones, load workers unevenly (docs/benchmarks.md compares\n\
the plan with `vigil bench pipeline`)."
)]
pub(crate) struct PlanArgs {
    /// Offered load, frames per second.
    #[arg(long, value_name = "FPS")]
    rate: f64,
    /// Mean time one worker spends on a frame, milliseconds.
    #[arg(long, value_name = "MS", required_unless_present = "measure", conflicts_with = "measure")]
    service_ms: Option<f64>,
    /// Measure the service time on this machine instead (decode, resize, forward,
    /// post-processing at --batch, over the images in --images).
    #[arg(long)]
    measure: bool,
    /// With --measure: frames per forward pass (a worker's service time per frame is the
    /// batch's time divided by this).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256), requires = "measure")]
    batch: u32,
    /// With --measure: seconds to measure, after warm-up.
    #[arg(long, default_value_t = 5.0, requires = "measure")]
    seconds: f64,
    /// With --measure: directory of JPEG/PNG images to time.
    #[arg(long, default_value = "samples", requires = "measure")]
    images: PathBuf,
    #[command(flatten)]
    pub(crate) model: ModelFlags,
    /// Target 99th percentile of the response time, milliseconds.
    #[arg(long, value_name = "MS")]
    p99_ms: Option<f64>,
    /// Highest utilisation per worker, without --p99-ms.
    #[arg(long, default_value_t = 0.8, value_name = "U")]
    max_utilization: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// `vigil plan`: with --measure the model runs off the async runtime first.
pub(crate) async fn run(settings: &Settings, args: PlanArgs) -> Result<u8, Failure> {
    if args.model.backend.is_some() && !args.measure {
        return Err(Failure::usage("--backend only applies with --measure"));
    }
    match args.service_ms {
        Some(service_ms) => {
            let plan = plan(&args.request(service_ms)).map_err(|e| Failure::usage(e.to_string()))?;
            args.print(&plan).map_err(Failure::runtime)?;
            Ok(EXIT_OK)
        }
        None => on_blocking_thread(settings, args, measure_and_size).await,
    }
}

fn measure_and_size(
    model: &ModelConfig,
    backend: Backend,
    limits: &DecodeLimits,
    args: &PlanArgs,
) -> anyhow::Result<()> {
    let timing = BenchModelArgs::plain(args.batch, args.seconds, args.images.clone(), args.json);
    let report = time_model(model, backend, limits, &timing)?;
    if !args.json {
        println!(
            "measured: {:.2} ms per frame at batch {} ({:.1} frames/s)\n",
            report.ms_per_frame(),
            args.batch,
            report.frames_per_s()
        );
    }
    let plan = plan(&args.request(report.ms_per_frame()))?;
    args.print(&plan)
}

impl PlanArgs {
    fn request(&self, service_ms: f64) -> PlanRequest {
        PlanRequest { rate: self.rate, service_ms, p99_ms: self.p99_ms, max_utilization: self.max_utilization }
    }

    fn print(&self, plan: &Plan) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string(plan)?);
        } else {
            print_plan(plan, &self.request(plan.service_ms));
        }
        Ok(())
    }
}

fn print_plan(p: &Plan, request: &PlanRequest) {
    let criterion = match request.p99_ms {
        Some(ms) => format!("p99 response ≤ {ms} ms"),
        None => format!("utilisation ≤ {}", request.max_utilization),
    };
    let offered = p.rate * p.service_ms / 1000.0;
    println!("{} frames/s at {:.2} ms a frame ({offered:.2} Erlangs offered), {criterion}:", p.rate, p.service_ms);
    println!("  workers              {}", p.queue.workers);
    println!("  utilisation          {:.3}", p.queue.utilization);
    println!("  P(wait)              {:.4}", p.queue.p_wait);
    println!("  mean wait            {:.2} ms", p.queue.wait_ms);
    println!("  mean response        {:.2} ms", p.queue.response_ms);
    println!("  p99 response         {:.2} ms", p.queue.p99_ms);
    println!("  partitions           {} (the workers needed at twice the rate)", p.partitions);
    match &p.mm1 {
        Some(one) => {
            println!("one worker (M/M/1):    response {:.2} ms, queue {:.3} frames", one.response_ms, one.queue_length)
        }
        None => println!("one worker (M/M/1):    cannot keep up (rate ≥ 1000 / service-ms)"),
    }
}
