//! Node prices and the deterministic tie-breaking rules.
//!
//! # Prices (pay-as-clear)
//!
//! Every node gets a price that is a dual of its energy balance: orders priced below it are
//! consumed (sells fill, buys are cut), orders above it are not, and a partly filled order sits
//! exactly at it. Often the duals are not unique (the supply and demand curves meet at a
//! vertical or horizontal gap). The rule, applied top-down:
//!
//! 1. **Root**: the midpoint of the interval of valid prices, rounded down (so a book where
//!    buyers bid 25 000 and sellers ask 20 000 and both fill completely clears at 22 500). An
//!    interval open on one side takes its finite end; with no bound at all the price is 0.
//!    The utility is part of the root, so the root price always lies between the feed-in and
//!    retail prices unless a utility limit binds.
//! 2. **Other nodes**: the valid price closest to the parent's price. With no fee and no
//!    binding limit that *is* the parent's price, so a book where nothing binds has one uniform
//!    price. A flowing branch with a fee separates the prices by exactly the fee; a binding limit
//!    separates them further (congestion).
//!
//! # Ties
//!
//! When several sources offer units at exactly the node price and only some of them are needed:
//! the node's own orders and each child subtree share pro rata to the tied quantity they offer
//! (largest remainder; equal remainders go to the own orders first, then children in topology
//! order). Among a node's own tied orders the utility's purchase is cut first, then
//! participants' sells fill, then participants' buys are cut, and the utility's sale comes last
//! (so local volume at a tie is as large as possible and the utility trades as little as
//! possible); pro rata within each class, equal remainders to the earlier order in the book.
//!
//! # Pay-as-bid
//!
//! Under [`PricingRule::PayAsBid`] quantities are the same (the welfare-maximising ones), but
//! each order is settled at its own limit price.

/// A price standing for "no bound" below every real price.
pub const NEG_INF: i64 = -(1 << 50);
/// A price standing for "no bound" above every real price.
pub const POS_INF: i64 = 1 << 50;

/// How cleared orders are priced (the wire type, re-exported from the protocol).
pub use gridmesh_protocol::api::market::PricingRule;

/// The root's price from its interval of valid duals (rule 1 above).
pub fn choose_root_price(lo: i64, hi: i64) -> i64 {
    let lo_finite = lo > NEG_INF;
    let hi_finite = hi < POS_INF;
    match (lo_finite, hi_finite) {
        (true, true) => lo + (hi - lo).div_euclid(2),
        (true, false) => lo,
        (false, true) => hi,
        (false, false) => 0,
    }
}

/// A child's price: the value closest to the parent's price in the child's own interval of
/// valid duals intersected with what the branch allows (rule 2 above).
pub fn choose_child_price(parent: i64, own: (i64, i64), branch: (i64, i64)) -> i64 {
    let lo = own.0.max(branch.0);
    let hi = own.1.min(branch.1);
    let (lo, hi) = if lo <= hi { (lo, hi) } else { own };
    let p = parent.clamp(lo, hi);
    // A price at a sentinel means "unbounded"; fall back to the nearer finite end.
    p.clamp(NEG_INF + 1, POS_INF - 1)
}

/// Splits `total` units among sources with capacities `weights`, pro rata, integer, by largest
/// remainder (equal remainders: lower index first). Requires `0 ≤ total ≤ Σ weights`.
pub fn pro_rata(total: i64, weights: &[i64]) -> Vec<i64> {
    let sum: i64 = weights.iter().sum();
    if total <= 0 || sum <= 0 {
        return vec![0; weights.len()];
    }
    if total >= sum {
        return weights.to_vec();
    }
    let mut shares = Vec::with_capacity(weights.len());
    let mut remainders = Vec::new();
    let mut given = 0i64;
    for (k, &w) in weights.iter().enumerate() {
        let exact = i128::from(total) * i128::from(w);
        let share = (exact / i128::from(sum)) as i64;
        let rem = exact % i128::from(sum);
        given += share;
        shares.push(share);
        if rem > 0 {
            remainders.push((rem, k));
        }
    }
    let mut left = total - given;
    if left > 0 {
        remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, k) in &remainders {
            if left == 0 {
                break;
            }
            shares[k] += 1;
            left -= 1;
        }
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pro_rata_is_exact_and_deterministic() {
        assert_eq!(pro_rata(10, &[10, 10, 10]), vec![4, 3, 3]);
        assert_eq!(pro_rata(5, &[10, 0, 10]), vec![3, 0, 2]);
        assert_eq!(pro_rata(7, &[3, 4]), vec![3, 4]);
        assert_eq!(pro_rata(0, &[3, 4]), vec![0, 0]);
        assert_eq!(pro_rata(3, &[]), Vec::<i64>::new());
    }

    #[test]
    fn price_choice() {
        assert_eq!(choose_root_price(20_000, 25_000), 22_500);
        assert_eq!(choose_root_price(-3, 0), -2);
        assert_eq!(choose_root_price(NEG_INF, 7), 7);
        assert_eq!(choose_root_price(NEG_INF, POS_INF), 0);
        assert_eq!(choose_child_price(100, (0, 50), (NEG_INF, POS_INF)), 50);
        assert_eq!(choose_child_price(100, (0, 500), (110, 110)), 110);
    }
}
