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
    /// Re-check everything stored (also while settlement runs: one read-only snapshot):
    /// blocks and what they commit to, readings, results, quarantine decisions, the ledger,
    /// and every statement settled again with the published rules. Prints the first
    /// inconsistency (table, key, field) and exits 1; exits 2 when it cannot run.
    ///
    /// The authority key must be pinned: --authority, or the settlement config (--config:
    /// its authority_key file gives the key, its database_url and market_public_key are used
    /// too), or --trust-first-block to take block 0's signer on trust.
    Verify {
        /// The database to audit (sqlite://PATH or postgres://...); default: the config's
        /// database_url.
        #[arg(long, env = "GRIDMESH_SETTLEMENT_DATABASE_URL")]
        database: Option<String>,
        /// The settlement config (TOML, as `settlement serve --config`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The authority public key (base64) every block must be signed by.
        #[arg(long)]
        authority: Option<String>,
        /// Trust whoever signed block 0 (a chain re-signed entirely by another key then
        /// verifies: pin the key with --authority or --config wherever it is known).
        #[arg(long, conflicts_with = "authority")]
        trust_first_block: bool,
        /// The market's result key (base64): every stored result must carry its signature.
        #[arg(long)]
        market_key: Option<String>,
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
            config,
            authority,
            trust_first_block,
            market_key,
        } => {
            let config: Option<SettlementConfig> = config
                .map(|path| gridmesh_runtime::config::load(Some(&path), "GRIDMESH_SETTLEMENT"))
                .transpose()?;
            let trust = verify_trust(
                config.as_ref(),
                authority.as_deref(),
                trust_first_block,
                market_key.as_deref(),
            )?;
            let database = database
                .or_else(|| config.as_ref().map(|c| c.database_url.clone()))
                .context(
                    "pass --database (the database_url `settlement serve` uses) or --config",
                )?;
            if let Some(path) = database.strip_prefix("sqlite:") {
                let path = path.trim_start_matches("//");
                anyhow::ensure!(
                    std::path::Path::new(path).exists(),
                    "no database file at {path}; pass the database_url that `settlement serve` uses"
                );
            }
            let db = gridmesh_runtime::db::Database::connect(&database).await?;
            match settlement::audit::verify_with(&db, &trust).await {
                Ok(report) => {
                    println!(
                        "OK: {} blocks ({} with state commitments), {} entries, {} readings, {} mints, {} withheld mints, {} lots, {} statements, {} intervals settled again, {} results signed, {} operator decisions sealed ({} awaiting the next block); authority {} ({})",
                        report.blocks,
                        report.commitments,
                        report.entries,
                        report.readings,
                        report.mints,
                        report.withheld,
                        report.lots,
                        report.statements,
                        report.intervals_recomputed,
                        report.results_signed,
                        report.decisions_sealed,
                        report.decisions_unsealed,
                        report.authority.as_deref().unwrap_or("none: no blocks yet"),
                        if report.authority_pinned {
                            "pinned"
                        } else {
                            "taken from block 0: --trust-first-block"
                        }
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

/// The keys `verify` trusts: `--authority`, else the config's authority key file, else block
/// 0's signer only with `--trust-first-block`; the market key from `--market-key` or the
/// config's `market_public_key`.
fn verify_trust(
    config: Option<&SettlementConfig>,
    authority: Option<&str>,
    trust_first_block: bool,
    market_key: Option<&str>,
) -> anyhow::Result<settlement::audit::Trust> {
    use settlement::audit::{Authority, Trust};
    let pinned = match (authority, config.and_then(|c| c.authority_key.as_deref())) {
        (Some(a), _) => Some(a.parse().ok().context(
            "--authority must be a base64 ed25519 public key (as `settlement keygen` prints)",
        )?),
        (None, Some(path)) if !trust_first_block => Some(
            SigningKeyPair::load(path)
                .with_context(|| format!("reading the config's authority_key {}", path.display()))?
                .public_key(),
        ),
        _ => None,
    };
    let authority = match (pinned, trust_first_block) {
        (Some(k), _) => Authority::Pinned(k),
        (None, true) => Authority::TrustFirstBlock,
        (None, false) => anyhow::bail!(
            "verify needs the authority key that signs the blocks: pass --authority <base64 public key> (printed by `settlement keygen`, and logged by `settlement serve`), or --config <settlement.toml> with authority_key set; --trust-first-block takes block 0's signer on trust instead (a chain re-signed by another key would then verify)"
        ),
    };
    let market_key = match market_key {
        Some(k) => Some(k.parse().ok().context(
            "--market-key must be a base64 ed25519 public key (the market's GET /market-key)",
        )?),
        None => config.and_then(|c| c.market_public_key),
    };
    Ok(Trust {
        authority,
        market_key,
    })
}
