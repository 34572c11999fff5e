//! The server on the runtime HTTP kit: malformed query strings and paths answer with the JSON
//! error shape, oversized bodies are refused with it, operator checks keep their codes, and
//! the event stream is served as SSE.

use gridmesh_protocol::api::market::ErrorBody;
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use market_engine::{MarketConfig, RunningMarket, serve};

async fn start(dir: &tempfile::TempDir) -> (RunningMarket, Shutdown) {
    let shutdown = Shutdown::new();
    let config = MarketConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("m.db").display()),
        operator_token: Some("secret".into()),
        ..MarketConfig::default()
    };
    let m = serve(config, Clock::system(), shutdown.clone())
        .await
        .unwrap();
    (m, shutdown)
}

async fn error(response: reqwest::Response) -> (u16, ErrorBody) {
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_and_limits_answer_with_the_json_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let (m, shutdown) = start(&dir).await;
    let http = reqwest::Client::new();
    let url = m.url();

    // A query string that does not parse (was a plain-text 400).
    let (status, body) = error(
        http.get(format!("{url}/results?limit=many"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.code.as_str()), (400, "invalid_query"));
    assert!(body.message.contains("limit"), "{}", body.message);

    // A body over the 2 MiB limit is refused from its Content-Length, before it is read. Sent
    // over a raw socket with the headers only: a client still writing megabytes when the
    // server answers and closes would see a reset instead of the answer.
    let (status, body) = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(m.addr).await.unwrap();
        let request = format!(
            "POST /orders HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            m.addr,
            3 * 1024 * 1024
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        socket.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let status: u16 = answer[9..12].parse().unwrap();
        let json = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        let body: ErrorBody = serde_json::from_str(json).unwrap_or_else(|e| {
            panic!("{e}: {answer}");
        });
        (status, body)
    };
    assert_eq!((status, body.code.as_str()), (413, "body_too_large"));

    // Operator endpoints keep their codes: no token 401, a wrong one 403.
    let put = |token: Option<&str>| {
        let mut request = http.put(format!("{url}/topology")).body("{}");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let (status, body) = error(put(None).await.unwrap()).await;
    assert_eq!(
        (status, body.code.as_str()),
        (401, "operator_token_required")
    );
    let (status, body) = error(put(Some("guess")).await.unwrap()).await;
    assert_eq!(
        (status, body.code.as_str()),
        (403, "operator_token_invalid")
    );
    let (status, body) = error(put(Some("secret")).await.unwrap()).await;
    assert_eq!((status, body.code.as_str()), (400, "invalid_request"));

    // Unknown paths: the JSON 404.
    let (status, body) = error(http.get(format!("{url}/nowhere")).send().await.unwrap()).await;
    assert_eq!((status, body.code.as_str()), (404, "not_found"));

    // The event stream.
    let events = http.get(format!("{url}/events")).send().await.unwrap();
    assert_eq!(events.status().as_u16(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    drop(events);

    shutdown.stop().await;
}

/// HTTPS settings are checked before the market starts: half of them, or files that cannot be
/// read, refuse to start with a message naming the setting.
#[tokio::test]
async fn bad_tls_settings_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let base = MarketConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("m.db").display()),
        ..MarketConfig::default()
    };
    let half = MarketConfig {
        tls_cert: Some(dir.path().join("cert.pem")),
        ..base.clone()
    };
    let missing = MarketConfig {
        tls_cert: Some(dir.path().join("cert.pem")),
        tls_key: Some(dir.path().join("key.pem")),
        ..base
    };
    for config in [half, missing] {
        let shutdown = Shutdown::new();
        let refused = serve(config, Clock::system(), shutdown.clone()).await;
        let Err(error) = refused else {
            panic!("the market started with bad TLS settings");
        };
        assert!(
            matches!(error, market_engine::MarketError::Tls(_)),
            "{error}"
        );
        assert!(error.to_string().contains("HTTPS"), "{error}");
        shutdown.stop().await;
    }
}
