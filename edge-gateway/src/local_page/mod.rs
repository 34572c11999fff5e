//! The homeowner's local page: what the gateway is doing, on the LAN, behind a password.
//!
//! Served on `[local_page] listen` once `password_hash` (an argon2id PHC string, written by
//! `packaging/install.sh` through `edge-gateway hash-password`) is set; without a hash nothing
//! listens. Server-rendered HTML with a little JavaScript that refreshes the numbers every few
//! seconds; the HTML, script and style sheet are compiled into the binary.
//!
//! Who may call what:
//!
//! - public: `GET /` answers the login form to a caller without a session, `POST /login` (the
//!   password; after [`MAX_FAILURES`] wrong ones in a row every attempt answers 429 for
//!   [`LOCKOUT`]), and the static script and style sheet;
//! - a session (cookie `gm_local`, HttpOnly, SameSite=Strict, 256 random bits compared in
//!   constant time): `GET /` (the page), `GET /api/live`, `GET /api/today`,
//!   `GET /api/household`, `GET /logout`. Without one the API answers 401.
//!
//! Nothing else is accepted: only `GET`s and the login `POST`, so nothing the page does can be
//! triggered across sites (and the SameSite=Strict cookie is not sent cross-site anyway).
//!
//! The household's statements, tokens and quarantined readings come from settlement, fetched by
//! [`fetch`] with requests signed by the gateway's key as the household's.

pub mod fetch;

use crate::config::{ConfigError, invalid};
use crate::sample::{Channel, Sample};
use crate::status::Status;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use gridmesh_protocol::api::settlement::Statement;
use gridmesh_protocol::envelope::ControlStatus;
use gridmesh_protocol::{Interval, Reading};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::http::{ApiError, ApiJson, HttpLimits, layers};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Wrong passwords in a row before logins are refused for [`LOCKOUT`].
pub const MAX_FAILURES: u32 = 5;
/// How long logins are refused after [`MAX_FAILURES`] wrong passwords.
pub const LOCKOUT: Duration = Duration::from_secs(60);
/// Sessions kept at once (the oldest goes first).
const MAX_SESSIONS: usize = 16;
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "gm_local";
/// Recent intervals kept for the page (two days of 15-minute intervals).
const MAX_ROWS: usize = 192;

const PAGE_JS: &str = include_str!("page.js");
const PAGE_CSS: &str = include_str!("page.css");

/// `[local_page]`: the homeowner's page on the LAN.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalPageConfig {
    /// Where the page listens, `IP:port` (default `0.0.0.0:8090`: every LAN interface).
    pub listen: String,
    /// The argon2id hash (PHC string) of the page's password; absent: the page is off.
    /// `install.sh` sets it; `edge-gateway hash-password` makes one.
    pub password_hash: Option<String>,
    /// Whether the session cookie is marked `Secure` (only when the page is behind HTTPS).
    pub secure_cookie: bool,
    /// A session ends after this many minutes without a request.
    pub session_idle_minutes: u32,
}

impl Default for LocalPageConfig {
    fn default() -> Self {
        LocalPageConfig {
            listen: "0.0.0.0:8090".into(),
            password_hash: None,
            secure_cookie: false,
            session_idle_minutes: 12 * 60,
        }
    }
}

impl LocalPageConfig {
    /// Whether the page is served (a password hash is set).
    pub fn enabled(&self) -> bool {
        self.password_hash.is_some()
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(hash) = &self.password_hash
            && PasswordHash::new(hash).is_err()
        {
            return Err(invalid(
                "local_page.password_hash",
                "is not an argon2 password hash (a PHC string starting with $argon2id$)",
                "run `sudo edge-gateway hash-password` and paste its output, or rerun install.sh",
            ));
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "local_page.listen",
                format!("`{}` is not an IP:port address", self.listen),
                "write it as 0.0.0.0:8090 (every interface) or 192.168.1.20:8090",
            ));
        }
        if self.session_idle_minutes == 0 {
            return Err(invalid(
                "local_page.session_idle_minutes",
                "must be positive",
                "use 720 (12 hours)",
            ));
        }
        Ok(())
    }
}

