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

/// Compresses `raw`: straight into the buffer returned (lz4_flex's own `Vec` would be shrunk,
/// then copied in here — two copies of every segment and body).
pub fn pack(raw: &[u8]) -> Vec<u8> {
    let head = MAGIC.len() + 4;
    let mut out = vec![0; head + lz4_flex::block::get_maximum_output_size(raw.len())];
    out[..MAGIC.len()].copy_from_slice(MAGIC);
    out[MAGIC.len()..head].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    match lz4_flex::block::compress_into(raw, &mut out[head..]) {
        Ok(n) => {
            out.truncate(head + n);
            out
        }
        // Cannot happen with room for the worst case; stored as it is, it still reads.
        Err(_) => raw.to_vec(),
    }
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
    fn the_layout_stays_what_stores_already_hold() {
        // Segments and bodies packed by earlier builds: the magic, then lz4_flex's own
        // size-prefixed block.
        let raw = br#"{"id":7,"name":"x"}"#.repeat(50);
        let mut earlier = MAGIC.to_vec();
        earlier.extend_from_slice(&lz4_flex::compress_prepend_size(&raw));
        assert_eq!(unpack(&earlier).unwrap().as_ref(), raw.as_slice());
        assert_eq!(
            lz4_flex::decompress_size_prepended(&pack(&raw)[MAGIC.len()..]).unwrap(),
            raw
        );
    }

    #[test]
    fn unpacked_bodies_pass_through_and_damage_is_an_error() {
        assert_eq!(unpack(br#"{"a":1}"#).unwrap().as_ref(), br#"{"a":1}"#);
        let mut packed = pack(&b"abc".repeat(100));
        packed.truncate(packed.len() - 3);
        assert!(unpack(&packed).is_err());
        // Garbage after the magic and a size: an error from the unchecked-input decoder too.
        let mut garbage = MAGIC.to_vec();
        garbage.extend_from_slice(&1000u32.to_le_bytes());
        garbage.extend_from_slice(&[0xff; 64]);
        assert!(unpack(&garbage).is_err());
    }
}
