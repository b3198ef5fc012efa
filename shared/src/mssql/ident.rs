//! T-SQL identifiers: validated by the same rule as every other backend's (letters, digits, `_`,
//! `$`, spaces — so no bracket, quote or semicolon can reach the statement), then bracket-quoted.
//! Values never go into statement text: they are bound as parameters (`@P1`, …).

use crate::domain::ident::{validate, IdentError};

/// Brackets a validated identifier part (`]` doubled, though validation already refuses it).
pub fn quote(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// Validates and brackets a possibly qualified name (`schema.table`, `db.schema.table`).
pub fn qualified(name: &str, what: &'static str) -> Result<String, IdentError> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 3 {
        return Err(IdentError {
            name: name.to_owned(),
            what,
        });
    }
    parts
        .iter()
        .map(|p| validate(p, what).map(|()| quote(p)))
        .collect::<Result<Vec<_>, _>>()
        .map(|q| q.join("."))
}

/// Validates and brackets one part.
pub fn part(name: &str, what: &'static str) -> Result<String, IdentError> {
    validate(name, what).map(|()| quote(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_names_and_refuses_injection() {
        assert_eq!(qualified("dbo.Orders", "table").unwrap(), "[dbo].[Orders]");
        assert_eq!(
            qualified("Sales.dbo.Order Lines", "table").unwrap(),
            "[Sales].[dbo].[Order Lines]"
        );
        assert_eq!(part("Kunde_Nr", "column").unwrap(), "[Kunde_Nr]");
        for bad in [
            "x]; DROP TABLE t; --",
            "a;b",
            "",
            "[dbo]",
            "a'b",
            "a\"b",
            "t)",
            "a--b",
            "a/*b",
            "1abc",
            "a.b.c.d",
            "dbo..t",
        ] {
            assert!(qualified(bad, "table").is_err(), "{bad:?} accepted");
        }
        assert_eq!(quote("odd]name"), "[odd]]name]");
    }
}
