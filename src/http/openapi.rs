//! The OpenAPI 3.1 document of each port, generated from the handlers'
//! `#[utoipa::path]` attributes and served at `GET /openapi.json`.
//!
//! Every port serves the operations endpoints; the command port adds the
//! command routes, the query port the query routes, and the query and
//! consumer ports the admin routes when `ADMIN_TOKEN` is set. A test checks that the
//! document names exactly the routes a port serves and that real answers
//! match its schemas.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use utoipa::OpenApi;

use crate::http::{accounts, admin, command, ops, query, shop, shop_query};

/// The JSON error every 4xx and 5xx answer of chronolog's own carries.
#[derive(utoipa::ToSchema)]
#[schema(as = Error)]
#[allow(dead_code)] // Describes the body `ApiError` writes; never built.
pub struct ErrorSchema {
    /// A stable machine-readable code (`invalid_timestamp`, `not_found`, ...).
    error: String,
    /// What was wrong, for people; echoes at most 64 characters of any
    /// client value.
    message: String,
}

/// The JSON error of the accounts and shop routes: the common shape plus
/// the request field at fault and, for `insufficient_stock` and
/// `stock_limit`, the product.
#[derive(utoipa::ToSchema)]
#[schema(as = ContextError)]
#[allow(dead_code)] // Describes the body `ContextError` writes; never built.
pub struct ContextErrorSchema {
    /// A stable machine-readable code (`invalid_field`, `insufficient_stock`, ...).
    error: String,
    /// What was wrong, for people.
    message: String,
    /// The request field at fault, as a path (`items[1].quantity`).
    field: Option<String>,
    /// `insufficient_stock`, `stock_limit`: the product.
    #[serde(rename = "productId")]
    product_id: Option<uuid::Uuid>,
    /// `insufficient_stock`, `stock_limit`: its name.
    #[serde(rename = "productName")]
    product_name: Option<String>,
    /// `insufficient_stock`: how many were asked; `stock_limit`: how many
    /// the order would give back.
    requested: Option<i64>,
    /// `insufficient_stock`: how many are left; `stock_limit`: how many more
    /// the stock can take.
    available: Option<i64>,
}

/// `POST /api/v1/products`.
#[derive(utoipa::ToSchema)]
#[schema(as = NewProduct)]
#[allow(dead_code)] // Describes a request body; never built.
pub struct NewProductSchema {
    /// 1 to 200 characters.
    name: String,
    /// A number or a string with at most two decimals, 0.01 and up.
    #[schema(value_type = String, example = "19.99")]
    price: String,
    /// Items in stock, 0 or more.
    stock: i32,
}

/// `PUT /api/v1/products/{id}`: any of the fields.
#[derive(utoipa::ToSchema)]
#[schema(as = ProductChange)]
#[allow(dead_code)] // Describes a request body; never built.
pub struct ProductChangeSchema {
    /// 1 to 200 characters.
    name: Option<String>,
    /// A number or a string with at most two decimals.
    #[schema(value_type = Option<String>, example = "17.50")]
    price: Option<String>,
    /// Items in stock, 0 or more.
    stock: Option<i32>,
}

/// `POST /api/v1/orders`.
#[derive(utoipa::ToSchema)]
#[schema(as = NewOrder)]
#[allow(dead_code)] // Describes a request body; never built.
pub struct NewOrderSchema {
    /// The customer (shop's copy of it must exist).
    #[serde(rename = "customerId")]
    customer_id: i64,
    /// At least one item.
    items: Vec<NewOrderItemSchema>,
}

/// One item of `POST /api/v1/orders`.
#[derive(utoipa::ToSchema)]
#[schema(as = NewOrderItem)]
#[allow(dead_code)] // Describes a request body; never built.
pub struct NewOrderItemSchema {
    /// The product.
    #[serde(rename = "productId")]
    product_id: uuid::Uuid,
    /// 1 or more.
    quantity: i32,
}

/// The body of `/health`.
#[derive(utoipa::ToSchema)]
#[schema(as = Health)]
#[allow(dead_code)] // Describes the body `health` writes; never built.
pub struct HealthSchema {
    /// Always `UP`.
    status: String,
}

/// The body of `/ready`.
#[derive(utoipa::ToSchema)]
#[schema(as = Ready)]
#[allow(dead_code)] // Describes the body `ready` writes; never built.
pub struct ReadySchema {
    /// `UP` when no component is `DOWN`, else `DOWN`.
    status: String,
    /// When the dependencies were last checked (RFC 3339).
    #[schema(format = DateTime)]
    checked_at: String,
    /// Each dependency of this process's roles: `database`, `broker`,
    /// `partitions`, `topics`.
    components: BTreeMap<String, ComponentSchema>,
}

