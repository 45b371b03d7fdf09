//! Application state: the one blob a generation hands to its successor, beside its sockets.
//!
//! Connection takeover ([`crate::takeover`]) moves state per connection. What belongs to the
//! whole process (a cache, a rate limiter's counters, a session table) travels as one
//! *application blob*: the predecessor produces it when it spawns its successor, the
//! successor reads it before it reports ready. The application numbers the layout of its
//! blob with a version of its own, so that a successor that expects another layout gets a
//! clear [`BlobError::VersionMismatch`] instead of misreading bytes.
//!
//! This module is the wire format only: [`encode`] / [`decode`], or [`Header`] for a writer
//! that streams the payload after the header and a reader that checks the header before it
//! reads (and allocates for) the payload. Both sides enforce a maximum length
//! ([`DEFAULT_MAX_LEN`] unless configured), so a hostile or broken predecessor cannot make
//! its successor allocate without bound.
//!
//! # Format, version 1
//!
//! A header of [`HEADER_LEN`] bytes, then the payload. All integers big-endian.
//!
//! | field | bytes | |
//! |---|---|---|
//! | magic `EDST` | 4 | [`MAGIC`] |
//! | format version `1` | 1 | [`FORMAT_VERSION`]: the layout of this header |
//! | application version | 4 | the application's own number for its payload's layout |
//! | length | 8 | of the payload, in bytes |
//! | checksum | 4 | CRC-32 (IEEE) of the 17 bytes above, then of the payload |
//! | payload | length | |
//!
//! Decoding checks, in order: the magic, the format version, the length against the
//! maximum (before anything is allocated), the length against the bytes present, the
//! checksum (so a flipped bit anywhere, the application version included, reads as
//! corruption), and last the application version. Every malformed input is a typed
//! [`BlobError`], never a panic.
//!
//! # Examples
//!
//! ```
//! use endless_core::state::{self, BlobError, DEFAULT_MAX_LEN};
//!
//! let blob = state::encode(3, b"hits=41", DEFAULT_MAX_LEN)?;
//! assert_eq!(state::decode(&blob, 3, DEFAULT_MAX_LEN)?, b"hits=41");
//!
//! // A successor that expects another layout is told so.
//! assert_eq!(
//!     state::decode(&blob, 4, DEFAULT_MAX_LEN),
//!     Err(BlobError::VersionMismatch { expected: 4, found: 3 })
//! );
//! // A truncated blob is an error, not a shorter payload.
//! assert!(matches!(
//!     state::decode(&blob[..blob.len() - 1], 3, DEFAULT_MAX_LEN),
//!     Err(BlobError::Truncated { .. })
//! ));
//! # Ok::<(), BlobError>(())
//! ```

use std::fmt;

/// The first bytes of a blob.
pub const MAGIC: [u8; 4] = *b"EDST";

/// The version of the header layout that this module writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// The length of the header: magic, format version, application version, length,
/// checksum.
pub const HEADER_LEN: usize = 4 + 1 + 4 + 8 + 4;

/// The bytes of the header that the checksum covers (all but the checksum itself).
const CHECKED_HEADER_LEN: usize = HEADER_LEN - 4;

/// The default largest payload, 64 MiB: far above a session table or a rate limiter's
/// counters, and a bound on what a successor allocates. Adapters make it configurable;
/// both sides enforce their own.
pub const DEFAULT_MAX_LEN: usize = 64 * 1024 * 1024;

/// The header of a blob: what a reader learns before it reads the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// The application's version of the payload's layout.
    pub version: u32,
    /// The payload's length, in bytes.
    pub len: u64,
    /// CRC-32 of the header's first 17 bytes, then of the payload.
    pub checksum: u32,
}

impl Header {
    /// The header of `payload` under the application version `version`, or
    /// [`BlobError::TooLarge`] when the payload is longer than `max_len`.
    pub fn new(version: u32, payload: &[u8], max_len: usize) -> Result<Self, BlobError> {
        let len = payload.len() as u64;
        if payload.len() > max_len {
            return Err(BlobError::TooLarge { len, max: max_len });
        }
        let mut header = Self {
            version,
            len,
            checksum: 0,
        };
        let mut crc = Crc32::new();
        crc.update(&header.encode()[..CHECKED_HEADER_LEN]);
        crc.update(payload);
        header.checksum = crc.finish();
        Ok(header)
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = FORMAT_VERSION;
        out[5..9].copy_from_slice(&self.version.to_be_bytes());
        out[9..17].copy_from_slice(&self.len.to_be_bytes());
        out[17..].copy_from_slice(&self.checksum.to_be_bytes());
        out
    }