/// argon2id memory cost, KiB. 4 MiB × 9 passes costs an attacker about what OWASP's
/// 7 MiB × 5 and 19 MiB × 2 settings do (memory × passes), while a login's allocation stays
/// small enough for the Pi gateway's 20 MB RSS budget (`gateway_bench` measures the high-water
/// mark with a login); online guessing is limited by the lockout anyway.
pub const ARGON2_MEMORY_KIB: u32 = 4 * 1024;
/// argon2id passes (with [`ARGON2_MEMORY_KIB`]).
pub const ARGON2_PASSES: u32 = 9;

/// An argon2id hash (PHC string, parameters included) of `password` with a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let params = argon2::Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, 1, None)
        .map_err(|e| e.to_string())?;
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC string `hash` (argon2's comparison is constant time).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A random password of 20 characters (about 117 bits) without look-alike characters.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = String::with_capacity(20);
    while out.len() < 20 {
        let mut byte = [0u8; 1];
        OsRng.fill_bytes(&mut byte);
        let b = usize::from(byte[0]);
        // Rejection sampling keeps every character equally likely.
        if b < 256 - 256 % ALPHABET.len() {
            out.push(char::from(ALPHABET[b % ALPHABET.len()]));
        }
    }
    out
}

/// Live power flows from the latest polls. Powers in W; a value is absent until a device
/// reported it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Live {
    /// When the last successful poll was read (gateway clock).
    pub at: Option<DateTime<Utc>>,
    /// PV production, W.
    pub pv_w: Option<i64>,
    /// Battery power, W: positive discharging, negative charging.
    pub battery_w: Option<i64>,
    /// Grid power, W: positive importing, negative exporting.
    pub grid_w: Option<i64>,
    /// The house's consumption, W: PV + battery + grid (needs the grid meter).
    pub house_w: Option<i64>,
    /// Battery state of charge, per mille.
    pub soc_permille: Option<u16>,
    /// The devices' cumulative counters, Wh (`grid_import`, `grid_export`, `pv`,
    /// `battery_charge`, `battery_discharge`), as they report them.
    pub counters_wh: BTreeMap<&'static str, i64>,
    power_mw: BTreeMap<&'static str, i64>,
}

impl Live {
    /// Takes in one poll cycle: each channel a device answered replaces its last value.
    pub fn observe(&mut self, samples: &[Sample]) {
        for sample in samples {
            let Ok(values) = &sample.values else { continue };
            if sample.stale {
                continue;
            }
            self.at = Some(sample.at);
            for (channel, counter) in &values.counters {
                self.counters_wh.insert(channel.name(), counter.mwh / 1000);
            }
            for (channel, mw) in &values.power_mw {
                self.power_mw.insert(channel.name(), *mw);
            }
            if values.soc_permille.is_some() {
                self.soc_permille = values.soc_permille;
            }
        }
        let p = |c: Channel| self.power_mw.get(c.name()).copied();
        let pair = |plus: Channel, minus: Channel| match (p(plus), p(minus)) {
            (None, None) => None,
            (a, b) => Some((a.unwrap_or(0) - b.unwrap_or(0)) / 1000),
        };
        self.pv_w = p(Channel::Pv).map(|mw| mw / 1000);
        self.battery_w = pair(Channel::BatteryDischarge, Channel::BatteryCharge);
        self.grid_w = pair(Channel::GridImport, Channel::GridExport);
        self.house_w = self
            .grid_w
            .map(|grid| (grid + self.pv_w.unwrap_or(0) + self.battery_w.unwrap_or(0)).max(0));
    }
}

