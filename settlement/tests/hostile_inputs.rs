//! Edges and hostile input (issue 15): the statements filter takes `%`, `_` and `'` literally
//! (it was a `LIKE` pattern, so `%` matched every interval), readings exactly at and one second
//! beyond the clock-skew limit and the horizon, and hostile bodies and identifiers on every
//! POST route: a clear 4xx with a JSON `{code, message}`, never a 5xx.

mod common;

use common::*;
use gridmesh_protocol::api::readings::ReasonCode;
use gridmesh_protocol::registry::GatewayEnrollment;
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_runtime::testing::{
    HOSTILE_IDS, announce_oversized, assert_clear_4xx, assert_clear_413, hostile_bodies,
};
use reqwest::StatusCode;
use serde_json::Value;
use settlement::service::ReadingStatus;
use settlement::verify::{self, Context, Limits, Verdict};

/// Settles 12:00 with statements for alice, bob and carol.
async fn settled(backend: &str) -> (settlement::service::Service, Option<tempfile::TempDir>) {
    let (url, dir) = database(backend, "hostile_filters").await;
    let s = service(&url).await;
    let i = interval("12:00");
    let trades = vec![
        trade(order("alice", "o-a1"), order("bob", "o-b1"), 1000, 200_000),
        trade(order("carol", "o-c1"), order("bob", "o-b1"), 500, 200_000),
    ];
    s.add_result(&result(i, trades)).await.unwrap();
    let out = s
        .ingest(submit(&[
            sign(&reading("gw-alice", 1, i, 0, 1000, 1000, 1_000)),
            sign(&reading("gw-bob", 1, i, 1_500, 0, 0, 1_000)),
            sign(&reading("gw-carol", 1, i, 0, 500, 500, 1_000)),
        ]))
        .await
        .unwrap();
    assert!(out.iter().all(|o| o.status == ReadingStatus::Accepted));
    assert_eq!(s.settle_due().await.unwrap(), vec![i.key()]);
    (s, dir)
}

async fn literal_filters(backend: &str) {
    let (s, _dir) = settled(backend).await;
    let count = async |participant: Option<&str>, interval: Option<&str>| {
        s.statements(participant, interval)
            .await
            .unwrap_or_else(|e| panic!("{participant:?} {interval:?}: {e}"))
            .len()
    };
    // The real filters find the statements.
    assert_eq!(count(None, None).await, 3);
    assert_eq!(count(None, Some("2026-06-21T12:00:00Z")).await, 3);
    assert_eq!(count(None, Some(&interval("12:00").key())).await, 3);
    assert_eq!(count(Some("bob"), Some("2026-06-21T12:00:00Z")).await, 1);
    // Wildcards and quotes are characters: they match no interval and no participant.
    for hostile in [
        "%",
        "%%",
        "_",
        "2026-06-21T12:0_:00Z",
        "2026-06-21T12:00:00_",
        "2026%",
        "'",
        "' OR '1'='1",
        "\\",
        "2026-06-21T12:00:00Z\\",
    ] {
        assert_eq!(count(None, Some(hostile)).await, 0, "interval {hostile:?}");
        assert_eq!(
            count(Some(hostile), None).await,
            0,
            "participant {hostile:?}"
        );
    }
}

#[tokio::test]
async fn statement_filters_take_wildcards_and_quotes_literally_sqlite() {
    literal_filters("sqlite").await;
}

#[tokio::test]
async fn statement_filters_take_wildcards_and_quotes_literally_postgres() {
    literal_filters("postgres").await;
}

/// The verdict on a reading of interval 12:00 (ends 12:15) checked at `now`, with a 60 s
/// skew allowance and a 2-day horizon (the fixtures' settings).
fn verdict_at(now: chrono::DateTime<chrono::Utc>) -> Verdict {
    let i = interval("12:00");
    let r = reading("gw-alice", 1, i, 0, 100, 100, 1_000);
    let envelope = sign(&r);
    let enrollment: GatewayEnrollment = enrollments().remove(0);
    let ctx = Context {
        enrollment: &enrollment,
        history: None,
        stored_digest: None,
        interval_settled: false,
        now,
        limits: Limits {
            horizon: chrono::Duration::days(2),
            max_clock_skew: chrono::Duration::seconds(60),
            zone: None,
        },
    };
    verify::check(&envelope, &r, envelope.verify().is_ok(), &ctx)
}

fn code(v: &Verdict) -> Option<ReasonCode> {
    match v {
        Verdict::Flag(r) | Verdict::Late(r) | Verdict::Reject(r) => Some(r.code),
        Verdict::Accept | Verdict::Duplicate => None,
    }
}

