//! The TOML configuration of every binary, as an operator (or a typo) writes it, plus the
//! `GRIDMESH_*__*` environment overrides of `gridmesh_runtime::config`.
//!
//! The first byte picks the binary; the rest is the TOML text, optionally followed by a NUL
//! byte and `VAR=value` lines that are applied as environment overrides. Each config is parsed
//! and then validated the way its binary does before starting: the gateway's `validate`, the
//! market's topology, the dashboard's `validate`, meter-sim's scenario `resolve`. Nothing may
//! panic, and every error must print.
#![no_main]

use edge_gateway::config::GatewayConfig;
use gridmesh_runtime::config::load_with_env;
use gridmesh_web::WebConfig;
use libfuzzer_sys::fuzz_target;
use market_engine::MarketConfig;
use market_engine::network::Topology;
use meter_sim::Scenario;
use serde::de::DeserializeOwned;
use settlement::SettlementConfig;
use std::path::PathBuf;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (toml_text, env_text) = text.split_once('\0').unwrap_or((text, ""));
    let vars: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match pick % 5 {
        0 => {
            if let Some(c) = load::<GatewayConfig>(toml_text, "GRIDMESH_GATEWAY", &vars) {
                if let Err(e) = c.validate() {
                    let _ = e.to_string();
                } else {
                    let _ = c.interval_length();
                    let _ = c.mqtt_client_id();
                    for d in &c.devices {
                        let _ = d.location();
                        let _ = edge_gateway::mqtt_devices::subscriptions(d);
                    }
                }
            }
            if let Err(e) = GatewayConfig::from_toml(toml_text) {
                let _ = e.to_string();
            }
        }
        1 => {
            if let Some(c) = load::<MarketConfig>(toml_text, "GRIDMESH_MARKET", &vars) {
                let _ = c.lead();
                if let Some(network) = &c.topology
                    && let Err(e) = Topology::new(network)
                {
                    let _ = e.to_string();
                }
            }
        }
        2 => _ = load::<SettlementConfig>(toml_text, "GRIDMESH_SETTLEMENT", &vars),
        3 => {
            if let Some(c) = load::<WebConfig>(toml_text, "GRIDMESH_WEB", &vars)
                && c.validate().is_ok()
            {
                let _ = c.poll_interval();
                let _ = c.request_timeout();
                let _ = c.session_idle();
            }
        }
        _ => {
            if let Ok(scenario) = Scenario::from_toml(toml_text) {
                // Expanding the homes allocates per home: bound it as the fuzzer's memory
                // limit would, and check the count is refused or served.
                if scenario.home_count() <= 10_000 {
                    match scenario.resolve() {
                        Ok(homes) => assert_eq!(homes.len(), scenario.home_count()),
                        Err(e) => _ = e.to_string(),
                    }
                }
            }
        }
    }
});

/// A config file in this process's own temporary directory.
fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        std::env::temp_dir().join(format!("gridmesh-fuzz-config-{}.toml", std::process::id()))
    })
}

/// Loads `T` from `text` as a file plus `vars` as the environment, as the binaries do.
fn load<T: DeserializeOwned>(text: &str, prefix: &str, vars: &[(String, String)]) -> Option<T> {
    std::fs::write(file(), text).expect("the temporary directory is writable");
    match load_with_env::<T>(Some(file()), prefix, vars) {
        Ok(c) => Some(c),
        Err(e) => {
            let _ = e.to_string();
            None
        }
    }
}
