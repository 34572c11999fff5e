//! SunSpec register maps: model layouts, "not implemented" sentinels and rendering of a
//! device's values into holding registers starting at 40000.
//!
//! Every device map is `"SunS"` (0x5375 0x6e53) at 40000, common model 1 at 40002, the device's
//! models, then the end model (0xFFFF, 0). Points that are not simulated carry SunSpec's
//! sentinels: int16 and sunssf 0x8000, uint16/enum16/bitfield16 0xFFFF, uint32/bitfield32
//! 0xFFFFFFFF, uint64 all ones, acc32/acc64 0, strings all zero, pad 0x8000.
//!
//! | unit | device | models |
//! |---|---|---|
//! | 1 | inverter | 1, 103 (WH = PV energy, acc32 Wh, WH_SF 0), 123 (power limit: WMaxLimPct, SF −1) |
//! | 2 | battery | 1, 124, 802, 701 (TotWhAbs = charge Wh, TotWhInj = discharge Wh, uint64, TotWh_SF 0) |
//! | 3 | meter | 1, 203 (TotWhImp/TotWhExp acc32 Wh, TotWh_SF 0) |

use crate::faults::DeviceKind;
use crate::home::DeviceValues;
use std::collections::HashMap;
use std::sync::OnceLock;

/// The first register of every map.
pub const BASE_ADDRESS: u16 = 40_000;
/// The most registers one read may ask for (Modbus limit).
pub const MAX_READ: u16 = 125;

/// A SunSpec point type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointType {
    /// uint16.
    U16,
    /// int16.
    I16,
    /// Scale factor (int16).
    Sf,
    /// enum16.
    Enum16,
    /// bitfield16.
    Bf16,
    /// acc32 (not implemented = 0).
    Acc32,
    /// uint32.
    U32,
    /// bitfield32.
    Bf32,
    /// uint64.
    U64,
    /// A string of this many registers.
    Str(u16),
    /// Padding.
    Pad,
}

impl PointType {
    /// Size in registers.
    pub fn size(self) -> u16 {
        match self {
            PointType::Acc32 | PointType::U32 | PointType::Bf32 => 2,
            PointType::U64 => 4,
            PointType::Str(n) => n,
            _ => 1,
        }
    }

    fn sentinel(self) -> Vec<u16> {
        match self {
            PointType::U16 | PointType::Enum16 | PointType::Bf16 => vec![0xFFFF],
            PointType::I16 | PointType::Sf | PointType::Pad => vec![0x8000],
            PointType::Acc32 => vec![0, 0],
            PointType::U32 | PointType::Bf32 => vec![0xFFFF, 0xFFFF],
            PointType::U64 => vec![0xFFFF; 4],
            PointType::Str(n) => vec![0; n as usize],
        }
    }
}

use PointType::*;

/// A model: id and its points after ID and L, in order.
pub struct ModelDef {
    /// Model id.
    pub id: u16,
    /// Points (name, type), starting at offset 2.
    pub points: &'static [(&'static str, PointType)],
    /// Names of writable points.
    pub writable: &'static [&'static str],
}

impl ModelDef {
    /// L: the registers after ID and L.
    pub fn length(&self) -> u16 {
        self.points.iter().map(|(_, t)| t.size()).sum()
    }
}

/// Common model 1.
pub static MODEL_1: ModelDef = ModelDef {
    id: 1,
    points: &[
        ("Mn", Str(16)),
        ("Md", Str(16)),
        ("Opt", Str(8)),
        ("Vr", Str(8)),
        ("SN", Str(16)),
        ("DA", U16),
        ("Pad", Pad),
    ],
    writable: &[],
};

/// Inverter, three-phase, integer + scale factors.
pub static MODEL_103: ModelDef = ModelDef {
    id: 103,
    points: &[
        ("A", U16),
        ("AphA", U16),
        ("AphB", U16),
        ("AphC", U16),
        ("A_SF", Sf),
        ("PPVphAB", U16),
        ("PPVphBC", U16),
        ("PPVphCA", U16),
        ("PhVphA", U16),
        ("PhVphB", U16),
        ("PhVphC", U16),
        ("V_SF", Sf),
        ("W", I16),
        ("W_SF", Sf),
        ("Hz", U16),
        ("Hz_SF", Sf),
        ("VA", I16),
        ("VA_SF", Sf),
        ("VAr", I16),
        ("VAr_SF", Sf),
        ("PF", I16),
        ("PF_SF", Sf),
        ("WH", Acc32),
        ("WH_SF", Sf),
        ("DCA", U16),
        ("DCA_SF", Sf),
        ("DCV", U16),
        ("DCV_SF", Sf),
        ("DCW", I16),
        ("DCW_SF", Sf),
        ("TmpCab", I16),
        ("TmpSnk", I16),
        ("TmpTrns", I16),
        ("TmpOt", I16),
        ("Tmp_SF", Sf),
        ("St", Enum16),
        ("StVnd", Enum16),
        ("Evt1", Bf32),
        ("Evt2", Bf32),
        ("EvtVnd1", Bf32),
        ("EvtVnd2", Bf32),
        ("EvtVnd3", Bf32),
        ("EvtVnd4", Bf32),
    ],
    writable: &[],
};

