//! Reading and writing Singer messages as JSON lines.

use std::fmt;
use std::io::{self, BufRead, Write};

use serde::Serialize;
use serde_json::Value;

use crate::message::{parse_message_sharing, Message, MessageError, Recent};

/// A line that could not be read as a Singer message.
#[derive(Debug, thiserror::Error)]
pub struct ReadError {
    /// 1-based line number in the input.
    pub line: usize,
    /// The stream the line named, when it named one.
    pub stream: Option<String>,
    pub kind: ReadErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadErrorKind {
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error("cannot read input: {0}")]
    Io(#[from] io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "input line {}", self.line)?;
        if let Some(stream) = &self.stream {
            write!(f, " (stream `{stream}`)")?;
        }
        write!(f, ": {}", self.kind)
    }
}

/// Pipe buffer a tap and a target share (Linux' limit for a user by default).
#[cfg(target_os = "linux")]
const PIPE_BYTES: usize = 1 << 20;

/// Widens stdin and stdout when they are pipes (64 kB by default, about 100
/// records): with room for over a thousand, a tap and a target each run in
/// longer turns on a busy machine instead of waking each other per 64 kB.
/// Anything else (a file, a terminal, a limit lower than ours) is left as it is.
pub(crate) fn widen_pipes() {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsFd;
        for fd in [io::stdin().as_fd(), io::stdout().as_fd()] {
            if rustix::pipe::fcntl_getpipe_size(fd).is_ok_and(|n| n < PIPE_BYTES) {
                let _ = rustix::pipe::fcntl_setpipe_size(fd, PIPE_BYTES);
            }
        }
    }
}

/// Reads Singer messages from JSON lines, skipping blank lines, each with its
/// 1-based line number.
///
/// ```no_run
/// use singer_core::MessageReader;
/// for item in MessageReader::new(std::io::stdin().lock()) {
///     let (line, message) = item?;
///     eprintln!("line {line}: {:?}", message.stream());
/// }
/// # Ok::<(), singer_core::ReadError>(())
/// ```
pub struct MessageReader<R> {
    input: R,
    buf: String,
    line: usize,
    recent: Recent,
}

impl<R: BufRead> MessageReader<R> {
    pub fn new(input: R) -> Self {
        MessageReader {
            input,
            buf: String::with_capacity(4096),
            line: 0,
            recent: Recent::default(),
        }
    }

    /// The number of the last line read.
    pub fn line(&self) -> usize {
        self.line
    }

    /// Reads the next non-blank line as raw text (no parsing), for callers
    /// that want to parse on another thread. Returns the line number and text.
    pub fn next_line(&mut self) -> Option<Result<(usize, &str), ReadError>> {
        loop {
            self.buf.clear();
            match self.input.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {
                    self.line += 1;
                    if !self.buf.trim().is_empty() {
                        return Some(Ok((self.line, self.buf.trim_end_matches(['\n', '\r']))));
                    }
                }
                Err(e) => {
                    self.line += 1;
                    let kind = if e.kind() == io::ErrorKind::InvalidData {
                        ReadErrorKind::Message(MessageError::NotJson(
                            "the line is not valid UTF-8".into(),
                        ))
                    } else {
                        ReadErrorKind::Io(e)
                    };
                    return Some(Err(ReadError {
                        line: self.line,
                        stream: None,
                        kind,
                    }));
                }
            }
        }
    }
}

impl<R: BufRead> Iterator for MessageReader<R> {
    type Item = Result<(usize, Message), ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Out of `self` while the line borrows it.
        let mut recent = std::mem::take(&mut self.recent);
        let item = match self.next_line()? {
            Ok((line, text)) => parse_message_sharing(text, &mut recent)
                .map(|m| (line, m))
                .map_err(|(e, stream)| ReadError {
                    line,
                    stream,
                    kind: e.into(),
                }),
            Err(e) => Err(e),
        };
        self.recent = recent;
        Some(item)
    }
}

/// Writing failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The reader went away (e.g. `| head`, or the target exited). Callers stop
    /// cleanly and report it instead of panicking.
    #[error("output closed by the reader (broken pipe)")]
    ClosedPipe,
    #[error("cannot write output: {0}")]
    Io(io::Error),
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            WriteError::ClosedPipe
        } else {
            WriteError::Io(e)
        }
    }
}

/// Writes Singer messages, one JSON object per line, to a buffered output.
///
/// ```no_run
/// use singer_core::MessageWriter;
/// let stdout = std::io::stdout();
/// let mut out = MessageWriter::new(stdout.lock());
/// out.write_state(&serde_json::json!({"bookmarks": {}}))?;
/// out.flush()?;
/// # Ok::<(), singer_core::WriteError>(())
/// ```
pub struct MessageWriter<W: Write> {
    out: io::BufWriter<W>,
}

#[derive(Serialize)]
struct SchemaOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    stream: &'a str,
    schema: &'a Value,
    key_properties: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    bookmark_properties: Option<&'a [String]>,
}

impl<W: Write> MessageWriter<W> {
    pub fn new(out: W) -> Self {
        MessageWriter {
            out: io::BufWriter::with_capacity(256 * 1024, out),
        }
    }

