//! TLS for the gateway's network traffic: `mqtts://` to the broker and `https://` to settlement
//! and the market, with rustls and the ring provider (no OpenSSL, small on a Pi).
//!
//! Trust: the CA certificates of `[tls] ca_file` (PEM), or — without it — the Mozilla root
//! list compiled in (webpki-roots), so a broker or server with a public certificate works with
//! no setup. `[mqtt] ca_file` overrides the CA for the broker only. The broker identity of a
//! gateway is a client certificate (`[mqtt] client_cert_file` + `client_key_file`) and/or a
//! username and password (`[mqtt] username` + `password_file`).

use crate::config::GatewayConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the TLS settings cannot be used. Each message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error(
        "cannot read the {what} {path}: {source}. Fix the path in the config or the file's permissions"
    )]
    Read {
        /// Which setting (`CA file`, `client certificate`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A certificate file holds no usable PEM certificate.
    #[error(
        "the {what} {path} holds no PEM certificate{detail}. Fix: give a PEM file with `-----BEGIN CERTIFICATE-----` blocks"
    )]
    NoCertificate {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why, when the PEM parser said so (starts with `: `).
        detail: String,
    },
    /// A CA certificate is not a usable trust anchor.
    #[error("the CA file {path}: certificate {index} is not a usable CA certificate: {detail}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Which certificate (1-based).
        index: usize,
        /// rustls' reason.
        detail: String,
    },
    /// The client key file holds no usable private key.
    #[error(
        "the client key {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {detail}. Fix: give the key that belongs to client_cert_file, unencrypted, in PEM"
    )]
    NoKey {
        /// The file.
        path: PathBuf,
        /// The PEM parser's reason.
        detail: String,
    },
    /// The client certificate and key do not make a usable identity.
    #[error("the client certificate {cert} and key {key} cannot be used together: {detail}")]
    ClientAuth {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        detail: String,
    },
    /// The broker password file is empty.
    #[error(
        "the broker password file {0} is empty. Fix: write the gateway's broker password into it (one line)"
    )]
    EmptyPassword(PathBuf),
}

/// The crypto provider: ring (small, builds with Debian's cross gcc for aarch64).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, path)?;
    let no_certificate = |detail: String| TlsError::NoCertificate {
        what,
        path: path.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| no_certificate(format!(": {e}")))?;
    if certs.is_empty() {
        return Err(no_certificate(String::new()));
    }
    Ok(certs)
}

/// Where trust comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The Mozilla roots compiled in (webpki-roots).
    BuiltIn,
    /// The CA certificates of a PEM file.
    CaFile(PathBuf),
}

impl std::fmt::Display for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trust::BuiltIn => write!(f, "the built-in public (Mozilla/webpki) roots"),
            Trust::CaFile(path) => write!(f, "the CA file {}", path.display()),
        }
    }
}

impl Trust {
    /// Trust for HTTPS to settlement and the market: `[tls] ca_file` or the built-in roots.
    pub fn http(config: &GatewayConfig) -> Trust {
        match &config.tls.ca_file {
            Some(path) => Trust::CaFile(path.clone()),
            None => Trust::BuiltIn,
        }
    }

    /// Trust for the broker: `[mqtt] ca_file`, else `[tls] ca_file`, else the built-in roots.
    pub fn mqtt(config: &GatewayConfig) -> Trust {
        match config.mqtt.ca_file.as_ref().or(config.tls.ca_file.as_ref()) {
            Some(path) => Trust::CaFile(path.clone()),
            None => Trust::BuiltIn,
        }
    }

    /// The root store; returns also how many CA certificates it holds.
    pub fn roots(&self) -> Result<(RootCertStore, usize), TlsError> {
        let mut store = RootCertStore::empty();
        match self {
            Trust::BuiltIn => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Trust::CaFile(path) => {
                for (i, cert) in certificates("CA file", path)?.into_iter().enumerate() {
                    store.add(cert).map_err(|e| TlsError::BadCa {
                        path: path.clone(),
                        index: i + 1,
                        detail: e.to_string(),
                    })?;
                }
            }
        }
        let count = store.len();
        Ok((store, count))
    }
}

/// A rustls client configuration trusting `trust`, presenting the client certificate and key
/// when given.
pub fn client_config(
    trust: &Trust,
    client_auth: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let (roots, _) = trust.roots()?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .with_root_certificates(roots);
    match client_auth {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = certificates("client certificate", cert)?;
            let key_bytes = read("client key", key)?;
            let private =
                PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::NoKey {
                    path: key.to_owned(),
                    detail: e.to_string(),
                })?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| TlsError::ClientAuth {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                    detail: e.to_string(),
                })
        }
    }
}

/// The rustls configuration for HTTPS to settlement and the market (`[tls] ca_file`).
pub fn http_config(config: &GatewayConfig) -> Result<ClientConfig, TlsError> {
    client_config(&Trust::http(config), None)
}

/// Whether the broker URL asks for TLS (`mqtts://` or `ssl://`).
pub fn is_mqtts(url: &str) -> bool {
    url.starts_with("mqtts://") || url.starts_with("ssl://")
}

