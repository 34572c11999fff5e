//! The control/status HTTP API (default port 8090).
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/healthz` | `ok` |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/status` | simulated time, totals and every home's power flows ([`crate::Status`]) |
//! | GET | `/manifest` | the [`crate::Manifest`] |
//! | GET | `/truth/{home}?start=RFC3339&minutes=15` | ground truth of one interval ([`crate::TrueEnergy`]); 404 until it has passed |
//! | GET | `/faults` | active lasting faults |
//! | POST | `/faults` | body `{"home":"h001","device":"meter","fault":{"kind":"exception","code":4}}` |
//! | DELETE | `/faults/{home}/{device}` | clear a device's lasting fault |
//!
//! Errors are JSON `{"code":"snake_case","message":"human sentence"}` with a 4xx status.

use crate::error::SimError;
use crate::faults::{DeviceKind, Fault};
use crate::state::Simulator;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use gridmesh_protocol::Interval;
use serde::{Deserialize, Serialize};

/// An API error: a status, a machine code and a sentence for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

impl From<SimError> for ApiError {
    fn from(e: SimError) -> Self {
        let (status, code) = match &e {
            SimError::UnknownHome(_) => (StatusCode::NOT_FOUND, "unknown_home"),
            SimError::NoDevice { .. } => (StatusCode::NOT_FOUND, "unknown_device"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }
}

fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code,
        message: message.into(),
    }
}

/// The body of `POST /faults`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultRequest {
    /// Home id.
    pub home: String,
    /// Device.
    pub device: DeviceKind,
    /// The fault.
    pub fault: Fault,
}

/// One active fault in `GET /faults`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActiveFaultView {
    /// Home id.
    pub home: String,
    /// Device.
    pub device: DeviceKind,
    /// The fault.
    pub fault: Fault,
    /// Scheduled end (simulated Unix seconds), if any.
    pub until: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct TruthQuery {
    start: String,
    #[serde(default = "fifteen")]
    minutes: i64,
}

fn fifteen() -> i64 {
    15
}

/// Builds the router.
pub fn router(sim: Simulator) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route(
            "/status",
            get(|State(sim): State<Simulator>| async move { Json(sim.status()) }),
        )
        .route(
            "/manifest",
            get(|State(sim): State<Simulator>| async move { Json(sim.manifest()) }),
        )
        .route("/truth/{home}", get(truth))
        .route("/faults", get(list_faults).post(inject))
        .route("/faults/{home}/{device}", delete(clear))
        .with_state(sim)
}

async fn metrics(State(sim): State<Simulator>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        sim.metrics_text(),
    )
}

async fn truth(
    State(sim): State<Simulator>,
    Path(home): Path<String>,
    Query(q): Query<TruthQuery>,
) -> Result<Json<crate::TrueEnergy>, ApiError> {
    let interval = Interval::parse(&q.start, q.minutes)
        .map_err(|e| bad_request("bad_interval", e.to_string()))?;
    if !sim.homes().iter().any(|h| h.id == home) {
        return Err(SimError::UnknownHome(home).into());
    }
    sim.ground_truth(&home, &interval).map(Json).ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_available",
        message: format!(
            "no ground truth for {home} over {interval}: the interval has not passed yet in simulated time, started before the simulation, or is older than the kept history"
        ),
    })
}

async fn list_faults(State(sim): State<Simulator>) -> Json<Vec<ActiveFaultView>> {
    Json(
        sim.faults()
            .into_iter()
            .map(|(home, device, a)| ActiveFaultView {
                home,
                device,
                fault: a.fault,
                until: a.until,
            })
            .collect(),
    )
}

async fn inject(
    State(sim): State<Simulator>,
    body: Result<Json<FaultRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(req) = body.map_err(|e| {
        bad_request(
            "bad_fault",
            format!(
                "{e}; expected {{\"home\":\"h001\",\"device\":\"meter\",\"fault\":{{\"kind\":\"exception\",\"code\":4}}}}"
            ),
        )
    })?;
    sim.inject(&req.home, req.device, req.fault)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clear(
    State(sim): State<Simulator>,
    Path((home, device)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let device = DeviceKind::parse(&device).ok_or_else(|| {
        bad_request(
            "bad_device",
            format!("`{device}` is not a device; use inverter, battery or meter"),
        )
    })?;
    sim.clear(&home, device)?;
    Ok(StatusCode::NO_CONTENT)
}
