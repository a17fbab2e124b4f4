//! The command line both connectors share, so that they take the same common
//! flags and behave alike at the edges: `--config` (repeatable), `--about`
//! with `--format json|markdown`, `--log-format`, `--help` listing every
//! setting; logging set up before anything runs; and one way to end:
//!
//! * success: exit code 0;
//! * stdout closed by the reader (`| head`): a warning on stderr, exit code 0,
//!   never a panic;
//! * any other error: exit code 1 and ONE last stderr line,
//!   `<name>: error: <the error chain joined by ": ", repeats left out>`
//!   (with `--log-format json`: a JSON log line of level `error` whose
//!   `message` is that chain);
//! * a command-line mistake: clap's message, exit code 2.
//!
//! ```no_run
//! use singer_core::cli::{Connector, ConnectorArgs, CommonArgs};
//! #[derive(clap::Parser)]
//! #[command(name = "tap-x", version)]
//! struct Args {
//!     #[command(flatten)]
//!     common: CommonArgs,
//! }
//! impl ConnectorArgs for Args {
//!     fn common(&self) -> &CommonArgs { &self.common }
//! }
//! fn main() -> std::process::ExitCode {
//!     let tap = Connector {
//!         name: "tap-x",
//!         description: "A tap.",
//!         version: env!("CARGO_PKG_VERSION"),
//!         capabilities: &["about"],
//!         env_prefix: "TAP_X",
//!         settings: vec![],
//!     };
//!     tap.main(|args: Args| -> Result<(), Box<dyn std::error::Error>> { Ok(()) })
//! }
//! ```

use std::error::Error;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{settings_help, About, Config, ConfigError, KeyCheck, Setting};
use crate::io::WriteError;
use crate::logging::{fatal_line, init_logging, LogFormat};

/// How `--about` is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AboutFormat {
    // The Meltano SDK's JSON shape, settings as a JSON Schema.
    Json,
    Markdown,
}

/// The flags every connector takes: `#[command(flatten)]` them into the
/// binary's own arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Config file (JSON); repeat to merge several, later files win.
    #[arg(long, value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// Print the name, version, capabilities and settings, then exit.
    #[arg(long)]
    pub about: bool,
    /// Format of --about.
    #[arg(long, value_enum, default_value_t = AboutFormat::Json)]
    pub format: AboutFormat,
    /// Log lines on stderr as `text` or `json` (one object per line, in the
    /// Meltano SDK's structured-log shape). Which lines: the RUST_LOG
    /// environment variable (default `info`; e.g. `RUST_LOG=debug`, or
    /// `RUST_LOG=warn` for quiet runs).
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// A binary's arguments, which hold the [`CommonArgs`].
pub trait ConnectorArgs: clap::Parser {
    fn common(&self) -> &CommonArgs;
}

/// What a connector is, for `--about`, `--help` and the environment.
#[derive(Debug, Clone)]
pub struct Connector {
    pub name: &'static str,
    pub description: &'static str,
    pub version: &'static str,
    /// Only what is implemented.
    pub capabilities: &'static [&'static str],
    /// Environment variables `<PREFIX>_<SETTING>` fill settings no file set;
    /// `<PREFIX>_LOG_FORMAT` sets `--log-format`.
    pub env_prefix: &'static str,
    /// Every setting, in the order `--about` and `--help` list them.
    pub settings: Vec<Setting>,
}

impl Connector {
    /// The whole program: parses the arguments, sets up logging, answers
    /// `--about`, else runs `run` (which reads the config with
    /// [`Connector::config`] when it is ready to), and ends as the module
    /// documentation says.
    pub fn main<A, E>(&self, run: impl FnOnce(A) -> Result<(), E>) -> ExitCode
    where
        A: ConnectorArgs,
        E: AsRef<dyn Error + 'static>,
    {
        let args: A = match self.parse() {
            Ok(args) => args,
            Err(code) => return code,
        };
        let common = args.common().clone();
        init_logging(common.log_format, self.name);
        if common.about {
            return self.finish(
                common.log_format,
                self.print_about(common.format)
                    .err()
                    .as_ref()
                    .map(|e| e as _),
            );
        }
        crate::io::widen_pipes();
        self.finish(
            common.log_format,
            run(args).err().as_ref().map(AsRef::as_ref),
        )
    }

