//! Signed meter readings: one per gateway, device set and delivery interval.
//!
//! A reading carries the cumulative registers at the interval's end (never only a delta, as
//! OCMF and signed SML meters do) together with the interval's deltas, a sequence number that
//! never repeats, the firmware version, clock state and status flags. Settlement checks the
//! signature, the sequence and that registers never go down unless a reset is flagged.
//!
//! A reading is signed as `gridmesh/reading/v2`, which names the market zone the gateway is
//! enrolled in, so settlement of another zone refuses it. The v1 layout (no zone) still
//! decodes, with `zone: None`: stored readings and gateways' outboxes hold v1 readings
//! (docs/protocol.md, "Versions still accepted").

use crate::ids::{DeviceId, GatewayId, ZoneId};
use crate::interval::Interval;
use crate::layout::{LayoutError, Reader, SHORT_TEXT_WIDTH, Writer};
use crate::signing::Signable;
use crate::units::Wh;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// The five energy registers a household installation reports, in Wh.
///
/// All are non-negative: import and export are counted separately at the grid meter, charge and
/// discharge separately at the battery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Registers {
    /// Energy taken from the grid (grid meter, import register).
    pub grid_import: Wh,
    /// Energy fed into the grid (grid meter, export register).
    pub grid_export: Wh,
    /// Energy produced by the PV inverter.
    pub pv: Wh,
    /// Energy that went into the battery.
    pub battery_charge: Wh,
    /// Energy that came out of the battery.
    pub battery_discharge: Wh,
}

impl Registers {
    fn write(&self, w: &mut Writer) {
        w.i64(self.grid_import.0)
            .i64(self.grid_export.0)
            .i64(self.pv.0)
            .i64(self.battery_charge.0)
            .i64(self.battery_discharge.0);
    }

    fn read(r: &mut Reader<'_>, names: [&'static str; 5]) -> Result<Self, LayoutError> {
        Ok(Registers {
            grid_import: Wh(r.non_negative(names[0])?),
            grid_export: Wh(r.non_negative(names[1])?),
            pv: Wh(r.non_negative(names[2])?),
            battery_charge: Wh(r.non_negative(names[3])?),
            battery_discharge: Wh(r.non_negative(names[4])?),
        })
    }

    /// The five registers in layout order, for checks that treat them alike.
    pub fn as_array(&self) -> [Wh; 5] {
        [
            self.grid_import,
            self.grid_export,
            self.pv,
            self.battery_charge,
            self.battery_discharge,
        ]
    }
}

/// Status flags of a reading (a bit set; unknown bits are refused by v1 decoders).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct ReadingFlags(pub u32);

impl ReadingFlags {
    /// A cumulative register went down (meter replaced or reset); the delta counts only energy
    /// after the reset.
    pub const COUNTER_RESET: ReadingFlags = ReadingFlags(1 << 0);
    /// A register wrapped around its maximum.
    pub const COUNTER_WRAP: ReadingFlags = ReadingFlags(1 << 1);
    /// A boundary value was interpolated because the poll at the boundary was missed.
    pub const INTERPOLATED: ReadingFlags = ReadingFlags(1 << 2);
    /// The gateway's clock stepped during the interval.
    pub const CLOCK_STEP: ReadingFlags = ReadingFlags(1 << 3);
    /// A device reported an error or could not be read for part of the interval.
    pub const DEVICE_ERROR: ReadingFlags = ReadingFlags(1 << 4);
    /// A value was older than the staleness limit when the interval closed.
    pub const STALE: ReadingFlags = ReadingFlags(1 << 5);
    /// Some registers have no device behind them (for example a home without a battery).
    pub const PARTIAL: ReadingFlags = ReadingFlags(1 << 6);

