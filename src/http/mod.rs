//! HTTP servers: the command API, the query API and the operations
//! endpoints, with the middleware and error mapping they share.

pub mod command;
pub mod error;
pub mod middleware;
pub mod ops;
pub mod query;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, Resource, web};

use crate::http::error::{ApiError, shorten};
use crate::metrics::Metrics;

/// The pattern of the resource that served a request: the `route` label of
/// the HTTP metrics. Kept in the resource's data, so that labelling a request
/// costs a lookup rather than matching its path against every route again.
#[derive(Debug, Clone, Copy)]
pub struct Route(pub &'static str);

/// A resource whose pattern is also its `route` label.
pub fn resource(pattern: &'static str) -> Resource {
    web::resource(pattern).app_data(Route(pattern))
}

/// A bound, running HTTP server.
pub struct RunningServer {
    /// The address it listens on (port 0 resolved).
    pub addr: SocketAddr,
    /// Stops it.
    pub handle: ServerHandle,
    server: Option<Server>,
}

impl RunningServer {
    /// Spawns the server on the current actix system.
    pub fn spawn(&mut self) {
        if let Some(server) = self.server.take() {
            actix_rt::spawn(async move {
                if let Err(error) = server.await {
                    tracing::error!(%error, "http server failed");
                }
            });
        }
    }
}

/// Binds `addr` and builds a server whose app is configured by `configure`
/// (plus the operations routes, the middleware and JSON errors).
pub fn bind<F>(
    addr: SocketAddr,
    name: &'static str,
    metrics: Arc<Metrics>,
    configure: F,
) -> std::io::Result<RunningServer>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let metrics = web::Data::from(metrics);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(metrics.clone())
            .app_data(web::PathConfig::default().error_handler(|err, _| {
                ApiError::BadRequest(format!("malformed path: {err}")).into()
            }))
            .app_data(web::PayloadConfig::new(middleware::BODY_LIMIT))
            .configure(configure.clone())
            .configure(ops::routes)
            .default_service(web::to(route_not_found))
            .wrap(actix_web::middleware::from_fn(middleware::observe))
    })
    .listen(listener)?
    .disable_signals()
    .shutdown_timeout(30)
    .run();
    tracing::info!(%addr, server = name, "listening");
    Ok(RunningServer {
        addr,
        handle: server.handle(),
        server: Some(server),
    })
}

async fn route_not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound {
        method: req.method().to_string(),
        path: shorten(req.path()),
    })
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(req.method().to_string()))
}