    /// Reads the header at the start of `bytes` (which may hold the payload after it, or
    /// not yet), checking the magic, the format version and the length against `max_len`.
    /// The payload is checked by [`Header::check`].
    pub fn decode(bytes: &[u8], max_len: usize) -> Result<Self, BlobError> {
        let magic_len = bytes.len().min(MAGIC.len());
        if bytes[..magic_len] != MAGIC[..magic_len] {
            return Err(BlobError::BadMagic);
        }
        if bytes.len() < HEADER_LEN {
            return Err(BlobError::Truncated {
                expected: HEADER_LEN as u64,
                actual: bytes.len() as u64,
            });
        }
        if bytes[4] != FORMAT_VERSION {
            return Err(BlobError::UnsupportedFormat(bytes[4]));
        }
        let u32_at =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let mut len = [0; 8];
        len.copy_from_slice(&bytes[9..17]);
        let header = Self {
            version: u32_at(5),
            len: u64::from_be_bytes(len),
            checksum: u32_at(17),
        };
        if header.len > max_len as u64 {
            return Err(BlobError::TooLarge {
                len: header.len,
                max: max_len,
            });
        }
        Ok(header)
    }

    /// The length of the whole blob, header and payload.
    pub fn total_len(&self) -> u64 {
        self.len.saturating_add(HEADER_LEN as u64)
    }

    /// Checks `payload` against this header (its length, then the checksum), then the
    /// application version against `expected_version`.
    pub fn check(&self, payload: &[u8], expected_version: u32) -> Result<(), BlobError> {
        let actual = payload.len() as u64;
        if actual < self.len {
            return Err(BlobError::Truncated {
                expected: self.total_len(),
                actual: actual.saturating_add(HEADER_LEN as u64),
            });
        }
        if actual > self.len {
            return Err(BlobError::TrailingBytes {
                expected: self.total_len(),
                actual: actual.saturating_add(HEADER_LEN as u64),
            });
        }
        let mut crc = Crc32::new();
        crc.update(&self.encode()[..CHECKED_HEADER_LEN]);
        crc.update(payload);
        let actual = crc.finish();
        if actual != self.checksum {
            return Err(BlobError::ChecksumMismatch {
                expected: self.checksum,
                actual,
            });
        }
        if self.version != expected_version {
            return Err(BlobError::VersionMismatch {
                expected: expected_version,
                found: self.version,
            });
        }
        Ok(())
    }
}

/// The blob of `payload` under the application version `version`: header, then payload.
/// [`BlobError::TooLarge`] when the payload is longer than `max_len`.
pub fn encode(version: u32, payload: &[u8], max_len: usize) -> Result<Vec<u8>, BlobError> {
    let header = Header::new(version, payload, max_len)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    Ok(out)
}

/// The payload of the whole blob `bytes`, checked (see the [module docs](self) for the
/// order of the checks): its application version must be `expected_version`, its length at
/// most `max_len`.
pub fn decode(bytes: &[u8], expected_version: u32, max_len: usize) -> Result<&[u8], BlobError> {
    let header = Header::decode(bytes, max_len)?;
    let payload = &bytes[HEADER_LEN..];
    header.check(payload, expected_version)?;
    Ok(payload)
}

