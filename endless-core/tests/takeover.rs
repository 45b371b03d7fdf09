//! Property tests of the takeover messages: round trips, and that no input, however
//! malformed, makes the decoders panic or accept a message other than the one encoded.

use endless_core::takeover::{
    Deframer, Entry, FrameError, FrameErrorKind, MAX_BATCH, MAX_BATCH_LEN, MAX_OFFER_LEN,
    MAX_REPLIES, MAX_STATE_LEN, MAX_UNCONSUMED_LEN, MessageLen, OFFER_HEADER_LEN,
    OFFERS_HEADER_LEN, Offer, Outcome, REPLY_LEN, RefuseReason, Reply, StreamKind, Upstream,
    decode_offers, encode_accepts, encode_departure, encode_offers, encode_replies, message_len,
};
use endless_core::{Departure, MAX_NAME_LEN};
use proptest::collection::vec;
use proptest::prelude::*;

fn kind() -> impl Strategy<Value = StreamKind> {
    prop_oneof![Just(StreamKind::Tcp), Just(StreamKind::Unix)]
}

fn offer() -> impl Strategy<Value = Offer> {
    (
        any::<u64>(),
        kind(),
        "\\PC{0,40}",
        vec(any::<u8>(), 0..300),
        vec(any::<u8>(), 0..300),
    )
        .prop_map(|(id, kind, name, state, unconsumed)| Offer {
            id,
            kind,
            name,
            state,
            unconsumed,
        })
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Taken),
        any::<u8>()
            .prop_filter("0 is not a reason", |&c| c != 0)
            .prop_map(|c| Outcome::Refused(Reply::decode(&refusal(c)).unwrap().outcome_reason())),
    ]
}

/// A reply message refusing with reason code `code`.
fn refusal(code: u8) -> Vec<u8> {
    let mut m = Reply {
        id: 1,
        outcome: Outcome::Refused(RefuseReason::Malformed),
    }
    .encode();
    m[REPLY_LEN - 1] = code;
    m
}

trait ReasonOf {
    fn outcome_reason(&self) -> RefuseReason;
}

impl ReasonOf for Reply {
    fn outcome_reason(&self) -> RefuseReason {
        match self.outcome {
            Outcome::Refused(reason) => reason,
            Outcome::Taken => panic!("not a refusal"),
        }
    }
}

fn entry(offer: &Offer) -> Entry<'_> {
    Entry {
        kind: offer.kind,
        name: &offer.name,
        state: &offer.state,
        unconsumed: &offer.unconsumed,
    }
}

/// Offers numbered from the first one's id, as a batch numbers them.
fn batch() -> impl Strategy<Value = Vec<Offer>> {
    vec(offer(), 1..6).prop_map(|mut offers| {
        let first = offers[0].id;
        for (i, o) in offers.iter_mut().enumerate() {
            o.id = first.wrapping_add(i as u64);
        }
        offers
    })
}

fn batch_message(offers: &[Offer]) -> Vec<u8> {
    let entries: Vec<Entry<'_>> = offers.iter().map(entry).collect();
    encode_offers(offers[0].id, &entries).unwrap()
}

fn replies() -> impl Strategy<Value = Vec<Reply>> {
    vec(
        (any::<u64>(), outcome()).prop_map(|(id, outcome)| Reply { id, outcome }),
        1..20,
    )
}

/// Any message of the protocol, encoded: an offer, offers, a reply, replies, an accepts or
/// a departure.
fn message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        offer().prop_map(|o| o.encode().unwrap()),
        batch().prop_map(|b| batch_message(&b)),
        replies().prop_map(|r| encode_replies(&r).unwrap()),
        any::<u16>().prop_map(encode_accepts),
        (any::<u64>(), outcome()).prop_map(|(id, outcome)| Reply { id, outcome }.encode()),
        prop_oneof![
            Just(Departure::HandedOver),
            Just(Departure::Stopping),
            Just(Departure::Restarting)
        ]
        .prop_map(encode_departure),
    ]
}

