//! The running simulator: homes behind locks, the physics task, faults and ground truth.

use crate::faults::{DeviceKind, Fault};
use crate::home::{ActiveFault, Home, TruthSpan};
use crate::manifest::{Manifest, ManifestDevice, ManifestHome, MqttEndpoint};
use crate::scenario::{
    HomeParams, MeterFlavour, PvFlavour, Scenario, ScenarioError, ScheduledFault,
};
use crate::sunspec;
use chrono::{DateTime, Utc};
use gridmesh_protocol::Interval;
use gridmesh_protocol::reading::Registers;
use gridmesh_protocol::units::Wh;
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Why the simulator could not start or could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario is invalid.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// A Modbus port could not be bound.
    #[error(
        "cannot listen on {addr} for home {home}: {source}; pick a free base port (or 0 for ephemeral ports) with --base-port"
    )]
    Bind {
        /// The home.
        home: String,
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The control API's address could not be bound.
    #[error(
        "cannot listen on {addr} for the control API: {source}; choose a free address with --control"
    )]
    ControlBind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No home has this id.
    #[error("no home is called `{0}`; see GET /manifest for the ids")]
    UnknownHome(String),
    /// The home has no such device (for example no battery).
    #[error("home {home} has no {device}")]
    NoDevice {
        /// The home.
        home: String,
        /// The device.
        device: DeviceKind,
    },
    /// The MQTT emulation could not start.
    #[error("MQTT device emulation cannot start: {0}")]
    Mqtt(#[from] gridmesh_runtime::mqtt::MqttError),
}

/// The true energy of one home over one interval, in Wh: exactly the increase of the device
/// counters (before any counter-reset fault) between the interval's boundaries, plus what the
/// devices do not count: the PV the sun offered, the PV the model 123 power limit withheld, and
/// the battery's state.
///
/// `pv_available − pv − pv_curtailed` is within ±1 Wh (each is the difference of two floors of
/// exact accumulators). To tell whether the battery took the surplus before PV was curtailed,
/// compare `battery_charge` with `battery_headroom` (the most it could have taken).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrueEnergy {
    /// Grid meter import.
    pub grid_import: Wh,
    /// Grid meter export.
    pub grid_export: Wh,
    /// PV inverter production (after any power limit).
    pub pv: Wh,
    /// Battery charge (AC side).
    pub battery_charge: Wh,
    /// Battery discharge (AC side).
    pub battery_discharge: Wh,
    /// PV the sun offered: what the inverter would have produced without a power limit.
    #[serde(default)]
    pub pv_available: Wh,
    /// PV withheld by the power limit (available − produced).
    #[serde(default)]
    pub pv_curtailed: Wh,
    /// Energy stored in the battery at the interval's start (DC side, floor; 0 without one).
    #[serde(default)]
    pub battery_stored_start: Wh,
    /// Energy stored in the battery at the interval's end (DC side, floor; 0 without one).
    #[serde(default)]
    pub battery_stored_end: Wh,
    /// The most AC-side energy the battery could have absorbed in the interval from its state
    /// at the start: min(rated power × duration, room up to its upper SoC limit ÷ √round-trip
    /// efficiency), floor; 0 without a battery. Charge well below this while PV was curtailed
    /// means the battery did not take the surplus first.
    #[serde(default)]
    pub battery_headroom: Wh,
}

impl TrueEnergy {
    fn from_span(span: &TruthSpan) -> Self {
        let w = |i: usize| Wh(span.counters[i] as i64);
        TrueEnergy {
            grid_import: w(0),
            grid_export: w(1),
            pv: w(2),
            battery_charge: w(3),
            battery_discharge: w(4),
            pv_available: w(5),
            pv_curtailed: w(6),
            battery_stored_start: Wh(span.stored_start_wh.floor() as i64),
            battery_stored_end: Wh(span.stored_end_wh.floor() as i64),
            battery_headroom: Wh(span.headroom_wh.floor() as i64),
        }
    }

    /// The same five values as protocol registers (deltas).
    pub fn registers(&self) -> Registers {
        Registers {
            grid_import: self.grid_import,
            grid_export: self.grid_export,
            pv: self.pv,
            battery_charge: self.battery_charge,
            battery_discharge: self.battery_discharge,
        }
    }
}

/// A home's state as shown by `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HomeStatus {
    /// Home id.
    pub id: String,
    /// Feeder.
    pub feeder: String,
    /// Modbus port (0 = MQTT only).
    pub port: u16,
    /// The home's device-clock time.
    pub device_time: DateTime<Utc>,
    /// PV power in W (after any power limit).
    pub pv_w: i64,
    /// PV power the sun offers now in W (what the inverter would produce without a limit).
    #[serde(default)]
    pub pv_available_w: i64,
    /// The inverter's model 123 power limit in percent of its rated W while it is enabled and
    /// not reverted; `None` when PV runs unlimited.
    #[serde(default)]
    pub pv_limit_pct: Option<f64>,
    /// Household load in W.
    pub load_w: i64,
    /// Battery power in W (+ = discharge).
    pub battery_w: i64,
    /// Grid power in W (+ = import).
    pub grid_w: i64,
    /// State of charge in percent (0 without battery).
    pub soc_pct: f64,
    /// The true cumulative counters in Wh (no reset offsets).
    pub counters: Registers,
    /// Lasting faults per device.
    pub faults: HashMap<DeviceKind, Fault>,
}

