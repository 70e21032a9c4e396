//! Framing of one journal record as a store value.
//!
//! ```text
//! [magic: u8 = FRAME_MAGIC][crc32 of payload: u32 LE][payload: bincode(JournalRecord)]
//! ```
//!
//! The payload is bincode 2.0.1 `config::standard()` (little endian, varint)
//! of [`JournalRecord`]; its first byte is therefore the version tag (the
//! variant index, one byte while below 251). [`decode`] never panics: short
//! or garbled input, a bad checksum and an unknown version each give a
//! typed [`DecodeError`]. Decoding is capped at [`MAX_PAYLOAD`] bytes so a
//! garbled length prefix cannot make it allocate without bound.

use crate::record::JournalRecord;
use thiserror::Error;

/// First byte of every frame (`'J'`).
pub const FRAME_MAGIC: u8 = 0x4A;

/// Bytes before the payload: magic + crc32.
pub const HEADER_LEN: usize = 5;

/// Largest payload [`decode`] accepts (and the bincode decode limit).
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

type Cfg = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_PAYLOAD>,
>;

fn config() -> Cfg {
    bincode::config::standard().with_limit::<MAX_PAYLOAD>()
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// bincode refused the record (should not happen for plain records).
    #[error("cannot encode journal record: {0}")]
    Bincode(String),
    /// The encoded record is larger than [`MAX_PAYLOAD`].
    #[error("journal record too large: {len} bytes (max {MAX_PAYLOAD})")]
    TooLarge {
        /// Encoded payload size.
        len: usize,
    },
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Fewer bytes than a header plus a version tag.
    #[error("frame truncated: {len} bytes")]
    Truncated {
        /// Length of the input.
        len: usize,
    },
    /// The first byte is not [`FRAME_MAGIC`].
    #[error("bad frame magic 0x{found:02x} (expected 0x{FRAME_MAGIC:02x})")]
    BadMagic {
        /// The byte found.
        found: u8,
    },
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("frame payload too large: {len} bytes")]
    TooLarge {
        /// Payload length.
        len: usize,
    },
    /// The payload does not match its checksum.
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the payload.
        computed: u32,
    },
    /// The checksum is right but the version tag is newer than this build.
    #[error(
        "unknown record version tag {tag} (this build knows up to {})",
        JournalRecord::LATEST_VERSION
    )]
    UnknownVersion {
        /// The version tag found.
        tag: u32,
    },
    /// The checksum is right but the payload does not decode.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// The payload decoded but left bytes over.
    #[error("{extra} trailing bytes after the record")]
    TrailingBytes {
        /// Bytes left over.
        extra: usize,
    },
}

/// Encodes `rec` as one frame.
pub fn encode(rec: &JournalRecord) -> Result<Vec<u8>, EncodeError> {
    let payload = bincode::serde::encode_to_vec(rec, config())
        .map_err(|e| EncodeError::Bincode(e.to_string()))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(EncodeError::TooLarge { len: payload.len() });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(FRAME_MAGIC);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Checks one frame without decoding its body: magic, size, checksum and version tag, and
/// returns the record's sequence number (the field right after the version tag). What passes
/// is what [`decode`] would accept unless the checksummed payload itself is malformed, which
/// only a writer bug (not a torn write or bit rot) can produce. Never panics.
pub fn check(bytes: &[u8]) -> Result<u64, DecodeError> {
    let payload = checked_payload(bytes)?;
    let ((tag, seq), _) = bincode::decode_from_slice::<(u32, u64), _>(payload, config())
        .map_err(|e| DecodeError::Malformed(format!("header: {e}")))?;
    if tag > JournalRecord::LATEST_VERSION {
        return Err(DecodeError::UnknownVersion { tag });
    }
    Ok(seq)
}

/// The payload of a frame whose magic, size and checksum are right.
fn checked_payload(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    if bytes.len() <= HEADER_LEN {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    if bytes[0] != FRAME_MAGIC {
        return Err(DecodeError::BadMagic { found: bytes[0] });
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[HEADER_LEN..];
    if payload.len() > MAX_PAYLOAD {
        return Err(DecodeError::TooLarge { len: payload.len() });
    }
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    Ok(payload)
}

/// Decodes one frame. Never panics.
pub fn decode(bytes: &[u8]) -> Result<JournalRecord, DecodeError> {
    let payload = checked_payload(bytes)?;
    // Dispatch on the version tag before decoding the body.
    let (tag, _) = bincode::decode_from_slice::<u32, _>(payload, config())
        .map_err(|e| DecodeError::Malformed(format!("version tag: {e}")))?;
    if tag > JournalRecord::LATEST_VERSION {
        return Err(DecodeError::UnknownVersion { tag });
    }
    let (rec, used): (JournalRecord, usize) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(DecodeError::TrailingBytes {
            extra: payload.len() - used,
        });
    }
    Ok(rec)
}
