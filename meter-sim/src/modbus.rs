//! Modbus TCP: one tokio-modbus server per home, three SunSpec devices behind it by unit id.
//!
//! Requests: function 3 (read holding registers) on any device; functions 6 and 16 (write) on
//! the battery's writable points of models 124 and 802 and the inverter's power limit in model
//! 123 (`WMaxLimPct`, `WMaxLim_Ena` and their `WinTms`/`RvrtTms`/`RmpTms`). Answers follow the
//! Modbus rules:
//! a read of 0 or more than 125 registers → IllegalDataValue (3); addresses outside the
//! device's map, or a write to a read-only point → IllegalDataAddress (2); other function
//! codes → IllegalFunction (1); a value out of range (a limit above 100 %, an enum that is not
//! 0 or 1, the "not implemented" 0xFFFF as a time) → IllegalDataValue (3); a unit id other than
//! 1–3, or a device the home does not have → GatewayTargetDevice (0x0B). Faults (see [`crate::faults`]) are applied per device.

use crate::faults::{DeviceKind, Fault};
use crate::scenario::device_for_unit;
use crate::state::Shared;
use crate::sunspec::{self, BASE_ADDRESS, Identity, Layout, MAX_READ};
use gridmesh_runtime::shutdown::Shutdown;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

type Answer = Result<Option<Response>, ExceptionCode>;

/// Starts the server of one home on an already bound listener.
pub(crate) fn serve_home(
    shared: Arc<Shared>,
    home: usize,
    listener: TcpListener,
    shutdown: &Shutdown,
) {
    let token = shutdown.token();
    shutdown.spawn(async move {
        let server = Server::new(listener);
        let on_connected = |stream: TcpStream, _addr| {
            let shared = shared.clone();
            async move {
                let _ = stream.set_nodelay(true);
                let kill = Arc::new(AtomicBool::new(false));
                let service = DeviceService {
                    shared,
                    home,
                    kill: kill.clone(),
                };
                Ok(Some((
                    service,
                    KillableStream {
                        inner: stream,
                        kill,
                    },
                )))
            }
        };
        let on_error =
            |error: io::Error| tracing::debug!(%error, "Modbus connection ended with an error");
        tokio::select! {
            result = server.serve(&on_connected, on_error) => {
                if let Err(error) = result {
                    tracing::error!(%error, "Modbus server stopped");
                }
            }
            _ = token.cancelled() => {}
        }
    });
}

/// A TCP stream the service can cut (the `drop` fault): after `kill`, reads see end of file and
/// writes fail, so tokio-modbus closes the connection.
struct KillableStream {
    inner: TcpStream,
    kill: Arc<AtomicBool>,
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.kill.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.kill.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct DeviceService {
    shared: Arc<Shared>,
    home: usize,
    kill: Arc<AtomicBool>,
}

impl tokio_modbus::server::Service for DeviceService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let stats = &self.shared.stats;
        stats.modbus_requests.fetch_add(1, Ordering::Relaxed);
        let (answer, delay) = self.handle(req.slave, req.request);
        if answer.is_err() {
            stats.modbus_exceptions.fetch_add(1, Ordering::Relaxed);
        }
        match delay {
            None => Box::pin(std::future::ready(answer)),
            Some(delay) => Box::pin(async move {
                tokio::time::sleep(delay).await;
                answer
            }),
        }
    }
}

