//! `target-postgres-rs`: reads Singer messages and lands them in PostgreSQL.
//! Rows are staged with COPY and merged; STATE values are echoed on stdout only
//! after the data before them is committed.

mod binary;
mod encode;
mod evolve;
mod flatten;
mod load;
mod naming;
mod row;
mod settings;
mod state;
mod stream;
mod types;
mod validate;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use anyhow::Context;
use singer_core::cli::{CommonArgs, Connector, ConnectorArgs};
use singer_core::MessageReader;

use crate::load::{Input, Item, Loader};
use crate::settings::{TargetSettings, ENV_PREFIX, TARGET_SETTINGS};

const NAME: &str = "target-postgres-rs";

/// Singer target for PostgreSQL: reads Singer messages (stdin or --input) and
/// lands each stream in a table: COPY staging, upserts by key, deletes,
/// ACTIVATE_VERSION, schema evolution. Prints each STATE value after the data
/// before it is committed.
#[derive(clap::Parser, Debug)]
#[command(name = NAME, version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Read messages from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
}

impl ConnectorArgs for Args {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

/// Messages handed from the reading thread to the loading thread at a time.
const CHUNK: usize = 256;
/// Chunks in flight (bounds memory).
const IN_FLIGHT: usize = 16;

fn main() -> ExitCode {
    let target = Connector {
        name: NAME,
        description: "Singer target for PostgreSQL: COPY staging, upserts, deletes, schema evolution, state after commit.",
        version: env!("CARGO_PKG_VERSION"),
        // Only what is implemented (no stream maps), in the Meltano SDK's words.
        capabilities: &[
            "about",
            "activate-version",
            "hard-delete",
            "soft-delete",
            "schema-flattening",
            "validate-records",
        ],
        env_prefix: ENV_PREFIX,
        settings: pg_connect::CONNECTION_SETTINGS
            .iter()
            .chain(TARGET_SETTINGS)
            .copied()
            .collect(),
    };
    target.main(|args| run(&target, args))
}

fn run(target: &Connector, args: Args) -> anyhow::Result<()> {
    let source: Box<dyn Read + Send> = match &args.input {
        Some(p) => {
            Box::new(File::open(p).with_context(|| format!("cannot open --input {}", p.display()))?)
        }
        None => Box::new(io::stdin()),
    };
    let drained = Arc::new(AtomicBool::new(false));
    let input = TapInput {
        inner: BufReader::with_capacity(1 << 20, source),
        drained: Arc::clone(&drained),
    };
    // Read the input on its own thread from the start: even when set-up fails
    // it is drained to the end, so an orchestrator never sees the tap killed.
    let (tx, rx) = mpsc::sync_channel::<Vec<Item>>(IN_FLIGHT);
    let reader = std::thread::spawn(move || read_messages(input, &drained, tx));

    let result = load(target, &args, rx);
    // `rx` is gone: the reader now only drains what is left.
    let _ = reader.join();
    result
}

fn load(target: &Connector, args: &Args, rx: mpsc::Receiver<Vec<Item>>) -> anyhow::Result<()> {
    let config = target.config(&args.common.config)?;
    let connection = pg_connect::ConnectionSettings::from_config(&config)?;
    let settings = TargetSettings::from_config(&config)?;
    let connector = pg_connect::Connector::new(connection, NAME)?;
    let client = connector.connect()?;
    if settings.parallelism > 1 {
        let mut clients = vec![client];
        for _ in 1..settings.parallelism {
            clients.push(connector.connect()?);
        }
        let connect: load::parallel::Connect =
            Arc::new(move || connector.connect().map_err(|e| e.to_string()));
        let out = io::BufWriter::new(io::stdout());
        load::parallel::run(clients, connect, &settings, rx.into_iter(), out)?;
        return Ok(());
    }
    let stdout = io::stdout().lock();
    let mut loader = Loader::new(client, settings, io::BufWriter::new(stdout))
        .with_second_connection(Box::new(move || {
            connector.connect().map_err(|e| e.to_string())
        }));
    let mut input = Input::new(rx.into_iter().flatten());
    loader.run(&mut input)?;
    Ok(())
}

/// Parses lines into messages, CHUNK at a time; once the loader has stopped
/// listening, just reads to the end.
/// A partial chunk goes out as soon as the input has nothing more buffered:
/// a slow tap's STATE must not wait for 255 more messages.
fn read_messages(input: TapInput, drained: &AtomicBool, tx: mpsc::SyncSender<Vec<Item>>) {
    let mut reader = MessageReader::new(input);
    let mut chunk = Vec::with_capacity(CHUNK);
    while let Some(item) = reader.next() {
        chunk.push(item);
        // Nothing more buffered: neither lines read nor bytes behind them.
        let idle = !reader.has_buffered() && drained.load(Ordering::Relaxed);
        if chunk.len() == CHUNK || idle {
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

/// The input, buffered; knows whether its buffer is empty (the next read
/// waits for the tap).
struct TapInput {
    inner: BufReader<Box<dyn Read + Send>>,
    /// Set after each consume: nothing is left in the buffer.
    drained: Arc<AtomicBool>,
}

impl Read for TapInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl BufRead for TapInput {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt);
        self.drained
            .store(self.inner.buffer().is_empty(), Ordering::Relaxed);
    }
}
