//! The canonical signed layout: round trips, RFC 8032 vectors, tamper detection and the worked
//! example in docs/protocol.md.

use gridmesh_protocol::example::{
    example_attestation, example_envelope, example_key, example_order, example_reading,
};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::layout::LayoutError;
use gridmesh_protocol::order::{Order, OrderCancel, Side};
use gridmesh_protocol::reading::{Reading, ReadingFlags};
use gridmesh_protocol::signing::{PublicKey, Signable, SignedEnvelope, SigningError, verify_batch};
use gridmesh_protocol::token::{TokenRetire, TokenTransfer};
use gridmesh_protocol::{ParticipantId, Wh, ZoneId};

fn hex(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).unwrap()
}

/// RFC 8032 section 7.1, tests 1 to 3, through the project's own key and envelope types.
#[test]
fn rfc8032_vectors_pass_through_our_wrapper() {
    let vectors = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ];
    for (secret, public, message, signature) in vectors {
        let key = SigningKeyPair::from_seed(hex(secret).try_into().unwrap());
        assert_eq!(key.public_key().0.to_vec(), hex(public));
        let envelope = SignedEnvelope::sign_bytes(hex(message), &key);
        assert_eq!(envelope.signature.to_vec(), hex(signature));
        envelope.verify().unwrap();
    }
}

fn assert_round_trip<T: Signable + PartialEq + std::fmt::Debug>(message: T) {
    let bytes = message.encode();
    assert_eq!(bytes.len(), T::LEN, "{} has a fixed length", T::TAG);
    assert!(bytes.starts_with(T::TAG.as_bytes()));
    assert_eq!(T::decode(&bytes).unwrap(), message);
    let key = SigningKeyPair::generate();
    let envelope = SignedEnvelope::sign(&message, &key);
    let json = serde_json::to_string(&envelope).unwrap();
    let back: SignedEnvelope = serde_json::from_str(&json).unwrap();
    assert_eq!(back.open::<T>().unwrap(), message);
    assert_eq!(back.open_by::<T>(&key.public_key()).unwrap(), message);
}

#[test]
fn every_message_round_trips() {
    assert_round_trip(example_order());
    assert_round_trip(Order {
        side: Side::Sell,
        limit_price: gridmesh_protocol::PricePerMwh(-5_000),
        nonce: u64::MAX,
        ..example_order()
    });
    assert_round_trip(example_reading());
    assert_round_trip(example_envelope());
    assert_round_trip(example_attestation());
    let mut reading = example_reading();
    reading.soc_permille = None;
    reading.flags = ReadingFlags::COUNTER_RESET.with(ReadingFlags::INTERPOLATED);
    reading.firmware = "1234567890abcdef".into();
    assert_round_trip(reading);
    assert_round_trip(OrderCancel {
        participant: ParticipantId::new("trader-7").unwrap(),
        order_nonce: 9,
    });
    assert_round_trip(TokenTransfer {
        from: ParticipantId::new("h001").unwrap(),
        to: ParticipantId::new("h002").unwrap(),
        lot: [0xab; 32],
        amount: Wh(250),
        nonce: 3,
    });
    assert_round_trip(TokenRetire {
        holder: ParticipantId::new("h002").unwrap(),
        lot: [0xcd; 32],
        amount: Wh(100),
        nonce: 4,
    });
}

/// Flipping any single bit of any byte of a signed order or reading, or of its signature, makes
/// verification fail.
#[test]
fn any_flipped_byte_breaks_the_signature() {
    let key = example_key();
    for envelope in [
        SignedEnvelope::sign(&example_order(), &key),
        SignedEnvelope::sign(&example_reading(), &key),
    ] {
        envelope.verify().unwrap();
        for i in 0..envelope.payload.len() {
            for bit in [0x01, 0x80] {
                let mut tampered = envelope.clone();
                tampered.payload[i] ^= bit;
                assert_eq!(
                    tampered.verify(),
                    Err(SigningError::BadSignature),
                    "payload byte {i}"
                );
            }
        }
        for i in 0..64 {
            let mut tampered = envelope.clone();
            tampered.signature[i] ^= 0x01;
            assert!(tampered.verify().is_err(), "signature byte {i}");
        }
        for i in 0..32 {
            let mut tampered = envelope.clone();
            tampered.public_key.0[i] ^= 0x01;
            assert!(tampered.verify().is_err(), "public key byte {i}");
        }
    }
}

