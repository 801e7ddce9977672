//! HTTP servers: the command API, the query API, the operations
//! endpoints and the admin API ([`admin`]), with the middleware and error mapping they share.
//!
//! Every server bounds what a client can hold:
//!
//! * a request head must arrive within [`REQUEST_HEAD_TIMEOUT`] (else actix
//!   answers 408 and closes);
//! * an idle keep-alive connection is closed after [`KEEP_ALIVE`], and a
//!   closing one is dropped [`DISCONNECT_TIMEOUT`] later;
//! * a client that stops taking an answer (its receive window stays shut,
//!   or nothing it is sent is acknowledged) is disconnected by the kernel
//!   after [`WRITE_TIMEOUT`] (`TCP_USER_TIMEOUT` on the listening socket,
//!   which accepted connections inherit): actix-web 4 has no write deadline
//!   of its own, and without one such a client holds its answer in memory
//!   for as long as it keeps the connection open.

pub mod accounts;
pub mod admin;
pub mod command;
pub mod error;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod query;
pub mod shop;
pub mod shop_query;
pub mod wait;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, Resource, Route as WebRoute};
use actix_web::{guard, web};

use crate::http::error::{ApiError, shorten};
use crate::metrics::Metrics;

/// Longest a client may take to send a request head.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle connection is kept open for the client's next request.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// How long a connection being closed waits for the client to close its side.
pub const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest an answer may sit unacknowledged (or untransmitted because the
/// client does not read) before the connection is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The pattern of the resource that served a request: the `route` label of
/// the HTTP metrics. Kept in the resource's data, so that labelling a request
/// costs a lookup rather than matching its path against every route again.
#[derive(Debug, Clone, Copy)]
pub struct Route(pub &'static str);

/// A resource whose pattern is also its `route` label.
pub fn resource(pattern: &'static str) -> Resource {
    web::resource(pattern).app_data(Route(pattern))
}

/// A route for `GET` and `HEAD`: whatever can be read can have its headers
/// read alone (actix leaves the body out of a `HEAD` answer).
pub fn get_or_head() -> WebRoute {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// A bound, running HTTP server.
pub struct RunningServer {
    /// The address it listens on (port 0 resolved).
    pub addr: SocketAddr,
    /// Stops it.
    pub handle: ServerHandle,
    server: Option<Server>,
    /// The view watcher of the query server, and its loop.
    watcher: Option<(Arc<wait::ViewWatcher>, tokio::task::AbortHandle)>,
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

    /// Gives the server the view watcher its `Prefer: wait` requests use,
    /// with the watcher's loop: the waits end when the server stops, and
    /// the loop when the server is dropped.
    pub fn watch_view(&mut self, watcher: Arc<wait::ViewWatcher>, task: tokio::task::AbortHandle) {
        self.watcher = Some((watcher, task));
    }

    /// Stops the server: no new connections; requests in flight get their
    /// answer, and those waiting for a record get theirs (404) at once
    /// rather than at their deadline.
    pub async fn stop(&self) {
        if let Some((watcher, _)) = &self.watcher {
            watcher.release();
        }
        self.handle.stop(true).await;
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.watcher {
            task.abort();
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
    bind_with_admin(addr, name, metrics, None, configure)
}

/// [`bind`], plus the admin routes when `admin` is given (`ADMIN_TOKEN` is
/// set): served and documented only then.
pub fn bind_with_admin<F>(
    addr: SocketAddr,
    name: &'static str,
    metrics: Arc<Metrics>,
    admin: Option<admin::Admin>,
    configure: F,
) -> std::io::Result<RunningServer>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let listener = TcpListener::bind(addr)?;
    socket2::SockRef::from(&listener).set_tcp_user_timeout(Some(WRITE_TIMEOUT))?;
    let addr = listener.local_addr()?;
    let metrics = web::Data::from(metrics);
    let document = web::Data::new(openapi::Document(
        openapi::document(name, admin.is_some()).into(),
    ));
    let admin = admin.map(web::Data::new);
    let server = HttpServer::new(move || {
        let admin = admin.clone();
        App::new()
            .app_data(metrics.clone())
            .app_data(document.clone())
            .app_data(web::PathConfig::default().error_handler(|err, _| {
                ApiError::BadRequest(format!("malformed path: {err}")).into()
            }))
            .configure(configure.clone())
            .configure(move |cfg| {
                if let Some(admin) = admin {
                    admin::routes(cfg, admin);
                }
            })
            .configure(ops::routes)
            .default_service(web::to(route_not_found))
            .wrap(actix_web::middleware::from_fn(middleware::observe))
    })
    .client_request_timeout(REQUEST_HEAD_TIMEOUT)
    .keep_alive(KEEP_ALIVE)
    .client_disconnect_timeout(DISCONNECT_TIMEOUT)
    .listen(listener)?
    .disable_signals()
    .shutdown_timeout(30)
    .run();
    tracing::info!(%addr, server = name, "listening");
    Ok(RunningServer {
        addr,
        handle: server.handle(),
        server: Some(server),
        watcher: None,
    })
}

async fn route_not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound {
        method: shorten(req.method().as_str()),
        path: shorten(req.path()),
    })
}

/// A resource's answer to a method it has no route for: `405` with the
/// `Allow` header listing the methods it has (RFC 9110 asks for it).
pub fn not_allowed(allow: &'static str) -> WebRoute {
    web::to(move |req: HttpRequest| async move {
        Err::<HttpResponse, _>(ApiError::MethodNotAllowed {
            method: shorten(req.method().as_str()),
            allow,
        })
    })
}
