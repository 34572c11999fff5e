//! The simulator's shared state and what can be read from it: the homes behind their locks,
//! counters, the scheduled faults, and the [`Simulator`] handle with its status and ground
//! truth. The servers (`modbus`, `mqtt_devices`, `control`, `metrics`) all read and change the
//! neighbourhood through this module; `sim` builds it and starts them.

use crate::error::SimError;
use crate::faults::{DeviceKind, Fault};
use crate::home::{ActiveFault, Home, TruthSpan};
use crate::manifest::Manifest;
use crate::scenario::{HomeParams, Scenario, ScheduledFault};
use chrono::{DateTime, Utc};
use gridmesh_protocol::Interval;
use gridmesh_protocol::reading::Registers;
use gridmesh_protocol::units::Wh;
use gridmesh_runtime::clock::Clock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
    /// The scenario's scheduled faults, each with whether it has been applied.
    pub schedule: Mutex<Vec<(ScheduledFault, bool)>>,
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

/// A running neighbourhood. Cheap to clone; everything stops when the `Shutdown` given to
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
}
