//! The worked example of `docs/protocol.md`: one fixed key, an order, a reading (both v2, in
//! zone `demo`), an operating envelope and a result attestation.
//!
//! ed25519 signatures are deterministic, so these always produce the same bytes and signatures.
//! A test checks that the hex printed in the document equals what this module produces, so the
//! document cannot drift from the code. `cargo run -p gridmesh-protocol --example worked_example`
//! prints the values.

use crate::envelope::{EnvelopeBasis, OperatingEnvelope, ResultAttestation};
use crate::ids::{DeviceId, GatewayId, NodeId, ParticipantId, ZoneId};
use crate::interval::Interval;
use crate::keys::SigningKeyPair;
use crate::order::{Order, Side};
use crate::reading::{Reading, ReadingFlags, Registers};
use crate::units::{PricePerMwh, Wh};
use chrono::{TimeZone, Utc};

/// The example's secret seed: the bytes 0x00, 0x01, …, 0x1f.
pub fn example_key() -> SigningKeyPair {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = i as u8;
    }
    SigningKeyPair::from_seed(seed)
}

/// The example's market zone, `demo`.
pub fn example_zone() -> ZoneId {
    ZoneId::new("demo").expect("valid")
}

/// Household h001 buys up to 1.2 kWh at 25.00 c/kWh on feeder f1 for 12:15–12:30 UTC in the
/// market of zone `demo`.
pub fn example_order() -> Order {
    Order {
        zone: Some(example_zone()),
        participant: ParticipantId::new("h001").expect("valid"),
        node: NodeId::new("f1").expect("valid"),
        interval: Interval::parse("2026-06-21T12:15:00Z", 15).expect("aligned"),
        side: Side::Buy,
        quantity: Wh(1_200),
        limit_price: PricePerMwh(25_000),
        nonce: 1,
    }
}

/// Gateway gw-h001's reading of home h001 (zone `demo`) for 12:00–12:15 UTC.
pub fn example_reading() -> Reading {
    Reading {
        zone: Some(example_zone()),
        gateway: GatewayId::new("gw-h001").expect("valid"),
        device: DeviceId::new("home").expect("valid"),
        firmware: "0.1.0".to_owned(),
        sequence: 42,
        interval: Interval::parse("2026-06-21T12:00:00Z", 15).expect("aligned"),
        measured_at: Utc
            .timestamp_millis_opt(1_782_044_100_250)
            .single()
            .expect("valid"),
        clock_synced: true,
        clock_set_count: 1,
        operating_seconds: 86_400,
        registers: Registers {
            grid_import: Wh(1_523_410),
            grid_export: Wh(2_047_885),
            pv: Wh(4_100_000),
            battery_charge: Wh(900_120),
            battery_discharge: Wh(850_300),
        },
        deltas: Registers {
            grid_import: Wh(0),
            grid_export: Wh(812),
            pv: Wh(1_190),
            battery_charge: Wh(150),
            battery_discharge: Wh(0),
        },
        soc_permille: Some(655),
        flags: ReadingFlags::empty(),
    }
}

/// The market of zone `demo` attests a result body for 12:15–12:30 UTC whose SHA-256 is the
/// bytes 0x20 … 0x3f, cleared at 12:10:00 UTC.
pub fn example_attestation() -> ResultAttestation {
    let mut digest = [0u8; 32];
    for (i, b) in digest.iter_mut().enumerate() {
        *b = 0x20 + i as u8;
    }
    ResultAttestation {
        zone: "demo".to_owned(),
        interval: Interval::parse("2026-06-21T12:15:00Z", 15).expect("aligned"),
        body_digest: digest,
        cleared_at: Utc.timestamp_opt(1_782_043_800, 0).single().expect("valid"),
    }
}

/// Gateway gw-h001 (household h001 on f1) may export at most 40 Wh (160 W on average) and
/// import at most 2750 Wh (11 kW) in 12:15–12:30 UTC, computed from the result above.
pub fn example_envelope() -> OperatingEnvelope {
    OperatingEnvelope {
        zone: "demo".to_owned(),
        gateway: GatewayId::new("gw-h001").expect("valid"),
        participant: ParticipantId::new("h001").expect("valid"),
        node: NodeId::new("f1").expect("valid"),
        interval: Interval::parse("2026-06-21T12:15:00Z", 15).expect("aligned"),
        export_limit: Wh(40),
        import_limit: Wh(2_750),
        basis: EnvelopeBasis::Cleared,
        result_digest: example_attestation().body_digest,
        issued_at: Utc.timestamp_opt(1_782_043_801, 0).single().expect("valid"),
    }
}