/// Immediate inverter controls (the PV power limit).
pub static MODEL_123: ModelDef = ModelDef {
    id: 123,
    points: &[
        ("Conn_WinTms", U16),
        ("Conn_RvrtTms", U16),
        ("Conn", Enum16),
        ("WMaxLimPct", U16),
        ("WMaxLimPct_WinTms", U16),
        ("WMaxLimPct_RvrtTms", U16),
        ("WMaxLimPct_RmpTms", U16),
        ("WMaxLim_Ena", Enum16),
        ("OutPFSet", I16),
        ("OutPFSet_WinTms", U16),
        ("OutPFSet_RvrtTms", U16),
        ("OutPFSet_RmpTms", U16),
        ("OutPFSet_Ena", Enum16),
        ("VArWMaxPct", I16),
        ("VArMaxPct", I16),
        ("VArAvalPct", I16),
        ("VArPct_WinTms", U16),
        ("VArPct_RvrtTms", U16),
        ("VArPct_RmpTms", U16),
        ("VArPct_Mod", Enum16),
        ("VArPct_Ena", Enum16),
        ("WMaxLimPct_SF", Sf),
        ("OutPFSet_SF", Sf),
        ("VArPct_SF", Sf),
    ],
    writable: &[
        "WMaxLimPct",
        "WMaxLimPct_WinTms",
        "WMaxLimPct_RvrtTms",
        "WMaxLimPct_RmpTms",
        "WMaxLim_Ena",
    ],
};

/// The scale factor of 123 `WMaxLimPct`: tenths of a percent.
pub const WMAX_LIM_PCT_SF: i16 = -1;

/// Basic storage controls.
pub static MODEL_124: ModelDef = ModelDef {
    id: 124,
    points: &[
        ("WChaMax", U16),
        ("WChaGra", U16),
        ("WDisChaGra", U16),
        ("StorCtl_Mod", Bf16),
        ("VAChaMax", U16),
        ("MinRsvPct", U16),
        ("ChaState", U16),
        ("StorAval", U16),
        ("InBatV", U16),
        ("ChaSt", Enum16),
        ("OutWRte", I16),
        ("InWRte", I16),
        ("InOutWRte_WinTms", U16),
        ("InOutWRte_RvrtTms", U16),
        ("InOutWRte_RmpTms", U16),
        ("ChaGriSet", Enum16),
        ("WChaMax_SF", Sf),
        ("WChaDisChaGra_SF", Sf),
        ("VAChaMax_SF", Sf),
        ("MinRsvPct_SF", Sf),
        ("ChaState_SF", Sf),
        ("StorAval_SF", Sf),
        ("InBatV_SF", Sf),
        ("InOutWRte_SF", Sf),
    ],
    writable: &[
        "WChaMax",
        "StorCtl_Mod",
        "MinRsvPct",
        "OutWRte",
        "InWRte",
        "InOutWRte_WinTms",
        "InOutWRte_RvrtTms",
        "InOutWRte_RmpTms",
        "ChaGriSet",
    ],
};

