//! Settling intervals, minting, transfers, retirements, withheld mints and the audit, on SQLite
//! and PostgreSQL.

mod common;

use common::*;
use gridmesh_protocol::market::Counterparty;
use gridmesh_protocol::signing::SignedEnvelope;
use gridmesh_protocol::token::{TokenRetire, TokenTransfer};
use gridmesh_protocol::{ParticipantId, Wh};
use settlement::audit;
use settlement::ledger::{parse_hex32, verify_proof};
use settlement::service::{ReadingStatus, Service, ServiceError, SettleOutcome};
use settlement::store::StoreError;
use sqlx::Row;

fn lot(hex: &str) -> [u8; 32] {
    parse_hex32(hex).unwrap()
}

fn transfer(
    from: &str,
    to: &str,
    lot_hex: &str,
    amount: i64,
    nonce: u64,
    signer: &str,
) -> SignedEnvelope {
    let t = TokenTransfer {
        from: ParticipantId::new(from).unwrap(),
        to: ParticipantId::new(to).unwrap(),
        lot: lot(lot_hex),
        amount: Wh(amount),
        nonce,
    };
    SignedEnvelope::sign(&t, &participant_key(signer))
}

fn retire(holder: &str, lot_hex: &str, amount: i64, nonce: u64) -> SignedEnvelope {
    let t = TokenRetire {
        holder: ParticipantId::new(holder).unwrap(),
        lot: lot(lot_hex),
        amount: Wh(amount),
        nonce,
    };
    SignedEnvelope::sign(&t, &participant_key(holder))
}

async fn count(s: &Service, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&s.db().pool)
        .await
        .unwrap()
}

/// Interval 12:00: alice sells 1000 to bob and 100 to the utility, carol sells 500 to bob and
/// buys 200 from the utility; alice under-delivers, carol over-delivers, bob under-consumes.
async fn settle_scenario(s: &Service) {
    let i = interval("12:00");
    let trades = vec![
        trade(order("alice", "o-a1"), order("bob", "o-b1"), 1000, 200_000),
        trade(order("carol", "o-c1"), order("bob", "o-b1"), 500, 200_000),
        trade(Counterparty::Utility, order("carol", "o-c2"), 200, 300_000),
        trade(order("alice", "o-a1"), Counterparty::Utility, 100, 80_000),
    ];
    s.add_result(&result(i, trades)).await.unwrap();
    let out = s
        .ingest(submit(&[
            sign(&reading("gw-alice", 1, i, 0, 800, 900, 1_000)),
            sign(&reading("gw-bob", 1, i, 1_200, 0, 0, 1_000)),
            sign(&reading("gw-carol", 1, i, 150, 700, 800, 1_000)),
        ]))
        .await
        .unwrap();
    assert!(
        out.iter().all(|o| o.status == ReadingStatus::Accepted),
        "{out:?}"
    );
    // The result for 14:00 is not due yet (it ends after now); 12:00 is (end + grace < now).
    s.add_result(&result(interval("14:00"), vec![]))
        .await
        .unwrap();
    let settled = s.settle_due().await.unwrap();
    assert_eq!(settled, vec![i.key()]);
}

