//! Database pools over SQLite (the default, a single file) or PostgreSQL (for scale).
//!
//! Services talk to both through sqlx's `Any` driver and write SQL that both accept: `$1`-style
//! placeholders, integers (`BIGINT`), text and blobs (`BLOB` on SQLite, `BYTEA` on PostgreSQL).
//! Schemas differ in small ways, so each service keeps one migration set per back end
//! (`migrations/sqlite`, `migrations/postgres`) and [`Database::migrate`] runs the right one.
//!
//! SQLite connections run with `journal_mode = WAL`, `synchronous = FULL`, foreign keys on and a
//! busy timeout, so a committed transaction survives a crash or power cut.

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};
use std::time::Duration;

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
        Ok(Database { pool, backend, url })
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
