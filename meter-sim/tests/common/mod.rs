//! A small SunSpec reader over tokio-modbus for the tests (independent of the server's code).
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use meter_sim::{Scenario, Simulator};
use std::net::SocketAddr;
use tokio_modbus::client::{Context, Reader, Writer, tcp};
use tokio_modbus::{ExceptionCode, Slave};

pub type Answer<T> = Result<T, ExceptionCode>;

pub async fn connect(addr: SocketAddr, unit: u8) -> Context {
    tcp::connect_slave(addr, Slave(unit))
        .await
        .expect("connect to the simulated home")
}

/// Reads holding registers; panics on transport errors, returns exceptions.
pub async fn read(ctx: &mut Context, address: u16, count: u16) -> Answer<Vec<u16>> {
    ctx.read_holding_registers(address, count)
        .await
        .expect("transport")
}

pub async fn write(ctx: &mut Context, address: u16, values: &[u16]) -> Answer<()> {
    if values.len() == 1 {
        ctx.write_single_register(address, values[0])
            .await
            .expect("transport")
    } else {
        ctx.write_multiple_registers(address, values)
            .await
            .expect("transport")
    }
}

/// A discovered model: id, address of its ID register, length L.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    pub id: u16,
    pub address: u16,
    pub length: u16,
}

/// Walks the SunSpec chain from 40000.
pub async fn discover(ctx: &mut Context) -> Vec<Model> {
    let marker = read(ctx, 40_000, 2).await.expect("SunS marker");
    assert_eq!(marker, vec![0x5375, 0x6e53], "SunS at 40000");
    let mut address = 40_002u16;
    let mut models = Vec::new();
    loop {
        let header = read(ctx, address, 2).await.expect("model header");
        if header[0] == 0xFFFF {
            assert_eq!(header[1], 0, "end model length");
            break;
        }
        models.push(Model {
            id: header[0],
            address,
            length: header[1],
        });
        address += 2 + header[1];
        assert!(models.len() < 20, "runaway model chain");
    }
    models
}

/// Reads a whole model (ID and L included) in chunks of at most 125 registers.
pub async fn read_model(ctx: &mut Context, model: Model) -> Vec<u16> {
    let total = model.length + 2;
    let mut out = Vec::new();
    let mut at = 0;
    while at < total {
        let n = (total - at).min(125);
        out.extend(read(ctx, model.address + at, n).await.expect("model chunk"));
        at += n;
    }
    out
}

pub fn acc32(regs: &[u16], offset: usize) -> u32 {
    (regs[offset] as u32) << 16 | regs[offset + 1] as u32
}

pub fn u64_at(regs: &[u16], offset: usize) -> u64 {
    (0..4).fold(0u64, |acc, i| acc << 16 | regs[offset + i] as u64)
}

pub fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-21T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// Starts a small neighbourhood on ephemeral ports at the given speed.
pub async fn start(homes: usize, seed: u64, speed: f64) -> (Simulator, Shutdown) {
    start_scenario(Scenario::small(homes, seed), speed).await
}

pub async fn start_scenario(scenario: Scenario, speed: f64) -> (Simulator, Shutdown) {
    let clock = Clock::scaled(scenario.start.unwrap_or_else(start_time), speed);
    let shutdown = Shutdown::new();
    let sim = meter_sim::start(scenario, clock, &shutdown)
        .await
        .expect("simulator starts");
    (sim, shutdown)
}

/// Offsets of the models within each device map (from the standard).
pub const M103: u16 = 40_070;
pub const M203: u16 = 40_070;
pub const M124: u16 = 40_070;
pub const M802: u16 = 40_096;
pub const M701: u16 = 40_160;
pub const M123: u16 = 40_122;
