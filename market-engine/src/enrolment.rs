//! One-time enrolment tokens: how a home enrols without the operator's token.
//!
//! `market-engine enrolment-token --participant h042` issues a random 256-bit token, prints it
//! once and stores only its SHA-256 with the participant, an expiry and a used-at time. The
//! token, sent as `Authorization: Bearer <token>`, may only `POST /participants` and
//! `POST /gateways` for that participant; enrolling the gateway uses it up.

use crate::store::{Store, StoreError};
use gridmesh_protocol::ParticipantId;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Every enrolment token starts with this, so a token is recognisable in a config file and
/// never mistaken for the operator's.
pub const PREFIX: &str = "gme_";

/// The default validity of a new token, hours.
pub const DEFAULT_VALID_HOURS: u32 = 72;

/// A freshly issued token (the only time the token itself exists outside the home).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The token to hand to the home: `gme_` and 64 hex digits (256 random bits).
    pub token: String,
    /// The participant it enrols.
    pub participant: ParticipantId,
    /// When it expires, Unix seconds.
    pub expires_at: i64,
}

/// The stored form of a token: SHA-256, hex.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Issues a token for `participant`, valid for `valid_hours` from `now` (Unix seconds), and
/// stores its hash.
pub async fn issue(
    store: &Store,
    participant: &ParticipantId,
    valid_hours: u32,
    now: i64,
) -> Result<IssuedToken, StoreError> {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let token = format!("{PREFIX}{}", hex::encode(secret));
    let expires_at = now + i64::from(valid_hours) * 3600;
    store
        .insert_enrolment_token(&token_sha256(&token), participant, now, expires_at)
        .await?;
    Ok(IssuedToken {
        token,
        participant: participant.clone(),
        expires_at,
    })
}
