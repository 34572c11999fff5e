//! Signed requests: how a participant proves who it is when it reads its own data.
//!
//! A participant (a household's gateway, a trader's CLI) signs a short [`RequestProof`] with
//! its registered key and sends it with the request in one header:
//!
//! ```text
//! Authorization: Gridmesh <base64 payload>.<base64 signature>
//! ```
//!
//! The payload is the canonical `gridmesh/request/v1` layout (91 bytes, see
//! `docs/protocol.md`): the participant, the time of signing and the SHA-256 of
//! `METHOD SP path-and-query LF body` ([`request_digest`]). The server looks up the
//! participant's registered key, verifies the signature, recomputes the digest from the request
//! it received and accepts the proof only within [`MAX_SKEW_SECS`] of its own clock. A proof
//! therefore authorises exactly one request (method, path, query and body), for a few minutes,
//! and reveals nothing that lets anyone sign another.
//!
//! A gateway proves in the same way that a batch of readings it uploads (`POST /readings` on
//! settlement) comes from it: a [`GatewayRequestProof`] (`gridmesh/gateway-request/v1`, 99
//! bytes) signed by the gateway's enrolled key, in the header
//! `Authorization: GridmeshGateway <base64 payload>.<base64 signature>`
//! ([`gateway_authorization`], [`SignedGatewayRequest`]). The digest covers the whole body, so
//! the proof authorises exactly that batch.

use crate::ids::{GatewayId, IdError, ParticipantId};
use crate::keys::SigningKeyPair;
use crate::layout::{LayoutError, Reader, Writer};
use crate::signing::{PublicKey, Signable, SigningError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// The `Authorization` scheme of a signed request.
pub const SCHEME: &str = "Gridmesh";

/// The `Authorization` scheme of a gateway's signed request (a batch upload).
pub const GATEWAY_SCHEME: &str = "GridmeshGateway";

/// How far (seconds) a proof's `signed_at` may be from the server's clock, either way.
pub const MAX_SKEW_SECS: i64 = 300;

/// The [`Signable`] layout and the [`Proof`] plumbing of a proof type `$proof` whose signer is
/// the field `$field` of type `$signer`: tag `$tag`, then the id, `signed_at` and the digest;
/// header scheme `$scheme`; a bad signature is `RequestAuthError::$error`.
macro_rules! proof_layout {
    ($proof:ident, $field:ident: $signer:ty, $tag:literal, $scheme:expr, $error:ident) => {
        impl Signable for $proof {
            const TAG: &'static str = $tag;
            const LEN: usize = $tag.len() + 32 + 8 + 32;

            fn encode(&self) -> Vec<u8> {
                encode_proof(self)
            }

            fn decode(bytes: &[u8]) -> Result<Self, LayoutError> {
                decode_proof(bytes)
            }
        }

        impl Proof for $proof {
            type Signer = $signer;
            const SCHEME: &'static str = $scheme;
            const SIGNER_FIELD: &'static str = stringify!($field);

            fn new($field: $signer, signed_at: i64, request_digest: [u8; 32]) -> Self {
                $proof {
                    $field,
                    signed_at,
                    request_digest,
                }
            }

            fn parts(&self) -> (&$signer, i64, &[u8; 32]) {
                (&self.$field, self.signed_at, &self.request_digest)
            }

            fn signature_error($field: $signer, source: SigningError) -> RequestAuthError {
                RequestAuthError::$error { $field, source }
            }
        }
    };
}

/// What a participant signs to authorise one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestProof {
    /// Who asks.
    pub participant: ParticipantId,
    /// When it was signed, Unix seconds (UTC).
    pub signed_at: i64,
    /// [`request_digest`] of the request it authorises.
    pub request_digest: [u8; 32],
}

proof_layout!(
    RequestProof,
    participant: ParticipantId,
    "gridmesh/request/v1",
    SCHEME,
    Signature
);

/// What participant and gateway proofs share: one layout (tag, the signer's id, `signed_at` as
/// i64, the 32-byte [`request_digest`]) and one header form (`<scheme> <base64 payload>.<base64
/// signature>`); they differ in the signer's kind, the tag and the scheme.
trait Proof: Signable {
    /// The signer's id.
    type Signer: Clone + AsRef<str> + TryFrom<String, Error = IdError>;
    /// The `Authorization` scheme.
    const SCHEME: &'static str;
    /// The signer's field name in layout errors.
    const SIGNER_FIELD: &'static str;
    /// A proof from its fields.
    fn new(signer: Self::Signer, signed_at: i64, request_digest: [u8; 32]) -> Self;
    /// The proof's fields: signer, `signed_at`, request digest.
    fn parts(&self) -> (&Self::Signer, i64, &[u8; 32]);
    /// The refusal of a signature that does not verify with `signer`'s key.
    fn signature_error(signer: Self::Signer, source: SigningError) -> RequestAuthError;
}

