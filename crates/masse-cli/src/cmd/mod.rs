//! One module per subcommand.

mod connect;
mod dashboard;
mod listen;
mod peers;
mod ping;
mod watch;

use crate::cli::{Cli, Command};
use crate::error::{CliError, Exit};

/// Runs the subcommand the command line names.
pub(crate) async fn run(cli: Cli) -> Result<Exit, CliError> {
    let g = &cli.global;
    match cli.command {
        Command::Peers(args) => peers::run(g, args).await,
        Command::Watch(args) => watch::run(g, args).await,
        Command::Listen(args) => listen::run(g, args).await,
        Command::Connect(args) => connect::run(g, args).await,
        Command::Ping(args) => ping::run(g, args).await,
        Command::Dashboard(args) => dashboard::run(g, args).await,
    }
}
