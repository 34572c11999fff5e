//! `settlement verify` checks the money (issue 14, item 4): every single-field change to a
//! stored table that moves money or tokens is detected and named (table, key, field), on
//! SQLite and PostgreSQL; a legitimate key rotation and an operator's later acceptance verify
//! clean; the authority key must be pinned (a chain re-signed by another key is refused).
//!
//! The scenario: 12:00 signed result with envelopes, three homes trade (mints to bob);
//! 12:30 alice's export is flagged and stays pending (a withheld mint, a pending line on her
//! statement); 12:45 carol's export is flagged, the interval is sealed, then an operator
//! accepts it (statements corrected, her export capped at her site's rating, the withheld mint
//! released); bob rotates his key, transfers with the old key before the rotation
//! and with the new one after, carol retires; 13:00 seals all that and lists the decision.

mod common;

use common::*;
use gridmesh_protocol::envelope::{EnvelopeAllocation, SignedResult};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::market::{Counterparty, IntervalResult};
use gridmesh_protocol::rotation::{KeyPeriod, ParticipantWithKeys};
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_protocol::token::{TokenRetire, TokenTransfer};
use gridmesh_protocol::{GatewayId, NodeId, ParticipantId, Wh};
use settlement::audit::{self, AuditError, Authority, Trust};
use settlement::ledger::parse_hex32;
use settlement::service::Service;
use sqlx::Row;

fn market_key() -> SigningKeyPair {
    SigningKeyPair::from_seed([66; 32])
}

fn bob_new_key() -> SigningKeyPair {
    SigningKeyPair::from_seed([67; 32])
}

fn trust() -> Trust {
    Trust {
        authority: Authority::Pinned(authority().public_key()),
        market_key: None,
    }
}

/// A result with an envelope for every home (wide enough: compliance rows, no excess).
fn with_envelopes(mut r: IntervalResult) -> IntervalResult {
    r.envelopes = HOMES
        .iter()
        .map(|(p, g, _)| EnvelopeAllocation {
            gateway: GatewayId::new(*g).unwrap(),
            participant: ParticipantId::new(*p).unwrap(),
            node: NodeId::new("f1").unwrap(),
            export_limit_wh: Wh(2_500),
            import_limit_wh: Wh(2_500),
            cleared_export_wh: Wh(0),
            cleared_import_wh: Wh(0),
        })
        .collect();
    r
}

fn transfer(
    from: &str,
    to: &str,
    lot: &str,
    amount: i64,
    nonce: u64,
    key: &SigningKeyPair,
) -> SignedEnvelope {
    let t = TokenTransfer {
        from: ParticipantId::new(from).unwrap(),
        to: ParticipantId::new(to).unwrap(),
        lot: parse_hex32(lot).unwrap(),
        amount: Wh(amount),
        nonce,
    };
    SignedEnvelope::sign(&t, key)
}

fn retire(holder: &str, lot: &str, amount: i64, nonce: u64) -> SignedEnvelope {
    let t = TokenRetire {
        holder: ParticipantId::new(holder).unwrap(),
        lot: parse_hex32(lot).unwrap(),
        amount: Wh(amount),
        nonce,
    };
    SignedEnvelope::sign(&t, &participant_key(holder))
}

/// bob's key history after his rotation a minute before the test clock's epoch.
fn rotated_participants() -> Vec<ParticipantWithKeys> {
    let at = epoch().timestamp() - 60;
    participants()
        .into_iter()
        .map(|mut p| {
            let old = p.public_key;
            let keys = if p.id.as_str() == "bob" {
                p.public_key = bob_new_key().public_key();
                vec![
                    KeyPeriod {
                        public_key: old,
                        valid_from: 0,
                        valid_until: Some(at),
                    },
                    KeyPeriod {
                        public_key: p.public_key,
                        valid_from: at,
                        valid_until: None,
                    },
                ]
            } else {
                Vec::new()
            };
            ParticipantWithKeys {
                participant: p,
                keys,
            }
        })
        .collect()
}

