//! Reading and writing Singer messages as JSON lines.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, Write};
use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::message::{first_to_escape, parse_message_sharing, Message, MessageError, Recent};

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

/// Bytes of whole lines read into one block (unless a line is longer): the
/// records parsed from a block share it, so a block is one allocation, one
/// copy and one UTF-8 check for about a hundred records.
const BLOCK_BYTES: usize = 64 * 1024;

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
    /// Whole lines read and not yet returned, from `at` on.
    block: Arc<str>,
    at: usize,
    /// Where in `block` a line that was not valid UTF-8 stood (as an empty
    /// line), in order.
    not_utf8: VecDeque<usize>,
    line: usize,
    recent: Recent,
}

impl<R: BufRead> MessageReader<R> {
    pub fn new(input: R) -> Self {
        MessageReader {
            input,
            block: Arc::from(""),
            at: 0,
            not_utf8: VecDeque::new(),
            line: 0,
            recent: Recent::default(),
        }
    }

    /// The number of the last line read.
    pub fn line(&self) -> usize {
        self.line
    }

    /// Whether lines already read from the input wait here (the next call
    /// returns without reading the input, when the input has more).
    pub fn has_buffered(&self) -> bool {
        self.at < self.block.len()
    }

    /// Reads the next non-blank line as raw text (no parsing), for callers
    /// that want to parse on another thread. Returns the line number and text.
    pub fn next_line(&mut self) -> Option<Result<(usize, &str), ReadError>> {
        self.next_range()
            .map(|r| r.map(|(line, range)| (line, &self.block[range])))
    }

    /// The next non-blank line's number and place in `block`.
    fn next_range(&mut self) -> Option<Result<(usize, Range<usize>), ReadError>> {
        loop {
            if self.at == self.block.len() {
                match self.read_block() {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(e) => {
                        self.line += 1;
                        return Some(Err(ReadError {
                            line: self.line,
                            stream: None,
                            kind: ReadErrorKind::Io(e),
                        }));
                    }
                }
            }
            let rest = &self.block[self.at..];
            let len = memchr::memchr(b'\n', rest.as_bytes()).map_or(rest.len(), |i| i + 1);
            let start = self.at;
            self.at += len;
            self.line += 1;
            if self.not_utf8.front() == Some(&start) {
                self.not_utf8.pop_front();
                return Some(Err(ReadError {
                    line: self.line,
                    stream: None,
                    kind: ReadErrorKind::Message(MessageError::NotJson(
                        "the line is not valid UTF-8".into(),
                    )),
                }));
            }
            let text = &rest[..len];
            if !text.trim().is_empty() {
                let end = start + text.trim_end_matches(['\n', '\r']).len();
                return Some(Ok((self.line, start..end)));
            }
        }
    }

    /// Reads the next block of whole lines (the last line may lack its
    /// newline). `false` at the end of the input.
    fn read_block(&mut self) -> io::Result<bool> {
        let mut bytes: Vec<u8> = Vec::new();
        loop {
            let buf = match self.input.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                break;
            }
            // Up to the last newline that keeps the block within its size,
            // else up to the first one (a long line).
            let room = BLOCK_BYTES.saturating_sub(bytes.len()).min(buf.len());
            let cut = memchr::memrchr(b'\n', &buf[..room])
                .or_else(|| memchr::memchr(b'\n', &buf[room..]).map(|i| room + i));
            match cut {
                Some(i) => {
                    bytes.extend_from_slice(&buf[..=i]);
                    self.input.consume(i + 1);
                    break;
                }
                None => {
                    let n = buf.len();
                    bytes.extend_from_slice(buf);
                    self.input.consume(n);
                }
            }
        }
        if bytes.is_empty() {
            return Ok(false);
        }
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => self.valid_lines(e.into_bytes()),
        };
        self.block = Arc::from(text);
        self.at = 0;
        Ok(true)
    }

    /// The block's lines with each one that is not UTF-8 left empty and
    /// noted (it is reported at its turn, and the lines after it still read).
    fn valid_lines(&mut self, bytes: Vec<u8>) -> String {
        let mut text = String::with_capacity(bytes.len());
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            match std::str::from_utf8(line) {
                Ok(line) => text.push_str(line),
                Err(_) => {
                    self.not_utf8.push_back(text.len());
                    text.push('\n');
                }
            }
        }
        text
    }
}

