//! The `vigil` binary: see `vigil --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
