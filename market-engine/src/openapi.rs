//! The OpenAPI 3.1 document's frame: title, description, the operator's bearer scheme and the
//! shared error schema. The operations and their request and response schemas come from the
//! handlers themselves (`#[utoipa::path]` in [`crate::api`]), the schemas from the protocol's
//! types, so the document cannot drift from the code; [`crate::api::document`] is the whole.

use gridmesh_protocol::api::market::ErrorBody;
use gridmesh_protocol::market::IntervalResult;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The frame of the document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "gridmesh market engine",
        description = "Signed orders, gate closure per interval, welfare-maximising double auction under feeder limits, signed results and per-gateway operating envelopes. Prices are integer minor units per MWh, energies integer Wh. Errors are JSON {\"code\",\"message\"} (ErrorBody)."
    ),
    components(schemas(ErrorBody, IntervalResult)),
    modifiers(&OperatorBearer)
)]
struct Frame;

/// Adds the credentials of the access model: the `operator`, `auditor` and `enrolment`
/// bearer tokens, the `participant`'s and the `gateway`'s signed requests.
struct OperatorBearer;

impl Modify for OperatorBearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme("operator", bearer("the operator_token"));
        components.add_security_scheme("auditor", bearer("the auditor_token: reads only"));
        components.add_security_scheme(
            "enrolment",
            bearer("a one-time enrolment token (gme_…) from `market-engine enrolment-token`"),
        );
        components.add_security_scheme(
            "participant",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "a signed request: `Gridmesh <base64 payload>.<base64 signature>` (gridmesh/request/v1, docs/protocol.md)",
            ))),
        );
        components.add_security_scheme(
            "gateway",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "a gateway's signed request: `GridmeshGateway <base64 payload>.<base64 signature>` (gridmesh/gateway-request/v1, docs/protocol.md), by the key it enrolled with",
            ))),
        );
    }
}

/// The document without operations; [`crate::api::openapi_router`] adds them.
pub fn base() -> utoipa::openapi::OpenApi {
    Frame::openapi()
}
