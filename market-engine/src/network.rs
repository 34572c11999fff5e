//! The radial network model: a validated tree built from `protocol::grid::Network`.
//!
//! Nodes are numbered so that every parent comes before its children (breadth-first from the
//! root); the clearing walks that order top-down and its reverse bottom-up.

use gridmesh_protocol::NodeId;
use gridmesh_protocol::grid::Network;
use std::collections::HashMap;

/// Largest absolute price (minor units per MWh) accepted anywhere: orders, tariffs and fees.
pub const MAX_ABS_PRICE: i64 = 10_000_000;

/// Largest energy (Wh) accepted for one order or one limit: 1 TWh.
pub const MAX_ENERGY_WH: i64 = 1_000_000_000_000;

/// Why a topology is not a usable radial network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// A branch names the root as its child.
    #[error("the root `{0}` cannot also be the child of a branch; remove that branch")]
    RootHasParent(NodeId),
    /// Two branches feed the same node.
    #[error("node `{0}` appears in more than one branch; every node has exactly one parent")]
    DuplicateNode(NodeId),
    /// A branch's parent is neither the root nor another branch's node.
    #[error(
        "branch `{node}` names parent `{parent}`, which is not in the topology; add a branch for `{parent}` or fix the name"
    )]
    UnknownParent {
        /// The branch's node.
        node: NodeId,
        /// The missing parent.
        parent: NodeId,
    },
    /// Some branches form a loop that never reaches the root.
    #[error("nodes {0:?} form a cycle that does not reach the root; a radial network is a tree")]
    Cycle(Vec<String>),
    /// A negative limit or fee.
    #[error("branch `{node}` has a negative {field} ({value}); use a non-negative value or null")]
    Negative {
        /// The branch's node.
        node: NodeId,
        /// Which field.
        field: &'static str,
        /// The value.
        value: i64,
    },
    /// A limit or price beyond the accepted range.
    #[error("{field} {value} is out of range; the largest accepted magnitude is {max}")]
    OutOfRange {
        /// Which field.
        field: String,
        /// The value.
        value: i64,
        /// The bound.
        max: i64,
    },
    /// The utility would buy for more than it sells.
    #[error(
        "the utility's feed-in price {feed_in} exceeds its retail price {retail}; that is an endless arbitrage, fix the tariff"
    )]
    TariffInverted {
        /// Retail price.
        retail: i64,
        /// Feed-in price.
        feed_in: i64,
    },
}

/// One node of the validated tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its id.
    pub id: NodeId,
    /// Its parent's index (`None` for the root).
    pub parent: Option<usize>,
    /// Its children's indices.
    pub children: Vec<usize>,
    /// Most energy into the subtree per interval (`None` = unlimited; always `None` at the root).
    pub import_limit: Option<i64>,
    /// Most energy out of the subtree per interval (`None` = unlimited).
    pub export_limit: Option<i64>,
    /// Fee per MWh crossing the branch to the parent (0 at the root).
    pub fee: i64,
}

/// The utility at the root, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Utility {
    /// It sells at this price (`None` = it does not sell).
    pub retail: Option<i64>,
    /// It buys at this price (`None` = it does not buy).
    pub feed_in: Option<i64>,
    /// Most it sells into the root (`None` = unlimited).
    pub import_limit: Option<i64>,
    /// Most it buys from the root (`None` = unlimited).
    pub export_limit: Option<i64>,
}

/// A validated radial network. Index 0 is the root; parents precede children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    nodes: Vec<Node>,
    index: HashMap<NodeId, usize>,
    /// The utility's tariff at the root.
    pub utility: Utility,
    source: Network,
}

fn check_energy(node: &NodeId, field: &'static str, v: Option<i64>) -> Result<(), NetworkError> {
    match v {
        Some(value) if value < 0 => Err(NetworkError::Negative {
            node: node.clone(),
            field,
            value,
        }),
        Some(value) if value > MAX_ENERGY_WH => Err(NetworkError::OutOfRange {
            field: format!("{field} of branch `{node}`"),
            value,
            max: MAX_ENERGY_WH,
        }),
        _ => Ok(()),
    }
}

fn check_price(field: &str, v: Option<i64>) -> Result<(), NetworkError> {
    match v {
        // Not `value.abs()`: it overflows for i64::MIN (and wrapped past this bound).
        Some(value) if !(-MAX_ABS_PRICE..=MAX_ABS_PRICE).contains(&value) => {
            Err(NetworkError::OutOfRange {
                field: field.to_owned(),
                value,
                max: MAX_ABS_PRICE,
            })
        }
        _ => Ok(()),
    }
}

