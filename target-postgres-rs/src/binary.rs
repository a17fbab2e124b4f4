//! Binary COPY for the common column types: Postgres parses binary values
//! with markedly less work than text. A value this module can't encode exactly
//! as Postgres would parse its text (an unusual date format, say) makes the
//! caller fall back to text COPY for the stream, so nothing changes meaning.

use serde_json::value::RawValue;

use crate::encode::{bytea_hex, unescape};

/// PGCOPY header: signature, flags, header extension length.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// File trailer: a field count of -1.
pub const TRAILER: &[u8] = &[0xff, 0xff];

/// Microseconds from 1970-01-01 to 2000-01-01 (Postgres' epoch).
const PG_EPOCH_DAYS: i64 = 10_957;

/// How binary COPY writes a column (from its type, see
/// [`crate::types::ColumnType::binary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinKind {
    Scalar(BinScalar),
    /// An array of a scalar kind, with the element type's OID.
    Array(BinScalar, u32),
}

/// A scalar value binary COPY can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinScalar {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Bool,
    Text,
    Numeric,
    Timestamptz,
    Timestamp,
    Date,
    Uuid,
    Jsonb,
    Json,
    Bytea,
}

/// What a record's strings may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strings {
    /// Not one has an escape (the reader saw none): a string's text is
    /// what is between its quotes.
    Plain,
    /// Unescape them; a `\u0000` is stripped, or refused.
    Escaped { strip_nul: bool },
}

impl Strings {
    /// Whether JSON text `t` may have a `\u0000`.
    fn may_hold_nul(self, t: &str) -> bool {
        self != Strings::Plain && has_nul_escape(t)
    }
}

/// This value can't be written in binary exactly as its text would parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback;

/// Why a binary value failed for a reason text COPY would share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinError {
    Fallback,
    Nul,
}

impl From<Fallback> for BinError {
    fn from(_: Fallback) -> Self {
        BinError::Fallback
    }
}

/// Appends one field (length + bytes; -1 for NULL) for `raw` JSON.
pub fn encode_field(
    out: &mut Vec<u8>,
    t: &str,
    kind: BinKind,
    strings: Strings,
) -> Result<(), BinError> {
    if t == "null" {
        out.extend_from_slice(&(-1i32).to_be_bytes());
        return Ok(());
    }
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    match kind {
        BinKind::Scalar(scalar) => encode_value(out, t, scalar, strings)?,
        BinKind::Array(elem, oid) => array(out, t, elem, oid, strings)?,
    }
    let len = (out.len() - at - 4) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Appends a field from text we made ourselves (metadata timestamps).
pub fn timestamptz_field(out: &mut Vec<u8>, text: &str) -> Result<(), Fallback> {
    let micros = parse_timestamp(text, true)?;
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&micros.to_be_bytes());
    Ok(())
}

pub fn int8_field(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn null_field(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i32).to_be_bytes());
}

fn string_of(t: &str, strings: Strings) -> Result<std::borrow::Cow<'_, str>, BinError> {
    let Strings::Escaped { strip_nul } = strings else {
        return match t.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            Some(text) => Ok(std::borrow::Cow::Borrowed(text)),
            None => Err(BinError::Fallback),
        };
    };
    if t.starts_with('"') {
        unescape(t, strip_nul).map_err(|e| match e {
            crate::encode::EncodeError::Nul => BinError::Nul,
            _ => BinError::Fallback,
        })
    } else {
        Err(BinError::Fallback)
    }
}

