//! Compression of what the store keeps in bulk (delta segments, batch bodies): LZ4, because
//! it costs far less CPU than the bytes it saves the store to write, log and read back (JSON
//! rows shrink three- to fivefold), and the store's own compression (PostgreSQL's pglz) is
//! slower still. Packed data starts with a NUL byte, which no JSON body does, so bodies stored
//! before packing existed still read.

use std::borrow::Cow;

const MAGIC: &[u8; 4] = b"\0LZ4";

/// Why packed bytes could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("packed data is damaged: {0}")]
pub struct UnpackError(String);

/// Compresses `raw`.
pub fn pack(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() / 3 + 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&lz4_flex::compress_prepend_size(raw));
    out
}

/// The original bytes: decompressed if packed, as they are otherwise.
pub fn unpack(stored: &[u8]) -> Result<Cow<'_, [u8]>, UnpackError> {
    match stored.strip_prefix(MAGIC.as_slice()) {
        Some(packed) => lz4_flex::decompress_size_prepended(packed)
            .map(Cow::Owned)
            .map_err(|e| UnpackError(e.to_string())),
        None => Ok(Cow::Borrowed(stored)),
    }
}

/// A stored batch body as the destination receives it.
pub fn unpack_body(stored: Vec<u8>) -> Result<Vec<u8>, crate::errors::StoreError> {
    match unpack(&stored) {
        Ok(std::borrow::Cow::Borrowed(_)) => Ok(stored),
        Ok(std::borrow::Cow::Owned(body)) => Ok(body),
        Err(e) => Err(crate::errors::StoreError::Corrupt {
            what: "batch body",
            detail: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_shrinks_json() {
        let raw = br#"{"id":1,"name":"customer name 0123","note":"xxxxxxxxxxxxxxxx"}"#.repeat(200);
        let packed = pack(&raw);
        assert!(packed.len() * 3 < raw.len(), "{} of {}", packed.len(), raw.len());
        assert_eq!(unpack(&packed).unwrap().as_ref(), raw.as_slice());
        assert_eq!(unpack(&pack(b"")).unwrap().as_ref(), b"");
    }

    #[test]
    fn unpacked_bodies_pass_through_and_damage_is_an_error() {
        assert_eq!(unpack(br#"{"a":1}"#).unwrap().as_ref(), br#"{"a":1}"#);
        let mut packed = pack(&b"abc".repeat(100));
        packed.truncate(packed.len() - 3);
        assert!(unpack(&packed).is_err());
    }
}
