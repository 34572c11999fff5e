//! Orders: what a trader or a household's gateway signs to buy or sell energy in one interval,
//! and the signed cancellation of an order.
//!
//! An order is signed as `gridmesh/order/v2`, which names the market zone it is for, so an order
//! copied from one zone's market is refused by another's. The v1 layout (no zone) still
//! decodes, with `zone: None`, for what was stored before; markets refuse new v1 orders
//! (docs/protocol.md, "Versions still accepted").

use crate::ids::{NodeId, ParticipantId, ZoneId};
use crate::interval::Interval;
use crate::layout::{LayoutError, Reader, Writer};
use crate::signing::Signable;
use crate::units::{PricePerMwh, Wh};
use serde::{Deserialize, Serialize};

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// A bid: the participant buys up to `quantity` at no more than `limit_price`.
    Buy,
    /// An ask: the participant sells up to `quantity` at no less than `limit_price`.
    Sell,
}

impl Side {
    fn code(self) -> u8 {
        match self {
            Side::Buy => 1,
            Side::Sell => 2,
        }
    }
}

/// A limit order for one delivery interval at one grid node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Order {
    /// The market zone the order is for: signed in the v2 layout, and a market refuses an
    /// order for another zone. `None` only for an order in the legacy v1 layout, which names
    /// no zone (it encodes as v1; markets refuse new v1 orders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneId>,
    /// Who trades (their registered key must sign the order).
    pub participant: ParticipantId,
    /// Where the energy is delivered or taken.
    pub node: NodeId,
    /// The delivery interval.
    pub interval: Interval,
    /// Buy or sell.
    pub side: Side,
    /// The most energy to trade; always positive.
    pub quantity: Wh,
    /// The highest price a buyer pays or the lowest a seller accepts (may be negative).
    pub limit_price: PricePerMwh,
    /// A number the participant never uses twice: it makes every order unique and replays
    /// detectable.
    pub nonce: u64,
}

impl Order {
    /// The tag of the legacy layout, which names no zone.
    pub const V1_TAG: &'static str = "gridmesh/order/v1";
    /// The length of the legacy layout.
    pub const V1_LEN: usize = 17 + 32 + 32 + 8 + 2 + 1 + 8 + 8 + 8;

    /// The tag of the layout this order encodes as: v2 with a zone, v1 without.
    pub fn layout_tag(&self) -> &'static str {
        if self.zone.is_some() {
            <Self as Signable>::TAG
        } else {
            Self::V1_TAG
        }
    }

    fn write_body(&self, w: &mut Writer) {
        w.id(self.participant.as_str())
            .id(self.node.as_str())
            .i64(self.interval.start_unix())
            .u16(self.interval.length().minutes())
            .u8(self.side.code())
            .i64(self.quantity.0)
            .i64(self.limit_price.0)
            .u64(self.nonce);
    }

    fn read_body(r: &mut Reader<'_>, zone: Option<ZoneId>) -> Result<Self, LayoutError> {
        let participant = r.id("participant", ParticipantId::new)?;
        let node = r.id("node", NodeId::new)?;
        let start = r.i64();
        let minutes = r.u16();
        let interval =
            Interval::from_unix(start, minutes.into()).map_err(|e| r.bad("interval_start", e))?;
        let side = match r.u8() {
            1 => Side::Buy,
            2 => Side::Sell,
            other => return Err(r.bad("side", format!("{other} is neither 1 (buy) nor 2 (sell)"))),
        };
        let quantity = r.i64();
        if quantity <= 0 {
            return Err(r.bad("quantity_wh", format!("{quantity} is not positive")));
        }
        let limit_price = PricePerMwh(r.i64());
        let nonce = r.u64();
        Ok(Order {
            zone,
            participant,
            node,
            interval,
            side,
            quantity: Wh(quantity),
            limit_price,
            nonce,
        })
    }
}

impl Signable for Order {
    const TAG: &'static str = "gridmesh/order/v2";
    const LEN: usize = 17 + 32 + 32 + 32 + 8 + 2 + 1 + 8 + 8 + 8;

    /// The v2 bytes, or the v1 bytes for an order without a zone.
    fn encode(&self) -> Vec<u8> {
        match &self.zone {
            Some(zone) => {
                let mut w = Writer::new(Self::TAG, Self::LEN);
                w.id(zone.as_str());
                self.write_body(&mut w);
                w.finish()
            }
            None => {
                let mut w = Writer::new(Self::V1_TAG, Self::V1_LEN);
                self.write_body(&mut w);
                w.finish()
            }
        }
    }

    /// Decodes v2, or v1 (then `zone` is `None`).
    fn decode(bytes: &[u8]) -> Result<Self, LayoutError> {
        if bytes.starts_with(Self::V1_TAG.as_bytes()) {
            let mut r = Reader::new(bytes, Self::V1_TAG, Self::V1_LEN)?;
            return Self::read_body(&mut r, None);
        }
        let mut r = Reader::new(bytes, Self::TAG, Self::LEN)?;
        let zone = r.id("zone", ZoneId::new)?;
        Self::read_body(&mut r, Some(zone))
    }

    fn has_tag(bytes: &[u8]) -> bool {
        bytes.starts_with(Self::TAG.as_bytes()) || bytes.starts_with(Self::V1_TAG.as_bytes())
    }
}

/// A participant's signed request to withdraw one of its orders before gate closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderCancel {
    /// The order's owner.
    pub participant: ParticipantId,
    /// The nonce of the order to cancel.
    pub order_nonce: u64,
}

impl Signable for OrderCancel {
    const TAG: &'static str = "gridmesh/cancel/v1";
    const LEN: usize = 18 + 32 + 8;

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(Self::TAG, Self::LEN);
        w.id(self.participant.as_str()).u64(self.order_nonce);
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Self, LayoutError> {
        let mut r = Reader::new(bytes, Self::TAG, Self::LEN)?;
        Ok(OrderCancel {
            participant: r.id("participant", ParticipantId::new)?,
            order_nonce: r.u64(),
        })
    }
}