    /// Parses the command line; on a mistake (or `--help`, `--version`)
    /// prints clap's text and gives the exit code to end with.
    fn parse<A: ConnectorArgs>(&self) -> Result<A, ExitCode> {
        A::command()
            .after_long_help(settings_help(self.env_prefix, &self.settings))
            .mut_arg("log_format", |a| {
                a.env(format!("{}_LOG_FORMAT", self.env_prefix))
            })
            .try_get_matches()
            .and_then(|m| A::from_arg_matches(&m))
            .map_err(|e| {
                // A closed stdout while printing `--help` is no failure.
                let _ = e.print();
                ExitCode::from(if e.use_stderr() { 2 } else { 0 })
            })
    }

    /// The description `--about` prints.
    pub fn about(&self) -> About<'_> {
        About {
            name: self.name,
            description: self.description,
            version: self.version,
            capabilities: self.capabilities,
            settings: &self.settings,
            env_prefix: self.env_prefix,
        }
    }

    fn print_about(&self, format: AboutFormat) -> Result<(), WriteError> {
        let about = self.about();
        let text = match format {
            AboutFormat::Json => {
                serde_json::to_string_pretty(&about.to_json()).expect("JSON values serialize")
                    + "\n"
            }
            AboutFormat::Markdown => about.to_markdown(),
        };
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        Ok(())
    }

    /// The config files merged (later files win), then the environment for
    /// the settings they left unset. Keys no setting declares are warned
    /// about (a misspelling would otherwise silently mean a default).
    pub fn config(&self, files: &[PathBuf]) -> Result<Config, ConfigError> {
        let config = Config::from_files(files)?
            .with_env(self.env_prefix, &self.settings, |k| std::env::var(k).ok());
        let check = config.check_keys(&self.settings);
        for (key, suggestion) in &check.unknown {
            tracing::warn!("{}", KeyCheck::unknown_message(key, *suggestion));
        }
        if !check.unsupported.is_empty() {
            tracing::info!(
                "{} does not implement the Meltano SDK settings {}; they are ignored",
                self.name,
                check.unsupported.join(", ")
            );
        }
        Ok(config)
    }

    fn finish(&self, format: LogFormat, error: Option<&(dyn Error + 'static)>) -> ExitCode {
        match error {
            None => ExitCode::SUCCESS,
            Some(e) if is_closed_pipe(e) => {
                tracing::warn!("stdout was closed by the reader; stopping");
                ExitCode::SUCCESS
            }
            Some(e) => {
                // Best effort: there is nowhere else to say it.
                let line = fatal_line(format, self.name, &chain_text(e));
                let _ = writeln!(std::io::stderr().lock(), "{line}");
                ExitCode::FAILURE
            }
        }
    }
}

/// The final stderr line of a failed run: `<name>: error: <chain>`.
pub fn error_line(name: &str, error: &(dyn Error + 'static)) -> String {
    fatal_line(LogFormat::Text, name, &chain_text(error))
}

/// An error and its sources joined by `": "`, leaving out a source whose text
/// is already there (many errors repeat their source in their own message).
pub fn chain_text(error: &(dyn Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let part = e.to_string();
        if text.is_empty() {
            text = part;
        } else if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = e.source();
    }
    text
}

/// Whether the error is stdout closed by its reader, anywhere in its chain.
fn is_closed_pipe(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if matches!(e.downcast_ref::<WriteError>(), Some(WriteError::ClosedPipe)) {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read catalog c.json")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write state: {0}")]
    struct Repeats(#[source] WriteError);

    #[test]
    fn one_line_without_repeats() {
        let e = Outer(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(
            error_line("tap-x", &e),
            "tap-x: error: cannot read catalog c.json: entity not found"
        );
        let e = Repeats(WriteError::Io(std::io::Error::other("disk full")));
        assert_eq!(
            chain_text(&e),
            "cannot write state: cannot write output: disk full"
        );
    }

    #[test]
    fn a_closed_pipe_is_found_anywhere_in_the_chain() {
        assert!(is_closed_pipe(&WriteError::ClosedPipe));
        assert!(is_closed_pipe(&Repeats(WriteError::ClosedPipe)));
        let other = Outer(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        // Only stdout's own writer says ClosedPipe: a broken database socket
        // is a failure.
        assert!(!is_closed_pipe(&other));
    }
}
