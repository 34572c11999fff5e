//! The OpenAPI document is generated from the handlers and the protocol's read models: every
//! route is in it, every operation has request and response schemas, and the router serves
//! exactly the documented operations. Bad query strings and path segments answer the
//! `{code, message}` JSON of every other error.

mod common;

use common::*;
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use serde_json::Value;
use settlement::api::document;
use settlement::{SettlementConfig, serve};
use std::collections::BTreeSet;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Every route settlement serves (README "Endpoints").
const ROUTES: [(&str, &str); 19] = [
    ("post", "/readings"),
    ("get", "/statements"),
    ("get", "/statements/monthly/{participant}/{month}"),
    ("get", "/balances/{participant}"),
    ("post", "/tokens/transfer"),
    ("post", "/tokens/retire"),
    ("get", "/ledger/blocks"),
    ("get", "/ledger/blocks/{height}"),
    ("get", "/ledger/entries/{hash}"),
    ("get", "/readings/{digest}"),
    ("get", "/quarantine"),
    ("post", "/quarantine/{id}/accept"),
    ("get", "/compliance"),
    ("get", "/compliance/alerts"),
    ("get", "/flows"),
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
    assert_eq!(doc["info"]["title"], "gridmesh settlement");
    assert_eq!(
        doc["components"]["securitySchemes"]["operator"]["scheme"],
        "bearer"
    );
    // Issue 13: the access model's credentials, named on every per-household read.
    assert_eq!(
        doc["components"]["securitySchemes"]["auditor"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["participant"]["name"],
        "Authorization"
    );
    for path in [
        "/statements",
        "/statements/monthly/{participant}/{month}",
        "/balances/{participant}",
        "/readings/{digest}",
        "/quarantine",
        "/compliance",
        "/compliance/alerts",
    ] {
        let security = doc["paths"][path]["get"]["security"].to_string();
        for scheme in ["participant", "auditor", "operator"] {
            assert!(security.contains(scheme), "GET {path}: {security}");
        }
    }
}

#[test]
fn every_operation_has_request_and_response_schemas() {
    let doc = doc();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][&method];
        let what = format!("{method} {path}");
        // Accepting a quarantined reading takes no body.
        if method == "post" && path != "/quarantine/{id}/accept" {
            let body = &op["requestBody"]["content"]["application/json"]["schema"];
            assert!(body.is_object(), "{what} has no request schema");
        }
        let responses = op["responses"].as_object().unwrap();
        assert!(!responses.is_empty(), "{what} has no responses");
        for (status, response) in responses {
            let schema = response["content"]
                .as_object()
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
        "ReadingOutcome",
        "Statement",
        "MoneyLine",
        "Balances",
        "Holding",
        "EntryBody",
        "BlockSummary",
        "EntryView",
        "ProofStep",
        "StoredReading",
        "QuarantineItem",
        "QuarantineAccepted",
        "TokenReceipt",
        "EnvelopeCompliance",
        "EnvelopeAlert",
        "MeasuredFlows",
        "Event",
    ] {
        assert!(
            schemas.contains_key(name),
            "{name} is not in the components"
        );
    }
    for unit in ["Wh", "Money", "PricePerMwh"] {
        assert_eq!(schemas[unit]["type"], "integer", "{unit}");
    }
}

async fn start(dir: &tempfile::TempDir) -> (String, Shutdown) {
    let shutdown = Shutdown::new();
    let config = SettlementConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("s.db").display()),
        market_url: None,
        operator_token: Some("op-secret".into()),
        ..SettlementConfig::default()
    };
    let running = serve(config, Clock::scaled(epoch(), 1.0), shutdown.clone())
        .await
        .unwrap();
    (format!("http://{}", running.addr), shutdown)
}

/// Each documented operation reaches its handler (never the fallback), and the other methods
/// on a documented path are refused with 405: the router serves exactly the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_exactly_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let (base, shutdown) = start(&dir).await;
    let http = reqwest::Client::new();
    for (path, item) in doc()["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{participant}", "alice")
            .replace("{height}", "0")
            .replace("{hash}", "00")
            .replace("{digest}", "00")
            .replace("{id}", "1");
        for method in METHODS {
            if path == "/events" && method == "get" {
                continue; // a stream that stays open; served in tests/service.rs
            }
            let response = http
                .request(
                    method.to_uppercase().parse().unwrap(),
                    format!("{base}{concrete}"),
                )
                .bearer_auth("op-secret")
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
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
    let missing = http.get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
    shutdown.stop().await;
}

/// Regression: a bad query string or path segment answered axum's plain-text rejection, not
/// the `{code, message}` JSON every other error has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_and_paths_answer_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (base, shutdown) = start(&dir).await;
    let http = reqwest::Client::new();
    for (url, code) in [
        (format!("{base}/ledger/blocks/abc"), "invalid_path"),
        (format!("{base}/ledger/blocks?limit=many"), "invalid_query"),
        (format!("{base}/quarantine?limit=1.5"), "invalid_query"),
    ] {
        let response = http
            .get(&url)
            .bearer_auth("op-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], code, "{url}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let response = http
        .post(format!("{base}/quarantine/abc/accept"))
        .bearer_auth("op-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "invalid_path");
    shutdown.stop().await;
}