#[test]
fn wrong_signer_and_malformed_payloads_are_named() {
    let key = example_key();
    let other = SigningKeyPair::generate();
    let envelope = SignedEnvelope::sign(&example_order(), &key);
    assert!(matches!(
        envelope.open_by::<Order>(&other.public_key()),
        Err(SigningError::KeyMismatch { .. })
    ));
    // An order's bytes are not a reading, even with a valid signature.
    assert!(matches!(
        envelope.open::<Reading>(),
        Err(SigningError::Layout(LayoutError::WrongTag { .. }))
    ));
    // A validly signed order with a zero quantity does not decode.
    let mut bytes = example_order().encode();
    let quantity_at = 17 + 32 + 32 + 32 + 8 + 2 + 1;
    bytes[quantity_at..quantity_at + 8].copy_from_slice(&0i64.to_be_bytes());
    let zero = SignedEnvelope::sign_bytes(bytes, &key);
    let err = zero.open::<Order>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "the signed payload is malformed: field `quantity_wh` of a `gridmesh/order/v2` message is invalid: 0 is not positive"
    );
    // A truncated payload names the expected length.
    let short = SignedEnvelope::sign_bytes(example_order().encode()[..100].to_vec(), &key);
    assert!(matches!(
        short.open::<Order>(),
        Err(SigningError::Layout(LayoutError::WrongLength {
            expected: 148,
            found: 100,
            ..
        }))
    ));
    assert!("not-a-key".parse::<PublicKey>().is_err());
}

/// v2 names the zone; the legacy v1 bytes (no zone) still decode, with `zone: None`, and
/// re-encode to exactly the same bytes, so stored v1 signatures keep verifying.
#[test]
fn v2_names_the_zone_and_v1_still_decodes() {
    let key = example_key();
    let order = example_order();
    assert_eq!(order.zone, Some(ZoneId::new("demo").unwrap()));
    let bytes = order.encode();
    assert_eq!(bytes.len(), 148);
    assert!(bytes.starts_with(b"gridmesh/order/v2demo\0"));
    let reading = example_reading();
    let bytes = reading.encode();
    assert_eq!(bytes.len(), 256);
    assert!(bytes.starts_with(b"gridmesh/reading/v2demo\0"));

    let v1_order = Order {
        zone: None,
        ..example_order()
    };
    let v1 = v1_order.encode();
    assert_eq!(
        (v1.len(), v1_order.layout_tag()),
        (116, "gridmesh/order/v1")
    );
    assert_eq!((Order::V1_TAG, Order::V1_LEN), ("gridmesh/order/v1", 116));
    // The v1 layout is the v2 layout without the zone field.
    let v2 = example_order().encode();
    assert_eq!(&v1[17..], &v2[17 + 32..]);
    let signed = SignedEnvelope::sign_bytes(v1.clone(), &key);
    assert!(signed.is::<Order>());
    assert_eq!(signed.open::<Order>().unwrap(), v1_order);
    assert_eq!(Order::decode(&v1).unwrap().encode(), v1);

    let v1_reading = Reading {
        zone: None,
        ..example_reading()
    };
    let v1 = v1_reading.encode();
    assert_eq!(
        (v1.len(), v1_reading.layout_tag()),
        (224, "gridmesh/reading/v1")
    );
    let v2 = example_reading().encode();
    assert_eq!(&v1[19..], &v2[19 + 32..]);
    let signed = SignedEnvelope::sign_bytes(v1.clone(), &key);
    assert!(signed.is::<Reading>());
    assert_eq!(signed.open::<Reading>().unwrap(), v1_reading);

    // A zone field that is not an identifier, or a v1 body under the v2 tag, is refused.
    let mut bad_zone = example_order().encode();
    bad_zone[17] = b' ';
    assert!(matches!(
        Order::decode(&bad_zone),
        Err(LayoutError::BadField { field: "zone", .. })
    ));
    let mut relabelled = v1.clone();
    relabelled[..19].copy_from_slice(b"gridmesh/reading/v2");
    assert!(matches!(
        Reading::decode(&relabelled),
        Err(LayoutError::WrongLength {
            expected: 256,
            found: 224,
            ..
        })
    ));
    // Other versions are not orders.
    let mut v3 = example_order().encode();
    v3[16] = b'3';
    assert!(!SignedEnvelope::sign_bytes(v3.clone(), &key).is::<Order>());
    assert!(matches!(
        Order::decode(&v3),
        Err(LayoutError::WrongTag { .. })
    ));
    // JSON: the zone is a plain string, and absent for v1.
    let json = serde_json::to_value(example_order()).unwrap();
    assert_eq!(json["zone"], "demo");
    let json = serde_json::to_value(&v1_order).unwrap();
    assert!(json.get("zone").is_none());
    assert_eq!(serde_json::from_value::<Order>(json).unwrap(), v1_order);
}

