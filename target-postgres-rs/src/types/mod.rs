//! Column types: the one model of a destination column's type. A type name
//! (as `format_type()` prints it) is parsed once into a [`ColumnType`], which
//! answers every question the target asks of it: how values are written in
//! text and binary COPY, which family it widens in, whether it is an integer
//! key. No code outside this module looks at a type's name.
//!
//! A new class of types is one row in [`BUILTINS`] (or one arm in
//! [`ColumnType::parse`] for types that aren't built in, like `hstore`).

mod json_schema;
mod widen;

pub use json_schema::{declared_sql_type, json_schema_type, unbounded_integer};
pub use widen::widen;

use postgres::types::Type;

use crate::binary::{BinKind, BinScalar};
use crate::encode::{Element, TextKind};

/// A destination column's type, parsed from its SQL name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnType {
    /// The name as given (what DDL and logs use).
    sql: String,
    base: Base,
    /// Trailing `[]`s: 0 for a scalar (`format_type()` prints one for any array).
    dims: usize,
    /// A type modifier was given: `(255)`, `(18,4)`, `(3)`.
    typmod: bool,
    /// A domain: written as its base type (`base`, `dims`, `typmod` are the
    /// base type's), but never widened within a family (its constraints
    /// would be lost).
    domain: bool,
}

/// What a column holds, without array dimensions or modifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    /// A built-in type with handling of its own.
    Builtin(&'static Builtin),
    /// The `hstore` extension's type (its OID differs per database; its name
    /// may be schema-qualified).
    Hstore,
    /// Anything else: other built-ins, enums, domains, extension and
    /// user-defined types. Postgres parses their values from text.
    Other,
}

/// The family a type widens within (see [`widen`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// Integers, by width rank.
    Int(u8),
    /// Floats, by width rank.
    Float(u8),
    Numeric,
    Text,
    Date,
    Timestamp,
    Json,
    Other,
}

/// What the target knows of one built-in type.
#[derive(Debug, PartialEq, Eq)]
struct Builtin {
    /// As `format_type()` prints it, without modifier or `[]`.
    name: &'static str,
    /// For the element OID binary arrays carry.
    pg: Type,
    text: TextKind,
    /// How binary COPY writes it; `None`: text COPY only.
    binary: Option<BinScalar>,
    /// Binary input still applies the type modifier exactly as text input does.
    binary_with_typmod: bool,
    /// Binary arrays of it (without an element modifier, which only text input checks).
    binary_arrays: bool,
    family: Family,
}

/// Built-in types with handling of their own, one line each.
#[rustfmt::skip]
static BUILTINS: [Builtin; 17] = {
    use BinScalar as B;
    use Family as F;
    use TextKind as T;
    const fn b(name: &'static str, pg: Type, text: TextKind, binary: Option<BinScalar>, binary_with_typmod: bool, binary_arrays: bool, family: Family) -> Builtin {
        Builtin { name, pg, text, binary, binary_with_typmod, binary_arrays, family }
    }
    [
        b("smallint", Type::INT2, T::Scalar, Some(B::Int2), false, true, F::Int(1)),
        b("integer", Type::INT4, T::Scalar, Some(B::Int4), false, true, F::Int(2)),
        b("bigint", Type::INT8, T::Scalar, Some(B::Int8), false, true, F::Int(3)),
        b("real", Type::FLOAT4, T::Scalar, Some(B::Float4), false, true, F::Float(1)),
        b("double precision", Type::FLOAT8, T::Scalar, Some(B::Float8), false, true, F::Float(2)),
        b("boolean", Type::BOOL, T::Scalar, Some(B::Bool), false, true, F::Other),
        b("text", Type::TEXT, T::Scalar, Some(B::Text), false, true, F::Text),
        b("character varying", Type::VARCHAR, T::Scalar, Some(B::Text), true, true, F::Text),
        b("character", Type::BPCHAR, T::Scalar, None, false, false, F::Text),
        b("numeric", Type::NUMERIC, T::Scalar, Some(B::Numeric), true, true, F::Numeric),
        // Binary input keeps microseconds a precision modifier would round.
        b("timestamp with time zone", Type::TIMESTAMPTZ, T::Timestamp, Some(B::Timestamptz), false, true, F::Timestamp),
        b("timestamp without time zone", Type::TIMESTAMP, T::Timestamp, Some(B::Timestamp), false, false, F::Timestamp),
        b("date", Type::DATE, T::Scalar, Some(B::Date), false, true, F::Date),
        b("uuid", Type::UUID, T::Scalar, Some(B::Uuid), false, true, F::Other),
        b("jsonb", Type::JSONB, T::Json, Some(B::Jsonb), false, false, F::Json),
        b("json", Type::JSON, T::JsonText, Some(B::Json), false, false, F::Json),
        b("bytea", Type::BYTEA, T::Bytea, Some(B::Bytea), false, false, F::Other),
    ]
};

