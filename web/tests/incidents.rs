//! Incidents (issue 17): grouping is a pure function (data-driven cases), acknowledgements
//! persist, the webhook is retried with bounded backoff against a real local receiver, and the
//! CSV exports quote and filter by range.

mod support;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use gridmesh_protocol::Interval;
use gridmesh_web::export::{self, LedgerQuery, Range};
use gridmesh_web::incidents::{Backoff, Incident, Incidents, Notification, Store, deliver, group};
use gridmesh_web::views::Alert;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn alert(kind: &str, subject: &str, start: Option<&str>, severity: &str) -> Alert {
    Alert {
        kind: kind.into(),
        severity: severity.into(),
        interval: start.map(|s| format!("2026-06-21T{s}:00Z/15")),
        subject: subject.into(),
        message: format!("{subject} {kind}"),
    }
}

fn at(s: &str) -> Interval {
    Interval::from_key(&format!("2026-06-21T{s}:00Z/15")).unwrap()
}

/// `check(alerts, newest congestion interval, expected [(title, state)])`.
fn check(alerts: &[Alert], newest: Option<&str>, expected: &[(&str, &str)]) {
    let mut map = BTreeMap::new();
    if let Some(n) = newest {
        map.insert("congestion".to_owned(), at(n));
    }
    let got: Vec<(String, String)> = group(alerts, &map)
        .into_iter()
        .map(|i| (i.title, i.state))
        .collect();
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(t, s)| (t.to_string(), s.to_string()))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn consecutive_alerts_of_one_kind_on_one_subject_form_one_incident() {
    // 33 identical rows, one per interval, are one incident ("f1 congested 09:45–18:00").
    let starts: Vec<String> = (0..33)
        .map(|i| {
            let m = 9 * 60 + 45 + 15 * i;
            format!("{:02}:{:02}", m / 60, m % 60)
        })
        .collect();
    let rows: Vec<Alert> = starts
        .iter()
        .map(|s| alert("congestion", "f1", Some(s), "critical"))
        .collect();
    check(
        &rows,
        Some("17:45"),
        &[(
            "f1 congested (measured) 2026-06-21 09:45–18:00 UTC (33 intervals)",
            "active",
        )],
    );
    // The newest measured interval moved on without f1: resolved.
    check(
        &rows,
        Some("18:00"),
        &[(
            "f1 congested (measured) 2026-06-21 09:45–18:00 UTC (33 intervals)",
            "resolved",
        )],
    );
}

#[test]
fn a_gap_splits_incidents_and_subjects_and_kinds_never_merge() {
    check(
        &[
            alert("congestion", "f1", Some("10:00"), "critical"),
            alert("congestion", "f1", Some("10:15"), "critical"),
            alert("congestion", "f1", Some("11:00"), "critical"),
            alert("congestion", "f2", Some("10:15"), "critical"),
            alert("imbalance", "utility", Some("11:00"), "warning"),
        ],
        Some("11:00"),
        &[
            (
                "f1 congested (measured) 2026-06-21 11:00–11:15 UTC (1 interval)",
                "active",
            ),
            (
                "utility imbalance spike 2026-06-21 11:00–11:15 UTC (1 interval)",
                "active",
            ),
            (
                "f1 congested (measured) 2026-06-21 10:00–10:30 UTC (2 intervals)",
                "resolved",
            ),
            (
                "f2 congested (measured) 2026-06-21 10:15–10:30 UTC (1 interval)",
                "resolved",
            ),
        ],
    );
}

#[test]
fn incidents_sort_by_severity_and_alerts_without_interval_stay_active() {
    check(
        &[
            alert("gateway_offline", "gw-h003", None, "warning"),
            alert("service", "market", None, "critical"),
            alert("cleared_at_limit", "f2", Some("10:00"), "info"),
        ],
        None,
        &[
            ("market unreachable", "active"),
            ("gw-h003 offline", "active"),
            (
                "f2 cleared at limit (plan) 2026-06-21 10:00–10:15 UTC (1 interval)",
                "active",
            ),
        ],
    );
    // Duplicated rows of one interval count once.
    let twice = [
        alert("congestion", "f1", Some("10:00"), "critical"),
        alert("congestion", "f1", Some("10:00"), "critical"),
    ];
    assert_eq!(group(&twice, &BTreeMap::new())[0].alerts, 1);
}