/// One order the household placed, as the market's result lists it.
#[derive(Debug, Clone, Serialize)]
pub struct OrderRow {
    /// `buy` or `sell`.
    pub side: &'static str,
    /// Quantity, Wh.
    pub quantity_wh: i64,
    /// Limit price, minor units per MWh.
    pub limit_price: i64,
    /// How much of it cleared, Wh.
    pub cleared_wh: i64,
}

/// One interval of the household: metered energy, orders, what cleared at what price, and the
/// envelope the gateway kept.
#[derive(Debug, Clone, Serialize)]
pub struct IntervalRow {
    /// The interval key (`2026-06-21T12:00:00Z/15`).
    pub interval: String,
    /// Its start.
    pub start: DateTime<Utc>,
    /// Metered energy of the signed reading, once signed: import, export, PV, battery charge
    /// and discharge, Wh.
    pub imported_wh: Option<i64>,
    /// Grid export, Wh.
    pub exported_wh: Option<i64>,
    /// PV production, Wh.
    pub pv_wh: Option<i64>,
    /// Battery charge, Wh.
    pub charged_wh: Option<i64>,
    /// Battery discharge, Wh.
    pub discharged_wh: Option<i64>,
    /// The reading's flags (`estimated`, `clock_step`, …).
    pub flags: Vec<&'static str>,
    /// The household's orders (from the cleared result).
    pub orders: Vec<OrderRow>,
    /// Whether the market's result has been fetched.
    pub cleared: bool,
    /// Energy sold in the clearing, Wh.
    pub sold_wh: Option<i64>,
    /// Energy bought in the clearing, Wh.
    pub bought_wh: Option<i64>,
    /// The clearing price at the household's node, minor units per MWh.
    pub price: Option<i64>,
    /// The envelope in force: export limit, Wh.
    pub export_limit_wh: Option<i64>,
    /// The envelope in force: import limit, Wh.
    pub import_limit_wh: Option<i64>,
    /// `market` or `default`.
    pub envelope_source: Option<&'static str>,
    /// PV energy curtailed to keep the envelope (estimate), Wh.
    pub curtailed_wh: Option<i64>,
}

impl IntervalRow {
    fn new(interval: Interval) -> Self {
        IntervalRow {
            interval: interval.key(),
            start: interval.start(),
            imported_wh: None,
            exported_wh: None,
            pv_wh: None,
            charged_wh: None,
            discharged_wh: None,
            flags: Vec::new(),
            orders: Vec::new(),
            cleared: false,
            sold_wh: None,
            bought_wh: None,
            price: None,
            export_limit_wh: None,
            import_limit_wh: None,
            envelope_source: None,
            curtailed_wh: None,
        }
    }
}

/// What settlement says about the household, as last fetched.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SettlementView {
    /// When the last fetch succeeded (wall clock).
    pub fetched_at: Option<DateTime<Utc>>,
    /// Why the last fetch failed, if it did.
    pub error: Option<String>,
    /// The latest statements (newest first, at most 24).
    pub statements: Vec<Statement>,
    /// The month (`2026-06`, gateway clock) of `month_net`.
    pub month: Option<String>,
    /// The month's net money so far, minor units (positive = received).
    pub month_net: Option<i64>,
    /// The month's energy sold and bought in the market, Wh.
    pub month_sold_wh: Option<i64>,
    /// Energy bought in the market this month, Wh.
    pub month_bought_wh: Option<i64>,
    /// Token holdings (`GET /balances/{participant}`), as settlement answers them.
    pub balances: Option<serde_json::Value>,
    /// The household's quarantined or held readings (`GET /quarantine`), newest first.
    pub quarantine: Option<serde_json::Value>,
}

/// The household view behind the page and Home Assistant.
#[derive(Debug, Default)]
pub struct Household {
    /// Recent intervals, oldest first.
    pub intervals: VecDeque<IntervalRow>,
    /// Settlement's data.
    pub settlement: SettlementView,
}