    /// Every flag this version defines.
    pub const ALL: [(ReadingFlags, &'static str); 7] = [
        (Self::COUNTER_RESET, "counter_reset"),
        (Self::COUNTER_WRAP, "counter_wrap"),
        (Self::INTERPOLATED, "interpolated"),
        (Self::CLOCK_STEP, "clock_step"),
        (Self::DEVICE_ERROR, "device_error"),
        (Self::STALE, "stale"),
        (Self::PARTIAL, "partial"),
    ];

    /// The mask of all defined bits.
    pub const KNOWN_BITS: u32 = (1 << 7) - 1;

    /// No flag set.
    pub const fn empty() -> Self {
        ReadingFlags(0)
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: ReadingFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// This set with `other`'s bits added.
    pub const fn with(self, other: ReadingFlags) -> Self {
        ReadingFlags(self.0 | other.0)
    }

    /// Sets the bits of `other`.
    pub fn insert(&mut self, other: ReadingFlags) {
        self.0 |= other.0;
    }

    /// The names of the set flags, for logs and screens.
    pub fn names(self) -> Vec<&'static str> {
        Self::ALL
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, name)| *name)
            .collect()
    }
}

/// State of charge "not known" in the signed layout.
pub const SOC_UNKNOWN: u16 = 0xFFFF;

/// One interval of one device set, as the gateway measured and signs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reading {
    /// The market zone the gateway is enrolled in: signed in the v2 layout, and settlement of
    /// another zone refuses the reading. `None` only for a reading in the legacy v1 layout,
    /// which names no zone (it encodes as v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneId>,
    /// The gateway that measured and signed.
    pub gateway: GatewayId,
    /// The device set (usually the whole home).
    pub device: DeviceId,
    /// The gateway's firmware version, at most 16 ASCII bytes.
    pub firmware: String,
    /// A counter that increases with every reading the gateway signs and survives restarts.
    pub sequence: u64,
    /// The delivery interval measured.
    pub interval: Interval,
    /// When the closing registers were read, by the gateway's clock (millisecond precision).
    pub measured_at: DateTime<Utc>,
    /// Whether the gateway's clock was synchronised (NTP) when it measured.
    pub clock_synced: bool,
    /// How often the gateway's clock has been set or stepped since installation.
    pub clock_set_count: u32,
    /// Seconds the gateway has been operating since installation.
    pub operating_seconds: u64,
    /// Cumulative registers at the interval's end.
    pub registers: Registers,
    /// Energy in the interval.
    pub deltas: Registers,
    /// Battery state of charge at the interval's end, in per mille (0–1000), if known.
    pub soc_permille: Option<u16>,
    /// Status flags.
    pub flags: ReadingFlags,
}

impl Reading {
    /// The key that identifies this reading downstream: a replay of the same reading carries the
    /// same key and is counted once.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.gateway,
            self.device,
            self.interval.start_unix()
        )
    }
}

impl Reading {
    /// The tag of the legacy layout, which names no zone.
    pub const V1_TAG: &'static str = "gridmesh/reading/v1";
    /// The length of the legacy layout.
    pub const V1_LEN: usize = 19 + 32 + 32 + 16 + 8 + 8 + 2 + 8 + 1 + 4 + 8 + 40 + 40 + 2 + 4;

