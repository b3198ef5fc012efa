//! A data source's shape (column names and canonical types) and the drift rules between syncs.

use serde::{Deserialize, Serialize};

/// Canonical column types (docs/canonical-encoding.md); sources map their native types onto these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// true/false.
    Bool,
    /// 64-bit signed integer.
    Int,
    /// Exact decimal; the scale travels with the column.
    Decimal,
    /// 32-bit float.
    Float32,
    /// 64-bit float.
    Float64,
    /// Unicode text.
    Text,
    /// Binary.
    Bytes,
    /// Date.
    Date,
    /// Time of day.
    Time,
    /// Timestamp without offset.
    Timestamp,
    /// Timestamp with offset.
    Timestamptz,
    /// UUID.
    Uuid,
    /// JSON document.
    Json,
}

/// One column as published with the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Column name as the source spells it.
    pub name: String,
    /// Canonical type.
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// Scale for decimals (digits after the point), when the source declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    /// The source's own type name, for humans and drift messages.
    pub native: String,
}

/// The columns of a data source, in source order, and which of them form the key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    /// All columns in source order.
    pub columns: Vec<Column>,
    /// Key column names, in key order.
    pub key: Vec<String>,
    /// Columns left out by configuration (for drift: a change here is a controlled resync).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
    /// Columns carried masked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<String>,
}

impl TableSchema {
    /// Positions of the key columns within `columns`.
    pub fn key_indexes(&self) -> Vec<usize> {
        self.key
            .iter()
            .map(|k| self.columns.iter().position(|c| &c.name == k).expect("validated key"))
            .collect()
    }

    /// Column names in source order.
    pub fn column_names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|c| c.name.as_str())
    }
}

/// How the shape changed between the last merged sync and now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    /// Columns the source has now and did not have.
    pub added: Vec<String>,
    /// Columns the source no longer has.
    pub dropped: Vec<String>,
    /// Columns whose type changed, as `name: old -> new`.
    pub retyped: Vec<String>,
    /// Whether the key columns changed.
    pub key_changed: bool,
}

impl Drift {
    /// Compares two shapes; an empty drift means the shapes are equal for syncing purposes.
    pub fn between(old: &TableSchema, new: &TableSchema) -> Drift {
        let mut d = Drift::default();
        for c in &new.columns {
            match old.columns.iter().find(|o| o.name == c.name) {
                None => d.added.push(c.name.clone()),
                Some(o) if o.ty != c.ty || o.scale != c.scale => {
                    d.retyped.push(format!("{}: {} -> {}", c.name, o.native, c.native))
                }
                Some(_) => {}
            }
        }
        for o in &old.columns {
            if !new.columns.iter().any(|c| c.name == o.name) {
                d.dropped.push(o.name.clone());
            }
        }
        d.key_changed = old.key != new.key;
        d
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.dropped.is_empty() && self.retyped.is_empty() && !self.key_changed
    }
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.added.is_empty() {
            parts.push(format!("added: {}", self.added.join(", ")));
        }
        if !self.dropped.is_empty() {
            parts.push(format!("dropped: {}", self.dropped.join(", ")));
        }
        if !self.retyped.is_empty() {
            parts.push(format!("retyped: {}", self.retyped.join(", ")));
        }
        if self.key_changed {
            parts.push("key columns changed".to_owned());
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: ColumnType) -> Column {
        Column {
            name: name.into(),
            ty,
            scale: None,
            native: format!("{ty:?}").to_lowercase(),
        }
    }

    #[test]
    fn drift_names_every_change() {
        let old = TableSchema {
            columns: vec![
                col("id", ColumnType::Int),
                col("a", ColumnType::Text),
                col("b", ColumnType::Int),
            ],
            key: vec!["id".into()],
            ..Default::default()
        };
        let new = TableSchema {
            columns: vec![
                col("id", ColumnType::Int),
                col("b", ColumnType::Text),
                col("c", ColumnType::Date),
            ],
            key: vec!["id".into()],
            ..Default::default()
        };
        let d = Drift::between(&old, &new);
        assert_eq!(d.to_string(), "added: c; dropped: a; retyped: b: int -> text");
        assert!(Drift::between(&old, &old).is_empty());
    }
}
