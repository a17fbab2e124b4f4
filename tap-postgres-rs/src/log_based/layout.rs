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
//!
//! It also keeps what of the table the stream sends ([`Selection`]): a
//! changed row filter leaves rows the new one matches missing from the
//! destination (and ones it no longer matches stale), and a newly selected
//! column leaves it empty in rows the log never rewrote, so those copy the
//! stream again too.

use pg_connect::quote_qualified;
use postgres::Client;
use serde_json::{json, Value};

use crate::plan::Prepared;

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

/// The bookmark key of the selection.
pub const SELECTION: &str = "selection";

/// What of the table a stream sends: the rows of its row filter
/// (`custom_where_clauses`, as the tap combines them), without the
/// deselected columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    row_filter: Option<String>,
    /// Columns of the table not selected: a column added to the table later
    /// is in neither list, and needs no copy (see [`Layout::recopy_reason`]).
    deselected: Vec<String>,
}

impl Selection {
    /// What stream `p` sends of a table of layout `layout`.
    pub fn of(p: &Prepared, layout: &Layout) -> Selection {
        Selection {
            row_filter: p.row_filter.clone(),
            deselected: layout
                .0
                .iter()
                .filter(|c| !p.columns.iter().any(|s| s.name == c.name))
                .map(|c| c.name.clone())
                .collect(),
        }
    }

    /// The bookmark form.
    pub fn to_bookmark(&self) -> Value {
        json!({"row_filter": self.row_filter, "deselected": self.deselected})
    }

    pub fn from_bookmark(v: &Value) -> Option<Selection> {
        let row_filter = match v.get("row_filter")? {
            Value::Null => None,
            f => Some(f.as_str()?.to_owned()),
        };
        let deselected = v
            .get("deselected")?
            .as_array()?
            .iter()
            .map(|c| c.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()?;
        Some(Selection {
            row_filter,
            deselected,
        })
    }

    /// Why destination rows sent under `old` can be missing, stale or
    /// incomplete under this selection, if they can.
    pub fn recopy_reason(&self, old: &Selection) -> Option<String> {
        // Comments and spacing do not change which rows a filter reads.
        let form = |f: &Option<String>| f.as_deref().map(crate::row_filter::canonical);
        if form(&self.row_filter) != form(&old.row_filter) {
            let shown = |f: &Option<String>| f.as_ref().map_or("none".into(), |f| format!("{f:?}"));
            return Some(format!(
                "the row filter (custom_where_clauses) changed from {} to {}",
                shown(&old.row_filter),
                shown(&self.row_filter)
            ));
        }
        old.deselected
            .iter()
            .find(|c| !self.deselected.contains(c))
            .map(|c| format!("column {c:?} is selected now: rows sent before lack its values"))
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

    fn selection(row_filter: Option<&str>, deselected: &[&str]) -> Selection {
        Selection {
            row_filter: row_filter.map(str::to_owned),
            deselected: deselected.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn which_selection_changes_need_a_copy() {
        let old = selection(Some("(id > 2)"), &["secret", "note"]);
        assert_eq!(
            Selection::from_bookmark(&old.to_bookmark()),
            Some(old.clone())
        );
        let unfiltered = selection(None, &[]);
        assert_eq!(
            Selection::from_bookmark(&unfiltered.to_bookmark()),
            Some(unfiltered.clone())
        );
        assert_eq!(
            selection(Some("(id > 2)"), &["secret", "note", "added"]).recopy_reason(&old),
            None,
            "a column deselected (or added deselected)"
        );
        assert_eq!(
            selection(Some("(id  >\n 2 -- recent\n)"), &["secret", "note"]).recopy_reason(&old),
            None,
            "only comments and spacing changed"
        );
        assert_eq!(
            selection(Some("(id > 3)"), &["secret", "note"])
                .recopy_reason(&old)
                .unwrap(),
            r#"the row filter (custom_where_clauses) changed from "(id > 2)" to "(id > 3)""#
        );
        assert_eq!(
            unfiltered.recopy_reason(&old).unwrap(),
            r#"the row filter (custom_where_clauses) changed from "(id > 2)" to none"#
        );
        assert_eq!(
            selection(Some("(id > 2)"), &["secret"])
                .recopy_reason(&old)
                .unwrap(),
            r#"column "note" is selected now: rows sent before lack its values"#
        );
    }
}
