//! The `clientrules` binary: parses the command line and runs the command.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use clientrules::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // clap prints help and usage errors itself; a reader that went away (`| head`) must
    // not turn that into a panic.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut command = Cli::command();
    if let Some(path) = clientrules::config::locate(&args) {
        command = match clientrules::config::apply(command, &path) {
            Ok(command) => command,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(2);
            }
        };
    }
    let cli = match command
        .try_get_matches_from(&args)
        .and_then(|matches| Cli::from_arg_matches(&matches))
    {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let serving = matches!(cli.command, Command::Serve { .. } | Command::Sim(_));
    let default_level = if serving { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("CLIENTRULES_LOG")
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colours only for a person at a terminal, and never under NO_COLOR.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();

    let result = match cli.command {
        Command::Serve { settings } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(clientrules::server::serve(settings)))
            .map(|()| ExitCode::SUCCESS),
        Command::Sim(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(clientrules::sim::run(args.config(), args.listen)))
            .map(|()| ExitCode::SUCCESS),
        command => clientrules::cli::run_command(command),
    };
    match result {
        Ok(code) => code,
        // The reader of the output went away (`| head`): nothing is wrong.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
