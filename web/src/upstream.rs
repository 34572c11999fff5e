//! HTTP access to the market and settlement APIs, with errors that say which service failed.
//!
//! The dashboard never touches a database: everything it shows comes through these calls.

use gridmesh_protocol::api::market::ErrorBody;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Which upstream service a call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// The market engine.
    Market,
    /// Settlement and the token ledger.
    Settlement,
}

impl Service {
    /// The name shown to users.
    pub fn name(self) -> &'static str {
        match self {
            Service::Market => "market",
            Service::Settlement => "settlement",
        }
    }
}

/// Why an upstream call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No connection (refused, timed out, reset).
    #[error("{} unreachable at {url}: {reason}; is it running? retrying", service.name())]
    Unreachable {
        /// The service.
        service: Service,
        /// The URL called.
        url: String,
        /// What the HTTP client reported.
        reason: String,
    },
    /// The resource does not exist (yet).
    #[error("{} has no {url} (404)", service.name())]
    NotFound {
        /// The service.
        service: Service,
        /// The URL called.
        url: String,
    },
    /// Any other non-success status.
    #[error("{} answered {status} for {url}: {message}", service.name())]
    Status {
        /// The service.
        service: Service,
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The service's error message (its `message` field when it sent one).
        message: String,
    },
    /// The body is not the shared protocol type expected (a broken contract).
    #[error(
        "{} sent a reply for {url} that is not the shared protocol type: {reason}; is it running a compatible version?",
        service.name()
    )]
    Decode {
        /// The service.
        service: Service,
        /// The URL called.
        url: String,
        /// The decoder's message.
        reason: String,
    },
}

impl UpstreamError {
    /// The service the error came from.
    pub fn service(&self) -> Service {
        match self {
            UpstreamError::Unreachable { service, .. }
            | UpstreamError::NotFound { service, .. }
            | UpstreamError::Status { service, .. }
            | UpstreamError::Decode { service, .. } => *service,
        }
    }

    /// Whether the service could not be reached at all (as opposed to answering badly).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, UpstreamError::Unreachable { .. })
    }

    /// Whether the service answered with a body that is not the shared protocol type.
    pub fn is_broken_contract(&self) -> bool {
        matches!(self, UpstreamError::Decode { .. })
    }
}

/// A JSON client for one upstream service.
#[derive(Debug, Clone)]
pub struct Upstream {
    service: Service,
    base: String,
    http: reqwest::Client,
}

impl Upstream {
    /// A client for `service` at `base_url` (trailing slashes are ignored), with `timeout` for
    /// connecting and for every request, sending `token` (the auditor credential) as
    /// `Authorization: Bearer` on every request, event streams included. A client that cannot
    /// be built is an error (a default client would wait forever on a silent service).
    pub fn new(
        service: Service,
        base_url: &str,
        timeout: Duration,
        token: Option<&str>,
    ) -> Result<Self, reqwest::Error> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            // A token that is not a valid header value is sent as nothing (and answered 401).
            if let Ok(mut value) =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            {
                value.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, value);
            }
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .default_headers(headers)
            .build()?;
        Ok(Upstream {
            service,
            base: base_url.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// The service this client talks to.
    pub fn service(&self) -> Service {
        self.service
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The full URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The underlying HTTP client (for streaming SSE).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// GETs `path` and decodes its JSON body.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, UpstreamError> {
        let url = self.url(path);
        let request = self.http.get(&url);
        self.send(request, url).await
    }

    /// POSTs to `path` without a body as `Authorization: Bearer <bearer>` (instead of the
    /// upstream token) and decodes the JSON answer: an admin's operator action.
    pub async fn post_as<T: DeserializeOwned>(
        &self,
        path: &str,
        bearer: &str,
    ) -> Result<T, UpstreamError> {
        let url = self.url(path);
        let request = self.http.post(&url).bearer_auth(bearer);
        self.send(request, url).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: String,
    ) -> Result<T, UpstreamError> {
        let response = request
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| self.unreachable(&url, &e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.unreachable(&url, &e))?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(UpstreamError::NotFound {
                service: self.service,
                url,
            });
        }
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(UpstreamError::Status {
                service: self.service,
                url,
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| UpstreamError::Decode {
            service: self.service,
            url,
            reason: e.to_string(),
        })
    }

    fn unreachable(&self, url: &str, error: &reqwest::Error) -> UpstreamError {
        let reason = if error.is_timeout() {
            "timed out".to_owned()
        } else if error.is_connect() {
            "connection refused".to_owned()
        } else {
            error.to_string()
        };
        UpstreamError::Unreachable {
            service: self.service,
            url: url.to_owned(),
            reason,
        }
    }
}

/// Percent-encodes a path segment or query value (ids are already URL-safe; timestamps carry
/// `:` and `+`, which are encoded to be safe everywhere).
pub fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_timestamps() {
        assert_eq!(
            encode_component("2026-06-21T12:00:00Z"),
            "2026-06-21T12%3A00%3A00Z"
        );
        assert_eq!(encode_component("h-01.a_b"), "h-01.a_b");
    }

    #[tokio::test]
    async fn unreachable_names_the_service_and_url() {
        // Bind and drop a listener to get a port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let up = Upstream::new(
            Service::Market,
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_secs(2),
            None,
        )
        .unwrap();
        let err = up.get::<ErrorBody>("/status").await.unwrap_err();
        assert!(err.is_unreachable());
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "market unreachable at http://127.0.0.1:{port}/status"
            )),
            "{text}"
        );
    }
}
