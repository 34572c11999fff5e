//! The verification stage both services share: signed envelopes from concurrent requests and
//! MQTT batches are collected into windows and verified together with ed25519 batch
//! verification on a small pool of threads sized to the cores, off the async workers.
//!
//! A window is what is queued when a thread takes it (bounded by `max_items` and `window`): a
//! thread never waits for envelopes that are not there, so at a low rate an envelope is verified
//! at once, and under load the queue fills while the threads verify, so windows grow to
//! `max_items` and batching pays.
//!
//! # Strictness
//!
//! Every answer is the one [`PublicKey::verify`] (ed25519-dalek's `verify_strict`) would give for
//! the documented guarantees (docs/protocol.md, "Strict verification"): batch verification alone
//! is looser, so each envelope is first checked ([`verify_many`]) for what `verify_strict` checks
//! beyond the group equation:
//!
//! - the public key decodes and is not of small order (`BadPublicKey`);
//! - `S` is canonical (`S < L`), and `R` is canonically encoded and is not of small order
//!   (`BadSignature`), checked on the bytes; an `R` that does not decode fails the batch
//!   equation and gets `verify_strict`'s answer in the fallback below.
//!
//! Keys with a torsion component (never made by key generation, only crafted) are checked one
//! by one with `verify_strict`, so for them nothing depends on the batch. The passing envelopes
//! of a window are batch-verified; only if the batch fails is each of them verified strictly,
//! one by one, to find the bad ones.
//!
//! One difference from `verify_strict` remains, and it is not a malleability. ed25519-dalek's
//! batch equation is a random linear combination (128-bit coefficients derived from the
//! inputs), so a signature whose `R` its *signer* built with a small-order component added
//! (`R = rB + T`, `S = r + k·a`) is accepted when its coefficient is a multiple of `T`'s order
//! (one message in eight; the signer can search for one), where `verify_strict` refuses it.
//! Nobody but the key's holder can make one: `R`'s bytes are hashed into the challenge, so
//! changing the `R` of somebody else's signature breaks it. Telling such an `R` apart costs a
//! full scalar multiplication per signature (more than batching saves), so it is not done.
//! protocol/tests/verify_stage.rs shows each case, this one included.
//!
//! # Use
//!
//! A service makes one [`VerifyStage`] at start-up and awaits [`VerifyStage::verify`] (a
//! request's envelopes) or [`VerifyStage::verify_one`] from its handlers; [`verify_many`] gives
//! the same answers on the calling thread (tests, benchmarks, blocking code).
//!
//! ```
//! use gridmesh_protocol::example::{example_key, example_order};
//! use gridmesh_protocol::signing::SignedEnvelope;
//! use gridmesh_protocol::verify_stage::verify_many;
//! let good = SignedEnvelope::sign(&example_order(), &example_key());
//! let mut bad = good.clone();
//! bad.signature[40] ^= 1;
//! assert_eq!(verify_many(&[&good, &bad]).len(), 2);
//! assert!(verify_many(&[&good, &bad])[0].is_ok());
//! assert!(verify_many(&[&good, &bad])[1].is_err());
//! ```

use crate::signing::{PublicKey, SignedEnvelope, SigningError};
use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, VerifyingKey};
use futures::channel::oneshot;
use std::collections::HashMap;
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How the stage batches and how many threads it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageConfig {
    /// Verification threads (default: the number of cores).
    pub threads: usize,
    /// How long a thread keeps taking queued envelopes into one window after its first (it stops
    /// earlier once the queue is empty).
    pub window: Duration,
    /// A window closes early once it holds this many envelopes.
    pub max_items: usize,
}

impl Default for StageConfig {
    fn default() -> Self {
        StageConfig {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            window: Duration::from_millis(1),
            max_items: 256,
        }
    }
}

/// Envelopes of one request are queued in parts of at most this many, so that one big MQTT
/// batch or REST upload is verified on every core at once.
const PART: usize = 64;

/// Keys remembered per thread (decoded point and torsion check) before the memory is cleared.
const KEY_CACHE: usize = 65_536;

