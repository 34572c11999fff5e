//! The trader's side of the CLI: sign and submit orders, list and cancel them, read results.

use crate::failure::Failure;
use clap::Subcommand;
use gridmesh_protocol::api::market::{
    ErrorBody, MAX_ORDER_BATCH, MarketStatus, OrderAccepted, OrderBatch, OrderBatchAccepted,
    OrderCancelled, OrderRecord,
};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::order::{Order, OrderCancel};
use gridmesh_protocol::{Interval, NodeId, ParticipantId, PricePerMwh, SignedEnvelope, Wh, ZoneId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::PathBuf;

/// Sends a request and decodes the answer as `T`; an error answer becomes a [`Failure`] with
/// the market's code and message.
async fn call<T: DeserializeOwned>(request: reqwest::RequestBuilder) -> Result<T, Failure> {
    let response = request.send().await.map_err(|e| {
        Failure::runtime(format!(
            "cannot reach the market: {e}; is it running (see --market)?"
        ))
    })?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| Failure::runtime(format!("the market sent an unreadable reply: {e}")))?;
    if status.is_success() {
        serde_json::from_slice(&bytes)
            .map_err(|e| Failure::runtime(format!("the market sent an unreadable reply: {e}")))
    } else {
        let error: ErrorBody = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::runtime(format!("the market sent an unreadable reply: {e}")))?;
        let message = format!(
            "{} ({}, HTTP {})",
            error.message,
            error.code,
            status.as_u16()
        );
        Err(if status.is_client_error() {
            Failure::input(message)
        } else {
            Failure::runtime(message)
        })
    }
}

fn print(v: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON prints"));
}

fn bad(e: impl std::fmt::Display) -> Failure {
    Failure::input(e)
}

/// Order subcommands.
#[derive(Debug, Subcommand)]
pub enum OrderAction {
    /// Sign and submit an order.
    Submit {
        /// The participant's key file.
        #[arg(long)]
        key: PathBuf,
        /// The participant id.
        #[arg(long)]
        participant: String,
        /// The grid node.
        #[arg(long)]
        node: String,
        /// buy or sell.
        #[arg(long, value_parser = parse_side)]
        side: gridmesh_protocol::Side,
        /// Quantity in Wh.
        #[arg(long)]
        quantity_wh: i64,
        /// Limit price in minor units per MWh (25.00 c/kWh = 25000).
        #[arg(long, allow_hyphen_values = true)]
        limit_price: i64,
        /// Interval start (RFC 3339), or `next` for the next open interval.
        #[arg(long, default_value = "next")]
        interval: String,
        /// Nonce; defaults to the current time in microseconds (fresh for every call).
        #[arg(long)]
        nonce: Option<u64>,
        /// The market zone the order is for (signed into it, gridmesh/order/v2). Defaults to
        /// the zone of the market at --market; given, it must be that market's zone (a guard
        /// against signing for the wrong market).
        #[arg(long)]
        zone: Option<String>,
    },
    /// Submit signed orders from a file in batches of up to 1000 (`POST /orders/batch`):
    /// one signed envelope (`{"payload","signature","public_key"}`, as `POST /orders` takes)
    /// per line; blank lines are skipped. Prints one JSON line per order (its line number,
    /// status, order id or error); exits 2 (bad input) if any order was refused.
    SubmitBatch {
        /// The JSON-lines file of signed orders.
        #[arg(long)]
        file: PathBuf,
    },
    /// List orders (household data: sign the request with `--key` as `--participant` to list
    /// your own, or send the auditor or operator token with `--token`).
    List {
        /// Only this participant's (with `--key`: the participant who signs).
        #[arg(long)]
        participant: Option<String>,
        /// Only this interval (start, RFC 3339).
        #[arg(long)]
        interval: Option<String>,
        /// The participant's key file: signs the request (gridmesh/request/v1).
        #[arg(long, requires = "participant")]
        key: Option<PathBuf>,
        /// An auditor or operator token, sent as `Authorization: Bearer`.
        #[arg(long, env = "GRIDMESH_MARKET_TOKEN", conflicts_with = "key")]
        token: Option<String>,
    },
    /// Cancel an order before gate closure.
    Cancel {
        /// The participant's key file.
        #[arg(long)]
        key: PathBuf,
        /// The participant id.
        #[arg(long)]
        participant: String,
        /// The nonce of the order to cancel.
        #[arg(long)]
        nonce: u64,
    },
}