async fn scenario(url: &str) -> Service {
    let mut s = service(url).await;
    s.set_market_key(Some(market_key().public_key()));
    // 12:00, signed by the market.
    let a = interval("12:00");
    let result_a = with_envelopes(result(
        a,
        vec![
            trade(order("alice", "o-a1"), order("bob", "o-b1"), 1000, 200_000),
            trade(order("carol", "o-c1"), order("bob", "o-b1"), 500, 200_000),
            trade(Counterparty::Utility, order("carol", "o-c2"), 200, 300_000),
            trade(order("alice", "o-a1"), Counterparty::Utility, 100, 80_000),
        ],
    ));
    assert!(
        s.add_signed_result(&SignedResult::sign(&result_a, &market_key()))
            .await
            .unwrap()
    );
    s.ingest(submit(&[
        sign(&reading("gw-alice", 1, a, 0, 800, 900, 1_000)),
        sign(&reading("gw-bob", 1, a, 1_200, 0, 0, 1_000)),
        sign(&reading("gw-carol", 1, a, 150, 700, 800, 1_000)),
    ]))
    .await
    .unwrap();
    s.settle(&a.key()).await.unwrap();
    // 12:30: alice flagged (3100 Wh in 15 min is beyond 8 kW + 4 kW), stays pending.
    let b = interval("12:30");
    s.add_result(&result(
        b,
        vec![trade(order("alice", "a"), order("bob", "b"), 500, 150_000)],
    ))
    .await
    .unwrap();
    let out = s
        .ingest(submit(&[
            sign(&reading("gw-alice", 2, b, 0, 3_100, 3_200, 2_000)),
            sign(&reading("gw-bob", 2, b, 500, 0, 0, 2_000)),
        ]))
        .await
        .unwrap();
    assert_eq!(out[0].code.unwrap().as_str(), "implausible_export");
    s.settle(&b.key()).await.unwrap();
    // 12:45: carol flagged, sealed, then accepted by the operator.
    let c = interval("12:45");
    s.add_result(&result(
        c,
        vec![trade(order("carol", "c"), order("bob", "b2"), 300, 150_000)],
    ))
    .await
    .unwrap();
    let out = s
        .ingest(submit(&[
            sign(&reading("gw-carol", 2, c, 0, 3_100, 3_200, 2_000)),
            sign(&reading("gw-bob", 3, c, 400, 0, 0, 3_000)),
        ]))
        .await
        .unwrap();
    assert_eq!(out[0].code.unwrap().as_str(), "implausible_export");
    s.settle(&c.key()).await.unwrap();
    let carols: i64 = sqlx::query_scalar(
        "SELECT id FROM quarantine WHERE reading_key LIKE 'gw-carol/%' AND status = 'open'",
    )
    .fetch_one(&s.db().pool)
    .await
    .unwrap();
    assert_eq!(s.accept_quarantined(carols).await.unwrap(), 1);
    // Tokens: bob transfers with his old key, rotates, transfers with the new one; carol
    // retires.
    let lots: Vec<String> = sqlx::query_scalar(
        "SELECT lot FROM lots WHERE holder = 'bob' AND parent_lot IS NULL ORDER BY initial DESC",
    )
    .fetch_all(&s.db().pool)
    .await
    .unwrap();
    s.transfer(transfer(
        "bob",
        "carol",
        &lots[0],
        100,
        1,
        &participant_key("bob"),
    ))
    .await
    .unwrap();
    s.set_participants_with_keys(&rotated_participants())
        .await
        .unwrap();
    let second = s
        .transfer(transfer("bob", "carol", &lots[0], 50, 2, &bob_new_key()))
        .await
        .unwrap();
    s.retire(retire("carol", &second.entry, 20, 3))
        .await
        .unwrap();
    // 13:00 seals the transfers, the retirement, the released mint and lists the decision.
    let d = interval("13:00");
    s.add_result(&result(d, vec![])).await.unwrap();
    s.settle(&d.key()).await.unwrap();
    s
}

