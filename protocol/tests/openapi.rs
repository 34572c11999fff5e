//! The `openapi` feature: the JSON schemas of the wire types describe the JSON they serialise to.
#![cfg(feature = "openapi")]

use gridmesh_protocol::api::market::MarketStatus;
use gridmesh_protocol::envelope::SignedResult;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::registry::Participant;
use gridmesh_protocol::signing::PublicKey;
use gridmesh_protocol::{Interval, ParticipantId, SignedEnvelope, Wh};
use serde_json::{Value, json};
use utoipa::PartialSchema;

fn schema<T: PartialSchema>() -> Value {
    serde_json::to_value(T::schema()).unwrap()
}

#[test]
fn units_are_integers_and_ids_strings() {
    assert_eq!(schema::<Wh>()["type"], "integer");
    assert_eq!(schema::<ParticipantId>()["type"], "string");
    assert_eq!(
        schema::<PublicKey>()["type"],
        "string",
        "{}",
        schema::<PublicKey>()
    );
}

#[test]
fn interval_is_start_and_minutes() {
    let s = schema::<Interval>();
    assert_eq!(s["properties"]["start"]["format"], "date-time", "{s}");
    assert_eq!(s["properties"]["minutes"]["type"], "integer", "{s}");
    assert_eq!(s["required"], json!(["start", "minutes"]));
}

#[test]
fn bytes_are_base64_strings() {
    let s = schema::<SignedEnvelope>();
    for field in ["payload", "signature"] {
        assert_eq!(s["properties"][field]["type"], "string", "{s}");
        assert_eq!(s["properties"][field]["format"], "byte", "{s}");
    }
    let s = schema::<SignedResult>();
    assert_eq!(s["properties"]["body_base64"]["format"], "byte", "{s}");
}

#[test]
fn read_models_name_every_field() {
    let s = schema::<MarketStatus>();
    let mut fields: Vec<&str> = s["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "clock",
            "clock_speed",
            "gate_closure_lead_seconds",
            "interval_minutes",
            "next_gate_closure",
            "next_open_interval",
            "pricing",
            "zone"
        ]
    );
    assert!(schema::<IntervalResult>()["properties"]["envelopes"].is_object());
    assert_eq!(
        schema::<Participant>()["properties"]["kind"]["$ref"],
        "#/components/schemas/ParticipantKind"
    );
}
