//! A table's column layout as the catalog has it, and what a change of it
//! means for rows already in the destination.
//!
//! The stream's bookmark keeps the layout its destination rows were written
//! under (`layout`: one `attnum:type oid:typmod:name` string per column). A
//! run compares it with the table's layout now: a column added with a
//! default (or a stored generated one), a renamed column or a changed type
//! left rows the log never rewrote wrong in the destination, so the stream is
//! copied again; a plain ADD COLUMN (existing rows are NULL in it) and DROP
//! COLUMN (the destination keeps the column) need nothing.

use pg_connect::quote_qualified;
use postgres::Client;
use serde_json::{json, Value};

/// The bookmark key of the layout.
pub const LAYOUT: &str = "layout";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutColumn {
    attnum: i16,
    pub name: String,
    type_oid: u32,
    typmod: i32,
    /// `GENERATED ALWAYS AS (...)`, stored or virtual.
    pub generated: bool,
    /// Added with values for existing rows: a default, or generated.
    has_default: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout(pub Vec<LayoutColumn>);

impl Layout {
    /// The table's live columns.
    pub fn read(client: &mut Client, schema: &str, table: &str) -> Result<Layout, postgres::Error> {
        let rows = client.query(
            "SELECT a.attnum, a.attname::text, a.atttypid, a.atttypmod, \
                    a.attgenerated::text <> '', a.atthasmissing OR a.atthasdef \
               FROM pg_attribute a \
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
              ORDER BY a.attnum",
            &[&quote_qualified(schema, table)],
        )?;
        Ok(Layout(
            rows.iter()
                .map(|r| LayoutColumn {
                    attnum: r.get(0),
                    name: r.get(1),
                    type_oid: r.get(2),
                    typmod: r.get(3),
                    generated: r.get(4),
                    has_default: r.get(5),
                })
                .collect(),
        ))
    }

    /// The bookmark form.
    pub fn to_bookmark(&self) -> Value {
        json!(self
            .0
            .iter()
            .map(|c| format!("{}:{}:{}:{}", c.attnum, c.type_oid, c.typmod, c.name))
            .collect::<Vec<_>>())
    }

    /// A layout from its bookmark form (defaults and generation are not kept:
    /// only the columns a later layout adds are asked about those).
    pub fn from_bookmark(v: &Value) -> Option<Layout> {
        v.as_array()?
            .iter()
            .map(|c| {
                let mut parts = c.as_str()?.splitn(4, ':');
                Some(LayoutColumn {
                    attnum: parts.next()?.parse().ok()?,
                    type_oid: parts.next()?.parse().ok()?,
                    typmod: parts.next()?.parse().ok()?,
                    name: parts.next()?.to_owned(),
                    generated: false,
                    has_default: false,
                })
            })
            .collect::<Option<Vec<_>>>()
            .map(Layout)
    }

    /// Why destination rows written under `old` can be wrong under this
    /// layout, if they can.
    pub fn recopy_reason(&self, old: &Layout) -> Option<String> {
        for c in &self.0 {
            match old.0.iter().find(|o| o.attnum == c.attnum) {
                None if c.has_default || c.generated => {
                    return Some(format!(
                    "column {:?} was added with values for existing rows (a default or GENERATED)",
                    c.name
                ))
                }
                None => {}
                Some(o) if o.name != c.name => {
                    return Some(format!("column {:?} was renamed to {:?}", o.name, c.name))
                }
                Some(o) if (o.type_oid, o.typmod) != (c.type_oid, c.typmod) => {
                    return Some(format!("column {:?} changed type", c.name))
                }
                Some(_) => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(attnum: i16, name: &str, type_oid: u32, has_default: bool) -> LayoutColumn {
        LayoutColumn {
            attnum,
            name: name.into(),
            type_oid,
            typmod: -1,
            generated: false,
            has_default,
        }
    }

    #[test]
    fn which_changes_need_a_copy() {
        let old = Layout(vec![col(1, "id", 23, false), col(2, "a:b", 25, false)]);
        let kept = Layout::from_bookmark(&old.to_bookmark()).unwrap();
        assert_eq!(kept, old);
        let plain_add = Layout(vec![col(1, "id", 23, false), col(3, "c", 25, false)]);
        assert_eq!(
            plain_add.recopy_reason(&old),
            None,
            "a drop and a plain add"
        );
        let with_default = Layout(vec![col(1, "id", 23, false), col(3, "c", 25, true)]);
        assert!(with_default.recopy_reason(&old).is_some());
        let renamed = Layout(vec![col(1, "id", 23, false), col(2, "b", 25, false)]);
        assert_eq!(
            renamed.recopy_reason(&old).unwrap(),
            r#"column "a:b" was renamed to "b""#
        );
        let retyped = Layout(vec![col(1, "id", 20, false)]);
        assert_eq!(
            retyped.recopy_reason(&old).unwrap(),
            r#"column "id" changed type"#
        );
    }
}