fn encode_value(
    out: &mut Vec<u8>,
    t: &str,
    kind: BinScalar,
    strings: Strings,
) -> Result<(), BinError> {
    use BinScalar::*;
    match kind {
        Int2 => {
            let v: i16 = t.parse().map_err(|_| Fallback)?;
            out.extend_from_slice(&v.to_be_bytes());
        }
        Int4 => {
            let v: i32 = t.parse().map_err(|_| Fallback)?;
            out.extend_from_slice(&v.to_be_bytes());
        }
        Int8 => {
            let v: i64 = t.parse().map_err(|_| Fallback)?;
            out.extend_from_slice(&v.to_be_bytes());
        }
        Float4 => {
            let v: f32 = float_special(t)
                .map(|f| f as f32)
                .map_or_else(
                    || {
                        finite_float(t)
                            .and_then(|_| t.parse::<f32>().ok())
                            .filter(|f| f.is_finite())
                    },
                    Some,
                )
                .ok_or(Fallback)?;
            if v == 0.0 && has_nonzero_digit(t) {
                return Err(BinError::Fallback);
            }
            out.extend_from_slice(&v.to_bits().to_be_bytes());
        }
        Float8 => {
            let v: f64 = float_special(t)
                .or_else(|| {
                    finite_float(t)
                        .and_then(|_| t.parse::<f64>().ok())
                        .filter(|f| f.is_finite())
                })
                .ok_or(Fallback)?;
            if v == 0.0 && has_nonzero_digit(t) {
                return Err(BinError::Fallback);
            }
            out.extend_from_slice(&v.to_bits().to_be_bytes());
        }
        Bool => match t {
            "true" => out.push(1),
            "false" => out.push(0),
            _ => return Err(BinError::Fallback),
        },
        Text => {
            if t.starts_with('"') {
                out.extend_from_slice(string_of(t, strings)?.as_bytes());
            } else if t.starts_with('{') || t.starts_with('[') {
                // JSON text in a text column: same as text COPY writes.
                if strings.may_hold_nul(t) {
                    return Err(BinError::Fallback);
                }
                out.extend_from_slice(t.as_bytes());
            } else {
                out.extend_from_slice(t.as_bytes());
            }
        }
        Numeric => {
            if t.starts_with('"') {
                let s = string_of(t, strings)?;
                numeric_special(out, &s).ok_or(Fallback)?;
            } else {
                numeric(out, t).ok_or(Fallback)?;
            }
        }
        Timestamptz | Timestamp => {
            let s = string_of(t, strings)?;
            let micros = parse_timestamp(&s, kind == Timestamptz)?;
            out.extend_from_slice(&micros.to_be_bytes());
        }
        Date => {
            let s = string_of(t, strings)?;
            out.extend_from_slice(&parse_date(&s)?.to_be_bytes());
        }
        Uuid => {
            let s = string_of(t, strings)?;
            uuid(out, &s).ok_or(Fallback)?;
        }
        Jsonb | Json => {
            // jsonb rejects \u0000 (json keeps it verbatim); let the text
            // path judge it.
            if kind == Jsonb && strings.may_hold_nul(t) {
                return Err(BinError::Fallback);
            }
            if kind == Jsonb {
                out.push(1);
            }
            out.extend_from_slice(t.as_bytes());
        }
        Bytea => {
            let s = string_of(t, strings)?;
            let hex = bytea_hex(&s);
            for pair in hex.as_bytes().chunks(2) {
                let hi = hex_val(pair[0]).ok_or(Fallback)?;
                let lo = hex_val(pair[1]).ok_or(Fallback)?;
                out.push(hi << 4 | lo);
            }
        }
    }
    Ok(())
}

/// A JSON array (rectangular, any depth) as a binary array.
fn array(
    out: &mut Vec<u8>,
    t: &str,
    elem: BinScalar,
    oid: u32,
    strings: Strings,
) -> Result<(), BinError> {
    if !t.starts_with('[') {
        return Err(BinError::Fallback);
    }
    if let Some(done) = flat_array(out, t, elem, oid, strings) {
        return done;
    }
    any_array(out, t, elem, oid, strings)
}

