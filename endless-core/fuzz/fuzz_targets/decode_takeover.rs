//! Feeds arbitrary bytes to the takeover decoders: they must return, never panic, and a
//! message they accept must be exactly the encoding of what they decoded.
#![no_main]

use endless_core::takeover::{self, Offer, Reply, Upstream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Offer::decode(data) {
        Ok(offer) => assert_eq!(offer.encode().as_deref(), Ok(data)),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match Reply::decode(data) {
        Ok(reply) => assert_eq!(reply.encode(), data),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match Upstream::decode(data) {
        Ok(Upstream::Reply(reply)) => assert_eq!(reply.encode(), data),
        Ok(Upstream::Departure(how)) => assert_eq!(takeover::encode_departure(how), data),
        Ok(other) => panic!("unknown message {other:?}"),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
