//! `target-postgres-rs`: reads Singer messages and lands them in PostgreSQL.
//! Rows are staged with COPY and merged; STATE values are echoed on stdout only
//! after the data before them is committed.

mod binary;
mod encode;
mod evolve;
mod load;
mod naming;
mod row;
mod settings;
mod state;
mod stream;
mod types;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::mpsc;

use anyhow::Context;
use clap::Parser;
use singer_core::{About, Config, MessageReader};

use crate::load::{Input, Item, Loader};
use crate::settings::{TargetSettings, ENV_PREFIX, TARGET_SETTINGS};

/// Singer target for PostgreSQL: reads Singer messages (stdin or --input) and
/// lands each stream in a table: COPY staging, upserts by key, deletes,
/// ACTIVATE_VERSION, schema evolution. Prints each STATE value after the data
/// before it is committed.
#[derive(Parser, Debug)]
#[command(name = "target-postgres-rs", version, about)]
struct Args {
    /// Config file (JSON); repeat to merge several, later files win.
    #[arg(long, value_name = "FILE")]
    config: Vec<PathBuf>,
    /// Read messages from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Describe the target (settings, capabilities) and exit.
    #[arg(long)]
    about: bool,
    /// Format for --about.
    #[arg(long, value_enum, default_value = "json")]
    format: AboutFormat,
    /// Log lines on stderr as `text` or `json` (one object per line, in the
    /// Meltano SDK's structured-log shape).
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "text",
        env = "TARGET_POSTGRES_RS_LOG_FORMAT"
    )]
    log_format: singer_core::logging::LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum AboutFormat {
    Json,
    Markdown,
}

/// Messages handed from the reading thread to the loading thread at a time.
const CHUNK: usize = 256;
/// Chunks in flight (bounds memory).
const IN_FLIGHT: usize = 16;

fn main() {
    use clap::{CommandFactory, FromArgMatches};
    let help = singer_core::config::settings_help(ENV_PREFIX, &all_settings());
    let args = match Args::command()
        .after_long_help(help)
        .try_get_matches()
        .and_then(|m| Args::from_arg_matches(&m))
    {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    singer_core::logging::init_logging(args.log_format, "target-postgres-rs");
    if let Err(e) = run(args) {
        let mut msg = String::new();
        for (i, cause) in e.chain().enumerate() {
            let c = cause.to_string();
            if i > 0 {
                if msg.contains(&c) {
                    continue;
                }
                msg.push_str(": ");
            }
            msg.push_str(&c);
        }
        let _ = writeln!(io::stderr(), "target-postgres-rs: error: {msg}");
        std::process::exit(1);
    }
}

fn all_settings() -> Vec<singer_core::Setting> {
    pg_connect::CONNECTION_SETTINGS
        .iter()
        .chain(TARGET_SETTINGS)
        .copied()
        .collect()
}

fn run(args: Args) -> anyhow::Result<()> {
    let settings = all_settings();
    if args.about {
        let about = About {
            name: "target-postgres-rs",
            description: "Singer target for PostgreSQL: COPY staging, upserts, deletes, schema evolution, state after commit.",
            version: env!("CARGO_PKG_VERSION"),
            // Only what is implemented: no stream maps, no flattening, no record validation.
            capabilities: &["about", "activate-version", "hard-delete", "soft-delete"],
            settings: &settings,
            env_prefix: ENV_PREFIX,
        };
        let text = match args.format {
            AboutFormat::Json => serde_json::to_string_pretty(&about.to_json())? + "\n",
            AboutFormat::Markdown => about.to_markdown(),
        };
        let mut out = io::stdout().lock();
        // A closed pipe (`| head`) is not a failure worth a panic.
        let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
        return Ok(());
    }

    let input: Box<dyn BufRead + Send> = match &args.input {
        Some(p) => Box::new(BufReader::with_capacity(
            1 << 20,
            File::open(p).with_context(|| format!("cannot open --input {}", p.display()))?,
        )),
        None => Box::new(BufReader::with_capacity(1 << 20, io::stdin())),
    };
    // Read the input on its own thread from the start: even when set-up fails
    // it is drained to the end, so an orchestrator never sees the tap killed.
    let (tx, rx) = mpsc::sync_channel::<Vec<Item>>(IN_FLIGHT);
    let reader = std::thread::spawn(move || read_messages(input, tx));

    let result = load(&args, &settings, rx);
    // `rx` is gone: the reader now only drains what is left.
    let _ = reader.join();
    result
}

fn load(
    args: &Args,
    settings: &[singer_core::Setting],
    rx: mpsc::Receiver<Vec<Item>>,
) -> anyhow::Result<()> {
    let config =
        Config::from_files(&args.config)?.with_env(ENV_PREFIX, settings, |k| std::env::var(k).ok());
    let connection = pg_connect::ConnectionSettings::from_config(&config)?;
    let target = TargetSettings::from_config(&config)?;
    let connector = pg_connect::Connector::new(connection, "target-postgres-rs")?;
    let client = connector.connect()?;
    let stdout = io::stdout().lock();
    let mut loader = Loader::new(client, target, io::BufWriter::new(stdout));
    let mut input = Input::new(rx.into_iter().flatten());
    loader.run(&mut input)?;
    Ok(())
}

/// Parses lines into messages, CHUNK at a time; once the loader has stopped
/// listening, just reads to the end.
fn read_messages(input: Box<dyn BufRead + Send>, tx: mpsc::SyncSender<Vec<Item>>) {
    let mut reader = MessageReader::new(input);
    let mut chunk = Vec::with_capacity(CHUNK);
    while let Some(item) = reader.next() {
        chunk.push(item);
        if chunk.len() == CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            if tx.send(full).is_err() {
                // The loader stopped: drain without parsing.
                while reader.next_line().is_some() {}
                return;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(chunk);
    }
}
