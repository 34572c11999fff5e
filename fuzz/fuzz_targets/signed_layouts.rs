//! Every signed layout of `protocol` (`Signable::decode`) on arbitrary bytes.
//!
//! Anyone can sign anything with a key of their own, so `decode` sees arbitrary bytes behind a
//! valid signature. The first input byte picks the message; its top bit says whether the rest is
//! taken as is (tag and length errors) or framed as the message's tag followed by the rest,
//! zero-padded or cut to the layout's length (field errors). Checked: no panic; what decodes
//! encodes back to exactly the same bytes (one encoding per message, so a digest names one
//! message); the value survives the JSON form services also serve.
#![no_main]

use gridmesh_protocol::envelope::{OperatingEnvelope, ResultAttestation};
use gridmesh_protocol::order::{Order, OrderCancel};
use gridmesh_protocol::reading::Reading;
use gridmesh_protocol::request::{GatewayRequestProof, RequestProof};
use gridmesh_protocol::rotation::KeyRotation;
use gridmesh_protocol::signing::Signable;
use gridmesh_protocol::token::{TokenRetire, TokenTransfer};
use libfuzzer_sys::fuzz_target;
use std::fmt::Debug;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let framed = selector & 0x80 != 0;
    match selector & 0x7f {
        0 => round_trip_json::<Reading>(rest, framed),
        1 => round_trip_json::<Order>(rest, framed),
        2 => round_trip_json::<OrderCancel>(rest, framed),
        3 => round_trip_json::<TokenTransfer>(rest, framed),
        4 => round_trip_json::<TokenRetire>(rest, framed),
        5 => round_trip_json::<KeyRotation>(rest, framed),
        6 => _ = round_trip::<RequestProof>(rest, framed),
        7 => round_trip_json::<OperatingEnvelope>(rest, framed),
        8 => round_trip_json::<ResultAttestation>(rest, framed),
        9 => _ = round_trip::<GatewayRequestProof>(rest, framed),
        _ => {}
    }
});

/// The bytes to decode: as given, or framed as a `T` message.
fn bytes<T: Signable>(rest: &[u8], framed: bool) -> Vec<u8> {
    if !framed {
        return rest.to_vec();
    }
    let mut bytes = T::TAG.as_bytes().to_vec();
    bytes.extend_from_slice(rest);
    bytes.resize(T::LEN, 0);
    bytes
}

/// Decodes; what decodes must encode back to the same bytes and decode to the same value.
fn round_trip<T: Signable + PartialEq + Debug>(rest: &[u8], framed: bool) -> Option<T> {
    let bytes = bytes::<T>(rest, framed);
    match T::decode(&bytes) {
        Ok(value) => {
            let encoded = value.encode();
            assert_eq!(
                encoded.len(),
                T::LEN,
                "{} encodes to its fixed length",
                T::TAG
            );
            assert_eq!(
                encoded,
                bytes,
                "{} decoded from bytes that are not its canonical encoding: {value:?}",
                T::TAG
            );
            Some(value)
        }
        Err(error) => {
            // The message must be printable (it is logged and answered to clients).
            let _ = error.to_string();
            None
        }
    }
}

/// [`round_trip`], and the decoded value survives its JSON form.
fn round_trip_json<T>(rest: &[u8], framed: bool)
where
    T: Signable + PartialEq + Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    if let Some(value) = round_trip::<T>(rest, framed) {
        let json = serde_json::to_string(&value).expect("a decoded message serialises");
        let back: T = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("{} does not parse its own JSON {json}: {e}", T::TAG));
        assert_eq!(back, value, "{} JSON round trip", T::TAG);
    }
}