struct Job {
    envelopes: Arc<[SignedEnvelope]>,
    range: std::ops::Range<usize>,
    reply: oneshot::Sender<Vec<Result<(), SigningError>>>,
}

/// A running verification stage: cheap to share (`Arc`), its threads end when it is dropped.
pub struct VerifyStage {
    queue: Mutex<mpsc::Sender<Job>>,
    config: StageConfig,
}

impl std::fmt::Debug for VerifyStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyStage")
            .field("config", &self.config)
            .finish()
    }
}

impl VerifyStage {
    /// Starts `config.threads` verification threads (at least one).
    pub fn new(config: StageConfig) -> Self {
        let config = StageConfig {
            threads: config.threads.max(1),
            max_items: config.max_items.max(1),
            ..config
        };
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..config.threads {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("gridmesh-verify-{i}"))
                .spawn(move || worker(&rx, config))
                .expect("could not start a signature verification thread");
        }
        VerifyStage {
            queue: Mutex::new(tx),
            config,
        }
    }

    /// The configuration the stage runs with.
    pub fn config(&self) -> StageConfig {
        self.config
    }

    /// Verifies `envelopes` strictly (see the module docs); one answer per envelope, in order.
    pub async fn verify(&self, envelopes: Vec<SignedEnvelope>) -> Vec<Result<(), SigningError>> {
        let n = envelopes.len();
        let envelopes: Arc<[SignedEnvelope]> = envelopes.into();
        let mut waiting = Vec::with_capacity(n.div_ceil(PART));
        {
            let queue = self.queue.lock().expect("verify queue lock");
            for start in (0..n).step_by(PART) {
                let (reply, answer) = oneshot::channel();
                let job = Job {
                    envelopes: Arc::clone(&envelopes),
                    range: start..(start + PART).min(n),
                    reply,
                };
                // The threads only end when the stage is dropped, and `self` is alive.
                queue.send(job).expect("verification threads are running");
                waiting.push(answer);
            }
        }
        let mut out = Vec::with_capacity(n);
        for answer in waiting {
            // A thread answers every job it takes; a panic in one would drop the sender.
            let part = answer
                .await
                .expect("a signature verification thread stopped");
            out.extend(part);
        }
        out
    }

    /// Verifies one envelope (batched with whatever else is queued at the moment).
    pub async fn verify_one(&self, envelope: SignedEnvelope) -> Result<(), SigningError> {
        self.verify(vec![envelope])
            .await
            .pop()
            .expect("one answer per envelope")
    }
}

fn worker(rx: &Mutex<mpsc::Receiver<Job>>, config: StageConfig) {
    let mut keys = KeyCache::default();
    loop {
        let jobs = {
            let rx = rx.lock().expect("verify receiver lock");
            let Ok(first) = rx.recv() else { return };
            collect(&rx, first, config)
        };
        let all: Vec<&SignedEnvelope> = jobs
            .iter()
            .flat_map(|j| j.envelopes[j.range.clone()].iter())
            .collect();
        let mut answers = verify_with(&all, &mut keys).into_iter();
        drop(all);
        for job in jobs {
            let part: Vec<_> = answers.by_ref().take(job.range.len()).collect();
            // The waiter may have gone (request cancelled): nothing to answer then.
            let _ = job.reply.send(part);
        }
    }
}