proptest! {
    /// Messages sent back to back on a stream come out of the deframer one by one, in
    /// order and whole, whatever the chunks the stream is read in.
    #[test]
    fn a_stream_of_messages_splits_back_into_them(
        messages in vec(message(), 0..8),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let stream = messages.concat();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut deframer = Deframer::new();
        let (mut at, mut out) = (0, Vec::new());
        for cut in cuts {
            deframer.push(&stream[at..cut]);
            at = cut;
            while let Some(message) = deframer.next_message() {
                out.push(message.unwrap());
            }
        }
        prop_assert_eq!(out, messages);
        prop_assert!(deframer.is_empty());
    }

    /// Every proper prefix of a message asks for more, never past the message's end; the
    /// fixed part tells its exact length. A reader that reads what it is asked for never
    /// reads into the next message.
    #[test]
    fn the_length_of_a_message_is_known_from_its_head(message in message(), next in message()) {
        let mut stream = message.clone();
        stream.extend_from_slice(&next);
        for n in 0..=message.len() {
            match message_len(&stream[..n]).unwrap() {
                MessageLen::AtLeast(more) => {
                    prop_assert!(more > n && more <= message.len(), "{more} at {n}");
                }
                MessageLen::Exactly(len) => prop_assert_eq!(len, message.len()),
            }
        }
        prop_assert_eq!(message_len(&stream), Ok(MessageLen::Exactly(message.len())));
    }

    /// A batch of offers comes back as the offers it numbers; its replies too.
    #[test]
    fn batches_round_trip(offers in batch(), replies in replies()) {
        let message = batch_message(&offers);
        let decoded: Vec<Offer> = decode_offers(&message).unwrap().into_iter().map(Result::unwrap).collect();
        prop_assert_eq!(decoded, offers);
        prop_assert_eq!(Upstream::decode(&encode_replies(&replies).unwrap()), Ok(Upstream::Replies(replies)));
    }

    /// A batch whose entry `bad` is malformed in a way that keeps its length costs that
    /// entry only; one cut short costs every entry from where its lengths stop making
    /// sense, each refusable by its id.
    #[test]
    fn a_bad_entry_costs_itself(offers in batch(), bad in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>()) {
        let bad = bad.index(offers.len());
        let mut message = batch_message(&offers);
        let at = OFFERS_HEADER_LEN
            + offers[..bad].iter().map(|o| entry(o).encoded_len().unwrap()).sum::<usize>();
        message[at] = 9; // an unknown kind
        let decoded = decode_offers(&message).unwrap();
        for (i, (got, offer)) in decoded.iter().zip(&offers).enumerate() {
            if i == bad {
                prop_assert_eq!(got.as_ref().unwrap_err().id(), Some(offer.id));
            } else {
                prop_assert_eq!(got.as_ref().unwrap(), offer);
            }
        }
        // Cut short: every entry has a result, and every error names its entry's id.
        let message = batch_message(&offers);
        let short = &message[..OFFERS_HEADER_LEN + cut.index(message.len() - OFFERS_HEADER_LEN)];
        let decoded = decode_offers(short).unwrap();
        prop_assert_eq!(decoded.len(), offers.len());
        for (got, offer) in decoded.iter().zip(&offers) {
            if let Err(e) = got {
                prop_assert_eq!(e.id(), Some(offer.id));
            }
        }
        prop_assert!(decoded.iter().any(Result::is_err), "a message cut short is not whole");
    }

    /// Garbage on a stream ends it with an error, never a panic or a length over the limit;
    /// the error stays.
    #[test]
    fn a_stream_of_garbage_fails_or_asks_for_a_bounded_length(bytes in vec(any::<u8>(), 0..200)) {
        match message_len(&bytes) {
            Ok(MessageLen::AtLeast(n) | MessageLen::Exactly(n)) => prop_assert!(n <= MAX_BATCH_LEN),
            Err(e) => {
                let mut deframer = Deframer::new();
                deframer.push(&bytes);
                prop_assert_eq!(deframer.next_message(), Some(Err(e.clone())));
                deframer.push(b"EDLS");
                prop_assert_eq!(deframer.next_message(), Some(Err(e)));
                prop_assert!(!deframer.is_empty());
            }
        }
    }

    #[test]
    fn offers_round_trip(offer in offer()) {
        let bytes = offer.encode().unwrap();
        prop_assert_eq!(Offer::decode(&bytes), Ok(offer));
    }

    #[test]
    fn replies_round_trip(id in any::<u64>(), outcome in outcome()) {
        let reply = Reply { id, outcome };
        prop_assert_eq!(Reply::decode(&reply.encode()), Ok(reply));
    }

    /// A message cut short or with bytes added is refused; once the common part is there,
    /// the error names the offer, so that it can be refused by number.
    #[test]
    fn offers_of_the_wrong_length_are_refused_by_id(offer in offer(), cut in any::<prop::sample::Index>(), extra in vec(any::<u8>(), 1..10)) {
        let bytes = offer.encode().unwrap();
        let n = cut.index(bytes.len());
        let error = Offer::decode(&bytes[..n]).unwrap_err();
        if n >= 14 {
            prop_assert_eq!(error.id(), Some(offer.id));
        } else {
            prop_assert_eq!(error.id(), None);
        }
        let mut longer = bytes;
        longer.extend_from_slice(&extra);
        let is_mismatch = matches!(
            Offer::decode(&longer),
            Err(FrameError::Malformed { id: Some(id), kind: FrameErrorKind::LengthMismatch { .. } }) if id == offer.id
        );
        prop_assert!(is_mismatch);
    }

    #[test]
    fn garbage_never_panics(bytes in vec(any::<u8>(), 0..200)) {
        if let Ok(offer) = Offer::decode(&bytes) {
            // Accepted: it is exactly the encoding of what it decoded to.
            prop_assert_eq!(offer.encode().unwrap(), bytes.clone());
        }
        if let Ok(reply) = Reply::decode(&bytes) {
            prop_assert_eq!(reply.encode(), bytes);
        }
    }

    /// Garbage after a valid common part exercises the field checks, not only the magic.
    #[test]
    fn garbage_after_a_valid_header_never_panics(id in any::<u64>(), rest in vec(any::<u8>(), 0..100)) {
        let mut bytes = b"EDLS\x01\x01".to_vec();
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(&rest);
        match Offer::decode(&bytes) {
            Ok(offer) => prop_assert_eq!(offer.encode().unwrap(), bytes),
            Err(e) => {
                prop_assert_eq!(e.id(), Some(id));
                let _ = e.to_string();
            }
        }
    }
}

