//! One model of a Postgres column type. [`TypeMap`] parses a column's type
//! once, from the catalog, into a [`PgType`] (domains unwrapped, arrays
//! nested, typmod applied, enums and extension types recognised); that value
//! answers every question the tap asks of a type: its codec, its JSON schema,
//! how it is read, whether and how it can be a bookmark. Nothing outside this
//! module looks at a type's OID or name.

use std::borrow::Cow;
use std::collections::HashMap;

use postgres::types::Type;
use postgres::Client;
use serde_json::{json, Map, Value};

use crate::codec::Codec;
use crate::error::{DiscoverError, DiscoverPhase as Phase};

/// A column type, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    /// A base, enum or extension type (domains are replaced by their base).
    Scalar(Scalar),
    /// An array of any number of dimensions (Postgres does not enforce a
    /// column's declared dimensions); bounds are not part of the type.
    Array { element: Box<PgType>, delimiter: u8 },
}

/// The scalar types the tap tells apart; everything else is [`Scalar::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar {
    Int2,
    Int4,
    Int8,
    /// oid, xid, cid: unsigned 32-bit.
    Unsigned32,
    /// numeric, real, double precision.
    Numeric,
    /// Read as numeric: its text form depends on lc_monetary.
    Money,
    Bool,
    Bytea,
    /// json, jsonb.
    Json,
    Date,
    Time,
    Timetz,
    Timestamp,
    Timestamptz,
    Uuid,
    /// text, name, citext.
    Text,
    /// char(n), varchar(n): the length from the typmod.
    Char {
        max_length: Option<i32>,
    },
    Enum {
        labels: Vec<String>,
    },
    /// The hstore extension's type.
    Hstore,
    /// Any other type: its text form as a JSON string.
    Other,
}

/// How a scalar type travels: every per-type fact in one row.
struct Traits {
    codec: Codec,
    schema: Value,
    bookmark: Bookmark,
}

/// Whether (and how) a column can be an INCREMENTAL replication key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bookmark {
    No,
    /// The bookmark is the value's JSON.
    Json,
    /// The bookmark is the value's exact text (numbers JSON would round).
    Text,
}

impl Scalar {
    /// The built-in type an OID names, if the tap treats it specially.
    fn builtin(oid: u32, typmod: i32) -> Option<Scalar> {
        let t = Type::from_oid(oid)?;
        // char(n) / varchar(n) carry their length plus 4 in the typmod.
        let max_length = (typmod > 4).then(|| typmod - 4);
        Some(match t {
            _ if t == Type::INT2 => Scalar::Int2,
            _ if t == Type::INT4 => Scalar::Int4,
            _ if t == Type::INT8 => Scalar::Int8,
            _ if [Type::OID, Type::XID, Type::CID].contains(&t) => Scalar::Unsigned32,
            _ if [Type::NUMERIC, Type::FLOAT4, Type::FLOAT8].contains(&t) => Scalar::Numeric,
            _ if t == Type::MONEY => Scalar::Money,
            _ if t == Type::BOOL => Scalar::Bool,
            _ if t == Type::BYTEA => Scalar::Bytea,
            _ if [Type::JSON, Type::JSONB].contains(&t) => Scalar::Json,
            _ if t == Type::DATE => Scalar::Date,
            _ if t == Type::TIME => Scalar::Time,
            _ if t == Type::TIMETZ => Scalar::Timetz,
            _ if t == Type::TIMESTAMP => Scalar::Timestamp,
            _ if t == Type::TIMESTAMPTZ => Scalar::Timestamptz,
            _ if t == Type::UUID => Scalar::Uuid,
            _ if [Type::TEXT, Type::NAME].contains(&t) => Scalar::Text,
            _ if [Type::BPCHAR, Type::VARCHAR].contains(&t) => Scalar::Char { max_length },
            _ => return None,
        })
    }

    /// An extension type, known by name (its OID differs per database).
    fn extension(name: &str) -> Option<Scalar> {
        match name {
            "hstore" => Some(Scalar::Hstore),
            "citext" => Some(Scalar::Text),
            _ => None,
        }
    }