#[test]
fn ids_are_stable_and_acknowledgements_persist_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [alert("congestion", "f1", Some("10:00"), "critical")];
    let first = group(&rows, &BTreeMap::new());
    let id = first[0].id.clone();
    assert_eq!(id.len(), 16);
    let incidents = Incidents::open(dir.path());
    let now = chrono::Utc::now();
    let pending = incidents.observe(first.clone(), now);
    assert_eq!(pending.len(), 1, "a new incident is announced");
    assert_eq!(pending[0].event, "new");
    assert!(
        incidents
            .acknowledge("nope", "alice", now)
            .unwrap()
            .is_none()
    );
    let ack = incidents.acknowledge(&id, "alice", now).unwrap().unwrap();
    assert_eq!(ack.by, "alice");
    // A second acknowledgement keeps the first one's who and when.
    let again = incidents.acknowledge(&id, "bob", now).unwrap().unwrap();
    assert_eq!(again.by, "alice");
    incidents.delivered(&pending[0]);

    let reopened = Incidents::open(dir.path());
    reopened.observe(group(&rows, &BTreeMap::new()), now);
    let list = reopened.list();
    assert_eq!(list[0].acknowledged_by.as_deref(), Some("alice"));
    assert!(
        reopened.observe(first, now).is_empty(),
        "a delivered notification is not sent again after a restart"
    );
    // It disappears from the alerts: resolved, announced once.
    let pending = reopened.observe(Vec::new(), now);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].event, "resolved");
    assert_eq!(reopened.list()[0].state, "resolved");
    // The store is JSON lines.
    let text = std::fs::read_to_string(dir.path().join("incidents.jsonl")).unwrap();
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{text}"
    );
    assert!(Store::open(&dir.path().join("incidents.jsonl")).is_ok());
}

#[test]
fn a_corrupt_store_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("incidents.jsonl");
    std::fs::write(
        &path,
        "{\"ack\":{\"id\":\"a\",\"by\":\"x\",\"at\":\"2026-06-21T12:00:00Z\"}}\nnot json\n",
    )
    .unwrap();
    let err = Store::open(&path).unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");
}

/// What the receiver saw, and how many POSTs it answered.
type Received = (Arc<Mutex<Vec<Notification>>>, Arc<Mutex<usize>>);

/// A receiver that fails the first `failures` POSTs with 500, then accepts.
async fn receiver(failures: usize) -> (String, Arc<Mutex<Vec<Notification>>>) {
    let seen: Arc<Mutex<Vec<Notification>>> = Arc::default();
    let state = (seen.clone(), Arc::new(Mutex::new(0usize)));
    let app = axum::Router::new()
        .route(
            "/hook",
            post(
                move |State((seen, count)): State<Received>, Json(n): Json<Notification>| async move {
                    let mut c = count.lock().unwrap();
                    *c += 1;
                    if *c <= failures {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    seen.lock().unwrap().push(n);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), seen)
}

fn notification() -> Notification {
    let rows = [alert("congestion", "f1", Some("10:00"), "critical")];
    Notification {
        event: "new".into(),
        incident: group(&rows, &BTreeMap::new()).remove(0),
    }
}

fn quick(attempts: u32) -> Backoff {
    Backoff {
        initial: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
        attempts,
    }
}

#[tokio::test]
async fn the_webhook_is_retried_until_the_receiver_accepts() {
    let (url, seen) = receiver(2).await;
    let client = reqwest::Client::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let tries = deliver(&client, &url, &notification(), quick(5), &stop)
        .await
        .unwrap();
    assert_eq!(tries, 3, "two failures, then accepted");
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0], notification());
}

