//! The verification stage gives the answers of strict verification (`verify_strict`) for the
//! RFC 8032 test vectors and for the known malleability and small-order vectors that plain
//! ed25519 batch verification accepts (issue 16).

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use futures::executor::block_on;
use gridmesh_protocol::example::{example_key, example_order};
use gridmesh_protocol::signing::{PublicKey, SignedEnvelope, SigningError};
use gridmesh_protocol::verify_stage::{StageConfig, VerifyStage, verify_many};
use sha2::{Digest, Sha512};
use std::sync::Arc;
use std::time::Duration;

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn envelope(key: [u8; 32], message: &[u8], signature: [u8; 64]) -> SignedEnvelope {
    SignedEnvelope {
        payload: message.to_vec(),
        signature,
        public_key: PublicKey(key),
    }
}

fn stage() -> VerifyStage {
    VerifyStage::new(StageConfig {
        threads: 2,
        window: Duration::from_millis(1),
        max_items: 256,
    })
}

/// What `verify_strict` says, straight from ed25519-dalek.
fn strict(e: &SignedEnvelope) -> bool {
    VerifyingKey::from_bytes(&e.public_key.0).is_ok_and(|k| {
        k.verify_strict(&e.payload, &Signature::from_bytes(&e.signature))
            .is_ok()
    })
}

/// What plain ed25519-dalek batch verification says about one envelope.
fn raw_batch(e: &SignedEnvelope) -> bool {
    VerifyingKey::from_bytes(&e.public_key.0).is_ok_and(|k| {
        ed25519_dalek::verify_batch(&[&e.payload], &[Signature::from_bytes(&e.signature)], &[k])
            .is_ok()
    })
}

/// The challenge `k = SHA-512(R || A || M) mod L`.
fn challenge(r: &[u8; 32], a: &[u8; 32], m: &[u8]) -> Scalar {
    let mut h = Sha512::new();
    h.update(r);
    h.update(a);
    h.update(m);
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

fn signature(r: [u8; 32], s: [u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&r);
    out[32..].copy_from_slice(&s);
    out
}

/// A point of order 8 (from the list of small-order points in "Taming the many EdDSAs").
fn order_eight() -> EdwardsPoint {
    let t = CompressedEdwardsY(hex32(
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    ))
    .decompress()
    .unwrap();
    assert!(t.is_small_order());
    let four_t = t + t + t + t;
    assert_ne!(four_t, EdwardsPoint::default(), "order 8, not 4");
    t
}

/// A key pair from a fixed scalar (a, A = aB), for signatures built by hand.
fn scalar_key() -> (Scalar, [u8; 32]) {
    let a = Scalar::from_bytes_mod_order([42; 32]);
    (a, EdwardsPoint::mul_base(&a).compress().0)
}

const MESSAGE: &[u8] = b"gridmesh issue 16";

/// ed25519-dalek's batch equation is cofactorless with 128-bit coefficients derived from the
/// inputs, so it accepts a signature with a torsion component `T` when the coefficient is a
/// multiple of `T`'s order: about one message in eight for order 8, and a signer can search for
/// one. This finds such a message for `make`.
fn accepted_by_raw_batch(make: impl Fn(&[u8]) -> SignedEnvelope) -> SignedEnvelope {
    for n in 0u16..2000 {
        let message = [MESSAGE, &n.to_be_bytes()].concat();
        let e = make(&message);
        if raw_batch(&e) {
            return e;
        }
    }
    panic!("no message found that plain batch verification accepts");
}

/// Checks one vector through `verify_many` and the stage, against `verify_strict`.
fn check(name: &str, e: &SignedEnvelope, strict_answer: bool) {
    assert_eq!(strict(e), strict_answer, "{name}: verify_strict");
    let many = verify_many(&[e]);
    assert_eq!(
        many[0].is_ok(),
        strict_answer,
        "{name}: verify_many {many:?}"
    );
    let staged = block_on(stage().verify(vec![e.clone()]));
    assert_eq!(staged[0].is_ok(), strict_answer, "{name}: stage {staged:?}");
    // In a batch of good signatures, the answer is the same and the good ones stay good.
    let good = SignedEnvelope::sign(&example_order(), &example_key());
    let mixed = vec![good.clone(), e.clone(), good];
    let answers = block_on(stage().verify(mixed));
    assert!(
        answers[0].is_ok() && answers[2].is_ok(),
        "{name}: {answers:?}"
    );
    assert_eq!(answers[1].is_ok(), strict_answer, "{name}: in a batch");
}

#[test]
fn rfc8032_test_vectors_verify() {
    // RFC 8032 section 7.1, TEST 1, 2 and 3: secret key, public key, message, signature.
    let vectors = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ];
    for (i, (secret, public, message, sig)) in vectors.iter().enumerate() {
        let key = SigningKey::from_bytes(&hex32(secret));
        assert_eq!(
            key.verifying_key().to_bytes(),
            hex32(public),
            "TEST {}",
            i + 1
        );
        let message = hex::decode(message).unwrap();
        let sig: [u8; 64] = hex::decode(sig).unwrap().try_into().unwrap();
        let e = envelope(hex32(public), &message, sig);
        check(&format!("RFC 8032 TEST {}", i + 1), &e, true);
        // One bit of the message, R or S flipped: refused.
        let mut other = e.clone();
        other.payload.push(0);
        check("altered message", &other, false);
        let mut other = e.clone();
        other.signature[3] ^= 0x10;
        check("altered R", &other, false);
        let mut other = e.clone();
        other.signature[40] ^= 0x01;
        check("altered S", &other, false);
    }
}