/// Wye-connect three-phase meter.
pub static MODEL_203: ModelDef = ModelDef {
    id: 203,
    points: &[
        ("A", I16),
        ("AphA", I16),
        ("AphB", I16),
        ("AphC", I16),
        ("A_SF", Sf),
        ("PhV", I16),
        ("PhVphA", I16),
        ("PhVphB", I16),
        ("PhVphC", I16),
        ("PPV", I16),
        ("PhVphAB", I16),
        ("PhVphBC", I16),
        ("PhVphCA", I16),
        ("V_SF", Sf),
        ("Hz", I16),
        ("Hz_SF", Sf),
        ("W", I16),
        ("WphA", I16),
        ("WphB", I16),
        ("WphC", I16),
        ("W_SF", Sf),
        ("VA", I16),
        ("VAphA", I16),
        ("VAphB", I16),
        ("VAphC", I16),
        ("VA_SF", Sf),
        ("VAR", I16),
        ("VARphA", I16),
        ("VARphB", I16),
        ("VARphC", I16),
        ("VAR_SF", Sf),
        ("PF", I16),
        ("PFphA", I16),
        ("PFphB", I16),
        ("PFphC", I16),
        ("PF_SF", Sf),
        ("TotWhExp", Acc32),
        ("TotWhExpPhA", Acc32),
        ("TotWhExpPhB", Acc32),
        ("TotWhExpPhC", Acc32),
        ("TotWhImp", Acc32),
        ("TotWhImpPhA", Acc32),
        ("TotWhImpPhB", Acc32),
        ("TotWhImpPhC", Acc32),
        ("TotWh_SF", Sf),
        ("TotVAhExp", Acc32),
        ("TotVAhExpPhA", Acc32),
        ("TotVAhExpPhB", Acc32),
        ("TotVAhExpPhC", Acc32),
        ("TotVAhImp", Acc32),
        ("TotVAhImpPhA", Acc32),
        ("TotVAhImpPhB", Acc32),
        ("TotVAhImpPhC", Acc32),
        ("TotVAh_SF", Sf),
        ("TotVArhImpQ1", Acc32),
        ("TotVArhImpQ1PhA", Acc32),
        ("TotVArhImpQ1PhB", Acc32),
        ("TotVArhImpQ1PhC", Acc32),
        ("TotVArhImpQ2", Acc32),
        ("TotVArhImpQ2PhA", Acc32),
        ("TotVArhImpQ2PhB", Acc32),
        ("TotVArhImpQ2PhC", Acc32),
        ("TotVArhExpQ3", Acc32),
        ("TotVArhExpQ3PhA", Acc32),
        ("TotVArhExpQ3PhB", Acc32),
        ("TotVArhExpQ3PhC", Acc32),
        ("TotVArhExpQ4", Acc32),
        ("TotVArhExpQ4PhA", Acc32),
        ("TotVArhExpQ4PhB", Acc32),
        ("TotVArhExpQ4PhC", Acc32),
        ("TotVArh_SF", Sf),
        ("Evt", Bf32),
    ],
    writable: &[],
};

/// DER AC measurement (used on the battery for its energy counters).
pub static MODEL_701: ModelDef = ModelDef {
    id: 701,
    points: &[
        ("ACType", Enum16),
        ("St", Enum16),
        ("InvSt", Enum16),
        ("ConnSt", Enum16),
        ("Alrm", Bf32),
        ("DERMode", Bf32),
        ("W", I16),
        ("VA", I16),
        ("Var", I16),
        ("PF", I16),
        ("A", I16),
        ("LLV", U16),
        ("LNV", U16),
        ("Hz", U32),
        ("TotWhInj", U64),
        ("TotWhAbs", U64),
        ("TotVarhInj", U64),
        ("TotVarhAbs", U64),
        ("TmpAmb", I16),
        ("TmpCab", I16),
        ("TmpSnk", I16),
        ("TmpTrns", I16),
        ("TmpSw", I16),
        ("TmpOt", I16),
        ("WL1", I16),
        ("VAL1", I16),
        ("VarL1", I16),
        ("PFL1", I16),
        ("AL1", I16),
        ("VL1L2", U16),
        ("VL1", U16),
        ("TotWhInjL1", U64),
        ("TotWhAbsL1", U64),
        ("TotVarhInjL1", U64),
        ("TotVarhAbsL1", U64),
        ("WL2", I16),
        ("VAL2", I16),
        ("VarL2", I16),
        ("PFL2", I16),
        ("AL2", I16),
        ("VL2L3", U16),
        ("VL2", U16),
        ("TotWhInjL2", U64),
        ("TotWhAbsL2", U64),
        ("TotVarhInjL2", U64),
        ("TotVarhAbsL2", U64),
        ("WL3", I16),
        ("VAL3", I16),
        ("VarL3", I16),
        ("PFL3", I16),
        ("AL3", I16),
        ("VL3L1", U16),
        ("VL3", U16),
        ("TotWhInjL3", U64),
        ("TotWhAbsL3", U64),
        ("TotVarhInjL3", U64),
        ("TotVarhAbsL3", U64),
        ("ThrotPct", U16),
        ("ThrotSrc", Bf32),
        ("A_SF", Sf),
        ("V_SF", Sf),
        ("Hz_SF", Sf),
        ("W_SF", Sf),
        ("PF_SF", Sf),
        ("VA_SF", Sf),
        ("Var_SF", Sf),
        ("TotWh_SF", Sf),
        ("TotVarh_SF", Sf),
        ("Tmp_SF", Sf),
        ("MnAlrmInfo", Str(32)),
    ],
    writable: &[],
};

