//! Test fixtures: a tiny SunSpec home on a real Modbus TCP socket (units 1 inverter, 2 battery,
//! 3 meter, 4 an unsupported device), whose counters are exact functions of simulated time,
//! plus an MQTT subscriber and a TCP proxy that can cut the broker off.

#![allow(dead_code)]

use chrono::{DateTime, Utc};
use edge_gateway::config::{DeviceConfig, Role};
use gridmesh_protocol::{Reading, SignedEnvelope};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::mqtt::{MqttSession, MqttSettings};
use meter_sim::{DeviceKind, ManifestHome};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_modbus::{ExceptionCode, Request, Response};
use tokio_util::sync::CancellationToken;

pub const BROKER: &str = "mqtt://127.0.0.1:1883";

/// Constant powers of the fake home, W.
pub const PV_W: i64 = 3000;
pub const LOAD_W: i64 = 1000;
pub const CHARGE_W: i64 = 500;
pub const EXPORT_W: i64 = PV_W - LOAD_W - CHARGE_W;

#[derive(Debug, Default)]
pub struct Faults {
    /// Units that do not answer.
    pub hang: Vec<u8>,
    /// The PV counter restarts from zero at this simulated instant.
    pub pv_reset_at: Option<DateTime<Utc>>,
}

#[derive(Clone)]
pub struct Home {
    pub clock: Clock,
    pub epoch: DateTime<Utc>,
    pub addr: SocketAddr,
    pub faults: Arc<Mutex<Faults>>,
}

fn wh(w: i64, from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    let ms = (to - from).num_milliseconds().max(0) as i128;
    (i128::from(w) * ms / 3_600_000) as i64
}

impl Home {
    /// The five counters (Wh) at `t`: import, export, pv, charge, discharge — as the device
    /// shows them (after a reset the PV counter restarts).
    pub fn counters(&self, t: DateTime<Utc>) -> [i64; 5] {
        let mut pv = 100_000 + wh(PV_W, self.epoch, t);
        if let Some(reset) = self.faults.lock().unwrap().pv_reset_at
            && t >= reset
        {
            pv = wh(PV_W, reset, t);
        }
        [
            5_000,
            20_000 + wh(EXPORT_W, self.epoch, t),
            pv,
            3_000 + wh(CHARGE_W, self.epoch, t),
            7_000,
        ]
    }

