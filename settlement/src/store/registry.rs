//! Gateway and participant registrations (the keys readings and token operations are
//! checked against), as the market published them.

use super::StoreError;
use gridmesh_protocol::registry::GatewayEnrollment;
use gridmesh_protocol::rotation::ParticipantWithKeys;
use gridmesh_runtime::db::Database;
use sqlx::AnyPool;

/// Every stored gateway registration (JSON).
pub async fn gateway_bodies(pool: &AnyPool) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT body FROM gateways")
        .fetch_all(pool)
        .await?)
}

/// Every stored participant registration (JSON).
pub async fn participant_bodies(pool: &AnyPool) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT body FROM participants")
        .fetch_all(pool)
        .await?)
}

/// Stores (or updates) gateway registrations in one transaction.
pub async fn upsert_gateways(
    db: &Database,
    gateways: &[GatewayEnrollment],
) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    for g in gateways {
        sqlx::query(
            "INSERT INTO gateways (gateway, body) VALUES ($1, $2) \
             ON CONFLICT (gateway) DO UPDATE SET body = excluded.body",
        )
        .bind(g.gateway.to_string())
        .bind(serde_json::to_string(g).expect("serialisable"))
        .execute(&mut **tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Stores (or updates) participant registrations in one transaction; the body (JSON) keeps
/// every key's validity period, `public_key` the key in force.
pub async fn upsert_participants(
    db: &Database,
    list: &[ParticipantWithKeys],
) -> Result<(), StoreError> {
    let mut tx = db.begin_write().await?;
    for p in list {
        sqlx::query(
            "INSERT INTO participants (participant, public_key, body) VALUES ($1, $2, $3) \
             ON CONFLICT (participant) DO UPDATE SET public_key = excluded.public_key, body = excluded.body",
        )
        .bind(p.participant.id.to_string())
        .bind(p.participant.public_key.to_string())
        .bind(serde_json::to_string(p).expect("serialisable"))
        .execute(&mut **tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
