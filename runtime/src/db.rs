//! Database pools over SQLite (the default, a single file) or PostgreSQL (for scale).
//!
//! Services talk to both through sqlx's `Any` driver and write SQL that both accept: `$1`-style
//! placeholders, integers (`BIGINT`), text and blobs (`BLOB` on SQLite, `BYTEA` on PostgreSQL).
//! Schemas differ in small ways, so each service keeps one migration set per back end
//! (`migrations/sqlite`, `migrations/postgres`) and [`Database::migrate`] runs the right one.
//!
//! SQLite connections run with `journal_mode = WAL`, `synchronous = FULL`, foreign keys on and a
//! busy timeout, so a committed transaction survives a crash or power cut.
//!
//! **Writes on SQLite.** SQLite allows one writer at a time. A plain (`DEFERRED`) transaction
//! that reads first and writes later fails at once with `database is locked` (SQLITE_BUSY,
//! without waiting for the busy timeout) when another connection committed in between: its read
//! snapshot can no longer be upgraded. [`Database::begin_write`] makes that impossible: on
//! SQLite it waits for the process's single writer turn (an async mutex shared by every clone
//! of the [`Database`]) and then opens the transaction with `BEGIN IMMEDIATE`, which takes the
//! write lock up front (another process's writer is waited for by the busy timeout). On
//! PostgreSQL it is a plain transaction. Services open every write transaction with it.

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Executor, Transaction};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Which back end a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Why the database could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL names no supported back end.
    #[error(
        "database URL `{0}` is not supported; use sqlite://PATH (for example sqlite://gridmesh.db) or postgres://USER@HOST:PORT/DB"
    )]
    UnsupportedUrl(String),
    /// The database could not be reached or opened.
    #[error("cannot open database {url}: {source}")]
    Connect {
        /// The URL with any password removed.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("database migration failed on {url}: {source}")]
    Migrate {
        /// The URL with any password removed.
        url: String,
        /// The migrator's error.
        source: sqlx::migrate::MigrateError,
    },
}

/// A pool plus the back end it talks to.
#[derive(Debug, Clone)]
pub struct Database {
    /// The pool.
    pub pool: AnyPool,
    /// Its back end.
    pub backend: Backend,
    url: String,
    /// The single writer turn on SQLite (see [`Database::begin_write`]).
    writer: Arc<Mutex<()>>,
}

/// A write transaction from [`Database::begin_write`]: on SQLite it holds the process's writer
/// turn until it is committed or dropped (dropping rolls back). Use it like a
/// [`Transaction`] (`&mut tx`, `&mut **tx`) and end it with [`WriteTransaction::commit`].
#[derive(Debug)]
pub struct WriteTransaction {
    tx: Transaction<'static, Any>,
    _turn: Option<OwnedMutexGuard<()>>,
}

impl WriteTransaction {
    /// Commits the transaction and gives up the writer turn.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    /// Rolls the transaction back and gives up the writer turn.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for WriteTransaction {
    type Target = Transaction<'static, Any>;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTransaction {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// Hides the password of a URL for logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

impl Database {
    /// Opens a pool. An SQLite file is created if it does not exist.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        install_default_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            let url = if path.contains('?') || path == ":memory:" {
                format!("sqlite://{path}")
            } else {
                format!("sqlite://{path}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(DbError::UnsupportedUrl(url.to_owned()));
        };
        let max_connections = match backend {
            // One writer at a time is all SQLite allows; readers share the WAL.
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|source| DbError::Connect {
                url: redact(&url),
                source,
            })?;
        Ok(Database {
            pool,
            backend,
            url,
            writer: Arc::new(Mutex::new(())),
        })
    }

    /// Opens a write transaction that cannot fail with `database is locked` because of another
    /// writer of this process: on SQLite it first waits for the writer turn (no timeout), then
    /// runs `BEGIN IMMEDIATE`; on PostgreSQL it is [`sqlx::Pool::begin`].
    pub async fn begin_write(&self) -> Result<WriteTransaction, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let turn = self.writer.clone().lock_owned().await;
                let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                Ok(WriteTransaction {
                    tx,
                    _turn: Some(turn),
                })
            }
            Backend::Postgres => Ok(WriteTransaction {
                tx: self.pool.begin().await?,
                _turn: None,
            }),
        }
    }

    /// Runs the migration set that matches the back end.
    pub async fn migrate(&self, sqlite: &Migrator, postgres: &Migrator) -> Result<(), DbError> {
        let migrator = match self.backend {
            Backend::Sqlite => sqlite,
            Backend::Postgres => postgres,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|source| DbError::Migrate {
                url: redact(&self.url),
                source,
            })
    }

    /// The URL, password removed.
    pub fn display_url(&self) -> String {
        redact(&self.url)
    }
}

/// Throw-away PostgreSQL databases for tests.
pub mod scratch {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// The server tests use: `GRIDMESH_TEST_POSTGRES`, or the local test server.
    pub fn admin_url() -> String {
        std::env::var("GRIDMESH_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    /// Creates a new, empty database on the test server and returns its URL. Each call gives a
    /// different database, so tests can run in parallel; old scratch databases from earlier
    /// runs of the same process id are replaced.
    pub async fn fresh_postgres(label: &str) -> Result<String, DbError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let admin = Database::connect(&admin_url()).await?;
        let name = format!(
            "gm_{}_{}_{}",
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let fail = |source| DbError::Connect {
            url: admin_url(),
            source,
        };
        admin
            .pool
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await
            .map_err(fail)?;
        admin
            .pool
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .map_err(fail)?;
        admin.pool.close().await;
        let mut url =
            url::Url::parse(&admin_url()).map_err(|_| DbError::UnsupportedUrl(admin_url()))?;
        url.set_path(&name);
        Ok(url.to_string())
    }
}
