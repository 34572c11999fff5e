//! The HTTP kit every gridmesh server shares (feature `http`), so that errors, authentication,
//! event streams and limits behave the same on every port.
//!
//! - [`ApiError`]: the one error answer, JSON `{"code": "snake_case", "message": "sentence"}`
//!   with a 4xx/5xx status ([`ErrorBody`] is that body, for clients);
//! - [`ApiJson`], [`ApiQuery`], [`ApiPath`]: axum's `Json`, `Query` and `Path` extractors whose
//!   rejections are [`ApiError`]s saying what is wrong with the input (and `ApiJson` is also a
//!   JSON response);
//! - [`check_bearer`] and the [`OperatorAuth`] extractor: a constant-time check of
//!   `Authorization: Bearer <token>`, answering 401 with what to send;
//! - [`sse_from_broadcast`]: a tokio broadcast receiver as server-sent events, with keep-alive;
//!   receivers that lag skip what they missed with a warning;
//! - [`layers`]: tower-http tracing, a request timeout, a request body limit and a concurrency
//!   limit on any router, sized by [`HttpLimits`];
//! - [`serve`]: a router on a listener with a header read timeout (slowloris), an idle timeout,
//!   a connection limit, optional TLS from PEM files and graceful shutdown, set by
//!   [`ServeOptions`].
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use gridmesh_runtime::http::{ApiError, ApiJson, HttpLimits, layers};
//!
//! #[derive(serde::Deserialize, serde::Serialize)]
//! struct Echo {
//!     text: String,
//! }
//!
//! async fn echo(ApiJson(body): ApiJson<Echo>) -> Result<ApiJson<Echo>, ApiError> {
//!     if body.text.is_empty() {
//!         return Err(ApiError::bad_request("`text` is empty; send at least one character"));
//!     }
//!     Ok(ApiJson(body))
//! }
//!
//! let app: Router = layers(Router::new().route("/echo", post(echo)), &HttpLimits::default());
//! ```

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures::{Stream, StreamExt as _};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

mod serve;
pub use serve::{ServeError, ServeOptions, TlsFiles, serve};

/// The body of every error answer: `{"code": "snake_case", "message": "human sentence"}`.
///
/// Servers produce it through [`ApiError`]; clients deserialise it to show the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable, machine-readable code such as `bad_request` or `unauthorized`.
    pub code: String,
    /// What is wrong and, where possible, what to do about it.
    pub message: String,
}

/// An HTTP error answer: a status and the JSON body `{"code", "message"}`.
///
/// Server errors (5xx) built with [`ApiError::internal`] log their details through `tracing`
/// and send the client only a generic sentence, so database text never leaves the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status (4xx or 5xx).
    pub status: StatusCode,
    /// The stable code, snake_case.
    pub code: Cow<'static, str>,
    /// The human sentence sent to the client.
    pub message: String,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 503 `service_unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            message,
        )
    }

    /// 500 `internal`: logs `detail` at error level and tells the client only that the
    /// operator's log has the details.
    pub fn internal(detail: impl fmt::Display) -> Self {
        tracing::error!(error = %detail, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server could not complete the request; the operator's log has the details",
        )
    }

    /// The JSON body this error answers with.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_string(),
            message: self.message.clone(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// The message of a body over the limit when the limit is not known where it is detected.
const TOO_LARGE: &str = "the request body is over this server's size limit; send less at once";

/// The code of a rejection with a status axum chose: the status decides the code.
fn rejection_code(status: StatusCode, client_code: &'static str) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => client_code,
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match &rejection {
            JsonRejection::JsonDataError(_) => "invalid_body",
            JsonRejection::JsonSyntaxError(_) => "invalid_json",
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            _ => "bad_request",
        };
        let message = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                "the body must be JSON: send `Content-Type: application/json`".to_owned()
            }
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => TOO_LARGE.to_owned(),
            _ => format!("the JSON body was refused: {}", rejection.body_text()),
        };
        ApiError::new(status, rejection_code(status, code), message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let status = rejection.status();
        ApiError::new(
            status,
            rejection_code(status, "invalid_query"),
            format!("the query string was refused: {}", rejection.body_text()),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        let status = rejection.status();
        ApiError::new(
            status,
            rejection_code(status, "invalid_path"),
            format!("the URL path was refused: {}", rejection.body_text()),
        )
    }
}

/// axum's `Json` whose rejection is an [`ApiError`] (`invalid_json`, `invalid_body`,
/// `unsupported_media_type` or `body_too_large`, with axum's status); as a response it is
/// `Json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// axum's `Query` whose rejection is an [`ApiError`] (400 `invalid_query`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(value))
    }
}

