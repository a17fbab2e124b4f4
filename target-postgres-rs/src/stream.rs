//! One stream's shape: its columns (properties plus `_sdc_*` metadata), keys
//! and required properties, from its SCHEMA message.

use std::collections::{HashMap, HashSet};

use singer_core::{JsonSchema, SchemaMessage};

use crate::naming::{identifier, TableName};

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A record field (a schema property, or `_sdc_deleted_at` sent by the tap).
    Field(String),
    ExtractedAt,
    ReceivedAt,
    BatchedAt,
    Sequence,
    TableVersion,
}

/// A destination column.
#[derive(Debug, Clone)]
pub struct Column {
    /// The column name in the destination (the property name, shortened past 63 bytes).
    pub name: String,
    pub source: Source,
    /// The type wanted from the SCHEMA; the table's actual type may be wider.
    pub wanted_type: String,
    /// An integer the SCHEMA doesn't bound: created `bigint`, widened to
    /// `numeric` by the first value beyond bigint.
    pub grows_to_numeric: bool,
}

/// A property's wanted column type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub sql: String,
    /// See [`Column::grows_to_numeric`].
    pub grows_to_numeric: bool,
}

pub const DELETED_AT: &str = "_sdc_deleted_at";
pub const TABLE_VERSION: &str = "_sdc_table_version";

/// Everything about a stream that comes from its SCHEMA message.
#[derive(Debug)]
pub struct StreamShape {
    pub stream: String,
    pub table: TableName,
    pub message: SchemaMessage,
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the key properties.
    pub keys: Vec<usize>,
    /// Indexes into `columns` of the required properties.
    pub(crate) required: Vec<usize>,
    /// Record field name → index into `columns`.
    pub(crate) fields: HashMap<String, usize>,
    /// `("a","b",...)` for COPY and INSERT.
    pub column_list: String,
}

/// A property's wanted SQL type, decided by the caller (it knows the destination).
pub type TypeFor<'a> = dyn FnMut(&str, &JsonSchema) -> Wanted + 'a;

impl StreamShape {
    /// Builds the column list. `schema` has been checked to be an object schema.
    pub fn new(
        message: SchemaMessage,
        schema: &JsonSchema,
        table: TableName,
        add_metadata: bool,
        use_keys: bool,
        type_for: &mut TypeFor<'_>,
    ) -> Result<StreamShape, String> {
        let mut columns = Vec::new();
        let mut names = HashSet::new();
        for (prop, sub) in &schema.properties {
            let wanted = type_for(prop, sub);
            let name = identifier(prop);
            if !names.insert(name.clone()) {
                continue;
            }
            columns.push(Column {
                name,
                source: Source::Field(prop.clone()),
                wanted_type: wanted.sql,
                grows_to_numeric: wanted.grows_to_numeric,
            });
        }
        if add_metadata {
            let meta = [
                (
                    "_sdc_extracted_at",
                    Source::ExtractedAt,
                    "timestamp with time zone",
                ),
                (
                    "_sdc_received_at",
                    Source::ReceivedAt,
                    "timestamp with time zone",
                ),
                (
                    "_sdc_batched_at",
                    Source::BatchedAt,
                    "timestamp with time zone",
                ),
                (
                    DELETED_AT,
                    Source::Field(DELETED_AT.into()),
                    "timestamp with time zone",
                ),
                ("_sdc_sequence", Source::Sequence, "bigint"),
                (TABLE_VERSION, Source::TableVersion, "bigint"),
            ];
            for (name, source, ty) in meta {
                if names.insert(name.to_owned()) {
                    columns.push(Column {
                        name: name.to_owned(),
                        source,
                        wanted_type: ty.to_owned(),
                        grows_to_numeric: false,
                    });
                }
            }
        }
        let mut fields = HashMap::new();
        for (i, c) in columns.iter().enumerate() {
            if let Source::Field(f) = &c.source {
                fields.insert(f.clone(), i);
            }
        }
        let mut keys = Vec::new();
        if use_keys {
            for k in &message.key_properties {
                let i = *fields.get(k).ok_or_else(|| {
                    format!("key property `{k}` is not in the schema's properties")
                })?;
                if !keys.contains(&i) {
                    keys.push(i);
                }
            }
        }
        let required = message
            .schema
            .get("required")
            .and_then(|r| r.as_array())
            .map(|r| {
                r.iter()
                    .filter_map(|n| n.as_str().and_then(|n| fields.get(n).copied()))
                    .collect()
            })
            .unwrap_or_default();
        let column_list = format!(
            "({})",
            columns
                .iter()
                .map(|c| pg_connect::quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(StreamShape {
            stream: message.stream.clone(),
            table,
            message,
            columns,
            keys,
            required,
            fields,
            column_list,
        })
    }

    pub fn has_column(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c.name == name)
    }
}