#[test]
fn s_at_or_above_the_group_order_is_refused() {
    let key = SigningKey::from_bytes(&[9; 32]);
    let sig = ed25519_dalek::Signer::sign(&key, MESSAGE).to_bytes();
    // S + L (L = 2^252 + 27742317777372353535851937790883648493), little-endian addition.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut s = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(sig[32 + i]) + u16::from(L[i]) + carry;
        s[i] = v as u8;
        carry = v >> 8;
    }
    assert_eq!(carry, 0);
    let r: [u8; 32] = sig[..32].try_into().unwrap();
    let e = envelope(key.verifying_key().to_bytes(), MESSAGE, signature(r, s));
    check("S + L", &e, false);
    let e = envelope(key.verifying_key().to_bytes(), MESSAGE, sig);
    check("the original", &e, true);
}

#[test]
fn small_order_keys_are_refused_though_batch_verification_accepts_them() {
    // A = identity, R = identity, S = 0: "verifies" for every message with the cofactored
    // batch equation.
    let identity = hex32("0100000000000000000000000000000000000000000000000000000000000000");
    let e = envelope(identity, MESSAGE, signature(identity, [0; 32]));
    assert!(
        raw_batch(&e),
        "plain batch verification accepts the identity key"
    );
    check("identity key", &e, false);
    assert_eq!(verify_many(&[&e])[0], Err(SigningError::BadPublicKey));
    // The same with an order-8 key: R = identity, S = 0 leaves -kT, which vanishes when the
    // batch coefficient of it is a multiple of 8.
    let t = order_eight().compress().0;
    let e = accepted_by_raw_batch(|m| envelope(t, m, signature(identity, [0; 32])));
    check("order-8 key", &e, false);
}

#[test]
fn small_order_and_non_canonical_r_are_refused_though_batch_verification_accepts_them() {
    let (a, public) = scalar_key();
    // R = T (order 8), S = k·a: sB = kA, so [8](sB - R - kA) = -[8]T = 0.
    let t = order_eight().compress().0;
    let e = accepted_by_raw_batch(|m| {
        let k = challenge(&t, &public, m);
        envelope(public, m, signature(t, (k * a).to_bytes()))
    });
    check("small-order R", &e, false);
    // R = the identity, encoded non-canonically (y = p + 1, i.e. 2^255 - 18).
    let mut r = [0xff; 32];
    r[0] = 0xee;
    r[31] = 0x7f;
    assert_eq!(
        CompressedEdwardsY(r).decompress(),
        Some(EdwardsPoint::default())
    );
    let k = challenge(&r, &public, MESSAGE);
    let e = envelope(public, MESSAGE, signature(r, (k * a).to_bytes()));
    assert!(
        raw_batch(&e),
        "plain batch verification accepts a non-canonical R"
    );
    check("non-canonical R (y = p + 1)", &e, false);
    // The identity with the sign bit set (x = 0, so "negative zero"): non-canonical too.
    let mut r = [0u8; 32];
    r[0] = 1;
    r[31] = 0x80;
    let k = challenge(&r, &public, MESSAGE);
    let e = envelope(public, MESSAGE, signature(r, (k * a).to_bytes()));
    check("non-canonical R (negative zero)", &e, false);
    // A non-decodable R.
    let mut r = [0u8; 32];
    r[0] = 2;
    let e = envelope(public, MESSAGE, signature(r, [0; 32]));
    if CompressedEdwardsY(r).decompress().is_none() {
        check("R not on the curve", &e, false);
    }
}

