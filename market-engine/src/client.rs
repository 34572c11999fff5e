//! The trader's side of the CLI: sign and submit orders, list and cancel them, read results.

use crate::cli::{Failure, OrderAction, ResultsAction};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::order::{Order, OrderCancel};
use gridmesh_protocol::{Interval, NodeId, ParticipantId, PricePerMwh, SignedEnvelope, Wh};
use serde_json::Value;

async fn call(request: reqwest::RequestBuilder) -> Result<Value, Failure> {
    let response = request.send().await.map_err(|e| {
        Failure::runtime(format!(
            "cannot reach the market: {e}; is it running (see --market)?"
        ))
    })?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| Failure::runtime(format!("the market sent an unreadable reply: {e}")))?;
    if status.is_success() {
        Ok(body)
    } else {
        let message = format!(
            "{} ({}, HTTP {})",
            body["message"].as_str().unwrap_or("request failed"),
            body["code"].as_str().unwrap_or("unknown"),
            status.as_u16()
        );
        Err(if status.is_client_error() {
            Failure::input(message)
        } else {
            Failure::runtime(message)
        })
    }
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON prints"));
}

fn bad(e: impl std::fmt::Display) -> Failure {
    Failure::input(e)
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
        } => {
            let key = SigningKeyPair::load(&key).map_err(bad)?;
            let status = call(http.get(format!("{market}/status"))).await?;
            let minutes = status["interval_minutes"].as_i64().unwrap_or(15);
            let interval = if interval == "next" {
                serde_json::from_value::<Interval>(status["next_open_interval"].clone())
                    .map_err(Failure::runtime)?
            } else {
                Interval::parse(&interval, minutes).map_err(bad)?
            };
            let nonce = nonce.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64)
            });
            let order = Order {
                participant: ParticipantId::new(participant).map_err(bad)?,
                node: NodeId::new(node).map_err(bad)?,
                interval,
                side,
                quantity: Wh(quantity_wh),
                limit_price: PricePerMwh(limit_price),
                nonce,
            };
            let envelope = SignedEnvelope::sign(&order, &key);
            let reply = call(http.post(format!("{market}/orders")).json(&envelope)).await?;
            print(&serde_json::json!({
                "order_id": reply["order_id"],
                "interval": interval,
                "nonce": nonce,
            }));
        }
        OrderAction::List {
            participant,
            interval,
        } => {
            let mut query = Vec::new();
            if let Some(p) = participant {
                query.push(("participant", p));
            }
            if let Some(i) = interval {
                query.push(("interval", i));
            }
            let orders = call(http.get(format!("{market}/orders")).query(&query)).await?;
            let mut rows = Vec::new();
            for o in orders.as_array().into_iter().flatten() {
                let mut o = o.clone();
                if let Some(map) = o.as_object_mut() {
                    map.remove("envelope");
                }
                rows.push(o);
            }
            print(&Value::Array(rows));
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
            print(&call(http.post(format!("{market}/orders/cancel")).json(&envelope)).await?);
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
    let reply = match (interval, since) {
        (Some(start), _) => call(http.get(format!("{market}/intervals/{start}/result"))).await?,
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