async fn full_flow(backend: &str) {
    let (url, _dir) = database(backend, "settle").await;
    let s = service(&url).await;
    settle_scenario(&s).await;
    let i = interval("12:00");

    // Statements, to the unit.
    let st = s.statements(None, Some(&i.key())).await.unwrap();
    let by = |p: &str| {
        st.iter()
            .find(|x| x.participant.as_str() == p)
            .unwrap()
            .clone()
    };
    let (alice, bob, carol) = (by("alice"), by("bob"), by("carol"));
    // alice: +200 (1000 Wh @ 200/MWh... in minor units) +8 (100 Wh to utility) −90 (300 Wh shortfall at retail).
    assert_eq!(alice.net.0, 200 + 8 - 90, "{alice:?}");
    // bob: −200 −100 (purchases) +24 (300 Wh untaken at feed-in).
    assert_eq!(bob.net.0, -300 + 24, "{bob:?}");
    // carol: +100 (sale) −60 (utility purchase) +16 (200 Wh surplus) +4 (50 Wh untaken).
    assert_eq!(carol.net.0, 100 - 60 + 16 + 4, "{carol:?}");
    let p2p: i64 = st
        .iter()
        .flat_map(|x| &x.lines)
        .filter(|l| l.counterparty != "utility")
        .map(|l| l.amount.0)
        .sum();
    assert_eq!(p2p, 0);
    // Filters by participant and by the interval's start work too.
    assert_eq!(s.statements(Some("bob"), None).await.unwrap().len(), 1);

    // Tokens: alice's 800 Wh delivered splits 727/73 over her two sales; bob's 1200 Wh
    // consumed splits 800/400 over his purchases: mints 727 (alice→bob) + 400 (carol→bob).
    assert_eq!(bob.tokens, Wh(1_127));
    let balances = json(&s.balances("bob").await.unwrap());
    assert_eq!(balances["balance"], 1_127);
    let holdings = balances["holdings"].as_array().unwrap();
    assert_eq!(holdings.len(), 2);
    let from_alice = holdings
        .iter()
        .find(|h| h["provenance"]["seller"] == "alice")
        .unwrap()
        .clone();
    assert_eq!(from_alice["amount"], 727);
    assert_eq!(from_alice["provenance"]["source"], "pv");
    assert_eq!(from_alice["provenance"]["price"], 200_000);
    assert_eq!(from_alice["provenance"]["interval"], i.key());
    let alice_digest = sign(&reading("gw-alice", 1, i, 0, 800, 900, 1_000)).digest_hex();
    assert_eq!(from_alice["provenance"]["seller_readings"][0], alice_digest);
    assert_eq!(s.metrics.tokens_minted_wh.get(), 1_127);

    // Settling again changes nothing.
    let before = (
        count(&s, "entries").await,
        count(&s, "blocks").await,
        count(&s, "statements").await,
    );
    assert_eq!(
        s.settle(&i.key()).await.unwrap(),
        SettleOutcome::AlreadySettled
    );
    let after = (
        count(&s, "entries").await,
        count(&s, "blocks").await,
        count(&s, "statements").await,
    );
    assert_eq!(before, after);

    // A partial transfer and a retirement.
    let lot_a = from_alice["lot"].as_str().unwrap().to_owned();
    let t = transfer("bob", "carol", &lot_a, 300, 1, "bob");
    let receipt = s.transfer(t.clone()).await.unwrap();
    assert!(!receipt.duplicate);
    assert!(
        s.transfer(t).await.unwrap().duplicate,
        "a replayed transfer applies once"
    );
    let forged = transfer("bob", "carol", &lot_a, 10, 2, "carol");
    assert!(matches!(
        s.transfer(forged).await,
        Err(ServiceError::Forbidden(_))
    ));
    let too_much = transfer("bob", "carol", &lot_a, 428, 3, "bob");
    assert!(matches!(
        s.transfer(too_much).await,
        Err(ServiceError::Conflict(_))
    ));
    let r = s
        .retire(retire("carol", &receipt.lot, 100, 1))
        .await
        .unwrap();
    assert_eq!(r.lot, receipt.lot);
    let over = s.retire(retire("carol", &receipt.lot, 201, 2)).await;
    assert!(matches!(over, Err(ServiceError::Conflict(_))), "{over:?}");
    assert_eq!(json(&s.balances("bob").await.unwrap())["balance"], 827);
    let c = json(&s.balances("carol").await.unwrap());
    assert_eq!(
        (c["balance"].as_i64(), c["retired"].as_i64()),
        (Some(200), Some(100))
    );
    assert_eq!(c["holdings"][0]["parent_lot"], lot_a.as_str());
    assert_eq!(
        c["holdings"][0]["provenance"]["seller"], "alice",
        "provenance follows the tokens"
    );

    // The next interval's block seals the transfer and the retirement, with proofs.
    let i2 = interval("12:15");
    s.add_result(&result(i2, vec![])).await.unwrap();
    assert_eq!(
        s.settle(&i2.key()).await.unwrap(),
        SettleOutcome::Settled { height: 1 }
    );
    let block = json(&s.block(1).await.unwrap().unwrap());
    let hashes: Vec<&str> = block["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(hashes, vec![receipt.entry.as_str(), r.entry.as_str()]);
    for h in hashes {
        let e = json(&s.entry(h).await.unwrap().unwrap());
        let proof: Vec<settlement::ledger::ProofStep> =
            serde_json::from_value(e["proof"].clone()).unwrap();
        assert!(verify_proof(
            lot(h),
            &proof,
            lot(block["merkle_root"].as_str().unwrap())
        ));
    }
    let b0 = json(&s.block(0).await.unwrap().unwrap());
    assert_eq!(block["prev_hash"], b0["hash"]);

    let report = audit::verify(s.db(), Some(s.authority())).await.unwrap();
    assert_eq!(
        (
            report.blocks,
            report.entries,
            report.mints,
            report.lots,
            report.readings
        ),
        (2, 4, 2, 3, 3)
    );
    let other = gridmesh_protocol::keys::SigningKeyPair::from_seed([7; 32]).public_key();
    let err = audit::verify(s.db(), Some(other))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("block 0") && err.contains("not by the settlement authority"),
        "{err}"
    );

    tamper(&s).await;
}

