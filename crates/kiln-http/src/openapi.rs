//! The OpenAPI document, generated from the handlers' annotations, served at `/openapi.json`,
//! and Swagger UI at `/docs` (assets compiled in: nothing is fetched at build or view time).

use crate::{KilnHttp, management, ops, status};
use axum::Router;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Kiln", description = "Durable orchestrations behind an asynchronous HTTP API (202 Accepted + status polling)."),
    paths(
        status::get_status,
        status::cancel,
        management::start,
        management::start_with_random_id,
        management::status,
        management::list,
        management::purge,
        management::purge_many,
        management::raise_event,
        management::operate,
        ops::healthz,
        ops::readyz,
        ops::metrics,
    ),
    components(schemas(crate::AcceptedBody, status::StatusMonitor, status::StatusError)),
    tags(
        (name = "client", description = "Least-privilege status monitor for the clients of starters"),
        (name = "management", description = "Durable Functions' HTTP API (system key on the public listener)"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
struct KilnApi;

/// The OpenAPI document of Kiln's own routes merged with the application's (its starters).
pub(crate) fn document(app: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut doc = KilnApi::openapi();
    doc.merge(app);
    doc
}

pub(crate) fn routes(doc: utoipa::openapi::OpenApi) -> Router<KilnHttp> {
    Router::from(SwaggerUi::new("/docs").url("/openapi.json", doc))
}