impl Household {
    /// The row of `interval`, created when new (the oldest rows go beyond two days).
    pub fn row(&mut self, interval: Interval) -> &mut IntervalRow {
        let start = interval.start();
        let at = match self.intervals.binary_search_by_key(&start, |r| r.start) {
            Ok(i) => i,
            Err(mut i) => {
                if self.intervals.len() >= MAX_ROWS {
                    self.intervals.pop_front();
                    i = i.saturating_sub(1);
                }
                self.intervals.insert(i, IntervalRow::new(interval));
                i
            }
        };
        &mut self.intervals[at]
    }

    /// The row of the interval containing `now`, if there is one.
    pub fn at(&self, now: DateTime<Utc>) -> Option<&IntervalRow> {
        self.intervals.iter().rev().find(|r| {
            r.start <= now && Interval::from_key(&r.interval).is_ok_and(|i| i.contains(now))
        })
    }

    /// Records a signed reading's energy in its interval's row.
    pub fn reading_signed(&mut self, reading: &Reading) {
        let d = reading.deltas;
        let row = self.row(reading.interval);
        row.imported_wh = Some(d.grid_import.0);
        row.exported_wh = Some(d.grid_export.0);
        row.pv_wh = Some(d.pv.0);
        row.charged_wh = Some(d.battery_charge.0);
        row.discharged_wh = Some(d.battery_discharge.0);
        row.flags = reading.flags.names();
    }

    /// Records the control loop's view of the envelope for its interval.
    pub fn control_seen(&mut self, status: &ControlStatus) {
        let row = self.row(status.interval);
        row.export_limit_wh = Some(status.export_limit_wh.0);
        row.import_limit_wh = Some(status.import_limit_wh.0);
        row.curtailed_wh = Some(status.curtailed_wh.0);
        row.envelope_source = Some(match status.source {
            gridmesh_protocol::envelope::EnvelopeSource::Market => "market",
            gridmesh_protocol::envelope::EnvelopeSource::Default => "default",
        });
    }
}

/// The page's login state: one password, in-memory sessions, the failure count.
#[derive(Debug)]
struct Auth {
    hash: String,
    secure: bool,
    idle: Duration,
    sessions: Mutex<Vec<([u8; 32], Instant)>>,
    failures: Mutex<(u32, Option<Instant>)>,
}

impl Auth {
    fn locked_for(&self) -> Option<Duration> {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let last = f.1?;
        (f.0 >= MAX_FAILURES && last.elapsed() < LOCKOUT).then(|| LOCKOUT - last.elapsed())
    }

    fn record(&self, ok: bool) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            *f = (0, None);
        } else {
            // A lockout that has run out starts a new count.
            if f.0 >= MAX_FAILURES {
                f.0 = 0;
            }
            f.0 += 1;
            f.1 = Some(Instant::now());
        }
    }

    fn start_session(&self) -> String {
        let mut id = [0u8; 32];
        OsRng.fill_bytes(&mut id);
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|(_, seen)| now.duration_since(*seen) < self.idle);
        if sessions.len() >= MAX_SESSIONS {
            sessions.remove(0);
        }
        sessions.push((id, now));
        id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether the request carries a live session; refreshes its idle timer. Every stored
    /// session is compared, in constant time.
    fn check(&self, headers: &HeaderMap) -> bool {
        let Some(id) = session_id(headers) else {
            return false;
        };
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|(_, seen)| now.duration_since(*seen) < self.idle);
        let mut found = false;
        for (stored, seen) in sessions.iter_mut() {
            if bool::from(stored.ct_eq(&id)) {
                *seen = now;
                found = true;
            }
        }
        found
    }

    fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = session_id(headers) {
            self.sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(stored, _)| !bool::from(stored.ct_eq(&id)));
        }
    }

    fn cookie(&self, id: &str, max_age: Option<u32>) -> String {
        format!(
            "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{}{}",
            max_age
                .map(|a| format!("; Max-Age={a}"))
                .unwrap_or_default(),
            if self.secure { "; Secure" } else { "" }
        )
    }
}

