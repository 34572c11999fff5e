//! MQTT device emulation: homes publish like Tasmota, Shelly Gen2 and OpenDTU devices do.
//!
//! Formats (topics get `topic_prefix/` in front when a prefix is configured):
//!
//! - Tasmota grid meter (SML reader): `tele/<home>-meter/SENSOR`
//!   `{"Time":"2026-06-21T12:00:00","ENERGY":{"Total":1.234,"ExportActive":0.567,"Power":345,"Voltage":230,"Current":1.5}}`
//!   (`Total` = import kWh, `ExportActive` = export kWh, 3 decimals = exactly the Wh counters;
//!   `Power` W, + = import) and `tele/<home>-meter/LWT` `Online` (retained).
//! - Shelly Pro 3EM (Gen2) grid meter, device id `shellypro3em-<home>`:
//!   `<id>/status/em:0` `{"id":0,"a_act_power":..,"b_act_power":..,"c_act_power":..,"total_act_power":W}`
//!   and `<id>/status/emdata:0` `{"id":0,"total_act":Wh import,"total_act_ret":Wh export}`.
//! - OpenDTU PV inverter, serial `1161` + 8 digits of the home's position:
//!   `solar/<serial>/0/power` (W), `solar/<serial>/0/yieldtotal` (kWh, 3 decimals),
//!   `solar/<serial>/0/yieldday` (Wh since the device's midnight UTC), `solar/<serial>/status/reachable` (`1`).
//!
//! Faults apply as on Modbus where they make sense: `drop` and `exception` silence the device,
//! `freeze` publishes the frozen values, `counter_reset` restarts the counters, `clock_jump`
//! shifts the `Time` field. Messages go out at QoS 0, as these devices send them.

use crate::faults::{DeviceKind, Fault};
use crate::home::DeviceValues;
use crate::scenario::{HomeParams, MeterFlavour, MqttOptions, PvFlavour};
use crate::state::Shared;
use gridmesh_runtime::mqtt::{MqttSession, MqttSettings, Qos};
use gridmesh_runtime::shutdown::Shutdown;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

fn prefixed(options: &MqttOptions, topic: String) -> String {
    if options.topic_prefix.is_empty() {
        topic
    } else {
        format!("{}/{topic}", options.topic_prefix.trim_end_matches('/'))
    }
}

fn opendtu_serial(index: usize) -> String {
    format!("1161{:08}", index + 1)
}

/// The topic the manifest names for a device, if it publishes.
pub(crate) fn main_topic(
    options: &MqttOptions,
    home: &HomeParams,
    kind: DeviceKind,
) -> Option<String> {
    let id = &home.id;
    let topic = match kind {
        DeviceKind::Meter => match options.meter {
            MeterFlavour::Tasmota => format!("tele/{id}-meter/SENSOR"),
            MeterFlavour::Shelly => format!("shellypro3em-{id}/status/emdata:0"),
            MeterFlavour::None => return None,
        },
        DeviceKind::Inverter => match options.pv {
            PvFlavour::Opendtu if home.has_pv() => {
                format!("solar/{}/0/yieldtotal", opendtu_serial(home.index))
            }
            _ => return None,
        },
        DeviceKind::Battery => return None,
    };
    Some(prefixed(options, topic))
}

fn kwh(wh: u64) -> f64 {
    wh as f64 / 1000.0
}

fn time_text(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string())
        .unwrap_or_default()
}

