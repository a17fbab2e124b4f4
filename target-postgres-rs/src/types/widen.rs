//! Widening: how a column changes to also hold a new SCHEMA's values.
//! Never narrows, never loses a value.

use postgres::types::Type;

use super::{ColumnType, Family};

/// A column change: the new type and the `USING` expression (with `{}` for the column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Widening {
    pub new_type: String,
    pub using: String,
}

/// How a column of type `existing` must change to also hold values of type
/// `desired`: `None` when it already holds them. Never narrows, never loses a value.
pub fn widen(existing: &ColumnType, desired: &ColumnType) -> Option<Widening> {
    if existing.sql() == desired.sql() {
        return None;
    }
    let desired_sql = desired.sql();
    let to = |t: &str, using: &str| {
        Some(Widening {
            new_type: t.to_owned(),
            using: using.to_owned(),
        })
    };
    use Family::*;
    let exactly = |ty: &Type| existing.is_exactly(ty);
    match (existing.family(), desired.family()) {
        (Int(a), Int(b)) => (b > a).then(|| Widening {
            new_type: desired_sql.to_owned(),
            using: format!("{{}}::{desired_sql}"),
        }),
        (Float(a), Float(b)) => (b > a).then(|| Widening {
            new_type: desired_sql.to_owned(),
            using: format!("{{}}::{desired_sql}"),
        }),
        (Numeric, Int(_) | Numeric) if exactly(&Type::NUMERIC) => None,
        (Int(_) | Numeric, Int(_) | Numeric) => to("numeric", "{}::numeric"),
        // Through the shortest exact float text: a direct cast keeps only 15 digits.
        (Float(_), Int(_) | Numeric) => to("numeric", "{}::text::numeric"),
        (Int(_) | Numeric, Float(_)) if exactly(&Type::NUMERIC) => None,
        (Int(_) | Numeric, Float(_)) => to("numeric", "{}::numeric"),
        (Text, _) if exactly(&Type::TEXT) => None,
        (Json, _) => None,
        (Timestamp, Date) => None,
        (Timestamp, Timestamp) if exactly(&Type::TIMESTAMPTZ) => None,
        (Date | Timestamp, Date | Timestamp) => {
            to("timestamp with time zone", "{}::timestamp with time zone")
        }
        (_, Json) => to("jsonb", "to_jsonb({})"),
        _ => to("text", "{}::text"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widen(a: &str, b: &str) -> Option<Widening> {
        super::widen(&ColumnType::parse(a), &ColumnType::parse(b))
    }

    #[test]
    fn widening_never_narrows() {
        let w = |a: &str, b: &str| widen(a, b).map(|w| w.new_type);
        assert_eq!(w("integer", "bigint").as_deref(), Some("bigint"));
        assert_eq!(w("bigint", "integer"), None);
        assert_eq!(w("bigint", "numeric(18,4)").as_deref(), Some("numeric"));
        assert_eq!(w("numeric", "bigint"), None);
        assert_eq!(
            w("numeric(10,2)", "numeric(18,4)").as_deref(),
            Some("numeric")
        );
        assert_eq!(
            widen("double precision", "numeric").unwrap().using,
            "{}::text::numeric"
        );
        assert_eq!(
            w("real", "double precision").as_deref(),
            Some("double precision")
        );
        assert_eq!(w("boolean", "text").as_deref(), Some("text"));
        assert_eq!(w("text", "boolean"), None);
        assert_eq!(w("character varying(20)", "text").as_deref(), Some("text"));
        assert_eq!(
            w("date", "timestamp with time zone").as_deref(),
            Some("timestamp with time zone")
        );
        assert_eq!(w("timestamp with time zone", "date"), None);
        assert_eq!(
            w("timestamp with time zone", "text").as_deref(),
            Some("text")
        );
        assert_eq!(w("bigint", "jsonb").as_deref(), Some("jsonb"));
        assert_eq!(w("jsonb", "text"), None);
        assert_eq!(w("integer[]", "text[]").as_deref(), Some("text"));
    }
}
