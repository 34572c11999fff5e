//! Dev-only: the dashboard against the **test doubles** of `tests/support` (not the real
//! services), for working on the pages and the browser tests without a neighbourhood.
//! `cargo run -p gridmesh-web --example fixture_stack -- 127.0.0.1:18080`

#[path = "../tests/support/mod.rs"]
mod support;

use gridmesh_runtime::shutdown::Shutdown;
use gridmesh_web::WebConfig;

#[tokio::main]
async fn main() {
    gridmesh_runtime::telemetry::init("info");
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".into());
    let up = support::start(24).await;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let running = gridmesh_web::serve(
        WebConfig {
            listen: listen.parse().expect("listen address like 127.0.0.1:18080"),
            market_url: format!("http://{}", up.market),
            settlement_url: format!("http://{}", up.settlement),
            poll_interval_ms: 1_000,
            ..WebConfig::default()
        },
        shutdown.clone(),
    )
    .await
    .expect("dashboard starts");
    eprintln!("dashboard (fixture data) at {}/", running.url());
    shutdown.triggered().await;
    shutdown.wait().await;
}