/// axum's `Path` whose rejection is an [`ApiError`] (400 `invalid_path`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(value))
    }
}

/// Checks `Authorization: Bearer <token>` against `expected`, comparing in constant time with
/// respect to the token's content (only its length can leak).
///
/// Answers 401 `unauthorized` when the header is missing, malformed or names another token.
/// An empty `expected` token never matches.
pub fn check_bearer(headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    use subtle::ConstantTimeEq;
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "this endpoint needs the operator's token: send `Authorization: Bearer <operator token>`",
        ));
    };
    let Some(sent) = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return Err(ApiError::unauthorized(
            "the Authorization header is not `Bearer <operator token>`",
        ));
    };
    let same: bool = sent.as_bytes().ct_eq(expected.as_bytes()).into();
    if same && !expected.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "the bearer token is not this server's operator token; check the operator_token in its config",
        ))
    }
}

/// The operator token a server expects, part of its handler state (`FromRef`) so that
/// [`OperatorAuth`] can find it. `None` disables the endpoints that require it.
#[derive(Debug, Clone, Default)]
pub struct OperatorToken(pub Option<Arc<str>>);

impl OperatorToken {
    /// A token from configuration; `None` or an empty string means "no operator token".
    pub fn new(token: Option<&str>) -> Self {
        OperatorToken(token.filter(|t| !t.is_empty()).map(Arc::from))
    }
}

/// An extractor that admits a request only with the operator's bearer token (see
/// [`check_bearer`]): 401 `unauthorized` on a missing or wrong token, 403 `operator_disabled`
/// when the server has no operator token configured.
#[derive(Debug, Clone, Copy)]
pub struct OperatorAuth;

impl<S> FromRequestParts<S> for OperatorAuth
where
    OperatorToken: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let OperatorToken(expected) = OperatorToken::from_ref(state);
        let Some(expected) = expected else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "operator_disabled",
                "no operator token is configured; set operator_token in this server's config",
            ));
        };
        check_bearer(&parts.headers, &expected)?;
        Ok(OperatorAuth)
    }
}

