//! Public views carry no participant id (issue 13): results are aggregates per area of at least
//! five participants with pseudonymous trades, the full result goes only to the auditor and the
//! operator, a household reads its own part, signed results need the auditor, and a gateway's
//! envelopes need its own signature. Real market on SQLite, real HTTP.

use chrono::{DateTime, Utc};
use gridmesh_protocol::api::market::PublicResult;
use gridmesh_protocol::grid::{Branch, Network};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant, ParticipantKind};
use gridmesh_protocol::request::{authorization, gateway_authorization};
use gridmesh_protocol::{GatewayId, Interval, NodeId, ParticipantId, Wh};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use market_engine::{MarketConfig, serve};
use serde_json::Value;

const OPERATOR: &str = "operator-secret";
const AUDITOR: &str = "auditor-secret";
const START: &str = "2026-06-21T12:15:00Z";

/// Six homes on f1, two on f2 (folded into the root's area).
const HOMES: [(&str, &str, u8); 8] = [
    ("h01", "f1", 1),
    ("h02", "f1", 2),
    ("h03", "f1", 3),
    ("h04", "f1", 4),
    ("h05", "f1", 5),
    ("h06", "f1", 6),
    ("h07", "f2", 7),
    ("h08", "f2", 8),
];

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn key(seed: u8) -> SigningKeyPair {
    SigningKeyPair::from_seed([seed; 32])
}

fn network() -> Network {
    let branch = |n: &str| Branch {
        node: node(n),
        parent: node("sub"),
        import_limit_wh: Some(Wh(50_000)),
        export_limit_wh: Some(Wh(50_000)),
        fee_per_mwh: None,
    };
    Network {
        root: node("sub"),
        branches: vec![branch("f1"), branch("f2")],
        utility: Default::default(),
    }
}