/// What decides a length is checked as soon as it arrives; the rest waits for decoding.
#[test]
fn message_len_rejects_a_bad_head_early() {
    let bad = |bytes: &[u8], kind: FrameErrorKind, id: Option<u64>| {
        assert_eq!(
            message_len(bytes),
            Err(FrameError::Malformed { id, kind }),
            "{bytes:?}"
        );
    };
    bad(b"X", FrameErrorKind::BadMagic, None);
    bad(b"EDLX", FrameErrorKind::BadMagic, None);
    bad(b"EDLS\x02", FrameErrorKind::UnsupportedVersion(2), None);
    bad(b"EDLS\x01\x09", FrameErrorKind::UnexpectedType(9), None);
    assert_eq!(message_len(b"EDL"), Ok(MessageLen::AtLeast(14)));
    assert_eq!(message_len(b"EDLS\x01\x01"), Ok(MessageLen::AtLeast(14)));
    let mut head = b"EDLS\x01\x01".to_vec();
    head.extend_from_slice(&7u64.to_be_bytes());
    assert_eq!(
        message_len(&head),
        Ok(MessageLen::AtLeast(OFFER_HEADER_LEN))
    );
    // An unknown socket kind does not change the length: decoding refuses it by number.
    let fields = |name: u16, state: u32, unconsumed: u32| {
        let mut h = head.clone();
        h.push(9);
        h.extend_from_slice(&name.to_be_bytes());
        h.extend_from_slice(&state.to_be_bytes());
        h.extend_from_slice(&unconsumed.to_be_bytes());
        h
    };
    assert_eq!(
        message_len(&fields(3, 4, 5)),
        Ok(MessageLen::Exactly(OFFER_HEADER_LEN + 12))
    );
    let too_long = u16::try_from(MAX_NAME_LEN + 1).unwrap();
    bad(
        &fields(too_long, 0, 0),
        FrameErrorKind::NameTooLong(MAX_NAME_LEN + 1),
        Some(7),
    );
    let too_large = u32::try_from(MAX_STATE_LEN + 1).unwrap();
    bad(
        &fields(0, too_large, 0),
        FrameErrorKind::StateTooLarge(MAX_STATE_LEN + 1),
        Some(7),
    );
    let too_large = u32::try_from(MAX_UNCONSUMED_LEN + 1).unwrap();
    bad(
        &fields(0, 0, too_large),
        FrameErrorKind::UnconsumedTooLarge(MAX_UNCONSUMED_LEN + 1),
        Some(7),
    );
    // The largest offer is within the limit a reader sizes its buffer by.
    let max_name = u16::try_from(MAX_NAME_LEN).unwrap();
    let max_state = u32::try_from(MAX_STATE_LEN).unwrap();
    let max_unconsumed = u32::try_from(MAX_UNCONSUMED_LEN).unwrap();
    assert_eq!(
        message_len(&fields(max_name, max_state, max_unconsumed)),
        Ok(MessageLen::Exactly(MAX_OFFER_LEN))
    );
}

