//! Integer quantities: energy in watt-hours, money in minor currency units, prices per MWh.
//!
//! Floats never leave the market's solver: everything that is stored, signed, settled or shown
//! is one of these integers. Arithmetic is checked; an overflow is an error, never a wrap.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Neg;

/// An overflow in checked integer arithmetic on energy or money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("arithmetic overflow in {0}")]
pub struct Overflow(pub &'static str);

/// Energy in watt-hours. Positive or negative depending on context (a delta can be negative,
/// an order quantity never is).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Wh(pub i64);

/// Money in minor currency units (for example euro cents).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Money(pub i64);

/// A price in minor currency units per MWh: 25.00 c/kWh = 250 €/MWh = `PricePerMwh(25_000)`.
///
/// One Wh at one unit per MWh costs a millionth of a minor unit, so [`PricePerMwh::cost_of`]
/// rounds; see there for the rule.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct PricePerMwh(pub i64);

macro_rules! checked_integer {
    ($ty:ident, $unit:literal) => {
        impl $ty {
            /// Zero.
            pub const ZERO: $ty = $ty(0);

            /// Checked addition.
            pub fn checked_add(self, other: $ty) -> Result<$ty, Overflow> {
                self.0
                    .checked_add(other.0)
                    .map($ty)
                    .ok_or(Overflow(stringify!($ty)))
            }

            /// Checked subtraction.
            pub fn checked_sub(self, other: $ty) -> Result<$ty, Overflow> {
                self.0
                    .checked_sub(other.0)
                    .map($ty)
                    .ok_or(Overflow(stringify!($ty)))
            }

            /// Checked multiplication by an integer factor.
            pub fn checked_mul(self, factor: i64) -> Result<$ty, Overflow> {
                self.0
                    .checked_mul(factor)
                    .map($ty)
                    .ok_or(Overflow(stringify!($ty)))
            }

            /// Checked sum of an iterator.
            pub fn checked_sum(items: impl IntoIterator<Item = $ty>) -> Result<$ty, Overflow> {
                items
                    .into_iter()
                    .try_fold($ty::ZERO, |acc, item| acc.checked_add(item))
            }

            /// The smaller of two values.
            pub fn min(self, other: $ty) -> $ty {
                if self <= other { self } else { other }
            }

            /// The larger of two values.
            pub fn max(self, other: $ty) -> $ty {
                if self >= other { self } else { other }
            }
        }

        impl Neg for $ty {
            type Output = $ty;
            fn neg(self) -> $ty {
                $ty(-self.0)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} {}", self.0, $unit)
            }
        }
    };
}

checked_integer!(Wh, "Wh");
checked_integer!(Money, "minor units");
checked_integer!(PricePerMwh, "minor units/MWh");

/// Watt-hours in one megawatt-hour.
pub const WH_PER_MWH: i64 = 1_000_000;

impl PricePerMwh {
    /// What `energy` costs at this price, in minor units.
    ///
    /// Rounding rule: the exact value `price × Wh / 1 000 000` is rounded to the nearest minor
    /// unit, halves away from zero. Computed in 128 bits, so only a result that does not fit
    /// an `i64` fails.
    pub fn cost_of(self, energy: Wh) -> Result<Money, Overflow> {
        let exact = i128::from(self.0) * i128::from(energy.0);
        let divisor = i128::from(WH_PER_MWH);
        let rounded = (exact.abs() + divisor / 2) / divisor * exact.signum();
        i64::try_from(rounded)
            .map(Money)
            .map_err(|_| Overflow("PricePerMwh::cost_of"))
    }

    /// The price in minor units per kWh as a float, for display only.
    pub fn per_kwh_for_display(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_half_away_from_zero() {
        // 25.00 c/kWh for 1.2 kWh = 30 c.
        assert_eq!(PricePerMwh(25_000).cost_of(Wh(1_200)), Ok(Money(30)));
        // 1 Wh at 500 000 units/MWh = 0.5 units -> 1; and -0.5 -> -1.
        assert_eq!(PricePerMwh(500_000).cost_of(Wh(1)), Ok(Money(1)));
        assert_eq!(PricePerMwh(500_000).cost_of(Wh(-1)), Ok(Money(-1)));
        assert_eq!(PricePerMwh(499_999).cost_of(Wh(1)), Ok(Money(0)));
        assert_eq!(PricePerMwh(-30_000).cost_of(Wh(1_000)), Ok(Money(-30)));
    }

    #[test]
    fn checked_arithmetic_reports_overflow() {
        assert_eq!(Wh(i64::MAX).checked_add(Wh(1)), Err(Overflow("Wh")));
        assert_eq!(
            Money(i64::MIN).checked_sub(Money(1)),
            Err(Overflow("Money"))
        );
        assert_eq!(Wh::checked_sum([Wh(1), Wh(2), Wh(3)]), Ok(Wh(6)));
        assert!(PricePerMwh(i64::MAX).cost_of(Wh(i64::MAX)).is_err());
    }

    #[test]
    fn serialises_as_plain_integers() {
        assert_eq!(serde_json::to_string(&Wh(42)).unwrap(), "42");
        assert_eq!(serde_json::from_str::<Money>("-7").unwrap(), Money(-7));
    }
}