impl DeviceService {
    fn handle(&self, unit: u8, request: Request<'static>) -> (Answer, Option<Duration>) {
        let Some(kind) = device_for_unit(unit) else {
            return (Err(ExceptionCode::GatewayTargetDevice), None);
        };
        let mut home = self.shared.home(self.home);
        let present = match kind {
            DeviceKind::Inverter => home.params.has_pv(),
            DeviceKind::Battery => home.params.has_battery(),
            DeviceKind::Meter => true,
        };
        if !present {
            return (Err(ExceptionCode::GatewayTargetDevice), None);
        }
        let mut delay = None;
        match home.fault(kind) {
            Some(Fault::Drop) => {
                self.kill.store(true, Ordering::Release);
                self.shared
                    .stats
                    .dropped_connections
                    .fetch_add(1, Ordering::Relaxed);
                return (Ok(None), None);
            }
            Some(Fault::Exception { code }) => return (Err(ExceptionCode::new(code)), None),
            Some(Fault::Late { millis }) => delay = Some(Duration::from_millis(millis)),
            _ => {}
        }
        let layout = Layout::of(kind);
        let answer = match request {
            Request::ReadHoldingRegisters(address, count) => {
                if count == 0 || count > MAX_READ {
                    Err(ExceptionCode::IllegalDataValue)
                } else if address < BASE_ADDRESS
                    || (address - BASE_ADDRESS) as u32 + count as u32 > layout.len() as u32
                {
                    Err(ExceptionCode::IllegalDataAddress)
                } else {
                    let values = home.values(kind);
                    drop(home);
                    let p = &self.shared.params[self.home];
                    let id = Identity {
                        home: &p.id,
                        inverter_w: p.inverter_w,
                        battery_w: p.battery_w,
                        battery_wh: p.battery_kwh * 1000.0,
                    };
                    let regs = sunspec::render(kind, &id, &values);
                    let start = (address - BASE_ADDRESS) as usize;
                    Ok(Some(Response::ReadHoldingRegisters(
                        regs[start..start + count as usize].to_vec(),
                    )))
                }
            }
            Request::WriteSingleRegister(address, value) => {
                write(&mut home, kind, address, &[value])
                    .map(|()| Some(Response::WriteSingleRegister(address, value)))
            }
            Request::WriteMultipleRegisters(address, values) => {
                if values.is_empty() || values.len() > 123 {
                    Err(ExceptionCode::IllegalDataValue)
                } else {
                    write(&mut home, kind, address, &values).map(|()| {
                        Some(Response::WriteMultipleRegisters(
                            address,
                            values.len() as u16,
                        ))
                    })
                }
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        (answer, delay)
    }
}

/// Validates and applies a write to writable points; all or nothing. A write of 123
/// `WMaxLimPct` or `WMaxLim_Ena` restarts the power limit's revert timer; any battery write
/// restarts the battery's.
fn write(
    home: &mut crate::home::Home,
    kind: DeviceKind,
    address: u16,
    values: &[u16],
) -> Result<(), ExceptionCode> {
    let layout = Layout::of(kind);
    if address < BASE_ADDRESS {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    let mut control = home.control;
    let mut pv = home.pv_control;
    let mut pv_timer = false;
    for (i, &value) in values.iter().enumerate() {
        let offset = address - BASE_ADDRESS + i as u16;
        let Some((model, name, slot)) = layout.point_at(offset) else {
            return Err(ExceptionCode::IllegalDataAddress);
        };
        if !slot.writable {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let signed = value as i16;
        let ok = match (model, name) {
            (124, "WChaMax") => {
                control.w_cha_max = value;
                (1..=home.params.battery_w.min(65_534)).contains(&(value as u32))
            }
            (124, "StorCtl_Mod") => {
                control.stor_ctl_mod = value;
                value <= 3
            }
            (124, "MinRsvPct") => {
                control.reserve_pct = value as f64;
                value <= 100
            }
            (124, "OutWRte") => {
                control.out_w_rte = signed;
                (-100..=100).contains(&signed)
            }
            (124, "InWRte") => {
                control.in_w_rte = signed;
                (-100..=100).contains(&signed)
            }
            (124, "InOutWRte_RvrtTms") => {
                control.revert_seconds = value;
                true
            }
            (124, "InOutWRte_WinTms") | (124, "InOutWRte_RmpTms") => value == 0,
            (124, "ChaGriSet") => {
                control.cha_gri_set = value;
                value <= 1
            }
            (802, "SocRsvMax") => {
                control.max_soc_pct = value as f64 / 10.0;
                (1..=1000).contains(&value)
            }
            (802, "SoCRsvMin") => {
                control.reserve_pct = value as f64 / 10.0;
                value < 1000
            }
            (802, "SetOp") => {
                control.set_op = value;
                value == 1 || value == 2
            }
            (802, "SetInvState") => {
                control.set_inv_state = value;
                (1..=3).contains(&value)
            }
            (802, "CtrlHb") | (802, "AlmRst") => true,
            (123, "WMaxLimPct") => {
                pv.limit_tenths_pct = value;
                pv_timer = true;
                // 100.0 % at WMaxLimPct_SF = -1.
                value <= 1000
            }
            (123, "WMaxLim_Ena") => {
                pv.enabled = value;
                pv_timer = true;
                value <= 1
            }
            (123, "WMaxLimPct_WinTms") => {
                pv.window_seconds = value;
                value != 0xFFFF
            }
            (123, "WMaxLimPct_RvrtTms") => {
                pv.revert_seconds = value;
                value != 0xFFFF
            }
            (123, "WMaxLimPct_RmpTms") => {
                pv.ramp_seconds = value;
                value != 0xFFFF
            }
            _ => false,
        };
        if !ok {
            return Err(ExceptionCode::IllegalDataValue);
        }
    }
    if kind == DeviceKind::Inverter {
        if pv_timer {
            pv.last_write = home.time;
        }
        if pv != home.pv_control {
            tracing::debug!(home = %home.params.id, limit_pct = pv.limit_pct(), enabled = pv.enabled, revert_seconds = pv.revert_seconds, "PV power limit written");
        }
        home.pv_control = pv;
        return Ok(());
    }
    if control.reserve_pct > control.max_soc_pct {
        return Err(ExceptionCode::IllegalDataValue);
    }
    control.last_write = home.time;
    home.control = control;
    Ok(())
}