/// The end of a stream in the middle of a message leaves the deframer non-empty: the reader
/// can tell a message cut short from a clean end.
#[test]
fn a_message_cut_short_is_seen_at_the_end() {
    let reply = Reply {
        id: 1,
        outcome: Outcome::Taken,
    }
    .encode();
    let mut deframer = Deframer::new();
    assert!(deframer.is_empty());
    deframer.push(&reply[..REPLY_LEN - 1]);
    assert_eq!(deframer.next_message(), None);
    assert!(!deframer.is_empty());
}

#[test]
fn limits_are_enforced_both_ways() {
    let base = Offer {
        id: 1,
        kind: StreamKind::Tcp,
        name: "n".into(),
        state: vec![],
        unconsumed: vec![],
    };
    let too_long_name = Offer {
        name: "x".repeat(MAX_NAME_LEN + 1),
        ..base.clone()
    };
    assert_eq!(
        too_long_name.encode(),
        Err(FrameError::NameTooLong {
            len: MAX_NAME_LEN + 1
        })
    );
    let big_state = Offer {
        state: vec![0; MAX_STATE_LEN + 1],
        ..base.clone()
    };
    assert!(matches!(
        big_state.encode(),
        Err(FrameError::StateTooLarge { .. })
    ));
    let big_unconsumed = Offer {
        unconsumed: vec![0; MAX_UNCONSUMED_LEN + 1],
        ..base.clone()
    };
    assert!(matches!(
        big_unconsumed.encode(),
        Err(FrameError::UnconsumedTooLarge { .. })
    ));
    // At the limits, it round-trips.
    let full = Offer {
        name: "y".repeat(MAX_NAME_LEN),
        state: vec![1; MAX_STATE_LEN],
        unconsumed: vec![2; MAX_UNCONSUMED_LEN],
        ..base
    };
    let bytes = full.encode().unwrap();
    assert_eq!(bytes.len(), MAX_OFFER_LEN);
    assert_eq!(Offer::decode(&bytes), Ok(full));

    // A declared state length over the limit is refused before anything is allocated.
    let mut bytes = base.encode().unwrap();
    bytes[17..21].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        Offer::decode(&bytes),
        Err(FrameError::Malformed {
            id: Some(1),
            kind: FrameErrorKind::StateTooLarge(u32::MAX as usize)
        })
    );
}

#[test]
fn each_malformation_has_its_error() {
    let offer = Offer {
        id: 9,
        kind: StreamKind::Unix,
        name: "chat".into(),
        state: b"s".to_vec(),
        unconsumed: b"u".to_vec(),
    };
    let good = offer.encode().unwrap();
    let with = |i: usize, b: u8| {
        let mut m = good.clone();
        m[i] = b;
        Offer::decode(&m)
    };
    let kind_of = |r: Result<Offer, FrameError>| match r {
        Err(FrameError::Malformed { kind, .. }) => kind,
        other => panic!("{other:?}"),
    };
    assert_eq!(kind_of(with(0, b'X')), FrameErrorKind::BadMagic);
    assert_eq!(kind_of(with(4, 2)), FrameErrorKind::UnsupportedVersion(2));
    assert_eq!(kind_of(with(5, 2)), FrameErrorKind::UnexpectedType(2));
    assert_eq!(kind_of(with(14, 7)), FrameErrorKind::UnknownKind(7));
    assert_eq!(
        kind_of(with(OFFER_HEADER_LEN, 0xff)),
        FrameErrorKind::NameNotUtf8
    );
    // A reply is not an offer, and the other way round.
    let reply = Reply {
        id: 9,
        outcome: Outcome::Taken,
    }
    .encode();
    assert_eq!(
        kind_of(Offer::decode(&reply)),
        FrameErrorKind::UnexpectedType(2)
    );
    assert!(matches!(
        Reply::decode(&good),
        Err(FrameError::Malformed {
            kind: FrameErrorKind::UnexpectedType(1),
            ..
        })
    ));
    let mut bad_outcome = reply.clone();
    bad_outcome[REPLY_LEN - 2] = 5;
    assert!(matches!(
        Reply::decode(&bad_outcome),
        Err(FrameError::Malformed {
            id: Some(9),
            kind: FrameErrorKind::UnknownOutcome(5)
        })
    ));
    // One encoding per reply: "taken" carries no reason (found by the fuzzer).
    let mut taken_with_reason = reply;
    taken_with_reason[REPLY_LEN - 1] = 3;
    assert!(matches!(
        Reply::decode(&taken_with_reason),
        Err(FrameError::Malformed {
            id: Some(9),
            kind: FrameErrorKind::ReasonWhenTaken(3)
        })
    ));
    // Code 5, which versions before it read as `Other(5)`.
    assert_eq!(
        Reply::decode(&refusal(5)).unwrap().outcome,
        Outcome::Refused(RefuseReason::Drained)
    );
    // Reasons a later version may add are carried, not refused.
    assert_eq!(
        Reply::decode(&refusal(200)).unwrap().outcome,
        Outcome::Refused(RefuseReason::Other(200))
    );
}