/// One window: `first` and whatever is already queued behind it, up to `config.max_items`
/// envelopes and `config.window` after `first` was taken. It closes as soon as the queue is
/// empty: no envelope waits for others that are not there (issue 16: at a low rate a window
/// is one envelope, under load the queue fills while the threads verify and windows grow).
fn collect(rx: &mpsc::Receiver<Job>, first: Job, config: StageConfig) -> Vec<Job> {
    let deadline = Instant::now() + config.window;
    let mut items = first.range.len();
    let mut jobs = vec![first];
    while items < config.max_items && Instant::now() < deadline {
        match rx.try_recv() {
            Ok(job) => {
                items += job.range.len();
                jobs.push(job);
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
    jobs
}

/// Decoded keys: the verifier and whether the point is free of a torsion component.
#[derive(Default)]
struct KeyCache(HashMap<[u8; 32], Result<(VerifyingKey, bool), SigningError>>);

impl KeyCache {
    fn get(&mut self, key: &PublicKey) -> Result<(VerifyingKey, bool), SigningError> {
        if self.0.len() >= KEY_CACHE {
            self.0.clear();
        }
        self.0
            .entry(key.0)
            .or_insert_with(|| {
                let verifying = key.verifying_key()?;
                let point = CompressedEdwardsY(key.0)
                    .decompress()
                    .ok_or(SigningError::BadPublicKey)?;
                if point.is_small_order() {
                    return Err(SigningError::BadPublicKey);
                }
                Ok((verifying, point.is_torsion_free()))
            })
            .clone()
    }
}

/// The `y` coordinates (sign bit cleared) of the eight points of small order, the only points
/// whose encodings pass [`signature_encoding_ok`]'s byte test but that `verify_strict` refuses.
static SMALL_ORDER_Y: LazyLock<Vec<[u8; 32]>> = LazyLock::new(|| {
    let mut ys: Vec<[u8; 32]> = EIGHT_TORSION
        .iter()
        .map(|p| {
            let mut y = p.compress().0;
            y[31] &= 0x7f;
            y
        })
        .collect();
    ys.sort_unstable();
    ys.dedup();
    ys
});

/// `y < p = 2^255 - 19` for the low 255 bits of an encoded point (the sign bit not counted).
fn y_is_canonical(encoded: &[u8; 32]) -> bool {
    // The only 255-bit values at or above p are p..2^255-1: all bytes 0xff except the first
    // (0xed..=0xff) and the last (0x7f once the sign bit is cleared).
    !(encoded[31] & 0x7f == 0x7f && encoded[1..31].iter().all(|&b| b == 0xff) && encoded[0] >= 0xed)
}

/// `S` is canonical (`S < L`) and `R` is canonically encoded and not of small order: what
/// `verify_strict` refuses and batch verification would accept. Byte tests only, no point
/// arithmetic: a canonical `y` with the sign bit set at `x = 0` is `y = ±1`, of small order, so
/// "canonical `y`, not a small-order `y`" is exactly "canonical encoding of a point not of small
/// order" for every `R` that decodes. An `R` that does not decode fails the batch equation and
/// gets `verify_strict`'s answer in the one-by-one fallback.
fn signature_encoding_ok(signature: &[u8; 64]) -> bool {
    let r: [u8; 32] = signature[..32].try_into().expect("32 bytes");
    let s: [u8; 32] = signature[32..].try_into().expect("32 bytes");
    let mut y = r;
    y[31] &= 0x7f;
    let r_ok = y_is_canonical(&r) && !SMALL_ORDER_Y.contains(&y);
    r_ok && bool::from(Scalar::from_canonical_bytes(s).is_some())
}

/// Verifies `envelopes` on the calling thread, as the stage does (module docs): one answer per
/// envelope, in order. CPU-heavy: call it off async threads.
pub fn verify_many(envelopes: &[&SignedEnvelope]) -> Vec<Result<(), SigningError>> {
    verify_with(envelopes, &mut KeyCache::default())
}

fn verify_with(
    envelopes: &[&SignedEnvelope],
    keys: &mut KeyCache,
) -> Vec<Result<(), SigningError>> {
    let mut out: Vec<Result<(), SigningError>> = Vec::with_capacity(envelopes.len());
    let mut batch = Vec::new();
    for (i, envelope) in envelopes.iter().enumerate() {
        let checked = keys
            .get(&envelope.public_key)
            .and_then(|(key, torsion_free)| {
                if signature_encoding_ok(&envelope.signature) {
                    Ok((key, torsion_free))
                } else {
                    Err(SigningError::BadSignature)
                }
            });
        match checked {
            Ok((key, true)) => {
                batch.push((i, key));
                out.push(Ok(()));
            }
            // A crafted key with a torsion component: exactly `verify_strict`.
            Ok((_, false)) => out.push(envelope.verify()),
            Err(e) => out.push(Err(e)),
        }
    }
    if batch.is_empty() {
        return out;
    }
    let messages: Vec<&[u8]> = batch
        .iter()
        .map(|(i, _)| envelopes[*i].payload.as_slice())
        .collect();
    let signatures: Vec<Signature> = batch
        .iter()
        .map(|(i, _)| Signature::from_bytes(&envelopes[*i].signature))
        .collect();
    let verifying: Vec<VerifyingKey> = batch.iter().map(|(_, k)| *k).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &verifying).is_err() {
        for (i, _) in &batch {
            out[*i] = envelopes[*i].verify();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::edwards::EdwardsPoint;

    /// The definition the byte test stands for: `R` decodes, its encoding is canonical and it is
    /// not of small order.
    fn by_point(r: &[u8; 32]) -> Option<bool> {
        let p: EdwardsPoint = CompressedEdwardsY(*r).decompress()?;
        Some(!p.is_small_order() && p.compress().0 == *r)
    }

    fn r_ok(r: &[u8; 32]) -> bool {
        signature_encoding_ok(&[*r, [0; 32]].concat().try_into().unwrap())
    }

    fn job(n: usize) -> (Job, oneshot::Receiver<Vec<Result<(), SigningError>>>) {
        let (reply, answer) = oneshot::channel();
        let envelopes: Arc<[SignedEnvelope]> = Vec::new().into();
        let job = Job {
            envelopes,
            range: 0..n,
            reply,
        };
        (job, answer)
    }

    /// A window takes what is queued and closes when the queue is empty: it does not wait for
    /// envelopes that are not there (an hour-long window would hang this test if it did).
    #[test]
    fn a_window_closes_when_the_queue_is_empty() {
        let config = StageConfig {
            threads: 1,
            window: Duration::from_secs(3600),
            max_items: 256,
        };
        let (tx, rx) = mpsc::channel();
        let (first, _a) = job(1);
        assert_eq!(collect(&rx, first, config).len(), 1, "alone");
        let (first, _a) = job(1);
        let mut answers = Vec::new();
        for _ in 0..3 {
            let (queued, answer) = job(64);
            tx.send(queued).unwrap();
            answers.push(answer);
        }
        assert_eq!(
            collect(&rx, first, config).len(),
            4,
            "with everything queued"
        );
        // A full window leaves the rest queued for the next.
        for _ in 0..5 {
            let (queued, answer) = job(64);
            tx.send(queued).unwrap();
            answers.push(answer);
        }
        let (first, _a) = job(64);
        let window = collect(&rx, first, config);
        assert_eq!(window.iter().map(|j| j.range.len()).sum::<usize>(), 256);
        assert_eq!(rx.try_iter().count(), 2);
    }

    #[test]
    fn the_byte_test_of_r_agrees_with_decoding_for_every_decodable_r() {
        let mut cases: Vec<[u8; 32]> = Vec::new();
        // Every small-order point, with both sign bits, and every non-canonical y (p..2^255-1).
        for t in EIGHT_TORSION {
            let mut r = t.compress().0;
            cases.push(r);
            r[31] ^= 0x80;
            cases.push(r);
        }
        for low in 0xedu8..=0xff {
            for sign in [0u8, 0x80] {
                let mut r = [0xff; 32];
                r[0] = low;
                r[31] = 0x7f | sign;
                cases.push(r);
            }
        }
        // Points just below p, and ordinary points (multiples of the base point) with both signs.
        let mut r = [0xff; 32];
        r[31] = 0x7f;
        for low in 0xd0u8..0xed {
            r[0] = low;
            cases.push(r);
        }
        for k in 1u64..300 {
            let mut r = EdwardsPoint::mul_base(&Scalar::from(k)).compress().0;
            cases.push(r);
            r[31] ^= 0x80;
            cases.push(r);
        }
        let mut decodable = 0;
        for r in &cases {
            if let Some(expected) = by_point(r) {
                decodable += 1;
                assert_eq!(r_ok(r), expected, "R = {}", hex::encode(r));
            }
        }
        assert!(decodable > 600, "{decodable} decodable cases");
        // Small-order R is refused (eight points, five y values).
        assert_eq!(SMALL_ORDER_Y.len(), 5);
    }
}