impl ColumnType {
    /// Parses a type name as `format_type()` prints it (or as declared).
    pub fn parse(sql: &str) -> ColumnType {
        let dims = array_dims(sql);
        let rest = &sql[..sql.len() - 2 * dims];
        let name = strip_typmod(rest);
        let base = match BUILTINS.iter().find(|b| b.name == name) {
            Some(b) => Base::Builtin(b),
            None if name == "hstore" || name.ends_with(".hstore") => Base::Hstore,
            None => Base::Other,
        };
        ColumnType {
            sql: sql.to_owned(),
            base,
            dims,
            typmod: name != rest,
            domain: false,
        }
    }

    /// A domain named `sql` whose (innermost) base type is `base`: values
    /// are written as the base type's (`CREATE DOMAIN d AS int[]` takes array
    /// literals).
    pub fn domain(sql: &str, base: &str) -> ColumnType {
        ColumnType {
            sql: sql.to_owned(),
            domain: true,
            ..ColumnType::parse(base)
        }
    }

    /// Whether the name may be a domain (or another type only the
    /// destination knows): not a built-in, not an array.
    pub fn may_be_domain(&self) -> bool {
        self.base == Base::Other && self.dims == 0
    }

    /// The name as given.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// How text COPY writes a value of this type.
    pub fn text_kind(&self) -> TextKind {
        let scalar = match self.base {
            Base::Builtin(b) => b.text,
            Base::Hstore => TextKind::Hstore,
            Base::Other => TextKind::Scalar,
        };
        if self.dims == 0 {
            return scalar;
        }
        TextKind::Array(match scalar {
            TextKind::Json => Element::Json,
            TextKind::JsonText => Element::JsonText,
            TextKind::Bytea => Element::Bytea,
            TextKind::Hstore => Element::Hstore,
            _ => Element::Scalar,
        })
    }

    /// How binary COPY writes a value of this type, or `None` (the stream
    /// then uses text COPY).
    pub fn binary(&self) -> Option<BinKind> {
        let Base::Builtin(b) = self.base else {
            return None;
        };
        let scalar = b.binary?;
        match self.dims {
            0 if !self.typmod || b.binary_with_typmod => Some(BinKind::Scalar(scalar)),
            1 if !self.typmod && b.binary_arrays => Some(BinKind::Array(scalar, b.pg.oid())),
            _ => None,
        }
    }

    pub(crate) fn family(&self) -> Family {
        match self.base {
            Base::Builtin(b) if self.dims == 0 && !self.domain => b.family,
            _ => Family::Other,
        }
    }

    /// `smallint`, `integer` or `bigint`: a key the loader can track as ranges.
    pub fn is_integer(&self) -> bool {
        matches!(self.family(), Family::Int(_))
    }

    /// Exactly the built-in `ty`: no modifier, not an array.
    pub(crate) fn is_exactly(&self, ty: &Type) -> bool {
        matches!(self.base, Base::Builtin(b) if b.pg == *ty)
            && self.dims == 0
            && !self.typmod
            && !self.domain
    }
}

/// The destination column type for a declared type, from what the
/// destination says of it: `canonical` (`format_type(oid, NULL)`),
/// `unmodified` (`format_type(oid, -1)`), and whether it is (an array of) a
/// table's row type.
///
/// The declared text is kept when it carries a modifier the canonical name
/// lacks, spelled as Postgres prints it (in any case: `NUMERIC(10, 2)`).
/// Other spellings of a modified type (`VARCHAR(255)`, `CHAR(10)`, often
/// another dialect's, whose lengths count differently) land unmodified, so
/// no value is refused for its length. Without a modifier the unmodified name keeps the type's unbounded
/// meaning: `character` alone means `character(1)` in DDL, `bpchar` any
/// length (likewise `bit` and `"bit"`). A table's row type on the
/// destination is the target's own table (with `_sdc_*` columns), not the
/// source's: such values land as their text form (`text`, `text[]`).
pub fn declared_column_type(
    declared: &str,
    canonical: &str,
    unmodified: &str,
    table_row_type: bool,
) -> String {
    if table_row_type {
        return format!("text{}", "[]".repeat(array_dims(canonical)));
    }
    let spelled = spelled_as_postgres_prints(declared);
    let declared = spelled.as_str();
    // Interval field qualifiers (`interval year to month`) are a typmod too,
    // but not in parentheses: to_regtype accepted the text, so keep it.
    let same_interval = declared.starts_with("interval")
        && canonical.starts_with("interval")
        && declared.ends_with("[]") == canonical.ends_with("[]");
    let modified = strip_typmod(declared) != declared;
    if (modified && strip_typmod(declared) == canonical) || same_interval {
        declared.to_owned()
    } else {
        unmodified.to_owned()
    }
}

/// Unquoted names lower-cased (as Postgres folds them) and modifiers without
/// spaces (`NUMERIC(10, 2)` → `numeric(10,2)`), as `format_type()` prints them.
fn spelled_as_postgres_prints(declared: &str) -> String {
    if declared.contains('"') {
        return declared.to_owned();
    }
    let mut out = String::with_capacity(declared.len());
    let mut depth = 0usize;
    for c in declared.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            c if c.is_whitespace() && depth > 0 => continue,
            _ => {}
        }
        out.extend(c.to_lowercase());
    }
    out
}

