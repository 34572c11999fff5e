//! Dashboard login: users with roles, argon2id password hashes, in-memory sessions, the
//! Host-header check and CSRF tokens.
//!
//! - **Users** live in a small JSON file ([`UsersFile`], mode 0600, replaced atomically) that
//!   `gridmesh-web user add` writes; the dashboard reads it at every login.
//! - **Roles** ([`Role`]): `admin` reads everything and may take operator actions; `viewer`
//!   reads everything and changes nothing; `household` (with a participant id) sees the shared
//!   pages and only its own participant's detail.
//! - **Sessions**: a random 256-bit id in an `HttpOnly; SameSite=Strict` cookie (`Secure` when
//!   `secure_cookies` is set), kept in memory and ended after `session_idle_minutes` unused.
//! - **CSRF**: every write except the login form needs the session's token, in the
//!   `x-csrf-token` header or a `csrf` form field, and a request whose `Origin` header names
//!   another host than its `Host` is refused; the cookie is also `SameSite=Strict`.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq as _;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "gridmesh_session";
/// The header carrying the CSRF token on writes.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// At most this many sessions are kept (the oldest idle ones go first).
const MAX_SESSIONS: usize = 10_000;
/// After this many failed logins in a row a name is locked for [`LOCKOUT`].
const MAX_FAILURES: u32 = 5;
/// How long a name stays locked after [`MAX_FAILURES`] failed logins.
const LOCKOUT: Duration = Duration::from_secs(60);

/// What a dashboard user may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Role {
    /// Reads everything and may take operator actions (accepting quarantined readings).
    Admin,
    /// Reads everything, changes nothing.
    Viewer,
    /// One household: the shared pages and its own participant's detail only.
    Household {
        /// The household's participant id.
        participant: String,
    },
}

impl Role {
    /// The role's name (`admin`, `viewer`, `household`).
    pub fn name(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Household { .. } => "household",
        }
    }

    /// Whether this role may take operator actions.
    pub fn is_admin(&self) -> bool {
        matches!(self, Role::Admin)
    }

    /// Whether this role may read `participant`'s household data.
    pub fn may_read_participant(&self, participant: &str) -> bool {
        match self {
            Role::Admin | Role::Viewer => true,
            Role::Household { participant: own } => own == participant,
        }
    }

    /// The participant a household user is confined to (`None` for admin and viewer).
    pub fn household(&self) -> Option<&str> {
        match self {
            Role::Household { participant } => Some(participant),
            _ => None,
        }
    }
}

/// One user in the users file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The login name.
    pub name: String,
    /// The role (flattened: `"role": "household", "participant": "h001"`).
    #[serde(flatten)]
    pub role: Role,
    /// The argon2id hash in PHC string form.
    pub password_hash: String,
}

/// The users file: `{"users": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// Every user.
    pub users: Vec<User>,
}

/// Why the users file or a user could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read or written.
    #[error("users file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a users file.
    #[error("users file {path} is not valid: {reason}; it is written by `gridmesh-web user add`")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// The user's name is taken.
    #[error("a user named {0} already exists")]
    Exists(String),
    /// The name or password is unusable.
    #[error("{0}")]
    Invalid(String),
    /// Hashing failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

impl UsersFile {
    /// Reads `path`; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| UsersError::Malformed {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
            Err(source) => Err(UsersError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes the file atomically (a temporary file with mode 0600 in the same directory,
    /// then renamed over `path`).
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let io = |source| UsersError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "users.json".into());
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let _ = std::fs::remove_file(&tmp);
        let mut file = options.open(&tmp).map_err(io)?;
        let text = serde_json::to_vec_pretty(self).map_err(|e| UsersError::Hash(e.to_string()))?;
        let written = file
            .write_all(&text)
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Adds a user with `password` hashed; an existing name is an error.
    pub fn add(&mut self, name: &str, role: Role, password: &str) -> Result<(), UsersError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        {
            return Err(UsersError::Invalid(format!(
                "user name `{name}` must be 1 to 64 letters, digits or - _ . @"
            )));
        }
        if password.chars().count() < 8 {
            return Err(UsersError::Invalid(
                "the password must have at least 8 characters".into(),
            ));
        }
        if self.users.iter().any(|u| u.name == name) {
            return Err(UsersError::Exists(name.to_owned()));
        }
        self.users.push(User {
            name: name.to_owned(),
            role,
            password_hash: hash_password(password)?,
        });
        Ok(())
    }

