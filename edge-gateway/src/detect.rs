//! `edge-gateway detect HOST`: scans the usual Modbus ports and unit ids for SunSpec devices
//! and prints a ready-to-paste `[[devices]]` config for what it found.

use crate::config::{DeviceConfig, Role};
use crate::modbus::ModbusLink;
use crate::sunspec::{self, RegisterSource};
use std::time::Duration;

/// Ports scanned: the Modbus default, a common alternative and the simulator's range.
pub fn default_ports() -> Vec<u16> {
    let mut ports = vec![502, 1502];
    ports.extend(15020..=15040);
    ports
}

/// Unit ids tried on each open port.
pub const UNITS: [u8; 8] = [1, 2, 3, 4, 5, 126, 247, 100];

/// One SunSpec device found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The port.
    pub port: u16,
    /// The unit id.
    pub unit: u8,
    /// The SunSpec base address.
    pub base: u16,
    /// The model ids in the chain.
    pub models: Vec<u16>,
    /// The role guessed from the models.
    pub role: Option<Role>,
    /// Manufacturer, model and serial from model 1.
    pub identity: String,
}

/// The role a chain of models suggests.
pub fn guess_role(models: &[u16]) -> Option<Role> {
    if models.iter().any(|m| matches!(m, 124 | 802)) {
        Some(Role::Battery)
    } else if models.iter().any(|m| matches!(m, 201..=204 | 211..=214)) {
        Some(Role::GridMeter)
    } else if models
        .iter()
        .any(|m| matches!(m, 101..=103 | 111..=113 | 701))
    {
        Some(Role::Inverter)
    } else {
        None
    }
}

fn text(regs: &[u16]) -> String {
    let bytes: Vec<u8> = regs.iter().flat_map(|r| r.to_be_bytes()).collect();
    String::from_utf8_lossy(&bytes)
        .trim_end_matches(['\0', ' '])
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

async fn probe(host: &str, port: u16, unit: u8, timeout: Duration) -> Option<Found> {
    let mut link = ModbusLink::new(
        DeviceConfig::modbus_tcp("probe", Role::Inverter, host, port, unit),
        timeout,
    );
    let chain = sunspec::discover(&mut link, None).await.ok()?;
    let base = chain.first().map(|m| m.address - 2).unwrap_or(40000);
    let mut identity = String::new();
    if let Some(common) = chain.iter().find(|m| m.id == 1)
        && let Ok(regs) = link.read(common.address, 66.min(common.len + 2)).await
        && regs.len() >= 66
    {
        identity = format!(
            "{} {} serial {}",
            text(&regs[2..18]),
            text(&regs[18..34]),
            text(&regs[50..66])
        );
    }
    let models: Vec<u16> = chain.iter().map(|m| m.id).collect();
    Some(Found {
        port,
        unit,
        base,
        role: guess_role(&models),
        models,
        identity,
    })
}

/// Scans `host` on `ports` and [`UNITS`].
pub async fn scan(host: &str, ports: &[u16], timeout: Duration) -> Vec<Found> {
    let open = futures::future::join_all(ports.iter().map(|&port| async move {
        let ok = matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await,
            Ok(Ok(_))
        );
        ok.then_some(port)
    }))
    .await;
    let mut found: Vec<Found> = Vec::new();
    for port in open.into_iter().flatten() {
        let mut identities = Vec::new();
        for unit in UNITS {
            if let Some(f) = probe(host, port, unit, timeout).await {
                // A device that answers on every unit id is listed once.
                if identities.contains(&(f.identity.clone(), f.models.clone())) {
                    continue;
                }
                identities.push((f.identity.clone(), f.models.clone()));
                found.push(f);
            }
        }
    }
    found
}

/// The config text for what was found.
pub fn render(host: &str, found: &[Found]) -> String {
    if found.is_empty() {
        return format!(
            "# No SunSpec device answered on {host} (ports 502, 1502, 15020-15040; units 1-5, 126, 247, 100).\n# Check that Modbus TCP is enabled on the device and that this machine may reach it.\n"
        );
    }
    let mut out =
        format!("# Found on {host} by `edge-gateway detect` — paste into the gateway config.\n");
    let mut names = std::collections::HashMap::<&str, usize>::new();
    for f in found {
        let role = match f.role {
            Some(Role::Inverter) => "inverter",
            Some(Role::Battery) => "battery",
            Some(Role::GridMeter) => "grid_meter",
            None => {
                out.push_str(&format!(
                    "\n# port {} unit {}: SunSpec models {:?} — none the gateway reads; skipped.\n",
                    f.port, f.unit, f.models
                ));
                continue;
            }
        };
        let n = names.entry(role).or_insert(0);
        *n += 1;
        let name = if *n == 1 {
            role.to_string()
        } else {
            format!("{role}-{n}")
        };
        out.push_str(&format!(
            "\n# {} — SunSpec models {:?} at base {}\n[[devices]]\nname = \"{name}\"\nrole = \"{role}\"\ntransport = \"modbus_tcp\"\nhost = \"{host}\"\nport = {}\nunit = {}\n",
            if f.identity.is_empty() { "unknown device".into() } else { f.identity.clone() },
            f.models,
            f.base,
            f.port,
            f.unit
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_rendering() {
        assert_eq!(guess_role(&[1, 124, 802, 701]), Some(Role::Battery));
        assert_eq!(guess_role(&[1, 203]), Some(Role::GridMeter));
        assert_eq!(guess_role(&[1, 103]), Some(Role::Inverter));
        assert_eq!(guess_role(&[1, 160]), None);
        let found = vec![
            Found {
                port: 15020,
                unit: 1,
                base: 40000,
                models: vec![1, 103],
                role: Some(Role::Inverter),
                identity: "Acme Inv serial 1".into(),
            },
            Found {
                port: 15021,
                unit: 1,
                base: 40000,
                models: vec![1, 160],
                role: None,
                identity: String::new(),
            },
        ];
        let text = render("10.0.0.5", &found);
        assert!(text.contains("none the gateway reads"));
        // What detect prints must be a valid config.
        let config = crate::config::GatewayConfig::from_toml(&text).unwrap();
        assert_eq!(config.devices.len(), 1);
        assert_eq!(config.devices[0].port, Some(15020));
    }
}