async fn get_blob(pool: &sqlx::AnyPool, sql: &str, key_col: &str, key: &str) -> Vec<u8> {
    let q = sqlx::query(sql);
    let q = if key_col == "reading_key" {
        q.bind(key.to_owned())
    } else {
        q.bind(key.parse::<i64>().unwrap())
    };
    q.fetch_one(pool).await.unwrap().get(0)
}

async fn set_blob(pool: &sqlx::AnyPool, sql: &str, key_col: &str, key: &str, value: Vec<u8>) {
    let q = sqlx::query(sql).bind(value);
    let q = if key_col == "reading_key" {
        q.bind(key.to_owned())
    } else {
        q.bind(key.parse::<i64>().unwrap())
    };
    q.execute(pool).await.unwrap();
}

/// Flips one byte of each kind of stored record; the audit names it; restoring fixes it.
async fn tamper(s: &Service) {
    let pool = &s.db().pool;
    let targets: [(&str, &str, &str, &str, &str); 6] = [
        ("entries", "body", "seq", "1", "ledger entry #1"),
        ("entries", "body", "seq", "3", "ledger entry #3"),
        ("blocks", "header", "height", "0", "block 0"),
        ("blocks", "signature", "height", "1", "block 1"),
        (
            "readings",
            "payload",
            "reading_key",
            "gw-bob/home/1782043200",
            "reading gw-bob/home/1782043200",
        ),
        (
            "readings",
            "signature",
            "reading_key",
            "gw-alice/home/1782043200",
            "reading gw-alice/home/1782043200",
        ),
    ];
    for (table, column, key_col, key, expect) in targets {
        let select = format!("SELECT {column} FROM {table} WHERE {key_col} = $1");
        let update = format!("UPDATE {table} SET {column} = $1 WHERE {key_col} = $2");
        let original = get_blob(pool, &select, key_col, key).await;
        let mut flipped = original.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x01;
        set_blob(pool, &update, key_col, key, flipped).await;
        let err = audit::verify(s.db(), None).await.unwrap_err().to_string();
        assert!(err.contains(expect), "flipping {table}.{column}: {err}");
        set_blob(pool, &update, key_col, key, original).await;
        audit::verify(s.db(), None).await.unwrap();
    }
    // Balances that disagree with the ledger, and statements whose lines do not add up.
    sqlx::query("UPDATE lots SET remaining = remaining + 1 WHERE holder = 'bob' AND parent_lot IS NULL AND initial = 400")
        .execute(pool)
        .await
        .unwrap();
    let err = audit::verify(s.db(), None).await.unwrap_err().to_string();
    assert!(err.contains("balance of lot"), "{err}");
    sqlx::query("UPDATE lots SET remaining = remaining - 1 WHERE holder = 'bob' AND parent_lot IS NULL AND initial = 400")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE statements SET net = net + 1 WHERE participant = 'carol'")
        .execute(pool)
        .await
        .unwrap();
    let err = audit::verify(s.db(), None).await.unwrap_err().to_string();
    assert!(err.contains("statement of carol"), "{err}");
    sqlx::query("UPDATE statements SET net = net - 1 WHERE participant = 'carol'")
        .execute(pool)
        .await
        .unwrap();
    audit::verify(s.db(), None).await.unwrap();
}

#[tokio::test]
async fn settle_mint_transfer_retire_audit_sqlite() {
    full_flow("sqlite").await;
}

