//! Compression of what the store keeps in bulk (delta segments, batch bodies): LZ4, because
//! it costs far less CPU than the bytes it saves the store to write, log and read back (JSON
//! rows shrink three- to fivefold), and the store's own compression (PostgreSQL's pglz) is
//! slower still. Packed data starts with a NUL byte, which no JSON body does, so bodies stored
//! before packing existed still read.

use super::buffers::Buffer;
use std::borrow::Cow;

const MAGIC: &[u8; 4] = b"\0LZ4";

/// Why packed bytes could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("packed data is damaged: {0}")]
pub struct UnpackError(String);

/// Compresses `raw` straight into a kept buffer (lz4_flex's own `Vec` would be shrunk, then
/// copied in here — two copies of every segment and body — and a fresh one faulted in).
pub fn pack(raw: &[u8]) -> Buffer {
    let head = MAGIC.len() + 4;
    let size = head + lz4_flex::block::get_maximum_output_size(raw.len());
    let mut out = Buffer::with_capacity(size);
    out.resize(size, 0);
    out[..MAGIC.len()].copy_from_slice(MAGIC);
    out[MAGIC.len()..head].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    match lz4_flex::block::compress_into(raw, &mut out[head..]) {
        Ok(n) => {
            out.truncate(head + n);
            out
        }
        // Cannot happen with room for the worst case; stored as it is, it still reads.
        Err(_) => Buffer::from(raw.to_vec()),
    }
}

/// LZ4 expands at most 255-fold: a larger stated size is damage, not a reason to allocate it.
const MAX_RATIO: usize = 255;

/// The original bytes: decompressed if packed, as they are otherwise.
pub fn unpack(stored: &[u8]) -> Result<Cow<'_, [u8]>, UnpackError> {
    match stored.strip_prefix(MAGIC.as_slice()) {
        Some(_) => unpack_buffer(stored).map(|b| Cow::Owned(b.into_vec())),
        None => Ok(Cow::Borrowed(stored)),
    }
}

/// The original bytes in a kept buffer, for readers that decode them and let them go (the
/// merge and batch stages read every segment once).
pub fn unpack_buffer(stored: &[u8]) -> Result<Buffer, UnpackError> {
    let Some(packed) = stored.strip_prefix(MAGIC.as_slice()) else {
        let mut out = Buffer::with_capacity(stored.len());
        out.extend_from_slice(stored);
        return Ok(out);
    };
    let (size, block) = lz4_flex::block::uncompressed_size(packed).map_err(|e| UnpackError(e.to_string()))?;
    if size > block.len().saturating_mul(MAX_RATIO) + 16 {
        return Err(UnpackError(format!("{size} bytes stated for {} packed", block.len())));
    }
    let mut out = Buffer::with_capacity(size);
    out.resize(size, 0);
    match lz4_flex::block::decompress_into(block, &mut out) {
        Ok(n) if n == size => Ok(out),
        Ok(n) => Err(UnpackError(format!("{n} bytes unpacked, {size} stated"))),
        Err(e) => Err(UnpackError(e.to_string())),
    }
}

/// A stored batch body as the destination receives it.
pub fn unpack_body(stored: Vec<u8>) -> Result<Buffer, crate::errors::StoreError> {
    if !stored.starts_with(MAGIC) {
        return Ok(Buffer::from(stored));
    }
    unpack_buffer(&stored).map_err(|e| crate::errors::StoreError::Corrupt {
        what: "batch body",
        detail: e.to_string(),
    })
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
        let n = packed.len();
        packed.truncate(n - 3);
        assert!(unpack(&packed).is_err());
        // Garbage after the magic and a size: an error from the unchecked-input decoder too.
        let mut garbage = MAGIC.to_vec();
        garbage.extend_from_slice(&1000u32.to_le_bytes());
        garbage.extend_from_slice(&[0xff; 64]);
        assert!(unpack(&garbage).is_err());
    }

    #[test]
    fn a_stated_size_no_lz4_block_could_reach_is_damage_not_an_allocation() {
        let mut bogus = MAGIC.to_vec();
        bogus.extend_from_slice(&u32::MAX.to_le_bytes());
        bogus.extend_from_slice(&[0x10, b'x']);
        let e = unpack_buffer(&bogus).unwrap_err();
        assert!(e.to_string().contains("4294967295 bytes stated"), "{e}");
        // The most compressible input still unpacks: LZ4 stays within its 255-fold bound.
        let zeros = vec![0u8; 4 << 20];
        assert_eq!(unpack_buffer(&pack(&zeros)).unwrap().as_slice(), zeros.as_slice());
        // A body stored before packing existed comes back as it is.
        assert_eq!(unpack_body(br#"{"a":1}"#.to_vec()).unwrap().as_slice(), br#"{"a":1}"#);
    }
}