    /// The user named `name` if `password` is theirs. Takes as long for an unknown name.
    pub fn check(&self, name: &str, password: &str) -> Option<&User> {
        match self.users.iter().find(|u| u.name == name) {
            Some(user) => verify_password(&user.password_hash, password).then_some(user),
            None => {
                let _ = verify_password(dummy_hash(), password);
                None
            }
        }
    }
}

/// An argon2id hash (PHC string) of `password` with a random salt.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| UsersError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
}

/// A random password of 20 characters (about 119 bits) for `user add` and the demo.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = String::with_capacity(20);
    while out.len() < 20 {
        let mut byte = [0u8; 1];
        OsRng.fill_bytes(&mut byte);
        // Rejection sampling keeps every character equally likely.
        let b = usize::from(byte[0]);
        if b < 256 - 256 % ALPHABET.len() {
            out.push(char::from(ALPHABET[b % ALPHABET.len()]));
        }
    }
    out
}

/// A random 256-bit value as 64 hexadecimal characters.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A logged-in user's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user's name.
    pub user: String,
    /// The user's role.
    pub role: Role,
    /// The token every write of this session must carry.
    pub csrf: String,
}

impl Session {
    /// Whether `token` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, token: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(token.as_bytes()))
    }
}

#[derive(Debug)]
struct Entry {
    session: Arc<Session>,
    last_seen: Instant,
}

/// The dashboard's login state: sessions in memory, the users file, the Host check.
#[derive(Debug)]
pub struct Auth {
    users_file: PathBuf,
    allowed_hosts: Vec<String>,
    idle: Duration,
    secure: bool,
    port: AtomicU16,
    sessions: Mutex<HashMap<String, Entry>>,
    /// Failed logins per name: how many in a row, and when the last one was.
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Auth {
    /// Login state for `config` (the listen port is set again once bound, see
    /// [`Auth::set_port`]).
    pub fn new(config: &crate::WebConfig) -> Self {
        Auth {
            users_file: config.users_file.clone(),
            allowed_hosts: config
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            idle: config.session_idle(),
            secure: config.secure_cookies || config.tls_cert.is_some(),
            port: AtomicU16::new(config.listen.port()),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// How long `name` must still wait before another login attempt is checked (after
    /// [`MAX_FAILURES`] failed ones in a row); `None` when it may try now.
    pub fn locked_for(&self, name: &str) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let (count, last) = failures.get(name)?;
        let elapsed = last.elapsed();
        (*count >= MAX_FAILURES && elapsed < LOCKOUT).then(|| LOCKOUT - elapsed)
    }

    fn record_login(&self, name: &str, ok: bool) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            failures.remove(name);
            return;
        }
        if failures.len() >= MAX_SESSIONS {
            failures.retain(|_, (_, last)| last.elapsed() < LOCKOUT);
        }
        let entry = failures
            .entry(name.to_owned())
            .or_insert((0, Instant::now()));
        // A lockout that has run out starts a new count.
        if entry.0 >= MAX_FAILURES {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = Instant::now();
    }

    /// The port the dashboard listens on (a bare allowed host name matches `name:port`).
    pub fn set_port(&self, port: u16) {
        self.port.store(port, Ordering::Relaxed);
    }

    /// Whether a `Host` header value is one the dashboard answers to.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let port = self.port.load(Ordering::Relaxed);
        self.allowed_hosts.iter().any(|allowed| {
            host == *allowed
                || host
                    .strip_prefix(allowed.as_str())
                    .and_then(|rest| rest.strip_prefix(':'))
                    .is_some_and(|p| p.parse::<u16>() == Ok(port))
        })
    }