#[tokio::test]
async fn settle_mint_transfer_retire_audit_postgres() {
    full_flow("postgres").await;
}

/// Regressions: a stored entry hash that is not hex made `hex32` read zeros (a wrong inclusion
/// proof, served as fine); a gateway registration that does not parse was skipped by the audit
/// (its readings then went unchecked against its key). Both are reported as corruption now.
async fn corrupt_rows(backend: &str) {
    let (url, _dir) = database(backend, "corrupt").await;
    let s = service(&url).await;
    settle_scenario(&s).await;
    let pool = &s.db().pool;
    let hashes: Vec<String> =
        sqlx::query_scalar("SELECT hash FROM entries WHERE block_height = 0 ORDER BY seq")
            .fetch_all(pool)
            .await
            .unwrap();
    assert!(hashes.len() >= 2, "{hashes:?}");
    assert!(s.entry(&hashes[0]).await.unwrap().unwrap().proof.is_some());
    let corrupt = format!("zz{}", &hashes[1][2..]);
    sqlx::query("UPDATE entries SET hash = $1 WHERE hash = $2")
        .bind(corrupt.clone())
        .bind(hashes[1].clone())
        .execute(pool)
        .await
        .unwrap();
    match s.entry(&hashes[0]).await {
        Err(ServiceError::Store(StoreError::Corrupt(m))) => assert!(m.contains(&corrupt), "{m}"),
        other => panic!("a corrupt sibling hash must be an error, got {other:?}"),
    }
    sqlx::query("UPDATE entries SET hash = $1 WHERE hash = $2")
        .bind(hashes[1].clone())
        .bind(corrupt)
        .execute(pool)
        .await
        .unwrap();
    audit::verify(s.db(), None).await.unwrap();

    let body: String = sqlx::query_scalar("SELECT body FROM gateways WHERE gateway = 'gw-alice'")
        .fetch_one(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE gateways SET body = 'not json' WHERE gateway = 'gw-alice'")
        .execute(pool)
        .await
        .unwrap();
    let err = audit::verify(s.db(), None).await.unwrap_err().to_string();
    assert!(
        err.contains("gateway gw-alice") && err.contains("does not parse"),
        "{err}"
    );
    sqlx::query("UPDATE gateways SET body = $1 WHERE gateway = 'gw-alice'")
        .bind(body)
        .execute(pool)
        .await
        .unwrap();
    audit::verify(s.db(), None).await.unwrap();
}

#[tokio::test]
async fn corrupt_hashes_and_gateway_rows_are_reported_sqlite() {
    corrupt_rows("sqlite").await;
}

#[tokio::test]
async fn corrupt_hashes_and_gateway_rows_are_reported_postgres() {
    corrupt_rows("postgres").await;
}

async fn withheld(backend: &str) {
    let (url, _dir) = database(backend, "withheld").await;
    let s = service(&url).await;
    let i = interval("12:30");
    s.add_result(&result(
        i,
        vec![trade(order("alice", "a"), order("bob", "b"), 500, 150_000)],
    ))
    .await
    .unwrap();
    // 3100 Wh in 15 min is more than 8 kW + 4 kW can deliver (3000 Wh): flagged.
    let out = s
        .ingest(submit(&[
            sign(&reading("gw-alice", 1, i, 0, 3_100, 3_200, 1_000)),
            sign(&reading("gw-bob", 1, i, 500, 0, 0, 1_000)),
        ]))
        .await
        .unwrap();
    assert_eq!(out[0].code.unwrap().as_str(), "implausible_export");
    s.settle(&i.key()).await.unwrap();
    assert_eq!(
        json(&s.balances("bob").await.unwrap())["balance"],
        0,
        "not tokenized while flagged"
    );
    // A flagged reading moves no money either: alice is settled as without readings.
    let alice = &s.statements(Some("alice"), None).await.unwrap()[0];
    assert_eq!(alice.delivered, Wh(0));
    assert_eq!(alice.exported, Wh(0));
    assert!(alice.estimated);
    assert!(alice.lines.iter().all(|l| l.kind != "surplus_export"));
    audit::verify(s.db(), None).await.unwrap();
    let q = json(&s.quarantine(10).await.unwrap());
    let id = q[0]["id"].as_i64().unwrap();
    assert_eq!(q[0]["acceptable"], true);
    assert_eq!(s.accept_quarantined(id).await.unwrap(), 1);
    assert_eq!(json(&s.balances("bob").await.unwrap())["balance"], 500);
    // Accepted: the interval's statements are corrected from the now trusted reading.
    let alice = &s.statements(Some("alice"), None).await.unwrap()[0];
    assert_eq!(alice.delivered, Wh(500));
    // Capped at the site's rating (8 kW + 4 kW over 15 min), not the metered 3100 Wh.
    assert_eq!(alice.exported, Wh(3_000));
    assert!(!alice.estimated);
    assert_eq!(s.statements(None, Some(&i.key())).await.unwrap().len(), 2);
    audit::verify(s.db(), None).await.unwrap();
    assert_eq!(
        s.accept_quarantined(id).await.unwrap(),
        0,
        "accepting twice releases nothing more"
    );
    // A forged reading can never be accepted.
    let mut bad = sign(&reading("gw-carol", 1, i, 1, 1, 1, 1));
    bad.signature[0] ^= 1;
    s.ingest(submit(&[bad])).await.unwrap();
    let forged_id = json(&s.quarantine(1).await.unwrap())[0]["id"]
        .as_i64()
        .unwrap();
    assert!(matches!(
        s.accept_quarantined(forged_id).await,
        Err(ServiceError::Conflict(_))
    ));
    s.add_result(&result(interval("12:45"), vec![]))
        .await
        .unwrap();
    s.settle(&interval("12:45").key()).await.unwrap();
    let report = audit::verify(s.db(), None).await.unwrap();
    assert_eq!(report.mints, 1);
}

#[tokio::test]
async fn flagged_reading_withholds_mint_until_accepted_sqlite() {
    withheld("sqlite").await;
}

#[tokio::test]
async fn flagged_reading_withholds_mint_until_accepted_postgres() {
    withheld("postgres").await;
}

/// A failure in the middle of settling (here: the block insert, after the statements and mints
/// were written inside the transaction) leaves nothing of the interval behind; settling again
/// once the cause is gone works.
async fn failure_mid_settlement(backend: &str) {
    let (url, _dir) = database(backend, "crash").await;
    let s = service(&url).await;
    let i = interval("12:00");
    s.add_result(&result(
        i,
        vec![trade(order("alice", "a"), order("bob", "b"), 400, 100_000)],
    ))
    .await
    .unwrap();
    s.ingest(submit(&[
        sign(&reading("gw-alice", 1, i, 0, 400, 500, 1_000)),
        sign(&reading("gw-bob", 1, i, 400, 0, 0, 1_000)),
    ]))
    .await
    .unwrap();
    // A stray block row for the same interval makes the block insert fail late.
    sqlx::query(
        "INSERT INTO blocks (height, interval_key, header, hash, signature, public_key) VALUES (99, $1, $2, 'x', $3, 'k')",
    )
    .bind(i.key())
    .bind(vec![0u8])
    .bind(vec![0u8])
    .execute(&s.db().pool)
    .await
    .unwrap();
    let err = s.settle(&i.key()).await;
    assert!(matches!(err, Err(ServiceError::Store(_))), "{err:?}");
    for table in ["statements", "entries", "lots", "withheld_mints"] {
        assert_eq!(count(&s, table).await, 0, "{table} must be untouched");
    }
    let settled: i64 = sqlx::query_scalar("SELECT settled FROM results")
        .fetch_one(&s.db().pool)
        .await
        .unwrap();
    assert_eq!(settled, 0);
    sqlx::query("DELETE FROM blocks WHERE height = 99")
        .execute(&s.db().pool)
        .await
        .unwrap();
    assert_eq!(
        s.settle(&i.key()).await.unwrap(),
        SettleOutcome::Settled { height: 0 }
    );
    assert_eq!(json(&s.balances("bob").await.unwrap())["balance"], 400);
    audit::verify(s.db(), None).await.unwrap();
}

#[tokio::test]
async fn failure_mid_settlement_writes_nothing_sqlite() {
    failure_mid_settlement("sqlite").await;
}

#[tokio::test]
async fn failure_mid_settlement_writes_nothing_postgres() {
    failure_mid_settlement("postgres").await;
}

/// Issue 14, item 1: a flagged reading moves neither money nor tokens.
async fn flagged_export_pays_nothing(backend: &str) {
    let (url, _dir) = database(backend, "flagged_money").await;
    let s = service(&url).await;
    let i = interval("12:30");
    s.add_result(&result(
        i,
        vec![trade(order("alice", "a"), order("bob", "b"), 500, 150_000)],
    ))
    .await
    .unwrap();
    let out = s
        .ingest(submit(&[
            sign(&reading(
                "gw-alice",
                1,
                i,
                0,
                1_000_000_000_000_000,
                0,
                1_000,
            )),
            sign(&reading("gw-bob", 1, i, 500, 0, 0, 1_000)),
        ]))
        .await
        .unwrap();
    assert_eq!(out[0].code.unwrap().as_str(), "implausible_export");
    s.settle(&i.key()).await.unwrap();
    let alice = &s.statements(Some("alice"), None).await.unwrap()[0];
    // Only the firm trade and its shortfall: nothing for the flagged 10^15 Wh export.
    let kinds: Vec<&str> = alice.lines.iter().map(|l| l.kind.as_str()).collect();
    assert_eq!(kinds, vec!["trade_sale", "shortfall"]);
    assert!(alice.net.0 <= alice.lines[0].amount.0, "{alice:?}");
    assert_eq!(alice.exported, Wh(0));
    assert_eq!(alice.tokens, Wh(0));
    let bob = &s.statements(Some("bob"), None).await.unwrap()[0];
    assert_eq!(bob.tokens, Wh(0));
    assert_eq!(json(&s.balances("bob").await.unwrap())["balance"], 0);
    audit::verify(s.db(), None).await.unwrap();
}

#[tokio::test]
async fn a_flagged_export_earns_no_money_and_no_tokens_sqlite() {
    flagged_export_pays_nothing("sqlite").await;
}

#[tokio::test]
async fn a_flagged_export_earns_no_money_and_no_tokens_postgres() {
    flagged_export_pays_nothing("postgres").await;
}

/// Issue 14, item 1: two devices at i64::MAX export never wrap a sum.
async fn max_exports_do_not_wrap(backend: &str) {
    let (url, _dir) = database(backend, "max_exports").await;
    let s = service(&url).await;
    let i = interval("12:30");
    s.add_result(&result(i, vec![])).await.unwrap();
    let mut envs = Vec::new();
    for (seq, device) in [(1, "home"), (2, "shed")] {
        let mut r = reading("gw-alice", seq, i, 0, 0, 0, 0);
        r.device = gridmesh_protocol::DeviceId::new(device).unwrap();
        r.registers.grid_export = Wh(i64::MAX);
        r.deltas.grid_export = Wh(i64::MAX);
        envs.push(sign(&r));
    }
    let out = s.ingest(submit(&envs)).await.unwrap();
    let codes: Vec<Option<&str>> = out.iter().map(|o| o.code.map(|c| c.as_str())).collect();
    assert_eq!(
        codes,
        vec![Some("implausible_export"), Some("implausible_export")]
    );
    s.settle(&i.key()).await.unwrap();
    // Settled without the flagged energy: no statement claims a wrapped (negative) export.
    for st in s.statements(None, Some(&i.key())).await.unwrap() {
        assert!(st.exported.0 >= 0, "{st:?}");
        assert_eq!(st.net.0, 0, "{st:?}");
    }
    audit::verify(s.db(), None).await.unwrap();
    // Accepting both is fine: each counts at most the site's rating (3000 Wh), so the
    // interval's sums cannot overflow.
    let q = json(&s.quarantine(10).await.unwrap());
    let ids: Vec<i64> = q
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    s.accept_quarantined(ids[0]).await.unwrap();
    s.accept_quarantined(ids[1]).await.unwrap();
    let alice = &s.statements(Some("alice"), Some(&i.key())).await.unwrap()[0];
    assert_eq!(alice.exported, Wh(6_000), "{alice:?}");
    audit::verify(s.db(), None).await.unwrap();
}

#[tokio::test]
async fn two_devices_at_i64_max_do_not_wrap_sqlite() {
    max_exports_do_not_wrap("sqlite").await;
}

#[tokio::test]
async fn two_devices_at_i64_max_do_not_wrap_postgres() {
    max_exports_do_not_wrap("postgres").await;
}
