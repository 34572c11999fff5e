//! The market's typed error: every way a request or the service can fail, with the HTTP status
//! and the stable snake_case code clients see.

use crate::store::StoreError;

/// Why a market operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    /// The request body or query is malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// The envelope carries another kind of message.
    #[error("the envelope does not carry {0}; sign the right message type")]
    WrongMessage(&'static str),
    /// The signed payload does not decode.
    #[error("the signed order is malformed: {0}")]
    Malformed(String),
    /// Zero, negative or huge quantity.
    #[error("quantity {0} Wh is not allowed; use a positive quantity of at most 1 TWh")]
    InvalidQuantity(i64),
    /// Price out of bounds.
    #[error(
        "limit price {0} is out of range; prices must lie within ±10000000 minor units per MWh"
    )]
    InvalidPrice(i64),
    /// An order in the v1 layout, which names no market zone.
    #[error(
        "the order is signed in the gridmesh/order/v1 layout, which names no market zone and could be replayed from another zone's market; sign it as gridmesh/order/v2 for zone `{zone}` (upgrade the trader CLI or the gateway)"
    )]
    UnzonedOrder {
        /// This market's zone.
        zone: String,
    },
    /// An order signed for another market zone.
    #[error(
        "the order is signed for zone `{order}`, but this market clears zone `{market}`; send it to zone `{order}`'s market, or sign a new order for `{market}`"
    )]
    WrongZone {
        /// This market's zone.
        market: String,
        /// The zone the order names.
        order: String,
    },
    /// The signer is not registered.
    #[error("participant `{0}` is not registered; ask the operator to register it first")]
    UnknownParticipant(String),
    /// The signature does not verify.
    #[error("the signature does not verify: the payload was altered or signed by another key")]
    BadSignature,
    /// Signed by a key other than the registered one in force (after a key rotation, the old
    /// key is refused).
    #[error(
        "the message is signed by a key other than the one in force for `{0}` (after a key rotation the old key is refused)"
    )]
    KeyMismatch(String),
    /// The node does not exist.
    #[error("node `{0}` is not in the market's topology; see GET /topology")]
    UnknownNode(String),
    /// A household ordering at someone else's node.
    #[error(
        "household `{participant}` is connected at `{registered}` and can only trade there, not at `{node}`"
    )]
    WrongNode {
        /// The household.
        participant: String,
        /// Its registered node.
        registered: String,
        /// The node in the order.
        node: String,
    },
    /// The order's interval length differs from the market's.
    #[error(
        "this market clears {expected}-minute intervals; the order is for a {found}-minute interval"
    )]
    WrongIntervalLength {
        /// The market's length.
        expected: u16,
        /// The order's.
        found: u16,
    },
    /// Gate closure has passed.
    #[error(
        "gate closure for interval {interval} was at {closure}; orders for it are no longer accepted — trade the next open interval ({next_open})"
    )]
    GateClosed {
        /// The interval.
        interval: String,
        /// Its gate closure.
        closure: String,
        /// The next open interval.
        next_open: String,
    },
    /// The interval is too far ahead.
    #[error("interval {0} is more than 7 days ahead; orders open 7 days before delivery")]
    TooFarAhead(String),
    /// The nonce was used before.
    #[error(
        "nonce {nonce} of `{participant}` was already used; every order and key rotation needs a fresh nonce"
    )]
    ReplayedNonce {
        /// The participant.
        participant: String,
        /// The nonce.
        nonce: u64,
    },
    /// No such order.
    #[error("`{participant}` has no order with nonce {nonce}")]
    OrderNotFound {
        /// The participant.
        participant: String,
        /// The nonce.
        nonce: u64,
    },
    /// Not cleared yet.
    #[error("interval {0} is not cleared yet; results appear at its gate closure")]
    NotCleared(String),
    /// Something else missing.
    #[error("{0}")]
    NotFound(String),
    /// No operator token sent.
    #[error("this endpoint needs the operator token: send `Authorization: Bearer <token>`")]
    OperatorTokenMissing,
    /// Wrong operator token, or none configured.
    #[error("the operator token is wrong (or no operator token is configured on this market)")]
    OperatorTokenInvalid,
    /// A credential is missing or invalid (the message says which credential is needed).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid credential of a role that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The participant or gateway id is already registered (registration is create-only).
    #[error("{0}")]
    Conflict(String),
    /// The topology is invalid.
    #[error("invalid topology: {0}")]
    InvalidTopology(String),
    /// The database failed.
    #[error("storage failed: {0}")]
    Storage(#[from] StoreError),
    /// The service is shutting down.
    #[error("the market is shutting down; retry against the restarted service")]
    ShuttingDown,
    /// The listen socket could not be bound.
    #[error("cannot listen on {addr}: {source}; is another market-engine running? change `listen`")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The MQTT broker settings are invalid.
    #[error("MQTT: {0}")]
    Mqtt(String),
    /// `tls_cert`/`tls_key` are half set or cannot be read.
    #[error("HTTPS: {0}")]
    Tls(#[from] gridmesh_runtime::http::ServeError),
    /// The market's signing key could not be loaded or created.
    #[error("the market's signing key: {0}")]
    SigningKey(#[from] gridmesh_protocol::keys::KeyFileError),
    /// An operator limit override is invalid.
    #[error("invalid limit override: {0}")]
    InvalidOverride(String),
}

impl MarketError {
    /// The HTTP status and the stable code.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        use MarketError::*;
        match self {
            InvalidRequest(_) => (400, "invalid_request"),
            WrongMessage(_) => (400, "wrong_message"),
            Malformed(_) => (422, "invalid_order"),
            InvalidQuantity(_) => (422, "invalid_quantity"),
            InvalidPrice(_) => (422, "invalid_price"),
            UnzonedOrder { .. } => (422, "unzoned_order"),
            WrongZone { .. } => (422, "wrong_zone"),
            UnknownParticipant(_) => (403, "unknown_participant"),
            BadSignature => (401, "bad_signature"),
            KeyMismatch(_) => (401, "key_mismatch"),
            UnknownNode(_) => (422, "unknown_node"),
            WrongNode { .. } => (403, "wrong_node"),
            WrongIntervalLength { .. } => (422, "wrong_interval_length"),
            GateClosed { .. } => (409, "gate_closed"),
            TooFarAhead(_) => (422, "interval_too_far_ahead"),
            ReplayedNonce { .. } => (409, "replayed_nonce"),
            OrderNotFound { .. } => (404, "order_not_found"),
            NotCleared(_) => (404, "not_cleared"),
            NotFound(_) => (404, "not_found"),
            OperatorTokenMissing => (401, "operator_token_required"),
            OperatorTokenInvalid => (403, "operator_token_invalid"),
            Unauthorized(_) => (401, "unauthorized"),
            Forbidden(_) => (403, "forbidden"),
            Conflict(_) => (409, "conflict"),
            InvalidTopology(_) => (422, "invalid_topology"),
            Storage(_) => (500, "storage_error"),
            ShuttingDown => (503, "shutting_down"),
            Bind { .. } => (500, "bind_failed"),
            Mqtt(_) => (500, "mqtt_error"),
            Tls(_) => (500, "tls_error"),
            SigningKey(_) => (500, "signing_key"),
            InvalidOverride(_) => (400, "invalid_override"),
        }
    }
}
