//! A simulation started with given counter readings continues from them (how the demo resumes
//! without the gateways seeing a meter swap).

use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use meter_sim::scenario::HomeSpec;
use meter_sim::{Homes, Scenario};

#[tokio::test]
async fn counters_and_state_of_charge_resume_from_the_scenario() {
    let mut scenario = Scenario::small(2, 5);
    scenario.homes = Homes::List(vec![
        HomeSpec {
            id: "h001".into(),
            counters_wh: Some([1_234_567, 7_654_321, 42_000_000, 900_000, 800_000]),
            soc_pct: Some(80.0),
            ..HomeSpec::default()
        },
        HomeSpec {
            id: "h002".into(),
            ..HomeSpec::default()
        },
    ]);
    let clock = Clock::scaled(scenario.start.unwrap(), 1.0);
    let shutdown = Shutdown::new();
    let sim = meter_sim::start(scenario, clock, &shutdown).await.unwrap();
    let (_, registers) = sim.register_counters("h001").unwrap();
    // At most a second of physics has run: the registers are the given ones plus at most a few Wh.
    let given = [1_234_567i64, 7_654_321, 42_000_000, 900_000, 800_000];
    for (register, start) in registers.as_array().iter().zip(given) {
        assert!(
            register.0 >= start && register.0 - start < 10,
            "{register} should continue from {start} Wh"
        );
    }
    let status = sim.status();
    let soc = status
        .homes
        .iter()
        .find(|h| h.id == "h001")
        .unwrap()
        .soc_pct;
    assert!(
        (soc - 80.0).abs() < 1.0,
        "state of charge {soc} % should resume near 80 %"
    );
    let (_, other) = sim.register_counters("h002").unwrap();
    assert!(
        other.grid_import.0 > 0,
        "default counters stay used-looking"
    );
    shutdown.stop().await;
}
