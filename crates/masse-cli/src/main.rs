#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod cli;
mod cmd;
mod error;
mod output;
mod pipe;
mod setup;

use clap::Parser;
use clap::error::ErrorKind;

use crate::cli::Cli;
use crate::error::Exit;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    init_tracing(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::print_error(&format!("cannot start the async runtime: {e}"));
            std::process::exit(Exit::Failure.code());
        }
    };
    let result = runtime.block_on(cmd::run(cli));
    // A blocking stdin read may still be pending: do not wait for it.
    runtime.shutdown_background();
    let code = match result {
        Ok(exit) => exit.code(),
        Err(e) => {
            output::print_error(&e.message);
            e.exit.code()
        }
    };
    std::process::exit(code);
}

/// Help and version go to stdout as clap prints them; a usage error is one
/// line on stderr and exit code 2.
fn usage_error(e: clap::Error) -> ! {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            let text = e.render().to_string();
            let first = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            output::print_error(&format!("{first} (see masse --help)"));
            std::process::exit(Exit::Usage.code());
        }
    }
}

/// Logs to stderr: warnings by default, more with each -v; `RUST_LOG` overrides.
fn init_tracing(verbose: u8) {
    use std::io::IsTerminal;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(verbose >= 2)
        .try_init();
}