/// [`array`] of any shape: nested dimensions, objects as items.
fn any_array(
    out: &mut Vec<u8>,
    t: &str,
    elem: BinScalar,
    oid: u32,
    strings: Strings,
) -> Result<(), BinError> {
    // Shape first: walk the first element at each level.
    let top: Vec<&RawValue> = serde_json::from_str(t).map_err(|_| Fallback)?;
    let mut dims = Vec::new();
    if !top.is_empty() {
        dims.push(top.len());
        let mut cur = top[0].get();
        while cur.starts_with('[') {
            let level: Vec<&RawValue> = serde_json::from_str(cur).map_err(|_| Fallback)?;
            if level.is_empty() {
                return Err(BinError::Fallback);
            }
            dims.push(level.len());
            cur = level[0].get();
        }
    }
    if dims.len() > 6 {
        return Err(BinError::Fallback);
    }
    let flags_at = out.len() + 4;
    out.extend_from_slice(&(dims.len() as i32).to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&oid.to_be_bytes());
    for d in &dims {
        out.extend_from_slice(&(*d as i32).to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
    }
    let mut has_null = false;
    elements(out, &top, &dims, 0, elem, strings, &mut has_null)?;
    if has_null {
        out[flags_at..flags_at + 4].copy_from_slice(&1i32.to_be_bytes());
    }
    Ok(())
}

/// The common case of [`array`]: one dimension of scalars, read in one scan
/// without collecting the items. `None` (nothing written) when an item is an
/// array or object: the general path takes those.
fn flat_array(
    out: &mut Vec<u8>,
    t: &str,
    elem: BinScalar,
    oid: u32,
    strings: Strings,
) -> Option<Result<(), BinError>> {
    let start = out.len();
    // One dimension, its length patched in after the items.
    for v in [1i32, 0, oid as i32, 0, 1] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    let mut count = 0i32;
    let mut has_null = false;
    for item in ScalarItems::new(t) {
        let Some(item) = item else {
            out.truncate(start);
            return None;
        };
        has_null |= item == "null";
        if let Err(e) = encode_field(out, item, BinKind::Scalar(elem), strings) {
            out.truncate(start);
            return Some(Err(e));
        }
        count += 1;
    }
    if count == 0 {
        // No dimensions at all, as Postgres writes an empty array.
        out.truncate(start + 12);
        out[start..start + 4].copy_from_slice(&0i32.to_be_bytes());
    } else {
        out[start + 12..start + 16].copy_from_slice(&count.to_be_bytes());
        if has_null {
            out[start + 4..start + 8].copy_from_slice(&1i32.to_be_bytes());
        }
    }
    Some(Ok(()))
}

/// The items' raw texts of a JSON array the reader's parse has already
/// checked (so a string ends at its first unescaped quote and anything else
/// at a `,`, `]` or whitespace); `None` for an item that is an array or object.
struct ScalarItems<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> ScalarItems<'a> {
    fn new(t: &'a str) -> Self {
        ScalarItems {
            b: t.as_bytes(),
            at: 1,
        }
    }

    fn skip_space(&mut self) {
        while self.b.get(self.at).is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }
}

impl<'a> Iterator for ScalarItems<'a> {
    type Item = Option<&'a str>;

    fn next(&mut self) -> Option<Self::Item> {
        self.skip_space();
        if self.b.get(self.at) == Some(&b',') {
            self.at += 1;
            self.skip_space();
        }
        let from = self.at;
        match *self.b.get(from)? {
            b']' => return None,
            b'[' | b'{' => return Some(None),
            b'"' => {
                let mut i = from + 1;
                loop {
                    match self.b[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                self.at = i + 1;
            }
            _ => {
                while !matches!(self.b[self.at], b',' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    self.at += 1;
                }
            }
        }
        // Slicing at ASCII bytes of a `str` stays on char boundaries.
        Some(std::str::from_utf8(&self.b[from..self.at]).ok())
    }
}

fn elements(
    out: &mut Vec<u8>,
    items: &[&RawValue],
    dims: &[usize],
    depth: usize,
    kind: BinScalar,
    strings: Strings,
    has_null: &mut bool,
) -> Result<(), BinError> {
    if items.len() != dims.get(depth).copied().unwrap_or(0) {
        return Err(BinError::Fallback);
    }
    let leaf = depth + 1 == dims.len();
    for item in items {
        if leaf {
            if item.get().starts_with('[') {
                return Err(BinError::Fallback);
            }
            if item.get() == "null" {
                *has_null = true;
            }
            encode_field(out, item.get(), BinKind::Scalar(kind), strings)?;
        } else {
            let sub: Vec<&RawValue> = serde_json::from_str(item.get()).map_err(|_| Fallback)?;
            elements(out, &sub, dims, depth + 1, kind, strings, has_null)?;
        }
    }
    Ok(())
}

/// Whether JSON text has `\u0000` in it (a backslash is rare: looked for first).
fn has_nul_escape(t: &str) -> bool {
    t.as_bytes().contains(&b'\\') && t.contains("\\u0000")
}

const fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Each byte's value as a hex digit; `0xff` for any other byte.
const HEX_DIGIT: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut c = 0;
    while c < 256 {
        if let Some(v) = hex_val(c as u8) {
            t[c] = v;
        }
        c += 1;
    }
    t
};

fn uuid(out: &mut Vec<u8>, s: &str) -> Option<()> {
    let b = s.as_bytes();
    let mut hex = [0u8; 32];
    match b.len() {
        36 => {
            if b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
                return None;
            }
            hex[..8].copy_from_slice(&b[..8]);
            hex[8..12].copy_from_slice(&b[9..13]);
            hex[12..16].copy_from_slice(&b[14..18]);
            hex[16..20].copy_from_slice(&b[19..23]);
            hex[20..].copy_from_slice(&b[24..]);
        }
        32 => hex.copy_from_slice(b),
        _ => return None,
    }
    // Without a branch per digit (which of 0-9/a-f/A-F is random).
    let mut bytes = [0u8; 16];
    let mut bad = 0u8;
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
        let (hi, lo) = (
            HEX_DIGIT[usize::from(pair[0])],
            HEX_DIGIT[usize::from(pair[1])],
        );
        bad |= hi | lo;
        *byte = hi << 4 | lo;
    }
    if bad > 0xf {
        return None;
    }
    out.extend_from_slice(&bytes);
    Some(())
}

