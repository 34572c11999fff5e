//! Storage through sqlx's Any driver on SQLite or PostgreSQL: every SQL statement of the
//! service and of the audit lives here. Callers group writes into one transaction per unit of
//! work (a batch of readings, one interval, one token operation), so a crash leaves nothing
//! half-written.
//!
//! - [`readings`]: readings and quarantine (batched inserts, PostgreSQL `COPY`, look-ups);
//! - [`ledger`]: entries, lots and sealed blocks;
//! - [`intervals`]: results, statements, compliance rows and withheld mints;
//! - [`registry`]: gateway and participant registrations;
//! - [`audit`]: everything `settlement verify` reads, loaded in one step.

pub mod audit;
pub mod intervals;
pub mod ledger;
pub mod readings;
pub mod registry;

pub use ledger::{SealedBlock, insert_entry, insert_lot, seal_block};
pub use readings::{
    QuarantineRow, READING_COLUMN_LIST, ReadingRow, copy_readings, insert_quarantine,
    insert_readings, readings_copy_binary, rows_per_statement,
};

use gridmesh_runtime::db::{Database, DbError};
use sqlx::migrate::Migrator;
use sqlx::{Any, Execute as _, QueryBuilder, Transaction};

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or migrating failed.
    #[error(transparent)]
    Open(#[from] DbError),
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// Stored data does not parse.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Opens the database and runs the migrations of its back end.
pub async fn open(url: &str) -> Result<Database, StoreError> {
    let db = Database::connect(url).await?;
    db.migrate(&SQLITE, &POSTGRES).await?;
    Ok(db)
}

/// Runs a statement built with [`QueryBuilder`] on either back end.
///
/// sqlx's Any driver writes `?` placeholders, which PostgreSQL does not accept (sqlx issue
/// #3000). Our statements are built only from identifiers and bound values (never a literal
/// `?`), so on PostgreSQL the placeholders are numbered `$1, $2, …` before the statement runs.
pub(crate) async fn execute_built(
    tx: &mut Transaction<'_, Any>,
    mut builder: QueryBuilder<'_, Any>,
) -> Result<(), StoreError> {
    let mut query = builder.build();
    let arguments = query
        .take_arguments()
        .map_err(sqlx::Error::Encode)?
        .unwrap_or_default();
    let sql = if tx.backend_name() == <sqlx::Postgres as sqlx::Database>::NAME {
        numbered_placeholders(query.sql())
    } else {
        query.sql().to_owned()
    };
    sqlx::query_with(&sql, arguments).execute(&mut **tx).await?;
    Ok(())
}

/// `?` placeholders numbered as PostgreSQL's `$1, $2, …`.
fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + sql.len() / 4);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            numbered_placeholders("INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
    }
}