/// Lithium-ion battery model.
pub static MODEL_802: ModelDef = ModelDef {
    id: 802,
    points: &[
        ("AHRtg", U16),
        ("WHRtg", U16),
        ("WChaRteMax", U16),
        ("WDisChaRteMax", U16),
        ("DisChaRte", U16),
        ("SoCMax", U16),
        ("SoCMin", U16),
        ("SocRsvMax", U16),
        ("SoCRsvMin", U16),
        ("SoC", U16),
        ("DoD", U16),
        ("SoH", U16),
        ("NCyc", U32),
        ("ChaSt", Enum16),
        ("LocRemCtl", Enum16),
        ("Hb", U16),
        ("CtrlHb", U16),
        ("AlmRst", U16),
        ("Typ", Enum16),
        ("State", Enum16),
        ("StateVnd", Enum16),
        ("WarrDt", U32),
        ("Evt1", Bf32),
        ("Evt2", Bf32),
        ("EvtVnd1", Bf32),
        ("EvtVnd2", Bf32),
        ("V", U16),
        ("VMax", U16),
        ("VMin", U16),
        ("CellVMax", U16),
        ("CellVMaxStr", U16),
        ("CellVMaxMod", U16),
        ("CellVMin", U16),
        ("CellVMinStr", U16),
        ("CellVMinMod", U16),
        ("CellVAvg", U16),
        ("A", I16),
        ("AChaMax", U16),
        ("ADisChaMax", U16),
        ("W", I16),
        ("ReqInvState", Enum16),
        ("ReqW", I16),
        ("SetOp", Enum16),
        ("SetInvState", Enum16),
        ("AHRtg_SF", Sf),
        ("WHRtg_SF", Sf),
        ("WChaDisChaMax_SF", Sf),
        ("DisChaRte_SF", Sf),
        ("SoC_SF", Sf),
        ("DoD_SF", Sf),
        ("SoH_SF", Sf),
        ("V_SF", Sf),
        ("CellV_SF", Sf),
        ("A_SF", Sf),
        ("AMax_SF", Sf),
        ("W_SF", Sf),
    ],
    writable: &[
        "SocRsvMax",
        "SoCRsvMin",
        "CtrlHb",
        "AlmRst",
        "SetOp",
        "SetInvState",
    ],
};

/// The models of a device, in map order (after the "SunS" marker).
pub fn models(kind: DeviceKind) -> &'static [&'static ModelDef] {
    static INVERTER: [&ModelDef; 3] = [&MODEL_1, &MODEL_103, &MODEL_123];
    static BATTERY: [&ModelDef; 4] = [&MODEL_1, &MODEL_124, &MODEL_802, &MODEL_701];
    static METER: [&ModelDef; 2] = [&MODEL_1, &MODEL_203];
    match kind {
        DeviceKind::Inverter => &INVERTER,
        DeviceKind::Battery => &BATTERY,
        DeviceKind::Meter => &METER,
    }
}

/// The model ids of a device, as the manifest lists them.
pub fn model_ids(kind: DeviceKind) -> Vec<u16> {
    models(kind).iter().map(|m| m.id).collect()
}

/// Where a point sits in a device's map.
#[derive(Debug, Clone, Copy)]
pub struct PointSlot {
    /// Offset from [`BASE_ADDRESS`].
    pub offset: u16,
    /// Its type.
    pub ty: PointType,
    /// Whether it may be written.
    pub writable: bool,
    /// The model it belongs to.
    pub model: u16,
}