impl<R: BufRead> Iterator for MessageReader<R> {
    type Item = Result<(usize, Message), ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(match self.next_range()? {
            Ok((line, range)) => {
                parse_message_sharing(&self.block[range], Some(&self.block), &mut self.recent)
                    .map(|m| (line, m))
                    .map_err(|(e, stream)| ReadError {
                        line,
                        stream,
                        kind: e.into(),
                    })
            }
            Err(e) => Err(e),
        })
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
        write_record_head(out, stream)?;
        out.write_all(record_json.as_bytes())?;
        write_record_tail(out, version, time_extracted)?;
        Ok(())
    }

    /// Writes a RECORD of a [`RecordFrame`]'s stream: the same line as
    /// [`Self::write_record_raw`], without encoding the frame again.
    pub fn write_record_framed(
        &mut self,
        frame: &RecordFrame,
        record_json: &str,
    ) -> Result<(), WriteError> {
        self.out.write_all(&frame.head)?;
        self.out.write_all(record_json.as_bytes())?;
        self.out.write_all(&frame.tail)?;
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

/// What every RECORD of one stream with one `version` and
/// `time_extracted` has around its `record`, encoded once (a copy sends
/// millions of records that differ only there).
#[derive(Debug, Clone)]
pub struct RecordFrame {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl RecordFrame {
    pub fn new(stream: &str, version: Option<i64>, time_extracted: Option<&str>) -> RecordFrame {
        let mut head = Vec::new();
        let mut tail = Vec::new();
        // Writing to a Vec cannot fail.
        write_record_head(&mut head, stream).expect("write to a Vec");
        write_record_tail(&mut tail, version, time_extracted).expect("write to a Vec");
        RecordFrame { head, tail }
    }
}

/// A RECORD line up to its `record` object.
fn write_record_head<W: Write + ?Sized>(out: &mut W, stream: &str) -> io::Result<()> {
    out.write_all(b"{\"type\":\"RECORD\",\"stream\":")?;
    write_json_string(out, stream)?;
    out.write_all(b",\"record\":")
}

/// A RECORD line after its `record` object.
fn write_record_tail<W: Write + ?Sized>(
    out: &mut W,
    version: Option<i64>,
    time_extracted: Option<&str>,
) -> io::Result<()> {
    if let Some(v) = version {
        write!(out, ",\"version\":{v}")?;
    }
    if let Some(t) = time_extracted {
        out.write_all(b",\"time_extracted\":")?;
        write_json_string(out, t)?;
    }
    out.write_all(b"}\n")
}

/// Appends `s` as a JSON string literal (with quotes) to `out`.
pub fn write_json_string<W: Write + ?Sized>(out: &mut W, s: &str) -> io::Result<()> {
    if first_to_escape(s.as_bytes(), 0).is_none() {
        out.write_all(b"\"")?;
        out.write_all(s.as_bytes())?;
        return out.write_all(b"\"");
    }
    let mut buf = String::with_capacity(s.len() + 8);
    push_json_string(&mut buf, s);
    out.write_all(buf.as_bytes())
}

/// Appends `s` as a JSON string literal (with quotes) to `buf`, escaping only
/// what JSON requires. Fast on the common case of nothing to escape.
pub fn push_json_string(buf: &mut String, s: &str) {
    buf.reserve(s.len() + 2);
    buf.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(i) = first_to_escape(bytes, start) {
        let b = bytes[i];
        buf.push_str(&s[start..i]);
        match b {
            b'"' => buf.push_str("\\\""),
            b'\\' => buf.push_str("\\\\"),
            b'\n' => buf.push_str("\\n"),
            b'\r' => buf.push_str("\\r"),
            b'\t' => buf.push_str("\\t"),
            0x08 => buf.push_str("\\b"),
            0x0c => buf.push_str("\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                buf.push_str("\\u00");
                buf.push(HEX[usize::from(b >> 4)] as char);
                buf.push(HEX[usize::from(b & 0xf)] as char);
            }
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

    /// Blocks change nothing about lines: lines across the input's buffer,
    /// longer than a block, blank, not UTF-8, or last without a newline.
    #[test]
    fn reader_reads_lines_across_blocks_and_buffers() {
        let state = |n: usize| format!("{{\"type\":\"STATE\",\"value\":{n}}}");
        let long = format!(
            "{{\"type\":\"RECORD\",\"stream\":\"s\",\"record\":{{\"t\":\"{}\"}}}}",
            "x".repeat(3 * BLOCK_BYTES)
        );
        let mut input: Vec<u8> = Vec::new();
        let mut want = Vec::new();
        for n in 0..5000 {
            input.extend_from_slice(state(n).as_bytes());
            input.extend_from_slice(if n % 7 == 0 { b"\r\n" } else { b"\n" });
            want.push(Some(state(n)));
            if n == 1000 {
                input.extend_from_slice(b"\n  \t\n");
                want.extend([None, None]);
            }
            if n == 2000 {
                input.extend_from_slice(b"{\"type\":\"STATE\",\"value\":\"\xff\"}\n");
                want.push(Some("BAD".into()));
                input.extend_from_slice(long.as_bytes());
                input.push(b'\n');
                want.push(Some(long.clone()));
            }
        }
        input.extend_from_slice(state(5000).as_bytes());
        want.push(Some(state(5000)));
        for capacity in [7, 4096, 1 << 20] {
            let mut r = MessageReader::new(io::BufReader::with_capacity(capacity, &input[..]));
            for (i, w) in want.iter().enumerate() {
                let Some(w) = w else { continue };
                match r.next().unwrap() {
                    Ok((n, Message::State(s))) => {
                        assert_eq!(
                            (n, state(s.value.as_u64().unwrap() as usize)),
                            (i + 1, w.clone())
                        );
                    }
                    Ok((n, Message::Record(rec))) => {
                        assert_eq!((n, rec.record.get()), (i + 1, &long[39..long.len() - 1]));
                    }
                    Err(e) => assert_eq!(
                        (e.to_string(), w.as_str()),
                        (
                            format!(
                                "input line {}: not valid JSON: the line is not valid UTF-8",
                                i + 1
                            ),
                            "BAD"
                        )
                    ),
                    other => panic!("{other:?}"),
                }
            }
            assert!(r.next().is_none());
            assert!(!r.has_buffered());
        }
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
    fn json_string_escapes_at_every_position() {
        // Every byte JSON escapes, at every offset of the eight-byte scan.
        for special in (0u8..0x20).chain([b'"', b'\\']) {
            for at in 0..20 {
                let mut text = "abcdefghijklmnopqrstu".to_string().into_bytes();
                text[at] = special;
                let text = String::from_utf8(text).unwrap();
                let mut s = String::new();
                push_json_string(&mut s, &text);
                assert_eq!(s, serde_json::to_string(&text).unwrap(), "{text:?}");
                let mut w = Vec::new();
                write_json_string(&mut w, &text).unwrap();
                assert_eq!(w, s.as_bytes());
            }
        }
        let mut s = String::new();
        push_json_string(&mut s, "plain ascii, ü é 漢字 ✓ and \u{7f}");
        assert_eq!(s, "\"plain ascii, ü é 漢字 ✓ and \u{7f}\"");
    }

    #[test]
    fn framed_records_match_raw_ones() {
        let mut raw = Vec::new();
        let mut framed = Vec::new();
        for (version, time) in [(Some(5), Some("2024-01-01T00:00:00Z")), (None, None)] {
            let mut w = MessageWriter::new(&mut raw);
            w.write_record_raw("s\"q", r#"{"id":1}"#, version, time)
                .unwrap();
            w.flush().unwrap();
            let mut w = MessageWriter::new(&mut framed);
            let frame = RecordFrame::new("s\"q", version, time);
            w.write_record_framed(&frame, r#"{"id":1}"#).unwrap();
            w.flush().unwrap();
        }
        assert_eq!(
            String::from_utf8(framed).unwrap(),
            String::from_utf8(raw).unwrap()
        );
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
