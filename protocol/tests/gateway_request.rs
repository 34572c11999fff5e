//! The gateway's signed request (`gridmesh/gateway-request/v1`): the worked example in
//! docs/protocol.md is exactly what the code produces, and it verifies.

use gridmesh_protocol::GatewayId;
use gridmesh_protocol::example::example_key;
use gridmesh_protocol::request::{
    GatewayRequestProof, SignedGatewayRequest, gateway_authorization, request_digest,
};
use gridmesh_protocol::signing::Signable;

/// The worked example: gateway `gw-h001` uploads the body `[]` to `POST /readings` at
/// 2026-06-21 12:15:07 UTC (1782044107).
const SIGNED_AT: i64 = 1_782_044_107;
const BODY: &[u8] = b"[]";

fn proof() -> GatewayRequestProof {
    GatewayRequestProof {
        gateway: GatewayId::new("gw-h001").unwrap(),
        signed_at: SIGNED_AT,
        request_digest: request_digest("POST", "/readings", BODY),
    }
}

/// The text of the fenced block after `<!-- marker -->` in docs/protocol.md.
fn doc_block(marker: &str) -> String {
    let doc = include_str!("../../docs/protocol.md");
    let tag = format!("<!-- {marker} -->");
    let start = doc.find(&tag).unwrap_or_else(|| panic!("{tag} missing")) + tag.len();
    let rest = &doc[start..];
    let open = rest.find("```").unwrap();
    let body = &rest[open + 3..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].trim().to_owned()
}

fn hex_block(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(hex::encode)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_worked_example_is_what_the_code_produces() {
    let key = example_key();
    let payload = proof().encode();
    assert_eq!(payload.len(), 99);
    let header = gateway_authorization(
        &GatewayId::new("gw-h001").unwrap(),
        &key,
        SIGNED_AT,
        "POST",
        "/readings",
        BODY,
    );
    let digest = hex::encode(request_digest("POST", "/readings", BODY));
    let signature = hex::encode(key.sign_raw(&payload));
    println!(
        "digest {digest}\nbytes {}\nsignature {signature}\nheader {header}",
        hex_block(&payload)
    );
    assert_eq!(doc_block("example-gateway-request-digest"), digest);
    assert_eq!(
        doc_block("example-gateway-request-bytes")
            .split_whitespace()
            .collect::<String>(),
        hex::encode(&payload)
    );
    assert_eq!(doc_block("example-gateway-request-signature"), signature);
    assert_eq!(
        doc_block("example-gateway-request-header"),
        format!("Authorization: {header}")
    );
    let parsed = SignedGatewayRequest::parse(&header).unwrap();
    parsed
        .verify(&key.public_key(), SIGNED_AT + 5, "POST", "/readings", BODY)
        .unwrap();
}
