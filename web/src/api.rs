//! The answers of the dashboard's own JSON API (`/api/*`, `/healthz`), as typed structs: what
//! the pages' script reads. Upstream data inside them keeps the protocol's types, so it is
//! served in exactly the shape the market and settlement answer with.

use crate::views::{Alert, ParticipantRow, Sources};
use chrono::{DateTime, Utc};
use gridmesh_protocol::api::settlement::{Balances, BlockSummary, Holding, Statement};
use serde::Serialize;

/// `GET /api/status`: the snapshot's version and a summary for the page header.
#[derive(Debug, Clone, Serialize)]
pub struct StatusAnswer {
    /// The snapshot version (bumped whenever the data changes).
    pub version: u64,
    /// When the last refresh finished.
    pub refreshed_at: Option<DateTime<Utc>>,
    /// Upstream health.
    pub sources: Sources,
    /// The next interval open for orders (its start, RFC 3339).
    pub next_interval: Option<String>,
    /// The newest cleared interval's key.
    pub latest_interval: Option<String>,
    /// How many alerts are shown.
    pub alerts: usize,
    /// Active incidents nobody acknowledged yet (the nav badge).
    pub incidents_unacknowledged: usize,
}

/// `GET /api/ready`: whether every page has data (scripts wait on it).
#[derive(Debug, Clone, Serialize)]
pub struct ReadyAnswer {
    /// True when nothing is missing.
    pub ready: bool,
    /// What is still missing, in words.
    pub missing: Vec<&'static str>,
    /// The snapshot version.
    pub version: u64,
}

/// `GET /api/participants`: the rows, filtered.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantsAnswer {
    /// Upstream health.
    pub sources: Sources,
    /// The subtree filter, if any.
    pub node: Option<String>,
    /// The rows.
    pub participants: Vec<ParticipantRow>,
    /// The period each total covers, in words.
    pub period: String,
}

/// `GET /api/participants/{id}`: one participant with its holdings and statements fresh from
/// settlement (the cached balance, and the error beside it, when settlement does not answer).
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantDetail {
    /// Its row.
    pub participant: ParticipantRow,
    /// Its token lots.
    pub holdings: Vec<Holding>,
    /// Its balances as settlement reports them.
    pub balance: Option<Balances>,
    /// Its statements (`None` when settlement did not answer).
    pub statements: Option<Vec<Statement>>,
    /// Why some of it is missing or cached.
    pub errors: Vec<String>,
}

/// `GET /api/alerts`.
#[derive(Debug, Clone, Serialize)]
pub struct AlertsAnswer {
    /// Upstream health.
    pub sources: Sources,
    /// Every alert, most urgent kinds first.
    pub alerts: Vec<Alert>,
}

/// `GET /api/ledger/blocks`: the newest blocks held.
#[derive(Debug, Clone, Serialize)]
pub struct BlocksAnswer {
    /// Upstream health.
    pub sources: Sources,
    /// Newest first.
    pub blocks: Vec<BlockSummary>,
}

/// `GET /healthz`: the dashboard runs; whether each service answered the last refresh.
#[derive(Debug, Clone, Serialize)]
pub struct HealthAnswer {
    /// Always `ok` (the dashboard itself answers).
    pub status: &'static str,
    /// Whether the market answered.
    pub market: bool,
    /// Whether settlement answered.
    pub settlement: bool,
}

/// `GET /api/me`: who is logged in, what the pages may offer them, and the token their
/// writes carry (`x-csrf-token`).
#[derive(Debug, Clone, Serialize)]
pub struct MeAnswer {
    /// The user's name.
    pub name: String,
    /// `admin`, `viewer` or `household`.
    pub role: &'static str,
    /// The household's participant id (household users only).
    pub participant: Option<String>,
    /// Whether operator actions are offered (admin only).
    pub operator_actions: bool,
    /// The session's CSRF token.
    pub csrf: String,
}

/// `GET /api/quarantine` (admin and viewer): settlement's quarantined readings.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineAnswer {
    /// Upstream health.
    pub sources: Sources,
    /// The items, newest first.
    pub items: Vec<gridmesh_protocol::api::settlement::QuarantineItem>,
}