/// Results subcommands.
#[derive(Debug, Subcommand)]
pub enum ResultsAction {
    /// Show one interval's result, or the results since a time.
    Show {
        /// The interval start (RFC 3339).
        #[arg(long)]
        interval: Option<String>,
        /// List results from this start on.
        #[arg(long)]
        since: Option<String>,
        /// Most results to list.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

fn parse_side(s: &str) -> Result<gridmesh_protocol::Side, String> {
    match s {
        "buy" => Ok(gridmesh_protocol::Side::Buy),
        "sell" => Ok(gridmesh_protocol::Side::Sell),
        other => Err(format!("`{other}` is not a side; use buy or sell")),
    }
}

/// `order submit|list|cancel`.
pub async fn order_command(market: &str, action: OrderAction) -> Result<(), Failure> {
    let http = reqwest::Client::new();
    match action {
        OrderAction::Submit {
            key,
            participant,
            node,
            side,
            quantity_wh,
            limit_price,
            interval,
            nonce,
            zone,
        } => {
            // The bounds every entry point checks, before anything is signed or sent.
            market_engine::book::check_order_values("the order", quantity_wh, limit_price)
                .map_err(bad)?;
            let wanted = zone.map(ZoneId::new).transpose().map_err(bad)?;
            let key = SigningKeyPair::load(&key).map_err(bad)?;
            let status: MarketStatus = call(http.get(format!("{market}/status"))).await?;
            let zone = ZoneId::new(&status.zone).map_err(|e| {
                Failure::runtime(format!("the market at {market} names an invalid zone: {e}"))
            })?;
            if let Some(wanted) = wanted
                && wanted != zone
            {
                return Err(bad(format!(
                    "--zone is `{wanted}`, but the market at {market} clears zone `{zone}`; check --market"
                )));
            }
            let interval = if interval == "next" {
                status.next_open_interval
            } else {
                Interval::parse(&interval, status.interval_minutes.into()).map_err(bad)?
            };
            let nonce = nonce.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64)
            });
            let order = Order {
                zone: Some(zone),
                participant: ParticipantId::new(participant).map_err(bad)?,
                node: NodeId::new(node).map_err(bad)?,
                interval,
                side,
                quantity: Wh(quantity_wh),
                limit_price: PricePerMwh(limit_price),
                nonce,
            };
            let envelope = SignedEnvelope::sign(&order, &key);
            let reply: OrderAccepted =
                call(http.post(format!("{market}/orders")).json(&envelope)).await?;
            print(&serde_json::json!({
                "order_id": reply.order_id,
                "interval": interval,
                "nonce": nonce,
            }));
        }
        OrderAction::SubmitBatch { file } => {
            // Every line is read and parsed before anything is sent.
            let text = std::fs::read_to_string(&file)
                .map_err(|e| bad(format!("cannot read {}: {e}", file.display())))?;
            let mut orders: Vec<(usize, SignedEnvelope)> = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let envelope: SignedEnvelope = serde_json::from_str(line).map_err(|e| {
                    bad(format!(
                        "{} line {}: not a signed envelope ({{\"payload\",\"signature\",\"public_key\"}}): {e}",
                        file.display(),
                        i + 1
                    ))
                })?;
                orders.push((i + 1, envelope));
            }
            if orders.is_empty() {
                return Err(bad(format!("{} holds no orders", file.display())));
            }
            let mut refused = 0usize;
            for chunk in orders.chunks(MAX_ORDER_BATCH) {
                let batch = OrderBatch {
                    orders: chunk.iter().map(|(_, e)| e.clone()).collect(),
                };
                let reply: OrderBatchAccepted =
                    call(http.post(format!("{market}/orders/batch")).json(&batch)).await?;
                for ((line, _), item) in chunk.iter().zip(&reply.results) {
                    let mut out = serde_json::to_value(item).expect("JSON prints");
                    out["line"] = (*line).into();
                    println!("{out}");
                }
                refused += reply.rejected;
            }
            if refused > 0 {
                return Err(bad(format!(
                    "{refused} of {} orders were refused (see the lines with their code and message)",
                    orders.len()
                )));
            }
        }
        OrderAction::List {
            participant,
            interval,
            key,
            token,
        } => {
            let mut query = Vec::new();
            if let Some(p) = &participant {
                query.push(format!("participant={p}"));
            }
            if let Some(i) = &interval {
                query.push(format!("interval={i}"));
            }
            // The exact path and query the signature covers.
            let path = if query.is_empty() {
                "/orders".to_owned()
            } else {
                format!("/orders?{}", query.join("&"))
            };
            let mut request = http.get(format!("{market}{path}"));
            if let (Some(key), Some(p)) = (&key, &participant) {
                let pair = SigningKeyPair::load(key).map_err(Failure::input)?;
                let who = ParticipantId::new(p.as_str()).map_err(Failure::input)?;
                let header = gridmesh_protocol::request::authorization(
                    &who,
                    &pair,
                    chrono::Utc::now().timestamp(),
                    "GET",
                    &path,
                    b"",
                );
                request = request.header(reqwest::header::AUTHORIZATION, header);
            } else if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let orders: Vec<OrderRecord> = call(request).await?;
            // Everything but the signed envelope.
            let rows: Vec<Value> = orders
                .iter()
                .map(|o| {
                    let mut row = serde_json::to_value(o).expect("an order serialises");
                    if let Some(map) = row.as_object_mut() {
                        map.remove("envelope");
                    }
                    row
                })
                .collect();
            print(&rows);
        }
        OrderAction::Cancel {
            key,
            participant,
            nonce,
        } => {
            let key = SigningKeyPair::load(&key).map_err(bad)?;
            let cancel = OrderCancel {
                participant: ParticipantId::new(participant).map_err(bad)?,
                order_nonce: nonce,
            };
            let envelope = SignedEnvelope::sign(&cancel, &key);
            let reply: OrderCancelled =
                call(http.post(format!("{market}/orders/cancel")).json(&envelope)).await?;
            print(&reply);
        }
    }
    Ok(())
}

/// `results show`.
pub async fn results_command(market: &str, action: ResultsAction) -> Result<(), Failure> {
    let http = reqwest::Client::new();
    let ResultsAction::Show {
        interval,
        since,
        limit,
    } = action;
    // Without a credential the market shows the public view (`PublicResult`: aggregates per
    // area, pseudonymous trades); print whatever it serves.
    let reply: Vec<serde_json::Value> = match (interval, since) {
        (Some(start), _) => {
            let one: serde_json::Value =
                call(http.get(format!("{market}/intervals/{start}/result"))).await?;
            print(&one);
            return Ok(());
        }
        (None, since) => {
            let since = since.unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned());
            call(
                http.get(format!("{market}/results"))
                    .query(&[("since", since), ("limit", limit.to_string())]),
            )
            .await?
        }
    };
    print(&reply);
    Ok(())
}