#[test]
fn batch_verification_accepts_good_and_rejects_one_bad() {
    let keys: Vec<_> = (0..16).map(|_| SigningKeyPair::generate()).collect();
    let mut envelopes: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let mut reading = example_reading();
            reading.sequence = i as u64;
            SignedEnvelope::sign(&reading, k)
        })
        .collect();
    verify_batch(&envelopes.iter().collect::<Vec<_>>()).unwrap();
    envelopes[7].payload[40] ^= 1;
    assert_eq!(
        verify_batch(&envelopes.iter().collect::<Vec<_>>()),
        Err(SigningError::BadSignature)
    );
}

/// The hex, key and signatures printed in docs/protocol.md are exactly what the code produces.
#[test]
fn docs_worked_example_matches_the_code() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .expect("docs/protocol.md exists");
    let block = |name: &str| -> String {
        let start_marker = format!("<!-- {name} -->");
        let start = doc
            .find(&start_marker)
            .unwrap_or_else(|| panic!("docs/protocol.md lacks the marker {start_marker}"));
        let rest = &doc[start + start_marker.len()..];
        let fence = rest.find("```").unwrap();
        let body = &rest[fence + 3..];
        let body = &body[body.find('\n').unwrap() + 1..];
        let end = body.find("```").unwrap();
        body[..end].split_whitespace().collect()
    };
    let key = example_key();
    let order = SignedEnvelope::sign(&example_order(), &key);
    let reading = SignedEnvelope::sign(&example_reading(), &key);
    assert_eq!(block("example-seed"), hex::encode(key.seed()));
    assert_eq!(block("example-public-key"), hex::encode(key.public_key().0));
    assert_eq!(block("example-order-bytes"), hex::encode(&order.payload));
    assert_eq!(
        block("example-order-signature"),
        hex::encode(order.signature)
    );
    assert_eq!(
        block("example-reading-bytes"),
        hex::encode(&reading.payload)
    );
    assert_eq!(
        block("example-reading-signature"),
        hex::encode(reading.signature)
    );
    let envelope: SignedEnvelope = serde_json::from_str(&block("example-order-envelope")).unwrap();
    assert_eq!(envelope, order);
    let operating = SignedEnvelope::sign(&example_envelope(), &key);
    assert_eq!(
        block("example-envelope-bytes"),
        hex::encode(&operating.payload)
    );
    assert_eq!(
        block("example-envelope-signature"),
        hex::encode(operating.signature)
    );
    let attestation = SignedEnvelope::sign(&example_attestation(), &key);
    assert_eq!(
        block("example-attestation-bytes"),
        hex::encode(&attestation.payload)
    );
    assert_eq!(
        block("example-attestation-signature"),
        hex::encode(attestation.signature)
    );
    assert!(doc.contains(&format!(
        "Its SHA-256 (the reading's name in token provenance) is `{}`",
        reading.digest_hex()
    )));
    // Every row of the order and reading tables: offset, width and example bytes.
    check_table(
        &doc,
        "## Order: `gridmesh/order/v2` (148 bytes)",
        &order.payload,
    );
    check_table(
        &doc,
        "## Reading: `gridmesh/reading/v2` (256 bytes)",
        &reading.payload,
    );
}

/// The layout table under `heading`: its rows tile the message without gaps, and each row's
/// example hex is the example's bytes at that offset.
fn check_table(doc: &str, heading: &str, bytes: &[u8]) {
    let section = &doc[doc.find(heading).unwrap_or_else(|| panic!("no {heading}"))..];
    let mut next = 0;
    for line in section
        .lines()
        .skip_while(|l| !l.starts_with("| offset"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let offset: usize = cells[0].parse().unwrap();
        let width: usize = cells[1].parse().unwrap();
        assert_eq!(offset, next, "{heading}: {line}");
        let example = cells[5].trim_matches('`');
        assert_eq!(
            example,
            hex::encode(&bytes[offset..offset + width]),
            "{heading}: {line}"
        );
        next = offset + width;
    }
    assert_eq!(next, bytes.len(), "{heading} covers every byte");
}