/// A device's map layout: the template with every sentinel filled in, and where each point is.
pub struct Layout {
    template: Vec<u16>,
    points: HashMap<(u16, &'static str), PointSlot>,
    by_offset: HashMap<u16, (u16, &'static str)>,
    /// Start offset (from [`BASE_ADDRESS`]) of each model's ID register.
    pub model_offsets: Vec<(u16, u16)>,
}

impl Layout {
    fn build(kind: DeviceKind) -> Layout {
        let mut template = vec![0x5375, 0x6e53];
        let mut points = HashMap::new();
        let mut by_offset = HashMap::new();
        let mut model_offsets = Vec::new();
        for model in models(kind) {
            model_offsets.push((model.id, template.len() as u16));
            template.push(model.id);
            template.push(model.length());
            for (name, ty) in model.points {
                let offset = template.len() as u16;
                let slot = PointSlot {
                    offset,
                    ty: *ty,
                    writable: model.writable.contains(name),
                    model: model.id,
                };
                points.insert((model.id, *name), slot);
                by_offset.insert(offset, (model.id, *name));
                template.extend(ty.sentinel());
            }
        }
        template.push(0xFFFF);
        template.push(0);
        Layout {
            template,
            points,
            by_offset,
            model_offsets,
        }
    }

    /// The layout of a device kind (built once).
    pub fn of(kind: DeviceKind) -> &'static Layout {
        static LAYOUTS: OnceLock<[Layout; 3]> = OnceLock::new();
        &LAYOUTS.get_or_init(|| DeviceKind::ALL.map(Layout::build))[kind.index()]
    }

    /// The map's size in registers, "SunS" to the end model inclusive.
    pub fn len(&self) -> u16 {
        self.template.len() as u16
    }

    /// Whether the map is empty (never).
    pub fn is_empty(&self) -> bool {
        self.template.is_empty()
    }

    /// Where a point is.
    pub fn point(&self, model: u16, name: &str) -> Option<PointSlot> {
        self.points.get(&(model, name)).copied()
    }

    /// The point starting at an offset.
    pub fn point_at(&self, offset: u16) -> Option<(u16, &'static str, PointSlot)> {
        let (model, name) = *self.by_offset.get(&offset)?;
        Some((model, name, self.points[&(model, name)]))
    }
}

/// A device's registers being filled.
pub struct Image {
    layout: &'static Layout,
    regs: Vec<u16>,
}

impl Image {
    fn new(kind: DeviceKind) -> Self {
        let layout = Layout::of(kind);
        Image {
            layout,
            regs: layout.template.clone(),
        }
    }

    fn set(&mut self, model: u16, name: &str, value: i64) {
        let slot = self
            .layout
            .point(model, name)
            .unwrap_or_else(|| panic!("unknown point {model}.{name}"));
        let at = slot.offset as usize;
        match slot.ty {
            I16 | Sf => {
                self.regs[at] = (value.clamp(i16::MIN as i64 + 1, i16::MAX as i64) as i16) as u16
            }
            U16 | Enum16 | Bf16 | Pad => self.regs[at] = value.clamp(0, 0xFFFE) as u16,
            Acc32 | U32 | Bf32 => {
                let v = value as u64 as u32;
                self.regs[at] = (v >> 16) as u16;
                self.regs[at + 1] = v as u16;
            }
            U64 => {
                let v = value as u64;
                for i in 0..4 {
                    self.regs[at + i] = (v >> (48 - 16 * i)) as u16;
                }
            }
            Str(n) => unreachable!("strings are set with set_str ({n})"),
        }
    }

    fn set_str(&mut self, model: u16, name: &str, text: &str) {
        let slot = self.layout.point(model, name).expect("known point");
        let Str(n) = slot.ty else {
            panic!("{name} is not a string")
        };
        let bytes = text.as_bytes();
        for i in 0..n as usize {
            let hi = bytes.get(2 * i).copied().unwrap_or(0) as u16;
            let lo = bytes.get(2 * i + 1).copied().unwrap_or(0) as u16;
            self.regs[slot.offset as usize + i] = hi << 8 | lo;
        }
    }

    /// The rendered registers, offset 0 = [`BASE_ADDRESS`].
    pub fn into_registers(self) -> Vec<u16> {
        self.regs
    }
}

/// Static identity of a device, for model 1.
pub struct Identity<'a> {
    /// Home id (part of the serial number).
    pub home: &'a str,
    /// PV inverter rating in W.
    pub inverter_w: u32,
    /// Battery power rating in W.
    pub battery_w: u32,
    /// Battery capacity in Wh.
    pub battery_wh: f64,
}

/// The serial number a device reports.
pub fn serial(home: &str, kind: DeviceKind) -> String {
    let suffix = match kind {
        DeviceKind::Inverter => "INV",
        DeviceKind::Battery => "BAT",
        DeviceKind::Meter => "MTR",
    };
    format!("{home}-{suffix}")
}

fn scaled(value: f64, sf: i32) -> i64 {
    (value / 10f64.powi(sf)).round() as i64
}

/// The smallest non-negative scale factor that makes `value` fit in a uint16.
fn fit_u16(value: f64) -> i32 {
    (0..6)
        .find(|sf| value / 10f64.powi(*sf) <= 65_534.0)
        .unwrap_or(6)
}