fn array_dims(mut t: &str) -> usize {
    let mut dims = 0;
    while let Some(r) = t.strip_suffix("[]") {
        t = r;
        dims += 1;
    }
    dims
}

/// `timestamp(3) with time zone` → `timestamp with time zone`.
fn strip_typmod(t: &str) -> String {
    match (t.find('('), t.find(')')) {
        (Some(a), Some(b)) if b > a => {
            let mut s = format!("{}{}", &t[..a], &t[b + 1..]);
            s = s.replace("  ", " ");
            s.trim().to_owned()
        }
        _ => t.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(t: &str) -> TextKind {
        ColumnType::parse(t).text_kind()
    }

    fn bin_kind(t: &str) -> Option<BinKind> {
        ColumnType::parse(t).binary()
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of("integer[]"), TextKind::Array(Element::Scalar));
        assert_eq!(kind_of("jsonb[]"), TextKind::Array(Element::Json));
        assert_eq!(kind_of("bytea[]"), TextKind::Array(Element::Bytea));
        assert_eq!(kind_of("public.hstore"), TextKind::Hstore);
        assert_eq!(kind_of("jsonb"), TextKind::Json);
        assert_eq!(kind_of("bytea"), TextKind::Bytea);
        assert_eq!(kind_of("timestamp(3) with time zone"), TextKind::Timestamp);
        assert_eq!(kind_of("numeric(18,4)"), TextKind::Scalar);
    }

    #[test]
    fn binary_kinds() {
        assert_eq!(
            bin_kind("character varying(255)"),
            Some(BinKind::Scalar(BinScalar::Text))
        );
        assert_eq!(
            bin_kind("numeric(18,4)"),
            Some(BinKind::Scalar(BinScalar::Numeric))
        );
        assert!(matches!(bin_kind("text[]"), Some(BinKind::Array(_, 25))));
        assert_eq!(bin_kind("interval"), None);
        assert_eq!(bin_kind("timestamp(3) with time zone"), None);
        assert_eq!(bin_kind("integer[][]"), None);
    }

    #[test]
    fn integer_keys() {
        assert!(ColumnType::parse("bigint").is_integer());
        assert!(ColumnType::parse("smallint").is_integer());
        assert!(!ColumnType::parse("integer[]").is_integer());
        assert!(!ColumnType::parse("numeric").is_integer());
    }

    #[test]
    fn declared_types_keep_their_meaning() {
        let d = |declared, canonical, unmodified| {
            declared_column_type(declared, canonical, unmodified, false)
        };
        assert_eq!(d("character", "character", "bpchar"), "bpchar");
        assert_eq!(d("character(3)", "character", "bpchar"), "character(3)");
        assert_eq!(d("CHAR(10)", "character", "bpchar"), "bpchar");
        assert_eq!(d("character[]", "character[]", "bpchar[]"), "bpchar[]");
        assert_eq!(d("bit", "bit", "\"bit\""), "\"bit\"");
        assert_eq!(d("bit(4)", "bit", "\"bit\""), "bit(4)");
        assert_eq!(d("numeric(18,4)", "numeric", "numeric"), "numeric(18,4)");
        assert_eq!(d("NUMERIC(10, 2)", "numeric", "numeric"), "numeric(10,2)");
        assert_eq!(
            d(
                "TIMESTAMP(3) WITH TIME ZONE",
                "timestamp with time zone",
                "timestamp with time zone"
            ),
            "timestamp(3) with time zone"
        );
        assert_eq!(
            d("VARCHAR(255)", "character varying", "character varying"),
            "character varying"
        );
        assert_eq!(d("\"Mixed\"(2)", "\"Mixed\"", "\"Mixed\""), "\"Mixed\"(2)");
        assert_eq!(d("int4", "integer", "integer"), "integer");
        assert_eq!(
            d("interval year to month", "interval", "interval"),
            "interval year to month"
        );
        assert_eq!(declared_column_type("t2[]", "t2[]", "t2[]", true), "text[]");
        assert_eq!(declared_column_type("t2", "t2", "t2", true), "text");
    }

    #[test]
    fn domains_are_written_as_their_base_type() {
        let d = ColumnType::domain("public.d", "integer[]");
        assert_eq!(d.sql(), "public.d");
        assert_eq!(d.text_kind(), TextKind::Array(Element::Scalar));
        assert_eq!(d.family(), Family::Other);
        assert!(!ColumnType::domain("d", "bigint").is_integer());
    }

    #[test]
    fn typmods_are_stripped() {
        assert_eq!(strip_typmod("numeric(18,4)"), "numeric");
        assert_eq!(
            strip_typmod("timestamp(3) with time zone"),
            "timestamp with time zone"
        );
        assert_eq!(
            strip_typmod("character varying(20)[]"),
            "character varying[]"
        );
        assert_eq!(strip_typmod("integer[]"), "integer[]");
    }
}
