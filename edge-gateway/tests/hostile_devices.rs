//! Hostile or broken devices (issue 15, item 4): a raw Modbus TCP server that answers short
//! responses, exception codes, garbage frames, SunSpec chains that run past 65535, model
//! lengths that lie, and NaN/inf in float models. The device read fails with an error (never a
//! panic, never invented values), and the accountant turns those polls into flagged intervals
//! without negative or huge energy.

use chrono::{TimeZone, Utc};
use edge_gateway::accountant::{Accountant, AccountantSettings};
use edge_gateway::config::{DeviceConfig, Role};
use edge_gateway::reader::ModbusDevice;
use edge_gateway::sample::{Channel, Counter, DeviceValues, Sample};
use gridmesh_protocol::IntervalLength;
use gridmesh_protocol::reading::ReadingFlags;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the hostile server answers reads of more than 2 registers (model reads; discovery
/// reads 2 at a time and gets the image).
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// The image, honestly.
    Honest,
    /// One register fewer than asked (a consistent frame).
    Short,
    /// Exception 0x04 (server device failure).
    Exception,
    /// Bytes that are not a Modbus frame.
    Garbage,
    /// This exception code.
    ExceptionCode(u8),
}

const SUNS: [u16; 2] = [0x5375, 0x6e53];

/// Serves `image` at 40000 on 127.0.0.1:0; reads outside it get exception 0x02.
async fn hostile(image: Vec<u16>, mode: Mode) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let image = image.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 12];
                while socket.read_exact(&mut request).await.is_ok() {
                    let (tid, unit, function) = ([request[0], request[1]], request[6], request[7]);
                    let address = u16::from_be_bytes([request[8], request[9]]);
                    let count = u16::from_be_bytes([request[10], request[11]]);
                    let start = usize::from(address.wrapping_sub(40000));
                    let in_image = address >= 40000 && start + usize::from(count) <= image.len();
                    let pdu: Vec<u8> = match (mode, count > 2, in_image) {
                        (Mode::Garbage, true, _) => {
                            let _ = socket
                                .write_all(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0xff, 0x13, 7])
                                .await;
                            continue;
                        }
                        (Mode::Exception, true, _) => vec![function | 0x80, 0x04],
                        (Mode::ExceptionCode(code), true, _) => vec![function | 0x80, code],
                        (_, _, false) => vec![function | 0x80, 0x02],
                        (mode, _, true) => {
                            let n = match mode {
                                Mode::Short if count > 2 => count - 1,
                                _ => count,
                            };
                            let words = &image[start..start + usize::from(n)];
                            let mut pdu = vec![function, (2 * n) as u8];
                            for w in words {
                                pdu.extend(w.to_be_bytes());
                            }
                            pdu
                        }
                    };
                    let mut frame = vec![tid[0], tid[1], 0, 0];
                    frame.extend(((pdu.len() + 1) as u16).to_be_bytes());
                    frame.push(unit);
                    frame.extend(pdu);
                    if socket.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A SunSpec inverter: common model, then model 103 with PV counter `wh` and power `w`.
fn inverter_103(wh: u32, w: u16) -> Vec<u16> {
    let mut image = SUNS.to_vec();
    let mut common = vec![0u16; 68];
    common[0] = 1;
    common[1] = 66;
    image.extend(common);
    let mut m = vec![0u16; 52];
    m[0] = 103;
    m[1] = 50;
    m[14] = w;
    m[24] = (wh >> 16) as u16;
    m[25] = wh as u16;
    image.extend(m);
    image.extend([0xFFFF, 0]);
    image
}

/// A SunSpec inverter with float model 113: PV counter and power as given (f32).
fn inverter_113(wh: f32, w: f32) -> Vec<u16> {
    let mut image = SUNS.to_vec();
    let mut common = vec![0u16; 68];
    common[0] = 1;
    common[1] = 66;
    image.extend(common);
    let mut m = vec![0u16; 62];
    m[0] = 113;
    m[1] = 60;
    let (wh, w) = (wh.to_bits(), w.to_bits());
    m[22] = (w >> 16) as u16;
    m[23] = w as u16;
    m[32] = (wh >> 16) as u16;
    m[33] = wh as u16;
    image.extend(m);
    image.extend([0xFFFF, 0]);
    image
}