    /// The tag of the layout this reading encodes as: v2 with a zone, v1 without.
    pub fn layout_tag(&self) -> &'static str {
        if self.zone.is_some() {
            <Self as Signable>::TAG
        } else {
            Self::V1_TAG
        }
    }

    fn write_body(&self, w: &mut Writer) {
        w.id(self.gateway.as_str())
            .id(self.device.as_str())
            .text(&self.firmware, SHORT_TEXT_WIDTH)
            .u64(self.sequence)
            .i64(self.interval.start_unix())
            .u16(self.interval.length().minutes())
            .i64(self.measured_at.timestamp_millis())
            .u8(u8::from(self.clock_synced))
            .u32(self.clock_set_count)
            .u64(self.operating_seconds);
        self.registers.write(w);
        self.deltas.write(w);
        w.u16(self.soc_permille.unwrap_or(SOC_UNKNOWN))
            .u32(self.flags.0);
    }

    fn read_body(r: &mut Reader<'_>, zone: Option<ZoneId>) -> Result<Self, LayoutError> {
        let gateway = r.id("gateway", GatewayId::new)?;
        let device = r.id("device", DeviceId::new)?;
        let firmware = r.text::<SHORT_TEXT_WIDTH>("firmware")?;
        let sequence = r.u64();
        let start = r.i64();
        let minutes = r.u16();
        let interval =
            Interval::from_unix(start, minutes.into()).map_err(|e| r.bad("interval_start", e))?;
        let millis = r.i64();
        let measured_at = Utc
            .timestamp_millis_opt(millis)
            .single()
            .ok_or_else(|| r.bad("measured_at_ms", format!("{millis} is out of range")))?;
        let clock_synced = match r.u8() {
            0 => false,
            1 => true,
            other => return Err(r.bad("clock_synced", format!("{other} is neither 0 nor 1"))),
        };
        let clock_set_count = r.u32();
        let operating_seconds = r.u64();
        let registers = Registers::read(
            r,
            [
                "reg_grid_import_wh",
                "reg_grid_export_wh",
                "reg_pv_wh",
                "reg_battery_charge_wh",
                "reg_battery_discharge_wh",
            ],
        )?;
        let deltas = Registers::read(
            r,
            [
                "delta_grid_import_wh",
                "delta_grid_export_wh",
                "delta_pv_wh",
                "delta_battery_charge_wh",
                "delta_battery_discharge_wh",
            ],
        )?;
        let soc = r.u16();
        let soc_permille = match soc {
            SOC_UNKNOWN => None,
            0..=1000 => Some(soc),
            other => return Err(r.bad("soc_permille", format!("{other} is above 1000"))),
        };
        let flags = r.u32();
        if flags & !ReadingFlags::KNOWN_BITS != 0 {
            return Err(r.bad("flags", format!("unknown bits in {flags:#010x}")));
        }
        Ok(Reading {
            zone,
            gateway,
            device,
            firmware,
            sequence,
            interval,
            measured_at,
            clock_synced,
            clock_set_count,
            operating_seconds,
            registers,
            deltas,
            soc_permille,
            flags: ReadingFlags(flags),
        })
    }
}

impl Signable for Reading {
    const TAG: &'static str = "gridmesh/reading/v2";
    const LEN: usize = 19 + 32 + 32 + 32 + 16 + 8 + 8 + 2 + 8 + 1 + 4 + 8 + 40 + 40 + 2 + 4;

    /// The v2 bytes, or the v1 bytes for a reading without a zone.
    fn encode(&self) -> Vec<u8> {
        match &self.zone {
            Some(zone) => {
                let mut w = Writer::new(Self::TAG, Self::LEN);
                w.id(zone.as_str());
                self.write_body(&mut w);
                w.finish()
            }
            None => {
                let mut w = Writer::new(Self::V1_TAG, Self::V1_LEN);
                self.write_body(&mut w);
                w.finish()
            }
        }
    }

    /// Decodes v2, or v1 (then `zone` is `None`).
    fn decode(bytes: &[u8]) -> Result<Self, LayoutError> {
        if bytes.starts_with(Self::V1_TAG.as_bytes()) {
            let mut r = Reader::new(bytes, Self::V1_TAG, Self::V1_LEN)?;
            return Self::read_body(&mut r, None);
        }
        let mut r = Reader::new(bytes, Self::TAG, Self::LEN)?;
        let zone = r.id("zone", ZoneId::new)?;
        Self::read_body(&mut r, Some(zone))
    }

    fn has_tag(bytes: &[u8]) -> bool {
        bytes.starts_with(Self::TAG.as_bytes()) || bytes.starts_with(Self::V1_TAG.as_bytes())
    }
}
