//! The JSON bodies services and clients read from each other (`protocol::api` and the other
//! wire types via serde_json), and the decoders behind them.
//!
//! The first input byte picks the type. Request bodies go on to what the service does first:
//! `POST /network` and the offline book build a `Topology` (and the book is cleared),
//! `POST /limits` is validated against the topology and applied, `POST /readings` is split into
//! items that are parsed as signed envelopes. Every type: what parses serialises, and its JSON
//! parses back to the same JSON (what a service accepts, it can store and serve again).
#![no_main]

use gridmesh_protocol::api::market::{
    BookDepth, ErrorBody, Health, MarketStatus, OrderAccepted, OrderCancelled, OrderRecord,
    PublicResult,
};
use gridmesh_protocol::api::readings::ReadingOutcome;
use gridmesh_protocol::api::settlement::{
    Balances, BlockSummary, EntryBody, EntryView, Event, QuarantineAccepted, QuarantineItem,
    Statement, StoredReading, TokenReceipt,
};
use gridmesh_protocol::envelope::{
    ControlStatus, EnvelopeAlert, EnvelopeCompliance, MarketKey, MeasuredFlows, SignedResult,
};
use gridmesh_protocol::grid::{LimitOverride, Network};
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::reading::Reading;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant};
use gridmesh_protocol::rotation::ParticipantWithKeys;
use gridmesh_protocol::signing::SignedEnvelope;
use libfuzzer_sys::fuzz_target;
use market_engine::book::BookFile;
use market_engine::clearing::clear;
use market_engine::network::Topology;
use market_engine::overrides;
use market_engine::prices::PricingRule;
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 32 {
        // Request bodies.
        0 => _ = round_trip::<Participant>(body),
        1 => _ = round_trip::<GatewayEnrollment>(body),
        2 => limit_override(body),
        3 => network(body),
        4 => readings_body(body),
        5 => book(body),
        // Read models clients deserialise.
        6 => _ = round_trip::<IntervalResult>(body),
        7 => _ = round_trip::<SignedResult>(body),
        8 => _ = round_trip::<MarketStatus>(body),
        9 => _ = round_trip::<Vec<OrderRecord>>(body),
        10 => _ = round_trip::<OrderAccepted>(body),
        11 => _ = round_trip::<OrderCancelled>(body),
        12 => _ = round_trip::<BookDepth>(body),
        13 => _ = round_trip::<PublicResult>(body),
        14 => _ = round_trip::<Health>(body),
        15 => _ = round_trip::<ErrorBody>(body),
        16 => _ = round_trip::<Vec<ReadingOutcome>>(body),
        17 => _ = round_trip::<Vec<Statement>>(body),
        18 => _ = round_trip::<Balances>(body),
        19 => _ = round_trip::<Vec<BlockSummary>>(body),
        20 => _ = round_trip::<EntryView>(body),
        21 => _ = round_trip::<EntryBody>(body),
        22 => _ = round_trip::<Vec<QuarantineItem>>(body),
        23 => _ = round_trip::<QuarantineAccepted>(body),
        24 => _ = round_trip::<TokenReceipt>(body),
        25 => _ = round_trip::<Event>(body),
        26 => _ = round_trip::<StoredReading>(body),
        27 => _ = round_trip::<Vec<ParticipantWithKeys>>(body),
        28 => _ = round_trip::<MarketKey>(body),
        29 => _ = round_trip::<ControlStatus>(body),
        30 => _ = round_trip::<Vec<EnvelopeCompliance>>(body),
        _ => {
            _ = round_trip::<MeasuredFlows>(body);
            _ = round_trip::<Vec<EnvelopeAlert>>(body);
            _ = round_trip::<Reading>(body);
        }
    }
});

/// Parses `T`; what parses serialises, and that JSON parses back to the same JSON.
fn round_trip<T: Serialize + DeserializeOwned>(body: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(body).ok()?;
    let first = serde_json::to_value(&value).expect("a parsed value serialises");
    let again: T = serde_json::from_value(first.clone()).unwrap_or_else(|e| {
        panic!(
            "{} does not parse its own JSON {first}: {e}",
            std::any::type_name::<T>()
        )
    });
    let second = serde_json::to_value(&again).expect("a parsed value serialises");
    assert_eq!(
        first,
        second,
        "{} JSON round trip",
        std::any::type_name::<T>()
    );
    Some(value)
}

/// A small radial network the overrides are checked against.
fn feeder() -> Network {
    serde_json::from_str(
        r#"{"root":"sub","branches":[{"node":"f1","parent":"sub","import_limit_wh":50000,"export_limit_wh":30000,"fee_per_mwh":0},{"node":"h1","parent":"f1","import_limit_wh":11000,"export_limit_wh":5000}],"utility":{"retail_price":30000,"feed_in_price":8000}}"#,
    )
    .expect("the fixture network parses")
}

fn limit_override(body: &[u8]) {
    let Some(o) = round_trip::<LimitOverride>(body) else {
        return;
    };
    let network = feeder();
    let topology = Topology::new(&network).expect("the fixture network is valid");
    if let Err(e) = overrides::validate(&topology, &o) {
        let _ = e.to_string();
        return;
    }
    for start in [i64::MIN, -1, 0, 1_782_043_200, i64::MAX] {
        let _ = overrides::covers(&o, start);
        let applied = overrides::apply(&network, std::slice::from_ref(&o), start);
        if let Err(e) = Topology::new(&applied) {
            panic!("a validated override makes the network invalid: {e}: {o:?}");
        }
    }
}

fn network(body: &[u8]) {
    let Some(network) = round_trip::<Network>(body) else {
        return;
    };
    match Topology::new(&network) {
        Ok(topology) => {
            for node in topology.nodes() {
                let _ = topology.index_of(&node.id);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// `POST /readings`: a JSON array whose items are parsed one by one as signed readings.
fn readings_body(body: &[u8]) {
    let Ok(items) = serde_json::from_slice::<Vec<serde_json::Value>>(body) else {
        return;
    };
    for item in items {
        let raw = serde_json::to_vec(&item).expect("a parsed value serialises");
        if let Ok(envelope) = serde_json::from_slice::<SignedEnvelope>(&raw) {
            let _ = envelope.open::<Reading>();
        }
    }
}

/// The offline book (`market-engine clear --book FILE`): parse, validate, clear.
fn book(body: &[u8]) {
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let Ok(book) = BookFile::parse(text) else {
        return;
    };
    match book.validate() {
        Ok((topology, orders)) => {
            for rule in [PricingRule::PayAsClear, PricingRule::PayAsBid] {
                let _ = clear(&topology, &orders, rule);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
