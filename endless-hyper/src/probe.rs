//! Readiness and liveness probes that tell the truth about a drain: [`Probes`] wraps a
//! service and answers `GET /readyz` and `GET /livez` itself (Kubernetes' `httpGet`
//! probes, a load balancer's health check), passing every other request to the service.
//!
//! - **`/readyz`**: `200 ready` while this process serves; `503 draining` once it drains
//!   (after a handover to a new generation, or for a stop), and `200` again if it takes the
//!   service back after its successor died (the fallback). The answer is the connection
//!   tracker's phase at the moment of the request
//!   ([`Tracker::is_closing`](endless_tokio::Tracker::is_closing)), read only for a probe.
//! - **`/livez`**: `200 live` whenever the process answers, draining or not. A draining
//!   process is alive: killing it would cut the requests it is finishing.
//!
//! The shape is tower-http's (a `Layer` and the service it makes, such as
//! `tower_http::timeout::{TimeoutLayer, Timeout}`): [`ProbesLayer`] and [`Probes`], whose
//! response future ([`ResponseFuture`]) is the inner service's or a ready answer. It is a
//! tower service when the inner one is (an axum `Router`), and a hyper service when the
//! inner one is (`hyper::service::service_fn`, served wrapped in
//! [`HyperService`](crate::HyperService)).
//!
//! # What a drain looks like from outside
//!
//! A draining process no longer accepts connections: the listening socket belongs to the
//! next generation (after a handover) or is closed (a stop). So a probe on a *new*
//! connection is answered by whoever serves the socket: after a handover, the new
//! generation (`200`: the service is up); during a stop, nobody (the connection is refused,
//! which fails the probe too). The `503` is what a client on an already open keep-alive
//! connection to the draining process sees — a proxy's or a load balancer's health check
//! that reuses its connections, a service mesh's sidecar —, and it comes with
//! `Connection: close` (HTTP/1.1) or after a `GOAWAY` (HTTP/2), so the checker's next
//! connection reaches the serving generation. kubelet opens a new connection for every
//! probe.
//!
//! # Cost
//!
//! A request that is not a probe costs a comparison of its path with the two probe paths,
//! and a branch on the response future's variant. For a tower service, hyper-util clones the
//! service for each request (as it clones a `Router`); a clone of `Probes` is the inner
//! service's and one reference count.
//!
//! # Examples
//!
//! A hyper service, as the example servers have it (this one stops itself after two
//! requests; a real server runs until a signal stops it):
//!
//! ```
//! use std::convert::Infallible;
//! use endless_hyper::{HyperService, Probes, Server};
//! use endless_tokio::Endless;
//! use hyper::{Request, Response, body::Incoming};
//! # use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! async fn hello(_req: Request<Incoming>) -> Result<Response<String>, Infallible> {
//!     Ok(Response::new(format!("pid={}\n", std::process::id())))
//! }
//!
//! # async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
//! #     let mut client = tokio::net::TcpStream::connect(addr).await?;
//! #     let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
//! #     client.write_all(request.as_bytes()).await?;
//! #     let mut response = String::new();
//! #     client.read_to_string(&mut response).await?;
//! #     Ok(response)
//! # }
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let endless = Endless::start()?;
//!     let listener = endless.tcp_listener("http", "127.0.0.1:0")?;
//! #   let addr = listener.local_addr()?;
//!     // `GET /readyz` and `GET /livez` are answered here; the rest goes to `hello`.
//!     let service = Probes::new(hyper::service::service_fn(hello), endless.tracker().clone());
//!     Server::new().serve(listener, HyperService(service));
//!     endless.ready();
//! #   let ready = get(addr, "/readyz").await?;
//! #   assert!(ready.starts_with("HTTP/1.1 200 OK"), "{ready}");
//! #   assert!(ready.ends_with("\r\n\r\nready\n"), "{ready}");
//! #   let hello = get(addr, "/").await?;
//! #   assert!(hello.ends_with(&format!("pid={}\n", std::process::id())), "{hello}");
//! #   endless.request(endless_tokio::Request::Stop);
//!     let exit = endless.run().await;
//! #   assert_eq!(exit.code, 0);
//! #   return Ok(());
//!     std::process::exit(exit.code);
//! }
//! ```
//!
//! An axum `Router`, wrapped as a whole, so that the probes are answered before routing;
//! the paths are configurable:
//!
//! ```no_run
//! # async fn doc(endless: endless_tokio::Endless) -> std::io::Result<()> {
//! use endless_hyper::{Probes, Server};
//!
//! let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
//! let app = Probes::new(app, endless.tracker().clone())
//!     .readiness_path("/health/ready")
//!     .liveness_path("/health/live");
//! Server::new().serve(endless.tcp_listener("http", "0.0.0.0:8080")?, app);
//! # Ok(())
//! # }
//! ```
//!
//! As a layer, in a tower `ServiceBuilder` or with axum's `Router::layer` (which axum
//! applies to its fallback too, so the probe paths need no route), for instance to keep
//! serving the router's make service for `ConnectInfo`:
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # async fn doc(endless: endless_tokio::Endless) -> std::io::Result<()> {
//! use std::net::SocketAddr;
//! use endless_hyper::{ProbesLayer, Server};
//!
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello\n" }))
//!     .layer(ProbesLayer::new(endless.tracker().clone()));
//! let listener = endless.tcp_listener("http", "0.0.0.0:8080")?;
//! Server::new()
//!     .serve_with_connect_info(listener, app.into_make_service_with_connect_info::<SocketAddr>());
//! # Ok(())
//! # }
//! ```
//!
//! The inner service's response body must be one a `&'static str` converts into (`From`):
//! `String`, axum's `Body`, http-body-util's `Full<Bytes>` are.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use endless_unix::Tracker;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};

