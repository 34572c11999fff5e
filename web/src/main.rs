//! `gridmesh-web`: the dashboard binary (CLI, config file, logging, shutdown).

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use gridmesh_runtime::shutdown::Shutdown;
use gridmesh_web::WebConfig;
use gridmesh_web::auth::{Role, UsersFile, generate_password};
use std::io::BufRead as _;
use std::path::PathBuf;

/// The gridmesh dashboard: feeders against their limits, prices, volumes, participants and the
/// token ledger, read live from the market and settlement APIs.
///
/// Settings come from the TOML file (if given), then from GRIDMESH_WEB_* environment variables
/// (for example GRIDMESH_WEB_MARKET_URL=http://127.0.0.1:8081), then from these flags.
#[derive(Debug, Parser)]
#[command(name = "gridmesh-web", version)]
struct Cli {
    /// TOML config file (keys: listen, market_url, settlement_url, broker_url, poll_interval_ms,
    /// request_timeout_ms, history_intervals, imbalance_spike_factor, users_file, allowed_hosts,
    /// secure_cookies, tls_cert, tls_key, session_idle_minutes, upstream_token,
    /// operator_token).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// The market engine's base URL.
    #[arg(long)]
    market_url: Option<String>,
    /// Settlement's base URL.
    #[arg(long)]
    settlement_url: Option<String>,
    /// MQTT broker for gateway online/offline status, e.g. mqtt://127.0.0.1:1883.
    #[arg(long)]
    broker_url: Option<String>,
    /// Print the effective configuration as TOML and exit (tokens are not printed).
    #[arg(long)]
    print_config: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the dashboard's users (the `users_file`).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
}

#[derive(Debug, Subcommand)]
enum UserAction {
    /// Add a user. Prints a generated password on stdout, unless --password-stdin reads one.
    /// The first admin is created this way: `gridmesh-web user add --name alice --role admin`.
    Add {
        /// The login name (letters, digits, - _ . @).
        #[arg(long)]
        name: String,
        /// admin: reads everything and takes operator actions; viewer: reads everything,
        /// changes nothing; household: the shared pages and its own participant's detail.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The household's participant id (with --role household).
        #[arg(long)]
        participant: Option<String>,
        /// The users file (default: the config's `users_file`, gridmesh-web-users.json).
        #[arg(long)]
        users_file: Option<PathBuf>,
        /// Read the password from the first line of stdin instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Viewer,
    Household,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    gridmesh_runtime::telemetry::init("gridmesh_web=info,info");
    let mut config: WebConfig =
        gridmesh_runtime::config::load(cli.config.as_deref(), "GRIDMESH_WEB")
            .context("loading the dashboard configuration")?;
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    if let Some(url) = cli.market_url {
        config.market_url = url;
    }
    if let Some(url) = cli.settlement_url {
        config.settlement_url = url;
    }
    if let Some(url) = cli.broker_url {
        config.broker_url = Some(url);
    }
    if let Some(Command::User { action }) = cli.command {
        return user_command(action, &config);
    }
    if cli.print_config {
        println!("{}", toml_text(&config));
        return Ok(());
    }
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let running = gridmesh_web::serve(config, shutdown.clone()).await?;
    eprintln!("gridmesh dashboard at {}/", running.url());
    shutdown.triggered().await;
    shutdown.wait().await;
    Ok(())
}

fn user_command(action: UserAction, config: &WebConfig) -> anyhow::Result<()> {
    let UserAction::Add {
        name,
        role,
        participant,
        users_file,
        password_stdin,
    } = action;
    let role = match (role, participant) {
        (RoleArg::Admin, None) => Role::Admin,
        (RoleArg::Viewer, None) => Role::Viewer,
        (RoleArg::Household, Some(participant)) => Role::Household { participant },
        (RoleArg::Household, None) => {
            anyhow::bail!("--role household needs --participant <id>, e.g. --participant h001")
        }
        (_, Some(_)) => anyhow::bail!("--participant is only for --role household"),
    };
    let path = users_file.unwrap_or_else(|| config.users_file.clone());
    let (password, generated) = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        (line.trim_end_matches(['\r', '\n']).to_owned(), false)
    } else {
        (generate_password(), true)
    };
    let mut users = UsersFile::load(&path)?;
    users.add(&name, role.clone(), &password)?;
    users.save(&path)?;
    eprintln!("user {name} ({}) added to {}", role.name(), path.display());
    if generated {
        println!("{password}");
    }
    Ok(())
}

fn toml_text(config: &WebConfig) -> String {
    let mut out = format!(
        "listen = \"{}\"\nmarket_url = \"{}\"\nsettlement_url = \"{}\"\n",
        config.listen, config.market_url, config.settlement_url
    );
    if let Some(b) = &config.broker_url {
        out.push_str(&format!("broker_url = \"{b}\"\n"));
    }
    out.push_str(&format!(
        "poll_interval_ms = {}\nrequest_timeout_ms = {}\nhistory_intervals = {}\nimbalance_spike_factor = {}",
        config.poll_interval_ms, config.request_timeout_ms, config.history_intervals, config.imbalance_spike_factor
    ));
    let hosts: Vec<String> = config
        .allowed_hosts
        .iter()
        .map(|h| format!("{h:?}"))
        .collect();
    out.push_str(&format!(
        "\nusers_file = {:?}\nallowed_hosts = [{}]\nsecure_cookies = {}\nsession_idle_minutes = {}",
        config.users_file.display().to_string(),
        hosts.join(", "),
        config.secure_cookies,
        config.session_idle_minutes
    ));
    for (key, value) in [
        ("upstream_token", &config.upstream_token),
        ("operator_token", &config.operator_token),
    ] {
        if value.is_some() {
            out.push_str(&format!("\n# {key} is set (not printed)"));
        }
    }
    out
}
