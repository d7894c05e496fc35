//! The `vigil` command line: global flags, one enum variant per command, one match arm
//! per command calling `vigil::<module>::run(...)`.
//!
//! Conventions for a command's module:
//! - `#[derive(clap::Args)] pub struct <Name>Args` with `about`, `long_about` and an
//!   `after_help` of examples;
//! - `pub async fn run(settings: &Settings, args: <Name>Args, shutdown: CancellationToken)
//!   -> Result<_, <ModuleError>>` (blocking work off the runtime; stop when `shutdown` fires);
//! - flags that mirror config keys go through [`Command::overrides`], so settings stay
//!   the single validated source.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use vigil::settings::{Settings, SettingsError};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: runtime failure (Kafka, I/O, a failed `verify` audit, …).
pub const EXIT_RUNTIME: u8 = 1;
/// Exit code: bad usage or configuration.
pub const EXIT_USAGE: u8 = 2;

const EXAMPLES: &str = "\
Quick start (no Kafka needed): broker, producer, detector and sink in one process
  vigil up

By hand, one terminal each (the broker prints `bootstrap: 127.0.0.1:PORT,...`):
  vigil broker
  vigil --bootstrap 127.0.0.1:PORT produce --synthetic 20
  vigil --bootstrap 127.0.0.1:PORT detect
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
pub struct Cli {
    /// Kafka bootstrap servers (host:port,...); overrides kafka.bootstrap_servers.
    #[arg(long, global = true, value_name = "HOST:PORT,...")]
    pub bootstrap: Option<String>,
    /// TOML configuration file layered over the defaults (see `vigil config`).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Broker(vigil::kafka::broker::BrokerArgs),
    Produce(vigil::producer::ProduceArgs),
    Tail(vigil::tail::TailArgs),
    Verify(vigil::verify::VerifyArgs),
    Detect(vigil::detector::DetectArgs),
    Sink(vigil::sink::SinkArgs),
    Up(vigil::up::UpArgs),
    /// Run the detector on local image files (no Kafka): labels, scores, boxes.
    DetectImage(vigil::detect_image::DetectImageArgs),
    /// Measure throughput (`vigil bench model`).
    #[command(subcommand)]
    Bench(vigil::bench::BenchCommand),
    /// Print the effective configuration (defaults, file, environment, flags) as TOML.
    #[command(
        after_help = "Examples:\n  vigil config > vigil.toml          # a starting point to edit\n  \
        vigil --config vigil.toml config   # check a file (unknown keys and bad values are errors)\n  \
        VIGIL__KAFKA__CLIENT__CLIENT__ID=me vigil config   # `__` in a client property name is a dot"
    )]
    Config,
}

impl Command {
    /// Config keys set by this command's flags (applied above file and environment).
    pub fn overrides(&self) -> Vec<(&'static str, String)> {
        match self {
            Command::Produce(args) => args.overrides(),
            Command::Verify(args) => args.overrides(),
            Command::Detect(args) => args.overrides(),
            Command::Sink(args) => args.overrides(),
            Command::Up(args) => args.overrides(),
            Command::Broker(_) | Command::Tail(_) | Command::DetectImage(_) | Command::Bench(_) | Command::Config => Vec::new(),
        }
    }
}

/// Parses arguments, loads settings, runs the command; maps errors to exit codes.
pub fn main() -> ExitCode {
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
    let _telemetry = match vigil::telemetry::init(&settings.telemetry) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("vigil: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let code = runtime.block_on(async move {
        let shutdown = shutdown_on_signals();
        match run_command(&settings, cli.command, shutdown).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("vigil: {e:#}");
                exit_code_of(&e)
            }
        }
    });
    // Do not wait for stray blocking tasks (e.g. a consumer poll) beyond a moment.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    ExitCode::from(code)
}

/// Usage mistakes found only when a command starts (e.g. no inputs) exit 2, the rest 1.
fn exit_code_of(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<vigil::producer::ProducerError>()
        .is_some_and(|e| e.is_usage())
    {
        return EXIT_USAGE;
    }
    if e.downcast_ref::<SettingsError>().is_some() {
        return EXIT_USAGE;
    }
    EXIT_RUNTIME
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
    shutdown: CancellationToken,
) -> anyhow::Result<u8> {
    match command {
        Command::Broker(args) => vigil::kafka::broker::run(settings, args, shutdown).await?,
        Command::Produce(args) => {
            vigil::producer::run(settings, args, shutdown).await?;
        }
        Command::Tail(args) => {
            vigil::tail::run(settings, args, shutdown).await?;
        }
        Command::Verify(args) => {
            if !vigil::verify::run(settings, args, shutdown).await?.exact {
                return Ok(EXIT_RUNTIME);
            }
        }
        Command::Detect(args) => {
            vigil::detector::run(settings, args, shutdown).await?;
        }
        Command::Sink(args) => {
            vigil::sink::run(settings, args, shutdown).await?;
        }
        Command::Up(args) => {
            vigil::up::run(settings, args, shutdown).await?;
        }
        Command::DetectImage(args) => {
            let (model, detector) = (settings.model.clone(), settings.detector.clone());
            // Model work is blocking CPU/GPU work: keep it off the async runtime.
            tokio::task::spawn_blocking(move || {
                vigil::detect_image::run(&model, detector.backend, &detector.decode, args)
            })
            .await??;
        }
        Command::Bench(vigil::bench::BenchCommand::Model(args)) => {
            let (model, detector) = (settings.model.clone(), settings.detector.clone());
            tokio::task::spawn_blocking(move || {
                vigil::bench::model::run(&model, detector.backend, &detector.decode, args)
            })
            .await??;
        }
        Command::Config => unreachable!("handled before the runtime starts"),
    }
    Ok(EXIT_OK)
}

/// A token cancelled by the first SIGINT or SIGTERM; a second one exits at once (130).
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut signals = 0;
        loop {
            wait_for_signal().await;
            signals += 1;
            if signals == 1 {
                tracing::info!("shutting down (signal again to exit at once)");
                cancel.cancel();
            } else {
                eprintln!("vigil: second signal, exiting now");
                std::process::exit(130);
            }
        }
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
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
}