/// The readiness probe's path, unless configured.
pub const DEFAULT_READINESS_PATH: &str = "/readyz";

/// The liveness probe's path, unless configured.
pub const DEFAULT_LIVENESS_PATH: &str = "/livez";

/// What [`Probes`] and [`ProbesLayer`] share: the tracker, and the two paths.
struct Config {
    tracker: Tracker,
    readiness: Box<str>,
    liveness: Box<str>,
}

impl Config {
    fn new(tracker: Tracker) -> Arc<Self> {
        Arc::new(Self {
            tracker,
            readiness: DEFAULT_READINESS_PATH.into(),
            liveness: DEFAULT_LIVENESS_PATH.into(),
        })
    }

    /// A copy with `change` applied (paths are set while building, not per request).
    fn with(self: &Arc<Self>, change: impl FnOnce(&mut Self)) -> Arc<Self> {
        let mut config = Self {
            tracker: self.tracker.clone(),
            readiness: self.readiness.clone(),
            liveness: self.liveness.clone(),
        };
        change(&mut config);
        Arc::new(config)
    }

    /// The answer to `req` if it is a probe: the only work a request that is not one pays
    /// for is the comparison of its path.
    #[inline]
    fn probe<B>(&self, req: &Request<B>) -> Option<Answer> {
        let path = req.uri().path();
        if path == &*self.readiness || path == &*self.liveness {
            self.answer(req.method(), req.version(), path)
        } else {
            None
        }
    }

    #[cold]
    #[inline(never)]
    fn answer(&self, method: &Method, version: Version, path: &str) -> Option<Answer> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        Some(if path == &*self.readiness {
            if self.tracker.is_closing() {
                Answer::Draining {
                    http1: version < Version::HTTP_2,
                }
            } else {
                Answer::Ready
            }
        } else {
            Answer::Live
        })
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probes")
            .field("readiness", &self.readiness)
            .field("liveness", &self.liveness)
            .field("tracker", &self.tracker)
            .finish()
    }
}

/// A probe's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// `/readyz` while serving.
    Ready,
    /// `/readyz` while draining, on an HTTP/1 connection or not.
    Draining { http1: bool },
    /// `/livez`.
    Live,
}