#[test]
fn keys_with_a_torsion_component_get_strict_answers() {
    // A = aB + T: key generation never makes one. R = rB, S = r + k·a leaves -kT in the
    // equation: verify_strict refuses it unless kT vanishes, batch verification whenever the
    // batch coefficient times kT vanishes.
    let (a, _) = scalar_key();
    let public_point = EdwardsPoint::mul_base(&a) + order_eight();
    let public = public_point.compress().0;
    let r_scalar = Scalar::from_bytes_mod_order([5; 32]);
    let r = EdwardsPoint::mul_base(&r_scalar).compress().0;
    let mut tried = 0;
    let make = |m: &[u8]| {
        let k = challenge(&r, &public, m);
        envelope(public, m, signature(r, (r_scalar + k * a).to_bytes()))
    };
    let e = accepted_by_raw_batch(|m| {
        let e = make(m);
        if strict(&e) {
            envelope(public, m, [0; 64])
        } else {
            e
        }
    });
    check(
        "mixed-order key accepted by plain batch verification",
        &e,
        false,
    );
    for n in 0u8..16 {
        let message = [MESSAGE, &[n]].concat();
        let e = make(&message);
        let expected = strict(&e);
        check("mixed-order key", &e, expected);
        tried += usize::from(!expected);
    }
    assert!(tried > 0, "at least one case refused by verify_strict");
}

#[test]
fn documented_difference_a_signer_made_torsion_component_in_r() {
    // The module docs say so: R = rB + T with S = r + k·a leaves -T in the equation, so
    // verify_strict refuses it and batch verification accepts it when its coefficient is a
    // multiple of 8. Only the key's holder can make such a signature.
    let (a, public) = scalar_key();
    let r_scalar = Scalar::from_bytes_mod_order([6; 32]);
    let r = (EdwardsPoint::mul_base(&r_scalar) + order_eight())
        .compress()
        .0;
    let e = accepted_by_raw_batch(|m| {
        let k = challenge(&r, &public, m);
        envelope(public, m, signature(r, (r_scalar + k * a).to_bytes()))
    });
    assert!(!strict(&e));
    assert!(verify_many(&[&e])[0].is_ok());
}

#[test]
fn concurrent_requests_get_their_own_answers() {
    let stage = Arc::new(stage());
    let key = example_key();
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let stage = Arc::clone(&stage);
            let key = key.clone();
            std::thread::spawn(move || {
                for round in 0..5u8 {
                    // 150 envelopes (three parts), every seventh one bad, at a position that
                    // differs per thread and round.
                    let mut envelopes = Vec::new();
                    let mut expect = Vec::new();
                    for i in 0..150usize {
                        let message = format!("t{t} r{round} i{i}");
                        let mut e = SignedEnvelope::sign_bytes(message.into_bytes(), &key);
                        let bad = (i + usize::from(t) + usize::from(round)) % 7 == 0;
                        if bad {
                            e.signature[10] ^= 4;
                        }
                        envelopes.push(e);
                        expect.push(!bad);
                    }
                    let answers = block_on(stage.verify(envelopes));
                    let got: Vec<bool> = answers.iter().map(Result::is_ok).collect();
                    assert_eq!(got, expect, "thread {t} round {round}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(block_on(stage.verify(Vec::new())), Vec::new());
}