/// The keep-alive interval of [`sse_from_broadcast`] streams (axum's default, 15 s): a comment
/// line that keeps proxies from closing an idle stream.
pub const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The events of a broadcast receiver as an SSE event stream, without the keep-alive (for
/// chaining a first event before it; [`sse_from_broadcast`] wraps it).
///
/// `to_event` turns a message into an event (`None` skips it). A receiver that lagged skips the
/// messages it missed, with a warning; the stream ends when the channel closes or `stop` is
/// cancelled (so graceful shutdown need not wait for open streams).
pub fn broadcast_events<T, F>(
    receiver: broadcast::Receiver<T>,
    stop: CancellationToken,
    mut to_event: F,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static
where
    T: Clone + Send + 'static,
    F: FnMut(T) -> Option<Event> + Send + 'static,
{
    futures::stream::unfold((receiver, stop), |(mut receiver, stop)| async move {
        loop {
            let received = tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                r = receiver.recv() => r,
            };
            match received {
                Ok(message) => return Some((message, (receiver, stop))),
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, "an event stream lagged; skipping missed events");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .filter_map(move |message| std::future::ready(to_event(message).map(Ok)))
}

/// A broadcast receiver as an SSE response, with a keep-alive every [`SSE_KEEP_ALIVE`]; see
/// [`broadcast_events`] for lagging, the end of the stream and `to_event`.
pub fn sse_from_broadcast<T, F>(
    receiver: broadcast::Receiver<T>,
    stop: CancellationToken,
    to_event: F,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static>
where
    T: Clone + Send + 'static,
    F: FnMut(T) -> Option<Event> + Send + 'static,
{
    Sse::new(broadcast_events(receiver, stop, to_event))
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
}

/// The limits [`layers`] applies to a router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long a request may take until its response starts (default 30 s); `None` for no
    /// limit. A request over it answers 503 `timeout`. Event streams are not affected once
    /// they have started. Tests with paused tokio time should pass `None`: paused time jumps
    /// ahead while a handler waits for real I/O.
    pub request_timeout: Option<Duration>,
    /// The largest request body in bytes (default 2 MiB, axum's own default); larger bodies
    /// answer 413 `body_too_large`.
    pub max_body_bytes: usize,
    /// How many requests are handled at once (default 256); further requests wait for a slot
    /// (within their timeout).
    pub max_concurrent_requests: usize,
}

impl HttpLimits {
    /// The default request timeout, 30 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default body limit, 2 MiB.
    pub const DEFAULT_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
    /// The default concurrency limit, 256 requests.
    pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 256;
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            request_timeout: Some(Self::DEFAULT_TIMEOUT),
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
            max_concurrent_requests: Self::DEFAULT_MAX_CONCURRENT_REQUESTS,
        }
    }
}

/// The status a timed-out request answers with.
const TIMEOUT_STATUS: StatusCode = StatusCode::SERVICE_UNAVAILABLE;

/// Adds the standard layers to every route (and the fallback) of `router`, outermost first:
/// tower-http `TraceLayer` (a span per request, errors logged), the `{code, message}` body for
/// the layers' own answers, `TimeoutLayer`, `RequestBodyLimitLayer` (plus axum's
/// `DefaultBodyLimit` at the same size) and a router-wide concurrency limit.
///
/// Call it after the last route is added.
pub fn layers<S>(router: Router<S>, limits: &HttpLimits) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let max_body = limits.max_body_bytes;
    let router = router
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.max_concurrent_requests.max(1),
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body));
    let router = match limits.request_timeout {
        Some(timeout) => router.layer(tower_http::timeout::TimeoutLayer::with_status_code(
            TIMEOUT_STATUS,
            timeout,
        )),
        None => router,
    };
    router
        .layer(axum::middleware::map_response(move |response: Response| {
            std::future::ready(json_errors(response, max_body))
        }))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Gives the layers' own error answers (an empty 503 on timeout, a plain-text 413 from the body
