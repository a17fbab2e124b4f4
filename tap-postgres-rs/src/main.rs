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
mod parallel;
mod pg_type;
mod plan;
mod record;
mod row_filter;
mod settings;
mod split;
mod state;
mod sync;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use singer_core::cli::{CommonArgs, Connector, ConnectorArgs};
use singer_core::{Catalog, MessageWriter, State, WriteError};

const NAME: &str = "tap-postgres-rs";

/// Singer tap for PostgreSQL: discovery, FULL_TABLE, INCREMENTAL and
/// LOG_BASED (pgoutput logical replication) sync, lossless values.
#[derive(Debug, clap::Parser)]
#[command(name = NAME, version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Catalog file selecting the streams to sync.
    #[arg(long, visible_alias = "properties", value_name = "FILE")]
    catalog: Option<PathBuf>,
    /// State file from a previous run (bookmarks).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Print the catalog: one stream per table, view, materialized view,
    /// partitioned table (the parent) and foreign table the user may read.
    #[arg(long)]
    discover: bool,
    /// Drop the LOG_BASED replication slot and publication (named by the
    /// config), so the server stops keeping WAL for this pipeline; then exit.
    #[arg(long)]
    drop_slot: bool,
}

impl ConnectorArgs for Args {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

/// What a run does (`--about` is answered by the shared shell).
enum Mode<'a> {
    DropSlot,
    Discover,
    Sync { catalog: &'a PathBuf },
}

impl Args {
    fn mode(&self) -> Option<Mode<'_>> {
        if self.drop_slot {
            Some(Mode::DropSlot)
        } else if self.discover {
            Some(Mode::Discover)
        } else {
            self.catalog.as_ref().map(|catalog| Mode::Sync { catalog })
        }
    }
}

fn main() -> ExitCode {
    let tap = Connector {
        name: NAME,
        description:
            "Singer tap for PostgreSQL: lossless discovery, FULL_TABLE, INCREMENTAL and LOG_BASED (pgoutput) sync.",
        version: env!("CARGO_PKG_VERSION"),
        capabilities: &[
            "about",
            "catalog",
            "discover",
            "state",
            "activate-version",
            "properties",
            "log-based",
        ],
        env_prefix: settings::ENV_PREFIX,
        settings: settings::all(),
    };
    tap.main(|args| run(&tap, args))
}

fn run(tap: &Connector, args: Args) -> anyhow::Result<()> {
    // No --config is fine: every setting can come from the environment.
    let config = tap.config(&args.common.config)?;
    let settings = settings::TapSettings::from_config(&config)?;
    let connector = pg_connect::Connector::new(settings.connection.clone(), NAME)?;
    // use_secondary: FULL_TABLE, INCREMENTAL and discovery read from the standby.
    let standby = match &settings.secondary {
        Some(s) => Some(pg_connect::Connector::new(s.clone(), NAME)?),
        None => None,
    };
    let reader = standby.as_ref().unwrap_or(&connector);

    let Some(mode) = args.mode() else {
        bail!("nothing to do: give --discover, or --catalog FILE to sync");
    };
    match mode {
        Mode::DropSlot => {
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
        }
        Mode::Discover => {
            let mut client = connect_reader(reader, &settings)?;
            let catalog = discover::catalog(&mut client, &settings.filter_schemas)?;
            if catalog["streams"].as_array().is_none_or(Vec::is_empty) {
                warn_nothing_discovered(&mut client, &settings);
            }
            let text = serde_json::to_string(&catalog)?;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|_| out.write_all(b"\n"))
                .and_then(|_| out.flush())
                .map_err(WriteError::from)?;
        }
        Mode::Sync {
            catalog: catalog_path,
        } => {
            let catalog_text = std::fs::read_to_string(catalog_path)
                .with_context(|| format!("cannot read catalog {}", catalog_path.display()))?;
            let catalog = Catalog::from_json(&catalog_text)
                .with_context(|| format!("catalog {}", catalog_path.display()))?;
            let state = match &args.state {
                None => State::default(),
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read state {}", path.display()))?;
                    let (state, values) = State::from_json_values(&text)
                        .with_context(|| format!("state {}", path.display()))?;
                    if values > 1 {
                        tracing::info!(
                            "state {} holds {values} JSON lines: using the last one (the newest state the target committed)",
                            path.display()
                        );
                    }
                    state
                }
            };
            let mut client = connector.connect()?;
            let mut standby_client = match &standby {
                Some(_) => Some(connect_reader(reader, &settings)?),
                None => None,
            };
            let mut out = MessageWriter::new(std::io::stdout().lock());
            sync::run(
                &mut client,
                standby_client.as_mut().zip(standby.as_ref()),
                &connector,
                &catalog,
                state,
                &settings,
                &mut out,
            )
            .map_err(
                // The shell stops quietly on a closed stdout: show it the
                // WriteError itself (`Write` is transparent).
                |e| match e {
                    sync::SyncError::Write(w) => anyhow::Error::from(w),
                    other => other.into(),
                },
            )?;
        }
    }
    Ok(())
}

/// A session where discovery, FULL_TABLE and INCREMENTAL read: the standby
/// with `use_secondary` (said once, with a warning if it is no standby).
fn connect_reader(
    reader: &pg_connect::Connector,
    settings: &settings::TapSettings,
) -> anyhow::Result<postgres::Client> {
    let mut client = reader.connect()?;
    if let Some(s) = &settings.secondary {
        let in_recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .context("use_secondary: cannot ask the secondary whether it is a standby")?
            .get(0);
        tracing::info!(
            secondary = %format!("{}:{}", s.host, s.port),
            "use_secondary: discovery, FULL_TABLE and INCREMENTAL read from the secondary; LOG_BASED uses the primary"
        );
        if !in_recovery {
            tracing::warn!(
                "use_secondary: {}:{} is not a standby (pg_is_in_recovery() is false): check secondary_host and secondary_port",
                s.host,
                s.port
            );
        }
    }
    Ok(client)
}

/// An empty catalog is valid (exit 0), but is most often a misspelt schema or
/// a missing grant: say which, and the fix.
fn warn_nothing_discovered(client: &mut postgres::Client, settings: &settings::TapSettings) {
    let user = &settings.connection.user;
    let grant = |schema: &str| {
        format!(
            "GRANT USAGE ON SCHEMA {schema} TO {user}; GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {user}"
        )
    };
    if settings.filter_schemas.is_empty() {
        tracing::warn!(
            "discovery found no table, view or foreign table that user `{user}` may read in database `{}`: grant access as the tables' owner, e.g. `{}`",
            settings.connection.database,
            grant("<schema>")
        );
        return;
    }
    let existing: Vec<String> = client
        .query(
            "SELECT nspname::text FROM pg_namespace WHERE nspname = ANY($1)",
            &[&settings.filter_schemas],
        )
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    let missing: Vec<&str> = settings
        .filter_schemas
        .iter()
        .filter(|s| !existing.contains(s))
        .map(String::as_str)
        .collect();
    let schemas = settings.filter_schemas.join(", ");
    if !missing.is_empty() {
        tracing::warn!(
            "discovery found no stream in filter_schemas {schemas}: no schema named {} exists in database `{}` (check filter_schemas)",
            missing.join(", "),
            settings.connection.database
        );
    } else {
        tracing::warn!(
            "discovery found no table, view or foreign table that user `{user}` may read in filter_schemas {schemas}: grant access as the tables' owner, e.g. `{}`",
            grant(&settings.filter_schemas[0])
        );
    }
}