/// The session id in the `Cookie` header, decoded.
fn session_id(headers: &HeaderMap) -> Option<[u8; 32]> {
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)?
        .1;
    if value.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(value.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What the page's handlers share.
#[derive(Debug)]
pub struct PageState {
    gateway: String,
    participant: String,
    currency: String,
    status: Arc<Status>,
    clock: Clock,
    auth: Auth,
}

impl PageState {
    /// The state for `config`'s page; `None` when the page is off (no password hash).
    pub fn new(
        config: &crate::GatewayConfig,
        status: Arc<Status>,
        clock: Clock,
    ) -> Option<Arc<Self>> {
        let hash = config.local_page.password_hash.clone()?;
        Some(Arc::new(PageState {
            gateway: config.gateway_id.to_string(),
            participant: config.participant.to_string(),
            currency: config.home_assistant.currency.clone(),
            status,
            clock,
            auth: Auth {
                hash,
                secure: config.local_page.secure_cookie,
                idle: Duration::from_secs(u64::from(config.local_page.session_idle_minutes) * 60),
                sessions: Mutex::new(Vec::new()),
                failures: Mutex::new((0, None)),
            },
        }))
    }
}

/// The page's router (with the runtime's standard layers: body limit, timeout, trace).
pub fn router(state: Arc<PageState>) -> Router {
    let router = Router::new()
        .route("/", get(index))
        .route("/login", get(login_form).post(login))
        .route("/logout", get(logout))
        .route("/api/live", get(api_live))
        .route("/api/today", get(api_today))
        .route("/api/household", get(api_household))
        .route(
            "/assets/page.js",
            get(|| async { asset("text/javascript; charset=utf-8", PAGE_JS) }),
        )
        .route(
            "/assets/page.css",
            get(|| async { asset("text/css; charset=utf-8", PAGE_CSS) }),
        )
        .with_state(state);
    let limits = HttpLimits {
        max_body_bytes: 4 * 1024,
        ..HttpLimits::default()
    };
    layers(router, &limits)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Security headers every HTML answer carries: no framing, no inline script, no sniffing.
fn html(code: StatusCode, body: String) -> Response {
    let mut response = (code, Html(body)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{}</title><link rel=\"stylesheet\" href=\"/assets/page.css\"></head>",
        esc(title)
    )
}

fn login_page(state: &PageState, message: Option<&str>) -> String {
    format!(
        "{}<body class=\"login\"><main><h1>gridmesh gateway</h1><p class=\"sub\">{} · household {}</p>\
<form method=\"post\" action=\"/login\"><label for=\"password\">Password</label>\
<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
{}<button type=\"submit\">Log in</button></form>\
<p class=\"hint\">The password was set when the gateway was installed (<code>install.sh</code>). \
To set a new one: <code>sudo edge-gateway hash-password</code> and put the hash in <code>[local_page] password_hash</code>.</p></main></body></html>",
        head("gridmesh gateway: log in"),
        esc(&state.gateway),
        esc(&state.participant),
        message
            .map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(m)))
            .unwrap_or_default(),
    )
}

fn watts(w: Option<i64>) -> String {
    match w {
        Some(w) if w.abs() >= 10_000 => format!("{}.{} kW", w / 1000, (w.abs() % 1000) / 100),
        Some(w) => format!("{w} W"),
        None => "–".into(),
    }
}

