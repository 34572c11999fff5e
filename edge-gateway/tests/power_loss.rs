//! Power loss in the gateway's outbox (issue 15, faults): a process kill leaves the page cache
//! intact, so these tests work on the files themselves. The outbox's bytes are copied while the
//! gateway holds it open (what the disk holds when the power goes), then:
//!
//! - the WAL is cut at every byte offset of the last record, or its last record is torn (the
//!   sectors after a point hold garbage): the outbox opens, keeps every reading committed before
//!   that record, its sequence, history and resume state agree, and the next reading continues
//!   the sequence;
//! - a copy of the files is taken while readings are being written: every copy opens with a
//!   consistent prefix of the committed readings, or is refused clearly;
//! - the database file itself is truncated or overwritten: the outbox refuses to open with an
//!   error naming the file and what to do — never silently starting afresh or with fewer
//!   readings — and so does `edge-gateway outbox`.

use edge_gateway::accountant::Resume;
use edge_gateway::config::GatewayConfig;
use edge_gateway::outbox::{Outbox, OutboxError, Stored};
use gridmesh_protocol::Interval;
use gridmesh_protocol::example::example_reading;
use gridmesh_protocol::keys::SigningKeyPair;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// 2026-06-21T12:00:00Z.
const BASE: i64 = 1_782_043_200;

fn key() -> SigningKeyPair {
    SigningKeyPair::from_seed([5; 32])
}

/// Stores the reading of interval `i` (15 min after `BASE`); returns its sequence number.
async fn store(outbox: &Outbox, i: i64) -> u64 {
    let start = BASE + i * 900;
    let resume = Resume {
        next_start: start + 900,
        channels: [None; 5],
    };
    let stored = outbox
        .store(
            |sequence| {
                let mut reading = example_reading();
                reading.sequence = sequence;
                reading.interval = Interval::from_unix(start, 15).unwrap();
                reading
            },
            &key(),
            &resume,
            0,
        )
        .await
        .unwrap();
    match stored {
        Stored::New(signed) => signed.0.sequence,
        Stored::AlreadySigned => panic!("interval {i} was signed twice"),
    }
}

fn wal(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// The bytes of the database and its WAL as they are on disk now.
fn on_disk(path: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(path).unwrap(),
        std::fs::read(wal(path)).unwrap_or_default(),
    )
}

