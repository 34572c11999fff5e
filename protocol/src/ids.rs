//! Identifiers of participants, gateways, devices, grid nodes and market zones.
//!
//! Every identifier is 1 to 32 bytes of `A–Z a–z 0–9 . _ : -`. That keeps them printable in
//! logs, safe in MQTT topics and URLs, and lets the signed layout give each one a fixed
//! 32-byte field (right-padded with zero bytes).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Longest identifier, in bytes: the width of an identifier field in the signed layout.
pub const MAX_ID_LEN: usize = 32;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which kind of identifier.
        kind: &'static str,
    },
    /// The string is longer than [`MAX_ID_LEN`] bytes.
    #[error("{kind} `{value}` is {len} bytes long; at most 32 are allowed")]
    TooLong {
        /// Which kind of identifier.
        kind: &'static str,
        /// The offending value.
        value: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The string holds a character outside `A–Z a–z 0–9 . _ : -`.
    #[error("{kind} `{value}` contains {found:?}; use only letters, digits and . _ : -")]
    BadCharacter {
        /// Which kind of identifier.
        kind: &'static str,
        /// The offending value.
        value: String,
        /// The first character that is not allowed.
        found: char,
    },
}

fn validate(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            value: value.to_owned(),
            len: value.len(),
        });
    }
    if let Some(found) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(IdError::BadCharacter {
            kind,
            value: value.to_owned(),
            found,
        });
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate($kind, &value)?;
                Ok(Self(value))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// Hashes and compares as its string, so maps keyed by the id can be searched by `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

identifier!(
    /// A market participant: a household, a trader or the utility.
    ParticipantId,
    "participant id"
);
identifier!(
    /// An edge gateway (one per household installation).
    GatewayId,
    "gateway id"
);
identifier!(
    /// A metered device set behind a gateway (usually the whole home: inverter, battery, meter).
    DeviceId,
    "device id"
);
identifier!(
    /// A node of the radial grid: the substation, a feeder, a lateral or a home's connection.
    NodeId,
    "node id"
);

/// A market zone: the part of the grid one market-engine clears (its `zone` setting). Signed
/// orders and readings name it (`gridmesh/order/v2`, `gridmesh/reading/v2`), so a message
/// signed for one zone is refused by another.
///
/// The same rules as every identifier (1–32 bytes of `A–Z a–z 0–9 . _ : -`), held inline in
/// its 32-byte layout form, so the id is `Copy` and fits in the services' `Copy` settings.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ZoneId {
    /// The ASCII text, zero-padded (so byte order is the text's order).
    bytes: [u8; MAX_ID_LEN],
    /// The text's length.
    len: u8,
}

impl ZoneId {
    /// Validates and wraps a zone id.
    pub fn new(value: impl AsRef<str>) -> Result<Self, IdError> {
        let value = value.as_ref();
        validate("zone id", value)?;
        let mut bytes = [0u8; MAX_ID_LEN];
        bytes[..value.len()].copy_from_slice(value.as_bytes());
        Ok(ZoneId {
            bytes,
            len: value.len() as u8,
        })
    }

    /// The zone id as a string slice.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).expect("validated ASCII")
    }
}

impl fmt::Display for ZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ZoneId({:?})", self.as_str())
    }
}

impl FromStr for ZoneId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl TryFrom<String> for ZoneId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Self::new(value)
    }
}

impl AsRef<str> for ZoneId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for ZoneId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<String> for ZoneId {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl Serialize for ZoneId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ZoneId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ZoneId::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ZoneId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_ID_LEN))
            .pattern(Some("^[A-Za-z0-9._:-]+$"))
            .description(Some("A market zone id: 1–32 of A–Z a–z 0–9 . _ : -"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ZoneId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(NodeId::new("f1").is_ok());
        assert!(GatewayId::new("gw-h001.home:1_x").is_ok());
        assert_eq!(
            ParticipantId::new(""),
            Err(IdError::Empty {
                kind: "participant id"
            })
        );
        assert!(matches!(
            DeviceId::new("a".repeat(33)),
            Err(IdError::TooLong { len: 33, .. })
        ));
        let err = NodeId::new("feeder 1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "node id `feeder 1` contains ' '; use only letters, digits and . _ : -"
        );
    }

    #[test]
    fn zone_ids_validate_and_compare_as_text() {
        let demo = ZoneId::new("demo").unwrap();
        assert_eq!(demo.as_str(), "demo");
        assert_eq!(demo.to_string(), "demo");
        assert!(demo == *"demo");
        assert!(ZoneId::new("").is_err());
        assert!(ZoneId::new("a".repeat(33)).is_err());
        assert_eq!(
            ZoneId::new("zone a").unwrap_err().to_string(),
            "zone id `zone a` contains ' '; use only letters, digits and . _ : -"
        );
        assert!(ZoneId::new("a").unwrap() < ZoneId::new("aa").unwrap());
        assert!(ZoneId::new("ab").unwrap() < ZoneId::new("b").unwrap());
        assert_eq!(ZoneId::new("z".repeat(32)).unwrap().as_str().len(), 32);
        let json = serde_json::to_string(&demo).unwrap();
        assert_eq!(json, "\"demo\"");
        assert_eq!(serde_json::from_str::<ZoneId>(&json).unwrap(), demo);
        assert!(serde_json::from_str::<ZoneId>("\"a/b\"").is_err());
    }

    #[test]
    fn json_validates() {
        assert!(serde_json::from_str::<NodeId>("\"f/1\"").is_err());
        assert_eq!(
            serde_json::from_str::<NodeId>("\"f1\"").unwrap().as_str(),
            "f1"
        );
    }
}