    /// True energy per channel between two instants, Wh (exact, from the power profile).
    pub fn truth(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> [i64; 5] {
        let exact = |w: i64| {
            let ms = (to - from).num_milliseconds() as f64;
            (w as f64 * ms / 3_600_000.0).round() as i64
        };
        [0, exact(EXPORT_W), exact(PV_W), exact(CHARGE_W), 0]
    }

    fn image(&self, unit: u8) -> Option<Vec<u16>> {
        let t = self.clock.now();
        let c = self.counters(t);
        let mut regs = vec![0x5375, 0x6e53];
        let mut model = |id: u16, len: u16, points: &[(usize, u16)]| {
            let mut m = vec![0u16; usize::from(len) + 2];
            m[0] = id;
            m[1] = len;
            for (at, v) in points {
                m[*at] = *v;
            }
            regs.extend(m);
        };
        let hi = |v: i64| (v >> 16) as u16;
        let lo = |v: i64| v as u16;
        model(1, 66, &[(2, 0x4761), (3, 0x7465)]);
        match unit {
            1 => model(
                103,
                50,
                &[
                    (14, PV_W as u16),
                    (15, 0),
                    (24, hi(c[2])),
                    (25, lo(c[2])),
                    (26, 0),
                ],
            ),
            2 => {
                model(
                    124,
                    24,
                    &[(2, 5000), (8, 655), (18, 0), (22, (-1i16) as u16), (25, 0)],
                );
                model(
                    802,
                    62,
                    &[
                        (11, 655),
                        (56, (-1i16) as u16),
                        (47, (-(CHARGE_W as i16)) as u16),
                        (63, 0),
                    ],
                );
                model(
                    701,
                    153,
                    &[
                        (10, (-(CHARGE_W as i16)) as u16),
                        (116, 0),
                        (21, hi(c[4])),
                        (22, lo(c[4])),
                        (25, hi(c[3])),
                        (26, lo(c[3])),
                        (120, 0),
                    ],
                );
            }
            3 => model(
                203,
                105,
                &[
                    (18, (-(EXPORT_W as i16)) as u16),
                    (22, 0),
                    (38, hi(c[1])),
                    (39, lo(c[1])),
                    (46, hi(c[0])),
                    (47, lo(c[0])),
                    (54, 0),
                ],
            ),
            4 => model(160, 20, &[]),
            _ => return None,
        }
        regs.extend([0xFFFF, 0]);
        Some(regs)
    }

    pub fn set_hang(&self, unit: u8, hang: bool) {
        let mut f = self.faults.lock().unwrap();
        f.hang.retain(|u| *u != unit);
        if hang {
            f.hang.push(unit);
        }
    }
}

#[derive(Clone)]
struct Service {
    home: Home,
}

impl tokio_modbus::server::Service for Service {
    type Request = tokio_modbus::SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let home = self.home.clone();
        Box::pin(async move {
            let unit = req.slave;
            if home.faults.lock().unwrap().hang.contains(&unit) {
                std::future::pending::<()>().await;
            }
            match req.request {
                Request::ReadHoldingRegisters(addr, count) => {
                    let image = home.image(unit).ok_or(ExceptionCode::GatewayTargetDevice)?;
                    if addr < 40000 {
                        return Err(ExceptionCode::IllegalDataAddress);
                    }
                    let start = usize::from(addr - 40000);
                    let end = start + usize::from(count);
                    if end > image.len() {
                        return Err(ExceptionCode::IllegalDataAddress);
                    }
                    Ok(Response::ReadHoldingRegisters(image[start..end].to_vec()))
                }
                Request::WriteMultipleRegisters(addr, words) => {
                    Ok(Response::WriteMultipleRegisters(addr, words.len() as u16))
                }
                _ => Err(ExceptionCode::IllegalFunction),
            }
        })
    }
}