/// A SunSpec grid meter with float model 213: import and export counters (Wh) and the signed
/// total power (W, positive = import), as given (f32).
fn meter_213(import: f32, export: f32, w: f32) -> Vec<u16> {
    let mut image = SUNS.to_vec();
    let mut common = vec![0u16; 68];
    common[0] = 1;
    common[1] = 66;
    image.extend(common);
    let mut m = vec![0u16; 126];
    m[0] = 213;
    m[1] = 124;
    for (at, v) in [(28, w), (60, export), (68, import)] {
        let bits = v.to_bits();
        m[at] = (bits >> 16) as u16;
        m[at + 1] = bits as u16;
    }
    image.extend(m);
    image.extend([0xFFFF, 0]);
    image
}

async fn poll(
    image: Vec<u16>,
    mode: Mode,
) -> Result<DeviceValues, edge_gateway::reader::DeviceError> {
    poll_as(image, mode, Role::Inverter).await
}

async fn poll_as(
    image: Vec<u16>,
    mode: Mode,
    role: Role,
) -> Result<DeviceValues, edge_gateway::reader::DeviceError> {
    let port = hostile(image, mode).await;
    let config = DeviceConfig::modbus_tcp("inv", role, "127.0.0.1", port, 1);
    let mut device = ModbusDevice::new(config, Duration::from_millis(300));
    device.poll().await
}

#[tokio::test]
async fn an_honest_server_reads() {
    let values = poll(inverter_103(123_456, 1500), Mode::Honest)
        .await
        .unwrap();
    assert_eq!(
        values.counters,
        vec![(
            Channel::Pv,
            Counter {
                mwh: 123_456_000,
                modulus_mwh: Some(4_294_967_296_000)
            }
        )]
    );
}

#[tokio::test]
async fn short_exception_and_garbage_answers_are_errors() {
    for mode in [Mode::Short, Mode::Exception, Mode::Garbage] {
        let result = poll(inverter_103(123_456, 1500), mode).await;
        assert!(result.is_err(), "{mode:?}: {result:?}");
    }
}

#[tokio::test]
async fn a_chain_past_65535_or_a_lying_length_is_an_error() {
    // The common model claims 65000 registers: the next header would be past 65535.
    let mut past_end = SUNS.to_vec();
    past_end.extend([1, 65000]);
    past_end.extend(vec![0; 200]);
    let result = poll(past_end, Mode::Honest).await;
    let message = result.unwrap_err().to_string();
    assert!(message.contains("address space"), "{message}");
    // Model 103 claims 50 registers but the device ends 10 registers in (no end marker).
    let mut lying = inverter_103(1, 1);
    lying.truncate(2 + 68 + 12);
    assert!(poll(lying, Mode::Honest).await.is_err());
    // A chain that never ends (every header a zero-length model): bounded, an error.
    let mut endless = SUNS.to_vec();
    endless.extend([1, 0].repeat(400));
    let message = poll(endless, Mode::Honest).await.unwrap_err().to_string();
    assert!(message.contains("malformed"), "{message}");
}

#[tokio::test]
async fn nan_and_infinite_floats_are_not_values() {
    for (wh, w) in [
        (f32::NAN, f32::NAN),
        (f32::INFINITY, f32::NEG_INFINITY),
        (-f32::INFINITY, f32::INFINITY),
    ] {
        let values = poll(inverter_113(wh, w), Mode::Honest).await.unwrap();
        assert!(values.counters.is_empty(), "{wh}: {values:?}");
        assert!(values.power_mw.is_empty(), "{w}: {values:?}");
    }
}

#[tokio::test]
async fn every_exception_code_is_an_error() {
    // Illegal function, address, value, device failure, busy, gateway path/target failures.
    for code in [0x01, 0x02, 0x03, 0x04, 0x06, 0x0A, 0x0B, 0x7F] {
        let result = poll(inverter_103(123_456, 1500), Mode::ExceptionCode(code)).await;
        assert!(result.is_err(), "exception {code:#04x}: {result:?}");
    }
}

