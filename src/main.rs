//! The `savepointd` command: parses the CLI, sets up logging, and maps outcomes to exit codes
//! (0 ok, 1 a run or lookup failed, 2 a bad config).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use savepointd::commands::{self, Output};
use savepointd::config::{self, Config};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Scheduled Apache Flink savepoints by application name"
)]
struct Cli {
    /// The config file.
    #[arg(
        long,
        global = true,
        env = "SAVEPOINTD_CONFIG",
        default_value = "/etc/savepointd/config.yaml"
    )]
    config: PathBuf,
    /// Log format; JSON by default when stderr is not a terminal. Level from RUST_LOG.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run,
    /// One pass now: trigger, wait, prune (for a Kubernetes CronJob).
    Once {
        /// Only these applications (repeatable); all when absent.
        #[arg(long = "app")]
        apps: Vec<String>,
        /// Do not apply retention after the savepoints.
        #[arg(long)]
        no_prune: bool,
        /// Print what would be triggered; trigger nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Retention only: prints each savepoint's decision and its reason.
    Prune {
        /// Only these applications (repeatable); all when absent.
        #[arg(long = "app")]
        apps: Vec<String>,
        /// Print exactly what a real run would delete; delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Per application: resolved id, last completed savepoint and age, in flight, next run.
    Status {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show how an application name resolves and from which source.
    Resolve { name: String },
    /// Validate the config and print the effective plan.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let config = match config::load(&cli.config).and_then(|c| config::check_files(&c).map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Command::CheckConfig = cli.command {
        print!("{}", commands::check_config(&config, chrono::Utc::now()));
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command, config)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command, config: Config) -> anyhow::Result<bool> {
    // One listener for SIGTERM and SIGINT, installed before anything else: `run` shuts down, `once` and
    // `prune` stop between deletions and start nothing new. (A second listener installed later would
    // miss a signal that came in between.)
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            savepointd::shutdown::signal().await;
            shutdown.cancel();
        }
    });
    let (text, ok) = match command {
        Command::Run => {
            savepointd::run(config, shutdown.clone().cancelled_owned())
                .await
                .context("daemon failed")?;
            return Ok(true);
        }
        Command::Once {
            apps,
            no_prune,
            dry_run,
        } => commands::once(&config, &apps, dry_run, !no_prune, &shutdown).await?,
        Command::Prune {
            apps,
            dry_run,
            output,
        } => commands::prune(&config, &apps, dry_run, output, &shutdown).await?,
        Command::Status { output } => commands::status(&config, output).await?,
        Command::Resolve { name } => commands::resolve(&config, &name).await?,
        Command::CheckConfig => unreachable!("handled before the runtime starts"),
    };
    print!("{text}");
    Ok(ok)
}

fn init_tracing(format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stderr().is_terminal(),
    };
    // Colour only for a person at a terminal, and never when NO_COLOR is set (no-color.org).
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        builder.init();
    }
}
