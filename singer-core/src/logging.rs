//! Logs for Singer connectors: always on stderr (stdout carries the protocol),
//! filtered by `RUST_LOG` (default `info`), as plain text or as one JSON object
//! per line (`--log-format json`) for orchestrators that parse logs.

use std::str::FromStr;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-01-01T00:00:00Z  INFO target: message key=value`
    #[default]
    Text,
    /// One JSON object per line in the Meltano SDK's structured-log shape:
    /// `{"level":"info","pid":…,"logger_name":…,"ts":…,"thread_name":…,
    /// "app_name":…,"stream_name":…,"message":…,"extra":{<fields>}}`.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (use text or json)")),
        }
    }
}

/// Installs the global subscriber for connector `app_name`. Call once, first
/// thing in `main`.
pub fn init_logging(format: LogFormat, app_name: &'static str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.event_format(MeltanoJson { app_name }).init(),
    }
}

/// The Meltano SDK's structured log line, which Meltano parses as such.
struct MeltanoJson {
    app_name: &'static str,
}

#[derive(Default)]
struct Fields(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for MeltanoJson
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = fields.0.remove("message").unwrap_or_default();
        let stream = fields.0.remove("stream").unwrap_or(serde_json::Value::Null);
        let line = json_line(
            &event.metadata().level().as_str().to_ascii_lowercase(),
            event.metadata().target(),
            self.app_name,
            stream,
            message,
            fields.0,
        );
        writeln!(writer, "{line}")
    }
}

/// One structured log line in the Meltano SDK's shape.
fn json_line(
    level: &str,
    logger_name: &str,
    app_name: &str,
    stream: serde_json::Value,
    message: serde_json::Value,
    extra: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let thread = std::thread::current();
    serde_json::json!({
        "level": level,
        "pid": std::process::id(),
        "logger_name": logger_name,
        "ts": ts,
        "thread_name": thread.name().unwrap_or("main"),
        "app_name": app_name,
        "stream_name": stream,
        "message": message,
        "extra": extra,
    })
}

/// The last line of a failed run, in `format`: `<app>: error: <message>`,
/// or a JSON log line of level `error` (written whatever `RUST_LOG` says:
/// it is the one line that must always be seen).
pub fn fatal_line(format: LogFormat, app_name: &str, message: &str) -> String {
    match format {
        LogFormat::Text => format!("{app_name}: error: {message}"),
        LogFormat::Json => json_line(
            "error",
            app_name,
            app_name,
            serde_json::Value::Null,
            message.into(),
            serde_json::Map::new(),
        )
        .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_formats() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("TEXT".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert_eq!(
            "yaml".parse::<LogFormat>(),
            Err("unknown log format \"yaml\" (use text or json)".to_string())
        );
    }

    #[test]
    fn the_fatal_line_follows_the_format() {
        assert_eq!(
            fatal_line(LogFormat::Text, "tap-x", "config: `user` is required"),
            "tap-x: error: config: `user` is required"
        );
        let line: serde_json::Value =
            serde_json::from_str(&fatal_line(LogFormat::Json, "tap-x", "no: way")).unwrap();
        assert_eq!(line["level"], "error");
        assert_eq!(line["message"], "no: way");
        assert_eq!(line["app_name"], "tap-x");
        assert!(line["ts"].is_f64() && line["pid"].is_u64(), "{line}");
    }
}
