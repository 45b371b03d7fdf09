//! Feeds arbitrary bytes to the takeover decoders: they must return, never panic, and a
//! message they accept must be exactly the encoding of what they decoded. The same bytes
//! as a stream, in two chunks, to the deframer: it must never panic, and every message it
//! splits off has the length its head declares. Messages of offers decode to one result
//! per offer they number, never more than a batch holds.
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
            assert!(message.len() <= takeover::MAX_BATCH_LEN);
        }
    }
    match Offer::decode(data) {
        Ok(offer) => assert_eq!(offer.encode().as_deref(), Ok(data)),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    // Whatever a message of offers holds, one result per offer it numbers.
    if let Ok(offers) = takeover::decode_offers(data) {
        assert!(!offers.is_empty() && offers.len() <= takeover::MAX_BATCH);
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
        Ok(Upstream::Replies(replies)) => {
            assert_eq!(takeover::encode_replies(&replies).as_deref(), Ok(data));
        }
        Ok(Upstream::Accepts(most)) => assert_eq!(takeover::encode_accepts(most), data),
        Ok(other) => panic!("unknown message {other:?}"),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
