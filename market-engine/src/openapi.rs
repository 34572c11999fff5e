//! The hand-written OpenAPI 3 document served at `/openapi.json`.

use serde_json::{Value, json};

fn op(summary: &str, responses: &[(&str, &str)]) -> Value {
    let mut r = serde_json::Map::new();
    for (code, what) in responses {
        r.insert(
            (*code).to_owned(),
            json!({ "description": what, "content": { "application/json": {} } }),
        );
    }
    json!({ "summary": summary, "responses": r })
}

fn with_body(mut operation: Value, schema: &str) -> Value {
    operation["requestBody"] = json!({
        "required": true,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    });
    operation
}

fn operator(mut operation: Value) -> Value {
    operation["security"] = json!([{ "operator": [] }]);
    operation
}

/// The document.
pub fn document() -> Value {
    let err = "error: {\"code\": snake_case, \"message\": sentence}";
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "gridmesh market engine",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Signed orders, gate closure per interval, welfare-maximising double auction under feeder limits, signed results and per-gateway operating envelopes. Prices are integer minor units per MWh, energies integer Wh. Errors are JSON {\"code\",\"message\"}."
        },
        "paths": {
            "/participants": {
                "post": operator(with_body(op("Register a participant (operator)", &[("201", "registered"), ("401", err), ("403", err), ("422", err)]), "Participant")),
                "get": op("List participants", &[("200", "participants")])
            },
            "/gateways": {
                "post": operator(with_body(op("Enrol a gateway (operator)", &[("201", "enrolled"), ("401", err), ("403", err)]), "GatewayEnrollment")),
                "get": op("List gateways", &[("200", "gateways")])
            },
            "/gateways/{id}": { "get": op("One gateway", &[("200", "gateway"), ("404", err)]) },
            "/orders": {
                "post": with_body(op("Submit a signed order", &[
                    ("201", "{\"order_id\": string}"),
                    ("400", err), ("401", "bad_signature | key_mismatch"), ("403", "unknown_participant | wrong_node"),
                    ("409", "gate_closed | replayed_nonce"), ("422", "invalid_quantity | invalid_price | unknown_node | wrong_interval_length | invalid_order")]), "SignedEnvelope"),
                "get": {
                    "summary": "List orders",
                    "parameters": [
                        { "name": "participant", "in": "query", "schema": { "type": "string" } },
                        { "name": "interval", "in": "query", "description": "interval start, RFC 3339", "schema": { "type": "string" } }
                    ],
                    "responses": { "200": { "description": "orders in arrival order" } }
                }
            },
            "/orders/cancel": { "post": with_body(op("Cancel an order before gate closure (signed OrderCancel)", &[("200", "cancelled"), ("401", err), ("404", err), ("409", err)]), "SignedEnvelope") },
            "/intervals/{start}/book": { "get": op("Order-book depth per node (price steps)", &[("200", "depth"), ("400", err)]) },
            "/intervals/{start}/result": { "get": op("The interval's result: the exact JSON body bytes the market signed (public)", &[("200", "IntervalResult"), ("404", "not_cleared")]) },
            "/intervals/{start}/result/signed": { "get": op("The interval's result as signed by the market: {body_base64, attestation} (public; verify with GET /market-key)", &[("200", "SignedResult"), ("400", err), ("404", "not_cleared")]) },
            "/results": { "get": {
                "summary": "Results from `since` on, oldest first",
                "parameters": [
                    { "name": "since", "in": "query", "schema": { "type": "string" } },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "maximum": 1000 } }
                ],
                "responses": { "200": { "description": "IntervalResult list" } }
            } },
            "/results/signed": { "get": {
                "summary": "Signed results from `since` on, oldest first (public; same paging as /results)",
                "parameters": [
                    { "name": "since", "in": "query", "schema": { "type": "string" } },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "maximum": 1000 } }
                ],
                "responses": { "200": { "description": "SignedResult list" }, "400": { "description": err } }
            } },
            "/market-key": { "get": op("The zone and the public key that signs results and envelopes (public)", &[("200", "MarketKey {zone, public_key}")]) },
            "/envelopes/{gateway}": { "get": op("The gateway's signed operating envelopes (SignedEnvelope of gridmesh/envelope/v1) for every cleared interval that has not ended, oldest first, at most 4 (public)", &[("200", "SignedEnvelope list"), ("400", err), ("404", "not_found: gateway not enrolled")]) },
            "/limits": {
                "post": operator(with_body(op("Add an operator limit override for one branch and time range (operator; id is assigned)", &[("201", "LimitOverride"), ("400", "invalid_override | invalid_request"), ("401", err), ("403", err)]), "LimitOverride")),
                "get": op("Every operator limit override (public)", &[("200", "LimitOverride list")])
            },
            "/limits/{id}": {
                "delete": operator(op("Delete a limit override (operator)", &[("204", "deleted"), ("400", err), ("401", err), ("403", err), ("404", err)]))
            },
            "/topology": {
                "get": op("The network and tariff", &[("200", "Network")]),
                "put": operator(with_body(op("Replace the network (operator)", &[("200", "Network"), ("401", err), ("403", err), ("422", "invalid_topology")]), "Network"))
            },
            "/status": { "get": op("Zone, interval length, gate-closure lead, next open interval, clock", &[("200", "status")]) },
            "/events": { "get": { "summary": "Server-sent events: `result` with the IntervalResult JSON", "responses": { "200": { "description": "text/event-stream" } } } },
            "/healthz": { "get": op("Liveness (checks the database)", &[("200", "ok"), ("500", err)]) },
            "/metrics": { "get": { "summary": "Prometheus text format", "responses": { "200": { "description": "text/plain" } } } }
        },
        "components": {
            "securitySchemes": { "operator": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "SignedEnvelope": { "type": "object", "required": ["payload", "signature", "public_key"], "properties": {
                    "payload": { "type": "string", "format": "byte", "description": "canonical bytes (docs/protocol.md)" },
                    "signature": { "type": "string", "format": "byte" },
                    "public_key": { "type": "string", "format": "byte" } } },
                "Participant": { "type": "object", "required": ["id", "public_key", "node", "kind"], "properties": {
                    "id": { "type": "string" }, "public_key": { "type": "string" }, "node": { "type": "string" },
                    "kind": { "type": "string", "enum": ["household", "trader"] } } },
                "GatewayEnrollment": { "type": "object", "required": ["gateway", "participant", "node", "public_key"] },
                "Network": { "type": "object", "required": ["root", "branches", "utility"] },
                "LimitOverride": { "type": "object", "required": ["node", "from", "until", "import_limit_wh", "export_limit_wh"], "properties": {
                    "id": { "type": "integer", "description": "assigned by the market; ignored on POST" },
                    "node": { "type": "string", "description": "the branch's child node" },
                    "from": { "type": "string", "format": "date-time", "description": "covers intervals starting at or after" },
                    "until": { "type": "string", "format": "date-time", "description": "and before this" },
                    "import_limit_wh": { "type": "integer", "nullable": true, "minimum": 0, "description": "null keeps the configured limit" },
                    "export_limit_wh": { "type": "integer", "nullable": true, "minimum": 0, "description": "null keeps the configured limit" },
                    "reason": { "type": "string" } } },
                "SignedResult": { "type": "object", "required": ["body_base64", "attestation"], "properties": {
                    "body_base64": { "type": "string", "format": "byte", "description": "the exact IntervalResult JSON bytes" },
                    "attestation": { "$ref": "#/components/schemas/SignedEnvelope" } } },
                "MarketKey": { "type": "object", "required": ["zone", "public_key"], "properties": {
                    "zone": { "type": "string" }, "public_key": { "type": "string", "format": "byte" } } }
            }
        }
    })
}