/// The limits are part of the wire format: generations of different versions must agree on
/// them, so a change has to be deliberate.
#[test]
fn the_limits_are_those_documented() {
    assert_eq!(MAX_STATE_LEN, 65_536);
    assert_eq!(MAX_UNCONSUMED_LEN, 65_536);
}

#[test]
fn display_messages() {
    assert_eq!(StreamKind::Tcp.to_string(), "TCP stream");
    assert_eq!(StreamKind::Unix.to_string(), "Unix stream");
    for (reason, expected) in [
        (RefuseReason::NoReceiver, "no receiver of that name"),
        (RefuseReason::ReceiverClosed, "the receiver was dropped"),
        (RefuseReason::Malformed, "the offer was malformed"),
        (
            RefuseReason::BadSocket,
            "the socket was missing or of another kind",
        ),
        (RefuseReason::Drained, "the receiving process has drained"),
        (RefuseReason::Other(200), "reason 200"),
    ] {
        assert_eq!(reason.to_string(), expected);
    }
    for (error, expected) in [
        (
            FrameError::NameTooLong { len: 2000 },
            "receiver name of 2000 bytes (at most 1024)",
        ),
        (
            FrameError::StateTooLarge { len: 70_000 },
            "connection state of 70000 bytes (at most 65536)",
        ),
        (
            FrameError::UnconsumedTooLarge { len: 70_000 },
            "70000 unconsumed bytes (at most 65536)",
        ),
        (
            FrameError::Malformed {
                id: Some(7),
                kind: FrameErrorKind::Truncated,
            },
            "malformed takeover message 7: truncated",
        ),
        (
            FrameError::Malformed {
                id: None,
                kind: FrameErrorKind::BadMagic,
            },
            "malformed takeover message: bad magic",
        ),
    ] {
        assert_eq!(error.to_string(), expected);
    }
    for (kind, expected) in [
        (FrameErrorKind::Truncated, "truncated"),
        (FrameErrorKind::BadMagic, "bad magic"),
        (
            FrameErrorKind::UnsupportedVersion(2),
            "unsupported version 2",
        ),
        (
            FrameErrorKind::UnexpectedType(3),
            "unexpected message type 3",
        ),
        (FrameErrorKind::UnknownKind(4), "unknown socket kind 4"),
        (FrameErrorKind::UnknownOutcome(5), "unknown outcome 5"),
        (
            FrameErrorKind::ReasonWhenTaken(6),
            "taken, with refusal reason 6",
        ),
        (
            FrameErrorKind::UnknownDeparture(9),
            "unknown departure reason 9",
        ),
        (FrameErrorKind::UnexpectedId(7), "id 7 where it is always 0"),
        (
            FrameErrorKind::NameTooLong(2000),
            "name of 2000 bytes (at most 1024)",
        ),
        (FrameErrorKind::NameNotUtf8, "name is not UTF-8"),
        (
            FrameErrorKind::StateTooLarge(70_000),
            "state of 70000 bytes (at most 65536)",
        ),
        (
            FrameErrorKind::UnconsumedTooLarge(70_000),
            "70000 unconsumed bytes (at most 65536)",
        ),
        (
            FrameErrorKind::LengthMismatch {
                declared: 40,
                actual: 30,
            },
            "30 bytes where the fields declare 40",
        ),
    ] {
        assert_eq!(kind.to_string(), expected);
    }
}