    /// Checks a login against the users file; returns the new session id and session. Callers
    /// check [`Auth::locked_for`] first.
    pub fn login(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Option<(String, Arc<Session>)>, UsersError> {
        let users = UsersFile::load(&self.users_file)?;
        let Some(user) = users.check(name, password) else {
            self.record_login(name, false);
            return Ok(None);
        };
        self.record_login(name, true);
        Ok(Some(self.start_session(&user.name, user.role.clone())))
    }

    /// Starts a session for `user` without a password check (the login handler after
    /// checking one, and tests). Returns its id and the session.
    pub fn start_session(&self, user: &str, role: Role) -> (String, Arc<Session>) {
        let id = random_token();
        let session = Arc::new(Session {
            user: user.to_owned(),
            role,
            csrf: random_token(),
        });
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, e| now.duration_since(e.last_seen) < self.idle);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                sessions.remove(&k);
            }
        }
        sessions.insert(
            id.clone(),
            Entry {
                session: session.clone(),
                last_seen: now,
            },
        );
        (id, session)
    }

    /// The live session with id `id`, refreshing its idle timer; an expired one is removed.
    pub fn session(&self, id: &str) -> Option<Arc<Session>> {
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let entry = sessions.get_mut(id)?;
        if now.duration_since(entry.last_seen) >= self.idle {
            sessions.remove(id);
            return None;
        }
        entry.last_seen = now;
        Some(entry.session.clone())
    }

    /// Ends the session `id`.
    pub fn logout(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// The `Set-Cookie` value carrying session `id`.
    pub fn cookie(&self, id: &str) -> String {
        format!(
            "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{}",
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clear_cookie(&self) -> String {
        format!(
            "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.secure { "; Secure" } else { "" }
        )
    }
}

/// The session id in a `Cookie` header, if any.
pub fn session_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_hashed_saved_with_mode_0600_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        let mut users = UsersFile::load(&path).unwrap();
        users.add("alice", Role::Admin, "correct horse").unwrap();
        users
            .add(
                "h1",
                Role::Household {
                    participant: "h001".into(),
                },
                "battery staple",
            )
            .unwrap();
        assert!(matches!(
            users.add("alice", Role::Viewer, "another one"),
            Err(UsersError::Exists(_))
        ));
        assert!(users.add("bob", Role::Viewer, "short").is_err());
        users.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("correct horse"), "{text}");
        assert!(text.contains("$argon2id$"), "{text}");
        assert!(text.contains("\"participant\": \"h001\""), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = UsersFile::load(&path).unwrap();
        assert_eq!(loaded, users);
        assert_eq!(
            loaded.check("alice", "correct horse").map(|u| &u.role),
            Some(&Role::Admin)
        );
        assert!(loaded.check("alice", "wrong horse").is_none());
        assert!(loaded.check("nobody", "correct horse").is_none());
    }

    #[test]
    fn hosts_sessions_and_cookies() {
        let config = crate::WebConfig {
            session_idle_minutes: 1,
            ..crate::WebConfig::default()
        };
        let auth = Auth::new(&config);
        auth.set_port(8090);
        assert!(auth.host_allowed("127.0.0.1:8090"));
        assert!(auth.host_allowed("LOCALHOST:8090"));
        assert!(auth.host_allowed("localhost"));
        assert!(!auth.host_allowed("localhost:8091"));
        assert!(!auth.host_allowed("evil.example:8090"));
        assert!(!auth.host_allowed("localhost.evil.example"));
        assert!(!auth.host_allowed("127.0.0.1:8090.evil"));

        let (id, session) = auth.start_session("v", Role::Viewer);
        assert_eq!(id.len(), 64);
        assert_eq!(auth.session(&id).unwrap(), session);
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches("nope"));
        let cookie = auth.cookie(&id);
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("Secure"));
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            format!("a=b; {SESSION_COOKIE}={id}").parse().unwrap(),
        );
        assert_eq!(session_id(&headers), Some(id.clone()));
        auth.logout(&id);
        assert!(auth.session(&id).is_none());

        let secure = Auth::new(&crate::WebConfig {
            secure_cookies: true,
            ..crate::WebConfig::default()
        });
        assert!(secure.cookie(&id).ends_with("; Secure"));
        // Served over TLS, the cookie is always Secure.
        let tls = Auth::new(&crate::WebConfig {
            tls_cert: Some("cert.pem".into()),
            tls_key: Some("key.pem".into()),
            ..crate::WebConfig::default()
        });
        assert!(tls.cookie(&id).ends_with("; Secure"));
    }

    #[test]
    fn generated_passwords_differ() {
        let a = generate_password();
        assert_eq!(a.len(), 20);
        assert_ne!(a, generate_password());
    }
}