fn dashboard(state: &PageState) -> String {
    let s = state.status.snapshot();
    let live = &s.live;
    let tile = |id: &str, label: &str, value: String, note: &str| {
        format!(
            "<section class=\"tile\" id=\"tile-{id}\"><h2>{label}</h2><p class=\"value\" data-live=\"{id}\">{}</p><p class=\"note\" data-note=\"{id}\">{}</p></section>",
            esc(&value),
            esc(note)
        )
    };
    let soc = live
        .soc_permille
        .map(|p| format!("{}.{} %", p / 10, p % 10))
        .unwrap_or_else(|| "–".into());
    format!(
        "{}<body><header><h1>gridmesh gateway</h1><p class=\"sub\">{} · household {} · <span data-live=\"clock\">{}</span></p>\
<a class=\"logout\" href=\"/logout\">Log out</a></header><main data-currency=\"{}\">\
<div class=\"tiles\">{}{}{}{}</div>\
<section class=\"panel\"><h2>Devices and delivery</h2><div id=\"health\"></div></section>\
<section class=\"panel\"><h2>Today's intervals</h2><div class=\"scroll\"><table id=\"today\"><thead><tr>\
<th>Interval</th><th>Import Wh</th><th>Export Wh</th><th>PV Wh</th><th>Orders</th><th>Sold Wh</th><th>Bought Wh</th><th>Price c/kWh</th><th>Envelope Wh (export/import)</th><th>Curtailed Wh</th></tr></thead><tbody></tbody></table></div></section>\
<section class=\"panel\"><h2>Statements, tokens and quarantined readings</h2><div id=\"household\"><p>Loading from settlement…</p></div></section>\
</main><script src=\"/assets/page.js\" defer></script></body></html>",
        head("gridmesh gateway"),
        esc(&state.gateway),
        esc(&state.participant),
        live.at
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default(),
        esc(&state.currency),
        tile("pv", "Solar", watts(live.pv_w), "producing"),
        tile(
            "battery",
            "Battery",
            watts(live.battery_w),
            &format!("state of charge {soc}")
        ),
        tile("house", "House", watts(live.house_w), "using"),
        tile("grid", "Grid", watts(live.grid_w), "+ import / − export"),
    )
}

async fn index(State(state): State<Arc<PageState>>, headers: HeaderMap) -> Response {
    if state.auth.check(&headers) {
        html(StatusCode::OK, dashboard(&state))
    } else {
        html(StatusCode::OK, login_page(&state, None))
    }
}

async fn login_form(State(state): State<Arc<PageState>>) -> Response {
    html(StatusCode::OK, login_page(&state, None))
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
struct LoginForm {
    password: String,
}

async fn login(State(state): State<Arc<PageState>>, Form(form): Form<LoginForm>) -> Response {
    if let Some(wait) = state.auth.locked_for() {
        tracing::warn!("local page: login refused while locked after repeated wrong passwords");
        let mut r = html(
            StatusCode::TOO_MANY_REQUESTS,
            login_page(
                &state,
                Some(&format!(
                    "Too many wrong passwords. Try again in {} seconds.",
                    wait.as_secs() + 1
                )),
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs() + 1));
        return r;
    }
    let hash = state.auth.hash.clone();
    let password = form.password;
    // argon2 is CPU-heavy: off the async threads.
    let ok = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    state.auth.record(ok);
    if !ok {
        tracing::warn!("local page: wrong password");
        return html(
            StatusCode::UNAUTHORIZED,
            login_page(&state, Some("Wrong password. Check it and try again.")),
        );
    }
    let id = state.auth.start_session();
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&state.auth.cookie(&id, None)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(state): State<Arc<PageState>>, headers: HeaderMap) -> Response {
    state.auth.logout(&headers);
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&state.auth.cookie("", Some(0))) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn require(state: &PageState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.auth.check(headers) {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "log in on the gateway's page first (this API needs its session cookie)",
        ))
    }
}

/// `GET /api/live`: powers, device health, outbox backlog and the current interval.
async fn api_live(
    State(state): State<Arc<PageState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require(&state, &headers)?;
    let s = state.status.snapshot();
    let now = state.clock.now();
    let current = state.status.with_household(|h| h.at(now).cloned());
    let body = serde_json::json!({
        "now": now,
        "live": s.live,
        "devices": s.devices,
        "outbox_count": s.outbox_count,
        "outbox_bytes": s.outbox_bytes,
        "outbox_dropped": s.outbox_dropped,
        "readings_signed": s.readings_signed,
        "delivered_mqtt": s.delivered_mqtt,
        "delivered_http": s.delivered_http,
        "delivery_failures": s.delivery_failures,
        "mqtt_connected": s.mqtt_connected,
        "mqtt_error": s.mqtt_error,
        "last_interval": s.last_interval,
        "orders_submitted": s.orders_submitted,
        "orders_failed": s.orders_failed,
        "control": s.control,
        "pv_curtailment_note": s.pv_curtailment_note,
        "current": current,
    });
    Ok(ApiJson(body).into_response())
}

