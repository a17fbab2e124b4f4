//! `tap-postgres-rs`: a Singer tap for PostgreSQL.
//!
//! `--discover` prints the catalog; `--catalog` syncs its selected streams
//! (FULL_TABLE, INCREMENTAL, LOG_BASED) as Singer messages on stdout;
//! `--drop-slot` drops LOG_BASED's slot and publication; `--about` describes
//! the tap. Logs and metrics go to stderr.

mod codec;
mod copy;
mod discover;
mod error;
mod full_table;
mod incremental;
mod log_based;
mod pg_type;
mod plan;
mod record;
mod settings;
mod state;
mod sync;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use singer_core::{About, Catalog, Config, MessageWriter, State, WriteError};

const NAME: &str = "tap-postgres-rs";
const CAPABILITIES: &[&str] = &[
    "about",
    "catalog",
    "discover",
    "state",
    "activate-version",
    "properties",
    "log-based",
];

/// Singer tap for PostgreSQL: discovery, FULL_TABLE, INCREMENTAL and
/// LOG_BASED (pgoutput logical replication) sync, lossless values.
#[derive(Debug, Parser)]
#[command(name = NAME, version)]
struct Args {
    /// Config file (JSON); repeat to merge several, later files win.
    #[arg(long, value_name = "FILE")]
    config: Vec<PathBuf>,
    /// Catalog file selecting the streams to sync.
    #[arg(long, visible_alias = "properties", value_name = "FILE")]
    catalog: Option<PathBuf>,
    /// State file from a previous run (bookmarks).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Print the catalog of every table, view and materialized view.
    #[arg(long)]
    discover: bool,
    /// Print the tap's name, version, capabilities and settings.
    #[arg(long)]
    about: bool,
    /// Drop the LOG_BASED replication slot and publication (named by the
    /// config), so the server stops keeping WAL for this pipeline; then exit.
    #[arg(long)]
    drop_slot: bool,
    /// Format of --about.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Log lines on stderr as `text` or `json` (one object per line, in the
    /// Meltano SDK's structured-log shape).
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "text",
        env = "TAP_POSTGRES_RS_LOG_FORMAT"
    )]
    log_format: singer_core::logging::LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Json,
    Markdown,
}

fn main() -> ExitCode {
    let command = Args::command().after_long_help(settings::help_text());
    let args = match command
        .try_get_matches()
        .and_then(|m| Args::from_arg_matches(&m))
    {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    singer_core::logging::init_logging(args.log_format, NAME);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_closed_pipe(&e) => {
            tracing::warn!("stdout was closed by the reader; stopping");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{NAME}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(c.downcast_ref::<WriteError>(), Some(WriteError::ClosedPipe))
            || matches!(
                c.downcast_ref::<sync::SyncError>(),
                Some(sync::SyncError::Write(WriteError::ClosedPipe))
            )
    })
}

fn run(args: Args) -> anyhow::Result<()> {
    let all_settings = settings::all();
    if args.about {
        let about = About {
            name: NAME,
            description:
                "Singer tap for PostgreSQL: lossless discovery, FULL_TABLE, INCREMENTAL and LOG_BASED (pgoutput) sync.",
            version: env!("CARGO_PKG_VERSION"),
            capabilities: CAPABILITIES,
            settings: &all_settings,
            env_prefix: settings::ENV_PREFIX,
        };
        let text = match args.format {
            Format::Json => serde_json::to_string_pretty(&about.to_json())? + "\n",
            Format::Markdown => about.to_markdown(),
        };
        use std::io::Write;
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        lock.write_all(text.as_bytes())
            .and_then(|_| lock.flush())
            .map_err(WriteError::from)?;
        return Ok(());
    }
    if args.config.is_empty() {
        bail!("--config is required (a JSON file with host, port, user, password, database)");
    }
    let config =
        Config::from_files(&args.config)?.with_env(settings::ENV_PREFIX, &all_settings, |k| {
            std::env::var(k).ok()
        });
    let settings = settings::TapSettings::from_config(&config)?;
    let connector = pg_connect::Connector::new(settings.connection.clone(), NAME)?;

    if args.drop_slot {
        let mut client = connector.connect()?;
        let (slot, publication) = log_based::drop_slot(&mut client, &settings)?;
        let said = |dropped: bool| if dropped { "dropped" } else { "did not exist" };
        tracing::info!(
            slot = %settings.replication_slot,
            publication = %settings.publication,
            "replication slot {}, publication {}",
            said(slot),
            said(publication)
        );
        return Ok(());
    }
    if args.discover {
        let mut client = connector.connect()?;
        let catalog = discover::catalog(&mut client, &settings.filter_schemas)?;
        use std::io::Write;
        let text = serde_json::to_string(&catalog)?;
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        lock.write_all(text.as_bytes())
            .and_then(|_| lock.write_all(b"\n"))
            .and_then(|_| lock.flush())
            .map_err(WriteError::from)?;
        return Ok(());
    }
    let Some(catalog_path) = &args.catalog else {
        bail!("nothing to do: give --discover, or --catalog FILE to sync");
    };
    let catalog_text = std::fs::read_to_string(catalog_path)
        .with_context(|| format!("cannot read catalog {}", catalog_path.display()))?;
    let catalog = Catalog::from_json(&catalog_text)
        .with_context(|| format!("catalog {}", catalog_path.display()))?;
    let state = match &args.state {
        None => State::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read state {}", path.display()))?;
            State::from_json(&text).with_context(|| format!("state {}", path.display()))?
        }
    };
    let mut client = connector.connect()?;
    let stdout = std::io::stdout();
    let mut out = MessageWriter::new(stdout.lock());
    sync::run(
        &mut client,
        &connector,
        &catalog,
        state,
        &settings,
        &mut out,
    )?;
    Ok(())
}
