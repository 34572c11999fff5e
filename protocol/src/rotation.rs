//! Key rotation: a participant replaces its registered key by a request signed with the key in
//! force, and the market keeps each key's validity period.
//!
//! A [`KeyRotation`] is signed by the participant's current key and names the new key and the
//! moment (Unix seconds) from which it signs. From then on the old key is refused; the
//! market serves every key's period ([`KeyPeriod`]) with the participant
//! ([`ParticipantWithKeys`]), so settlement can tell which key was valid when something was
//! signed.

use crate::ids::ParticipantId;
use crate::layout::{LayoutError, Reader, Writer};
use crate::registry::Participant;
use crate::signing::{PublicKey, Signable};
use serde::{Deserialize, Serialize};

/// A participant's signed request to replace its key (`gridmesh/rotate/v1`), signed by the
/// key in force when it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyRotation {
    /// The participant whose key changes.
    pub participant: ParticipantId,
    /// The key that signs from `valid_from` on.
    pub new_public_key: PublicKey,
    /// When the new key takes over, Unix seconds; the old key is valid until then.
    pub valid_from: i64,
    /// A number the participant never uses twice for a rotation (replays are refused).
    pub nonce: u64,
}

impl Signable for KeyRotation {
    const TAG: &'static str = "gridmesh/rotate/v1";
    const LEN: usize = 18 + 32 + 32 + 8 + 8;

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(Self::TAG, Self::LEN);
        w.id(self.participant.as_str())
            .bytes(&self.new_public_key.0)
            .i64(self.valid_from)
            .u64(self.nonce);
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Self, LayoutError> {
        let mut r = Reader::new(bytes, Self::TAG, Self::LEN)?;
        Ok(KeyRotation {
            participant: r.id("participant", ParticipantId::new)?,
            new_public_key: PublicKey(r.digest()),
            valid_from: r.i64(),
            nonce: r.u64(),
        })
    }
}

/// One key of a participant and when it was valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyPeriod {
    /// The key.
    pub public_key: PublicKey,
    /// From when it signs, Unix seconds (0: since registration, or before rotation existed).
    pub valid_from: i64,
    /// Until when it signs, Unix seconds, exclusive (`None`: the latest key, valid on).
    pub valid_until: Option<i64>,
}

impl KeyPeriod {
    /// Whether the key is valid at `t` (Unix seconds).
    pub fn covers(&self, t: i64) -> bool {
        self.valid_from <= t && self.valid_until.is_none_or(|until| t < until)
    }
}

/// A participant as the market serves it: the registered record (whose `public_key` is the key
/// in force now) and every key's validity period, oldest first. Readers that know only
/// [`Participant`] parse it unchanged; `keys` defaults to empty for answers without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParticipantWithKeys {
    /// The participant, with the key in force now.
    #[serde(flatten)]
    pub participant: Participant,
    /// Every key it has had, oldest first.
    #[serde(default)]
    pub keys: Vec<KeyPeriod>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKeyPair;
    use crate::signing::SignedEnvelope;

    fn rotation() -> KeyRotation {
        KeyRotation {
            participant: ParticipantId::new("h042").unwrap(),
            new_public_key: SigningKeyPair::from_seed([9; 32]).public_key(),
            valid_from: 1_782_043_200,
            nonce: 7,
        }
    }

    #[test]
    fn round_trips_with_its_tag_and_length() {
        let r = rotation();
        let bytes = r.encode();
        assert_eq!(bytes.len(), 98);
        assert_eq!(KeyRotation::LEN, 98);
        assert!(bytes.starts_with(b"gridmesh/rotate/v1"));
        assert_eq!(&bytes[50..82], &r.new_public_key.0);
        assert_eq!(&bytes[82..90], &1_782_043_200i64.to_be_bytes());
        assert_eq!(&bytes[90..98], &7u64.to_be_bytes());
        assert_eq!(KeyRotation::decode(&bytes).unwrap(), r);
    }

    #[test]
    fn refuses_another_tag_or_length() {
        let mut bytes = rotation().encode();
        bytes.push(0);
        assert!(matches!(
            KeyRotation::decode(&bytes),
            Err(LayoutError::WrongLength { .. })
        ));
        let cancel = b"gridmesh/cancel/v1".to_vec();
        assert!(matches!(
            KeyRotation::decode(&cancel),
            Err(LayoutError::WrongTag { .. })
        ));
    }

    #[test]
    fn signed_by_the_old_key_opens_only_with_it() {
        let old = SigningKeyPair::from_seed([1; 32]);
        let envelope = SignedEnvelope::sign(&rotation(), &old);
        assert_eq!(
            envelope.open_by::<KeyRotation>(&old.public_key()).unwrap(),
            rotation()
        );
        let other = SigningKeyPair::from_seed([2; 32]).public_key();
        assert!(envelope.open_by::<KeyRotation>(&other).is_err());
    }

    #[test]
    fn periods_cover_their_span_and_old_readers_parse_the_record() {
        let p = KeyPeriod {
            public_key: SigningKeyPair::from_seed([1; 32]).public_key(),
            valid_from: 10,
            valid_until: Some(20),
        };
        assert!(!p.covers(9) && p.covers(10) && p.covers(19) && !p.covers(20));
        let participant = Participant {
            id: ParticipantId::new("h042").unwrap(),
            public_key: p.public_key,
            node: crate::NodeId::new("f1").unwrap(),
            kind: crate::registry::ParticipantKind::Household,
        };
        let with = ParticipantWithKeys {
            participant: participant.clone(),
            keys: vec![p],
        };
        let json = serde_json::to_string(&with).unwrap();
        let old: Participant = serde_json::from_str(&json).unwrap();
        assert_eq!(old, participant);
        let without: ParticipantWithKeys =
            serde_json::from_str(&serde_json::to_string(&participant).unwrap()).unwrap();
        assert!(without.keys.is_empty());
    }
}