/// Everything at once: simulated time and every home's power flows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The shared clock's time.
    pub simulated_time: DateTime<Utc>,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Sums over all homes in W.
    pub totals: Totals,
    /// Modbus requests served since start.
    pub modbus_requests: u64,
    /// Physics steps taken since start (all homes).
    pub steps: u64,
    /// Each home.
    pub homes: Vec<HomeStatus>,
}

/// Neighbourhood power sums in W.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    /// PV.
    pub pv_w: i64,
    /// Load.
    pub load_w: i64,
    /// Battery (+ = discharge).
    pub battery_w: i64,
    /// Grid (+ = import).
    pub grid_w: i64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub modbus_requests: AtomicU64,
    pub modbus_exceptions: AtomicU64,
    pub dropped_connections: AtomicU64,
    pub steps: AtomicU64,
    pub mqtt_published: AtomicU64,
    pub physics_time: AtomicI64,
}

pub(crate) struct Shared {
    pub scenario: Scenario,
    pub clock: Clock,
    pub params: Vec<HomeParams>,
    pub homes: Vec<Mutex<Home>>,
    pub index: HashMap<String, usize>,
    pub addrs: Vec<Option<SocketAddr>>,
    pub manifest: Manifest,
    pub stats: Stats,
    schedule: Mutex<Vec<(ScheduledFault, bool)>>,
}