/// Documented in `verify`: the interval must end no later than now + the skew allowance and
/// no earlier than now − the horizon; both ends are inclusive.
#[test]
fn clock_skew_and_horizon_edges_are_exact() {
    let end = interval("12:00").end();
    let skew = chrono::Duration::seconds(60);
    let second = chrono::Duration::seconds(1);
    // Ends exactly `skew` after now: accepted; one second more: future_interval.
    assert_eq!(verdict_at(end - skew), Verdict::Accept);
    assert_eq!(verdict_at(end - skew + second), Verdict::Accept);
    let early = verdict_at(end - skew - second);
    assert_eq!(code(&early), Some(ReasonCode::FutureInterval), "{early:?}");
    let Verdict::Reject(reason) = early else {
        panic!("{early:?}")
    };
    assert!(reason.message.contains("clock"), "{}", reason.message);
    // Ended exactly the horizon ago: accepted; one second more: too_old.
    let horizon = chrono::Duration::days(2);
    assert_eq!(verdict_at(end + horizon), Verdict::Accept);
    assert_eq!(verdict_at(end + horizon - second), Verdict::Accept);
    let old = verdict_at(end + horizon + second);
    assert_eq!(code(&old), Some(ReasonCode::TooOld), "{old:?}");
    assert!(matches!(old, Verdict::Reject(_)));
}

async fn start() -> Api {
    let (url, dir) = database("sqlite", "hostile").await;
    serve_api(api_config(url), dir).await
}

#[tokio::test]
async fn hostile_bodies_and_ids_on_every_post_route_get_a_clear_4xx() {
    let api = start().await;
    let (base, addr, http) = (&api.base, api.running.addr, &api.http);
    // Every POST route the API documents is covered below.
    let doc: Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut posts: Vec<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, ops)| ops.get("post").is_some() || ops.get("put").is_some())
        .map(|(path, _)| path.clone())
        .collect();
    posts.sort();
    assert_eq!(
        posts,
        [
            "/quarantine/{id}/accept",
            "/readings",
            "/tokens/retire",
            "/tokens/transfer"
        ],
        "a POST route is not covered by this test"
    );
    for (what, body) in hostile_bodies(b"[{\"payload\":\"\xff\xfe\xc3\x28\"}]") {
        // POST /readings, signed by an enrolled gateway over exactly this body, so the body
        // itself is what is refused.
        let response = http
            .post(format!("{base}/readings"))
            .header("authorization", upload_auth("gw-alice", &body))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_clear_4xx(response, &format!("/readings, {what}")).await;
        for path in ["/tokens/transfer", "/tokens/retire"] {
            let response = http
                .post(format!("{base}{path}"))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_clear_4xx(response, &format!("{path}, {what}")).await;
        }
        let response = http
            .post(format!("{base}/quarantine/1/accept"))
            .bearer_auth(OPERATOR)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        // No body is read: an unknown id is 404.
        assert_clear_4xx(response, &format!("/quarantine/1/accept, {what}")).await;
    }
    // Bodies over the limit: refused on their announced length.
    let oversized = [
        ("/readings", upload_auth("gw-alice", b"")),
        ("/tokens/transfer", String::new()),
        ("/tokens/retire", String::new()),
        ("/quarantine/1/accept", format!("Bearer {OPERATOR}")),
    ];
    for (path, auth) in oversized {
        let answer = announce_oversized(addr, "POST", path, &auth).await;
        assert_clear_413(answer, &format!("{path}, over the limit"));
    }
    // Hostile ids in paths and filters: 4xx or an empty answer, never a 5xx or someone
    // else's data.
    for id in HOSTILE_IDS {
        let response = http
            .post(format!("{base}/quarantine/{id}/accept"))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap();
        assert_clear_4xx(response, &format!("/quarantine/{id}/accept")).await;
        let response = http
            .get(format!("{base}/balances/{id}"))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap();
        assert!(
            !response.status().is_server_error(),
            "/balances/{id}: {}",
            response.status()
        );
        let response = http
            .get(format!("{base}/statements?participant={id}&interval={id}"))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(
            status == StatusCode::OK && text == "[]" || status.is_client_error(),
            "/statements {id}: {status} {text}"
        );
    }
    // A transfer whose envelope is well-formed but signed over junk: 4xx too.
    let junk = SignedEnvelope::sign(
        &reading("gw-alice", 1, interval("12:00"), 0, 0, 0, 0),
        &participant_key("alice"),
    );
    let response = http
        .post(format!("{base}/tokens/transfer"))
        .json(&junk)
        .send()
        .await
        .unwrap();
    assert_clear_4xx(
        response,
        "/tokens/transfer, a reading instead of a transfer",
    )
    .await;
    api.shutdown.trigger();
}