fn float_special(t: &str) -> Option<f64> {
    match t {
        "\"NaN\"" => Some(f64::NAN),
        "\"Infinity\"" => Some(f64::INFINITY),
        "\"-Infinity\"" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// A plain JSON number (not a string, not `NaN` spelled some other way).
fn finite_float(t: &str) -> Option<()> {
    let first = *t.as_bytes().first()?;
    (first == b'-' || first.is_ascii_digit()).then_some(())
}

fn has_nonzero_digit(t: &str) -> bool {
    let mantissa = t.split(['e', 'E']).next().unwrap_or("");
    mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b))
}

/// `NaN` in binary. `±Infinity` goes through text COPY: binary numeric
/// infinity exists only from PostgreSQL 14, and before that its binary form
/// fails with "invalid sign in external numeric value", where text input
/// names the value (and on 14+ both land the same).
fn numeric_special(out: &mut Vec<u8>, s: &str) -> Option<()> {
    let sign: u16 = match s {
        "NaN" => 0xC000,
        _ => return None,
    };
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&0i16.to_be_bytes());
    Some(())
}

/// A JSON number's decimal text in parts, when binary numeric can hold it.
struct Decimal<'a> {
    neg: bool,
    /// Digits before and after the point (ASCII digits, the first not empty).
    int_part: &'a str,
    frac_part: &'a str,
    exp: i32,
    /// The display scale `numeric_in` gives it.
    dscale: i32,
}

impl<'a> Decimal<'a> {
    fn of(t: &'a str) -> Option<Decimal<'a>> {
        let (neg, rest) = match t.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, t),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => {
                let e = &rest[i + 1..];
                let e: i32 = e.strip_prefix('+').unwrap_or(e).parse().ok()?;
                (&rest[..i], e)
            }
            None => (rest, 0),
        };
        if !(-1000..=1000).contains(&exp) {
            return None;
        }
        let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int_part.is_empty()
            || !int_part
                .bytes()
                .chain(frac_part.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let dscale = (frac_part.len() as i32 - exp).max(0);
        if dscale > 0x3FFF {
            return None;
        }
        Some(Decimal {
            neg,
            int_part,
            frac_part,
            exp,
            dscale,
        })
    }
}

/// A JSON number's exact decimal text as Postgres' binary numeric
/// (base-10000 digits, weight, sign, display scale as `numeric_in` gives it).
fn numeric(out: &mut Vec<u8>, t: &str) -> Option<()> {
    let Decimal {
        neg,
        int_part,
        frac_part,
        exp,
        dscale,
    } = Decimal::of(t)?;
    // value = 0.d1d2d3... × 10^point; the digits, left-padded with `lead`
    // zeros so that base-10000 groups start on a multiple of 4, are read in
    // place (no copy).
    let (int_b, frac_b) = (int_part.as_bytes(), frac_part.as_bytes());
    let ndigits = int_b.len() + frac_b.len();
    let digit = |i: usize| -> i16 {
        let c = if i < int_b.len() {
            int_b[i]
        } else {
            frac_b[i - int_b.len()]
        };
        i16::from(c - b'0')
    };
    let point = int_part.len() as i32 + exp;
    let lead = ((4 - point.rem_euclid(4)) % 4) as usize;
    let nonzero = |i: &usize| digit(*i) != 0;
    let (first, last) = match (0..ndigits).find(nonzero) {
        Some(f) => (f, (0..ndigits).rfind(nonzero).unwrap_or(f)),
        None => {
            // Zero: no groups, weight 0, never negative.
            for v in [0i16, 0, 0, dscale as i16] {
                out.extend_from_slice(&v.to_be_bytes());
            }
            return Some(());
        }
    };
    // Groups from the first with a nonzero digit to the last.
    let (g_first, g_last) = ((lead + first) / 4, (lead + last) / 4);
    let weight = (point + lead as i32) / 4 - 1 - g_first as i32;
    let sign: u16 = if neg { 0x4000 } else { 0 };
    out.extend_from_slice(&((g_last - g_first + 1) as i16).to_be_bytes());
    out.extend_from_slice(&(weight as i16).to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(dscale as i16).to_be_bytes());
    for g in g_first..=g_last {
        let mut v = 0i16;
        for k in 0..4 {
            let i = (4 * g + k).checked_sub(lead).filter(|&i| i < ndigits);
            v = v * 10 + i.map_or(0, digit);
        }
        out.extend_from_slice(&v.to_be_bytes());
    }
    Some(())
}

