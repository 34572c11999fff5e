//! Holder-signed operations on energy tokens: transferring part of a holding and retiring
//! (claiming) tokens.
//!
//! Tokens are minted by settlement (1 token = 1 Wh of delivered, matched energy). A holding is
//! named by the 32-byte digest of the ledger entry that created it (its *lot*).

use crate::ids::ParticipantId;
use crate::layout::{LayoutError, Reader, Writer};
use crate::signing::Signable;
use crate::units::Wh;
use serde::{Deserialize, Serialize};

/// Move `amount` tokens of one lot from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenTransfer {
    /// The current holder (signs the transfer).
    pub from: ParticipantId,
    /// The recipient.
    pub to: ParticipantId,
    /// The lot: digest of the ledger entry that created the holding.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[0-9a-f]{64}$"))]
    #[serde(with = "crate::signing::hex32")]
    pub lot: [u8; 32],
    /// Tokens (Wh) to move; positive and at most the holding.
    pub amount: Wh,
    /// A number the holder never uses twice.
    pub nonce: u64,
}

impl Signable for TokenTransfer {
    const TAG: &'static str = "gridmesh/transfer/v1";
    const LEN: usize = 20 + 32 + 32 + 32 + 8 + 8;

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(Self::TAG, Self::LEN);
        w.id(self.from.as_str())
            .id(self.to.as_str())
            .bytes(&self.lot)
            .i64(self.amount.0)
            .u64(self.nonce);
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Self, LayoutError> {
        let mut r = Reader::new(bytes, Self::TAG, Self::LEN)?;
        let from = r.id("from", ParticipantId::new)?;
        let to = r.id("to", ParticipantId::new)?;
        let lot = r.digest();
        let amount = r.i64();
        if amount <= 0 {
            return Err(r.bad("amount_wh", format!("{amount} is not positive")));
        }
        Ok(TokenTransfer {
            from,
            to,
            lot,
            amount: Wh(amount),
            nonce: r.u64(),
        })
    }
}

/// Retire (claim) `amount` tokens of one lot: they stay in the ledger as used and can never be
/// transferred again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenRetire {
    /// The holder (signs the retirement).
    pub holder: ParticipantId,
    /// The lot: digest of the ledger entry that created the holding.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[0-9a-f]{64}$"))]
    #[serde(with = "crate::signing::hex32")]
    pub lot: [u8; 32],
    /// Tokens (Wh) to retire; positive and at most the holding.
    pub amount: Wh,
    /// A number the holder never uses twice.
    pub nonce: u64,
}

impl Signable for TokenRetire {
    const TAG: &'static str = "gridmesh/retire/v1";
    const LEN: usize = 18 + 32 + 32 + 8 + 8;

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(Self::TAG, Self::LEN);
        w.id(self.holder.as_str())
            .bytes(&self.lot)
            .i64(self.amount.0)
            .u64(self.nonce);
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Self, LayoutError> {
        let mut r = Reader::new(bytes, Self::TAG, Self::LEN)?;
        let holder = r.id("holder", ParticipantId::new)?;
        let lot = r.digest();
        let amount = r.i64();
        if amount <= 0 {
            return Err(r.bad("amount_wh", format!("{amount} is not positive")));
        }
        Ok(TokenRetire {
            holder,
            lot,
            amount: Wh(amount),
            nonce: r.u64(),
        })
    }
}
