//! SunSpec discovery and model decoding (`edge_gateway::sunspec`) against a device that lies:
//! model chains whose lengths jump anywhere, run past register 65535 or never end, registers
//! with sentinels, extreme scale factors and NaN or infinite floats.
//!
//! Input: one byte picks the role, the base address (40000, 0 or 50000, or none: probe all)
//! and whether unmapped registers read as zero or answer a Modbus exception; then segments,
//! each an address (u16), a count (u8) and that many registers (u16). The "SunS" marker is
//! placed at the base. Discovery, selection, chunked reads and decoding run as the gateway
//! polls a Modbus device; the fake device checks every read the gateway asks for is one a
//! real device could answer (at most 125 registers, not past 65535), and the values go on
//! through the accountant over a few polls.
#![no_main]

use edge_gateway::config::Role;
use edge_gateway::sunspec::{
    BASES, MARKER, MAX_READ, ReadFailure, RegisterSource, decode, discover, read_model, select,
};
use gridmesh_fuzz::{T0_MS, account};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

const ROLES: [Role; 3] = [Role::Inverter, Role::GridMeter, Role::Battery];

struct FakeDevice {
    regs: HashMap<u16, u16>,
    zero_fill: bool,
    reads: usize,
}

impl RegisterSource for FakeDevice {
    async fn read(&mut self, address: u16, count: u16) -> Result<Vec<u16>, ReadFailure> {
        assert!(
            count >= 1 && count <= MAX_READ,
            "a read of {count} registers"
        );
        assert!(
            u32::from(address) + u32::from(count) <= 0x1_0000,
            "a read of {count} registers at {address} runs past register 65535"
        );
        self.reads += 1;
        assert!(self.reads <= 10_000, "discovery and reads do not end");
        (u32::from(address)..u32::from(address) + u32::from(count))
            .map(|a| match self.regs.get(&(a as u16)) {
                Some(v) => Ok(*v),
                None if self.zero_fill => Ok(0),
                None => Err(ReadFailure::Exception("IllegalDataAddress".into())),
            })
            .collect()
    }
}

/// Runs a future that never waits (the fake device answers at once).
fn run<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the fake device never waits"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let role = ROLES[usize::from(pick % 3)];
    let base = match (pick / 3) % 4 {
        3 => None,
        i => Some(BASES[usize::from(i)]),
    };
    let zero_fill = pick & 0x80 != 0;
    let mut regs = HashMap::new();
    let marker_at = base.unwrap_or(BASES[0]);
    regs.insert(marker_at, MARKER[0]);
    regs.insert(marker_at.wrapping_add(1), MARKER[1]);
    while rest.len() >= 3 {
        let mut address = u16::from_be_bytes([rest[0], rest[1]]);
        let count = usize::from(rest[2]);
        rest = &rest[3..];
        for word in rest.chunks_exact(2).take(count) {
            regs.insert(address, u16::from_be_bytes([word[0], word[1]]));
            address = address.wrapping_add(1);
        }
        rest = &rest[(count * 2).min(rest.len())..];
    }
    let mut device = FakeDevice {
        regs,
        zero_fill,
        reads: 0,
    };
    let chain = match run(discover(&mut device, base)) {
        Ok(chain) => chain,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert!(chain.len() <= 200, "a chain of {} models", chain.len());
    let picked = match select(role, &chain) {
        Ok(picked) => picked,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let mut models = Vec::new();
    for header in &picked {
        match run(read_model(&mut device, header)) {
            Ok(model) => {
                assert_eq!(model.len(), usize::from(header.len) + 2);
                models.push(model);
            }
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        }
    }
    let values = decode(role, &models);
    for (_, mw) in &values.power_mw {
        assert!(*mw >= 0, "a negative power channel: {values:?}");
    }
    if let Some(soc) = values.soc_permille {
        assert!(soc <= 1000, "state of charge {soc} ‰");
    }
    // The same registers polled every 100 s, then once more with the counters as read.
    let polls: Vec<_> = (0..4)
        .map(|i| (T0_MS + i * 100_000, values.clone()))
        .collect();
    account(&polls);
});