    fn traits(&self) -> Traits {
        use Bookmark::{Json as J, No, Text as T};
        let t = |codec, schema, bookmark| Traits {
            codec,
            schema,
            bookmark,
        };
        let string = |format: &str| json!({"type": ["string"], "format": format});
        match self {
            Scalar::Int2 => t(Codec::Integer, int_schema(-32768, 32767), J),
            Scalar::Int4 => t(Codec::Integer, int_schema(-2147483648, 2147483647), J),
            Scalar::Int8 => t(Codec::Integer, int_schema(i64::MIN, i64::MAX), J),
            Scalar::Unsigned32 => t(Codec::Integer, int_schema(0, 4294967295), No),
            Scalar::Numeric => t(Codec::Number, json!({"type": ["number"]}), T),
            Scalar::Money => t(Codec::Number, json!({"type": ["number"]}), No),
            Scalar::Bool => t(Codec::Boolean, json!({"type": ["boolean"]}), No),
            Scalar::Bytea => t(
                Codec::Bytea,
                json!({"type": ["string"], "contentEncoding": "base16"}),
                No,
            ),
            Scalar::Json => t(
                Codec::Json,
                json!({"type": ["object", "array", "string", "number", "boolean"]}),
                No,
            ),
            Scalar::Date => t(Codec::Date, string("date"), J),
            // Draft 7's `time` is RFC 3339's `full-time`, which requires the
            // offset that a `time without time zone` does not have.
            Scalar::Time => t(Codec::Text, json!({"type": ["string"]}), No),
            Scalar::Timetz => t(Codec::Timetz, string("time"), No),
            Scalar::Timestamp => t(Codec::Timestamp, string("date-time"), J),
            Scalar::Timestamptz => t(Codec::Timestamptz, string("date-time"), J),
            Scalar::Uuid => t(Codec::Text, string("uuid"), No),
            Scalar::Text => t(Codec::Text, json!({"type": ["string"]}), J),
            Scalar::Char { max_length } => {
                let mut s = json!({"type": ["string"]});
                if let Some(n) = max_length {
                    s["maxLength"] = json!(n);
                }
                t(Codec::Text, s, J)
            }
            Scalar::Enum { labels } => {
                t(Codec::Text, json!({"type": ["string"], "enum": labels}), No)
            }
            Scalar::Hstore => t(
                Codec::Hstore,
                json!({"type": ["object"], "additionalProperties": {"type": ["string", "null"]}}),
                No,
            ),
            Scalar::Other => t(Codec::Text, json!({"type": ["string"]}), No),
        }
    }
}

impl PgType {
    /// How the column's text becomes JSON.
    pub fn codec(&self) -> Codec {
        match self {
            PgType::Scalar(s) => s.traits().codec,
            PgType::Array { element, delimiter } => Codec::Array {
                element: Box::new(element.codec()),
                delimiter: *delimiter,
            },
        }
    }

    /// The property schema, with `"null"` when the column is nullable.
    pub fn schema(&self, nullable: bool) -> Value {
        let mut schema = self.schema_map();
        if nullable {
            add_null(&mut schema);
        }
        Value::Object(schema)
    }

    /// The property schema that also admits every special value (see
    /// [`Codec::encode`]): each level that can be special also accepts a
    /// string, with no `format`.
    pub fn widened_schema(&self, nullable: bool) -> Value {
        let mut schema = self.widened_map();
        if nullable {
            add_null(&mut schema);
        }
        Value::Object(schema)
    }

    /// Whether a value of this type can be special (see [`Codec::encode`]).
    pub fn can_be_special(&self) -> bool {
        match self {
            PgType::Scalar(s) => matches!(
                s,
                Scalar::Numeric
                    | Scalar::Date
                    | Scalar::Timestamp
                    | Scalar::Timestamptz
                    | Scalar::Timetz
            ),
            // Any array can have explicit bounds.
            PgType::Array { .. } => true,
        }
    }

    fn widened_map(&self) -> Map<String, Value> {
        if !self.can_be_special() {
            return self.schema_map();
        }
        let mut schema = match self {
            PgType::Scalar(_) => self.schema_map(),
            PgType::Array { element, .. } => Self::array_map(element.widened_map()),
        };
        schema.remove("format");
        add_type(&mut schema, "string");
        schema
    }