impl Answer {
    fn response<B: From<&'static str>>(self) -> Response<B> {
        let (status, body) = match self {
            Self::Ready => (StatusCode::OK, "ready\n"),
            Self::Draining { .. } => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            Self::Live => (StatusCode::OK, "live\n"),
        };
        let mut response = Response::new(B::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        // A probe's answer is about this moment: no cache along the way may keep it.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Self::Draining { http1: true } = self {
            // The checker's next connection reaches the serving generation. (The server
            // adds it to every response of a draining connection too, but learns of the
            // drain a moment after the tracker does.) Illegal in HTTP/2, which gets a
            // `GOAWAY` instead.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Answers readiness and liveness probes, and passes every other request to the inner
/// service (see [the module](crate::probe)).
///
/// A `GET` or `HEAD` request whose path is exactly the readiness path
/// ([`DEFAULT_READINESS_PATH`], `/readyz`) is answered `200 ready` while the process
/// serves and `503 draining` once it drains (over HTTP/1, with `Connection: close`); one
/// whose path is the liveness path
/// ([`DEFAULT_LIVENESS_PATH`], `/livez`) is answered `200 live`. The query string is
/// ignored; other methods go to the inner service.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use endless_hyper::Probes;
/// use endless_tokio::Tracker;
/// use http::{Request, Response, StatusCode};
/// use hyper::service::Service as _;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let tracker = Tracker::new(); // in a server: `endless.tracker().clone()`
/// let probes = Probes::new(
///     hyper::service::service_fn(|_req: Request<String>| async {
///         Ok::<_, Infallible>(Response::new(String::from("hello\n")))
///     }),
///     tracker.clone(),
/// );
/// let get = |path| Request::get(path).body(String::new()).unwrap();
/// let ready = probes.call(get("/readyz")).await.unwrap();
/// assert_eq!((ready.status(), ready.body().as_str()), (StatusCode::OK, "ready\n"));
///
/// tracker.close_idle(); // what endless does when this process drains
/// let draining = probes.call(get("/readyz")).await.unwrap();
/// assert_eq!(draining.status(), StatusCode::SERVICE_UNAVAILABLE);
/// assert_eq!(probes.call(get("/livez")).await.unwrap().status(), StatusCode::OK);
/// assert_eq!(probes.call(get("/")).await.unwrap().body(), "hello\n");
/// # }
/// ```
#[derive(Clone)]
pub struct Probes<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> fmt::Debug for Probes<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl<S> Probes<S> {
    /// Answers the probes at the default paths with the phase of `tracker` (the process's:
    /// [`Endless::tracker`](endless_tokio::Endless::tracker), or any listener's), and
    /// passes the rest to `inner`.
    pub fn new(inner: S, tracker: Tracker) -> Self {
        Self {
            inner,
            config: Config::new(tracker),
        }
    }

    /// A [`ProbesLayer`] that wraps services in `Probes` with `tracker`.
    pub fn layer(tracker: Tracker) -> ProbesLayer {
        ProbesLayer::new(tracker)
    }

    /// Answers the readiness probe at `path` (default [`DEFAULT_READINESS_PATH`]), a path
    /// such as `/ready`, compared with the request's path exactly.
    #[must_use]
    pub fn readiness_path(mut self, path: impl Into<String>) -> Self {
        let path = path.into().into_boxed_str();
        self.config = self.config.with(|c| c.readiness = path);
        self
    }

    /// Answers the liveness probe at `path` (default [`DEFAULT_LIVENESS_PATH`]).
    #[must_use]
    pub fn liveness_path(mut self, path: impl Into<String>) -> Self {
        let path = path.into().into_boxed_str();
        self.config = self.config.with(|c| c.liveness = path);
        self
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for Probes<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<&'static str>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match self.config.probe(&req) {
            None => ResponseFuture::inner(self.inner.call(req)),
            Some(answer) => ResponseFuture::answer(answer),
        }
    }
}

impl<S, ReqBody, ResBody> hyper::service::Service<Request<ReqBody>> for Probes<S>
where
    S: hyper::service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<&'static str>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn call(&self, req: Request<ReqBody>) -> Self::Future {
        match self.config.probe(&req) {
            None => ResponseFuture::inner(self.inner.call(req)),
            Some(answer) => ResponseFuture::answer(answer),
        }
    }
}

/// Wraps services in [`Probes`], as a tower layer (in a `ServiceBuilder`, or axum's
/// `Router::layer`).
///
/// # Examples
///
/// ```
/// use endless_hyper::ProbesLayer;
/// use tower_layer::Layer;
///
/// # fn doc<S>(service: S, tracker: endless_tokio::Tracker) {
/// let layer = ProbesLayer::new(tracker).readiness_path("/ready");
/// let service = layer.layer(service); // a `Probes<S>`
/// # let _ = service;
/// # }
/// ```
#[derive(Clone)]
pub struct ProbesLayer {
    config: Arc<Config>,
}

