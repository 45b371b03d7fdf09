//! Feeds arbitrary bytes to the application state decoders: they must return, never panic,
//! and a blob they accept must be exactly the encoding of what they decoded.
#![no_main]

use endless_core::state::{self, HEADER_LEN, Header};
use libfuzzer_sys::fuzz_target;

/// Small, so that the length checks are reached with short inputs.
const MAX_LEN: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = Header::decode(data, MAX_LEN) {
        assert_eq!(header.encode(), data[..HEADER_LEN]);
        assert!(header.len <= MAX_LEN as u64);
        match state::decode(data, header.version, MAX_LEN) {
            Ok(payload) => {
                assert_eq!(
                    state::encode(header.version, payload, MAX_LEN).as_deref(),
                    Ok(data)
                );
                // Any other version is refused, and only for that reason.
                let other = header.version.wrapping_add(1);
                assert_eq!(
                    state::decode(data, other, MAX_LEN),
                    Err(state::BlobError::VersionMismatch {
                        expected: other,
                        found: header.version
                    })
                );
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    if let Err(e) = state::decode(data, 1, MAX_LEN) {
        let _ = e.to_string();
    }
});
