//! `market-engine`: the market service, the offline clearing tool and a trader's client.
//!
//! All the work lives in the library; this binary parses arguments, loads the config, sets up
//! logging and maps errors to exit codes (2 = bad input, 1 = anything else).

use clap::Parser;
use market_engine::cli::{Cli, run};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    run(cli)
}