    pub fn write_schema(
        &mut self,
        stream: &str,
        schema: &Value,
        key_properties: &[String],
        bookmark_properties: Option<&[String]>,
    ) -> Result<(), WriteError> {
        serde_json::to_writer(
            &mut self.out,
            &SchemaOut {
                kind: "SCHEMA",
                stream,
                schema,
                key_properties,
                bookmark_properties,
            },
        )
        .map_err(io::Error::from)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    /// Writes a RECORD whose `record` object is already encoded as JSON text
    /// (the fast path for taps that encode values themselves).
    pub fn write_record_raw(
        &mut self,
        stream: &str,
        record_json: &str,
        version: Option<i64>,
        time_extracted: Option<&str>,
    ) -> Result<(), WriteError> {
        let out = &mut self.out;
        out.write_all(b"{\"type\":\"RECORD\",\"stream\":")?;
        write_json_string(out, stream)?;
        out.write_all(b",\"record\":")?;
        out.write_all(record_json.as_bytes())?;
        if let Some(v) = version {
            write!(out, ",\"version\":{v}")?;
        }
        if let Some(t) = time_extracted {
            out.write_all(b",\"time_extracted\":")?;
            write_json_string(out, t)?;
        }
        out.write_all(b"}\n")?;
        Ok(())
    }

    pub fn write_state(&mut self, value: &Value) -> Result<(), WriteError> {
        self.out.write_all(b"{\"type\":\"STATE\",\"value\":")?;
        serde_json::to_writer(&mut self.out, value).map_err(io::Error::from)?;
        self.out.write_all(b"}\n")?;
        Ok(())
    }

    pub fn write_activate_version(&mut self, stream: &str, version: i64) -> Result<(), WriteError> {
        self.out
            .write_all(b"{\"type\":\"ACTIVATE_VERSION\",\"stream\":")?;
        write_json_string(&mut self.out, stream)?;
        writeln!(self.out, ",\"version\":{version}}}")?;
        Ok(())
    }

    /// Writes messages another `MessageWriter` encoded: whole lines, as they
    /// are (a tap's parallel streams have one writer of stdout).
    pub fn write_encoded(&mut self, lines: &[u8]) -> Result<(), WriteError> {
        debug_assert!(lines.is_empty() || lines.ends_with(b"\n"));
        self.out.write_all(lines)?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), WriteError> {
        self.out.flush()?;
        Ok(())
    }
}

/// Appends `s` as a JSON string literal (with quotes) to `out`.
pub fn write_json_string<W: Write + ?Sized>(out: &mut W, s: &str) -> io::Result<()> {
    let mut buf = String::with_capacity(s.len() + 2);
    push_json_string(&mut buf, s);
    out.write_all(buf.as_bytes())
}

/// Appends `s` as a JSON string literal (with quotes) to `buf`, escaping only
/// what JSON requires. Fast on the common case of nothing to escape.
pub fn push_json_string(buf: &mut String, s: &str) {
    buf.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        buf.push_str(&s[start..i]);
        if esc.is_empty() {
            buf.push_str(&format!("\\u{b:04x}"));
        } else {
            buf.push_str(esc);
        }
        start = i + 1;
    }
    buf.push_str(&s[start..]);
    buf.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reader_numbers_lines_and_skips_blanks() {
        let input = "\n{\"type\":\"STATE\",\"value\":1}\n\n  \nnot json\n";
        let mut r = MessageReader::new(input.as_bytes());
        let (line, _) = r.next().unwrap().unwrap();
        assert_eq!(line, 2);
        let err = r.next().unwrap().unwrap_err();
        assert_eq!(err.line, 5);
        assert_eq!(
            err.to_string(),
            "input line 5: not valid JSON: expected ident at line 1 column 2"
        );
        assert!(r.next().is_none());
    }

    #[test]
    fn reader_error_names_stream() {
        let input = r#"{"type":"RECORD","stream":"users","record":"x"}"#;
        let err = MessageReader::new(input.as_bytes())
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "input line 1 (stream `users`): RECORD message: `record` must be a JSON object"
        );
    }

    #[test]
    fn writer_round_trips() {
        let mut buf = Vec::new();
        {
            let mut w = MessageWriter::new(&mut buf);
            w.write_schema(
                "s",
                &json!({"type":"object","properties":{}}),
                &["id".into()],
                None,
            )
            .unwrap();
            w.write_record_raw("s\"q", r#"{"id":1}"#, Some(5), Some("2024-01-01T00:00:00Z"))
                .unwrap();
            w.write_state(&json!({"a":1})).unwrap();
            w.write_activate_version("s", 7).unwrap();
            w.flush().unwrap();
        }
        let text = String::from_utf8(buf).unwrap();
        let messages: Vec<_> = MessageReader::new(text.as_bytes())
            .map(|m| m.unwrap().1)
            .collect();
        assert_eq!(messages.len(), 4);
        match &messages[1] {
            Message::Record(r) => {
                assert_eq!(&*r.stream, "s\"q");
                assert_eq!(r.version, Some(5));
                assert_eq!(r.record.get(), r#"{"id":1}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_string_escapes_control_characters() {
        let mut s = String::new();
        push_json_string(&mut s, "a\tb\n\u{1}\"\\é");
        assert_eq!(s, r#""a\tb\n\u0001\"\\é""#);
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\tb\n\u{1}\"\\é");
    }

    #[test]
    fn closed_pipe_is_reported_not_panicked() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
        }
        let mut w = MessageWriter::new(Closed);
        w.write_state(&json!(1)).unwrap();
        assert!(matches!(w.flush(), Err(WriteError::ClosedPipe)));
    }
}