/// How a field is changed.
#[derive(Clone, Copy)]
enum Change {
    /// An integer column: add this.
    Add(i64),
    /// A text column: set it.
    Set(&'static str),
    /// A blob column: flip one bit in the middle.
    Flip,
    /// A JSON text column: add this to the number at the pointer.
    JsonAdd(&'static str, i64),
    /// A JSON text column: set the value at the pointer (JSON).
    JsonSet(&'static str, &'static str),
}

/// One single-field tampering: table, column, row filter (SQL), change, and what verify must
/// name (all of them).
struct Tamper {
    table: &'static str,
    column: &'static str,
    filter: String,
    change: Change,
    expect: Vec<String>,
}

fn t(
    table: &'static str,
    column: &'static str,
    filter: &str,
    change: Change,
    expect: &[&str],
) -> Tamper {
    Tamper {
        table,
        column,
        filter: filter.to_owned(),
        change,
        expect: expect.iter().map(|s| s.to_string()).collect(),
    }
}

fn reading_key(gateway: &str, i: &str) -> String {
    format!("{gateway}/home/{}", interval(i).start_unix())
}

fn tampers() -> Vec<Tamper> {
    let a = interval("12:00").key();
    let b = interval("12:30").key();
    let c = interval("12:45").key();
    let alice_a = reading_key("gw-alice", "12:00");
    let alice_b = reading_key("gw-alice", "12:30");
    let carol_c = reading_key("gw-carol", "12:45");
    let r = |k: &str| format!("reading_key = '{k}'");
    let st = |k: &str, p: &str| format!("interval_key = '{k}' AND participant = '{p}'");
    let ra = r(&alice_a);
    let mut v = vec![
        // readings: every money column, the signed bytes, and the status.
        t(
            "readings",
            "grid_export",
            &ra,
            Change::Add(1),
            &[&alice_a, "grid_export"],
        ),
        t(
            "readings",
            "grid_import",
            &ra,
            Change::Add(1),
            &[&alice_a, "grid_import"],
        ),
        t("readings", "pv", &ra, Change::Add(1), &[&alice_a, "pv"]),
        t(
            "readings",
            "battery_discharge",
            &ra,
            Change::Add(1),
            &[&alice_a, "battery_discharge"],
        ),
        t(
            "readings",
            "sequence",
            &ra,
            Change::Add(1),
            &[&alice_a, "sequence"],
        ),
        t(
            "readings",
            "interval_start",
            &ra,
            Change::Add(900),
            &[&alice_a, "interval_start"],
        ),
        t(
            "readings",
            "minutes",
            &ra,
            Change::Add(15),
            &[&alice_a, "minutes"],
        ),
        t(
            "readings",
            "participant",
            &ra,
            Change::Set("carol"),
            &[&alice_a, "carol"],
        ),
        t(
            "readings",
            "gateway",
            &ra,
            Change::Set("gw-carol"),
            &[&alice_a, "gateway"],
        ),
        t(
            "readings",
            "device",
            &ra,
            Change::Set("shed"),
            &[&alice_a, "device"],
        ),
        t(
            "readings",
            "digest",
            &ra,
            Change::Set("00"),
            &[&alice_a, "digest"],
        ),
        t(
            "readings",
            "payload",
            &ra,
            Change::Flip,
            &[&alice_a, "signature"],
        ),
        t(
            "readings",
            "signature",
            &ra,
            Change::Flip,
            &[&alice_a, "signature"],
        ),
        t(
            "readings",
            "status",
            &ra,
            Change::Set("flagged"),
            &[&alice_a, "status"],
        ),
        t(
            "readings",
            "status",
            &r(&alice_b),
            Change::Set("accepted"),
            &[&alice_b, "status"],
        ),
        t(
            "readings",
            "status",
            &r(&carol_c),
            Change::Set("flagged"),
            &[&carol_c, "status"],
        ),
        t(
            "readings",
            "status",
            &ra,
            Change::Set("late"),
            &["seller reading", "late"],
        ),
        // statements: the net column and every money and energy field of the body.
        t(
            "statements",
            "net",
            &st(&a, "alice"),
            Change::Add(1000),
            &["statement of alice", &a],
        ),
        t(
            "statements",
            "interval_key",
            &st(&a, "alice"),
            Change::Set("2026-06-21T11:00:00Z/15"),
            &["statement of alice"],
        ),
        t(
            "statements",
            "participant",
            &st(&a, "alice"),
            Change::Set("dave"),
            &["statement of dave"],
        ),
    ];
    for field in [
        "sold",
        "bought",
        "exported",
        "imported",
        "delivered",
        "consumed",
        "tokens",
        "envelope_excess",
    ] {
        let person =
            if field == "tokens" || field == "bought" || field == "consumed" || field == "imported"
            {
                "bob"
            } else {
                "alice"
            };
        let expect_field = format!("field {field}");
        let who = format!("statement of {person}");
        v.push(t(
            "statements",
            "body",
            &st(&a, person),
            Change::JsonAdd(leak(format!("/{field}")), 1),
            &[&who, &a, &expect_field],
        ));
    }
    v.extend([
        t(
            "statements",
            "body",
            &st(&a, "alice"),
            Change::JsonSet("/estimated", "true"),
            &["statement of alice", "field estimated"],
        ),
        t(
            "statements",
            "body",
            &st(&a, "alice"),
            Change::JsonAdd("/lines/0/energy", 1),
            &["statement of alice", "field lines[0].energy"],
        ),
        t(
            "statements",
            "body",
            &st(&a, "alice"),
            Change::JsonAdd("/lines/0/price", 1),
            &["statement of alice", "field lines[0].price"],
        ),
        t(
            "statements",
            "body",
            &st(&b, "alice"),
            Change::JsonAdd("/exported", 3_100),
            &["statement of alice", &b, "field exported"],
        ),
        t(
            "statements",
            "body",
            &st(&c, "carol"),
            Change::JsonAdd("/exported", -3_100),
            &["statement of carol", &c, "field exported"],
        ),
        // pending lines: alice's flagged 12:30 export (capped at her 3000 Wh rating).
        t(
            "statements",
            "body",
            &st(&b, "alice"),
            Change::JsonAdd("/pending/0/exported", 1),
            &["statement of alice", &b, "field pending[0].exported"],
        ),
        t(
            "statements",
            "body",
            &st(&b, "alice"),
            Change::JsonAdd("/pending/0/metered_exported", -1),
            &[
                "statement of alice",
                &b,
                "field pending[0].metered_exported",
            ],
        ),
        t(
            "statements",
            "body",
            &st(&b, "alice"),
            Change::JsonSet("/pending/0/reason", "\"pv_at_night\""),
            &["statement of alice", &b, "field pending[0].reason"],
        ),
        t(
            "statements",
            "body",
            &st(&b, "alice"),
            Change::JsonSet("/pending/0/gateway", "\"gw-bob\""),
            &["statement of alice", &b, "field pending[0].gateway"],
        ),
        t(
            "statements",
            "body",
            &st(&b, "alice"),
            Change::JsonSet("/pending", "[]"),
            &["statement of alice", &b, "field pending"],
        ),
        t(
            "statements",
            "body",
            &st(&b, "alice"),
            Change::JsonAdd("/pending_worth", -1),
            &["statement of alice", &b, "field pending_worth"],
        ),
        // The reason settlement recomputes the pending line (and the export cap) from.
        t(
            "quarantine",
            "code",
            &format!("reading_key = '{alice_b}'"),
            Change::Set("pv_at_night"),
            &[
                "statement of alice",
                &b,
                "field pending[0]",
                "quarantine item",
            ],
        ),
        t(
            "quarantine",
            "code",
            &format!("reading_key = '{carol_c}'"),
            Change::Set("unzoned_reading"),
            &["statement of carol", &c, "field exported"],
        ),
        // compliance rows.
        t(
            "compliance",
            "body",
            "gateway = 'gw-alice'",
            Change::JsonAdd("/export_wh", 1),
            &["compliance of gw-alice", "export_wh"],
        ),
        t(
            "compliance",
            "body",
            "gateway = 'gw-bob'",
            Change::JsonAdd("/import_limit_wh", 1),
            &["compliance of gw-bob", "import_limit_wh"],
        ),
        // results: the signed one and unsigned ones.
        t(
            "results",
            "body",
            &format!("interval_key = '{a}'"),
            Change::JsonAdd("/trades/0/energy", 1),
            &[&format!("result {a}"), "attestation"],
        ),
        t(
            "results",
            "attestation",
            &format!("interval_key = '{a}'"),
            Change::Set("{}"),
            &[&format!("result {a}"), "attestation"],
        ),
        t(
            "results",
            "body",
            &format!("interval_key = '{b}'"),
            Change::JsonAdd("/trades/0/energy", 1),
            &[&format!("result {b}"), "field body"],
        ),
        t(
            "results",
            "body",
            &format!("interval_key = '{c}'"),
            Change::JsonAdd("/trades/0/price", 1),
            &[&format!("result {c}"), "field body"],
        ),
        t(
            "results",
            "settled",
            &format!("interval_key = '{b}'"),
            Change::Add(-1),
            &[&b, "settled"],
        ),
        // ledger entries (mints, transfers, retirements): body, kind, hash and block.
        t(
            "entries",
            "body",
            "seq = 1",
            Change::Flip,
            &["ledger entry #1", "altered"],
        ),
        t(
            "entries",
            "kind",
            "seq = 1",
            Change::Set("retire"),
            &["ledger entry #1", "kind"],
        ),
        t(
            "entries",
            "hash",
            "seq = 2",
            Change::Set("00"),
            &["ledger entry #2", "altered"],
        ),
        t(
            "entries",
            "block_height",
            "seq = 2",
            Change::Add(1),
            &["block"],
        ),
        t(
            "entries",
            "body",
            "kind = 'transfer' AND seq = (SELECT MIN(seq) FROM entries WHERE kind = 'transfer')",
            Change::Flip,
            &["transfer", "altered"],
        ),
        t(
            "entries",
            "body",
            "kind = 'retire'",
            Change::Flip,
            &["retire", "altered"],
        ),
        t(
            "entries",
            "body",
            "kind = 'mint' AND seq = (SELECT MAX(seq) FROM entries WHERE kind = 'mint')",
            Change::Flip,
            &["mint", "altered"],
        ),
        // lots (balances).
        t(
            "lots",
            "remaining",
            "parent_lot IS NULL AND holder = 'bob' AND initial = (SELECT MAX(initial) FROM lots)",
            Change::Add(1),
            &["balance of lot", "remaining"],
        ),
        t(
            "lots",
            "retired",
            "parent_lot IS NOT NULL AND retired > 0",
            Change::Add(-1),
            &["balance of lot", "retired"],
        ),
        t(
            "lots",
            "initial",
            "parent_lot IS NULL AND holder = 'bob' AND initial = (SELECT MAX(initial) FROM lots)",
            Change::Add(1),
            &["balance of lot"],
        ),
        t(
            "lots",
            "holder",
            "parent_lot IS NULL AND holder = 'bob' AND initial = (SELECT MAX(initial) FROM lots)",
            Change::Set("alice"),
            &["balance of lot", "holder"],
        ),
        // withheld mints: the pending one (12:30) and the released one (12:45).
        t(
            "withheld_mints",
            "body",
            &format!("interval_key = '{b}'"),
            Change::JsonAdd("/amount", 1),
            &["withheld mint #", "field amount"],
        ),
        t(
            "withheld_mints",
            "body",
            &format!("interval_key = '{b}'"),
            Change::JsonSet("/buyer", "\"carol\""),
            &["withheld mint #", "buyer"],
        ),
        t(
            "withheld_mints",
            "released",
            &format!("interval_key = '{b}'"),
            Change::Add(1),
            &["withheld mint #", "released"],
        ),
        t(
            "withheld_mints",
            "released",
            &format!("interval_key = '{c}'"),
            Change::Add(-1),
            &["withheld mint #", "released"],
        ),
        t(
            "withheld_mints",
            "body",
            &format!("interval_key = '{c}'"),
            Change::JsonAdd("/amount", -1),
            &["withheld mint #", "amount"],
        ),
        t(
            "withheld_mints",
            "interval_key",
            &format!("interval_key = '{b}'"),
            Change::Set("2026-06-21T11:00:00Z/15"),
            &["withheld mint"],
        ),
        // blocks.
        t("blocks", "header", "height = 0", Change::Flip, &["block 0"]),
        t(
            "blocks",
            "signature",
            "height = 1",
            Change::Flip,
            &["block 1", "signature"],
        ),
        t(
            "blocks",
            "hash",
            "height = 2",
            Change::Set("00"),
            &["block 2"],
        ),
        t(
            "blocks",
            "public_key",
            "height = 3",
            Change::Set("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            &["block 3"],
        ),
        t(
            "blocks",
            "interval_key",
            "height = 1",
            Change::Set("2026-06-21T11:00:00Z/15"),
            &["block 1"],
        ),
        // quarantine decisions.
        t(
            "quarantine",
            "status",
            &format!("reading_key = '{alice_b}'"),
            Change::Set("accepted"),
            &["quarantine #", "status"],
        ),
        t(
            "quarantine",
            "status",
            &format!("reading_key = '{carol_c}'"),
            Change::Set("open"),
            &["quarantine #"],
        ),
        t(
            "quarantine",
            "resolved_at",
            &format!("reading_key = '{carol_c}'"),
            Change::Add(1),
            &["quarantine #", "resolved_at"],
        ),
        t(
            "quarantine",
            "reading_key",
            &format!("reading_key = '{carol_c}'"),
            Change::Set("gw-carol/home/0"),
            &["quarantine"],
        ),
        t(
            "quarantine",
            "status",
            &format!("reading_key = '{alice_b}'"),
            Change::Set("held"),
            &[&alice_b, "no open quarantine item"],
        ),
        // registrations the checks rely on.
        t(
            "gateways",
            "body",
            "gateway = 'gw-alice'",
            Change::JsonSet("/participant", "\"carol\""),
            &["reading", "gw-alice"],
        ),
    ]);
    v
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The table verify names for `table`'s tampering: where a change shows first.
fn expected_table(t: &Tamper) -> &'static str {
    match (t.table, t.column) {
        // A reading's status shows against its quarantine item, a gateway's registration
        // against the readings it signed, an entry's block against the block.
        ("readings", "status") if t.expect.iter().any(|e| e == "late") => "entries",
        ("gateways", _) => "readings",
        ("quarantine", "status") if t.expect.iter().any(|e| e == "no open quarantine item") => {
            "readings"
        }
        ("entries", "block_height") => "blocks",
        ("results", "settled") => "results",
        ("statements", "interval_key") => "statements",
        // A flagged reading's reason shows in the statement settled again with it.
        ("quarantine", "code") => "statements",
        (table, _) => table,
    }
}

enum Value {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    Blob(Vec<u8>),
}

async fn read(pool: &sqlx::AnyPool, t: &Tamper) -> Value {
    let sql = format!("SELECT {} FROM {} WHERE {}", t.column, t.table, t.filter);
    let row = sqlx::query(&sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    match t.change {
        Change::Add(_) if t.column == "resolved_at" => Value::OptInt(row.get(0)),
        Change::Add(_) => Value::Int(row.get(0)),
        Change::Flip => Value::Blob(row.get(0)),
        _ => Value::Text(row.get(0)),
    }
}

/// The row filter once `t` changed its column to `v` (the filter may name the column).
fn filter_after(t: &Tamper, original: &Value, v: &Value) -> String {
    match (original, v) {
        (Value::Text(o), Value::Text(n)) => t.filter.replace(
            &format!("{} = '{o}'", t.column),
            &format!("{} = '{n}'", t.column),
        ),
        _ => t.filter.clone(),
    }
}

async fn write(pool: &sqlx::AnyPool, t: &Tamper, filter: &str, v: &Value) {
    let sql = format!("UPDATE {} SET {} = $1 WHERE {filter}", t.table, t.column);
    let q = sqlx::query(&sql);
    let q = match v {
        Value::Int(i) => q.bind(*i),
        Value::OptInt(i) => q.bind(*i),
        Value::Text(s) => q.bind(s.clone()),
        Value::Blob(b) => q.bind(b.clone()),
    };
    let done = q
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(done.rows_affected(), 1, "{sql} must change exactly one row");
}

fn changed(t: &Tamper, v: &Value) -> Value {
    match (t.change, v) {
        (Change::Add(n), Value::Int(i)) => Value::Int(i + n),
        (Change::Add(n), Value::OptInt(i)) => Value::OptInt(i.map(|i| i + n)),
        (Change::Set(s), Value::Text(_)) => Value::Text(s.to_owned()),
        (Change::Flip, Value::Blob(b)) => {
            let mut b = b.clone();
            let at = b.len() / 2;
            b[at] ^= 1;
            Value::Blob(b)
        }
        (Change::JsonAdd(ptr, n), Value::Text(s)) => {
            let mut j: serde_json::Value = serde_json::from_str(s).unwrap();
            let x = j.pointer_mut(ptr).unwrap_or_else(|| panic!("{ptr} in {s}"));
            *x = serde_json::json!(x.as_i64().unwrap() + n);
            Value::Text(j.to_string())
        }
        (Change::JsonSet(ptr, new), Value::Text(s)) => {
            let mut j: serde_json::Value = serde_json::from_str(s).unwrap();
            *j.pointer_mut(ptr).unwrap_or_else(|| panic!("{ptr} in {s}")) =
                serde_json::from_str(new).unwrap();
            Value::Text(j.to_string())
        }
        _ => panic!("{}.{}: change does not fit the column", t.table, t.column),
    }
}

fn clone(v: &Value) -> Value {
    match v {
        Value::Int(i) => Value::Int(*i),
        Value::OptInt(i) => Value::OptInt(*i),
        Value::Text(s) => Value::Text(s.clone()),
        Value::Blob(b) => Value::Blob(b.clone()),
    }
}

async fn every_single_field_change_is_named(backend: &str) {
    let (url, _dir) = database(backend, "verify_tamper").await;
    let s = scenario(&url).await;
    let report = audit::verify_with(s.db(), &trust()).await.unwrap();
    assert_eq!(report.blocks, 4, "{report:?}");
    assert_eq!(report.commitments, 4, "{report:?}");
    assert_eq!(report.decisions_sealed, 1, "{report:?}");
    assert_eq!(report.withheld, 2, "{report:?}");
    assert!(report.results_signed >= 1, "{report:?}");
    let pool = &s.db().pool;
    let list = tampers();
    let mut detected = 0;
    let mut misses = Vec::new();
    for tamper in &list {
        let original = read(pool, tamper).await;
        let altered = changed(tamper, &original);
        write(pool, tamper, &tamper.filter, &altered).await;
        let what = format!("{}.{} where {}", tamper.table, tamper.column, tamper.filter);
        match audit::verify_with(s.db(), &trust()).await {
            Err(AuditError::Inconsistent(i)) => {
                let text = i.to_string();
                let mut expect = tamper.expect.clone();
                expect.push(format!("[table {}]", expected_table(tamper)));
                let missing: Vec<&String> = expect
                    .iter()
                    .filter(|e| !text.contains(e.as_str()))
                    .collect();
                if missing.is_empty() {
                    detected += 1;
                } else {
                    misses.push(format!("{what}: named as `{text}`, missing {missing:?}"));
                }
            }
            other => misses.push(format!("{what}: NOT DETECTED ({other:?})")),
        }
        write(
            pool,
            tamper,
            &filter_after(tamper, &original, &altered),
            &clone(&original),
        )
        .await;
        audit::verify_with(s.db(), &trust())
            .await
            .unwrap_or_else(|e| panic!("restoring {what} verifies clean again: {e}"));
    }
    println!(
        "{backend}: {detected} of {} single-field tamperings detected and named",
        list.len()
    );
    assert!(
        misses.is_empty(),
        "{} of {} named:\n{}",
        detected,
        list.len(),
        misses.join("\n")
    );
}

#[tokio::test]
async fn every_single_field_change_is_named_sqlite() {
    every_single_field_change_is_named("sqlite").await;
}

#[tokio::test]
async fn every_single_field_change_is_named_postgres() {
    every_single_field_change_is_named("postgres").await;
}

/// Two statements shifted by the same amount (the seller +1000, the buyer −1000, nets and
/// lines alike): every sum still balances, settling again names the field.
async fn zero_sum_shift_and_a_re_signed_chain(backend: &str) {
    let (url, _dir) = database(backend, "verify_shift").await;
    let s = scenario(&url).await;
    let pool = &s.db().pool;
    let a = interval("12:00").key();
    let originals: Vec<(String, String, i64)> = sqlx::query(&format!(
        "SELECT participant, body, net FROM statements WHERE interval_key = '{a}' AND participant IN ('alice', 'bob') ORDER BY participant"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect();
    for ((participant, body, net), delta) in originals.iter().zip([1000i64, -1000]) {
        let mut j: serde_json::Value = serde_json::from_str(body).unwrap();
        let amount = j["lines"][0]["amount"].as_i64().unwrap();
        j["lines"][0]["amount"] = serde_json::json!(amount + delta);
        j["net"] = serde_json::json!(net + delta);
        sqlx::query(&format!(
            "UPDATE statements SET body = $1, net = $2 WHERE interval_key = '{a}' AND participant = '{participant}'"
        ))
        .bind(j.to_string())
        .bind(net + delta)
        .execute(pool)
        .await
        .unwrap();
    }
    let err = audit::verify_with(s.db(), &trust())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("statement of alice")
            && err.contains("field lines[0].amount")
            && err.contains("[table statements]"),
        "{err}"
    );
    for (participant, body, net) in &originals {
        sqlx::query(&format!(
            "UPDATE statements SET body = $1, net = $2 WHERE interval_key = '{a}' AND participant = '{participant}'"
        ))
        .bind(body.clone())
        .bind(*net)
        .execute(pool)
        .await
        .unwrap();
    }
    audit::verify_with(s.db(), &trust()).await.unwrap();

    // The whole chain re-signed by another key: refused when the authority is pinned; only
    // an explicit trust in block 0's signer lets it through.
    let other = SigningKeyPair::from_seed([5; 32]);
    let headers: Vec<(i64, Vec<u8>)> =
        sqlx::query("SELECT height, header FROM blocks ORDER BY height")
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    for (height, header) in &headers {
        sqlx::query("UPDATE blocks SET signature = $1, public_key = $2 WHERE height = $3")
            .bind(other.sign_raw(header).to_vec())
            .bind(other.public_key().to_string())
            .bind(*height)
            .execute(pool)
            .await
            .unwrap();
    }
    let err = audit::verify_with(s.db(), &trust())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("block 0") && err.contains("not by the settlement authority"),
        "{err}"
    );
    let report = audit::verify(s.db(), None).await.unwrap();
    assert!(!report.authority_pinned);
}

#[tokio::test]
async fn zero_sum_shift_and_a_re_signed_chain_are_caught_sqlite() {
    zero_sum_shift_and_a_re_signed_chain("sqlite").await;
}

#[tokio::test]
async fn zero_sum_shift_and_a_re_signed_chain_are_caught_postgres() {
    zero_sum_shift_and_a_re_signed_chain("postgres").await;
}

/// The CLI refuses to verify without a pinned authority, saying what to pass; with
/// `--authority` it verifies.
#[tokio::test]
async fn the_cli_needs_the_authority_pinned() {
    let (url, _dir) = database("sqlite", "verify_cli").await;
    let s = scenario(&url).await;
    drop(s);
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_settlement"))
            .arg("verify")
            .arg("--database")
            .arg(&url)
            .args(args)
            .env_remove("GRIDMESH_SETTLEMENT_DATABASE_URL")
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--authority") && stderr.contains("--trust-first-block"),
        "{stderr}"
    );
    let key = authority().public_key().to_string();
    let out = run(&["--authority", &key]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("OK:") && stdout.contains("pinned"),
        "{stdout}"
    );
    let out = run(&[
        "--authority",
        &SigningKeyPair::from_seed([5; 32]).public_key().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("INCONSISTENT: block 0"), "{stdout}");
}