/// `GET /api/today`: today's intervals (gateway clock, UTC), oldest first.
async fn api_today(
    State(state): State<Arc<PageState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require(&state, &headers)?;
    let today = state.clock.now().date_naive();
    let rows: Vec<IntervalRow> = state.status.with_household(|h| {
        h.intervals
            .iter()
            .filter(|r| r.start.date_naive() == today)
            .cloned()
            .collect()
    });
    Ok(ApiJson(rows).into_response())
}

/// `GET /api/household`: settlement's statements, tokens and quarantined readings.
async fn api_household(
    State(state): State<Arc<PageState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require(&state, &headers)?;
    let view = state.status.with_household(|h| h.settlement.clone());
    Ok(ApiJson(view).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Counter, DeviceValues};

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=4096,t=9,p=1$"), "{hash}");
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct hors"));
        assert!(!verify_password("not a hash", "x"));
        assert_ne!(generate_password(), generate_password());
    }

    #[test]
    fn live_flows_add_up() {
        let sample = |device: &str, values: DeviceValues| Sample {
            at: Utc::now(),
            device: device.into(),
            values: Ok(values),
            stale: false,
        };
        let mut live = Live::default();
        let mut meter = DeviceValues::default();
        meter.split_power(-1_500_000, Channel::GridImport, Channel::GridExport);
        meter.counters.push((
            Channel::GridExport,
            Counter {
                mwh: 12_345_678,
                modulus_mwh: None,
            },
        ));
        let pv = DeviceValues {
            power_mw: vec![(Channel::Pv, 4_000_000)],
            ..Default::default()
        };
        let mut battery = DeviceValues {
            soc_permille: Some(655),
            ..Default::default()
        };
        battery.split_power(
            -1_000_000,
            Channel::BatteryDischarge,
            Channel::BatteryCharge,
        );
        live.observe(&[
            sample("meter", meter),
            sample("inv", pv),
            sample("bat", battery),
        ]);
        assert_eq!(live.grid_w, Some(-1500));
        assert_eq!(live.battery_w, Some(-1000));
        assert_eq!(live.pv_w, Some(4000));
        // 4000 W of PV: 1000 W into the battery, 1500 W exported, 1500 W used.
        assert_eq!(live.house_w, Some(1500));
        assert_eq!(live.soc_permille, Some(655));
        assert_eq!(live.counters_wh["grid_export"], 12_345);
    }

    #[test]
    fn session_cookies_parse_strictly() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {SESSION_COOKIE}={}", "0f".repeat(32))).unwrap(),
        );
        assert_eq!(session_id(&h), Some([0x0f; 32]));
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{SESSION_COOKIE}={}", "zz".repeat(32))).unwrap(),
        );
        assert_eq!(session_id(&h), None);
    }

    #[test]
    fn rows_are_kept_in_order_and_bounded() {
        let mut h = Household::default();
        let length = gridmesh_protocol::IntervalLength::from_minutes(15).unwrap();
        let first = Interval::containing(Utc::now(), length);
        let mut i = first;
        for _ in 0..(MAX_ROWS + 10) {
            h.row(i).price = Some(1);
            i = i.next();
        }
        assert_eq!(h.intervals.len(), MAX_ROWS);
        assert!(
            h.intervals
                .iter()
                .zip(h.intervals.iter().skip(1))
                .all(|(a, b)| a.start < b.start)
        );
        h.row(first).price = Some(2);
        assert_eq!(h.intervals.len(), MAX_ROWS);
    }
}