    fn array_map(mut items: Map<String, Value>) -> Map<String, Value> {
        // Elements may be NULL, and multi-dimensional arrays nest.
        add_null(&mut items);
        add_type(&mut items, "array");
        obj(json!({"type": ["array"], "items": items}))
    }

    fn schema_map(&self) -> Map<String, Value> {
        match self {
            PgType::Scalar(s) => obj(s.traits().schema),
            PgType::Array { element, .. } => Self::array_map(element.schema_map()),
        }
    }

    fn scalar(&self) -> &Scalar {
        match self {
            PgType::Scalar(s) => s,
            PgType::Array { element, .. } => element.scalar(),
        }
    }

    /// The cast a SELECT reads the column through, if any: money (and money
    /// arrays) as numeric, whose text form does not depend on lc_monetary.
    pub fn read_cast(&self) -> Option<&'static str> {
        match self {
            _ if *self.scalar() != Scalar::Money => None,
            PgType::Scalar(_) => Some("::numeric"),
            PgType::Array { .. } => Some("::numeric[]"),
        }
    }

    /// The column's text as the log sends it, in the form COPY reads it:
    /// money arrives in the server's lc_monetary format (`$1,234.56`,
    /// `-$5.00`, `($5.00)`); COPY reads it as numeric instead.
    pub fn read_form<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match self {
            PgType::Scalar(Scalar::Money) => Cow::Owned(money_as_numeric(text)),
            // `{$1.25,"$1,234.56",NULL}`: each element as numeric, which needs no quotes.
            PgType::Array { .. } if *self.scalar() == Scalar::Money => {
                let mut out = String::with_capacity(text.len());
                let mut element = String::new();
                let mut quoted = false;
                let flush = |element: &mut String, out: &mut String| {
                    if !element.is_empty() {
                        out.push_str(&money_as_numeric(element));
                        element.clear();
                    }
                };
                for c in text.chars() {
                    match c {
                        '"' => quoted = !quoted,
                        '{' | '}' | ',' if !quoted => {
                            // An unquoted NULL stays NULL.
                            if element == "NULL" {
                                out.push_str("NULL");
                                element.clear();
                            }
                            flush(&mut element, &mut out);
                            out.push(c);
                        }
                        _ => element.push(c),
                    }
                }
                Cow::Owned(out)
            }
            _ => Cow::Borrowed(text),
        }
    }

    /// Orderable in a way INCREMENTAL can bookmark.
    pub fn bookmarkable(&self) -> bool {
        self.bookmark() != Bookmark::No
    }

    fn bookmark(&self) -> Bookmark {
        match self {
            PgType::Scalar(s) => s.traits().bookmark,
            PgType::Array { .. } => Bookmark::No,
        }
    }

    /// The bookmark for a replication key's text: integers as numbers,
    /// numeric/real/double as their exact text, the rest as their JSON string.
    pub fn bookmark_value(&self, codec: &Codec, text: &str) -> Value {
        if self.bookmark() == Bookmark::Text {
            return Value::String(text.to_owned());
        }
        let mut encoded = String::new();
        codec.encode(text, &mut encoded);
        serde_json::from_str(&encoded).unwrap_or_else(|_| Value::String(text.to_owned()))
    }
}

struct TypeRow {
    name: String,
    typtype: u8,
    base: u32,
    element: u32,
    category: u8,
    delimiter: u8,
}

/// Every type in the database (a few hundred to a few thousand rows), so that
/// domains, arrays and enums resolve without a query per column.
pub struct TypeMap {
    types: HashMap<u32, TypeRow>,
    enum_labels: HashMap<u32, Vec<String>>,
}

