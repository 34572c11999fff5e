//! The OpenAPI document is generated from the handlers and the protocol's types: every route is
//! in it, every operation has its request and response schemas, and every documented operation
//! is served (and nothing else on those paths).

use market_engine::api::document;
use market_engine::{MarketConfig, serve};
use serde_json::Value;
use std::collections::BTreeSet;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Every route the market serves (README "Endpoints").
const ROUTES: [(&str, &str); 28] = [
    ("get", "/participants"),
    ("post", "/participants"),
    ("get", "/participants/{id}"),
    ("post", "/participants/{id}/key"),
    ("get", "/gateways"),
    ("post", "/gateways"),
    ("get", "/gateways/{id}"),
    ("get", "/orders"),
    ("post", "/orders"),
    ("post", "/orders/batch"),
    ("post", "/orders/cancel"),
    ("get", "/intervals/{start}/book"),
    ("get", "/intervals/{start}/result"),
    ("get", "/intervals/{start}/result/signed"),
    ("get", "/results"),
    ("get", "/results/signed"),
    ("get", "/market-key"),
    ("get", "/envelopes/{gateway}"),
    ("get", "/limits"),
    ("post", "/limits"),
    ("delete", "/limits/{id}"),
    ("get", "/topology"),
    ("put", "/topology"),
    ("get", "/status"),
    ("get", "/events"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

fn doc() -> Value {
    serde_json::to_value(document()).unwrap()
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                ops.insert((method.to_owned(), path.clone()));
            }
        }
    }
    ops
}

/// Every `$ref` in `v` names a schema of the document's components.
fn refs_resolve(v: &Value, schemas: &serde_json::Map<String, Value>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let name = r.strip_prefix("#/components/schemas/").unwrap();
                assert!(schemas.contains_key(name), "{r} is not in the components");
            }
            map.values().for_each(|v| refs_resolve(v, schemas));
        }
        Value::Array(list) => list.iter().for_each(|v| refs_resolve(v, schemas)),
        _ => {}
    }
}

#[test]
fn every_route_is_in_the_document() {
    let doc = doc();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(operations(&doc), expected);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "gridmesh market engine");
    assert_eq!(
        doc["components"]["securitySchemes"]["operator"]["scheme"],
        "bearer"
    );
}

#[test]
fn every_operation_has_request_and_response_schemas() {
    let doc = doc();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][&method];
        let what = format!("{method} {path}");
        if method == "post" || method == "put" {
            let body = &op["requestBody"]["content"]["application/json"]["schema"];
            assert!(body.is_object(), "{what} has no request schema");
        }
        let responses = op["responses"].as_object().unwrap();
        assert!(!responses.is_empty(), "{what} has no responses");
        for (status, response) in responses {
            if status == "204" {
                continue;
            }
            let content = response["content"].as_object();
            let schema = content
                .and_then(|c| c.values().next())
                .map(|c| &c["schema"]);
            assert!(
                schema.is_some_and(Value::is_object),
                "{what} {status} has no schema"
            );
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    schema.unwrap()["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{what} {status}"
                );
            }
        }
    }
    refs_resolve(&doc, schemas);
    for name in [
        "SignedEnvelope",
        "Participant",
        "GatewayEnrollment",
        "Network",
        "LimitOverride",
        "IntervalResult",
        "SignedResult",
        "MarketKey",
        "MarketStatus",
        "OrderRecord",
        "BookDepth",
    ] {
        assert!(
            schemas.contains_key(name),
            "{name} is not in the components"
        );
    }
    // Units are integers on the wire.
    assert_eq!(
        schemas["ClearedOrder"]["properties"]["quantity"]["$ref"],
        "#/components/schemas/Wh"
    );
    for unit in ["Wh", "Money", "PricePerMwh"] {
        assert_eq!(schemas[unit]["type"], "integer", "{unit}");
    }
}

/// Each documented operation reaches its handler (never the fallback), and the other methods
/// on a documented path are refused with 405: the router serves exactly the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_exactly_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = gridmesh_runtime::shutdown::Shutdown::new();
    let config = MarketConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("m.db").display()),
        ..MarketConfig::default()
    };
    let m = serve(
        config,
        gridmesh_runtime::clock::Clock::system(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let doc = doc();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", "1")
            .replace("{start}", "2026-06-21T12:00:00Z")
            .replace("{gateway}", "gw-1");
        for method in METHODS {
            let request = http
                .request(
                    method.to_uppercase().parse().unwrap(),
                    format!("{}{concrete}", m.url()),
                )
                .header("content-type", "application/json")
                .body("{}");
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            if item.get(method).is_some() {
                assert_ne!(status, 405, "{method} {path}");
                if status == 404 {
                    let body: Value = response.json().await.unwrap();
                    assert!(
                        !body["message"]
                            .as_str()
                            .unwrap()
                            .starts_with("no such endpoint"),
                        "{method} {path} fell through to the fallback"
                    );
                }
            } else {
                assert_eq!(status, 405, "{method} {path} is served but not documented");
            }
        }
    }
    // A path that is not documented is not served.
    let unknown = http
        .get(format!("{}/nowhere", m.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    shutdown.stop().await;
}