/// Starts the fake home on 127.0.0.1:0 with `clock`.
pub async fn start_home(clock: Clock, epoch: DateTime<Utc>) -> Home {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let home = Home {
        clock,
        epoch,
        addr,
        faults: Default::default(),
    };
    let service = Service { home: home.clone() };
    tokio::spawn(async move {
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let on_connected = |stream, _addr| {
            let service = service.clone();
            async move { Ok(Some((service, stream))) }
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    home
}

/// Serves the same home as Modbus RTU frames over TCP (a serial-to-Ethernet gateway).
pub async fn serve_rtu_over_tcp(home: &Home) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = Service { home: home.clone() };
    tokio::spawn(async move {
        let server = tokio_modbus::server::rtu_over_tcp::Server::new(listener);
        let on_connected = |stream, _addr| {
            let service = service.clone();
            async move { Ok(Some((service, stream))) }
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    addr
}

/// Subscribes to a gateway's readings; every verified reading goes to the channel.
pub fn subscribe_readings(
    gateway: &str,
    cancel: CancellationToken,
) -> mpsc::UnboundedReceiver<(SignedEnvelope, Reading)> {
    subscribe_readings_at(BROKER, gateway, cancel)
}

/// [`subscribe_readings`] on another broker (`mqtt://host:port`).
pub fn subscribe_readings_at(
    broker: &str,
    gateway: &str,
    cancel: CancellationToken,
) -> mpsc::UnboundedReceiver<(SignedEnvelope, Reading)> {
    let topic = format!("gridmesh/readings/{gateway}");
    let mut settings = MqttSettings::new(broker, format!("sub-{gateway}"));
    settings.subscriptions = vec![topic];
    let session = gridmesh_runtime::shutdown::Shutdown::child_of(&cancel);
    let (handle, mut incoming) = MqttSession::start(settings, &session).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = incoming.recv().await {
            let envelope: SignedEnvelope = serde_json::from_slice(&message.payload).unwrap();
            let reading: Reading = envelope.open().expect("signature verifies");
            let _ = tx.send((envelope, reading));
            handle.ack(message).await;
        }
    });
    rx
}

/// A TCP proxy to the broker that can be cut (all connections dropped, new ones refused).
#[derive(Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<Mutex<bool>>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(Mutex::new(true));
        let (gen_tx, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(gen_tx);
        let proxy = Proxy {
            addr,
            up: up.clone(),
            generation: generation.clone(),
        };
        let target = target.to_owned();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*up.lock().unwrap() {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut cut = generation.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        proxy
    }

    pub fn set_up(&self, up: bool) {
        *self.up.lock().unwrap() = up;
        if !up {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

/// A simulated epoch a little before an interval boundary.
pub fn epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-21T09:59:30Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// A unique id for this test process and label.
pub fn unique(label: &str) -> String {
    format!("t{}-{label}", std::process::id())
}

/// Collects readings until `n` distinct intervals arrived or `timeout` passes.
pub async fn collect(
    rx: &mut mpsc::UnboundedReceiver<(SignedEnvelope, Reading)>,
    n: usize,
    timeout: std::time::Duration,
) -> Vec<(SignedEnvelope, Reading)> {
    let mut out: Vec<(SignedEnvelope, Reading)> = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let distinct = |v: &Vec<(SignedEnvelope, Reading)>| {
        let mut keys: Vec<String> = v.iter().map(|(_, r)| r.idempotency_key()).collect();
        keys.sort();
        keys.dedup();
        keys.len()
    };
    while distinct(&out) < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => out.push(item),
            _ => break,
        }
    }
    out
}

/// Dedups by idempotency key (as settlement does), checking that a replay is byte-identical.
pub fn dedup(items: &[(SignedEnvelope, Reading)]) -> Vec<Reading> {
    let mut by_key: HashMap<String, (SignedEnvelope, Reading)> = HashMap::new();
    for (env, r) in items {
        if let Some((prev, _)) = by_key.get(&r.idempotency_key()) {
            assert_eq!(
                prev, env,
                "an interval was signed twice with different content"
            );
        } else {
            by_key.insert(r.idempotency_key(), (env.clone(), r.clone()));
        }
    }
    let mut readings: Vec<Reading> = by_key.into_values().map(|(_, r)| r).collect();
    readings.sort_by_key(|r| r.interval.start());
    readings
}

/// Asserts the readings cover consecutive intervals with increasing sequence numbers.
pub fn assert_contiguous(readings: &[Reading]) {
    for pair in readings.windows(2) {
        assert_eq!(
            pair[1].interval,
            pair[0].interval.next(),
            "an interval is missing: {:?} then {:?}",
            pair[0].interval,
            pair[1].interval
        );
        assert!(
            pair[1].sequence > pair[0].sequence,
            "sequence must increase"
        );
    }
}

/// The gateway's Modbus TCP device list for one meter-sim home (inverter, battery, grid meter).
pub fn modbus_devices(home: &ManifestHome) -> Vec<DeviceConfig> {
    home.devices
        .iter()
        .map(|d| {
            let role = match d.kind {
                DeviceKind::Inverter => Role::Inverter,
                DeviceKind::Battery => Role::Battery,
                DeviceKind::Meter => Role::GridMeter,
            };
            DeviceConfig::modbus_tcp(
                &format!("{:?}", d.kind).to_lowercase(),
                role,
                &d.host,
                d.port,
                d.unit,
            )
        })
        .collect()
}