/// Days from 1970-01-01 in the proleptic Gregorian calendar (any year).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits_n(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let s = b.get(at..at + n)?;
    if !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0i64, |a, &c| a * 10 + (c - b'0') as i64))
}

/// `YYYY-MM-DD` (4 or more year digits) → (days from 2000-01-01, bytes used).
fn date_part(b: &[u8], bc: bool) -> Option<(i64, usize)> {
    let ylen = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if !(4..=6).contains(&ylen) || b.get(ylen) != Some(&b'-') || b.get(ylen + 3) != Some(&b'-') {
        return None;
    }
    let mut y = digits_n(b, 0, ylen)?;
    let m = digits_n(b, ylen + 1, 2)?;
    let d = digits_n(b, ylen + 4, 2)?;
    if bc {
        if y == 0 {
            return None;
        }
        y = 1 - y;
    }
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) || !(-4712..=200_000).contains(&y)
    {
        return None;
    }
    Some((days_from_civil(y, m, d) - PG_EPOCH_DAYS, ylen + 6))
}

/// `YYYY-MM-DD` at the start of `b` (a four-digit year, a real day) →
/// days from 2000-01-01; `None` for anything else ([`date_part`] judges it).
fn common_date(b: &[u8]) -> Option<i64> {
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = two_digits(b, 0)? * 100 + two_digits(b, 2)?;
    let (m, d) = (two_digits(b, 5)?, two_digits(b, 8)?);
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d) - PG_EPOCH_DAYS)
}

fn two_digits(b: &[u8], at: usize) -> Option<i64> {
    let (hi, lo) = (b[at].wrapping_sub(b'0'), b[at + 1].wrapping_sub(b'0'));
    (hi < 10 && lo < 10).then(|| i64::from(hi * 10 + lo))
}

/// The timestamp taps send most, `YYYY-MM-DDTHH:MM:SS[.ffffff]` and an
/// offset, as [`parse_timestamp`] reads it; `None` for anything else (the
/// general reading judges it).
fn common_timestamp(b: &[u8], with_tz: bool) -> Option<i64> {
    if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let days = common_date(b)?;
    let (h, m, sec) = (two_digits(b, 11)?, two_digits(b, 14)?, two_digits(b, 17)?);
    if h > 23 || m > 59 || sec > 59 {
        return None;
    }
    let mut i = 19;
    let mut frac = 0i64;
    if b[i] == b'.' {
        i += 1;
        let n = b[i..]
            .iter()
            .take(7)
            .take_while(|c| c.is_ascii_digit())
            .count();
        if n == 0 || n > 6 {
            return None;
        }
        frac = digits_n(b, i, n)? * 10i64.pow(6 - n as u32);
        i += n;
    }
    let offset = parse_offset(&b[i..])?;
    let mut micros = ((h * 60 + m) * 60 + sec) * 1_000_000 + frac;
    if with_tz {
        micros -= offset * 1_000_000;
    }
    Some(days * 86_400_000_000 + micros)
}

/// The text without a trailing ` BC`, and whether it had one.
fn strip_bc(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(b) => (b, true),
        None => (s, false),
    }
}

fn parse_date(s: &str) -> Result<i32, Fallback> {
    if s.len() == 10 {
        if let Some(days) = common_date(s.as_bytes()) {
            return Ok(days as i32);
        }
    }
    match s {
        "infinity" => return Ok(i32::MAX),
        "-infinity" => return Ok(i32::MIN),
        _ => {}
    }
    let (body, bc) = strip_bc(s);
    let b = body.as_bytes();
    let (days, used) = date_part(b, bc).ok_or(Fallback)?;
    if used != b.len() {
        return Err(Fallback);
    }
    Ok(days as i32)
}

