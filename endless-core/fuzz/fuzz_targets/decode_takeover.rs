//! Feeds arbitrary bytes to the takeover decoders: they must return, never panic, and a
//! message they accept must be exactly the encoding of what they decoded. The same bytes
//! as a stream, in two chunks, to the deframer: it must never panic, and every message it
//! splits off has the length its head declares.
#![no_main]

use endless_core::takeover::{self, Deframer, MessageLen, Offer, Reply, Upstream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut deframer = Deframer::new();
    let (first, second) = data.split_at(data.len() / 2);
    for chunk in [first, second] {
        deframer.push(chunk);
        while let Some(Ok(message)) = deframer.next_message() {
            assert_eq!(
                takeover::message_len(&message),
                Ok(MessageLen::Exactly(message.len()))
            );
            assert!(message.len() <= takeover::MAX_OFFER_LEN);
        }
    }
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