/// The MQTT transport: `None` (plain TCP) for `mqtt://`, rustls for `mqtts://` with the broker's
/// CA and the gateway's client certificate when configured.
pub fn mqtt_transport(config: &GatewayConfig) -> Result<Option<rumqttc::Transport>, TlsError> {
    match &config.mqtt.url {
        Some(url) if is_mqtts(url) => {
            let client_auth = match (&config.mqtt.client_cert_file, &config.mqtt.client_key_file) {
                (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
                _ => None,
            };
            let tls = client_config(&Trust::mqtt(config), client_auth)?;
            Ok(Some(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
            )))
        }
        _ => Ok(None),
    }
}

/// The broker username: `[mqtt] username`, else the gateway id.
pub fn mqtt_username(config: &GatewayConfig) -> String {
    config
        .mqtt
        .username
        .clone()
        .unwrap_or_else(|| config.gateway_id.to_string())
}

/// The broker credentials, when `[mqtt] password_file` is set: the username and the file's
/// first line.
pub fn mqtt_credentials(config: &GatewayConfig) -> Result<Option<(String, String)>, TlsError> {
    let Some(path) = &config.mqtt.password_file else {
        return Ok(None);
    };
    let bytes = read("broker password file", path)?;
    let text = String::from_utf8_lossy(&bytes);
    let password = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if password.is_empty() {
        return Err(TlsError::EmptyPassword(path.clone()));
    }
    Ok(Some((mqtt_username(config), password.to_owned())))
}

/// An error with its sources (`reqwest` hides the TLS reason in the source chain).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

/// Turns a connection error into a message that says what to fix: a broker or server whose
/// certificate the configured CA does not sign, or one issued for another name.
pub fn explain(error: &str, trust: &Trust) -> String {
    if error.contains("UnknownIssuer") {
        format!(
            "{error}: the server's certificate is not signed by a CA in {trust}. Fix: set [tls] ca_file (or [mqtt] ca_file) to the CA that signed it, or check that this is the right server"
        )
    } else if error.contains("NotValidForName") || error.contains("not valid for name") {
        format!(
            "{error}: the server's certificate is for another host name. Fix: use the host name in the certificate in the URL"
        )
    } else if error.contains("Expired") || error.contains("NotValidYet") {
        format!(
            "{error}: the server's certificate is outside its validity period (check the clock)"
        )
    } else if error.contains("Connection refused, return code") {
        format!(
            "{error}: the broker refused this gateway's login. Fix: check [mqtt] username (default: the gateway id) and password_file, or the client certificate, against the broker's password file and ACL"
        )
    } else if error.contains("CertificateRequired") || error.contains("certificate required") {
        format!(
            "{error}: the broker requires a client certificate. Fix: set [mqtt] client_cert_file and client_key_file"
        )
    } else {
        error.to_owned()
    }
}

/// Lines for `edge-gateway check-config`: what is encrypted, what is trusted, which identity is
/// presented; every file is loaded, so a broken one is reported here and not at run time.
pub fn describe(config: &GatewayConfig) -> Result<Vec<String>, TlsError> {
    let mut lines = Vec::new();
    match &config.mqtt.url {
        None => lines.push("broker: none (readings go over HTTP only)".to_owned()),
        Some(url) if is_mqtts(url) => {
            let trust = Trust::mqtt(config);
            let (_, count) = trust.roots()?;
            let identity = match (&config.mqtt.client_cert_file, &config.mqtt.client_key_file) {
                (Some(cert), Some(key)) => {
                    mqtt_transport(config)?;
                    format!(
                        "client certificate {} (key {})",
                        cert.display(),
                        key.display()
                    )
                }
                _ => "no client certificate".to_owned(),
            };
            lines.push(format!(
                "broker: {url} over TLS, trusting {trust} ({count} CA certificates); {identity}"
            ));
        }
        Some(url) => lines.push(format!(
            "broker: {url} WITHOUT TLS (plain MQTT; fine on 127.0.0.1 or a trusted LAN, use mqtts:// across networks)"
        )),
    }
    if config.mqtt.url.is_some() {
        lines.push(match mqtt_credentials(config)? {
            Some((username, _)) => format!(
                "broker login: username `{username}`, password from {}",
                config
                    .mqtt
                    .password_file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
            None => "broker login: none (anonymous or client certificate only)".to_owned(),
        });
    }
    let trust = Trust::http(config);
    let (_, count) = trust.roots()?;
    for (name, url) in [
        ("market", &config.market_url),
        ("settlement", &config.settlement_url),
    ] {
        match url {
            None => lines.push(format!("{name}: not configured")),
            Some(url) if url.starts_with("https://") => lines.push(format!(
                "{name}: {url} over TLS, trusting {trust} ({count} CA certificates)"
            )),
            Some(url) => lines.push(format!(
                "{name}: {url} WITHOUT TLS (plain HTTP; fine on 127.0.0.1, use https:// across networks)"
            )),
        }
    }
    Ok(lines)
}