/// ISO 8601 timestamps as Postgres reads them: microseconds from 2000-01-01
/// (UTC for `with_tz`; the offset is ignored without it, as Postgres does).
fn parse_timestamp(s: &str, with_tz: bool) -> Result<i64, Fallback> {
    if let Some(micros) = common_timestamp(s.as_bytes(), with_tz) {
        return Ok(micros);
    }
    match s {
        "infinity" => return Ok(i64::MAX),
        "-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    let (body, bc) = strip_bc(s);
    general_timestamp(body.as_bytes(), bc, with_tz)
}

/// [`parse_timestamp`] of any layout it takes (`bc`: ` BC` was cut off).
fn general_timestamp(b: &[u8], bc: bool, with_tz: bool) -> Result<i64, Fallback> {
    let (days, mut i) = date_part(b, bc).ok_or(Fallback)?;
    let mut micros = 0i64;
    if i < b.len() {
        if b[i] != b'T' && b[i] != b' ' {
            return Err(Fallback);
        }
        i += 1;
        let h = digits_n(b, i, 2).ok_or(Fallback)?;
        if b.get(i + 2) != Some(&b':') {
            return Err(Fallback);
        }
        let m = digits_n(b, i + 3, 2).ok_or(Fallback)?;
        i += 5;
        let mut sec = 0;
        if b.get(i) == Some(&b':') {
            sec = digits_n(b, i + 1, 2).ok_or(Fallback)?;
            i += 3;
        }
        let mut frac = 0i64;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let n = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            // Past microseconds Postgres rounds; leave that to its own parser.
            if n == 0 || n > 6 {
                return Err(Fallback);
            }
            frac = digits_n(b, i, n).ok_or(Fallback)? * 10i64.pow(6 - n as u32);
            i += n;
        }
        if h > 23 || m > 59 || sec > 59 {
            return Err(Fallback);
        }
        micros = ((h * 60 + m) * 60 + sec) * 1_000_000 + frac;
        if i < b.len() {
            let offset = parse_offset(&b[i..]).ok_or(Fallback)?;
            if with_tz {
                micros -= offset * 1_000_000;
            }
        }
    }
    Ok(days * 86_400_000_000 + micros)
}

