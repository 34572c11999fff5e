//! Who may sign what: participants and their gateways, as registered with the market.

use crate::ids::{GatewayId, NodeId, ParticipantId};
use crate::signing::PublicKey;
use serde::{Deserialize, Serialize};

/// What kind of participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ParticipantKind {
    /// A household with a gateway.
    Household,
    /// A trader without physical assets.
    Trader,
}

/// A participant as registered with the market.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Participant {
    /// Its id.
    pub id: ParticipantId,
    /// The key that signs its orders and token operations.
    pub public_key: PublicKey,
    /// Its grid node.
    pub node: NodeId,
    /// Household or trader.
    pub kind: ParticipantKind,
}

/// A gateway enrolment: the key that signs a household's readings and what its site can
/// physically do (for plausibility checks in settlement).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GatewayEnrollment {
    /// The gateway.
    pub gateway: GatewayId,
    /// The household it meters.
    pub participant: ParticipantId,
    /// The household's grid node.
    pub node: NodeId,
    /// The key that signs its readings.
    pub public_key: PublicKey,
    /// Rated AC power of the PV inverter, W (0 = none).
    pub inverter_w: u32,
    /// Rated discharge power of the battery, W (0 = none).
    pub battery_w: u32,
    /// Site latitude in millionths of a degree (north positive), for the night-time PV check.
    pub latitude_microdeg: i32,
    /// Site longitude in millionths of a degree (east positive).
    pub longitude_microdeg: i32,
}