#[tokio::test]
async fn the_webhook_gives_up_after_its_bounded_tries() {
    let (url, seen) = receiver(usize::MAX).await;
    let client = reqwest::Client::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let err = deliver(&client, &url, &notification(), quick(3), &stop)
        .await
        .unwrap_err();
    assert_eq!(err.attempts, 3);
    assert!(err.to_string().contains("500"), "{err}");
    assert!(seen.lock().unwrap().is_empty());
}

#[test]
fn backoff_doubles_and_is_capped() {
    let b = Backoff::default();
    let waits: Vec<u64> = (1..=9).map(|n| b.delay(n).as_millis() as u64).collect();
    assert_eq!(
        waits,
        [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
    );
    assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
}

fn incident(subject: &str, first: &str, last: &str, message: &str) -> Incident {
    let mut i = group(
        &[alert("congestion", subject, Some(first), "critical")],
        &BTreeMap::new(),
    )
    .remove(0);
    i.last_interval = Some(format!("2026-06-21T{last}:00Z/15"));
    i.message = message.into();
    i
}

#[test]
fn csv_quotes_cells_defuses_formulas_and_filters_by_range() {
    assert_eq!(export::cell("plain"), "plain");
    assert_eq!(export::cell("a,b"), "\"a,b\"");
    assert_eq!(export::cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(export::cell("=SUM(A1)"), "'=SUM(A1)");
    let list = [
        incident("f1", "09:00", "09:30", "f1 exported 9 980 Wh, limit 320 Wh"),
        incident("f2", "12:00", "12:15", "=cmd"),
    ];
    let all = export::incidents_csv(&list, Range::default());
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 3, "{all}");
    assert!(lines[0].starts_with("id,subject,severity,state,first_interval"));
    assert!(
        lines[1].contains("\"f1 exported 9 980 Wh, limit 320 Wh\""),
        "{}",
        lines[1]
    );
    assert!(lines[2].ends_with(",'=cmd"), "{}", lines[2]);
    let range = Range::parse(Some("2026-06-21T10:00:00Z"), Some("2026-06-22")).unwrap();
    let later = export::incidents_csv(&list, range);
    assert_eq!(later.lines().count(), 2, "{later}");
    assert!(later.contains(",f2,"));
    assert!(Range::parse(Some("2026-06-22"), Some("2026-06-21")).is_err());
    assert!(
        Range::parse(Some("yesterday"), None)
            .unwrap_err()
            .contains("from=yesterday")
    );
}

#[test]
fn ledger_search_text_is_a_height_a_hash_or_a_participant() {
    assert_eq!(export::ledger_query(" 42 "), Ok(LedgerQuery::Height(42)));
    let h = "AB".repeat(32);
    assert_eq!(
        export::ledger_query(&h),
        Ok(LedgerQuery::Hash("ab".repeat(32)))
    );
    assert_eq!(
        export::ledger_query("h001"),
        Ok(LedgerQuery::Participant("h001".into()))
    );
    assert!(export::ledger_query("").is_err());
    assert!(export::ledger_query("a b").is_err());
}

/// Regression (issue 17): the webhook is a third party, so its notifications must not carry the
/// auditor credential the dashboard sends to the market and settlement. They were POSTed with
/// the settlement client, whose default `Authorization: Bearer` header went along.
#[tokio::test]
async fn webhook_notifications_never_carry_the_upstream_credential() {
    use axum::http::HeaderMap;
    type Seen = Arc<Mutex<Vec<(String, Notification)>>>;
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            post(
                |State(seen): State<Seen>, headers: HeaderMap, Json(n): Json<Notification>| async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    seen.lock().unwrap().push((auth, n));
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let up = support::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = gridmesh_runtime::shutdown::Shutdown::new();
    let _running = gridmesh_web::serve(
        gridmesh_web::WebConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            market_url: format!("http://{}", up.market),
            settlement_url: format!("http://{}", up.settlement),
            poll_interval_ms: 100,
            upstream_token: Some("auditor-secret".into()),
            data_dir: dir.path().to_owned(),
            incident_webhook: Some(hook),
            ..gridmesh_web::WebConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    // The doubles' open quarantine item is an active incident: wait (bounded) for its notice.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no notification reached the webhook within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = seen.lock().unwrap().clone();
    assert!(got.iter().all(|(_, n)| n.event == "new"), "{got:?}");
    let leaked: Vec<&String> = got
        .iter()
        .map(|(a, _)| a)
        .filter(|a| !a.is_empty())
        .collect();
    assert!(
        leaked.is_empty(),
        "the webhook received credentials: {leaked:?}"
    );
    // The upstreams did get the credential: the token was configured and in use.
    assert!(
        up.authorizations
            .lock()
            .unwrap()
            .iter()
            .any(|a| a == "Bearer auditor-secret")
    );
    tokio::time::timeout(Duration::from_secs(10), shutdown.stop())
        .await
        .expect("every task stops on shutdown");
}

/// Regression (issue 17): a second outage of the same service is a new incident. Alerts without
/// an interval all had one id per kind and subject, so the next outage reused the first one's:
/// it was never sent to the webhook and showed the old acknowledgement.
#[test]
fn each_outage_of_a_service_is_an_incident_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let incidents = Incidents::open(dir.path());
    let down = [alert("service", "settlement", None, "critical")];
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-06-21T10:00:00Z")
        .unwrap()
        .to_utc();
    let first = incidents.observe(group(&down, &BTreeMap::new()), t0);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].event, "new");
    assert_eq!(
        first[0].incident.title,
        "settlement unreachable since 2026-06-21 10:00 UTC (wall clock)"
    );
    let id = first[0].incident.id.clone();
    incidents.delivered(&first[0]);
    incidents.acknowledge(&id, "alice", t0).unwrap().unwrap();
    // Still down a minute later: the same incident, nothing new to send.
    let later = t0 + chrono::Duration::minutes(1);
    assert!(
        incidents
            .observe(group(&down, &BTreeMap::new()), later)
            .is_empty()
    );
    // Back up: resolved, announced.
    let back = incidents.observe(Vec::new(), later);
    assert_eq!((back.len(), back[0].event.as_str()), (1, "resolved"));
    assert_eq!(back[0].incident.id, id);
    incidents.delivered(&back[0]);
    // Down again: a new incident, announced, not acknowledged.
    let again_at = t0 + chrono::Duration::hours(2);
    let again = incidents.observe(group(&down, &BTreeMap::new()), again_at);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].event, "new");
    assert_ne!(again[0].incident.id, id);
    assert_eq!(
        again[0].incident.title,
        "settlement unreachable since 2026-06-21 12:00 UTC (wall clock)"
    );
    let list = incidents.list();
    let new = list.iter().find(|i| i.id == again[0].incident.id).unwrap();
    assert_eq!(
        (new.state.as_str(), new.acknowledged_by.as_deref()),
        ("active", None)
    );
    let old = list.iter().find(|i| i.id == id).unwrap();
    assert_eq!(
        (old.state.as_str(), old.acknowledged_by.as_deref()),
        ("resolved", Some("alice"))
    );
}

/// Regression (issue 17): a service the dashboard has not contacted yet (just started) raises no
/// alert. It was shown as "unreachable: not contacted yet", so every restart sent a critical
/// incident and its resolution to the webhook.
#[test]
fn a_service_not_contacted_yet_is_no_alert_but_a_failed_one_is() {
    use gridmesh_web::snapshot::{Snapshot, SourceHealth};
    let mut snap = Snapshot {
        market: SourceHealth::new("http://127.0.0.1:1"),
        settlement: SourceHealth::new("http://127.0.0.1:2"),
        ..Snapshot::default()
    };
    let services = |s: &Snapshot| -> Vec<String> {
        gridmesh_web::views::alerts(s, 3)
            .into_iter()
            .filter(|a| a.kind == "service")
            .map(|a| a.subject)
            .collect()
    };
    assert_eq!(services(&snap), Vec::<String>::new());
    snap.market
        .failed("market unreachable at http://127.0.0.1:1".into());
    assert_eq!(services(&snap), vec!["market".to_owned()]);
    snap.market.succeeded(chrono::Utc::now());
    assert_eq!(services(&snap), Vec::<String>::new());
}