/// Renders a device's registers from its values.
pub fn render(kind: DeviceKind, id: &Identity<'_>, v: &DeviceValues) -> Vec<u16> {
    let mut img = Image::new(kind);
    img.set_str(1, "Mn", "gridmesh");
    img.set_str(
        1,
        "Md",
        match kind {
            DeviceKind::Inverter => "meter-sim PV inverter",
            DeviceKind::Battery => "meter-sim battery",
            DeviceKind::Meter => "meter-sim grid meter",
        },
    );
    img.set_str(1, "Vr", env!("CARGO_PKG_VERSION"));
    img.set_str(1, "SN", &serial(id.home, kind));
    img.set(1, "DA", kind.unit() as i64);
    let p = &v.powers;
    match kind {
        DeviceKind::Inverter => {
            let w = p.pv_w;
            img.set(103, "A_SF", -2);
            let phase_a = w / 3.0 / 230.0;
            img.set(103, "A", scaled(phase_a * 3.0, -2));
            for ph in ["AphA", "AphB", "AphC"] {
                img.set(103, ph, scaled(phase_a, -2));
            }
            img.set(103, "V_SF", -1);
            for ph in ["PPVphAB", "PPVphBC", "PPVphCA"] {
                img.set(103, ph, 3984);
            }
            for ph in ["PhVphA", "PhVphB", "PhVphC"] {
                img.set(103, ph, 2300);
            }
            img.set(103, "W_SF", 0);
            img.set(103, "W", scaled(w, 0));
            img.set(103, "Hz_SF", -2);
            img.set(103, "Hz", 5000);
            img.set(103, "VA_SF", 0);
            img.set(103, "VA", scaled(w, 0));
            img.set(103, "VAr_SF", 0);
            img.set(103, "VAr", 0);
            img.set(103, "PF_SF", 0);
            img.set(103, "PF", 100);
            img.set(103, "WH", v.counters[2] as i64);
            img.set(103, "WH_SF", 0);
            let dc_w = w / 0.97;
            img.set(103, "DCV_SF", -1);
            img.set(103, "DCV", if w > 0.0 { 6000 } else { 0 });
            img.set(103, "DCA_SF", -2);
            img.set(
                103,
                "DCA",
                if w > 0.0 { scaled(dc_w / 600.0, -2) } else { 0 },
            );
            img.set(103, "DCW_SF", 0);
            img.set(103, "DCW", scaled(dc_w, 0));
            img.set(103, "Tmp_SF", -1);
            img.set(
                103,
                "TmpCab",
                250 + scaled(w / id.inverter_w.max(1) as f64 * 20.0, -1),
            );
            img.set(103, "St", if w > 0.0 { 4 } else { 2 }); // MPPT or SLEEPING
            img.set(103, "Evt1", 0);
            img.set(103, "Evt2", 0);
            // 123 immediate controls: the power limit; the rest is not implemented.
            let c = &v.pv_control;
            img.set(123, "Conn", 1); // CONNECT
            img.set(123, "WMaxLimPct_SF", WMAX_LIM_PCT_SF as i64);
            img.set(123, "WMaxLimPct", c.limit_tenths_pct as i64);
            img.set(123, "WMaxLimPct_WinTms", c.window_seconds as i64);
            img.set(123, "WMaxLimPct_RvrtTms", c.revert_seconds as i64);
            img.set(123, "WMaxLimPct_RmpTms", c.ramp_seconds as i64);
            img.set(123, "WMaxLim_Ena", c.active(v.time) as i64);
        }
        DeviceKind::Meter => {
            let w = p.grid_w;
            img.set(203, "A_SF", -2);
            img.set(203, "A", scaled(w.abs() / 230.0, -2));
            for ph in ["AphA", "AphB", "AphC"] {
                img.set(203, ph, scaled(w.abs() / 3.0 / 230.0, -2));
            }
            img.set(203, "V_SF", -1);
            for ph in ["PhV", "PhVphA", "PhVphB", "PhVphC"] {
                img.set(203, ph, 2300);
            }
            for ph in ["PPV", "PhVphAB", "PhVphBC", "PhVphCA"] {
                img.set(203, ph, 3984);
            }
            img.set(203, "Hz_SF", -2);
            img.set(203, "Hz", 5000);
            // W is int16: above 32 kW the scale factor moves to 1 (10 W resolution).
            let wsf = if w.abs() > 32_000.0 { 1 } else { 0 };
            img.set(203, "W_SF", wsf as i64);
            img.set(203, "W", scaled(w, wsf));
            for ph in ["WphA", "WphB", "WphC"] {
                img.set(203, ph, scaled(w / 3.0, wsf));
            }
            img.set(203, "VA_SF", wsf as i64);
            img.set(203, "VA", scaled(w.abs(), wsf));
            for ph in ["VAphA", "VAphB", "VAphC"] {
                img.set(203, ph, scaled(w.abs() / 3.0, wsf));
            }
            img.set(203, "VAR_SF", 0);
            for ph in ["VAR", "VARphA", "VARphB", "VARphC"] {
                img.set(203, ph, 0);
            }
            img.set(203, "PF_SF", 0); // percent
            for ph in ["PF", "PFphA", "PFphB", "PFphC"] {
                img.set(203, ph, 100);
            }
            img.set(203, "TotWh_SF", 0);
            img.set(203, "TotWhExp", v.counters[1] as i64);
            img.set(203, "TotWhImp", v.counters[0] as i64);
            img.set(203, "Evt", 0);
        }
        DeviceKind::Battery => render_battery(&mut img, id, v),
    }
    img.into_registers()
}