/// The canonical bytes of a proof.
fn encode_proof<P: Proof>(proof: &P) -> Vec<u8> {
    let (signer, signed_at, request_digest) = proof.parts();
    let mut w = Writer::new(P::TAG, P::LEN);
    w.id(signer.as_ref()).i64(signed_at).bytes(request_digest);
    w.finish()
}

/// Parses a proof's canonical bytes.
fn decode_proof<P: Proof>(bytes: &[u8]) -> Result<P, LayoutError> {
    let mut r = Reader::new(bytes, P::TAG, P::LEN)?;
    let signer = r.id(P::SIGNER_FIELD, P::Signer::try_from)?;
    Ok(P::new(signer, r.i64(), r.digest()))
}

/// The `Authorization` header value of a proof for `method path_and_query body` by `signer`,
/// signed now (`now_unix`) with `key`.
fn proof_header<P: Proof>(
    signer: &P::Signer,
    key: &SigningKeyPair,
    now_unix: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> String {
    let proof = P::new(
        signer.clone(),
        now_unix,
        request_digest(method, path_and_query, body),
    );
    let payload = proof.encode();
    let signature = key.sign_raw(&payload);
    format!(
        "{} {}.{}",
        P::SCHEME,
        STANDARD.encode(&payload),
        STANDARD.encode(signature)
    )
}

/// Parses an `Authorization` header value of scheme `P::SCHEME`: the proof, its payload and the
/// signature.
fn parse_proof_header<P: Proof>(header: &str) -> Result<(P, Vec<u8>, [u8; 64]), RequestAuthError> {
    let (payload, signature) = split_header(header, P::SCHEME)?;
    let proof = decode_proof(&payload)?;
    Ok((proof, payload, signature))
}

/// Checks a parsed proof against the request received ([`check_proof`]) and the signer's key.
#[allow(clippy::too_many_arguments)]
fn verify_proof<P: Proof>(
    proof: &P,
    payload: &[u8],
    signature: &[u8; 64],
    key: &PublicKey,
    now_unix: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Result<(), RequestAuthError> {
    let (signer, signed_at, digest) = proof.parts();
    check_proof(signed_at, digest, now_unix, method, path_and_query, body)?;
    key.verify(payload, signature)
        .map_err(|source| P::signature_error(signer.clone(), source))
}

/// SHA-256 of `METHOD SP path-and-query LF body`: the request a proof authorises. `method` is
/// upper case (`GET`); `path_and_query` is exactly as sent (`/statements?participant=h1`).
pub fn request_digest(method: &str, path_and_query: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update(b" ");
    h.update(path_and_query.as_bytes());
    h.update(b"\n");
    h.update(body);
    h.finalize().into()
}

/// The `Authorization` header value authorising one request by `participant`, signed now
/// (`now_unix`) with `key`.
pub fn authorization(
    participant: &ParticipantId,
    key: &SigningKeyPair,
    now_unix: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> String {
    proof_header::<RequestProof>(participant, key, now_unix, method, path_and_query, body)
}

/// Why a signed request is refused. Every message says what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestAuthError {
    /// The header is not `Gridmesh <base64>.<base64>`.
    #[error(
        "the Authorization header is not a gridmesh request signature (`Gridmesh <base64 payload>.<base64 signature>`): {0}"
    )]
    Malformed(String),
    /// The payload is not a `gridmesh/request/v1` message.
    #[error("the request proof is malformed: {0}")]
    Layout(#[from] LayoutError),
    /// Signed too long ago or in the future.
    #[error(
        "the request was signed at {signed_at} but the server's time is {now} (more than {MAX_SKEW_SECS} s apart): check the clock and sign each request anew"
    )]
    Stale {
        /// The proof's time.
        signed_at: i64,
        /// The server's time.
        now: i64,
    },
    /// The proof was made for another request.
    #[error(
        "the request proof was signed for another request (method, path, query or body differ)"
    )]
    OtherRequest,
    /// The signature does not verify against the participant's registered key.
    #[error("the request signature does not verify with {participant}'s registered key: {source}")]
    Signature {
        /// The participant it claims to be.
        participant: ParticipantId,
        /// What failed.
        source: SigningError,
    },
    /// The signature does not verify against the gateway's enrolled key.
    #[error(
        "the request signature does not verify with gateway {gateway}'s enrolled key: {source}; sign with the key the gateway enrolled with"
    )]
    GatewaySignature {
        /// The gateway it claims to be.
        gateway: GatewayId,
        /// What failed.
        source: SigningError,
    },
}