/// limit) the `{code, message}` body; JSON answers pass unchanged.
fn json_errors(response: Response, max_body: usize) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let status = response.status();
    let error = if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "body_too_large",
            format!("the request body is over the limit of {max_body} bytes; send less at once"),
        )
    } else if status == TIMEOUT_STATUS && !response.headers().contains_key(header::CONTENT_TYPE) {
        ApiError::new(
            status,
            "timeout",
            "the server did not answer in time; retry later",
        )
    } else {
        return response;
    };
    error.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::HeaderValue;
    use axum::routing::{get, post};
    use tower::ServiceExt as _;

    #[derive(Debug, Deserialize, Serialize)]
    struct Order {
        wh: i64,
    }

    #[derive(Debug, Deserialize)]
    struct Page {
        limit: u32,
    }

    #[derive(Clone)]
    struct State {
        token: OperatorToken,
    }

    impl FromRef<State> for OperatorToken {
        fn from_ref(state: &State) -> Self {
            state.token.clone()
        }
    }

    async fn post_order(ApiJson(order): ApiJson<Order>) -> ApiJson<Order> {
        ApiJson(order)
    }

    async fn get_page(ApiQuery(page): ApiQuery<Page>) -> String {
        page.limit.to_string()
    }

    async fn get_item(ApiPath(id): ApiPath<u32>) -> String {
        id.to_string()
    }

    async fn operator_only(_: OperatorAuth) -> &'static str {
        "ok"
    }

    async fn slow() -> &'static str {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        "late"
    }

    fn app(token: Option<&str>, limits: HttpLimits) -> Router {
        let router = Router::new()
            .route("/orders", post(post_order))
            .route("/page", get(get_page))
            .route("/items/{id}", get(get_item))
            .route("/operator", post(operator_only))
            .route("/slow", get(slow))
            .with_state(State {
                token: OperatorToken::new(token),
            });
        layers(router, &limits)
    }

    async fn call(router: Router, request: Request) -> (StatusCode, String, Option<String>) {
        let response = router.oneshot(request).await.expect("infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            String::from_utf8(body.to_vec()).unwrap(),
            content_type,
        )
    }

    fn json_post(uri: &str, body: &str) -> Request {
        Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    fn error_body(body: &str) -> ErrorBody {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not {{code, message}}: {body}: {e}"))
    }

    #[tokio::test]
    async fn a_valid_body_passes_and_answers_json() {
        let (status, body, ct) = call(
            app(None, HttpLimits::default()),
            json_post("/orders", r#"{"wh": 5}"#),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, r#"{"wh":5}"#);
        assert_eq!(ct.as_deref(), Some("application/json"));
    }

    #[tokio::test]
    async fn a_malformed_body_answers_400_code_and_message() {
        let (status, body, ct) = call(
            app(None, HttpLimits::default()),
            json_post("/orders", r#"{"wh": "#),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(ct.as_deref(), Some("application/json"));
        let error = error_body(&body);
        assert_eq!(error.code, "invalid_json");
        assert!(error.message.contains("JSON"), "{}", error.message);
    }

    #[tokio::test]
    async fn a_body_of_the_wrong_shape_names_the_field() {
        let (status, body, _) = call(
            app(None, HttpLimits::default()),
            json_post("/orders", r#"{"kwh": 5}"#),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let error = error_body(&body);
        assert_eq!(error.code, "invalid_body");
        assert!(error.message.contains("wh"), "{}", error.message);
    }

    #[tokio::test]
    async fn a_body_without_json_content_type_answers_415_json() {
        let request = Request::post("/orders")
            .body(Body::from(r#"{"wh": 5}"#))
            .unwrap();
        let (status, body, _) = call(app(None, HttpLimits::default()), request).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(error_body(&body).code, "unsupported_media_type");
    }

    #[tokio::test]
    async fn a_bad_query_and_a_bad_path_answer_400_json() {
        let router = app(None, HttpLimits::default());
        let request = Request::get("/page?limit=many")
            .body(Body::empty())
            .unwrap();
        let (status, body, _) = call(router.clone(), request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let error = error_body(&body);
        assert_eq!(error.code, "invalid_query");
        assert!(error.message.contains("limit"), "{}", error.message);

        let request = Request::get("/items/seven").body(Body::empty()).unwrap();
        let (status, body, _) = call(router.clone(), request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(error_body(&body).code, "invalid_path");

        let request = Request::get("/items/7").body(Body::empty()).unwrap();
        assert_eq!(call(router, request).await.1, "7");
    }

    #[tokio::test]
    async fn an_oversized_body_answers_413_json() {
        let limits = HttpLimits {
            max_body_bytes: 16,
            ..HttpLimits::default()
        };
        let big = format!(r#"{{"wh": {}}}"#, "1".repeat(40));
        // Without Content-Length the extractor finds out while reading the body ...
        let (status, body, _) = call(app(None, limits), json_post("/orders", &big)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let error = error_body(&body);
        assert_eq!(error.code, "body_too_large");
        assert!(error.message.contains("size limit"), "{}", error.message);
        // ... with it the body-limit layer refuses at once.
        let mut request = json_post("/orders", &big);
        request
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(big.len()));
        let (status, body, _) = call(app(None, limits), request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let error = error_body(&body);
        assert_eq!(error.code, "body_too_large");
        assert!(error.message.contains("16 bytes"), "{}", error.message);
    }

    #[tokio::test]
    async fn the_bearer_token_is_checked() {
        let router = app(Some("s3cret"), HttpLimits::default());
        let with = |auth: Option<&str>| {
            let mut request = Request::post("/operator");
            if let Some(auth) = auth {
                request = request.header(header::AUTHORIZATION, auth);
            }
            request.body(Body::empty()).unwrap()
        };
        let (status, body, _) = call(router.clone(), with(Some("Bearer s3cret"))).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));

        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cre"),
            Some("s3cret"),
        ] {
            let (status, body, _) = call(router.clone(), with(auth)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
            let error = error_body(&body);
            assert_eq!(error.code, "unauthorized");
            assert!(error.message.contains("Bearer") || error.message.contains("bearer"));
        }

        // No token configured: the endpoint is disabled, whatever is sent.
        let (status, body, _) = call(
            app(None, HttpLimits::default()),
            with(Some("Bearer s3cret")),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(error_body(&body).code, "operator_disabled");
    }

    #[test]
    fn an_empty_expected_token_never_matches() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert!(check_bearer(&headers, "").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_times_out_with_json() {
        let limits = HttpLimits {
            request_timeout: Some(Duration::from_secs(1)),
            ..HttpLimits::default()
        };
        let request = Request::get("/slow").body(Body::empty()).unwrap();
        let (status, body, _) = call(app(None, limits), request).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_body(&body).code, "timeout");
    }

    #[tokio::test]
    async fn the_concurrency_limit_queues_requests() {
        let limits = HttpLimits {
            max_concurrent_requests: 1,
            ..HttpLimits::default()
        };
        let router = app(None, limits);
        let calls = (0..4).map(|i| {
            let request = Request::get(format!("/items/{i}"))
                .body(Body::empty())
                .unwrap();
            call(router.clone(), request)
        });
        let answers = futures::future::join_all(calls).await;
        assert!(answers.iter().all(|(s, _, _)| *s == StatusCode::OK));
    }

    #[tokio::test]
    async fn sse_yields_broadcast_events_and_skips_after_lag() {
        let (tx, rx) = broadcast::channel::<u32>(2);
        let stop = CancellationToken::new();
        let events = broadcast_events(rx, stop.clone(), |n| {
            (n != 3).then(|| Event::default().event("n").data(n.to_string()))
        });
        let mut events = Box::pin(events);
        // Five sends into a channel of two: the receiver lags and keeps the newest two.
        for n in 1..=5 {
            tx.send(n).unwrap();
        }
        let first = events.next().await.unwrap().unwrap();
        let second = events.next().await.unwrap().unwrap();
        let text = format!("{first:?} {second:?}");
        assert!(text.contains('4'), "{text}");
        assert!(text.contains("5"), "{text}");
        tx.send(3).unwrap(); // skipped by to_event
        tx.send(6).unwrap();
        let third = events.next().await.unwrap().unwrap();
        assert!(format!("{third:?}").contains('6'));
        stop.cancel();
        assert!(events.next().await.is_none(), "the stream ends on stop");
    }

    #[tokio::test]
    async fn sse_response_streams_events_until_the_channel_closes() {
        let (tx, _) = broadcast::channel::<&'static str>(8);
        let sender = tx.clone();
        let router = Router::new().route(
            "/events",
            get(move || {
                let rx = sender.subscribe();
                async move {
                    sse_from_broadcast(rx, CancellationToken::new(), |m| {
                        Some(Event::default().event("update").data(m))
                    })
                }
            }),
        );
        let response = router
            .oneshot(Request::get("/events").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).unwrap(),
            "text/event-stream"
        );
        tx.send("hello").unwrap();
        drop(tx);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("event: update\ndata: hello\n"), "{text}");
    }
}