impl Topology {
    /// Validates a network: one root, every parent known, no node twice, no cycle, limits and
    /// fees non-negative and in range, feed-in not above retail.
    pub fn new(network: &Network) -> Result<Self, NetworkError> {
        let mut parent_of: HashMap<&NodeId, &NodeId> = HashMap::new();
        for b in &network.branches {
            if b.node == network.root {
                return Err(NetworkError::RootHasParent(b.node.clone()));
            }
            if parent_of.insert(&b.node, &b.parent).is_some() {
                return Err(NetworkError::DuplicateNode(b.node.clone()));
            }
            check_energy(&b.node, "import_limit_wh", b.import_limit_wh.map(|w| w.0))?;
            check_energy(&b.node, "export_limit_wh", b.export_limit_wh.map(|w| w.0))?;
            let fee = b.fee_per_mwh.map_or(0, |p| p.0);
            if fee < 0 {
                return Err(NetworkError::Negative {
                    node: b.node.clone(),
                    field: "fee_per_mwh",
                    value: fee,
                });
            }
            check_price(&format!("fee_per_mwh of branch `{}`", b.node), Some(fee))?;
        }
        for b in &network.branches {
            if b.parent != network.root && !parent_of.contains_key(&b.parent) {
                return Err(NetworkError::UnknownParent {
                    node: b.node.clone(),
                    parent: b.parent.clone(),
                });
            }
        }
        let u = &network.utility;
        let utility = Utility {
            retail: u.retail_price.map(|p| p.0),
            feed_in: u.feed_in_price.map(|p| p.0),
            import_limit: u.import_limit_wh.map(|w| w.0),
            export_limit: u.export_limit_wh.map(|w| w.0),
        };
        check_price("utility retail_price", utility.retail)?;
        check_price("utility feed_in_price", utility.feed_in)?;
        check_energy(
            &network.root,
            "utility import_limit_wh",
            utility.import_limit,
        )?;
        check_energy(
            &network.root,
            "utility export_limit_wh",
            utility.export_limit,
        )?;
        if let (Some(retail), Some(feed_in)) = (utility.retail, utility.feed_in) {
            if feed_in > retail {
                return Err(NetworkError::TariffInverted { retail, feed_in });
            }
        }
        // Breadth-first from the root; whatever is not reached sits on a cycle.
        let mut children_of: HashMap<&NodeId, Vec<usize>> = HashMap::new();
        for (i, b) in network.branches.iter().enumerate() {
            children_of.entry(&b.parent).or_default().push(i);
        }
        let mut nodes = vec![Node {
            id: network.root.clone(),
            parent: None,
            children: Vec::new(),
            import_limit: None,
            export_limit: None,
            fee: 0,
        }];
        let mut next = 0;
        while next < nodes.len() {
            let id = nodes[next].id.clone();
            if let Some(kids) = children_of.get(&id) {
                for &bi in kids {
                    let b = &network.branches[bi];
                    let idx = nodes.len();
                    nodes[next].children.push(idx);
                    nodes.push(Node {
                        id: b.node.clone(),
                        parent: Some(next),
                        children: Vec::new(),
                        import_limit: b.import_limit_wh.map(|w| w.0),
                        export_limit: b.export_limit_wh.map(|w| w.0),
                        fee: b.fee_per_mwh.map_or(0, |p| p.0),
                    });
                }
            }
            next += 1;
        }
        if nodes.len() != network.branches.len() + 1 {
            let reached: std::collections::HashSet<&NodeId> = nodes.iter().map(|n| &n.id).collect();
            let mut lost: Vec<String> = network
                .branches
                .iter()
                .filter(|b| !reached.contains(&b.node))
                .map(|b| b.node.to_string())
                .collect();
            lost.sort();
            return Err(NetworkError::Cycle(lost));
        }
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        Ok(Topology {
            nodes,
            index,
            utility,
            source: network.clone(),
        })
    }

    /// The nodes, parents before children; index 0 is the root.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The index of a node, if it exists.
    pub fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The network this topology was built from.
    pub fn network(&self) -> &Network {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmesh_protocol::grid::{Branch, UtilityTariff};
    use gridmesh_protocol::units::{PricePerMwh, Wh};

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn branch(node: &str, parent: &str) -> Branch {
        Branch {
            node: id(node),
            parent: id(parent),
            import_limit_wh: Some(Wh(10)),
            export_limit_wh: None,
            fee_per_mwh: None,
        }
    }

    fn net(branches: Vec<Branch>) -> Network {
        Network {
            root: id("sub"),
            branches,
            utility: UtilityTariff::default(),
        }
    }

    #[test]
    fn builds_parents_before_children() {
        let t = Topology::new(&net(vec![
            branch("h1", "f1"),
            branch("f1", "sub"),
            branch("f2", "sub"),
        ]))
        .unwrap();
        let names: Vec<&str> = t.nodes().iter().map(|n| n.id.as_str()).collect();
        assert_eq!(names, ["sub", "f1", "f2", "h1"]);
        assert_eq!(t.nodes()[3].parent, Some(1));
        assert_eq!(t.index_of(&id("h1")), Some(3));
    }

    #[test]
    fn rejects_bad_trees() {
        let check = |branches, expected: &str| {
            let err = Topology::new(&net(branches)).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        };
        check(vec![branch("f1", "nowhere")], "not in the topology");
        check(
            vec![branch("f1", "sub"), branch("f1", "sub")],
            "more than one branch",
        );
        check(vec![branch("a", "b"), branch("b", "a")], "cycle");
        check(
            vec![branch("sub", "f1"), branch("f1", "sub")],
            "root `sub` cannot",
        );
        let mut neg = branch("f1", "sub");
        neg.export_limit_wh = Some(Wh(-1));
        check(vec![neg], "negative export_limit_wh");
        // Regression (issue 14, item 6a): i64::MIN passed the price bound (`abs()` wrapped).
        for price in [i64::MIN, -MAX_ABS_PRICE - 1, MAX_ABS_PRICE + 1, i64::MAX] {
            let mut tariff = net(vec![]);
            tariff.utility.retail_price = Some(PricePerMwh(price));
            let err = Topology::new(&tariff).unwrap_err().to_string();
            assert!(err.contains("retail_price"), "{err}");
            let mut fee = branch("f1", "sub");
            fee.fee_per_mwh = Some(PricePerMwh(price));
            assert!(Topology::new(&net(vec![fee])).is_err(), "fee {price}");
        }
        let mut huge = branch("f1", "sub");
        huge.import_limit_wh = Some(Wh(i64::MAX));
        check(vec![huge], "import_limit_wh");
        let mut inverted = net(vec![]);
        inverted.utility.retail_price = Some(PricePerMwh(1));
        inverted.utility.feed_in_price = Some(PricePerMwh(2));
        assert!(matches!(
            Topology::new(&inverted),
            Err(NetworkError::TariffInverted { .. })
        ));
    }
}
