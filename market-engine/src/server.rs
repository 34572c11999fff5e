//! Starting the market in-process: storage, order writer, clearing loop, MQTT, REST.

use crate::api::{AppState, router};
use crate::config::MarketConfig;
use crate::error::MarketError;
use crate::service::{Market, run_writer};
use gridmesh_protocol::signing::PublicKey;
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::mqtt::{MqttSession, MqttSettings};
use gridmesh_runtime::shutdown::Shutdown;
use std::net::SocketAddr;
use std::sync::Arc;

/// A market that is running; it stops when its [`Shutdown`] is triggered.
#[derive(Debug, Clone)]
pub struct RunningMarket {
    /// The bound REST address (useful with port 0).
    pub addr: SocketAddr,
    /// The market's state, for in-process use.
    pub market: Arc<Market>,
    /// The public key that signs its results and envelopes (as `GET /market-key` serves it).
    pub market_key: PublicKey,
}

impl RunningMarket {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts the market: opens and migrates the database, starts the order writer, the clearing
/// loop, the MQTT publisher (if a broker is configured) and the REST server. Every task is
/// tracked by `shutdown`.
pub async fn serve(
    config: MarketConfig,
    clock: Clock,
    shutdown: Shutdown,
) -> Result<RunningMarket, MarketError> {
    // Refuse to start on a bad certificate or key rather than fail later in the server task.
    let options = gridmesh_runtime::http::ServeOptions::default()
        .with_tls(config.tls_cert.clone(), config.tls_key.clone())?;
    options.check()?;
    let scheme = options.scheme();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| MarketError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| MarketError::Bind {
        addr: config.listen,
        source,
    })?;
    let (market, jobs) = Market::new(config.clone(), clock).await?;
    shutdown.spawn(run_writer(
        market.store.clone(),
        Arc::downgrade(&market),
        jobs,
        config.max_write_batch.max(1),
        shutdown.token(),
    ));

    let publish = match &config.broker_url {
        Some(url) => {
            let settings = MqttSettings::new(
                url.clone(),
                format!("market-{}-{}", config.zone, std::process::id()),
            );
            // Room for the fixed header and the topic inside one packet.
            let max_payload = settings.max_packet_bytes.saturating_sub(1024);
            let (handle, _incoming) = MqttSession::start(settings, &shutdown)
                .map_err(|e| MarketError::Mqtt(e.to_string()))?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            // Republish the latest results and their envelopes: a crash between storing a result
            // and the broker's acknowledgement must not leave the retained topics without them.
            if let Some(last) = market.store.last_result_start().await? {
                let since = last - 3 * config.interval_minutes.seconds();
                for row in market.store.result_rows_since(since, 4).await? {
                    let _ = tx.send(row.result()?.interval);
                }
            }
            shutdown.spawn(crate::gate::publish_results(
                market.clone(),
                handle,
                rx,
                max_payload,
                shutdown.token(),
            ));
            Some(tx)
        }
        None => None,
    };
    let first = crate::gate::first_interval(&market).await?;
    shutdown.spawn(crate::gate::run(
        market.clone(),
        first,
        publish,
        shutdown.token(),
    ));

    let app = router(AppState {
        market: market.clone(),
        cancel: shutdown.token(),
    });
    let token = shutdown.token();
    shutdown.spawn(async move {
        let served = gridmesh_runtime::http::serve(listener, app, &options, token).await;
        if let Err(error) = served {
            tracing::error!(%error, "REST server failed");
        }
    });
    let market_key = market.public_key();
    tracing::info!(%addr, %scheme, zone = %config.zone, %market_key, "market engine listening");
    Ok(RunningMarket {
        addr,
        market,
        market_key,
    })
}