#[tokio::test]
async fn a_float_meter_213_reads_and_its_nan_and_infinite_floats_are_not_values() {
    let honest = poll_as(
        meter_213(1234.5, 99.0, -1500.0),
        Mode::Honest,
        Role::GridMeter,
    )
    .await
    .unwrap();
    assert!(
        honest.counters.contains(&(
            Channel::GridImport,
            Counter {
                mwh: 1_234_500,
                modulus_mwh: None
            }
        )),
        "{honest:?}"
    );
    assert!(
        honest.power_mw.contains(&(Channel::GridExport, 1_500_000)),
        "{honest:?}"
    );
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let values = poll_as(meter_213(bad, bad, bad), Mode::Honest, Role::GridMeter)
            .await
            .unwrap();
        assert!(values.counters.is_empty(), "{bad}: {values:?}");
        assert!(values.power_mw.is_empty(), "{bad}: {values:?}");
    }
}

/// Float counters that are finite but impossible — negative, a jump to 10¹⁵ Wh, the largest
/// f32 — on an inverter (113) and a meter (213): no interval gets negative or huge energy, and
/// the intervals they touch are flagged.
#[tokio::test]
async fn negative_and_absurd_float_counters_never_give_negative_or_huge_energy() {
    let settings = AccountantSettings {
        length: IntervalLength::Min5,
        tolerance_ms: 5_000,
        grace_ms: 30_000,
        stale_ms: 60_000,
    };
    let b0: i64 = 1_782_000_000_000;
    let hostile_values = [-5_000.0f32, 1e15, f32::MAX, -1e15, -0.0];
    for role in [Role::Inverter, Role::GridMeter] {
        let channel = match role {
            Role::Inverter => Channel::Pv,
            _ => Channel::GridImport,
        };
        // 3 kW for 40 minutes, polled every 10 s; from minute 12 to 23 the device answers
        // one of the hostile values (read over Modbus, as the gateway would).
        let mut read = std::collections::BTreeMap::new();
        for v in hostile_values {
            let image = match role {
                Role::Inverter => inverter_113(v, 3000.0),
                _ => meter_213(v, 0.0, 3000.0),
            };
            read.insert(
                v.to_bits(),
                poll_as(image, Mode::Honest, role).await.unwrap(),
            );
        }
        let mut acc = Accountant::new(settings, &[channel], None);
        let mut closed = Vec::new();
        for k in -1..=240i64 {
            let t = b0 + k * 10_000;
            let honest_wh = 1_000.0 + (k + 1) as f64 * 10.0 * 3_000.0 / 3_600.0;
            let values = if (72..138).contains(&k) {
                let v = hostile_values[(k as usize) % hostile_values.len()];
                read[&v.to_bits()].clone()
            } else {
                DeviceValues {
                    counters: vec![(
                        channel,
                        Counter {
                            mwh: (honest_wh * 1e3).round() as i64,
                            modulus_mwh: None,
                        },
                    )],
                    ..Default::default()
                }
            };
            acc.feed(&Sample {
                at: Utc.timestamp_millis_opt(t).unwrap(),
                device: "dev".into(),
                values: Ok(values),
                stale: false,
            });
            closed.extend(acc.close_ready(Utc.timestamp_millis_opt(t).unwrap()));
        }
        assert!(closed.len() >= 7, "{role:?}: {} intervals", closed.len());
        let mut flagged = 0;
        for c in &closed {
            let wh = match role {
                Role::Inverter => c.deltas.pv.0,
                _ => c.deltas.grid_import.0,
            };
            // At most 3 kW over the interval and the 11 hostile minutes before it (800 Wh),
            // never negative.
            assert!(
                (0..=800).contains(&wh),
                "{role:?} {}: {wh} Wh {:?}",
                c.interval,
                c.flags.names()
            );
            if !c.flags.names().is_empty() {
                flagged += 1;
            }
        }
        assert!(flagged >= 2, "{role:?}: hostile intervals are not flagged");
    }
}

