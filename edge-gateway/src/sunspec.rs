//! SunSpec over Modbus: discovery of the model chain and decoding of the models the gateway
//! uses, with scale factors, float models and "not implemented" sentinels.
//!
//! Offsets below count from a model's id register (so the length register is +1), as in the
//! SunSpec model definitions. Long models are read in chunks of at most
//! [`MAX_READ`] registers. Decoding is pure: [`decode`] turns the registers of the models a
//! device exposes into [`DeviceValues`] for its role.

use crate::config::Role;
use crate::sample::{Channel, Counter, DeviceValues, PvLimit, float_to_milli, scale_to_milli};
use std::future::Future;

/// Base addresses probed for the "SunS" marker, in order.
pub const BASES: [u16; 3] = [40000, 0, 50000];
/// "SunS" as two registers.
pub const MARKER: [u16; 2] = [0x5375, 0x6e53];
/// The end-of-chain model id.
pub const END_ID: u16 = 0xFFFF;
/// Most registers one Modbus read returns.
pub const MAX_READ: u16 = 125;

/// Model ids the gateway decodes.
pub const SUPPORTED: &[u16] = &[
    1, 101, 102, 103, 111, 112, 113, 123, 124, 201, 202, 203, 204, 211, 212, 213, 701, 802,
];

/// SunSpec model 123, immediate controls: the inverter's active power limit.
pub const IMMEDIATE_CONTROLS: u16 = 123;

/// Offsets in model 123, counted from its id register.
pub mod m123 {
    /// `WMaxLimPct` (uint16, % of WMax, scaled by `WMaxLimPct_SF`).
    pub const W_MAX_LIM_PCT: u16 = 5;
    /// `WMaxLimPct_RvrtTms` (uint16, seconds; the limit is dropped after this long).
    pub const REVERT_TMS: u16 = 7;
    /// `WMaxLim_Ena` (enum16: 0 disabled, 1 enabled).
    pub const ENA: u16 = 9;
    /// `WMaxLimPct_SF` (sunssf).
    pub const SF: u16 = 23;
}

/// A model found in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelHeader {
    /// The model id.
    pub id: u16,
    /// The address of its id register.
    pub address: u16,
    /// Its length register (registers after id and length).
    pub len: u16,
}

/// A Modbus read failure as discovery sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadFailure {
    /// The device answered with a Modbus exception (e.g. illegal address).
    #[error("the device answered with Modbus exception {0}")]
    Exception(String),
    /// The device did not answer or the connection failed.
    #[error("{0}")]
    Transport(String),
}

/// Reads holding registers (implemented by the Modbus connection and by test fakes).
pub trait RegisterSource {
    /// Reads `count` (≤ 125) holding registers from `address`.
    fn read(
        &mut self,
        address: u16,
        count: u16,
    ) -> impl Future<Output = Result<Vec<u16>, ReadFailure>> + Send;
}

/// Why SunSpec discovery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// No "SunS" marker at any base address.
    #[error(
        "no SunSpec marker (\"SunS\") at addresses 40000, 0 or 50000; the device is not SunSpec-compatible or the unit id is wrong (try `edge-gateway detect HOST`)"
    )]
    NoMarker,
    /// The chain is malformed.
    #[error("the SunSpec model chain is malformed at address {0}: {1}")]
    BadChain(u16, String),
    /// A read failed.
    #[error(transparent)]
    Read(#[from] ReadFailure),
}