/// `Z`, `+HH`, `+HHMM`, `+HH:MM`, `+HH:MM:SS` → seconds east of UTC.
fn parse_offset(b: &[u8]) -> Option<i64> {
    if b == b"Z" || b == b"z" {
        return Some(0);
    }
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let r = &b[1..];
    let (h, m, s) = match r.len() {
        2 => (digits_n(r, 0, 2)?, 0, 0),
        4 => (digits_n(r, 0, 2)?, digits_n(r, 2, 2)?, 0),
        5 if r[2] == b':' => (digits_n(r, 0, 2)?, digits_n(r, 3, 2)?, 0),
        8 if r[2] == b':' && r[5] == b':' => {
            (digits_n(r, 0, 2)?, digits_n(r, 3, 2)?, digits_n(r, 6, 2)?)
        }
        _ => return None,
    };
    if h > 15 || m > 59 || s > 59 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60 + s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(t: &str) -> Vec<i64> {
        let mut out = Vec::new();
        numeric(&mut out, t).unwrap();
        out.chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]) as i64)
            .collect()
    }

    #[test]
    fn numerics_match_numeric_in() {
        // [ndigits, weight, sign, dscale, digits...]
        assert_eq!(num("0"), vec![0, 0, 0, 0]);
        assert_eq!(num("1.50"), vec![2, 0, 0, 2, 1, 5000]);
        assert_eq!(num("-885536.1314"), vec![3, 1, 0x4000, 4, 88, 5536, 1314]);
        assert_eq!(num("12345678.9"), vec![3, 1, 0, 1, 1234, 5678, 9000]);
        assert_eq!(num("1e-7"), vec![1, -2, 0, 7, 10]);
        assert_eq!(num("1.5e3"), vec![1, 0, 0, 0, 1500]);
        assert_eq!(num("0.0001"), vec![1, -1, 0, 4, 1]);
        assert_eq!(num("10000"), vec![1, 1, 0, 0, 1]);
        assert_eq!(num("-0.0"), vec![0, 0, 0, 1]);
    }

    #[test]
    fn timestamps_and_dates() {
        assert_eq!(parse_timestamp("2000-01-01T00:00:00+00:00", true), Ok(0));
        assert_eq!(parse_timestamp("2000-01-01T01:00:00+01:00", true), Ok(0));
        assert_eq!(
            parse_timestamp("2000-01-01T01:00:00+01:00", false),
            Ok(3_600_000_000)
        );
        assert_eq!(parse_timestamp("2000-01-01 00:00:00.5Z", true), Ok(500_000));
        assert_eq!(parse_timestamp("1999-12-31", true), Ok(-86_400_000_000));
        assert_eq!(parse_timestamp("infinity", true), Ok(i64::MAX));
        assert_eq!(
            parse_timestamp("2000-01-01T00:00:00.1234567Z", true),
            Err(Fallback)
        );
        assert_eq!(parse_timestamp("Jan 1 2000", true), Err(Fallback));
        assert_eq!(parse_date("2000-01-02"), Ok(1));
        assert_eq!(
            parse_date("0001-01-01 BC"),
            Ok((days_from_civil(0, 1, 1) - PG_EPOCH_DAYS) as i32)
        );
        assert_eq!(
            parse_date("10000-01-01"),
            Ok((days_from_civil(10000, 1, 1) - PG_EPOCH_DAYS) as i32)
        );
        assert_eq!(parse_date("2023-02-29"), Err(Fallback));
    }

    /// The pre-allocation-free encoder, kept as the reference.
    fn numeric_reference(t: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let Decimal {
            neg,
            int_part,
            frac_part,
            exp,
            dscale,
        } = Decimal::of(t)?;
        let digits: Vec<u8> = int_part
            .bytes()
            .chain(frac_part.bytes())
            .map(|b| b - b'0')
            .collect();
        let point = int_part.len() as i32 + exp;
        let lead = (4 - point.rem_euclid(4)) % 4;
        let mut padded = vec![0u8; lead as usize];
        padded.extend_from_slice(&digits);
        padded.resize(padded.len().div_ceil(4) * 4, 0);
        let mut weight = (point + lead) / 4 - 1;
        let mut groups: Vec<i16> = padded
            .chunks(4)
            .map(|c| (c[0] as i16) * 1000 + (c[1] as i16) * 100 + (c[2] as i16) * 10 + c[3] as i16)
            .collect();
        while groups.first() == Some(&0) {
            groups.remove(0);
            weight -= 1;
        }
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        let sign: u16 = if neg && !groups.is_empty() { 0x4000 } else { 0 };
        out.extend_from_slice(&(groups.len() as i16).to_be_bytes());
        out.extend_from_slice(&(weight as i16).to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&(dscale as i16).to_be_bytes());
        for g in groups {
            out.extend_from_slice(&g.to_be_bytes());
        }
        Some(out)
    }

    #[test]
    fn numerics_match_the_reference_encoder() {
        let mut cases: Vec<String> = [
            "0",
            "-0",
            "0.000",
            "00012.3400",
            "1e1000",
            "1e-1000",
            "1e1001",
            "9999",
            "10000",
            "-1002903.9829",
            "123456789012345678901234567890.000000001",
            "0.1e-3",
            "5E+2",
            "1.",
            ".5",
            "1e",
            "abc",
            "-",
            "1.2.3",
            "0000",
            "100000000",
            "0.00000001",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for int in ["0", "7", "12", "305", "4000", "56789", "100200300"] {
            for frac in ["", "0", "5", "25", "125", "0625", "00001", "1000000"] {
                for exp in ["", "e0", "e1", "e-1", "e3", "e-5", "e7", "E+2"] {
                    let dot = if frac.is_empty() { "" } else { "." };
                    cases.push(format!("{int}{dot}{frac}{exp}"));
                    cases.push(format!("-{int}{dot}{frac}{exp}"));
                }
            }
        }
        for t in &cases {
            let mut out = Vec::new();
            let got = numeric(&mut out, t).map(|()| out);
            assert_eq!(got, numeric_reference(t), "{t}");
        }
    }

    #[test]
    fn uuids_in_both_spellings() {
        let mut out = Vec::new();
        uuid(&mut out, "f772b9fc-56bb-badf-3173-56B02E65DDFF").unwrap();
        uuid(&mut out, "f772b9fc56bbbadf317356b02e65ddff").unwrap();
        let want: Vec<u8> = (0..16)
            .map(|i| {
                u8::from_str_radix(&"f772b9fc56bbbadf317356b02e65ddff"[2 * i..2 * i + 2], 16)
                    .unwrap()
            })
            .collect();
        assert_eq!(out, [want.clone(), want].concat());
        for bad in [
            "f772b9fc-56bb-badf-3173-56b02e65ddf",
            "f772b9fc-56bb-badf-3173-56b02e65ddfg",
            "f772b9fc-56bb-badf-3173-56b0-e65ddff",
            "f772b9fc+56bb-badf-3173-56b02e65ddff",
            "f772b9fc56bbbadf317356b02e65dd-f",
        ] {
            assert_eq!(uuid(&mut Vec::new(), bad), None, "{bad}");
        }
    }

    /// One scan of a flat array writes what the general path writes.
    #[test]
    fn flat_arrays_match_the_general_path() {
        let cases = [
            (r#"["a1","b1","c,1"]"#, BinScalar::Text),
            (r#"[ "a\"]" , null ,"x\\", "é,]" ]"#, BinScalar::Text),
            ("[]", BinScalar::Text),
            ("[ ]", BinScalar::Int4),
            ("[1,null,-3]", BinScalar::Int4),
            ("[1 ,2\n,3\t]", BinScalar::Int8),
            ("[1.5e3,2]", BinScalar::Numeric),
            ("[true,false,null]", BinScalar::Bool),
            (r#"["2024-01-01T00:00:00Z",null]"#, BinScalar::Timestamptz),
            (r#"[1,"x"]"#, BinScalar::Int4),
            (r#"["a\u0000b"]"#, BinScalar::Text),
        ];
        for (t, elem) in cases {
            let mut all = vec![
                Strings::Escaped { strip_nul: false },
                Strings::Escaped { strip_nul: true },
            ];
            if !t.contains('\\') {
                all.push(Strings::Plain);
            }
            for strings in all {
                let mut fast = Vec::new();
                let fast_r = flat_array(&mut fast, t, elem, 25, strings).expect("flat");
                let mut slow = Vec::new();
                let slow_r = any_array(&mut slow, t, elem, 25, strings);
                assert_eq!(fast_r, slow_r, "{t}");
                if fast_r.is_ok() {
                    assert_eq!(fast, slow, "{t}");
                } else {
                    assert!(fast.is_empty(), "{t}");
                }
            }
        }
        for nested in [r#"[["a"],["b"]]"#, r#"["a",["b"]]"#, r#"[{"k":1}]"#] {
            let mut out = Vec::new();
            assert!(flat_array(&mut out, nested, BinScalar::Text, 25, Strings::Plain).is_none());
            assert!(out.is_empty());
        }
    }

    /// The common layout's quick reading agrees with the general one.
    #[test]
    fn common_timestamps_read_as_the_general_reading() {
        let mut cases = Vec::new();
        for date in [
            "2024-02-29",
            "2023-02-29",
            "0000-01-01",
            "9999-12-31",
            "2000-13-01",
            "2000-00-10",
            "2000-01-00",
            "20a0-01-01",
            "2000/01/01",
        ] {
            cases.push(date.to_string());
            for time in [
                "T00:00:00",
                "T23:59:59",
                "T24:00:00",
                "T12:60:00",
                "T12:00:60",
                "T1:00:00",
                " 12:00:00",
            ] {
                for frac in ["", ".", ".1", ".123456", ".1234567", ".0000001"] {
                    for off in [
                        "",
                        "Z",
                        "z",
                        "+00:00",
                        "-07:30",
                        "+0530",
                        "+05",
                        "+16:00",
                        "+05:30:15",
                        "+5",
                        " BC",
                        "+00:00 BC",
                    ] {
                        cases.push(format!("{date}{time}{frac}{off}"));
                    }
                }
            }
        }
        for t in &cases {
            for with_tz in [true, false] {
                let general = {
                    let (body, bc) = strip_bc(t);
                    let b = body.as_bytes();
                    general_timestamp(b, bc, with_tz)
                };
                assert_eq!(parse_timestamp(t, with_tz), general, "{t}");
            }
            let general_date = {
                let (body, bc) = strip_bc(t);
                date_part(body.as_bytes(), bc)
                    .filter(|&(_, used)| used == body.len())
                    .map(|(d, _)| d as i32)
                    .ok_or(Fallback)
            };
            assert_eq!(parse_date(t), general_date, "{t}");
        }
    }
}
