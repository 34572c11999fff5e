//! The bidding agent's shipped prices make sense against the example tariffs (issue 19's defect:
//! the defaults and `gateway.example.toml` said 80 000 and 300 000 minor units per MWh — 80
//! c/kWh and 3 €/kWh — while their comments said 8.0 and 30.0 c/kWh, so a household keeping
//! them never sold and could buy at ten times the retail price).
//!
//! Every price in the gateway's defaults and in its shipped example config lies between the
//! example tariffs' feed-in and retail prices (the demo's network, which the market-engine
//! README's example topology repeats).

use edge_gateway::config::{AgentConfig, GatewayConfig};
use gridmesh_e2e::neighbourhood::demo_network;
use gridmesh_protocol::PricePerMwh;

fn within_tariffs(what: &str, price: PricePerMwh) {
    let tariff = demo_network(3, 24).utility;
    let feed_in = tariff
        .feed_in_price
        .expect("the example has a feed-in price");
    let retail = tariff.retail_price.expect("the example has a retail price");
    assert!(
        feed_in <= price && price <= retail,
        "{what} = {} minor units per MWh is outside the example tariffs ({} feed-in .. {} retail)",
        price.0,
        feed_in.0,
        retail.0
    );
}

#[test]
fn default_agent_prices_lie_within_the_example_tariffs() {
    let agent = AgentConfig::default();
    within_tariffs("default min_sell_price", agent.min_sell_price);
    within_tariffs("default max_buy_price", agent.max_buy_price);
    within_tariffs("default feed_in_price", agent.feed_in_price);
    within_tariffs("default retail_price", agent.retail_price);
    // Wear is a cost, not a trading price: below the spread, or the battery never cycles.
    assert!(0 <= agent.cycle_cost.0 && agent.cycle_cost < agent.retail_price);
}

#[test]
fn shipped_example_config_prices_lie_within_the_example_tariffs() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../edge-gateway/packaging/gateway.example.toml"
    );
    let text = std::fs::read_to_string(path).expect("the example config ships");
    let config = GatewayConfig::from_toml(&text).expect("the example config parses");
    within_tariffs("example min_sell_price", config.agent.min_sell_price);
    within_tariffs("example max_buy_price", config.agent.max_buy_price);
    within_tariffs("example feed_in_price", config.agent.feed_in_price);
    within_tariffs("example retail_price", config.agent.retail_price);
    assert_eq!(
        config.agent.cycle_cost,
        AgentConfig::default().cycle_cost,
        "the example shows the default wear"
    );
    // And the README example topology repeats the same tariffs.
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../market-engine/README.md"
    ))
    .unwrap();
    assert!(readme.contains("retail_price = 30000") && readme.contains("feed_in_price = 8000"));
}