/// Finds the SunSpec base and walks the model chain.
pub async fn discover<S: RegisterSource>(
    source: &mut S,
    base: Option<u16>,
) -> Result<Vec<ModelHeader>, DiscoveryError> {
    let bases: Vec<u16> = match base {
        Some(b) => vec![b],
        None => BASES.to_vec(),
    };
    for base in bases {
        match source.read(base, 2).await {
            Ok(regs) if regs == MARKER => return walk(source, base).await,
            Ok(_) | Err(ReadFailure::Exception(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(DiscoveryError::NoMarker)
}

async fn walk<S: RegisterSource>(
    source: &mut S,
    base: u16,
) -> Result<Vec<ModelHeader>, DiscoveryError> {
    let mut models = Vec::new();
    let mut address = u32::from(base) + 2;
    for _ in 0..200 {
        if address + 2 > 0x1_0000 {
            return Err(DiscoveryError::BadChain(
                address as u16,
                "the chain runs past the end of the address space".into(),
            ));
        }
        let regs = source.read(address as u16, 2).await?;
        let (id, len) = (regs[0], regs[1]);
        if id == END_ID {
            return Ok(models);
        }
        models.push(ModelHeader {
            id,
            address: address as u16,
            len,
        });
        address += 2 + u32::from(len);
    }
    Err(DiscoveryError::BadChain(
        address as u16,
        "more than 200 models; the end marker is missing".into(),
    ))
}

/// Reads a whole model (id and length included) in chunks of at most [`MAX_READ`] registers.
pub async fn read_model<S: RegisterSource>(
    source: &mut S,
    model: &ModelHeader,
) -> Result<Vec<u16>, ReadFailure> {
    let total = u32::from(model.len) + 2;
    let mut out = Vec::with_capacity(total as usize);
    let mut offset = 0u32;
    while offset < total {
        let count = (total - offset).min(u32::from(MAX_READ)) as u16;
        let chunk = source
            .read((u32::from(model.address) + offset) as u16, count)
            .await?;
        if chunk.len() != usize::from(count) {
            return Err(ReadFailure::Transport(format!(
                "asked for {count} registers, got {}",
                chunk.len()
            )));
        }
        out.extend_from_slice(&chunk);
        offset += u32::from(count);
    }
    Ok(out)
}

/// Which models of a chain serve a role, in order of preference.
pub fn models_for(role: Role) -> &'static [u16] {
    match role {
        Role::Inverter => &[103, 102, 101, 113, 112, 111, 701],
        Role::GridMeter => &[203, 204, 202, 201, 213, 212, 211],
        Role::Battery => &[701, 802, 124],
    }
}

/// Picks the models a device with `role` is read through, or explains why none fits.
pub fn select(role: Role, chain: &[ModelHeader]) -> Result<Vec<ModelHeader>, String> {
    let wanted = models_for(role);
    let mut picked: Vec<ModelHeader> = Vec::new();
    match role {
        Role::Battery => {
            // Energy counters from 701, SoC from 802 or 124, power from 802 or 701: use all present.
            for id in wanted {
                if let Some(m) = chain.iter().find(|m| m.id == *id) {
                    picked.push(*m);
                }
            }
        }
        _ => {
            if let Some(m) = wanted
                .iter()
                .find_map(|id| chain.iter().find(|m| m.id == *id))
            {
                picked.push(*m);
            }
        }
    }
    if role == Role::Inverter
        && !picked.is_empty()
        && let Some(m) = chain.iter().find(|m| m.id == IMMEDIATE_CONTROLS)
    {
        // Immediate controls: read with the measurements so the limit in force is known.
        picked.push(*m);
    }
    if picked.is_empty() {
        let found: Vec<String> = chain.iter().map(|m| m.id.to_string()).collect();
        let wanted: Vec<String> = wanted.iter().map(|id| id.to_string()).collect();
        return Err(format!(
            "SunSpec models found [{}], but none the gateway can read as a {:?} (it reads {}); check the device's role in the config or use a supported device",
            found.join(", "),
            role,
            wanted.join(", ")
        ));
    }
    Ok(picked)
}

fn int16(v: u16) -> Option<i64> {
    (v != 0x8000).then_some(i64::from(v as i16))
}
fn uint16(v: u16) -> Option<i64> {
    (v != 0xFFFF).then_some(i64::from(v))
}
fn sunssf(v: u16) -> Option<i16> {
    let sf = v as i16;
    (v != 0x8000 && (-10..=10).contains(&sf)).then_some(sf)
}
/// acc32: 0 means "not implemented" in the standard, but a new meter legitimately reads 0,
/// so 0 is taken as a zero counter.
fn acc32(hi: u16, lo: u16) -> i64 {
    (i64::from(hi) << 16) | i64::from(lo)
}
fn acc64(r: &[u16]) -> Option<i64> {
    let v = r.iter().fold(0u64, |acc, w| (acc << 16) | u64::from(*w));
    i64::try_from(v).ok()
}
fn float32(hi: u16, lo: u16) -> Option<f64> {
    let v = f32::from_bits((u32::from(hi) << 16) | u32::from(lo));
    v.is_finite().then_some(f64::from(v))
}
fn get(r: &[u16], i: usize) -> Option<u16> {
    r.get(i).copied()
}

fn acc32_counter(r: &[u16], at: usize, sf_at: usize) -> Option<Counter> {
    let sf = sunssf(get(r, sf_at)?)?;
    let raw = acc32(get(r, at)?, get(r, at + 1)?);
    Some(Counter {
        mwh: scale_to_milli(raw, sf),
        modulus_mwh: Some(scale_to_milli(1i64 << 32, sf)),
    })
}

fn float_counter(r: &[u16], at: usize) -> Option<Counter> {
    let v = float32(get(r, at)?, get(r, at + 1)?)?;
    Some(Counter {
        mwh: float_to_milli(v, 1e3)?,
        modulus_mwh: None,
    })
}

fn int_power(r: &[u16], at: usize, sf_at: usize) -> Option<i64> {
    Some(scale_to_milli(int16(get(r, at)?)?, sunssf(get(r, sf_at)?)?))
}

fn float_power(r: &[u16], at: usize) -> Option<i64> {
    float_to_milli(float32(get(r, at)?, get(r, at + 1)?)?, 1e3)
}

fn percent_to_permille(r: &[u16], at: usize, sf_at: usize) -> Option<u16> {
    let milli_pct = scale_to_milli(uint16(get(r, at)?)?, sunssf(get(r, sf_at)?)?);
    // ‰ = % × 10 = milli-% / 100, rounded half up; clamped to 0..=1000.
    Some(((milli_pct + 50) / 100).clamp(0, 1000) as u16)
}

/// Decodes one model's registers (id and length included) into `out` for `role`.
pub fn decode_model(role: Role, regs: &[u16], out: &mut DeviceValues) {
    let Some(&id) = regs.first() else { return };
    match (role, id) {
        (Role::Inverter, 101..=103) => {
            if let Some(c) = acc32_counter(regs, 24, 26) {
                out.counters.push((Channel::Pv, c));
            }
            if let Some(w) = int_power(regs, 14, 15) {
                out.power_mw.push((Channel::Pv, w.max(0)));
            }
        }
        (Role::Inverter, 111..=113) => {
            if let Some(c) = float_counter(regs, 32) {
                out.counters.push((Channel::Pv, c));
            }
            if let Some(w) = float_power(regs, 22) {
                out.power_mw.push((Channel::Pv, w.max(0)));
            }
        }
        (Role::Inverter, 701) => {
            if let Some(sf) = get(regs, 120).and_then(sunssf)
                && let Some(v) = regs.get(19..23).and_then(acc64)
            {
                out.counters.push((
                    Channel::Pv,
                    Counter {
                        mwh: scale_to_milli(v, sf),
                        modulus_mwh: None,
                    },
                ));
            }
            if let Some(w) = int_power(regs, 10, 116) {
                out.power_mw.push((Channel::Pv, w.max(0)));
            }
        }
        (Role::GridMeter, 201..=204) => {
            if let Some(c) = acc32_counter(regs, 46, 54) {
                out.counters.push((Channel::GridImport, c));
            }
            if let Some(c) = acc32_counter(regs, 38, 54) {
                out.counters.push((Channel::GridExport, c));
            }
            if let Some(w) = int_power(regs, 18, 22) {
                out.split_power(w, Channel::GridImport, Channel::GridExport);
            }
        }
        (Role::GridMeter, 211..=214) => {
            if let Some(c) = float_counter(regs, 68) {
                out.counters.push((Channel::GridImport, c));
            }
            if let Some(c) = float_counter(regs, 60) {
                out.counters.push((Channel::GridExport, c));
            }
            if let Some(w) = float_power(regs, 28) {
                out.split_power(w, Channel::GridImport, Channel::GridExport);
            }
        }
        (Role::Battery, 701) => {
            if let Some(sf) = get(regs, 120).and_then(sunssf) {
                // TotWhInj: energy delivered to the AC side (discharge); TotWhAbs: absorbed (charge).
                if let Some(v) = regs.get(19..23).and_then(acc64) {
                    out.counters.push((
                        Channel::BatteryDischarge,
                        Counter {
                            mwh: scale_to_milli(v, sf),
                            modulus_mwh: None,
                        },
                    ));
                }
                if let Some(v) = regs.get(23..27).and_then(acc64) {
                    out.counters.push((
                        Channel::BatteryCharge,
                        Counter {
                            mwh: scale_to_milli(v, sf),
                            modulus_mwh: None,
                        },
                    ));
                }
            }
            if !out
                .power_mw
                .iter()
                .any(|(c, _)| *c == Channel::BatteryDischarge)
                && let Some(w) = int_power(regs, 10, 116)
            {
                out.split_power(w, Channel::BatteryDischarge, Channel::BatteryCharge);
            }
        }
        (Role::Battery, 802) => {
            if let Some(soc) = percent_to_permille(regs, 11, 56) {
                out.soc_permille = Some(soc);
            }
            if let Some(w) = int_power(regs, 47, 63) {
                out.power_mw.retain(|(c, _)| {
                    *c != Channel::BatteryCharge && *c != Channel::BatteryDischarge
                });
                out.split_power(w, Channel::BatteryDischarge, Channel::BatteryCharge);
            }
        }
        (Role::Inverter, IMMEDIATE_CONTROLS) => {
            let at = |o: u16| get(regs, usize::from(o));
            let sf = at(m123::SF).and_then(sunssf);
            let pct_milli = match (at(m123::W_MAX_LIM_PCT).and_then(uint16), sf) {
                (Some(v), Some(sf)) => Some(scale_to_milli(v, sf)),
                _ => None,
            };
            out.pv_limit = Some(PvLimit {
                enabled: at(m123::ENA) == Some(1),
                pct_milli,
                sf: sf.unwrap_or(0),
                revert_s: at(m123::REVERT_TMS).and_then(uint16).map(|v| v as u16),
            });
        }
        (Role::Battery, 124) if out.soc_permille.is_none() => {
            out.soc_permille = percent_to_permille(regs, 8, 22);
        }
        _ => {}
    }
}

/// Decodes every model a device was read through.
pub fn decode(role: Role, models: &[Vec<u16>]) -> DeviceValues {
    let mut out = DeviceValues::default();
    for regs in models {
        decode_model(role, regs, &mut out);
    }
    out
}

/// Model 124 register writes that make a battery charge (`watts > 0`) or discharge
/// (`watts < 0`) at about `watts`, or return to automatic operation (`watts == 0`).
///
/// SunSpec semantics: with `StorCtl_Mod` bit 0 (charge limit) set, a negative `InWRte` forces
/// a discharge at that rate; with bit 1 (discharge limit) set, a negative `OutWRte` forces a
/// charge (from the grid when `ChaGriSet` = 1). Rates are percent of `WChaMax` (`w_cha_max`, W)
/// with scale factor `rate_sf` (InOutWRte_SF). The reversion timeout makes the battery fall
/// back to automatic on its own if the gateway dies. Returns `(offset from the model's id
/// register, values)` pairs.
pub fn steer_124(watts: i64, w_cha_max: i64, rate_sf: i16, revert_s: u16) -> Vec<(u16, Vec<u16>)> {
    if watts == 0 || w_cha_max <= 0 {
        return vec![(5, vec![0])];
    }
    let pct_milli = (watts.abs() * 100_000 / w_cha_max).min(100_000);
    // register = pct / 10^sf; pct_milli = pct × 1000.
    let exp = 3 + i32::from(rate_sf);
    let reg = if exp >= 0 {
        pct_milli / 10i64.pow(exp as u32)
    } else {
        pct_milli * 10i64.pow((-exp) as u32)
    };
    let forced = (-reg.clamp(0, i64::from(i16::MAX))) as i16 as u16;
    if watts < 0 {
        vec![(12, vec![0, forced]), (15, vec![revert_s]), (5, vec![1])]
    } else {
        vec![
            (12, vec![forced, 0]),
            (15, vec![revert_s]),
            (17, vec![1]),
            (5, vec![2]),
        ]
    }
}

/// A percentage in thousandths (`pct_milli`, 100 % = 100 000) as a register scaled by
/// `sf` (`register × 10^sf = %`), rounded down so a written limit is never above the one
/// asked for; clamped to 0 ..= 100 %.
pub fn pct_register(pct_milli: i64, sf: i16) -> u16 {
    let pct_milli = pct_milli.clamp(0, 100_000);
    let exp = 3 + i32::from(sf);
    let reg = if exp >= 0 {
        pct_milli / 10i64.pow(exp.min(18) as u32)
    } else {
        pct_milli.saturating_mul(10i64.pow((-exp).min(18) as u32))
    };
    reg.clamp(0, i64::from(u16::MAX - 1)) as u16
}

/// Model 123 register writes: `Some(pct_milli)` limits the inverter's active power to that
/// share of its rating (`WMaxLimPct`, then `WMaxLimPct_RvrtTms` = `revert_s`, then
/// `WMaxLim_Ena` = 1, so the limit is complete before it is enabled); `None` disables the
/// limit (`WMaxLim_Ena` = 0). Returns `(offset from the model's id register, values)` pairs.
pub fn limit_123(pct_milli: Option<i64>, sf: i16, revert_s: u16) -> Vec<(u16, Vec<u16>)> {
    match pct_milli {
        None => vec![(m123::ENA, vec![0])],
        Some(p) => vec![
            (m123::W_MAX_LIM_PCT, vec![pct_register(p, sf)]),
            (m123::REVERT_TMS, vec![revert_s]),
            (m123::ENA, vec![1]),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A register map with a read counter, for discovery tests.
    pub(crate) struct FakeDevice {
        pub regs: HashMap<u16, u16>,
        pub reads: Vec<(u16, u16)>,
    }

    impl RegisterSource for FakeDevice {
        async fn read(&mut self, address: u16, count: u16) -> Result<Vec<u16>, ReadFailure> {
            assert!(count <= MAX_READ, "read of {count} registers");
            self.reads.push((address, count));
            (0..count)
                .map(|i| {
                    self.regs
                        .get(&(address + i))
                        .copied()
                        .ok_or_else(|| ReadFailure::Exception("IllegalDataAddress".into()))
                })
                .collect()
        }
    }

    fn chain(base: u16, models: &[(u16, u16)]) -> FakeDevice {
        let mut regs = HashMap::new();
        regs.insert(base, MARKER[0]);
        regs.insert(base + 1, MARKER[1]);
        let mut at = base + 2;
        for (id, len) in models {
            regs.insert(at, *id);
            regs.insert(at + 1, *len);
            for i in 0..*len {
                regs.insert(at + 2 + i, 0);
            }
            at += 2 + len;
        }
        regs.insert(at, END_ID);
        regs.insert(at + 1, 0);
        FakeDevice {
            regs,
            reads: Vec::new(),
        }
    }

    #[tokio::test]
    async fn discovers_at_each_base_and_reads_long_models_in_chunks() {
        for base in BASES {
            let mut dev = chain(base, &[(1, 66), (701, 153), (802, 62)]);
            let models = discover(&mut dev, None).await.unwrap();
            let ids: Vec<u16> = models.iter().map(|m| m.id).collect();
            assert_eq!(ids, vec![1, 701, 802]);
            assert_eq!(models[1].address, base + 70);
            dev.reads.clear();
            let regs = read_model(&mut dev, &models[1]).await.unwrap();
            assert_eq!(regs.len(), 155);
            assert_eq!(dev.reads, vec![(base + 70, 125), (base + 195, 30)]);
        }
        let mut none = FakeDevice {
            regs: HashMap::new(),
            reads: Vec::new(),
        };
        assert_eq!(
            discover(&mut none, None).await,
            Err(DiscoveryError::NoMarker)
        );
    }

    #[test]
    fn unknown_models_give_one_clear_message() {
        let chain = [
            ModelHeader {
                id: 1,
                address: 40002,
                len: 66,
            },
            ModelHeader {
                id: 160,
                address: 40070,
                len: 20,
            },
        ];
        let err = select(Role::Inverter, &chain).unwrap_err();
        assert!(err.contains("[1, 160]"), "{err}");
        assert!(err.contains("103"), "{err}");
        assert!(select(Role::Battery, &chain).unwrap_err().contains("802"));
    }

    fn model(id: u16, len: u16, points: &[(usize, u16)]) -> Vec<u16> {
        let mut r = vec![0u16; usize::from(len) + 2];
        r[0] = id;
        r[1] = len;
        for (at, v) in points {
            r[*at] = *v;
        }
        r
    }

    #[test]
    fn decodes_int_and_float_models_with_scale_factors_and_sentinels() {
        // 103: W = 4321 × 10^0, WH = 0x0001_0002 × 10^1 Wh.
        let inv = model(103, 50, &[(14, 4321), (15, 0), (24, 1), (25, 2), (26, 1)]);
        let v = decode(Role::Inverter, &[inv]);
        assert_eq!(v.counters[0].1.mwh, ((1i64 << 16) + 2) * 10 * 1000);
        assert_eq!(v.counters[0].1.modulus_mwh, Some((1i64 << 32) * 10_000));
        assert_eq!(v.power_mw, vec![(Channel::Pv, 4_321_000)]);
        // Power "not implemented" (0x8000) gives no power.
        let inv = model(103, 50, &[(14, 0x8000), (15, 0), (26, 0)]);
        assert!(decode(Role::Inverter, &[inv]).power_mw.is_empty());
        // 113 float: W 1500.5, WH 12345.6789.
        let w = 1500.5f32.to_bits();
        let wh = 12345.679f32.to_bits();
        let inv = model(
            113,
            60,
            &[
                (22, (w >> 16) as u16),
                (23, w as u16),
                (32, (wh >> 16) as u16),
                (33, wh as u16),
            ],
        );
        let v = decode(Role::Inverter, &[inv]);
        assert_eq!(v.counters[0].1.mwh, 12_345_679);
        assert_eq!(v.power_mw, vec![(Channel::Pv, 1_500_500)]);
        // 203: W = -2000 (export) with W_SF -1 → -200 W; TotWhImp 5000, TotWhExp 7000 at SF 0.
        let meter = model(
            203,
            105,
            &[
                (18, (-2000i16) as u16),
                (22, (-1i16) as u16),
                (39, 7000),
                (47, 5000),
                (54, 0),
            ],
        );
        let v = decode(Role::GridMeter, &[meter]);
        assert_eq!(
            v.counters[0],
            (
                Channel::GridImport,
                Counter {
                    mwh: 5_000_000,
                    modulus_mwh: Some((1i64 << 32) * 1000)
                }
            )
        );
        assert_eq!(v.counters[1].1.mwh, 7_000_000);
        assert_eq!(
            v.power_mw,
            vec![(Channel::GridImport, 0), (Channel::GridExport, 200_000)]
        );
        // Battery: 701 counters (u64) + 802 SoC 55.5 % (SoC_SF -1) and W +1200 (discharge).
        let m701 = model(
            701,
            153,
            &[(22, 900), (26, 1100), (120, 0), (10, 1), (116, 0)],
        );
        let m802 = model(
            802,
            62,
            &[(11, 555), (56, (-1i16) as u16), (47, 1200), (63, 0)],
        );
        let v = decode(Role::Battery, &[m701, m802]);
        assert_eq!(
            v.counters[0],
            (
                Channel::BatteryDischarge,
                Counter {
                    mwh: 900_000,
                    modulus_mwh: None
                }
            )
        );
        assert_eq!(v.counters[1].1.mwh, 1_100_000);
        assert_eq!(v.soc_permille, Some(555));
        assert!(v.power_mw.contains(&(Channel::BatteryDischarge, 1_200_000)));
        assert!(v.power_mw.contains(&(Channel::BatteryCharge, 0)));
        // 124 SoC with sentinel SF → unknown.
        let m124 = model(124, 24, &[(8, 50), (22, 0x8000)]);
        assert_eq!(decode(Role::Battery, &[m124]).soc_permille, None);
        let m124 = model(124, 24, &[(8, 50), (22, 0)]);
        assert_eq!(decode(Role::Battery, &[m124]).soc_permille, Some(500));
    }

    #[test]
    fn model_123_is_read_with_the_inverter_and_decoded() {
        let header = |id, address, len| ModelHeader { id, address, len };
        let chain = [
            header(1, 40002, 66),
            header(103, 40070, 50),
            header(123, 40122, 24),
        ];
        let picked = select(Role::Inverter, &chain).unwrap();
        assert_eq!(picked.iter().map(|m| m.id).collect::<Vec<_>>(), [103, 123]);
        // 123 alone cannot be read as an inverter.
        assert!(select(Role::Inverter, &[chain[0], chain[2]]).is_err());
        // WMaxLimPct 4550 at SF -2 = 45.5 %, enabled, revert 120 s.
        let m = model(
            123,
            24,
            &[(5, 4550), (7, 120), (9, 1), (23, (-2i16) as u16)],
        );
        assert_eq!(
            decode(Role::Inverter, &[m]).pv_limit,
            Some(PvLimit {
                enabled: true,
                pct_milli: Some(45_500),
                sf: -2,
                revert_s: Some(120)
            })
        );
        let m = model(123, 24, &[(5, 0xFFFF), (7, 0xFFFF), (9, 0), (23, 0x8000)]);
        assert_eq!(
            decode(Role::Inverter, &[m]).pv_limit,
            Some(PvLimit {
                enabled: false,
                pct_milli: None,
                sf: 0,
                revert_s: None
            })
        );
    }

    #[test]
    fn limit_writes_honour_the_scale_factor_and_round_down() {
        assert_eq!(pct_register(45_678, 0), 45);
        assert_eq!(pct_register(45_678, -1), 456);
        assert_eq!(pct_register(45_678, -2), 4567);
        assert_eq!(pct_register(45_678, -3), 45678);
        assert_eq!(pct_register(150_000, -2), 10_000, "clamped to 100 %");
        assert_eq!(pct_register(-5, 0), 0, "never negative");
        assert_eq!(
            limit_123(Some(30_000), -1, 120),
            vec![(5, vec![300]), (7, vec![120]), (9, vec![1])]
        );
        assert_eq!(limit_123(None, -1, 120), vec![(9, vec![0])]);
    }

    #[test]
    fn steering_writes() {
        assert_eq!(steer_124(0, 5000, 0, 900), vec![(5, vec![0])]);
        let minus = |v: i16| v as u16;
        assert_eq!(
            steer_124(-2500, 5000, 0, 900),
            vec![(12, vec![0, minus(-50)]), (15, vec![900]), (5, vec![1])]
        );
        assert_eq!(
            steer_124(1000, 5000, -2, 900),
            vec![
                (12, vec![minus(-2000), 0]),
                (15, vec![900]),
                (17, vec![1]),
                (5, vec![2])
            ]
        );
    }
}
