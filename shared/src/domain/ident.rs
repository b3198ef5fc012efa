//! Identifiers from config (schema, table, column names) are validated, then quoted — never pasted.

/// Why a name cannot be used as an SQL identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not a valid {what} name: use letters, digits, `_`, `$` or spaces (at most 63 bytes, not starting with a digit)")]
pub struct IdentError {
    /// The rejected name.
    pub name: String,
    /// What it was meant to name.
    pub what: &'static str,
}

/// Checks one identifier part: letters, digits, `_`, `$`, spaces; no quotes, semicolons or
/// comment markers; 1–63 bytes; not starting with a digit.
pub fn validate(name: &str, what: &'static str) -> Result<(), IdentError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == ' ');
    if ok {
        Ok(())
    } else {
        Err(IdentError {
            name: name.to_owned(),
            what,
        })
    }
}

/// Quotes a validated identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Validates and quotes a possibly schema-qualified name (`schema.table`).
pub fn qualified(name: &str, what: &'static str) -> Result<String, IdentError> {
    name.split('.')
        .map(|part| validate(part, what).map(|()| quote(part)))
        .collect::<Result<Vec<_>, _>>()
        .map(|parts| parts.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_and_refuses_injection() {
        assert_eq!(qualified("dbo.Orders", "table").unwrap(), "\"dbo\".\"Orders\"");
        assert_eq!(qualified("order lines", "table").unwrap(), "\"order lines\"");
        for bad in [
            "x\"; DROP TABLE t; --",
            "a;b",
            "",
            "1abc",
            "a--b",
            "t)",
            "x'y",
            &"a".repeat(64),
        ] {
            assert!(validate(bad, "column").is_err(), "{bad}");
        }
        assert!(qualified("public.t; DELETE FROM x", "table").is_err());
    }
}
