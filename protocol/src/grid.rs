//! The radial grid the market clears on: substation (root) → feeders → laterals → homes.
//!
//! This is the shape of the topology as it travels (market REST, offline books, the dashboard);
//! the market engine validates it and builds its network model from it.

use crate::ids::NodeId;
use crate::units::{PricePerMwh, Wh};
use serde::{Deserialize, Serialize};

/// The connection of one node to its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// A whole topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The substation node, where the utility connects.
    pub root: NodeId,
    /// Every other node's branch to its parent.
    pub branches: Vec<Branch>,
    /// The utility's tariffs and limits.
    pub utility: UtilityTariff,
}
