//! Starting the simulator: binds the Modbus ports, builds the shared [`crate::state`], and
//! starts the physics task, the Modbus servers, the MQTT devices and (on request) the control
//! API. The state and its views live in [`crate::state`]; this module only orchestrates.

pub use crate::error::SimError;
pub use crate::state::{HomeStatus, Simulator, Status, Totals, TrueEnergy};

use crate::faults::DeviceKind;
use crate::home::Home;
use crate::manifest::{Manifest, ManifestDevice, ManifestHome, MqttEndpoint};
use crate::scenario::{HomeParams, MeterFlavour, PvFlavour, Scenario};
use crate::state::{Shared, Stats};
use crate::sunspec;
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn manifest_for(
    scenario: &Scenario,
    params: &[HomeParams],
    addrs: &[Option<SocketAddr>],
) -> Manifest {
    let homes = params
        .iter()
        .zip(addrs)
        .map(|(p, addr)| {
            let mut devices = Vec::new();
            for kind in DeviceKind::ALL {
                let present = match kind {
                    DeviceKind::Inverter => p.has_pv(),
                    DeviceKind::Battery => p.has_battery(),
                    DeviceKind::Meter => true,
                };
                if !present {
                    continue;
                }
                let serial = sunspec::serial(&p.id, kind);
                let mqtt = scenario.mqtt.as_ref().and_then(|m| {
                    let topic = crate::mqtt_devices::main_topic(m, p, kind)?;
                    let format = match kind {
                        DeviceKind::Meter => match m.meter {
                            MeterFlavour::Tasmota => "tasmota",
                            MeterFlavour::Shelly => "shelly",
                            MeterFlavour::None => return None,
                        },
                        DeviceKind::Inverter => match m.pv {
                            PvFlavour::Opendtu => "opendtu",
                            PvFlavour::None => return None,
                        },
                        DeviceKind::Battery => return None,
                    };
                    Some(MqttEndpoint {
                        broker: m.url.clone(),
                        format: format.into(),
                        topic,
                    })
                });
                if addr.is_none() && mqtt.is_none() {
                    continue;
                }
                devices.push(ManifestDevice {
                    kind,
                    host: scenario.host.clone(),
                    port: addr.map(|a| a.port()).unwrap_or(0),
                    unit: kind.unit(),
                    models: sunspec::model_ids(kind),
                    base_address: sunspec::BASE_ADDRESS,
                    serial,
                    mqtt,
                });
            }
            ManifestHome {
                id: p.id.clone(),
                feeder: p.feeder.clone(),
                pv_kwp: p.pv_kwp,
                battery_kwh: p.battery_kwh,
                inverter_w: p.inverter_w,
                battery_w: p.battery_w,
                annual_load_kwh: p.annual_load_kwh,
                latitude: p.latitude,
                longitude: p.longitude,
                devices,
            }
        })
        .collect();
    Manifest { homes }
}

/// Binds the Modbus ports, starts the physics (and, if configured, MQTT) in the background and
/// returns the running simulator. Physics starts at the scenario's `start` when the clock is
/// at most a day past it (the usual case: the clock was made from the scenario), otherwise at
/// the 5-minute boundary before `clock.now()`, and is brought up to `clock.now()` before this
/// returns.
pub async fn start(
    scenario: Scenario,
    clock: Clock,
    shutdown: &Shutdown,
) -> Result<Simulator, SimError> {
    let params = scenario.resolve()?;
    let dt = scenario.step_seconds as i64;
    // Physics starts at the scenario's start if the clock is at most a day past it, otherwise
    // at the 5-minute boundary before now; either way it catches up to now before returning,
    // so ground truth exists for the first whole interval however long start-up took.
    let now = clock.now().timestamp();
    let t0 = match scenario.start.map(|s| s.timestamp()) {
        Some(s) if s <= now && now - s <= 86_400 => s.div_euclid(dt) * dt,
        _ => now.div_euclid(crate::home::SNAPSHOT_SECONDS) * crate::home::SNAPSHOT_SECONDS,
    };
    let homes: Vec<Mutex<Home>> = params
        .iter()
        .map(|p| {
            Mutex::new(Home::new(
                p.clone(),
                scenario.seed,
                t0,
                scenario.history_days,
            ))
        })
        .collect();
    let index = params.iter().map(|p| (p.id.clone(), p.index)).collect();
    let modbus = scenario.mqtt.as_ref().is_none_or(|m| m.modbus);
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for p in &params {
        if !modbus {
            addrs.push(None);
            continue;
        }
        let port = if scenario.base_port == 0 {
            0
        } else {
            scenario.base_port + p.index as u16
        };
        let addr = format!("{}:{}", scenario.host, port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| SimError::Bind {
                home: p.id.clone(),
                addr: addr.clone(),
                source,
            })?;
        addrs.push(Some(listener.local_addr().map_err(|source| {
            SimError::Bind {
                home: p.id.clone(),
                addr,
                source,
            }
        })?));
        listeners.push((p.index, listener));
    }
    let manifest = manifest_for(&scenario, &params, &addrs);
    let schedule = scenario
        .faults
        .iter()
        .cloned()
        .map(|f| (f, false))
        .collect();
    let shared = Arc::new(Shared {
        scenario,
        clock,
        params,
        homes,
        index,
        addrs,
        manifest,
        stats: Stats::default(),
        schedule: Mutex::new(schedule),
    });
    shared.stats.physics_time.store(t0, Ordering::Relaxed);
    shared.advance();
    for (home, listener) in listeners {
        crate::modbus::serve_home(shared.clone(), home, listener, shutdown);
    }
    if let Some(options) = shared.scenario.mqtt.clone() {
        crate::mqtt_devices::spawn(shared.clone(), options, shutdown)?;
    }
    // The physics task: wake often enough that each wake-up covers about one step.
    let physics = shared.clone();
    let token = shutdown.token();
    let real_step = physics.clock.real_duration(chrono::Duration::seconds(dt));
    let tick = real_step.clamp(Duration::from_millis(20), Duration::from_millis(250));
    shutdown.spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = interval.tick() => physics.advance(),
            }
        }
    });
    Ok(Simulator { shared })
}

impl Simulator {
    /// Binds the control/status HTTP API on `addr` (`127.0.0.1:0` works) and serves it until
    /// shutdown. Returns the bound address.
    pub async fn serve_control(
        &self,
        addr: &str,
        shutdown: &Shutdown,
    ) -> Result<SocketAddr, SimError> {
        let bind_error = |source| SimError::ControlBind {
            addr: addr.to_owned(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(bind_error)?;
        let bound = listener.local_addr().map_err(bind_error)?;
        let router = self.control_router();
        let token = shutdown.token();
        shutdown.spawn(async move {
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
            {
                tracing::error!(%error, "control API stopped");
            }
        });
        Ok(bound)
    }

    /// The control/status HTTP API as an axum router (see [`crate::control`]).
    pub fn control_router(&self) -> axum::Router {
        crate::control::router(self.clone())
    }

    /// Prometheus text exposition of the simulator's metrics.
    pub fn metrics_text(&self) -> String {
        crate::metrics::render(self)
    }
}