fn render_battery(img: &mut Image, id: &Identity<'_>, v: &DeviceValues) {
    let w = v.powers.battery_w;
    let c = &v.control;
    let nominal_v = 51.2;
    // 124 basic storage controls.
    img.set(124, "WChaMax_SF", 0);
    img.set(124, "WChaMax", c.w_cha_max as i64);
    img.set(124, "WChaDisChaGra_SF", 0);
    img.set(124, "WChaGra", 100);
    img.set(124, "WDisChaGra", 100);
    img.set(124, "StorCtl_Mod", c.stor_ctl_mod as i64);
    img.set(124, "MinRsvPct_SF", 0);
    img.set(124, "MinRsvPct", c.reserve_pct.round() as i64);
    img.set(124, "ChaState_SF", -1);
    img.set(124, "ChaState", scaled(v.soc_pct, -1));
    img.set(124, "InBatV_SF", -1);
    img.set(124, "InBatV", scaled(nominal_v, -1));
    img.set(124, "ChaSt", v.charge_state.code() as i64);
    img.set(124, "InOutWRte_SF", 0);
    img.set(124, "OutWRte", c.out_w_rte as i64);
    img.set(124, "InWRte", c.in_w_rte as i64);
    img.set(124, "InOutWRte_WinTms", 0);
    img.set(124, "InOutWRte_RvrtTms", c.revert_seconds as i64);
    img.set(124, "InOutWRte_RmpTms", 0);
    img.set(124, "ChaGriSet", c.cha_gri_set as i64);
    // 802 lithium-ion battery.
    let wh_sf = fit_u16(id.battery_wh);
    img.set(802, "WHRtg_SF", wh_sf as i64);
    img.set(802, "WHRtg", scaled(id.battery_wh, wh_sf));
    let ah = id.battery_wh / nominal_v;
    let ah_sf = fit_u16(ah);
    img.set(802, "AHRtg_SF", ah_sf as i64);
    img.set(802, "AHRtg", scaled(ah, ah_sf));
    img.set(802, "WChaDisChaMax_SF", 0);
    img.set(802, "WChaRteMax", id.battery_w as i64);
    img.set(802, "WDisChaRteMax", id.battery_w as i64);
    img.set(802, "SoC_SF", -1);
    img.set(802, "SoCMax", 1000);
    img.set(802, "SoCMin", 0);
    img.set(802, "SocRsvMax", scaled(c.max_soc_pct, -1));
    img.set(802, "SoCRsvMin", scaled(c.reserve_pct, -1));
    img.set(802, "SoC", scaled(v.soc_pct, -1));
    img.set(802, "DoD_SF", -1);
    img.set(802, "DoD", scaled(100.0 - v.soc_pct, -1));
    img.set(802, "SoH_SF", 0);
    img.set(802, "SoH", 100);
    img.set(802, "NCyc", v.cycles as i64);
    img.set(802, "ChaSt", v.charge_state.code() as i64);
    img.set(802, "LocRemCtl", 0); // REMOTE
    img.set(802, "Hb", v.heartbeat as i64);
    img.set(802, "CtrlHb", 0);
    img.set(802, "AlmRst", 0);
    img.set(802, "Typ", 4); // LITHIUM_ION
    img.set(802, "State", if c.set_op == 2 { 1 } else { 3 }); // DISCONNECTED / CONNECTED
    img.set(802, "Evt1", 0);
    img.set(802, "Evt2", 0);
    img.set(802, "V_SF", -1);
    img.set(802, "V", scaled(nominal_v, -1));
    img.set(802, "VMax", scaled(57.6, -1));
    img.set(802, "VMin", scaled(44.8, -1));
    img.set(802, "A_SF", -1);
    img.set(802, "A", scaled(w / nominal_v, -1));
    img.set(802, "AMax_SF", 0);
    img.set(802, "AChaMax", scaled(id.battery_w as f64 / nominal_v, 0));
    img.set(
        802,
        "ADisChaMax",
        scaled(id.battery_w as f64 / nominal_v, 0),
    );
    img.set(802, "W_SF", 0);
    img.set(802, "W", scaled(w, 0));
    img.set(802, "SetOp", c.set_op as i64);
    img.set(802, "SetInvState", c.set_inv_state as i64);
    // 701 DER AC measurement: the battery inverter's AC side and its energy counters.
    img.set(701, "ACType", 2); // THREE_PHASE
    img.set(701, "St", if c.set_op == 2 { 0 } else { 1 });
    img.set(701, "InvSt", if w.abs() > 0.5 { 3 } else { 1 }); // RUNNING / SLEEPING
    img.set(701, "ConnSt", if c.set_op == 2 { 0 } else { 1 });
    img.set(701, "Alrm", 0);
    img.set(701, "W_SF", 0);
    img.set(701, "W", scaled(w, 0));
    img.set(701, "VA_SF", 0);
    img.set(701, "VA", scaled(w.abs(), 0));
    img.set(701, "Var_SF", 0);
    img.set(701, "Var", 0);
    img.set(701, "PF_SF", -3);
    img.set(701, "PF", 1000);
    img.set(701, "A_SF", -2);
    img.set(701, "A", scaled(w.abs() / 230.0, -2));
    img.set(701, "V_SF", -1);
    img.set(701, "LLV", 3984);
    img.set(701, "LNV", 2300);
    img.set(701, "Hz_SF", -3);
    img.set(701, "Hz", 50_000);
    img.set(701, "TotWh_SF", 0);
    img.set(701, "TotWhInj", v.counters[4] as i64);
    img.set(701, "TotWhAbs", v.counters[3] as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_the_standard() {
        assert_eq!(MODEL_1.length(), 66);
        assert_eq!(MODEL_103.length(), 50);
        assert_eq!(MODEL_123.length(), 24);
        assert_eq!(MODEL_124.length(), 24);
        assert_eq!(MODEL_203.length(), 105);
        assert_eq!(MODEL_802.length(), 62);
        assert_eq!(MODEL_701.length(), 153);
    }

    #[test]
    fn key_offsets() {
        let inv = Layout::of(DeviceKind::Inverter);
        assert_eq!(inv.model_offsets, vec![(1, 2), (103, 70), (123, 122)]);
        for (name, offset) in [
            ("Conn", 4),
            ("WMaxLimPct", 5),
            ("WMaxLimPct_RvrtTms", 7),
            ("WMaxLim_Ena", 9),
            ("OutPFSet", 10),
            ("VArPct_Ena", 22),
            ("WMaxLimPct_SF", 23),
            ("VArPct_SF", 25),
        ] {
            assert_eq!(inv.point(123, name).unwrap().offset, 122 + offset, "{name}");
        }
        assert_eq!(inv.len(), 122 + 26 + 2);
        assert_eq!(inv.point(103, "W").unwrap().offset, 70 + 14);
        assert_eq!(inv.point(103, "WH").unwrap().offset, 70 + 24);
        assert_eq!(inv.point(103, "St").unwrap().offset, 70 + 38);
        let m = Layout::of(DeviceKind::Meter);
        assert_eq!(m.point(203, "TotWhExp").unwrap().offset, 70 + 38);
        assert_eq!(m.point(203, "TotWhImp").unwrap().offset, 70 + 46);
        assert_eq!(m.point(203, "TotWh_SF").unwrap().offset, 70 + 54);
        let b = Layout::of(DeviceKind::Battery);
        assert_eq!(b.point(124, "ChaState").unwrap().offset, 70 + 8);
        assert_eq!(b.point(802, "SoC").unwrap().offset, 96 + 11);
        assert_eq!(b.point(802, "W").unwrap().offset, 96 + 47);
        assert_eq!(b.point(701, "TotWhInj").unwrap().offset, 160 + 19);
        assert_eq!(b.point(701, "TotWh_SF").unwrap().offset, 160 + 120);
        assert_eq!(b.len(), 160 + 155 + 2);
    }
}