/// Why a blob cannot be written or read.
///
/// [`TooLarge`](Self::TooLarge) and [`VersionMismatch`](Self::VersionMismatch) are
/// disagreements between the generations' configurations; the others mean the bytes are
/// not a blob written by this format (truncated, corrupt, or something else entirely).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlobError {
    /// The payload is longer than the maximum (on writing, or as declared on reading).
    TooLarge {
        /// The payload's length, in bytes.
        len: u64,
        /// The maximum, in bytes.
        max: usize,
    },
    /// The bytes do not start with [`MAGIC`].
    BadMagic,
    /// The header is of a format version this module does not read.
    UnsupportedFormat(u8),
    /// Fewer bytes than the header, or than the header declares.
    Truncated {
        /// The bytes needed (header and payload).
        expected: u64,
        /// The bytes present.
        actual: u64,
    },
    /// More bytes than the header declares.
    TrailingBytes {
        /// The bytes declared (header and payload).
        expected: u64,
        /// The bytes present.
        actual: u64,
    },
    /// The checksum does not match: the blob was corrupted.
    ChecksumMismatch {
        /// The checksum in the header.
        expected: u32,
        /// The checksum of the bytes present.
        actual: u32,
    },
    /// The payload is of another application version than the reader expects.
    VersionMismatch {
        /// The version the reader expects.
        expected: u32,
        /// The version the writer wrote.
        found: u32,
    },
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max } => {
                write!(f, "application state of {len} bytes (at most {max})")
            }
            Self::BadMagic => f.write_str("not an application state blob (bad magic)"),
            Self::UnsupportedFormat(v) => {
                write!(f, "application state in unsupported format version {v}")
            }
            Self::Truncated { expected, actual } => write!(
                f,
                "application state truncated: {actual} bytes of {expected}"
            ),
            Self::TrailingBytes { expected, actual } => write!(
                f,
                "application state of {actual} bytes where its header declares {expected}"
            ),
            Self::ChecksumMismatch { expected, actual } => write!(
                f,
                "application state corrupt: checksum {actual:08x}, header says {expected:08x}"
            ),
            Self::VersionMismatch { expected, found } => write!(
                f,
                "application state of version {found}, this process expects version {expected}"
            ),
        }
    }
}

impl std::error::Error for BlobError {}

impl From<BlobError> for std::io::Error {
    fn from(e: BlobError) -> Self {
        Self::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and PNG compute it), byte by byte from a table
/// built at compile time.
struct Crc32(u32);

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Crc32 {
    fn new() -> Self {
        Self(!0)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = CRC_TABLE[((self.0 ^ u32::from(b)) & 0xFF) as usize] ^ (self.0 >> 8);
        }
    }

    fn finish(&self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc(bytes: &[u8]) -> u32 {
        let mut c = Crc32::new();
        c.update(bytes);
        c.finish()
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc(b""), 0);
    }

    #[test]
    fn round_trips() {
        for payload in [&b""[..], b"x", &[0xFF; 1000]] {
            for version in [0, 1, u32::MAX] {
                let blob = encode(version, payload, 1000).unwrap();
                assert_eq!(blob.len(), HEADER_LEN + payload.len());
                assert_eq!(decode(&blob, version, 1000), Ok(payload));
                let header = Header::decode(&blob, 1000).unwrap();
                assert_eq!(header.version, version);
                assert_eq!(header.len, payload.len() as u64);
                assert_eq!(header.total_len(), blob.len() as u64);
                assert_eq!(header.encode(), blob[..HEADER_LEN]);
            }
        }
    }

    #[test]
    fn the_layout_is_fixed() {
        let blob = encode(0x0102_0304, b"ab", 10).unwrap();
        assert_eq!(&blob[..4], b"EDST");
        assert_eq!(blob[4], 1);
        assert_eq!(&blob[5..9], &[1, 2, 3, 4]);
        assert_eq!(&blob[9..17], &[0, 0, 0, 0, 0, 0, 0, 2]);
        let mut covered = blob[..17].to_vec();
        covered.extend_from_slice(b"ab");
        assert_eq!(&blob[17..21], &crc(&covered).to_be_bytes());
        assert_eq!(&blob[21..], b"ab");
    }