/// One dependency on `/ready`, with its own details beside `status`.
#[derive(utoipa::ToSchema)]
#[schema(as = Component)]
#[allow(dead_code)] // Describes the body `ready` writes; never built.
pub struct ComponentSchema {
    /// `UP`, `DOWN`, or `WARN` (shown, not failed on).
    status: String,
}

/// The `correlationId` request header.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Describes a header; never built.
pub struct CorrelationIdHeader {
    /// Carried with the command into the log and echoed in the answer;
    /// generated when absent. At most 128 characters of `A-Za-z0-9._:-`.
    #[param(rename = "correlationId")]
    correlation_id: Option<String>,
}

/// The `Idempotency-Key` request header.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Describes a header; never built.
pub struct IdempotencyKeyHeader {
    /// A retry with the same key (from any command process, within
    /// `IDEMPOTENCY_KEY_TTL`) gets the same command id and adds no record.
    /// 1 to 128 characters of `A-Za-z0-9._:-`.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "chronolog"),
    paths(ops::health, ops::ready, ops::render_metrics, openapi_json),
    components(schemas(ErrorSchema, HealthSchema, ReadySchema, ComponentSchema)),
    tags(
        (name = "operations", description = "Served on every port"),
        (name = "timestamp", description = "The timestamp service: commands into the log, queries from the view"),
    )
)]
struct OperationsDoc;

#[derive(OpenApi)]
#[openapi(
    paths(command::submit_now, command::submit_at, command::submit_app),
    components(schemas(command::Accepted, command::Created))
)]
struct CommandDoc;

#[derive(OpenApi)]
#[openapi(
    paths(
        accounts::create,
        accounts::get,
        accounts::delete,
        shop::create_product,
        shop::update_product,
        shop::delete_product,
        shop::place_order,
        shop::delete_order,
    ),
    components(schemas(
        ContextErrorSchema,
        NewProductSchema,
        ProductChangeSchema,
        NewOrderSchema,
        NewOrderItemSchema,
        accounts::Saved,
        accounts::Stored,
        crate::accounts::Customer,
        crate::shop::Product,
        crate::shop::Order,
    )),
    tags(
        (name = "accounts", description = "The accounts context: the system of record for customers"),
        (name = "shop", description = "The shop context: products, stock and orders"),
    )
)]
struct ShopDoc;

#[derive(OpenApi)]
#[openapi(
    paths(
        query::get_timestamp,
        shop_query::list_orders,
        shop_query::customer_orders,
        shop_query::get_order,
        shop_query::get_product,
        shop_query::product_sales,
    ),
    components(schemas(
        query::RecordView,
        ContextErrorSchema,
        shop_query::OrderList,
        crate::shop::views::OrderDocument,
        crate::shop::views::CustomerOrders,
        crate::shop::views::Sale,
        crate::shop::Product,
    )),
    tags((name = "shop", description = "The shop context's views: orders, products and their sales")),
)]
struct QueryDoc;

#[derive(OpenApi)]
#[openapi(
    paths(admin::list, admin::get, admin::put, admin::delete, admin::history),
    components(schemas(
        admin::PipelineList,
        admin::PipelineView,
        admin::PartitionView,
        admin::Records,
        admin::AppliedView,
        admin::History,
        admin::VersionView,
        admin::PipelineDefinitionSchema,
        admin::SinkSchema,
        admin::AdminErrorSchema,
    )),
    modifiers(&AdminToken),
    tags((name = "admin", description = "Pipelines: served only when ADMIN_TOKEN is set, with `Authorization: Bearer <ADMIN_TOKEN>`")),
)]
struct AdminDoc;

/// The `admin_token` security scheme: `Authorization: Bearer <ADMIN_TOKEN>`.
struct AdminToken;

impl utoipa::Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("ADMIN_TOKEN"))
                    .build(),
            ),
        );
    }
}

/// The document of the server called `server` (`command`, `query` or
/// `consumer`), as JSON; with the admin routes when `admin` (they are
/// served only when `ADMIN_TOKEN` is set).
pub fn document(server: &str, admin: bool) -> String {
    let mut doc = OperationsDoc::openapi();
    match server {
        "command" => {
            doc.merge(CommandDoc::openapi());
            doc.merge(ShopDoc::openapi());
        }
        "query" => doc.merge(QueryDoc::openapi()),
        _ => {}
    }
    if admin {
        doc.merge(AdminDoc::openapi());
    }
    doc.info.description = Some(format!(
        "chronolog's {server} port: commands go into a Kafka topic, the golden record; \
         consumers project it into PostgreSQL; queries read that view."
    ));
    // Serialising the document cannot fail: it holds strings, maps and numbers.
    serde_json::to_string(&doc).unwrap_or_default()
}

/// The port's OpenAPI document, shared by its workers.
#[derive(Clone)]
pub struct Document(pub web::Bytes);

/// This port's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this port", content_type = "application/json")))]
pub async fn openapi_json(document: web::Data<Document>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document.0.clone())
}