/// Writes `db` and `wal` as a fresh outbox in a new directory under `parent` (no
/// shared-memory index: it does not survive a power loss either) and returns its path.
///
/// Each copy gets its own directory, kept until `parent` goes: SQLite keeps per-file state by
/// inode number for a moment after a close, so a copy must not reuse a closed one's inode.
fn restore(parent: &Path, db: &[u8], wal_bytes: &[u8]) -> PathBuf {
    static COPIES: AtomicUsize = AtomicUsize::new(0);
    let dir = parent.join(format!("copy-{}", COPIES.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("outbox.db");
    std::fs::write(&path, db).unwrap();
    if !wal_bytes.is_empty() {
        std::fs::write(wal(&path), wal_bytes).unwrap();
    }
    path
}

/// Checks an outbox that opened after a power loss: it holds exactly the readings 1..=n (all
/// pending, oldest first, each validly signed for its interval), the history and the resume
/// state agree with them, and returns n.
async fn consistent(outbox: &Outbox) -> u64 {
    let pending = outbox.pending(1000).await.unwrap();
    let n = pending.len() as u64;
    for (i, p) in pending.iter().enumerate() {
        assert_eq!(p.id, i as i64 + 1, "readings are lost or out of order");
        let envelope: gridmesh_protocol::SignedEnvelope = serde_json::from_str(&p.envelope)
            .unwrap_or_else(|e| panic!("reading {} is not an envelope: {e}", p.id));
        let reading: gridmesh_protocol::Reading = envelope.open().unwrap();
        assert_eq!(reading.sequence, i as u64 + 1);
        assert_eq!(reading.interval.start_unix(), BASE + i as i64 * 900);
        assert_eq!(reading.idempotency_key(), p.key);
    }
    let history = outbox.history(1000).await.unwrap();
    assert_eq!(history.len() as u64, n, "history and outbox disagree");
    match outbox.resume().await.unwrap() {
        None => assert_eq!(n, 0),
        Some(resume) => assert_eq!(resume.next_start, BASE + n as i64 * 900),
    }
    n
}

/// The WAL as it was before and after the last record (reading 4), with the database file
/// (unchanged: no checkpoint ran in between).
async fn last_record() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let outbox = Outbox::open(&path, 1 << 20).await.unwrap();
    for i in 0..3 {
        assert_eq!(store(&outbox, i).await, i as u64 + 1);
    }
    let (db3, wal3) = on_disk(&path);
    assert_eq!(store(&outbox, 3).await, 4);
    let (db4, wal4) = on_disk(&path);
    // The power goes now: the bytes above are what the disk holds. (The outbox is closed
    // only afterwards, so no connection of this process outlives the test's files.)
    outbox.close().await;
    assert_eq!(
        db3, db4,
        "a checkpoint ran: the test would not cut the last record"
    );
    assert!(
        wal4.len() > wal3.len() && wal4.starts_with(&wal3),
        "the last record is not appended to the WAL ({} -> {} bytes)",
        wal3.len(),
        wal4.len()
    );
    (db4, wal3, wal4)
}

/// The offsets to cut the last record at: every byte of each frame header (24 bytes) and of
/// the first and last 16 bytes of each page, and every 256th byte between. (SQLite takes a
/// frame only whole and with a matching checksum, so the offsets inside a page behave alike;
/// every single one would take minutes, at about 10 ms per opened copy.)
fn cuts(before: usize, after: usize) -> Vec<usize> {
    const FRAME: usize = 24 + 4096;
    assert_eq!((after - before) % FRAME, 0, "the WAL holds 4096-byte pages");
    let mut cuts = Vec::new();
    for frame in (before..after).step_by(FRAME) {
        cuts.extend(frame..frame + 24 + 16);
        cuts.extend((frame + 24 + 16..frame + FRAME - 16).step_by(256));
        cuts.extend(frame + FRAME - 16..frame + FRAME);
    }
    cuts.push(after);
    cuts
}

#[tokio::test]
async fn a_wal_cut_anywhere_in_the_last_record_keeps_every_committed_reading() {
    let (db, before, after) = last_record().await;
    let dir = tempfile::tempdir().unwrap();
    let cuts = cuts(before.len(), after.len());
    assert!(cuts.len() > 200, "{}", cuts.len());
    for cut in cuts {
        let path = restore(dir.path(), &db, &after[..cut]);
        let outbox = Outbox::open(&path, 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("WAL cut at {cut}: the outbox does not open: {e}"));
        let n = consistent(&outbox).await;
        if cut == after.len() {
            assert_eq!(n, 4, "the complete last record is lost");
        } else {
            // Its commit frame is the last bytes of the record: a cut record is not committed.
            assert_eq!(n, 3, "WAL cut at {cut} of {}", after.len());
        }
        // At the ends and every few cuts, the gateway goes on signing with the next number.
        if cut == before.len() || cut == after.len() || cut % 7 == 0 {
            assert_eq!(store(&outbox, n as i64).await, n + 1, "cut at {cut}");
            assert_eq!(consistent(&outbox).await, n + 1);
        }
        outbox.close().await;
    }
}

#[tokio::test]
async fn a_torn_last_record_is_not_taken_for_a_committed_one() {
    let (db, before, after) = last_record().await;
    // A torn write: the record's length is on disk but from some 512-byte sector on, the
    // bytes are what was there before (zeros) or garbage.
    let mut offsets: Vec<usize> = (before.len()..after.len()).step_by(512).collect();
    offsets.push(after.len() - 1);
    let dir = tempfile::tempdir().unwrap();
    for from in offsets {
        for filler in [0x00u8, 0xa5] {
            let mut torn = after.clone();
            torn[from..].fill(filler);
            let path = restore(dir.path(), &db, &torn);
            let outbox = Outbox::open(&path, 1 << 20).await.unwrap_or_else(|e| {
                panic!("record torn at {from} ({filler:#x}): the outbox does not open: {e}")
            });
            assert_eq!(
                consistent(&outbox).await,
                3,
                "record torn at {from} ({filler:#x})"
            );
            assert_eq!(store(&outbox, 3).await, 4);
            outbox.close().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_taken_while_readings_are_written_open_consistent_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let outbox = Outbox::open(&path, 1 << 20).await.unwrap();
    // A second connection checkpoints now and then, so the copies also catch the WAL being
    // copied into the database file and restarted.
    let checkpointer = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let checkpoint_pool = checkpointer.clone();
    let writing = {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                store(&outbox, i).await;
                if i % 7 == 6 {
                    sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                        .execute(&checkpointer)
                        .await
                        .unwrap();
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let copies = tempfile::tempdir().unwrap();
    let mut taken = Vec::new();
    // A copy whenever the files changed (size or modification time) (mid-record too: a record's frames are appended
    // one by one), at most 200 (about 10 ms each to check).
    let mut last = None;
    while !writing.is_finished() && taken.len() < 200 {
        let state = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.len(), m.modified().ok()))
        };
        let now = Some((state(&wal(&path)), state(&path)));
        if now == last {
            tokio::task::yield_now().await;
            continue;
        }
        last = now;
        // The WAL first, then the database: the database a copy finds is never older than
        // its WAL's checkpoint, as on a disk that loses power.
        let wal_bytes =
            tokio::task::block_in_place(|| std::fs::read(wal(&path)).unwrap_or_default());
        let db = tokio::task::block_in_place(|| std::fs::read(&path).unwrap());
        taken.push((db, wal_bytes));
    }
    writing.await.unwrap();
    outbox.close().await;
    checkpoint_pool.close().await;
    let (mut opened, mut refused, mut most) = (0, 0, 0);
    for (db, wal_bytes) in &taken {
        let copy = restore(copies.path(), db, wal_bytes);
        match Outbox::open(&copy, 1 << 20).await {
            Ok(outbox) => {
                most = most.max(consistent(&outbox).await);
                opened += 1;
                outbox.close().await;
            }
            Err(error) => {
                let text = error.to_string();
                assert!(
                    matches!(error, OutboxError::Damaged { .. })
                        && text.contains(&copy.display().to_string()),
                    "a copy is refused without saying which file and why: {text}"
                );
                refused += 1;
            }
        }
    }
    assert!(opened > 0, "no copy opened ({refused} refused)");
    assert!(most > 0, "no copy held a reading");
    eprintln!(
        "{} copies: {opened} opened (at most {most} readings), {refused} refused",
        taken.len()
    );
}

/// A checkpointed outbox of 40 readings: the database file alone, no WAL.
async fn checkpointed() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let outbox = Outbox::open(&path, 1 << 20).await.unwrap();
    for i in 0..40 {
        store(&outbox, i).await;
    }
    outbox.close().await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert!(!wal(&path).exists() || std::fs::metadata(wal(&path)).unwrap().len() == 0);
    std::fs::read(&path).unwrap()
}

/// The refusal of a damaged outbox: it names the file, says it is damaged and what to do.
fn assert_clear_refusal(error: &OutboxError, path: &Path, what: &str) {
    let text = error.to_string();
    assert!(
        matches!(error, OutboxError::Damaged { .. }),
        "{what}: {text}"
    );
    assert!(text.contains(&path.display().to_string()), "{what}: {text}");
    assert!(
        text.contains("damaged") && text.contains("refuses to start") && text.contains("backup"),
        "{what}: {text}"
    );
}

#[tokio::test]
async fn a_truncated_or_overwritten_database_is_refused_never_silently_emptied() {
    let db = checkpointed().await;
    let page = 4096;
    assert!(db.len() > 4 * page, "{} bytes", db.len());
    let dir = tempfile::tempdir().unwrap();
    // Cuts at every page boundary and in the middle of each page (never 0 bytes: that is a
    // file created before the first write, indistinguishable from a new outbox).
    let mut cuts: Vec<usize> = (page..db.len()).step_by(page).collect();
    cuts.extend((page / 2..db.len()).step_by(page));
    cuts.extend([1, 50, 99, 100, 101]);
    cuts.sort();
    let mut refused = 0;
    for cut in cuts {
        let path = restore(dir.path(), &db[..cut], &[]);
        match Outbox::open(&path, 1 << 20).await {
            Ok(outbox) => {
                // Only acceptable if nothing was lost (the cut removed free pages only).
                assert_eq!(
                    consistent(&outbox).await,
                    40,
                    "database cut at {cut} of {} opened with readings missing",
                    db.len()
                );
                outbox.close().await;
            }
            Err(error) => {
                assert_clear_refusal(&error, &path, &format!("cut at {cut}"));
                refused += 1;
            }
        }
    }
    assert!(refused > 0);

    // Sectors of the file overwritten with garbage, page by page.
    for page_no in 0..db.len() / page {
        let mut garbled = db.clone();
        garbled[page_no * page + 100..page_no * page + 612].fill(0xa5);
        let path = restore(dir.path(), &garbled, &[]);
        match Outbox::open(&path, 1 << 20).await {
            Ok(outbox) => {
                assert_eq!(consistent(&outbox).await, 40, "page {page_no} garbled");
                outbox.close().await;
            }
            Err(error) => assert_clear_refusal(&error, &path, &format!("page {page_no}")),
        }
    }

    // Not a database at all.
    let path = restore(dir.path(), &[0x5a; 3 * 4096], &[]);
    let error = Outbox::open(&path, 1 << 20).await.unwrap_err();
    assert_clear_refusal(&error, &path, "garbage file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_gateway_run_and_outbox_name_a_damaged_file_and_fail_a_damaged_file_and_fails() {
    let db = checkpointed().await;
    let dir = tempfile::tempdir().unwrap();
    let path = restore(dir.path(), &db[..db.len() / 2], &[]);
    let config = GatewayConfig {
        key_path: dir.path().join("gw.key"),
        outbox_path: path.clone(),
        ..GatewayConfig::default()
    };
    SigningKeyPair::generate_file(&config.key_path).unwrap();
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edge-gateway"))
        .args(["outbox", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&path.display().to_string()) && text.contains("damaged"),
        "{text}"
    );
    // `edge-gateway run` refuses to start, with one clear message (not a hang, not a fresh
    // outbox).
    let mut run = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge-gateway"));
    run.args(["run", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "off")
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), run.output())
        .await
        .expect("the gateway stops at once on a damaged outbox")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&path.display().to_string())
            && text.contains("damaged")
            && text.contains("refuses to start"),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{text}"
    );
    // The damaged file is left as it was, for recovery.
    assert_eq!(std::fs::read(&path).unwrap(), db[..db.len() / 2]);
}