#[test]
fn departures_round_trip_and_malformed_ones_are_typed_errors() {
    use endless_core::Departure;
    use endless_core::takeover::{DEPARTURE_LEN, Upstream, encode_departure};

    for how in [
        Departure::HandedOver,
        Departure::Stopping,
        Departure::Restarting,
    ] {
        let message = encode_departure(how);
        assert_eq!(message.len(), DEPARTURE_LEN);
        assert_eq!(Upstream::decode(&message), Ok(Upstream::Departure(how)));
    }
    let reply = Reply {
        id: 3,
        outcome: Outcome::Taken,
    };
    assert_eq!(
        Upstream::decode(&reply.encode()),
        Ok(Upstream::Reply(reply))
    );

    let kind = |message: &[u8]| match Upstream::decode(message) {
        Err(FrameError::Malformed { kind, .. }) => kind,
        other => panic!("{other:?}"),
    };
    let mut unknown = encode_departure(Departure::Stopping);
    unknown[DEPARTURE_LEN - 1] = 9;
    assert_eq!(kind(&unknown), FrameErrorKind::UnknownDeparture(9));
    let mut with_id = encode_departure(Departure::Stopping);
    with_id[13] = 7;
    assert_eq!(kind(&with_id), FrameErrorKind::UnexpectedId(7));
    let mut long = encode_departure(Departure::HandedOver);
    long.push(0);
    assert_eq!(
        kind(&long),
        FrameErrorKind::LengthMismatch {
            declared: DEPARTURE_LEN,
            actual: DEPARTURE_LEN + 1
        }
    );
    let short = &encode_departure(Departure::HandedOver)[..DEPARTURE_LEN - 1];
    assert!(matches!(
        kind(short),
        FrameErrorKind::LengthMismatch { .. } | FrameErrorKind::Truncated
    ));
    // An offer is no message of the new generation's.
    assert!(Upstream::decode(b"EDLS\x01\x01").is_err());
}

#[test]
fn batch_limits_are_enforced_both_ways() {
    let offer = Offer {
        id: 1,
        kind: StreamKind::Tcp,
        name: "x".into(),
        state: vec![],
        unconsumed: vec![],
    };
    let many = vec![entry(&offer); MAX_BATCH + 1];
    assert!(matches!(
        encode_offers(1, &many),
        Err(FrameError::BatchTooLarge { count, .. }) if count == MAX_BATCH + 1
    ));
    assert!(encode_offers(1, &many[..MAX_BATCH]).is_ok());
    assert!(encode_offers(1, &[]).is_err());
    // Too many bytes: entries at their limits.
    let big = Offer {
        state: vec![0; MAX_STATE_LEN],
        unconsumed: vec![0; MAX_UNCONSUMED_LEN],
        ..offer.clone()
    };
    let fits = MAX_BATCH_LEN / entry(&big).encoded_len().unwrap();
    assert!(fits >= 1 && MAX_OFFER_LEN < MAX_BATCH_LEN);
    assert!(encode_offers(1, &vec![entry(&big); fits]).is_ok());
    assert!(matches!(
        encode_offers(1, &vec![entry(&big); fits + 1]),
        Err(FrameError::BatchTooLarge { .. })
    ));
    let reply = Reply {
        id: 1,
        outcome: Outcome::Taken,
    };
    assert!(encode_replies(&vec![reply; MAX_REPLIES]).is_ok());
    assert!(encode_replies(&vec![reply; MAX_REPLIES + 1]).is_err());
    assert!(encode_replies(&[]).is_err());
    // The reader refuses counts and lengths over the limits from the head alone.
    let mut head = encode_offers(1, &[entry(&offer)]).unwrap();
    head[14..16].copy_from_slice(&u16::try_from(MAX_BATCH + 1).unwrap().to_be_bytes());
    assert!(matches!(
        message_len(&head[..OFFERS_HEADER_LEN]),
        Err(FrameError::Malformed {
            kind: FrameErrorKind::BadCount(_),
            ..
        })
    ));
    let mut head = encode_offers(1, &[entry(&offer)]).unwrap();
    head[16..20].copy_from_slice(&u32::try_from(MAX_BATCH_LEN + 1).unwrap().to_be_bytes());
    assert!(matches!(
        message_len(&head[..OFFERS_HEADER_LEN]),
        Err(FrameError::Malformed {
            kind: FrameErrorKind::BadTotalLength(_),
            ..
        })
    ));
    let mut replies = encode_replies(&[reply]).unwrap();
    replies[14..16].copy_from_slice(&0u16.to_be_bytes());
    assert!(message_len(&replies).is_err());
    // An accepts message with an id, or of another length, is malformed.
    let mut accepts = encode_accepts(253);
    assert_eq!(Upstream::decode(&accepts), Ok(Upstream::Accepts(253)));
    accepts[13] = 1;
    assert!(Upstream::decode(&accepts).is_err());
}