/// Good polls, then a stretch of hostile answers (errors and NaN-only polls), then good polls:
/// every interval's energy is between 0 and what the device could have produced, and the
/// intervals without a counter at a boundary are flagged.
#[tokio::test]
async fn hostile_polls_give_flagged_intervals_never_huge_or_negative_energy() {
    let good = poll(inverter_103(0, 3000), Mode::Honest).await.unwrap();
    let nan = poll(inverter_113(f32::NAN, f32::NAN), Mode::Honest)
        .await
        .unwrap();
    let failures: Vec<String> = {
        let mut out = Vec::new();
        for mode in [Mode::Short, Mode::Exception, Mode::Garbage] {
            out.push(
                poll(inverter_103(0, 3000), mode)
                    .await
                    .unwrap_err()
                    .to_string(),
            );
        }
        out
    };
    let settings = AccountantSettings {
        length: IntervalLength::Min5,
        tolerance_ms: 5_000,
        grace_ms: 30_000,
        stale_ms: 60_000,
    };
    let b0: i64 = 1_782_000_000_000;
    let mut acc = Accountant::new(settings, &[Channel::Pv], None);
    let mut closed = Vec::new();
    // 3 kW: 1000 mWh per 1.2 s; polls every 10 s for 40 minutes, hostile from minute 12 to 23.
    for k in -1..=240i64 {
        let t = b0 + k * 10_000;
        let hostile_poll = (72..138).contains(&k);
        let values = if !hostile_poll {
            let mut v = good.clone();
            v.counters[0].1.mwh = 1_000_000 + (k + 1) * 10_000 * 3_000 / 3_600;
            Ok(v)
        } else if k % 2 == 0 {
            Ok(nan.clone())
        } else {
            Err(failures[(k as usize) % failures.len()].clone())
        };
        acc.feed(&Sample {
            at: Utc.timestamp_millis_opt(t).unwrap(),
            device: "inv".into(),
            values,
            stale: false,
        });
        closed.extend(acc.close_ready(Utc.timestamp_millis_opt(t).unwrap()));
    }
    assert!(closed.len() >= 7, "{} intervals", closed.len());
    let mut flagged = 0;
    for c in &closed {
        let pv = c.deltas.pv.0;
        // Held energy shows up after the outage: at most 3 kW over the interval and the
        // 11-minute outage before it (800 Wh), never more and never negative.
        assert!(
            (0..=800).contains(&pv),
            "{}: {pv} Wh {:?}",
            c.interval,
            c.flags.names()
        );
        if c.flags.contains(ReadingFlags::DEVICE_ERROR) {
            flagged += 1;
        }
    }
    assert!(
        flagged >= 2,
        "{:?}",
        closed.iter().map(|c| c.flags.names()).collect::<Vec<_>>()
    );
    // Nothing is lost: the deltas add up to the counter's increase over the closed intervals.
    let total: i64 = closed.iter().map(|c| c.deltas.pv.0).sum();
    let span = (closed.last().unwrap().interval.end() - closed[0].interval.start()).num_seconds();
    assert!(
        (total - span * 3_000 / 3_600).abs() <= 2,
        "{total} Wh over {span} s"
    );
}

/// Modbus CRC-16 (polynomial 0xA001, initial 0xFFFF), low byte first on the wire.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for b in bytes {
        crc ^= u16::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// An RTU-over-TCP device serving `image` at 40000, whose answers to model reads (more than
/// 2 registers) carry a wrong CRC when `corrupt`.
async fn rtu_device(image: Vec<u16>, corrupt: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let image = image.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                while socket.read_exact(&mut request).await.is_ok() {
                    let (unit, function) = (request[0], request[1]);
                    let address = u16::from_be_bytes([request[2], request[3]]);
                    let count = u16::from_be_bytes([request[4], request[5]]);
                    let start = usize::from(address.wrapping_sub(40000));
                    let mut frame = vec![unit];
                    if address >= 40000 && start + usize::from(count) <= image.len() {
                        frame.extend([function, (2 * count) as u8]);
                        for w in &image[start..start + usize::from(count)] {
                            frame.extend(w.to_be_bytes());
                        }
                    } else {
                        frame.extend([function | 0x80, 0x02]);
                    }
                    let mut crc = crc16(&frame);
                    if corrupt && count > 2 {
                        crc ^= 0x5a5a;
                    }
                    frame.extend(crc.to_le_bytes());
                    if socket.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn rtu_answers_with_a_wrong_crc_are_errors() {
    let poll_rtu = |corrupt| async move {
        let port = rtu_device(inverter_103(123_456, 1500), corrupt).await;
        let mut config = DeviceConfig::modbus_tcp("inv", Role::Inverter, "127.0.0.1", port, 1);
        config.transport = edge_gateway::config::Transport::RtuOverTcp;
        let mut device = ModbusDevice::new(config, Duration::from_millis(300));
        device.poll().await
    };
    // The same device with correct CRCs reads (so the framing here is right).
    let good = poll_rtu(false).await.unwrap();
    assert_eq!(good.counters[0].1.mwh, 123_456_000);
    let bad = poll_rtu(true).await;
    assert!(bad.is_err(), "{bad:?}");
}
