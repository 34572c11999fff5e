//! The `edge-gateway` binary: CLI glue over the `edge_gateway` library.

use anyhow::bail;
use clap::{Parser, Subcommand};
use edge_gateway::config::GatewayConfig;
use edge_gateway::reader::Device;
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::{Reading, SignedEnvelope};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use std::path::PathBuf;
use std::time::Duration;

/// The gridmesh edge gateway: reads the home's inverter, battery and meter, signs metered
/// energy per interval, delivers it without loss and bids for the household.
#[derive(Debug, Parser)]
#[command(name = "edge-gateway", version, about)]
struct Cli {
    /// The TOML config file (default: /etc/gridmesh/gateway.toml when it exists; environment
    /// overrides: GRIDMESH_GATEWAY_<KEY>, nested keys joined with `__`).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the gateway until Ctrl-C or SIGTERM.
    Run,
    /// Creates the signing key (mode 0600) at the config's key_path or --out.
    Keygen {
        /// Where to write the key (default: key_path from the config).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Key operations.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Registers this gateway and its household with the market (needs the enrolment token).
    Enroll {
        /// The operator/enrolment token (default: enroll_token from the config).
        #[arg(long, env = "GRIDMESH_GATEWAY_ENROLL_TOKEN")]
        token: Option<String>,
    },
    /// Scans HOST for SunSpec devices and prints a config to paste.
    Detect {
        /// The host to scan.
        host: String,
        /// Ports to scan (default: 502, 1502, 15020-15040).
        #[arg(long, value_delimiter = ',')]
        ports: Vec<u16>,
        /// Timeout per connection and request, in milliseconds.
        #[arg(long, default_value_t = 500)]
        timeout_ms: u64,
    },
    /// Lists the signed readings waiting in the outbox (oldest first) and checks each signature
    /// against this gateway's key. Changes nothing; safe while the gateway runs.
    Outbox {
        /// Show at most this many readings.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Reads a password for the local page from standard input (its first line) and prints its
    /// argon2id hash for `[local_page] password_hash`; with --generate, makes a random password,
    /// prints it on standard error and its hash on standard output.
    HashPassword {
        /// Make a random 20-character password instead of reading one.
        #[arg(long)]
        generate: bool,
    },
    /// Prints the household's monthly statement from settlement (fetched with this gateway's
    /// signed request) and checks every signed reading it names against this gateway's outbox:
    /// trades, imbalances, fees, tokens, totals, community share and savings against the
    /// utility alone. Months are in UTC. Exits 1 if a reading differs from what this gateway
    /// signed.
    Statement {
        /// The month, YYYY-MM (UTC), for example 2026-06.
        #[arg(long)]
        month: String,
        /// `text` (default), `json`, `csv` or `html` (a printable page); the check of the
        /// readings goes to standard error for the last three.
        #[arg(long, default_value = "text", value_parser = ["text", "json", "csv", "html"])]
        format: String,
    },
    /// Checks the config, the key and that every device answers.
    CheckConfig {
        /// Only check the file, do not contact devices.
        #[arg(long)]
        offline: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Prints the public key (base64) to register with the market.
    Show {
        /// Key file (default: key_path from the config).
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

/// Where `packaging/install.sh` puts the config; used when `--config` is not given.
const INSTALLED_CONFIG: &str = "/etc/gridmesh/gateway.toml";

fn load(cli: &Cli) -> anyhow::Result<GatewayConfig> {
    let installed = std::path::Path::new(INSTALLED_CONFIG);
    let path = match &cli.config {
        Some(path) => Some(path.as_path()),
        None if installed.exists() => Some(installed),
        None => None,
    };
    Ok(GatewayConfig::load(path)?)
}

fn clock_for(config: &GatewayConfig) -> Clock {
    match &config.clock {
        Some(c) => c.clock(),
        None => Clock::system(),
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    gridmesh_runtime::telemetry::init("info");
    if let Err(error) = dispatch(cli).await {
        eprintln!("error: {error}");
        for cause in error.chain().skip(1) {
            eprintln!("  because: {cause}");
        }
        std::process::exit(1);
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Run => {
            let config = load(&cli)?;
            let shutdown = Shutdown::new();
            shutdown.trigger_on_signals();
            let running =
                edge_gateway::run(config.clone(), clock_for(&config), shutdown.clone()).await?;
            eprintln!(
                "edge-gateway {} running: /healthz and /metrics on http://{}",
                config.gateway_id, running.health_addr
            );
            if let Some(addr) = running.local_page_addr {
                eprintln!("local page on http://{addr} (log in with the password set at install)");
            }
            shutdown.triggered().await;
            shutdown.wait().await;
            Ok(())
        }
        Command::Keygen { out } => {
            let path = match out {
                Some(p) => p.clone(),
                None => load(&cli)?.key_path,
            };
            let key = SigningKeyPair::generate_file(&path)?;
            println!("wrote {} (mode 0600)", path.display());
            println!("public key: {}", key.public_key());
            Ok(())
        }
        Command::Key {
            command: KeyCommand::Show { key },
        } => {
            let path = match key {
                Some(p) => p.clone(),
                None => load(&cli)?.key_path,
            };
            println!("{}", SigningKeyPair::load(&path)?.public_key());
            Ok(())
        }
        Command::Enroll { token } => {
            let config = load(&cli)?;
            let key = SigningKeyPair::load(&config.key_path)?;
            let Some(token) = token.clone().or(config.enroll_token.clone()) else {
                bail!("no enrolment token: pass --token TOKEN or set enroll_token in the config");
            };
            let outcome = edge_gateway::enroll::enroll(&config, &key.public_key(), &token).await?;
            for (what, registered) in ["participant", "gateway"].iter().zip(outcome) {
                println!("{what}: {registered:?}");
            }
            println!("public key: {}", key.public_key());
            match edge_gateway::enroll::market_key(&config).await {
                Ok(market) => {
                    println!(
                        "{}",
                        edge_gateway::enroll::market_key_advice(&config, &market)
                    )
                }
                Err(e) => eprintln!(
                    "warning: {e}. Without market_public_key the gateway enforces only its default envelope"
                ),
            }
            Ok(())
        }
        Command::Detect {
            host,
            ports,
            timeout_ms,
        } => {
            let ports = if ports.is_empty() {
                edge_gateway::detect::default_ports()
            } else {
                ports.clone()
            };
            let found =
                edge_gateway::detect::scan(host, &ports, Duration::from_millis(*timeout_ms)).await;
            print!("{}", edge_gateway::detect::render(host, &found));
            Ok(())
        }
        Command::HashPassword { generate } => {
            let password = if *generate {
                let p = edge_gateway::local_page::generate_password();
                eprintln!("password: {p}");
                p
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            };
            if password.chars().count() < 8 {
                bail!(
                    "the password is shorter than 8 characters; choose a longer one (or use --generate)"
                );
            }
            let hash = edge_gateway::local_page::hash_password(&password)
                .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
            println!("{hash}");
            Ok(())
        }
        Command::Outbox { limit } => {
            let config = load(&cli)?;
            inspect_outbox(&config, *limit).await
        }
        Command::Statement { month, format } => {
            let config = load(&cli)?;
            print_statement(&config, month, format).await
        }
        Command::CheckConfig { offline } => {
            let config = load(&cli)?;
            println!("config: ok ({} devices)", config.devices.len());
            match SigningKeyPair::load(&config.key_path) {
                Ok(key) => println!("key: ok ({})", key.public_key()),
                Err(e) => bail!("key: {e}"),
            }
            match &config.market_public_key {
                Some(k) => println!("market key: set ({k}); envelopes signed by it are enforced"),
                None => println!(
                    "market key: NOT set; only the default envelope ({} W export, {} W import) will apply. Run `edge-gateway enroll` or set market_public_key from GET {{market_url}}/market-key",
                    config.control.default_export_w, config.control.default_import_w
                ),
            }
            match edge_gateway::tls::describe(&config) {
                Ok(lines) => {
                    for line in lines {
                        println!("{line}");
                    }
                }
                Err(e) => bail!("tls: {e}"),
            }
            if *offline {
                return Ok(());
            }
            let mut failed = 0;
            for device in &config.devices {
                let mut d = Device::new(
                    device.clone(),
                    Duration::from_millis(config.modbus_timeout_ms),
                );
                match &mut d {
                    Device::Modbus(m) => match m.poll().await {
                        Ok(_) => {
                            println!(
                                "device {}: ok (SunSpec models {:?})",
                                device.name,
                                m.models()
                                    .unwrap_or_default()
                                    .iter()
                                    .map(|m| m.id)
                                    .collect::<Vec<_>>()
                            );
                            if device.role == edge_gateway::config::Role::Inverter {
                                if m.immediate_controls().is_some() {
                                    println!(
                                        "device {}: offers SunSpec model 123: PV can be curtailed to the envelope{}",
                                        device.name,
                                        if config.site.inverter_w == 0 {
                                            " once site.inverter_w (the rated power, W) is set"
                                        } else {
                                            ""
                                        }
                                    );
                                } else {
                                    println!(
                                        "device {}: no SunSpec model 123: PV cannot be curtailed (only the battery keeps the home inside its envelope)",
                                        device.name
                                    );
                                }
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            println!("{e}");
                        }
                    },
                    Device::Mqtt(_) => {
                        println!("device {}: MQTT device (checked when running)", device.name)
                    }
                }
            }
            if failed > 0 {
                bail!(
                    "{failed} device(s) did not answer; fix the addresses above or run `edge-gateway detect HOST`"
                );
            }
            Ok(())
        }
    }
}

/// `edge-gateway statement`: fetches, checks against the outbox, prints; fails on a mismatch.
async fn print_statement(config: &GatewayConfig, month: &str, format: &str) -> anyhow::Result<()> {
    use edge_gateway::statement;
    let json = statement::fetch(config, month, None).await?;
    let parsed = statement::parse(&json)?;
    let local = statement::local_records(config).await?;
    let checks = statement::check_all(&parsed, &config.gateway_id, &local);
    let report = statement::render(&parsed, &checks);
    match format {
        "text" => print!("{report}"),
        "json" => println!("{json}"),
        other => print!("{}", statement::fetch(config, month, Some(other)).await?),
    }
    if format != "text" {
        // The readings' check (the report's last part) on standard error.
        if let Some(at) = report.find("\nSigned readings:") {
            eprint!("{}", &report[at + 1..]);
        }
    }
    let mismatches = checks.iter().filter(|c| c.2.is_mismatch()).count();
    if mismatches > 0 {
        bail!(
            "{mismatches} reading(s) on the statement differ from what this gateway signed; keep the outbox file and tell the operator"
        );
    }
    Ok(())
}

/// `edge-gateway outbox`: prints the waiting readings and fails if any does not carry a valid
/// signature by the gateway's key.
async fn inspect_outbox(config: &GatewayConfig, limit: u32) -> anyhow::Result<()> {
    let path = &config.outbox_path;
    if !path.exists() {
        bail!(
            "there is no outbox at {}: the gateway has not run with this config yet (outbox_path), or the path is wrong",
            path.display()
        );
    }
    let key = SigningKeyPair::load(&config.key_path)?;
    let public = key.public_key();
    let outbox = edge_gateway::outbox::Outbox::open(path, config.outbox_cap_bytes).await?;
    let (count, bytes) = outbox.depth().await?;
    let pending = outbox.pending(i64::from(limit)).await?;
    outbox.close().await;
    println!(
        "outbox {}: {count} reading(s) waiting ({bytes} bytes); showing {}",
        path.display(),
        pending.len()
    );
    let mut bad = Vec::new();
    for item in &pending {
        let opened = serde_json::from_str::<SignedEnvelope>(&item.envelope)
            .map_err(|e| e.to_string())
            .and_then(|envelope| {
                envelope
                    .open_by::<Reading>(&public)
                    .map_err(|e| e.to_string())
            });
        match opened {
            Ok(reading) => {
                let d = &reading.deltas;
                let flags = reading.flags.names();
                println!(
                    "reading {} {} {} import={} export={} pv={} charge={} discharge={} Wh flags={} signature=ok",
                    reading.sequence,
                    reading.gateway,
                    reading.interval,
                    d.grid_import.0,
                    d.grid_export.0,
                    d.pv.0,
                    d.battery_charge.0,
                    d.battery_discharge.0,
                    if flags.is_empty() {
                        "none".to_owned()
                    } else {
                        flags.join(",")
                    },
                );
            }
            Err(error) => {
                println!("reading {} {}: signature=BAD ({error})", item.id, item.key);
                bad.push(item.id);
            }
        }
    }
    if !bad.is_empty() {
        bail!(
            "{} reading(s) in the outbox are not validly signed by this gateway's key {public} (sequence {:?}): settlement will quarantine them. Was the key file replaced after they were signed?",
            bad.len(),
            bad
        );
    }
    println!("all {} shown reading(s) signed by {public}", pending.len());
    Ok(())
}