/// A parsed but not yet verified signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// The proof's fields.
    pub proof: RequestProof,
    payload: Vec<u8>,
    signature: [u8; 64],
}

impl SignedRequest {
    /// Parses an `Authorization` header value.
    pub fn parse(header: &str) -> Result<Self, RequestAuthError> {
        let (proof, payload, signature) = parse_proof_header(header)?;
        Ok(SignedRequest {
            proof,
            payload,
            signature,
        })
    }

    /// The participant the request claims to come from (look its key up, then [`Self::verify`]).
    pub fn participant(&self) -> &ParticipantId {
        &self.proof.participant
    }

    /// Checks the proof against the request received and the participant's registered key.
    pub fn verify(
        &self,
        registered: &PublicKey,
        now_unix: i64,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<(), RequestAuthError> {
        verify_proof(
            &self.proof,
            &self.payload,
            &self.signature,
            registered,
            now_unix,
            method,
            path_and_query,
            body,
        )
    }
}

/// Splits `<scheme> <base64 payload>.<base64 signature>` into the decoded payload and signature.
fn split_header(header: &str, scheme: &str) -> Result<(Vec<u8>, [u8; 64]), RequestAuthError> {
    let malformed = |why: &str| RequestAuthError::Malformed(why.to_owned());
    let rest = header
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| malformed(&format!("the scheme is not `{scheme}`")))?;
    let (payload, signature) = rest
        .trim()
        .split_once('.')
        .ok_or_else(|| malformed("no `.` between payload and signature"))?;
    let payload = STANDARD
        .decode(payload)
        .map_err(|e| malformed(&format!("payload: {e}")))?;
    let signature: [u8; 64] = STANDARD
        .decode(signature)
        .map_err(|e| malformed(&format!("signature: {e}")))?
        .try_into()
        .map_err(|_| malformed("the signature is not 64 bytes"))?;
    Ok((payload, signature))
}

/// What a gateway signs to authorise one upload (`gridmesh/gateway-request/v1`, 99 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRequestProof {
    /// The gateway that sends.
    pub gateway: GatewayId,
    /// When it was signed, Unix seconds (UTC).
    pub signed_at: i64,
    /// [`request_digest`] of the request it authorises (body included).
    pub request_digest: [u8; 32],
}

proof_layout!(
    GatewayRequestProof,
    gateway: GatewayId,
    "gridmesh/gateway-request/v1",
    GATEWAY_SCHEME,
    GatewaySignature
);

/// The `Authorization` header value authorising one request by `gateway` (for example its
/// `POST /readings` batch), signed now (`now_unix`, wall-clock Unix seconds) with its key.
pub fn gateway_authorization(
    gateway: &GatewayId,
    key: &SigningKeyPair,
    now_unix: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> String {
    proof_header::<GatewayRequestProof>(gateway, key, now_unix, method, path_and_query, body)
}

/// A parsed but not yet verified gateway request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedGatewayRequest {
    /// The proof's fields.
    pub proof: GatewayRequestProof,
    payload: Vec<u8>,
    signature: [u8; 64],
}

impl SignedGatewayRequest {
    /// Parses an `Authorization` header value (`GridmeshGateway <payload>.<signature>`).
    pub fn parse(header: &str) -> Result<Self, RequestAuthError> {
        let (proof, payload, signature) = parse_proof_header(header)?;
        Ok(SignedGatewayRequest {
            proof,
            payload,
            signature,
        })
    }

    /// The gateway the request claims to come from (look its enrolled key up, then
    /// [`Self::verify`]).
    pub fn gateway(&self) -> &GatewayId {
        &self.proof.gateway
    }

