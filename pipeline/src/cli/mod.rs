//! The `vigil` command line: global flags, one enum variant per command, one module per
//! command holding its flags, help text and how they map onto settings and the library.
//!
//! Conventions for a command's module:
//! - `#[derive(clap::Args)] pub(crate) struct <Name>Args` with `about`, `long_about` and an
//!   `after_help` of examples;
//! - flags that mirror config keys become overrides ([`Command::overrides`]), so settings
//!   stay the single validated source;
//! - `run(settings, args, shutdown) -> Result<u8, Failure>` calls the library's entry point
//!   for the stage and prints what the command prints.

mod bench;
mod broker;
mod chaos;
mod detect_image;
mod failure;
mod model_flags;
mod pipeline;
mod plan;
mod signals;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vigil::settings::{Settings, SettingsError};

use self::failure::Failure;

/// Exit code: success.
const EXIT_OK: u8 = 0;
/// Exit code: runtime failure (Kafka, I/O, a failed `verify` audit, …).
const EXIT_RUNTIME: u8 = 1;
/// Exit code: bad usage or configuration.
const EXIT_USAGE: u8 = 2;

const EXAMPLES: &str = "\
Quick start (no Kafka needed): broker, producer, detector and sink in one process
  vigil up

By hand, one terminal each (the broker prints `bootstrap: 127.0.0.1:PORT,...`):
  vigil broker
  vigil --bootstrap 127.0.0.1:PORT produce --synthetic 20
  vigil --bootstrap 127.0.0.1:PORT detect --delivery at-least-once
  vigil --bootstrap 127.0.0.1:PORT sink --database sqlite://vigil.sqlite
  vigil --bootstrap 127.0.0.1:PORT tail --from-beginning
  vigil --bootstrap 127.0.0.1:PORT verify --database sqlite://vigil.sqlite

Configuration: defaults < --config FILE (TOML) < environment VIGIL__SECTION__KEY < flags
  vigil config                           # print the effective configuration
  VIGIL__DETECTOR__MAX_BATCH=16 vigil config
Logs go to stderr (RUST_LOG or telemetry.log_filter); command output goes to stdout.
Exit codes: 0 ok, 1 runtime error, 2 usage or configuration error.";

/// Vigil: a highly available Kafka object-detection pipeline.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about, after_help = EXAMPLES, propagate_version = true)]
struct Cli {
    /// Kafka bootstrap servers (host:port,...); overrides kafka.bootstrap_servers.
    #[arg(long, global = true, value_name = "HOST:PORT,...")]
    bootstrap: Option<String>,
    /// TOML configuration file layered over the defaults (see `vigil config`).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Broker(broker::BrokerArgs),
    Produce(pipeline::ProduceArgs),
    Tail(tools::TailArgs),
    Verify(tools::VerifyArgs),
    Detect(pipeline::DetectArgs),
    Sink(pipeline::SinkArgs),
    Serve(pipeline::ServeArgs),
    Up(pipeline::UpArgs),
    Chaos(chaos::ChaosArgs),
    DetectImage(detect_image::DetectImageArgs),
    /// Measure throughput (`vigil bench model`, `vigil bench pipeline`).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    Plan(plan::PlanArgs),
    /// Print the effective configuration (defaults, file, environment, flags) as TOML.
    #[command(after_help = "Examples:\n  vigil config > vigil.toml          # a starting point to edit\n  \
        vigil --config vigil.toml config   # check a file (unknown keys and bad values are errors)\n  \
        VIGIL__KAFKA__CLIENT__CLIENT__ID=me vigil config   # `__` in a client property name is a dot")]
    Config,
}

impl Command {
    /// `service.name` of the process's traces and metrics.
    fn service_name(&self) -> &'static str {
        use vigil::telemetry::service;
        match self {
            Command::Produce(_) => service::PRODUCER,
            Command::Detect(_) => service::DETECTOR,
            Command::Sink(_) => service::SINK,
            Command::Serve(_) => service::API,
            Command::Up(_) => service::UP,
            Command::Broker(_)
            | Command::Tail(_)
            | Command::Verify(_)
            | Command::Chaos(_)
            | Command::DetectImage(_)
            | Command::Bench(_)
            | Command::Plan(_)
            | Command::Config => service::TOOLS,
        }
    }

    /// Config keys set by this command's flags (applied above file and environment).
    fn overrides(&self) -> Vec<(&'static str, String)> {
        match self {
            Command::Produce(args) => args.overrides(),
            Command::Verify(args) => args.overrides(),
            Command::Detect(args) => args.overrides(),
            Command::Sink(args) => args.overrides(),
            Command::Serve(args) => args.overrides(),
            Command::Up(args) => args.overrides(),
            Command::DetectImage(args) => args.model.overrides(),
            Command::Bench(bench::BenchCommand::Model(args)) => args.model.overrides(),
            Command::Bench(bench::BenchCommand::Pipeline(args)) => args.overrides(),
            Command::Plan(args) => args.model.overrides(),
            Command::Broker(_) | Command::Tail(_) | Command::Chaos(_) | Command::Config => Vec::new(),
        }
    }
}