    #[test]
    fn too_large_on_both_sides() {
        assert_eq!(
            encode(1, &[0; 11], 10),
            Err(BlobError::TooLarge { len: 11, max: 10 })
        );
        let blob = encode(1, &[0; 11], 11).unwrap();
        assert_eq!(
            decode(&blob, 1, 10),
            Err(BlobError::TooLarge { len: 11, max: 10 })
        );
        // Checked from the header alone, before the payload is there.
        assert_eq!(
            Header::decode(&blob[..HEADER_LEN], 10),
            Err(BlobError::TooLarge { len: 11, max: 10 })
        );
        // A declared length no machine could hold.
        let mut huge = blob[..HEADER_LEN].to_vec();
        huge[9..17].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            Header::decode(&huge, 10),
            Err(BlobError::TooLarge {
                len: u64::MAX,
                max: 10
            })
        );
    }

    #[test]
    fn bad_magic_and_format() {
        assert_eq!(
            decode(b"", 1, 10),
            Err(BlobError::Truncated {
                expected: 21,
                actual: 0
            })
        );
        assert_eq!(
            decode(b"ED", 1, 10),
            Err(BlobError::Truncated {
                expected: 21,
                actual: 2
            })
        );
        assert_eq!(decode(b"EX", 1, 10), Err(BlobError::BadMagic));
        assert_eq!(
            decode(b"GET / HTTP/1.1\r\n\r\n....", 1, 10),
            Err(BlobError::BadMagic)
        );
        let mut blob = encode(1, b"a", 10).unwrap();
        blob[4] = 2;
        assert_eq!(decode(&blob, 1, 10), Err(BlobError::UnsupportedFormat(2)));
    }

    #[test]
    fn truncated_and_trailing() {
        let blob = encode(1, b"abc", 10).unwrap();
        assert_eq!(
            decode(&blob[..HEADER_LEN - 1], 1, 10),
            Err(BlobError::Truncated {
                expected: 21,
                actual: 20
            })
        );
        assert_eq!(
            decode(&blob[..blob.len() - 1], 1, 10),
            Err(BlobError::Truncated {
                expected: 24,
                actual: 23
            })
        );
        let mut longer = blob;
        longer.push(0);
        assert_eq!(
            decode(&longer, 1, 10),
            Err(BlobError::TrailingBytes {
                expected: 24,
                actual: 25
            })
        );
    }

    #[test]
    fn any_flipped_bit_is_corruption_not_a_mismatch() {
        let blob = encode(7, b"state", 10).unwrap();
        // The application version, the payload: the checksum catches both, so that a
        // damaged version never reads as another layout.
        for i in (5..9).chain(HEADER_LEN..blob.len()) {
            let mut bad = blob.clone();
            bad[i] ^= 0x10;
            assert!(
                matches!(decode(&bad, 7, 10), Err(BlobError::ChecksumMismatch { .. })),
                "byte {i}"
            );
        }
        let mut bad = blob;
        bad[20] ^= 1; // the checksum itself
        assert!(matches!(
            decode(&bad, 7, 10),
            Err(BlobError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn version_mismatch_comes_last() {
        let blob = encode(1, b"x", 10).unwrap();
        assert_eq!(
            decode(&blob, 2, 10),
            Err(BlobError::VersionMismatch {
                expected: 2,
                found: 1
            })
        );
        assert_eq!(
            decode(&blob[..HEADER_LEN], 2, 10),
            Err(BlobError::Truncated {
                expected: 22,
                actual: 21
            })
        );
    }

    #[test]
    fn display_messages() {
        let cases = [
            (
                BlobError::TooLarge { len: 11, max: 10 },
                "application state of 11 bytes (at most 10)",
            ),
            (
                BlobError::BadMagic,
                "not an application state blob (bad magic)",
            ),
            (
                BlobError::UnsupportedFormat(9),
                "application state in unsupported format version 9",
            ),
            (
                BlobError::Truncated {
                    expected: 30,
                    actual: 25,
                },
                "application state truncated: 25 bytes of 30",
            ),
            (
                BlobError::TrailingBytes {
                    expected: 30,
                    actual: 31,
                },
                "application state of 31 bytes where its header declares 30",
            ),
            (
                BlobError::ChecksumMismatch {
                    expected: 0xAB,
                    actual: 0xCD,
                },
                "application state corrupt: checksum 000000cd, header says 000000ab",
            ),
            (
                BlobError::VersionMismatch {
                    expected: 2,
                    found: 1,
                },
                "application state of version 1, this process expects version 2",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_string(), expected);
        }
        let io: std::io::Error = BlobError::BadMagic.into();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidData);
    }
}
