//! Percent-encoding of URL query values (RFC 3986 unreserved characters pass through), for the
//! few places that build a URL by hand: SAS tokens, redirect notices.

/// Encodes every byte outside `A-Z a-z 0-9 - _ . ~` as `%XX`.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reserved_and_non_ascii_bytes_are_encoded() {
        assert_eq!(super::percent_encode("a b/c:d~é"), "a%20b%2Fc%3Ad~%C3%A9");
    }
}
