//! Hostile-input helpers for the services' HTTP tests (feature `testing`, for dev-dependencies
//! only): the bodies and path ids every write route must refuse, a request that announces a body
//! over [`HttpLimits::DEFAULT_MAX_BODY_BYTES`], and the assertions that a refusal is clear
//! (4xx with a JSON `{code, message}`).
//!
//! They live here so that the services' tests share them without one service depending on
//! another.

use crate::http::HttpLimits;
use serde_json::Value;

/// Bodies every POST/PUT route must refuse with a clear 4xx: deep nesting, bytes that are not
/// UTF-8, text that is not JSON and an empty body.
///
/// `invalid_utf8_body` is a body shaped like the route's input whose string holds bytes that
/// are not UTF-8, e.g. `b"{\"id\":\"\xff\xfe\xc3\x28\"}"`.
pub fn hostile_bodies(invalid_utf8_body: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("10 000 nested arrays", vec![b'['; 10_000]),
        (
            "10 000 nested objects",
            "{\"a\":".repeat(10_000).into_bytes(),
        ),
        ("invalid UTF-8", invalid_utf8_body.to_vec()),
        ("a lone invalid byte", vec![0xff]),
        ("not JSON", b"<xml/>".to_vec()),
        ("empty", Vec::new()),
    ]
}

/// Path ids (already percent-encoded) that must get a 4xx or an empty answer, never a 5xx or
/// someone else's data: SQL `LIKE` wildcards, a quote, an injection, a byte that is not UTF-8
/// and a NUL.
pub const HOSTILE_IDS: [&str; 6] = [
    "%25",
    "%27",
    "_",
    "%27%20OR%20%271%27%3D%271",
    "%FF",
    "1%00",
];

/// Sends `method path` announcing a body one byte over the limit (`Content-Length`), without
/// sending it, and returns the raw answer: the limit refuses on the announced length, and a
/// client still writing 2 MiB would race the server closing the connection.
///
/// `auth` is the whole `Authorization` header value, or empty for none.
pub async fn announce_oversized(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        if auth.is_empty() {
            String::new()
        } else {
            format!("authorization: {auth}\r\n")
        },
        HttpLimits::DEFAULT_MAX_BODY_BYTES + 1
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        socket.read_to_end(&mut answer),
    )
    .await
    .expect("the server answers an announced oversized body at once")
    .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Asserts the JSON 413 of [`announce_oversized`].
pub fn assert_clear_413((status, body): (u16, String), what: &str) {
    assert_eq!(status, 413, "{what}: {body}");
    let json: Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("{what}: no JSON ({e}): {body}"));
    assert_eq!(json["code"], "body_too_large", "{what}: {body}");
    assert!(
        json["message"]
            .as_str()
            .is_some_and(|m| m.contains("limit")),
        "{what}: {body}"
    );
}

/// Asserts a clear refusal: 4xx, JSON `{code, message}`.
pub async fn assert_clear_4xx(response: reqwest::Response, what: &str) {
    let status = response.status();
    let body = response.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(status.is_client_error(), "{what}: {status} {text}");
    let json: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{what}: {status} answered no JSON ({e}): {text}"));
    assert!(
        json["code"].as_str().is_some_and(|c| !c.is_empty())
            && json["message"].as_str().is_some_and(|m| m.len() > 10),
        "{what}: {text}"
    );
}