enum Auth<'a> {
    None,
    Bearer(&'a str),
    Household(&'a str, u8),
    Gateway(&'a str, u8),
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn get(&self, path: &str, auth: Auth<'_>) -> (u16, String) {
        let now = Utc::now().timestamp();
        let mut req = self.http.get(format!("{}{path}", self.base));
        req = match auth {
            Auth::None => req,
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::Household(who, seed) => req.header(
                "authorization",
                authorization(
                    &ParticipantId::new(who).unwrap(),
                    &key(seed),
                    now,
                    "GET",
                    path,
                    b"",
                ),
            ),
            Auth::Gateway(gw, seed) => req.header(
                "authorization",
                gateway_authorization(
                    &GatewayId::new(gw).unwrap(),
                    &key(seed),
                    now,
                    "GET",
                    path,
                    b"",
                ),
            ),
        };
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn post(&self, path: &str, body: &impl serde::Serialize) -> u16 {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(OPERATOR)
            .json(body)
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    }
}

/// No household's id (nor its gateway's) appears anywhere in `text`.
fn assert_no_ids(what: &str, text: &str) {
    for (id, _, _) in HOMES {
        assert!(!text.contains(id), "{what} names {id}: {text}");
    }
}

fn code(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_views_carry_no_participant_id() {
    let dir = tempfile::tempdir().unwrap();
    let config = MarketConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("m.db").display()),
        operator_token: Some(OPERATOR.into()),
        auditor_token: Some(AUDITOR.into()),
        topology: Some(network()),
        ..MarketConfig::default()
    };
    let epoch = DateTime::parse_from_rfc3339("2026-06-21T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let shutdown = Shutdown::new();
    let m = serve(config, Clock::scaled(epoch, 1.0), shutdown.clone())
        .await
        .unwrap();
    let c = Client {
        http: reqwest::Client::new(),
        base: m.url(),
    };
    for (id, feeder, seed) in HOMES {
        let p = Participant {
            id: ParticipantId::new(id).unwrap(),
            public_key: key(seed).public_key(),
            node: node(feeder),
            kind: ParticipantKind::Household,
        };
        assert_eq!(c.post("/participants", &p).await, 201);
        let g = GatewayEnrollment {
            gateway: GatewayId::new(format!("gw-{id}")).unwrap(),
            participant: p.id.clone(),
            node: node(feeder),
            public_key: key(seed).public_key(),
            inverter_w: 5_000,
            battery_w: 0,
            latitude_microdeg: 52_520_008,
            longitude_microdeg: 13_404_954,
        };
        assert_eq!(c.post("/gateways", &g).await, 201);
    }
    let interval = Interval::parse(START, 15).unwrap();
    let full = m.market.clear_interval(interval).await.unwrap();
    assert_eq!(
        full.envelopes.len(),
        8,
        "every enrolled home has an envelope"
    );

    // Public: aggregates per area, no id. f1 (6 homes) is an area; f2 (2) folds into sub.
    let path = format!("/intervals/{START}/result");
    let (status, text) = c.get(&path, Auth::None).await;
    assert_eq!(status, 200, "{text}");
    assert_no_ids("the public result", &text);
    let public: PublicResult = serde_json::from_str(&text).unwrap();
    assert!(!public.withheld);
    let areas: Vec<(String, Vec<String>, u32)> = public
        .areas
        .iter()
        .map(|a| {
            let nodes = a.nodes.iter().map(|n| n.to_string()).collect();
            (a.node.to_string(), nodes, a.participants)
        })
        .collect();
    assert_eq!(
        areas,
        vec![
            ("f1".into(), vec!["f1".into()], 6),
            ("sub".into(), vec!["sub".into(), "f2".into()], 2),
        ]
    );
    let f1_export: i64 = full
        .envelopes
        .iter()
        .filter(|e| e.node == node("f1"))
        .map(|e| e.export_limit_wh.0)
        .sum();
    assert_eq!(public.areas[0].export_limit, Wh(f1_export));
    // Only the areas' branches: f2's flow would be its two homes' net position.
    assert!(public.flows.iter().all(|f| f.node == node("f1")));
    for path in ["/results".to_owned(), format!("/intervals/{START}/book")] {
        let (status, text) = c.get(&path, Auth::None).await;
        assert_eq!(status, 200, "{path}: {text}");
        assert_no_ids(&path, &text);
    }

    // The auditor and the operator read the full result, byte for byte as signed.
    for token in [AUDITOR, OPERATOR] {
        let (status, text) = c.get(&path, Auth::Bearer(token)).await;
        assert_eq!(status, 200);
        let got: IntervalResult = serde_json::from_str(&text).unwrap();
        assert_eq!(got, full);
    }
    // A household reads its own part: its envelope only.
    let (status, text) = c.get(&path, Auth::Household("h01", 1)).await;
    assert_eq!(status, 200, "{text}");
    let own: IntervalResult = serde_json::from_str(&text).unwrap();
    assert_eq!(own.envelopes.len(), 1);
    assert_eq!(own.envelopes[0].participant.as_str(), "h01");
    assert!(!text.contains("h02"), "{text}");
    // A wrong credential is 401, not the public view.
    assert_eq!(c.get(&path, Auth::Bearer("guess")).await.0, 401);
    assert_eq!(c.get(&path, Auth::Household("h01", 9)).await.0, 401);

    // Signed results carry every participant: the auditor's and the operator's only.
    for path in [
        format!("/intervals/{START}/result/signed"),
        "/results/signed".into(),
    ] {
        let (status, body) = c.get(&path, Auth::None).await;
        assert_eq!(
            (status, code(&body)),
            (401, "unauthorized".into()),
            "{path}"
        );
        let (status, body) = c.get(&path, Auth::Household("h01", 1)).await;
        assert_eq!((status, code(&body)), (403, "forbidden".into()), "{path}");
        assert_eq!(c.get(&path, Auth::Bearer(AUDITOR)).await.0, 200, "{path}");
    }

    // Per-node book depth is the auditor's; the public sees areas.
    let book = format!("/intervals/{START}/book");
    assert_eq!(c.get(&book, Auth::Bearer(AUDITOR)).await.0, 200);

    // Envelopes: the gateway's own signature, its household, the auditor, the operator.
    let envelopes = "/envelopes/gw-h01";
    let (status, body) = c.get(envelopes, Auth::None).await;
    assert_eq!((status, code(&body)), (401, "unauthorized".into()));
    assert_eq!(c.get(envelopes, Auth::Gateway("gw-h01", 1)).await.0, 200);
    assert_eq!(c.get(envelopes, Auth::Household("h01", 1)).await.0, 200);
    assert_eq!(c.get(envelopes, Auth::Bearer(AUDITOR)).await.0, 200);
    assert_eq!(c.get(envelopes, Auth::Bearer(OPERATOR)).await.0, 200);
    let (status, body) = c.get(envelopes, Auth::Gateway("gw-h02", 2)).await;
    assert_eq!((status, code(&body)), (403, "forbidden".into()), "{body}");
    let (status, body) = c.get(envelopes, Auth::Household("h02", 2)).await;
    assert_eq!((status, code(&body)), (403, "forbidden".into()), "{body}");
    // A gateway signing with another key is 401.
    assert_eq!(c.get(envelopes, Auth::Gateway("gw-h01", 2)).await.0, 401);
    // An unknown gateway: 404 to the auditor, 403 to a household (no enrolment oracle).
    assert_eq!(
        c.get("/envelopes/gw-nobody", Auth::Bearer(AUDITOR)).await.0,
        404
    );
    let (status, _) = c
        .get("/envelopes/gw-nobody", Auth::Household("h01", 1))
        .await;
    assert_eq!(status, 403);

    shutdown.stop().await;
}