impl TypeMap {
    pub fn load(client: &mut Client) -> Result<TypeMap, DiscoverError> {
        let mut types = HashMap::new();
        for row in client
            .query(
                "SELECT oid, typname::text, typtype, typbasetype, typelem, typcategory, typdelim \
                   FROM pg_type WHERE typtype <> 'c' OR typrelid IN \
                     (SELECT oid FROM pg_class WHERE relkind = 'c')",
                &[],
            )
            .map_err(DiscoverError::at(Phase::Types))?
        {
            let oid: u32 = row.get(0);
            types.insert(
                oid,
                TypeRow {
                    name: row.get(1),
                    typtype: row.get::<_, i8>(2) as u8,
                    base: row.get(3),
                    element: row.get(4),
                    category: row.get::<_, i8>(5) as u8,
                    delimiter: row.get::<_, i8>(6) as u8,
                },
            );
        }
        let mut enum_labels = HashMap::new();
        for row in client
            .query(
                "SELECT enumtypid, array_agg(enumlabel::text ORDER BY enumsortorder) \
                   FROM pg_enum GROUP BY enumtypid",
                &[],
            )
            .map_err(DiscoverError::at(Phase::EnumLabels))?
        {
            enum_labels.insert(row.get::<_, u32>(0), row.get::<_, Vec<String>>(1));
        }
        Ok(TypeMap { types, enum_labels })
    }

    /// Whether the type was in the database when the map was loaded.
    pub fn knows(&self, oid: u32) -> bool {
        self.types.contains_key(&oid)
    }

    /// The type of a column (`atttypid`, `atttypmod`).
    pub fn parse(&self, oid: u32, typmod: i32) -> PgType {
        self.parse_at(oid, typmod, 0)
    }

    fn parse_at(&self, oid: u32, typmod: i32, depth: u32) -> PgType {
        // Unknown here (or a cycle, which the catalog forbids): its text.
        let Some(t) = self.types.get(&oid).filter(|_| depth < 16) else {
            return PgType::Scalar(Scalar::Other);
        };
        // A domain reads as its base type (the domain's own typmod is not kept).
        if t.typtype == b'd' {
            return self.parse_at(t.base, -1, depth + 1);
        }
        // int2vector and oidvector print as `1 2 3`, not as arrays.
        let vector = [Type::INT2_VECTOR.oid(), Type::OID_VECTOR.oid()].contains(&oid);
        if t.category == b'A' && t.element != 0 && !vector {
            return PgType::Array {
                element: Box::new(self.parse_at(t.element, typmod, depth + 1)),
                delimiter: self.types.get(&t.element).map_or(b',', |e| e.delimiter),
            };
        }
        if t.typtype == b'e' {
            let labels = self.enum_labels.get(&oid).cloned().unwrap_or_default();
            return PgType::Scalar(Scalar::Enum { labels });
        }
        PgType::Scalar(
            Scalar::builtin(oid, typmod)
                .or_else(|| Scalar::extension(&t.name))
                .unwrap_or(Scalar::Other),
        )
    }
}

/// A money value in lc_monetary's format (`$1,234.56`, `-$5.00`, `($5.00)`) as numeric text.
fn money_as_numeric(text: &str) -> String {
    let negative = text.contains('-') || text.starts_with('(');
    let digits: String = text
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    if negative {
        format!("-{digits}")
    } else {
        digits
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn int_schema(min: i64, max: i64) -> Value {
    json!({"type": ["integer"], "minimum": min, "maximum": max})
}

fn add_type(schema: &mut Map<String, Value>, name: &str) {
    if let Some(Value::Array(types)) = schema.get_mut("type") {
        if !types.iter().any(|t| t == name) {
            types.push(json!(name));
        }
    }
}

/// Makes a property nullable: `"null"` first in its types (and in `enum`).
fn add_null(schema: &mut Map<String, Value>) {
    if let Some(Value::Array(types)) = schema.get_mut("type") {
        if !types.iter().any(|t| t == "null") {
            types.insert(0, json!("null"));
        }
    }
    if let Some(Value::Array(labels)) = schema.get_mut("enum") {
        if !labels.iter().any(Value::is_null) {
            labels.push(Value::Null);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_from_the_log() {
        let money = PgType::Scalar(Scalar::Money);
        assert_eq!(money.read_form("$1,234.56"), "1234.56");
        assert_eq!(money.read_form("-$5.00"), "-5.00");
        assert_eq!(money.read_form("($5.00)"), "-5.00");
        let array = PgType::Array {
            element: Box::new(money),
            delimiter: b',',
        };
        assert_eq!(
            array.read_form(r#"{{$1.25,"$1,234.56"},{NULL,-$5.00}}"#),
            "{{1.25,1234.56},{NULL,-5.00}}"
        );
    }
}
