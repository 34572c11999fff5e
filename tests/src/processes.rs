//! Services as real OS child processes, for the fault and scale-out tests: locating (and if
//! needed building) the service binaries, a private Mosquitto broker, TOML config files and
//! child processes that are killed when dropped.

use serde::Serialize;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a child process could not be prepared or started.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A binary is missing and could not be built.
    #[error("cannot find or build `{binary}`: {message}")]
    Binary {
        /// The binary's name.
        binary: String,
        /// What went wrong.
        message: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A child did not become ready in time.
    #[error("{0}")]
    NotReady(String),
    /// A value cannot be written as TOML.
    #[error("cannot write TOML: {0}")]
    Toml(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProcessError {
    let what = what.into();
    move |source| ProcessError::Io { what, source }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_owned()
}

/// `target/<profile>` of the running test or binary: `current_exe()` is
/// `target/<profile>/deps/<test>-<hash>` for a test and `target/<profile>/<bin>` for a binary.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let dir = exe.parent().expect("executable has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_owned()
    } else {
        dir.to_owned()
    }
}

/// The path of workspace binary `binary` (of package `package`), always brought up to date
/// first with `cargo build -p <package> --bin <binary>` (in the test's own profile and target
/// directory), so a test never runs a stale binary left by an earlier, partial build. When
/// the binary is fresh this is a quick no-op; each binary is built at most once per test
/// process.
pub fn service_binary(package: &str, binary: &str) -> Result<PathBuf, ProcessError> {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let path = profile_dir().join(binary);
    // Held across the build: concurrent tests wait for one build instead of starting several.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.iter().any(|b| b == binary) {
        return Ok(path);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "--locked", "-p", package, "--bin", binary]);
    match profile_dir().file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(profile) => {
            command.args(["--profile", profile]);
        }
    }
    // Build into the target directory this test runs from, whatever CARGO_TARGET_DIR says in
    // this environment: `target/<profile>`, or `target/<triple>/<profile>` after --target
    // (cargo marks the target directory's root with CACHEDIR.TAG).
    let profile = profile_dir();
    let is_root = |dir: &Path| dir.join("CACHEDIR.TAG").exists();
    if let Some(parent) = profile.parent() {
        if is_root(parent) {
            command.env("CARGO_TARGET_DIR", parent);
        } else if let Some(root) = parent.parent()
            && is_root(root)
            && let Some(triple) = parent.file_name()
        {
            command
                .env("CARGO_TARGET_DIR", root)
                .arg("--target")
                .arg(triple);
        }
    }
    let output = command.output().map_err(|e| ProcessError::Binary {
        binary: binary.to_owned(),
        message: format!("cannot run cargo: {e}"),
    })?;
    if !output.status.success() || !path.exists() {
        return Err(ProcessError::Binary {
            binary: binary.to_owned(),
            message: format!(
                "`cargo build --locked -p {package} --bin {binary}` failed, so the test would run a stale or missing binary:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    built.push(binary.to_owned());
    Ok(path)
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for a child that binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, within: Duration) -> Result<(), ProcessError> {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ProcessError::NotReady(format!(
                "nothing listens on {addr} after {within:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process with its output in a log file; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildProcess {
    /// Spawns `program args…` with `envs`, stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        log: &Path,
    ) -> Result<Self, ProcessError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io(format!("cannot open log {}", log.display())))?;
        let err = file
            .try_clone()
            .map_err(io(format!("cannot open log {}", log.display())))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        for (k, v) in envs {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .map_err(io(format!("cannot start {}", program.display())))?;
        Ok(ChildProcess {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the process to stop with SIGTERM and waits up to `within` before killing it.
    pub async fn terminate(&mut self, within: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The log so far, for assertion messages.
    pub fn log(&self) -> String {
        format!(
            "--- log of {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private Mosquitto broker on its own port, with persistence in its own directory, so that
/// it can be stopped and started again with its sessions and queued messages.
#[derive(Debug)]
pub struct Mosquitto {
    /// The port it listens on (the same after a restart).
    pub port: u16,
    dir: PathBuf,
    process: Option<ChildProcess>,
}

/// Where Mosquitto is installed.
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

impl Mosquitto {
    /// Starts `mosquitto -c <dir>/mosquitto.conf` on a free port; state lives in `dir`.
    pub async fn start(dir: &Path) -> Result<Self, ProcessError> {
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        let mut broker = Mosquitto {
            port: free_port(),
            dir: dir.to_owned(),
            process: None,
        };
        broker.start_again().await?;
        Ok(broker)
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Stops the broker with SIGTERM (it saves its persistence file) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate(Duration::from_secs(10)).await;
        }
    }

    /// Starts the broker (again) on the same port with the same persistence directory.
    pub async fn start_again(&mut self) -> Result<(), ProcessError> {
        self.stop().await;
        let config = self.dir.join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {dir}/\nautosave_interval 1\nmax_queued_messages 100000\n\
             log_dest stdout\n",
            port = self.port,
            dir = self.dir.display()
        );
        std::fs::write(&config, text).map_err(io(format!("cannot write {}", config.display())))?;
        let config = config.display().to_string();
        let process = ChildProcess::spawn(
            "mosquitto",
            Path::new(MOSQUITTO),
            &["-c", &config],
            &[],
            &self.dir.join("mosquitto.log"),
        )?;
        self.process = Some(process);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        if let Err(e) = wait_for_port(addr, Duration::from_secs(20)).await {
            let log = self.process.as_ref().map(ChildProcess::log);
            return Err(ProcessError::NotReady(format!(
                "{e}\n{}",
                log.unwrap_or_default()
            )));
        }
        Ok(())
    }
}

/// Writes `value` as a TOML file (via its serde form; `None` fields are left out).
pub fn write_toml<T: Serialize>(path: &Path, value: &T) -> Result<(), ProcessError> {
    let json = serde_json::to_value(value).map_err(|e| ProcessError::Toml(e.to_string()))?;
    let text = to_toml(&json)?;
    let mut file =
        std::fs::File::create(path).map_err(io(format!("cannot write {}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(io(format!("cannot write {}", path.display())))
}

/// Renders a JSON object as a TOML document: scalars and inline arrays first, then tables and
/// arrays of tables (the order TOML requires). `null` values are omitted.
pub fn to_toml(value: &serde_json::Value) -> Result<String, ProcessError> {
    let serde_json::Value::Object(map) = value else {
        return Err(ProcessError::Toml("the top level must be a table".into()));
    };
    let mut out = String::new();
    write_table(&mut out, &[], map)?;
    Ok(out)
}

fn is_table_array(value: &serde_json::Value) -> bool {
    matches!(value, serde_json::Value::Array(items)
        if !items.is_empty() && items.iter().all(serde_json::Value::is_object))
}

fn write_table(
    out: &mut String,
    path: &[String],
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), ProcessError> {
    for (key, value) in map {
        if value.is_null() || value.is_object() || is_table_array(value) {
            continue;
        }
        out.push_str(&format!("{} = {}\n", toml_key(key), inline(value)?));
    }
    for (key, value) in map {
        let mut sub = path.to_vec();
        sub.push(toml_key(key));
        match value {
            serde_json::Value::Object(inner) => {
                out.push_str(&format!("\n[{}]\n", sub.join(".")));
                write_table(out, &sub, inner)?;
            }
            serde_json::Value::Array(items) if is_table_array(value) => {
                for item in items {
                    out.push_str(&format!("\n[[{}]]\n", sub.join(".")));
                    if let serde_json::Value::Object(inner) = item {
                        write_table(out, &sub, inner)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_owned()
    } else {
        serde_json::to_string(key).expect("a string serialises")
    }
}

fn inline(value: &serde_json::Value) -> Result<String, ProcessError> {
    Ok(match value {
        serde_json::Value::Null => {
            return Err(ProcessError::Toml("TOML has no null inside arrays".into()));
        }
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => {
            if n.is_f64() {
                let f = n.as_f64().expect("f64");
                if f.fract() == 0.0 && f.abs() < 1e15 {
                    format!("{f:.1}")
                } else {
                    f.to_string()
                }
            } else {
                n.to_string()
            }
        }
        // JSON string escapes are valid TOML basic-string escapes.
        serde_json::Value::String(s) => serde_json::to_string(s).expect("a string serialises"),
        serde_json::Value::Array(items) => {
            let parts: Result<Vec<String>, ProcessError> = items.iter().map(inline).collect();
            format!("[{}]", parts?.join(", "))
        }
        serde_json::Value::Object(map) => {
            let mut parts = Vec::new();
            for (k, v) in map {
                if !v.is_null() {
                    parts.push(format!("{} = {}", toml_key(k), inline(v)?));
                }
            }
            format!("{{ {} }}", parts.join(", "))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_binary_is_rebuilt_before_it_is_used() {
        // meter-sim-bench: a workspace binary that no process test runs, so planting a stale
        // stand-in where it lives races no other test.
        let path = profile_dir().join("meter-sim-bench");
        if path.exists() {
            // Never write through the path: it may be a hard link to cargo's own artifact.
            std::fs::remove_file(&path).unwrap();
        }
        let stale = b"#!/bin/sh\necho a stale build\n";
        std::fs::write(&path, stale).unwrap();
        let built = service_binary("meter-sim", "meter-sim-bench").unwrap();
        assert_eq!(built, path);
        let bytes = std::fs::read(&built).unwrap();
        assert_ne!(
            bytes, stale,
            "service_binary handed out the stale file instead of building the binary"
        );
        let help = Command::new(&built).arg("--help").output().unwrap();
        assert!(help.status.success(), "{help:?}");
    }

    #[test]
    fn toml_orders_scalars_before_tables_and_skips_null() {
        let value = serde_json::json!({
            "a": 1, "b": null, "t": {"x": "q\"uote", "y": 2.0},
            "devices": [{"name": "m", "port": 5}], "list": [1, 2], "c": true
        });
        let text = to_toml(&value).unwrap();
        assert!(!text.contains('b'), "{text}");
        assert!(
            text.find("c = true").unwrap() < text.find("[t]").unwrap(),
            "{text}"
        );
        assert!(
            text.contains("[[devices]]\nname = \"m\"\nport = 5"),
            "{text}"
        );
        assert!(text.contains("y = 2.0"), "{text}");
        assert!(text.contains("x = \"q\\\"uote\""), "{text}");
        assert!(text.contains("list = [1, 2]"), "{text}");
    }
}
