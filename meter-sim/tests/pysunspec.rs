//! Cross-check with an independent SunSpec client: pysunspec2 (PyPI) scans every device of a
//! home, writes the inverter's model 123 power limit through its own model definitions and
//! reads every model back (scripts/cross_check.py --json). The test installs pysunspec2 into
//! the target directory with pip when python3 cannot import it yet.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The pinned pysunspec2 release the cross-check was written against.
const PYSUNSPEC2: &str = "pysunspec2==1.3.7";

fn python_can_import(pythonpath: &Path) -> bool {
    Command::new("python3")
        .args(["-c", "import sunspec2.modbus.client"])
        .env("PYTHONPATH", pythonpath)
        .output()
        .map(|o| o.status.success())
        .unwrap_or_else(|e| {
            panic!("python3 is needed for the pysunspec2 cross-check but cannot run: {e}")
        })
}

/// A PYTHONPATH under which `import sunspec2` works, installing pysunspec2 there if needed.
fn pysunspec2_path() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pysunspec2");
    if python_can_import(&dir) {
        return dir;
    }
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--target")
        .arg(&dir)
        .arg(PYSUNSPEC2)
        .output()
        .expect("python3 -m pip runs");
    assert!(
        output.status.success() && python_can_import(&dir),
        "cannot install {PYSUNSPEC2} into {}: {}\nInstall it yourself (`pip install {PYSUNSPEC2}`) and re-run.",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pysunspec2_reads_every_model_and_writes_the_power_limit() {
    let pythonpath = tokio::task::spawn_blocking(pysunspec2_path).await.unwrap();
    // Nearly frozen time: the counters do not move while pysunspec2 reads.
    let (sim, shutdown) = start(1, 12, 0.001).await;
    let addr = sim.modbus_addr("h001").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cross_check.py");
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--json", "--set-limit", "45.5:600"])
        .arg(addr.port().to_string())
        .arg(addr.ip().to_string())
        .env("PYTHONPATH", &pythonpath)
        .output()
        .await
        .expect("run the cross-check script");
    assert!(
        output.status.success(),
        "cross_check.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let all: Value = serde_json::from_slice(&output.stdout).expect("JSON from cross_check.py");
    let models = |unit: &str| all[unit]["models"].clone();
    assert_eq!(models("1"), serde_json::json!([1, 103, 123]), "{all}");
    assert_eq!(models("2"), serde_json::json!([1, 124, 802, 701]), "{all}");
    assert_eq!(models("3"), serde_json::json!([1, 203]), "{all}");
    let point =
        |unit: &str, model: &str, name: &str| -> &Value { &all[unit]["points"][model][name] };

    // Model 123 as pysunspec2 decodes it, after its own write of 45.5 % (scaled by SF -1).
    assert_eq!(point("1", "123", "WMaxLimPct_SF")["value"], -1);
    assert_eq!(point("1", "123", "WMaxLimPct")["value"], 455);
    assert_eq!(point("1", "123", "WMaxLimPct")["cvalue"], 45.5);
    assert_eq!(point("1", "123", "WMaxLimPct_RvrtTms")["value"], 600);
    assert_eq!(point("1", "123", "WMaxLim_Ena")["value"], 1);
    assert_eq!(point("1", "123", "Conn")["value"], 1);
    for not_implemented in [
        "Conn_WinTms",
        "OutPFSet",
        "OutPFSet_Ena",
        "VArWMaxPct",
        "VArPct_Mod",
        "OutPFSet_SF",
        "VArPct_SF",
    ] {
        assert_eq!(
            point("1", "123", not_implemented)["value"],
            Value::Null,
            "{not_implemented} is not implemented"
        );
    }
    let status = sim.status().homes[0].clone();
    assert_eq!(status.pv_limit_pct, Some(45.5));
    let mut inv = connect(addr, 1).await;
    assert_eq!(
        read(&mut inv, M123 + 5, 5).await.unwrap(),
        [455, 0, 600, 0, 1]
    );

    // The counters pysunspec2 decodes are the registers the simulator reports.
    let (_, registers) = sim.register_counters("h001").unwrap();
    assert_eq!(point("1", "103", "WH")["cvalue"], registers.pv.0);
    assert_eq!(
        point("3", "203", "TotWhImp")["cvalue"],
        registers.grid_import.0
    );
    assert_eq!(
        point("3", "203", "TotWhExp")["cvalue"],
        registers.grid_export.0
    );
    assert_eq!(
        point("2", "701", "TotWhAbs")["cvalue"],
        registers.battery_charge.0
    );
    assert_eq!(
        point("2", "701", "TotWhInj")["cvalue"],
        registers.battery_discharge.0
    );
    assert_eq!(point("1", "1", "SN")["value"], "h001-INV");
    assert_eq!(point("2", "802", "SoC")["cvalue"], status.soc_pct);
    assert_eq!(point("1", "103", "W")["cvalue"], status.pv_w);
    shutdown.stop().await;
}