/// The messages one home's devices publish now.
fn messages(
    options: &MqttOptions,
    home: &str,
    index: usize,
    meter: Option<DeviceValues>,
    pv: Option<(DeviceValues, u64)>,
) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    if let Some(v) = meter {
        let w = v.powers.grid_w.round() as i64;
        match options.meter {
            MeterFlavour::Tasmota => {
                let payload = json!({
                    "Time": time_text(v.time),
                    "ENERGY": {
                        "Total": kwh(v.counters[0]),
                        "ExportActive": kwh(v.counters[1]),
                        "Power": w,
                        "Voltage": 230,
                        "Current": ((v.powers.grid_w.abs() / 230.0) * 1000.0).round() / 1000.0,
                    }
                });
                out.push((
                    prefixed(options, format!("tele/{home}-meter/SENSOR")),
                    payload.to_string(),
                    false,
                ));
            }
            MeterFlavour::Shelly => {
                let id = format!("shellypro3em-{home}");
                let phase = (v.powers.grid_w / 3.0 * 10.0).round() / 10.0;
                let em = json!({"id":0,"a_act_power":phase,"b_act_power":phase,"c_act_power":phase,"total_act_power":(v.powers.grid_w * 10.0).round() / 10.0});
                let emdata =
                    json!({"id":0,"total_act":v.counters[0],"total_act_ret":v.counters[1]});
                out.push((
                    prefixed(options, format!("{id}/status/em:0")),
                    em.to_string(),
                    false,
                ));
                out.push((
                    prefixed(options, format!("{id}/status/emdata:0")),
                    emdata.to_string(),
                    false,
                ));
            }
            MeterFlavour::None => {}
        }
    }
    if let (Some((v, day_start_wh)), PvFlavour::Opendtu) = (pv, options.pv) {
        let serial = opendtu_serial(index);
        let base = format!("solar/{serial}");
        out.push((
            prefixed(options, format!("{base}/0/power")),
            format!("{:.1}", v.powers.pv_w),
            false,
        ));
        out.push((
            prefixed(options, format!("{base}/0/yieldtotal")),
            format!("{:.3}", kwh(v.counters[2])),
            false,
        ));
        out.push((
            prefixed(options, format!("{base}/0/yieldday")),
            v.counters[2].saturating_sub(day_start_wh).to_string(),
            false,
        ));
        out.push((
            prefixed(options, format!("{base}/status/reachable")),
            "1".into(),
            false,
        ));
    }
    out
}

fn silenced(fault: Option<Fault>) -> bool {
    matches!(fault, Some(Fault::Drop) | Some(Fault::Exception { .. }))
}

/// Starts the publishing task.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    options: MqttOptions,
    shutdown: &Shutdown,
) -> Result<(), gridmesh_runtime::mqtt::MqttError> {
    static SESSIONS: AtomicU64 = AtomicU64::new(0);
    let client_id = format!(
        "meter-sim-{}-{}",
        std::process::id(),
        SESSIONS.fetch_add(1, Ordering::Relaxed)
    );
    let settings = MqttSettings::new(options.url.clone(), client_id);
    let token = shutdown.token();
    let (handle, _incoming) = MqttSession::start(settings, shutdown)?;
    let period = shared
        .clock
        .real_duration(chrono::Duration::milliseconds(
            (options.every_seconds * 1000.0) as i64,
        ))
        .max(Duration::from_millis(100));
    shutdown.spawn(async move {
        let _incoming = _incoming;
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut announced = false;
        // Per home: (day, pv counter at the start of that day) for OpenDTU's yieldday.
        let mut day_start: Vec<(i64, u64)> = vec![(i64::MIN, 0); shared.params.len()];
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = ticker.tick() => {}
            }
            if !handle.is_connected() {
                continue;
            }
            if !announced && options.meter == MeterFlavour::Tasmota {
                for p in &shared.params {
                    let topic = prefixed(&options, format!("tele/{}-meter/LWT", p.id));
                    let _ = handle.publish(topic, "Online", Qos::AtMostOnce, true).await;
                }
                announced = true;
            }
            for (i, p) in shared.params.iter().enumerate() {
                let (meter, pv) = {
                    let home = shared.home(i);
                    let meter = (!silenced(home.fault(DeviceKind::Meter)))
                        .then(|| home.values(DeviceKind::Meter));
                    let pv = (p.has_pv() && !silenced(home.fault(DeviceKind::Inverter)))
                        .then(|| home.values(DeviceKind::Inverter));
                    (meter, pv)
                };
                let pv = pv.map(|v| {
                    let day = v.time.div_euclid(86_400);
                    if day_start[i].0 != day {
                        day_start[i] = (day, v.counters[2]);
                    }
                    (v, day_start[i].1)
                });
                for (topic, payload, retain) in messages(&options, &p.id, i, meter, pv) {
                    if handle
                        .publish(topic, payload, Qos::AtMostOnce, retain)
                        .await
                        .is_ok()
                    {
                        shared.stats.mqtt_published.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    Ok(())
}
