//! Compression of what the store keeps in bulk. Delta segments: LZ4, because it costs far less
//! CPU than the bytes it saves the store to write, log and read back (JSON rows shrink three- to
//! fivefold), and the store's own compression (PostgreSQL's pglz) is slower still. Batch bodies:
//! the gzip the push sends ([`Body`], decision 0015). Packed data starts with a NUL byte and gzip
//! with `1f 8b`, which no JSON body does, so bodies stored by every earlier build still read.

use super::buffers::Buffer;
use crate::errors::StoreError;
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

/// gzip's magic: no JSON body and no LZ4-packed one starts with it.
const GZIP_MAGIC: &[u8; 2] = &[0x1f, 0x8b];

/// A batch body: the JSON, or the gzip of it the batch stage stored so that the push sends it
/// as it is — one compression per batch instead of LZ4 at the batch stage, its unpacking at
/// push and gzip again there. Bodies stored LZ4-packed by earlier builds read as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// The JSON itself.
    Json(Buffer),
    /// The JSON gzip-compressed, as sent with `Content-Encoding: gzip`.
    Gzip(Buffer),
}

fn damaged(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what: "batch body",
        detail: e.to_string(),
    }
}

/// `json` gzip-compressed at the fast level (JSON still shrinks four- to sixfold) into a kept
/// buffer sized for that ratio, so it does not regrow on the way.
pub fn gzip(json: &[u8]) -> std::io::Result<Buffer> {
    use std::io::Write;
    let mut out = Buffer::with_capacity(json.len() / 4 + 64);
    let mut gz = flate2::write::GzEncoder::new(&mut *out, flate2::Compression::fast());
    gz.write_all(json)?;
    gz.finish()?;
    Ok(out)
}

/// The size a gzip member's trailer states: the sender's word, modulo 4 GiB (0 if too short).
fn gzip_stated_size(gz: &[u8]) -> usize {
    gz.len().checked_sub(4).map_or(0, |at| {
        u32::from_le_bytes(gz[at..].try_into().unwrap_or_default()) as usize
    })
}

/// The first allocation for inflating `gz`: the trailer's size, within deflate's 1032-fold reach
/// of the body and 64 MiB (a lying trailer sizes nothing more; the size is checked after).
fn first_allocation(gz: &[u8]) -> usize {
    gzip_stated_size(gz).min(gz.len().saturating_mul(1032)).min(64 << 20)
}

/// Inflates `gz` into a kept buffer sized from its trailer: grown by doubling from empty, a body
/// was mapped and faulted in several times over.
pub fn gunzip(gz: &[u8]) -> std::io::Result<Buffer> {
    use std::io::Read;
    let mut out = Buffer::with_capacity(first_allocation(gz));
    flate2::read::GzDecoder::new(gz).read_to_end(&mut out)?;
    Ok(out)
}

impl Body {
    /// `json` as the push sends it to a destination that takes gzip.
    pub fn gzip_of(json: &[u8]) -> Body {
        // Writing into memory does not fail; were it to, the JSON is stored as it is.
        gzip(json).map_or_else(|_| Body::Json(Buffer::from(json.to_vec())), Body::Gzip)
    }

    /// Bytes of JSON (for gzip, the trailer's size: bodies are far below 4 GiB).
    pub fn len(&self) -> usize {
        match self {
            Body::Json(b) => b.len(),
            Body::Gzip(b) => gzip_stated_size(b),
        }
    }

    /// Whether there is no JSON.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The JSON, inflated if held as gzip.
    pub fn json(&self) -> Result<Cow<'_, [u8]>, StoreError> {
        match self {
            Body::Json(b) => Ok(Cow::Borrowed(b.as_slice())),
            Body::Gzip(b) => gunzip(b).map(|json| Cow::Owned(json.into_vec())).map_err(damaged),
        }
    }

    /// The gzip form, when that is how the body is held.
    pub fn gzip(&self) -> Option<&[u8]> {
        match self {
            Body::Gzip(b) => Some(b),
            Body::Json(_) => None,
        }
    }

    /// The bytes a store keeps: gzip as it is, JSON LZ4-packed.
    pub fn stored(&self) -> Cow<'_, [u8]> {
        match self {
            Body::Gzip(b) => Cow::Borrowed(b.as_slice()),
            Body::Json(b) => Cow::Owned(pack(b).into_vec()),
        }
    }
}

impl From<Buffer> for Body {
    fn from(json: Buffer) -> Body {
        Body::Json(json)
    }
}

/// A stored batch body read back.
pub fn unpack_body(stored: Vec<u8>) -> Result<Body, StoreError> {
    if stored.starts_with(GZIP_MAGIC) {
        Ok(Body::Gzip(Buffer::from(stored)))
    } else if stored.starts_with(MAGIC) {
        unpack_buffer(&stored).map(Body::Json).map_err(damaged)
    } else {
        Ok(Body::Json(Buffer::from(stored)))
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
    }

    #[test]
    fn bodies_inflate_into_a_buffer_sized_from_the_trailer_within_reason() {
        let raw = br#"{"seq":1,"op":"insert","row":{"id":1}}"#.repeat(5000);
        let gz = gzip(&raw).unwrap();
        assert_eq!(first_allocation(&gz), raw.len());
        assert_eq!(gunzip(&gz).unwrap().as_slice(), raw.as_slice());
        // A trailer claiming 4 GiB for a few bytes sizes nothing beyond deflate's reach.
        let mut lying = gzip(b"{}").unwrap();
        let n = lying.len();
        lying[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(first_allocation(&lying) <= n * 1032);
        assert!(gunzip(&lying).is_err(), "the trailer's size is checked after inflating");
        assert_eq!(first_allocation(b"ab"), 0);
        assert!(gunzip(b"not gzip").is_err());
    }

    #[test]
    fn bodies_are_stored_as_the_gzip_the_push_sends_and_earlier_forms_still_read() {
        let json = br#"{"changes":[{"seq":1,"op":"insert","row":{"id":1,"name":"x"}}]}"#.repeat(300);
        let body = Body::gzip_of(&json);
        let gz = body.gzip().expect("held as gzip").to_vec();
        assert!(gz.starts_with(GZIP_MAGIC) && gz.len() * 4 < json.len());
        assert_eq!(
            (body.len(), body.json().unwrap().as_ref()),
            (json.len(), json.as_slice())
        );
        // Stored as it is, read back as it was.
        assert_eq!(body.stored().as_ref(), gz.as_slice());
        assert_eq!(unpack_body(gz.clone()).unwrap(), body);
        // Any gzip reader takes it: it is what goes on the wire.
        let mut inflated = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut inflated).unwrap();
        assert_eq!(inflated, json);
        // Bodies an earlier build stored LZ4-packed, or as plain JSON before packing existed.
        let legacy = Body::from(Buffer::from(json.clone()));
        assert_eq!(unpack_body(legacy.stored().into_owned()).unwrap(), legacy);
        assert_eq!(
            unpack_body(br#"{"a":1}"#.to_vec()).unwrap().json().unwrap().as_ref(),
            br#"{"a":1}"#
        );
        // Damage is an error, named.
        let mut cut = gz;
        cut.truncate(cut.len() - 9);
        let e = unpack_body(cut).unwrap().json().unwrap_err();
        assert!(e.to_string().contains("batch body"), "{e}");
    }
}
