//! The OpenAPI document, generated from the handlers' annotations, served at `/openapi.json`,
//! and Swagger UI at `/docs` (assets compiled in: nothing is fetched at build or view time).

use crate::{KilnHttp, management, ops, status};
use axum::Router;
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa::openapi::RefOr;
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
        management::export_history,
        management::list,
        management::purge,
        management::purge_many,
        management::bulk,
        management::raise_event,
        management::operate,
        management::rotate_token_secret,
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

/// Paths of the management API's starts.
const STARTS: [&str; 2] =
    ["/runtime/webhooks/durabletask/orchestrators/{name}/{id}", "/runtime/webhooks/durabletask/orchestrators/{name}"];

/// The OpenAPI document of Kiln's own routes merged with the application's (its starters), as
/// JSON; `orchestrations` are the names the management API starts.
pub(crate) fn document(app: utoipa::openapi::OpenApi, orchestrations: &[String]) -> Value {
    let mut doc = KilnApi::openapi();
    doc.merge(app);
    for path in STARTS {
        if let Some(start) = doc.paths.paths.get_mut(path).and_then(|item| item.post.as_mut()) {
            restrict(start, "name", orchestrations);
        }
    }
    let operate = "/runtime/webhooks/durabletask/instances/{id}/{operation}";
    if let Some(operate) = doc.paths.paths.get_mut(operate).and_then(|item| item.post.as_mut()) {
        let operations = ["terminate", "suspend", "resume", "rewind", "restart"].map(str::to_owned);
        restrict(operate, "operation", &operations);
    }
    // A document of plain data always serializes.
    let mut json = serde_json::to_value(&doc).unwrap_or_default();
    link_instance_operations(&mut json);
    json
}

/// Says which values a path parameter takes.
fn restrict(operation: &mut Operation, parameter: &str, values: &[String]) {
    let one_of = ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values.to_vec())).build();
    for found in operation.parameters.iter_mut().flatten().filter(|p| p.name == parameter) {
        found.schema = Some(RefOr::T(one_of.clone().into()));
    }
}

/// The operations on one instance, each as (method, path, its success codes, its operationId).
const ON_AN_INSTANCE: [(&str, &str, &[&str], &str); 4] = [
    ("get", "/runtime/webhooks/durabletask/instances/{id}", &["200", "202"], "status"),
    ("post", "/runtime/webhooks/durabletask/instances/{id}/raiseEvent/{event}", &["202"], "raise_event"),
    ("post", "/runtime/webhooks/durabletask/instances/{id}/{operation}", &["202"], "operate"),
    ("delete", "/runtime/webhooks/durabletask/instances/{id}", &["200"], "purge"),
];

/// Links between the management operations on an instance: from a start (its id in the
/// body) and from each operation on an instance (its id in the path) to every operation on
/// that instance, so that a client (or schemathesis's stateful phase) can follow them with the
/// real id — status after a purge, status after a terminate, and so on. Written as JSON:
/// utoipa's `Link` serializes `operationId` as `operation_id`.
fn link_instance_operations(doc: &mut Value) {
    let links_with = |id: &str| {
        let links: serde_json::Map<String, Value> = ON_AN_INSTANCE
            .iter()
            .map(|(_, _, _, operation_id)| {
                (operation_id.to_string(), json!({ "operationId": operation_id, "parameters": { "id": id } }))
            })
            .collect();
        Value::Object(links)
    };
    let pointer = |path: &str, method: &str, code: &str| {
        format!("/paths/{}/{method}/responses/{code}", path.replace('~', "~0").replace('/', "~1"))
    };
    let from_starts = STARTS.map(|path| (pointer(path, "post", "202"), links_with("$response.body#/id")));
    let from_instances = ON_AN_INSTANCE.iter().flat_map(|(method, path, codes, _)| {
        codes.iter().map(|code| (pointer(path, method, code), links_with("$request.path.id")))
    });
    for (at, links) in from_starts.into_iter().chain(from_instances) {
        if let Some(response) = doc.pointer_mut(&at).and_then(Value::as_object_mut) {
            response.insert("links".to_owned(), links);
        }
    }
}

pub(crate) fn routes(doc: Value) -> Router<KilnHttp> {
    Router::from(SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", doc))
}