/// Parses arguments, loads settings, runs the command; maps errors to exit codes.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match load_settings(&cli) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("vigil: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Command::Config = cli.command {
        return match settings.to_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprintln!("vigil: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        };
    }
    if let Err(e) = vigil::telemetry::init(&settings.telemetry) {
        eprintln!("vigil: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    // Inside the runtime: the gRPC exporter's connection is spawned on it.
    let telemetry = {
        let _entered = runtime.enter();
        match vigil::telemetry::install(cli.command.service_name(), &settings.telemetry) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("vigil: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    };
    let code = runtime.block_on(async move {
        let shutdown = signals::shutdown_on_signals();
        match run_command(&settings, cli.command, shutdown).await {
            Ok(code) => code,
            Err(failure) => failure.report(),
        }
    });
    // Flush the last spans and metrics while the runtime (and the exporters' connections
    // on it) still runs.
    drop(telemetry);
    // Do not wait for stray blocking tasks (e.g. a consumer poll) beyond a moment.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    ExitCode::from(code)
}

fn load_settings(cli: &Cli) -> Result<Settings, SettingsError> {
    let mut loader = Settings::loader();
    if let Some(path) = &cli.config {
        loader = loader.file(path);
    }
    if let Some(bootstrap) = &cli.bootstrap {
        loader = loader.set("kafka.bootstrap_servers", bootstrap.clone());
    }
    for (key, value) in cli.command.overrides() {
        loader = loader.set(key, value);
    }
    loader.load()
}

async fn run_command(
    settings: &Settings,
    command: Command,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<u8, Failure> {
    match command {
        Command::Broker(args) => broker::run(settings, args, shutdown).await,
        Command::Produce(args) => pipeline::produce(settings, args, shutdown).await,
        Command::Tail(args) => tools::tail(settings, args, shutdown).await,
        Command::Verify(args) => tools::verify(settings, args, shutdown).await,
        Command::Detect(_) => pipeline::detect(settings, shutdown).await,
        Command::Sink(_) => pipeline::sink(settings, shutdown).await,
        Command::Serve(_) => pipeline::serve(settings, shutdown).await,
        Command::Up(args) => pipeline::up(settings, args, shutdown).await,
        Command::Chaos(args) => chaos::run(settings, args, shutdown).await,
        Command::DetectImage(args) => detect_image::run(settings, args).await,
        Command::Bench(bench::BenchCommand::Model(args)) => bench::model::run(settings, args).await,
        Command::Bench(bench::BenchCommand::Pipeline(args)) => bench::pipeline::run(settings, args, shutdown).await,
        Command::Plan(args) => plan::run(settings, args).await,
        Command::Config => unreachable!("handled before the runtime starts"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bootstrap_is_global_before_or_after_the_subcommand() {
        let a = Cli::try_parse_from(["vigil", "--bootstrap", "h:1", "broker"]).unwrap();
        let b = Cli::try_parse_from(["vigil", "broker", "--bootstrap", "h:1"]).unwrap();
        assert_eq!(a.bootstrap.as_deref(), Some("h:1"));
        assert_eq!(b.bootstrap.as_deref(), Some("h:1"));
    }

    /// Every command's flags load through the real settings loader: the keys and values
    /// are what the config layer accepts.
    #[test]
    fn flags_become_settings() {
        type Case = (&'static [&'static str], fn(&Settings) -> bool);
        let cases: &[Case] = &[
            (&["vigil", "detect", "--backend", "cpu", "--instance-id", "det-1", "--delivery", "at-least-once"], |s| {
                s.detector.backend == vigil::model::Backend::Cpu
                    && s.detector.instance_id.as_deref() == Some("det-1")
                    && s.detector.delivery == vigil::detector::Delivery::AtLeastOnce
            }),
            (&["vigil", "sink", "--database", "sqlite://x.db"], |s| s.sink.database_url == "sqlite://x.db"),
            (&["vigil", "up", "--fps", "0", "--database", "sqlite://y.db", "--backend", "cpu"], |s| {
                s.producer.frames_per_second == 0.0
                    && s.sink.database_url == "sqlite://y.db"
                    && s.detector.backend == vigil::model::Backend::Cpu
            }),
            (&["vigil", "produce", "--source", "cam-7", "--fps", "2", "x.jpg"], |s| {
                s.producer.source_id == "cam-7" && s.producer.frames_per_second == 2.0
            }),
            (&["vigil", "verify", "--database", "sqlite://z.db"], |s| s.sink.database_url == "sqlite://z.db"),
            (&["vigil", "detect-image", "--backend", "wgpu", "a.jpg"], |s| {
                s.detector.backend == vigil::model::Backend::Wgpu
            }),
            (&["vigil", "bench", "model", "--backend", "cpu"], |s| s.detector.backend == vigil::model::Backend::Cpu),
        ];
        for (argv, check) in cases {
            let cli = Cli::try_parse_from(*argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let mut loader = Settings::loader().env(Default::default());
            for (k, v) in cli.command.overrides() {
                loader = loader.set(k, v);
            }
            let settings = loader.load().unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert!(check(&settings), "{argv:?} did not set what it should");
        }
        assert!(Cli::try_parse_from(["vigil", "detect", "--delivery", "sometimes"]).is_err());
        assert!(Cli::try_parse_from(["vigil", "detect", "--backend", "tpu"]).is_err());
    }
}
