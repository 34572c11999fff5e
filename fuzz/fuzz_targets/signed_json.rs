//! The JSON carriers of signed messages, and what receivers do with them.
//!
//! The first input byte picks:
//! - 0: a `SignedEnvelope` as `POST /orders`, `/readings`, `/tokens/*`, `/participants/{id}/key`
//!   and the gateway's envelope topic receive it: parse, verify, open as every message type,
//!   batch-verify, and the JSON must survive a round trip;
//! - 1: a `SignedResult` as settlement and gateways fetch it from the market, opened with the
//!   pinned market key;
//! - 2: an `Authorization: Gridmesh …` or `GridmeshGateway …` header (`SignedRequest::parse`,
//!   `SignedGatewayRequest::parse`, then `verify`);
//! - 3: arbitrary payload bytes signed with a real key, so that `open` gets past the signature
//!   into every decoder;
//! - 4: the gateway's envelope intake (`edge_gateway::envelope::EnvelopeBook`): up to four
//!   operating envelopes framed from the input and signed with the pinned market key, offered
//!   at times from the input, then the envelope in force and the agent's export cap.
#![no_main]

use chrono::{DateTime, Utc};
use edge_gateway::envelope::{DefaultEnvelope, EnvelopeBook, Offer};
use gridmesh_protocol::envelope::{OperatingEnvelope, ResultAttestation, SignedResult};
use gridmesh_protocol::example::example_key;
use gridmesh_protocol::order::{Order, OrderCancel};
use gridmesh_protocol::reading::Reading;
use gridmesh_protocol::request::{
    GatewayRequestProof, RequestProof, SignedGatewayRequest, SignedRequest,
};
use gridmesh_protocol::rotation::KeyRotation;
use gridmesh_protocol::signing::{Signable, SignedEnvelope, verify_batch};
use gridmesh_protocol::token::{TokenRetire, TokenTransfer};
use gridmesh_protocol::{GatewayId, IntervalLength};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        0 => envelope_json(rest),
        1 => signed_result(rest),
        2 => request_header(rest),
        3 => open_everything(&SignedEnvelope::sign_bytes(rest.to_vec(), &example_key())),
        _ => gateway_intake(rest),
    }
});

fn envelope_json(rest: &[u8]) {
    let Ok(envelope) = serde_json::from_slice::<SignedEnvelope>(rest) else {
        return;
    };
    let json = serde_json::to_vec(&envelope).expect("an envelope serialises");
    let back: SignedEnvelope = serde_json::from_slice(&json).expect("an envelope parses its JSON");
    assert_eq!(back, envelope);
    let _ = envelope.digest_hex();
    let _ = verify_batch(&[&envelope]);
    open_everything(&envelope);
}

/// Opens `envelope` as every message type, with its own key and the registered (example) key.
fn open_everything(envelope: &SignedEnvelope) {
    fn open<T: Signable>(envelope: &SignedEnvelope) {
        let _ = envelope.is::<T>();
        if let Err(e) = envelope.open::<T>() {
            let _ = e.to_string();
        }
        if let Err(e) = envelope.open_by::<T>(&example_key().public_key()) {
            let _ = e.to_string();
        }
    }
    open::<Reading>(envelope);
    open::<Order>(envelope);
    open::<OrderCancel>(envelope);
    open::<TokenTransfer>(envelope);
    open::<TokenRetire>(envelope);
    open::<KeyRotation>(envelope);
    open::<RequestProof>(envelope);
    open::<GatewayRequestProof>(envelope);
    open::<OperatingEnvelope>(envelope);
    open::<ResultAttestation>(envelope);
}

fn signed_result(rest: &[u8]) {
    let Ok(signed) = serde_json::from_slice::<SignedResult>(rest) else {
        return;
    };
    let _ = signed.body_digest();
    if let Err(e) = signed.open(&example_key().public_key()) {
        let _ = e.to_string();
    }
}

fn request_header(rest: &[u8]) {
    let Ok(header) = std::str::from_utf8(rest) else {
        return;
    };
    match SignedRequest::parse(header) {
        Ok(request) => {
            let _ = request.participant();
            let now = request.proof.signed_at;
            let _ = request.verify(&example_key().public_key(), now, "GET", "/statements", b"");
            let _ = request.verify(&example_key().public_key(), i64::MIN, "", "", b"");
            let _ = request.verify(&example_key().public_key(), i64::MAX, "", "", b"");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match SignedGatewayRequest::parse(header) {
        Ok(request) => {
            let _ = request.gateway();
            let now = request.proof.signed_at;
            let key = example_key().public_key();
            let _ = request.verify(&key, now, "POST", "/readings", b"[]");
            let _ = request.verify(&key, i64::MIN, "", "", b"");
            let _ = request.verify(&key, i64::MAX, "", "", b"");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn gateway_intake(rest: &[u8]) {
    let key = example_key();
    let gateway = GatewayId::new("gw-h001").expect("valid");
    let Some((&length, rest)) = rest.split_first() else {
        return;
    };
    let length = IntervalLength::from_minutes([5, 15, 30, 60][usize::from(length % 4)])
        .expect("a supported length");
    let default = DefaultEnvelope {
        export_w: 5_000,
        import_w: 11_000,
    };
    let body = OperatingEnvelope::LEN - OperatingEnvelope::TAG.len();
    let mut book = EnvelopeBook::default();
    let mut last_now = None;
    for chunk in rest.chunks(body + 8).take(4) {
        let (fields, now) = chunk.split_at(chunk.len().min(body));
        let mut payload = OperatingEnvelope::TAG.as_bytes().to_vec();
        payload.extend_from_slice(fields);
        payload.resize(OperatingEnvelope::LEN, 0);
        let mut now_bytes = [0u8; 8];
        now_bytes[..now.len()].copy_from_slice(now);
        // Seconds, kept inside chrono's range.
        let now_s = i64::from_be_bytes(now_bytes) % 8_000_000_000_000;
        let Some(now) = DateTime::<Utc>::from_timestamp(now_s, 0) else {
            continue;
        };
        last_now = Some(now);
        let signed = SignedEnvelope::sign_bytes(payload, &key);
        book.drop_ended(now);
        match book.offer(&signed, &key.public_key(), &gateway, length, now) {
            Offer::Accepted(envelope) => {
                assert_eq!(book.for_interval(&envelope.interval), Some(&*envelope));
                assert!(envelope.export_limit.0 >= 0 && envelope.import_limit.0 >= 0);
            }
            Offer::Refused(refusal) => {
                let _ = refusal.to_string();
            }
            Offer::Known | Offer::Ended | Offer::RefusedAgain => {}
        }
        assert!(book.len() <= 16, "the book stays bounded");
    }
    if let Some(now) = last_now {
        let in_force = book.in_force(now, length, &default);
        assert!(
            in_force.interval.contains(now),
            "the envelope in force covers now"
        );
        if let Some(latest) = book.latest() {
            let cap = book.export_cap(&latest.interval, &default);
            assert!(cap.0 >= 0, "a negative export cap: {cap:?}");
        }
        let cap = book.export_cap(&in_force.interval, &default);
        assert!(cap.0 >= 0, "a negative export cap: {cap:?}");
    }
}