impl Shared {
    pub fn home(&self, index: usize) -> MutexGuard<'_, Home> {
        self.homes[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Steps every home up to the clock's now; applies scheduled faults on the way.
    pub fn advance(&self) {
        let now = self.clock.now().timestamp();
        let dt = self.scenario.step_seconds;
        // Scheduled faults first bring the homes to their instant, then apply.
        let due: Vec<ScheduledFault> = {
            let mut schedule = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
            schedule
                .iter_mut()
                .filter(|(f, done)| !*done && f.at.timestamp() <= now)
                .map(|(f, done)| {
                    *done = true;
                    f.clone()
                })
                .collect()
        };
        let mut steps = 0;
        for f in due {
            if let Some(&i) = self.index.get(&f.home) {
                let mut home = self.home(i);
                let at = f.at.timestamp();
                let target = at + home.clock_offset;
                steps += home.advance_to(target, dt);
                let until = f.for_seconds.map(|s| at + s as i64);
                home.inject(f.device, f.fault, until);
                tracing::info!(home = %f.home, device = %f.device, fault = ?f.fault, "scheduled fault injected");
            }
        }
        for mutex in &self.homes {
            let mut home = mutex.lock().unwrap_or_else(|p| p.into_inner());
            let target = now + home.clock_offset;
            steps += home.advance_to(target, dt);
            home.expire_faults(now);
        }
        self.stats.steps.fetch_add(steps, Ordering::Relaxed);
        self.stats.physics_time.store(now, Ordering::Relaxed);
    }
}

/// A running neighbourhood. Cheap to clone; everything stops when the [`Shutdown`] given to
/// [`crate::start`] triggers.
#[derive(Clone)]
pub struct Simulator {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("homes", &self.shared.params.len())
            .finish()
    }
}

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
    /// The manifest of every device.
    pub fn manifest(&self) -> Manifest {
        self.shared.manifest.clone()
    }

    /// The resolved homes.
    pub fn homes(&self) -> &[HomeParams] {
        &self.shared.params
    }

    /// The shared clock.
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// The Modbus address of a home, if it serves Modbus.
    pub fn modbus_addr(&self, home: &str) -> Option<SocketAddr> {
        self.shared.addrs[*self.shared.index.get(home)?]
    }

    fn index(&self, home: &str) -> Result<usize, SimError> {
        self.shared
            .index
            .get(home)
            .copied()
            .ok_or_else(|| SimError::UnknownHome(home.to_owned()))
    }

    /// Brings the physics up to the clock's now at once (the background task does this every
    /// tick; tests call it to avoid waiting).
    pub fn sync(&self) {
        self.shared.advance();
    }

    /// The true energy of a home over an interval, once the interval has passed in simulated
    /// time and while it is within the kept history (`history_days`). `None` otherwise
    /// (also for an interval that began before the simulation started).
    ///
    /// Intervals are on the home's device clock, which equals the shared clock unless a
    /// `clock_jump` fault moved it.
    pub fn ground_truth(&self, home: &str, interval: &Interval) -> Option<TrueEnergy> {
        let i = *self.shared.index.get(home)?;
        let end = interval.end().timestamp();
        if self.shared.home(i).time < end && end <= self.shared.clock.now().timestamp() {
            // The interval has passed but the background task has not stepped there yet.
            self.shared.advance();
        }
        let h = self.shared.home(i);
        h.truth_between(interval.start_unix(), interval.end().timestamp())
            .as_ref()
            .map(TrueEnergy::from_span)
    }

    /// What a home's registers show right now (after reset offsets, honouring freezes): the
    /// simulated instant and the five counters in Wh.
    pub fn register_counters(&self, home: &str) -> Result<(DateTime<Utc>, Registers), SimError> {
        let h = self.shared.home(self.index(home)?);
        let inv = h.values(DeviceKind::Inverter).counters;
        let bat = h.values(DeviceKind::Battery).counters;
        let met = h.values(DeviceKind::Meter).counters;
        let w = |v: u64| Wh(v as i64);
        Ok((
            DateTime::from_timestamp(h.time, 0).unwrap_or_default(),
            Registers {
                grid_import: w(met[0]),
                grid_export: w(met[1]),
                pv: w(inv[2]),
                battery_charge: w(bat[3]),
                battery_discharge: w(bat[4]),
            },
        ))
    }

    /// Injects a fault into a device (see [`crate::faults`] for each one's behaviour).
    pub fn inject(&self, home: &str, device: DeviceKind, fault: Fault) -> Result<(), SimError> {
        let i = self.index(home)?;
        let mut h = self.shared.home(i);
        let present = match device {
            DeviceKind::Inverter => h.params.has_pv(),
            DeviceKind::Battery => h.params.has_battery(),
            DeviceKind::Meter => true,
        };
        if !present {
            return Err(SimError::NoDevice {
                home: home.to_owned(),
                device,
            });
        }
        h.inject(device, fault, None);
        tracing::info!(home, %device, ?fault, "fault injected");
        Ok(())
    }

    /// Clears a device's lasting fault.
    pub fn clear(&self, home: &str, device: DeviceKind) -> Result<(), SimError> {
        let i = self.index(home)?;
        self.shared.home(i).clear(device);
        tracing::info!(home, %device, "fault cleared");
        Ok(())
    }

    /// The lasting faults now active, per home and device.
    pub fn faults(&self) -> Vec<(String, DeviceKind, ActiveFault)> {
        let mut out = Vec::new();
        for (i, p) in self.shared.params.iter().enumerate() {
            let h = self.shared.home(i);
            for kind in DeviceKind::ALL {
                if let Some(a) = h.faults[kind.index()].active {
                    out.push((p.id.clone(), kind, a));
                }
            }
        }
        out
    }

    /// PV curtailment over all homes: the energy withheld by power limits since start (Wh,
    /// sum of floors) and how many inverters have a limit in force now.
    pub fn pv_curtailment(&self) -> (u64, usize) {
        let mut wh = 0;
        let mut active = 0;
        for mutex in &self.shared.homes {
            let h = mutex.lock().unwrap_or_else(|p| p.into_inner());
            wh += h.energy.pv_curtailed.floor() as u64;
            active += usize::from(h.pv_control.active(h.time));
        }
        (wh, active)
    }

    /// Simulated time and every home's power flows.
    pub fn status(&self) -> Status {
        let mut totals = Totals::default();
        let homes: Vec<HomeStatus> = self
            .shared
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let h = self.shared.home(i);
                let f = h.energy.floors();
                let pw = h.powers;
                totals.pv_w += pw.pv_w.round() as i64;
                totals.load_w += pw.load_w.round() as i64;
                totals.battery_w += pw.battery_w.round() as i64;
                totals.grid_w += pw.grid_w.round() as i64;
                HomeStatus {
                    id: p.id.clone(),
                    feeder: p.feeder.clone(),
                    port: self.shared.addrs[i].map(|a| a.port()).unwrap_or(0),
                    device_time: DateTime::from_timestamp(h.time, 0).unwrap_or_default(),
                    pv_w: pw.pv_w.round() as i64,
                    pv_available_w: pw.pv_available_w.round() as i64,
                    pv_limit_pct: h
                        .pv_control
                        .active(h.time)
                        .then(|| h.pv_control.limit_pct()),
                    load_w: pw.load_w.round() as i64,
                    battery_w: pw.battery_w.round() as i64,
                    grid_w: pw.grid_w.round() as i64,
                    soc_pct: (h.soc_pct() * 10.0).round() / 10.0,
                    counters: Registers {
                        grid_import: Wh(f[0] as i64),
                        grid_export: Wh(f[1] as i64),
                        pv: Wh(f[2] as i64),
                        battery_charge: Wh(f[3] as i64),
                        battery_discharge: Wh(f[4] as i64),
                    },
                    faults: DeviceKind::ALL
                        .into_iter()
                        .filter_map(|k| Some((k, h.fault(k)?)))
                        .collect(),
                }
            })
            .collect();
        Status {
            simulated_time: self.shared.clock.now(),
            speed: self.shared.clock.speed(),
            totals,
            modbus_requests: self.shared.stats.modbus_requests.load(Ordering::Relaxed),
            steps: self.shared.stats.steps.load(Ordering::Relaxed),
            homes,
        }
    }

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
