//! The radial grid the market clears on: substation (root) → feeders → laterals → homes.
//!
//! This is the shape of the topology as it travels (market REST, offline books, the dashboard);
//! the market engine validates it and builds its network model from it.

use crate::ids::NodeId;
use crate::units::{PricePerMwh, Wh};
use serde::{Deserialize, Serialize};

/// The connection of one node to its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Branch {
    /// The child node this branch feeds.
    pub node: NodeId,
    /// Its parent (the root or another branch's node).
    pub parent: NodeId,
    /// Most energy per interval flowing from the parent into the subtree; `null` = unlimited.
    pub import_limit_wh: Option<Wh>,
    /// Most energy per interval flowing out of the subtree to the parent; `null` = unlimited.
    pub export_limit_wh: Option<Wh>,
    /// Grid fee for energy crossing the branch in either direction; `null` = none.
    #[serde(default)]
    pub fee_per_mwh: Option<PricePerMwh>,
}

/// The utility at the root: the backstop seller and buyer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UtilityTariff {
    /// The utility sells any quantity at this price; `null` = it does not sell.
    pub retail_price: Option<PricePerMwh>,
    /// The utility buys any quantity at this price; `null` = it does not buy.
    pub feed_in_price: Option<PricePerMwh>,
    /// Most energy per interval the utility sells into the root; `null` = unlimited.
    #[serde(default)]
    pub import_limit_wh: Option<Wh>,
    /// Most energy per interval the utility takes from the root; `null` = unlimited.
    #[serde(default)]
    pub export_limit_wh: Option<Wh>,
    /// What a household is paid per MWh of export beyond its operating envelope: 0 = nothing
    /// (the default), negative = a penalty it pays. Such energy is never tokenized.
    #[serde(default)]
    pub envelope_excess_price: PricePerMwh,
}

/// A whole topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Network {
    /// The substation node, where the utility connects.
    pub root: NodeId,
    /// Every other node's branch to its parent.
    pub branches: Vec<Branch>,
    /// The utility's tariffs and limits.
    pub utility: UtilityTariff,
}

/// An operator's time-ranged override of one branch's limits (a dynamic limit from the grid
/// operator). While in force it replaces the branch's configured limits for clearing and
/// envelopes; `null` keeps the configured limit for that direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LimitOverride {
    /// The market's id for it (assigned on creation).
    #[serde(default)]
    pub id: i64,
    /// The branch's child node.
    pub node: NodeId,
    /// In force from (inclusive; an interval is covered when it starts in `[from, until)`).
    pub from: chrono::DateTime<chrono::Utc>,
    /// In force until (exclusive).
    pub until: chrono::DateTime<chrono::Utc>,
    /// Import limit per interval while in force; `null` = keep the configured one.
    pub import_limit_wh: Option<Wh>,
    /// Export limit per interval while in force; `null` = keep the configured one.
    pub export_limit_wh: Option<Wh>,
    /// Why (shown to operators).
    #[serde(default)]
    pub reason: String,
}