    /// Checks the proof against the request received and the gateway's enrolled key: within
    /// [`MAX_SKEW_SECS`] of `now_unix`, for exactly this method, path, query and body.
    pub fn verify(
        &self,
        enrolled: &PublicKey,
        now_unix: i64,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<(), RequestAuthError> {
        verify_proof(
            &self.proof,
            &self.payload,
            &self.signature,
            enrolled,
            now_unix,
            method,
            path_and_query,
            body,
        )
    }
}

/// The checks shared by participant and gateway proofs: freshness, then the request digest.
fn check_proof(
    signed_at: i64,
    digest: &[u8; 32],
    now_unix: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Result<(), RequestAuthError> {
    if signed_at.abs_diff(now_unix) > MAX_SKEW_SECS as u64 {
        return Err(RequestAuthError::Stale {
            signed_at,
            now: now_unix,
        });
    }
    if &request_digest(method, path_and_query, body) != digest {
        return Err(RequestAuthError::OtherRequest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKeyPair {
        SigningKeyPair::from_seed([9; 32])
    }

    fn h1() -> ParticipantId {
        ParticipantId::new("h1").unwrap()
    }

    #[test]
    fn a_proof_authorises_exactly_its_request() {
        let header = authorization(
            &h1(),
            &key(),
            1_000,
            "GET",
            "/statements?participant=h1",
            b"",
        );
        let signed = SignedRequest::parse(&header).unwrap();
        assert_eq!(signed.participant(), &h1());
        let public = key().public_key();
        signed
            .verify(&public, 1_100, "GET", "/statements?participant=h1", b"")
            .unwrap();
        assert_eq!(
            signed.verify(&public, 1_100, "GET", "/statements?participant=h2", b""),
            Err(RequestAuthError::OtherRequest)
        );
        assert!(matches!(
            signed.verify(
                &public,
                1_000 + MAX_SKEW_SECS + 1,
                "GET",
                "/statements?participant=h1",
                b""
            ),
            Err(RequestAuthError::Stale { .. })
        ));
        let other = SigningKeyPair::from_seed([8; 32]).public_key();
        assert!(matches!(
            signed.verify(&other, 1_100, "GET", "/statements?participant=h1", b""),
            Err(RequestAuthError::Signature { .. })
        ));
    }

    #[test]
    fn the_layout_is_91_bytes() {
        let proof = RequestProof {
            participant: h1(),
            signed_at: 1_782_043_200,
            request_digest: request_digest("GET", "/balances/h1", b""),
        };
        let bytes = proof.encode();
        assert_eq!(bytes.len(), 91);
        assert_eq!(&bytes[..19], b"gridmesh/request/v1");
        assert_eq!(RequestProof::decode(&bytes).unwrap(), proof);
    }

    #[test]
    fn a_gateway_proof_authorises_exactly_its_batch() {
        let gw = GatewayId::new("gw-h1").unwrap();
        let body = br#"[{"payload":"AA=="}]"#;
        let header = gateway_authorization(&gw, &key(), 1_000, "POST", "/readings", body);
        assert!(header.starts_with("GridmeshGateway "));
        let signed = SignedGatewayRequest::parse(&header).unwrap();
        assert_eq!(signed.gateway(), &gw);
        assert_eq!(signed.payload.len(), 99);
        let public = key().public_key();
        signed
            .verify(&public, 1_200, "POST", "/readings", body)
            .unwrap();
        assert_eq!(
            signed.verify(&public, 1_200, "POST", "/readings", b"[]"),
            Err(RequestAuthError::OtherRequest)
        );
        assert!(matches!(
            signed.verify(
                &public,
                1_000 - MAX_SKEW_SECS - 1,
                "POST",
                "/readings",
                body
            ),
            Err(RequestAuthError::Stale { .. })
        ));
        let other = SigningKeyPair::from_seed([8; 32]).public_key();
        let err = signed
            .verify(&other, 1_000, "POST", "/readings", body)
            .unwrap_err();
        assert!(err.to_string().contains("gw-h1"), "{err}");
        // A participant's header is not a gateway's, and the other way round.
        let participant = authorization(&h1(), &key(), 1_000, "POST", "/readings", body);
        assert!(SignedGatewayRequest::parse(&participant).is_err());
        assert!(SignedRequest::parse(&header).is_err());
    }

    #[test]
    fn junk_headers_are_refused_with_a_reason() {
        for junk in [
            "",
            "Bearer abc",
            "Gridmesh abc",
            "Gridmesh !!.??",
            "Gridmesh YQ==.YQ==",
        ] {
            assert!(SignedRequest::parse(junk).is_err(), "{junk:?} accepted");
        }
    }
}
