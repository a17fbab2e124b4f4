//! Stream → `schema.table`, and identifiers that fit Postgres' 63 bytes.

use crate::settings::TargetSettings;

/// Postgres truncates identifiers past this many bytes (NAMEDATALEN - 1).
const MAX_IDENT_BYTES: usize = 63;

/// Where a stream lands.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// `"schema"."table"`, quoted.
    pub fn qualified(&self) -> String {
        pg_connect::quote_qualified(&self.schema, &self.table)
    }
}

/// `<schema>-<table>` lands in `<schema>.<table>`; `schema_mapping` maps the
/// source schema, `default_target_schema` overrides the rest; no `-` and no
/// default: `public`.
pub fn table_for_stream(stream: &str, settings: &TargetSettings) -> TableName {
    let (source_schema, table) = split_stream(stream);
    let schema = source_schema
        .and_then(|s| settings.schema_mapping.get(s).cloned())
        .or_else(|| settings.default_target_schema.clone())
        .or_else(|| source_schema.map(str::to_owned))
        .unwrap_or_else(|| "public".to_owned());
    TableName {
        schema: identifier(&schema),
        table: identifier(table),
    }
}

/// `<schema>-<table>` → (source schema, table); no prefix → (None, stream).
fn split_stream(stream: &str) -> (Option<&str>, &str) {
    match stream.split_once('-') {
        Some((s, t)) if !s.is_empty() && !t.is_empty() => (Some(s), t),
        _ => (None, stream),
    }
}

/// The roles granted USAGE and SELECT on what the target creates for a
/// stream: its source schema's `target_schema_select_permissions` in
/// `schema_mapping`, else `default_target_schema_select_permission`.
pub fn select_roles<'s>(stream: &str, settings: &'s TargetSettings) -> &'s [String] {
    split_stream(stream)
        .0
        .and_then(|s| settings.schema_select_roles.get(s))
        .unwrap_or(&settings.select_roles)
}

/// The name as sent when it fits; otherwise a prefix plus a hash of the whole
/// name, so two long names that share a prefix never collide.
pub fn identifier(name: &str) -> String {
    if name.len() <= MAX_IDENT_BYTES {
        return name.to_owned();
    }
    let hash = format!("_{:016x}", fnv1a(name.as_bytes()));
    let mut cut = MAX_IDENT_BYTES - hash.len();
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{hash}", &name[..cut])
}

/// FNV-1a: stable across Rust versions (std's hasher is not promised to be).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::TargetSettings;
    use singer_core::Config;

    fn settings(v: serde_json::Value) -> TargetSettings {
        TargetSettings::from_config(&Config::from_map(v.as_object().unwrap().clone())).unwrap()
    }

    #[test]
    fn streams_map_to_tables() {
        let none = settings(serde_json::json!({}));
        let t = |s: &str, cfg: &TargetSettings| {
            let n = table_for_stream(s, cfg);
            format!("{}.{}", n.schema, n.table)
        };
        assert_eq!(t("public-users", &none), "public.users");
        assert_eq!(t("users", &none), "public.users");
        assert_eq!(t("a-b-c", &none), "a.b-c");
        assert_eq!(t("test:Special!in?x", &none), "public.test:Special!in?x");
        let dflt = settings(serde_json::json!({"default_target_schema": "raw"}));
        assert_eq!(t("public-users", &dflt), "raw.users");
        assert_eq!(t("users", &dflt), "raw.users");
        let mapped = settings(
            serde_json::json!({"default_target_schema": "raw", "schema_mapping": {"public": "app"}}),
        );
        assert_eq!(t("public-users", &mapped), "app.users");
        assert_eq!(t("other-users", &mapped), "raw.users");
    }

    #[test]
    fn select_roles_follow_the_schema_mapping() {
        let s = settings(
            serde_json::json!({"default_target_schema_select_permission": ["all"],
            "schema_mapping": {"public": {"target_schema": "app", "target_schema_select_permissions": ["app_readers"]}}}),
        );
        assert_eq!(select_roles("public-users", &s), ["app_readers"]);
        assert_eq!(select_roles("other-users", &s), ["all"]);
        assert_eq!(select_roles("users", &s), ["all"]);
    }

    #[test]
    fn long_names_are_shortened_without_collisions() {
        let a = format!("{}_a", "x".repeat(70));
        let b = format!("{}_b", "x".repeat(70));
        let (sa, sb) = (identifier(&a), identifier(&b));
        assert!(sa.len() <= 63 && sb.len() <= 63, "{sa} {sb}");
        assert_ne!(sa, sb);
        assert_eq!(identifier(&a), sa, "stable");
        assert_eq!(identifier("short"), "short");
        let exactly = "y".repeat(63);
        assert_eq!(identifier(&exactly), exactly);
        // Multi-byte characters are never cut in half.
        let greek = "αβγδ".repeat(20);
        let g = identifier(&greek);
        assert!(g.len() <= 63);
        assert!(g.starts_with("αβγδ"));
    }
}
