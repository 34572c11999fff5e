//! `packaging/install.sh` sets the local page's password (issue 18): a random one printed once,
//! or GRIDMESH_PAGE_PASSWORD; only its argon2id hash lands in the config, which then turns the
//! page on; a second run keeps the hash.

use edge_gateway::config::GatewayConfig;
use edge_gateway::local_page::verify_password;
use std::path::Path;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_edge-gateway");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/install.sh");

async fn install(root: &Path, password: Option<&str>) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg(SCRIPT)
        .args(["--binary", BIN, "--no-systemctl", "--no-user", "--root"])
        .arg(root)
        .env_remove("GRIDMESH_PAGE_PASSWORD");
    if let Some(p) = password {
        cmd.env("GRIDMESH_PAGE_PASSWORD", p);
    }
    let out = cmd.output().await.unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    text
}

fn config(root: &Path) -> (String, GatewayConfig) {
    let text = std::fs::read_to_string(root.join("etc/gridmesh/gateway.toml")).unwrap();
    let config = GatewayConfig::from_toml(&text).unwrap();
    (text, config)
}

#[tokio::test]
async fn install_sets_a_random_page_password_once() {
    let root = tempfile::tempdir().unwrap();
    let text = install(root.path(), None).await;
    let password = text
        .lines()
        .find_map(|l| l.split_once("password: ").map(|(_, p)| p.trim().to_owned()))
        .unwrap_or_else(|| panic!("no password printed: {text}"));
    assert_eq!(password.len(), 20, "{password}");
    let (file, c) = config(root.path());
    assert!(c.local_page.enabled());
    let hash = c.local_page.password_hash.clone().unwrap();
    assert!(verify_password(&hash, &password));
    assert!(
        !file.contains(&password),
        "the password itself is in the config"
    );
    // Again: the hash stays, no new password is printed.
    let again = install(root.path(), None).await;
    assert!(!again.contains("password: "), "{again}");
    assert_eq!(config(root.path()).1.local_page.password_hash, Some(hash));
}

#[tokio::test]
async fn install_takes_the_page_password_from_the_environment() {
    let root = tempfile::tempdir().unwrap();
    install(root.path(), Some("chosen by the homeowner")).await;
    let hash = config(root.path()).1.local_page.password_hash.unwrap();
    assert!(verify_password(&hash, "chosen by the homeowner"));
    assert!(!verify_password(&hash, "something else"));
}
