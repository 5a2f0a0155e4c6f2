//! The OpenAPI document, generated from the handlers' annotations, served at `/openapi.json`,
//! and Swagger UI at `/docs` (assets compiled in: nothing is fetched at build or view time).

use crate::{KilnHttp, management, ops, status};
use axum::Router;
use utoipa::OpenApi;
use utoipa::openapi::RefOr;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
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

/// The OpenAPI document of Kiln's own routes merged with the application's (its starters);
/// `orchestrations` are the names the management API starts.
pub(crate) fn document(app: utoipa::openapi::OpenApi, orchestrations: &[String]) -> utoipa::openapi::OpenApi {
    let mut doc = KilnApi::openapi();
    doc.merge(app);
    for path in [
        "/runtime/webhooks/durabletask/orchestrators/{name}/{id}",
        "/runtime/webhooks/durabletask/orchestrators/{name}",
    ] {
        if let Some(start) = doc.paths.paths.get_mut(path).and_then(|item| item.post.as_mut()) {
            describe_start(start, orchestrations);
        }
    }
    let operate = "/runtime/webhooks/durabletask/instances/{id}/{operation}";
    if let Some(operate) = doc.paths.paths.get_mut(operate).and_then(|item| item.post.as_mut()) {
        let operations = ["terminate", "suspend", "resume", "rewind", "restart"].map(str::to_owned);
        restrict(operate, "operation", &operations);
    }
    doc
}

/// Says which values a path parameter takes.
fn restrict(operation: &mut Operation, parameter: &str, values: &[String]) {
    let one_of = ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values.to_vec())).build();
    for found in operation.parameters.iter_mut().flatten().filter(|p| p.name == parameter) {
        found.schema = Some(RefOr::T(one_of.clone().into()));
    }
}

/// A management start: the names it takes, and links from the instance it started to the
/// operations on it, so that a client (or schemathesis's stateful phase) can follow them with
/// the real id.
fn describe_start(start: &mut Operation, orchestrations: &[String]) {
    restrict(start, "name", orchestrations);
    let Some(RefOr::T(accepted)) = start.responses.responses.get_mut("202") else { return };
    let operations =
        [("GetStatus", "status"), ("RaiseEvent", "raise_event"), ("Operate", "operate"), ("Purge", "purge")];
    for (link, operation_id) in operations {
        let to = LinkBuilder::new().operation_id(operation_id).parameter("id", "$response.body#/id").build();
        accepted.links.insert(link.to_owned(), RefOr::T(to));
    }
}

pub(crate) fn routes(doc: utoipa::openapi::OpenApi) -> Router<KilnHttp> {
    Router::from(SwaggerUi::new("/docs").url("/openapi.json", doc))
}
