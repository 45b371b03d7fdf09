//! What [`Server::serve`](crate::Server::serve) serves ([`HttpService`]: a tower service,
//! or a [`HyperService`]), and how a response learns that its connection drains: the
//! [`DrainAware`] wrapper of the service of every connection, and the thread-local flag
//! ([`DRAINING`]) that the connection's poll sets for it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::Incoming;
use hyper_util::service::TowerToHyperService;

use crate::peer::ConnectionInfo;

/// A hyper service (such as `hyper::service::service_fn(…)`), for
/// [`Server::serve`](crate::Server::serve): each connection calls a clone of it directly,
/// without going through tower.
#[derive(Debug, Clone, Copy)]
pub struct HyperService<S>(pub S);

/// An error that hyper can report.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What [`Server::serve`](crate::Server::serve) serves: a cloneable tower service of HTTP
/// requests (an axum `Router`), or a hyper service wrapped in [`HyperService`].
/// Implemented for every such service.
///
/// A tower service is called as tower requires, through `poll_ready` on a clone of it per
/// request (hyper-util's `TowerToHyperService`); a [`HyperService`] is called as it is.
pub trait HttpService<B>: Clone + Send + 'static {
    /// The hyper service that serves one connection.
    type Connection: hyper::service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Send
        + 'static;

    /// The service of one connection.
    fn into_connection(self) -> Self::Connection;
}

impl<S, B> HttpService<B> for S
where
    S: tower_service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Clone
        + Send
        + 'static,
{
    type Connection = TowerToHyperService<S>;

    fn into_connection(self) -> Self::Connection {
        TowerToHyperService::new(self)
    }
}

impl<S, B> HttpService<B> for HyperService<S>
where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Clone
        + Send
        + 'static,
{
    type Connection = S;

    fn into_connection(self) -> S {
        self.0
    }
}

/// What makes the service of each connection: a clone of one service
/// ([`Server::serve`](crate::Server::serve): [`Cloned`]), or what a make service returns
/// for the connection ([`Server::serve_with_connect_info`](crate::Server::serve_with_connect_info):
/// [`MakeWith`]).
pub(crate) trait MakeHttpService<B>: Clone + Send + 'static {
    /// The service of a connection.
    type Service: HttpService<B>;

    /// The service of the connection `info` tells about; an error closes the connection.
    fn make(
        self,
        info: ConnectionInfo,
    ) -> impl Future<Output = Result<Self::Service, BoxError>> + Send;
}

/// Serves every connection with a clone of the same service.
#[derive(Debug, Clone)]
pub(crate) struct Cloned<S>(pub(crate) S);

impl<S, B> MakeHttpService<B> for Cloned<S>
where
    S: HttpService<B>,
{
    type Service = S;

    fn make(self, _: ConnectionInfo) -> impl Future<Output = Result<S, BoxError>> + Send {
        std::future::ready(Ok(self.0))
    }
}

/// Serves each connection with the service a tower make service returns for it.
#[derive(Debug, Clone)]
pub(crate) struct MakeWith<M>(pub(crate) M);

impl<M, S, B> MakeHttpService<B> for MakeWith<M>
where
    M: tower_service::Service<ConnectionInfo, Response = S, Error: Into<BoxError>, Future: Send>
        + Clone
        + Send
        + 'static,
    S: HttpService<B>,
{
    type Service = S;

    async fn make(mut self, info: ConnectionInfo) -> Result<S, BoxError> {
        std::future::poll_fn(|cx| self.0.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        self.0.call(info).await.map_err(Into::into)
    }
}

/// A response body [`Server::serve`](crate::Server::serve) can send; implemented for every
/// such body.
pub trait ResponseBody:
    http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ResponseBody for B where
    B: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

thread_local! {
    /// Whether the HTTP/1 connection being polled on this thread drains, for the responses
    /// its service completes meanwhile ([`DrainAwareFuture`]): set around every poll of a
    /// connection served by [`Server::http`](crate::Server::http) ([`poll_draining`]).
    ///
    /// hyper's HTTP/1 dispatcher polls the service's future inside the connection's own
    /// poll, so the response learns of the drain from the poll that completes it, as tokio's
    /// cooperative budget reaches the resources a task polls; the alternative, a handle on
    /// the tracker in every request's future, costs a reference count up and down per
    /// request. (HTTP/2 streams run on tasks of their own, and are left alone.)
    pub(crate) static DRAINING: Cell<bool> = const { Cell::new(false) };
}

/// Polls `conn` with [`DRAINING`] set to `draining`.
#[inline(always)]
pub(crate) fn poll_draining<C: Future>(
    conn: Pin<&mut C>,
    cx: &mut Context<'_>,
    draining: bool,
) -> Poll<C::Output> {
    let outer = DRAINING.replace(draining);
    let poll = conn.poll(cx);
    DRAINING.set(outer);
    poll
}

/// What the service learns about its connection.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// The connection speaks HTTP/2.
    pub(crate) h2: AtomicBool,
}

/// Adds `Connection: close` to HTTP/1 responses once the process drains (completed under
/// [`DRAINING`]).
#[derive(Debug, Clone)]
pub(crate) struct DrainAware<S> {
    pub(crate) inner: S,
    pub(crate) state: Arc<ConnState>,
}

impl<S, B, ReqBody> hyper::service::Service<Request<ReqBody>> for DrainAware<S>
where
    S: hyper::service::Service<Request<ReqBody>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = DrainAwareFuture<S::Future>;

    #[inline(always)]
    fn call(&self, req: Request<ReqBody>) -> Self::Future {
        let http1 = req.version() < Version::HTTP_2;
        if !http1 && !self.state.h2.load(Ordering::Relaxed) {
            self.state.h2.store(true, Ordering::Relaxed);
        }
        // The inner future (large: it holds the request) is made last, so that nothing
        // is computed while it waits to be moved.
        DrainAwareFuture {
            http1,
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct DrainAwareFuture<F> {
        #[pin]
        inner: F,
        http1: bool,
    }
}

impl<F, B, E> Future for DrainAwareFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if !(*this.http1 && DRAINING.get()) {
            // Returned as it comes, straight into hyper's place for it: a response is large
            // to move.
            return this.inner.poll(cx);
        }
        let mut poll = this.inner.poll(cx);
        if let Poll::Ready(Ok(response)) = &mut poll {
            close_after(response);
        }
        poll
    }
}

/// Adds `Connection: close` to an HTTP/1 response of a draining process; out of line, as
/// it is rare.
#[cold]
#[inline(never)]
fn close_after<B>(response: &mut Response<B>) {
    // Not on a `101 Switching Protocols`: the upgraded connection is tracked on its own.
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}
