//! The `settlement` binary: `serve`, `verify` and `keygen` over the library.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_runtime::shutdown::Shutdown;
use settlement::SettlementConfig;
use std::path::PathBuf;
use std::process::ExitCode;

/// gridmesh settlement: verify readings, settle trades, mint and audit energy tokens.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (REST on :8082, MQTT ingest, market polling, automatic settlement).
    Serve {
        /// TOML config file (environment overrides: GRIDMESH_SETTLEMENT_<KEY>).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Re-check everything stored; prints the first inconsistency and exits non-zero.
    Verify {
        /// The database to audit (sqlite://PATH or postgres://...).
        #[arg(long, env = "GRIDMESH_SETTLEMENT_DATABASE_URL")]
        database: String,
        /// The expected authority public key (base64); default: the signer of block 0.
        #[arg(long)]
        authority: Option<String>,
    },
    /// Create a new authority key file (mode 0600) and print its public key.
    Keygen {
        /// Where to write the key.
        #[arg(long, default_value = "settlement-authority.key")]
        out: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    gridmesh_runtime::telemetry::init("settlement=info,info");
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let config: SettlementConfig =
                gridmesh_runtime::config::load(config.as_deref(), "GRIDMESH_SETTLEMENT")?;
            let shutdown = Shutdown::new();
            shutdown.trigger_on_signals();
            let clock =
                gridmesh_runtime::clock::ClockSettings::clock_or_system(config.clock.as_ref());
            let running = settlement::serve(config, clock, shutdown.clone())
                .await
                .context("settlement could not start")?;
            eprintln!("settlement listening on http://{}", running.addr);
            shutdown.triggered().await;
            shutdown.wait().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            database,
            authority,
        } => {
            let authority = authority
                .map(|a| a.parse())
                .transpose()
                .context("--authority must be a base64 ed25519 public key")?;
            if let Some(path) = database.strip_prefix("sqlite:") {
                let path = path.trim_start_matches("//");
                anyhow::ensure!(
                    std::path::Path::new(path).exists(),
                    "no database file at {path}; pass the database_url that `settlement serve` uses"
                );
            }
            let db = gridmesh_runtime::db::Database::connect(&database).await?;
            match settlement::audit::verify(&db, authority).await {
                Ok(report) => {
                    println!(
                        "OK: {} blocks, {} entries, {} readings, {} mints, {} lots, {} statements consistent (authority {})",
                        report.blocks,
                        report.entries,
                        report.readings,
                        report.mints,
                        report.lots,
                        report.statements,
                        report.authority.as_deref().unwrap_or("none: no blocks yet")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(settlement::audit::AuditError::Inconsistent(i)) => {
                    println!("INCONSISTENT: {i}");
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Keygen { out } => {
            let key = SigningKeyPair::generate_file(&out)?;
            println!("{}", key.public_key());
            eprintln!("wrote {} (mode 0600)", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
