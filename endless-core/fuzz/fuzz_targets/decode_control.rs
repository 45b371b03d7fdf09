//! Feeds arbitrary bytes to the restart command's decoders: they must return, never panic,
//! an answer they accept must encode to a line that decodes to the same answer, and a
//! request they accept must be exactly the line of its kind.
#![no_main]

use endless_core::control;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match control::decode_answer(data) {
        Ok((pid, answer)) => {
            let line = control::encode_answer(pid, &answer);
            assert_eq!(control::decode_answer(&line), Ok((pid, answer)));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match control::decode_request(data) {
        Ok(kind) => assert_eq!(kind.line(), data),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
