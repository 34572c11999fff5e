//! ed25519 signatures over the canonical bytes, and the JSON envelope that carries them.
//!
//! An envelope is `{"payload": base64(bytes), "signature": base64(64 bytes),
//! "public_key": base64(32 bytes)}`. The payload is exactly the bytes that were signed; the
//! receiver verifies the signature over them (strict RFC 8032 verification, which rejects
//! malleable and small-order encodings) and only then decodes them. Nothing is ever re-encoded
//! to be verified.
//!
//! Signing itself needs a key pair and lives beside it in the `keys` module
//! ([`SignedEnvelope::sign`]); this module needs nothing from there.

use crate::layout::LayoutError;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// A message with a canonical signed layout.
pub trait Signable: Sized {
    /// The domain-separation tag the bytes start with, including the version.
    const TAG: &'static str;
    /// The fixed length of the encoded message, tag included.
    const LEN: usize;
    /// The canonical bytes.
    fn encode(&self) -> Vec<u8>;
    /// Parses canonical bytes, validating every field.
    fn decode(bytes: &[u8]) -> Result<Self, LayoutError>;
    /// Whether `bytes` start with a tag this type decodes: [`Signable::TAG`], and for a
    /// message with older layouts still decoded (orders and readings: v1) those tags too.
    fn has_tag(bytes: &[u8]) -> bool {
        bytes.starts_with(Self::TAG.as_bytes())
    }
}

/// Why a signed envelope was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// The signature does not match the payload and public key.
    #[error("the signature does not verify: the payload was altered or signed by another key")]
    BadSignature,
    /// The public key is not a valid ed25519 point.
    #[error("the public key is not a valid ed25519 public key")]
    BadPublicKey,
    /// The envelope was signed by a key other than the one registered for the signer.
    #[error("signed by key {found}, but the registered key is {expected}")]
    KeyMismatch {
        /// The registered key.
        expected: PublicKey,
        /// The key in the envelope.
        found: PublicKey,
    },
    /// The payload does not decode as the expected message.
    #[error("the signed payload is malformed: {0}")]
    Layout(#[from] LayoutError),
}

/// An ed25519 public key (32 bytes), shown and parsed as standard base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The key as a verifier, if it is a valid point.
    pub fn verifying_key(&self) -> Result<VerifyingKey, SigningError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| SigningError::BadPublicKey)
    }

    /// Verifies `signature` over `message` strictly.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), SigningError> {
        self.verifying_key()?
            .verify_strict(message, &Signature::from_bytes(signature))
            .map_err(|_| SigningError::BadSignature)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// Why a public key string was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a public key: expected 32 bytes in standard base64 (44 characters)")]
pub struct PublicKeyParseError(pub String);

impl FromStr for PublicKey {
    type Err = PublicKeyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = BASE64
            .decode(s.trim())
            .map_err(|_| PublicKeyParseError(s.to_owned()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| PublicKeyParseError(s.to_owned()))?;
        Ok(PublicKey(bytes))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for PublicKey {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Byte)))
            .description(Some("An ed25519 public key: 32 bytes in standard base64."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for PublicKey {}

/// Signed canonical bytes with the signature and the signer's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedEnvelope {
    /// The canonical bytes, exactly as signed.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    #[serde(with = "base64_bytes")]
    pub payload: Vec<u8>,
    /// The ed25519 signature over `payload`.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    #[serde(with = "base64_array")]
    pub signature: [u8; 64],
    /// The signer's public key.
    pub public_key: PublicKey,
}

impl SignedEnvelope {
    /// Whether the payload starts with one of `T`'s domain-separation tags (any version `T`
    /// decodes, see [`Signable::has_tag`]).
    pub fn is<T: Signable>(&self) -> bool {
        T::has_tag(&self.payload)
    }

    /// Verifies the signature against the envelope's own public key.
    pub fn verify(&self) -> Result<(), SigningError> {
        self.public_key.verify(&self.payload, &self.signature)
    }

    /// Verifies the signature, then decodes the payload as `T`.
    pub fn open<T: Signable>(&self) -> Result<T, SigningError> {
        self.verify()?;
        Ok(T::decode(&self.payload)?)
    }

    /// Like [`SignedEnvelope::open`], and also requires the signer to be `registered`.
    pub fn open_by<T: Signable>(&self, registered: &PublicKey) -> Result<T, SigningError> {
        if &self.public_key != registered {
            return Err(SigningError::KeyMismatch {
                expected: *registered,
                found: self.public_key,
            });
        }
        self.open()
    }

    /// SHA-256 of the signed payload: the name of this message in provenance records.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.payload).into()
    }

    /// [`SignedEnvelope::digest`] as lowercase hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest())
    }
}

/// Verifies many envelopes at once (ed25519 batch verification, about three times the
/// throughput of one-by-one checks).
///
/// Returns `Ok` only if every signature is valid. On `Err`, at least one is bad: verify them one
/// by one to find which. Batch verification is not strict, so callers that accept a batch
/// should still reject weak keys; [`PublicKey::verifying_key`] followed by
/// `VerifyingKey::is_weak` does that.
pub fn verify_batch(envelopes: &[&SignedEnvelope]) -> Result<(), SigningError> {
    let mut keys = Vec::with_capacity(envelopes.len());
    let mut signatures = Vec::with_capacity(envelopes.len());
    let mut messages = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        let key = envelope.public_key.verifying_key()?;
        if key.is_weak() {
            return Err(SigningError::BadPublicKey);
        }
        keys.push(key);
        signatures.push(Signature::from_bytes(&envelope.signature));
        messages.push(envelope.payload.as_slice());
    }
    ed25519_dalek::verify_batch(&messages, &signatures, &keys)
        .map_err(|_| SigningError::BadSignature)
}

/// Serde helper: bytes as standard base64 (signed payloads, exact body bytes).
pub mod base64_vec {
    pub use super::base64_bytes::{deserialize, serialize};
}

mod base64_bytes {
    use super::BASE64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises bytes as base64.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(bytes))
    }

    /// Parses base64.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        BASE64
            .decode(s)
            .map_err(|e| serde::de::Error::custom(format!("payload is not base64: {e}")))
    }
}

mod base64_array {
    use super::BASE64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let s = String::deserialize(d)?;
        let bytes = BASE64
            .decode(s)
            .map_err(|e| serde::de::Error::custom(format!("signature is not base64: {e}")))?;
        bytes.try_into().map_err(|v: Vec<u8>| {
            serde::de::Error::custom(format!("signature is {} bytes; expected 64", v.len()))
        })
    }
}

/// Serde helper: 32 bytes as lowercase hex (lot ids, digests).
pub mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises 32 bytes as 64 hex characters.
    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    /// Parses 64 hex characters.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out)
            .map_err(|e| serde::de::Error::custom(format!("expected 64 hex characters: {e}")))?;
        Ok(out)
    }
}