impl fmt::Debug for ProbesLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl ProbesLayer {
    /// Probes at the default paths, answered with the phase of `tracker`.
    pub fn new(tracker: Tracker) -> Self {
        Self {
            config: Config::new(tracker),
        }
    }

    /// See [`Probes::readiness_path`].
    #[must_use]
    pub fn readiness_path(mut self, path: impl Into<String>) -> Self {
        let path = path.into().into_boxed_str();
        self.config = self.config.with(|c| c.readiness = path);
        self
    }

    /// See [`Probes::liveness_path`].
    #[must_use]
    pub fn liveness_path(mut self, path: impl Into<String>) -> Self {
        let path = path.into().into_boxed_str();
        self.config = self.config.with(|c| c.liveness = path);
        self
    }
}

impl<S> tower_layer::Layer<S> for ProbesLayer {
    type Service = Probes<S>;

    fn layer(&self, inner: S) -> Probes<S> {
        Probes {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Probes`]: the inner service's, or a probe's answer.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] future: F },
        Answer { answer: Answer },
    }
}

impl<F> ResponseFuture<F> {
    #[inline]
    fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    fn answer(answer: Answer) -> Self {
        Self {
            kind: Kind::Answer { answer },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("ResponseFuture::Inner"),
            Kind::Answer { answer } => write!(f, "ResponseFuture::Answer({answer:?})"),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<&'static str>,
{
    type Output = Result<Response<B>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx),
            KindProj::Answer { answer } => Poll::Ready(Ok(answer.response())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// A tower service (not a hyper one) that answers every request with its path.
    #[derive(Clone)]
    struct Echo;

    impl tower_service::Service<Request<String>> for Echo {
        type Response = Response<String>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<String>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<String>) -> Self::Future {
            std::future::ready(Ok(Response::new(format!("inner {}", req.uri()))))
        }
    }

    fn request(method: Method, uri: &str) -> Request<String> {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(String::new())
            .expect("a valid request")
    }

    /// `(status, body)` of `uri` through the tower service.
    fn via_tower(probes: &mut Probes<Echo>, method: Method, uri: &str) -> (u16, String) {
        use tower_service::Service;
        let response = futures_block_on(probes.call(request(method, uri))).unwrap();
        (response.status().as_u16(), response.into_body())
    }

    /// `(status, body)` of `GET uri` through a hyper service.
    fn via_hyper<S>(probes: &Probes<S>, uri: &str) -> (u16, String)
    where
        S: hyper::service::Service<
                Request<String>,
                Response = Response<String>,
                Error = Infallible,
            >,
    {
        use hyper::service::Service;
        let response = futures_block_on(probes.call(request(Method::GET, uri))).unwrap();
        (response.status().as_u16(), response.into_body())
    }

    /// Polls a future that needs no waker to complete (every future here is ready).
    fn futures_block_on<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("a probe's answer is ready at once"),
        }
    }

    fn ready() -> (u16, String) {
        (200, "ready\n".into())
    }

    fn draining() -> (u16, String) {
        (503, "draining\n".into())
    }

    fn live() -> (u16, String) {
        (200, "live\n".into())
    }

    #[test]
    fn readiness_turns_false_when_the_tracker_closes() {
        let tracker = Tracker::new();
        let mut probes = Probes::new(Echo, tracker.clone());
        assert_eq!(via_tower(&mut probes, Method::GET, "/readyz"), ready());
        assert_eq!(via_tower(&mut probes, Method::GET, "/livez"), live());
        // A connection open meanwhile changes nothing: the phase does.
        let guard = tracker.track(None);
        assert_eq!(via_tower(&mut probes, Method::GET, "/readyz"), ready());
        tracker.close_idle();
        assert_eq!(via_tower(&mut probes, Method::GET, "/readyz"), draining());
        // A clone made before the drain (hyper-util clones the service per request) sees
        // it too, and so does every later request.
        let mut clone = probes.clone();
        assert_eq!(via_tower(&mut clone, Method::GET, "/readyz"), draining());
        assert_eq!(via_tower(&mut probes, Method::HEAD, "/readyz"), draining());
        // Alive while draining; the rest still served.
        assert_eq!(via_tower(&mut probes, Method::GET, "/livez"), live());
        assert_eq!(
            via_tower(&mut probes, Method::GET, "/"),
            (200, "inner /".into())
        );
        tracker.force_close();
        assert_eq!(via_tower(&mut probes, Method::GET, "/readyz"), draining());
        drop(guard);
    }

    #[test]
    fn a_hyper_service_is_wrapped_the_same_way() {
        let tracker = Tracker::new();
        let service = hyper::service::service_fn(|req: Request<String>| async move {
            Ok::<_, Infallible>(Response::new(format!("inner {}", req.uri().path())))
        });
        let probes = Probes::new(service, tracker.clone());
        assert_eq!(via_hyper(&probes, "/readyz"), ready());
        assert_eq!(via_hyper(&probes, "/other"), (200, "inner /other".into()));
        tracker.close_idle();
        assert_eq!(via_hyper(&probes, "/readyz"), draining());
        assert_eq!(via_hyper(&probes, "/livez"), live());
    }

    #[test]
    fn only_get_and_head_on_the_exact_paths_are_probes() {
        let mut probes = Probes::new(Echo, Tracker::new());
        assert_eq!(
            via_tower(&mut probes, Method::GET, "/readyz?verbose"),
            ready()
        );
        assert_eq!(via_tower(&mut probes, Method::HEAD, "/livez"), live());
        for (method, uri) in [
            (Method::POST, "/readyz"),
            (Method::DELETE, "/livez"),
            (Method::GET, "/readyz/"),
            (Method::GET, "/readyzz"),
            (Method::GET, "/ready"),
            (Method::GET, "/api/readyz"),
        ] {
            assert_eq!(
                via_tower(&mut probes, method.clone(), uri),
                (200, format!("inner {uri}")),
                "{method} {uri}"
            );
        }
        // An absolute URI (HTTP/2, or a proxy's request) has the same path.
        assert_eq!(
            via_tower(&mut probes, Method::GET, "http://example.com/readyz"),
            ready()
        );
    }

    #[test]
    fn the_paths_are_configurable_on_the_service_and_the_layer() {
        use tower_layer::Layer;
        let tracker = Tracker::new();
        let mut probes = Probes::new(Echo, tracker.clone())
            .readiness_path("/health/ready")
            .liveness_path(String::from("/health/live"));
        let mut layered = ProbesLayer::new(tracker.clone())
            .readiness_path("/health/ready")
            .liveness_path("/health/live")
            .layer(Echo);
        for probes in [&mut probes, &mut layered] {
            assert_eq!(via_tower(probes, Method::GET, "/health/ready"), ready());
            assert_eq!(via_tower(probes, Method::GET, "/health/live"), live());
            // The defaults are no longer probes.
            assert_eq!(
                via_tower(probes, Method::GET, "/readyz"),
                (200, "inner /readyz".into())
            );
        }
        tracker.close_idle();
        assert_eq!(
            via_tower(&mut layered, Method::GET, "/health/ready"),
            draining()
        );
        assert_eq!(
            via_tower(&mut probes, Method::GET, "/health/ready"),
            draining()
        );
    }

    #[test]
    fn an_answer_says_what_it_is() {
        let mut probes = Probes::new(Echo, Tracker::new());
        let response = futures_block_on(tower_service::Service::call(
            &mut probes,
            request(Method::GET, "/livez"),
        ))
        .unwrap();
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        assert!(response.headers().get(header::CONNECTION).is_none());
        assert!(format!("{probes:?}").contains("/readyz"));
    }

    #[test]
    fn a_draining_answer_closes_an_http1_connection() {
        let tracker = Tracker::new();
        let mut probes = Probes::new(Echo, tracker.clone());
        let readyz = |probes: &mut Probes<Echo>, version| {
            let mut req = request(Method::GET, "/readyz");
            *req.version_mut() = version;
            futures_block_on(tower_service::Service::call(probes, req)).unwrap()
        };
        assert!(
            readyz(&mut probes, Version::HTTP_11)
                .headers()
                .get(header::CONNECTION)
                .is_none()
        );
        tracker.close_idle();
        for version in [Version::HTTP_10, Version::HTTP_11] {
            let response = readyz(&mut probes, version);
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                response.headers()[header::CONNECTION],
                "close",
                "{version:?}"
            );
        }
        // Connection-specific headers are illegal in HTTP/2 (it gets a `GOAWAY`).
        let response = readyz(&mut probes, Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().get(header::CONNECTION).is_none());
    }
}
