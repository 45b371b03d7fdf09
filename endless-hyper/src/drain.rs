//! The drain of a connection: told when it starts ([`Closers`]), a connection is served on
//! with its HTTP/1 responses marked `Connection: close`, and closed gracefully once idle
//! past the grace period (HTTP/1) or at once (HTTP/2's `GOAWAY`, with the [`h2_shutdown`]
//! workaround under it); or, with [`Server::hand_over_idle`], handed to the new generation
//! at a request boundary.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use endless_unix::Tracker;
use endless_unix::adapter::Stream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Server;
use crate::h2_shutdown;
use crate::rt::HttpRuntime;
use crate::service::{BoxError, ConnState, DrainAware, HttpService, ResponseBody, poll_draining};
use crate::takeover::{self, IntoStream};

impl<N: HttpRuntime> Server<N> {
    /// Logs how a connection ended, in the process's span.
    fn log_end(&self, result: Result<(), BoxError>) {
        if let Err(e) = result {
            let _in = self.span.enter();
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }

    /// Serves HTTP/1 on `io` and, once the process drains, hands it to the new generation
    /// at a request boundary (see [`Server::hand_over_idle`]).
    pub(crate) async fn h1_takeover<T, S, B>(
        &self,
        io: takeover::Prefixed<T>,
        service: S,
        mut closing: Closing,
    ) where
        T: IntoStream<N> + AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService<B>,
        B: ResponseBody,
    {
        let Some(takeover) = self.takeover.clone() else {
            return;
        };
        let idle = Arc::new(takeover::Idle::default());
        let counted = takeover::Counted {
            inner: service.clone().into_connection(),
            idle: Arc::clone(&idle),
        };
        let io = TokioIo::new(takeover::Watched::new(io, Arc::clone(&idle)));
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1.timer(N::timer());
        let mut conn = http1.serve_connection(io, counted).with_upgrades();
        if let Some(result) = (UntilClosing {
            conn: Pin::new(&mut conn),
            closing: &mut closing,
        })
        .await
        {
            return self.log_end(result.map_err(Into::into));
        }
        if takeover.endless.can_hand_over() {
            // Serve on until the connection is at a request boundary.
            let boundary = std::future::poll_fn(|cx| match Pin::new(&mut conn).poll(cx) {
                Poll::Ready(result) => Poll::Ready(Err(result)),
                Poll::Pending => idle
                    .boundary()
                    .map_or(Poll::Pending, |movable| Poll::Ready(Ok(movable))),
            })
            .await;
            match boundary {
                Err(result) => return self.log_end(result.map_err(Into::into)),
                Ok(true) => {
                    // Upgraded meanwhile: hyper serves it no more.
                    let Some(parts) = conn.into_parts() else {
                        return;
                    };
                    let (left, stream) = parts.io.into_inner().into_inner().into_parts();
                    let mut unconsumed = parts.read_buf.to_vec();
                    unconsumed.extend_from_slice(&left);
                    return self
                        .hand_over_h1(&takeover, stream, unconsumed, service)
                        .await;
                }
                // Its last request had a body: drained here.
                Ok(false) => {}
            }
        }
        // Nobody takes it (or it cannot move): drained as usual.
        idle.close_responses.store(true, Ordering::SeqCst);
        tokio::select! {
            biased;
            result = &mut conn => return self.log_end(result.map_err(Into::into)),
            () = N::sleep(self.idle_grace) => {}
        }
        Pin::new(&mut conn).graceful_shutdown();
        self.log_end(conn.await.map_err(Into::into));
    }

    /// Hands a connection taken apart at a request boundary, with the bytes read and not
    /// parsed, to the new generation; serves it on here, drained, if the new generation
    /// does not take it.
    async fn hand_over_h1<T, S, B>(
        &self,
        takeover: &takeover::Takeover<N>,
        stream: T,
        unconsumed: Vec<u8>,
        service: S,
    ) where
        T: IntoStream<N>,
        S: HttpService<B>,
        B: ResponseBody,
    {
        let handed = takeover
            .endless
            .hand_over(stream.into_stream(), &takeover.name, &[], &unconsumed)
            .await;
        let back = match handed {
            Ok(()) => return,
            Err(e) => {
                self.span.in_scope(|| {
                    tracing::info!(error = %e, "idle connection drained here");
                });
                match e.connection {
                    Some(back) => back,
                    None => return,
                }
            }
        };
        // Drained as usual, from where it was.
        let prefix = bytes::Bytes::from(unconsumed);
        match back {
            Stream::Tcp(io) => {
                let io = takeover::Prefixed::new(prefix, N::tcp_io(io));
                self.http(io, service, Closing::fired()).await;
            }
            Stream::Unix(io) => {
                let io = takeover::Prefixed::new(prefix, N::unix_io(io));
                self.http(io, service, Closing::fired()).await;
            }
        }
    }

    pub(crate) async fn http<I, S, B>(&self, io: I, service: S, mut closing: Closing)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService<B>,
        B: ResponseBody,
    {
        let state = Arc::new(ConnState::default());
        let service = DrainAware {
            inner: service.into_connection(),
            state: Arc::clone(&state),
        };
        let conn = self.builder.serve_connection_with_upgrades(
            TokioIo::new(h2_shutdown::PongDelay::new(io, N::sleep)),
            service,
        );
        tokio::pin!(conn);

        // Polled at every wake of the connection: a `select!` there (and the channel it
        // would wait on) costs more than the check for the drain, which is one atomic load.
        if let Some(result) = (UntilClosing {
            conn: conn.as_mut(),
            closing: &mut closing,
        })
        .await
        {
            return self.log_end(result);
        }
        if !state.h2.load(Ordering::Relaxed) {
            // HTTP/1: every response from now on says `Connection: close` (`Draining`). A
            // client whose next request is already on its way gets it answered; one that
            // stays idle is closed after the grace period.
            tokio::select! {
                biased;
                result = Draining(conn.as_mut()) => return self.log_end(result),
                () = N::sleep(self.idle_grace) => {}
            }
        }
        // HTTP/2: GOAWAY, streams in flight complete. HTTP/1: closes now if idle, else after
        // the response in flight (which hyper then marks `Connection: close` itself).
        conn.as_mut().graceful_shutdown();
        self.log_end(Draining(conn.as_mut()).await);
    }
}

/// Serves a connection until it ends (`Some` of its result) or the drain starts (`None`).
struct UntilClosing<'a, C> {
    conn: Pin<&'a mut C>,
    closing: &'a mut Closing,
}

impl<C: Future> Future for UntilClosing<'_, C> {
    type Output = Option<C::Output>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Looked at first: a response completed by this poll says `Connection: close` if
        // the drain has started by now.
        let closing = self.closing.poll_closing(cx).is_ready();
        if let Poll::Ready(result) = poll_draining(self.conn.as_mut(), cx, closing) {
            return Poll::Ready(Some(result));
        }
        if closing {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// Serves a connection of a draining process.
struct Draining<'a, C>(Pin<&'a mut C>);

impl<C: Future> Future for Draining<'_, C> {
    type Output = C::Output;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_draining(self.0.as_mut(), cx, true)
    }
}

/// Tells each connection of one listener when the drain starts.
#[derive(Debug, Clone)]
pub(crate) struct Closers {
    /// The connections of the current serving period: a fallback (the process serves
    /// again after its successor died) starts a new one, whose connections are not told
    /// to close.
    current: Arc<std::sync::Mutex<Arc<ClosersShared>>>,
}

#[derive(Debug, Default)]
struct ClosersShared {
    /// Set (under the lock of `wakers`) when the drain starts.
    closing: AtomicBool,
    next: AtomicU64,
    /// The connections waiting for the drain, by key (a counter of this process's: a fast
    /// hash, which nobody outside can steer).
    wakers: std::sync::Mutex<rustc_hash::FxHashMap<u64, Waker>>,
}

/// A connection's end of [`Closers`]: ready once the drain starts; unregisters on drop.
#[derive(Debug)]
pub(crate) struct Closing {
    shared: Arc<ClosersShared>,
    key: u64,
    /// The waker registered under `key`, if any.
    waker: Option<Waker>,
}

impl Closing {
    /// Ready once the drain has started. While it has not, costs an atomic load and a
    /// comparison of wakers (the lock is taken only when the task's waker changes: once).
    #[inline]
    fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self
            .waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        self.register(cx)
    }

    #[cold]
    #[inline(never)]
    fn register(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut wakers = lock(&self.shared.wakers);
        // Set under this lock before the wakers are taken: not missed.
        if self.shared.closing.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let waker = cx.waker().clone();
        wakers.insert(self.key, waker.clone());
        self.waker = Some(waker);
        Poll::Pending
    }
}

impl Closing {
    /// Resolves once the drain has started.
    pub(crate) async fn started(&mut self) {
        std::future::poll_fn(|cx| self.poll_closing(cx)).await;
    }

    /// One that has fired already.
    fn fired() -> Self {
        Self {
            shared: Arc::new(ClosersShared {
                closing: AtomicBool::new(true),
                ..ClosersShared::default()
            }),
            key: 0,
            waker: None,
        }
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        if self.waker.is_some() {
            lock(&self.shared.wakers).remove(&self.key);
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Closers {
    /// Closers that are never told to close (tests).
    #[cfg(test)]
    fn unwatched() -> Self {
        Self {
            current: Arc::default(),
        }
    }

    /// Closers that fire when `tracker` starts closing, and start afresh when it serves
    /// again (a fallback).
    pub(crate) fn watch(
        tracker: Tracker,
        spawn: impl FnOnce(Pin<Box<dyn Future<Output = ()> + Send>>),
    ) -> Self {
        let closers = Self {
            current: Arc::default(),
        };
        let current = Arc::clone(&closers.current);
        spawn(Box::pin(async move {
            loop {
                tracker.closing().await;
                let shared = Arc::clone(&lock(&current));
                let wakers = {
                    let mut wakers = lock(&shared.wakers);
                    shared.closing.store(true, Ordering::Release);
                    std::mem::take(&mut *wakers)
                };
                for waker in wakers.into_values() {
                    waker.wake();
                }
                tracker.serving().await;
                *lock(&current) = Arc::default();
            }
        }));
        closers
    }

    fn shared(&self) -> Arc<ClosersShared> {
        Arc::clone(&lock(&self.current))
    }

    pub(crate) fn register(&self) -> Closing {
        let shared = self.shared();
        Closing {
            key: shared.next.fetch_add(1, Ordering::Relaxed),
            shared,
            waker: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::DRAINING;
    use http::{HeaderValue, Request, Response, Version, header};
    use hyper::service::Service;
    use std::convert::Infallible;

    #[derive(Clone)]
    struct Reply(http::StatusCode);

    impl Service<Request<()>> for Reply {
        type Response = Response<()>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<()>, Infallible>>;

        fn call(&self, _: Request<()>) -> Self::Future {
            let mut response = Response::new(());
            *response.status_mut() = self.0;
            std::future::ready(Ok(response))
        }
    }

    /// Answers a request of `version` as a connection served by [`Server::http`] does,
    /// polled by [`UntilClosing`] with the drain started or not; with whether the service
    /// took the connection for HTTP/2.
    fn respond(draining: bool, version: Version, status: http::StatusCode) -> (Response<()>, bool) {
        let state = Arc::new(ConnState::default());
        let service = DrainAware {
            inner: Reply(status),
            state: Arc::clone(&state),
        };
        let request = Request::builder().version(version).body(()).unwrap();
        let mut closing = if draining {
            Closing::fired()
        } else {
            Closers::unwatched().register()
        };
        let response = futures_block_on(async {
            let mut response = std::pin::pin!(service.call(request));
            UntilClosing {
                conn: response.as_mut(),
                closing: &mut closing,
            }
            .await
        });
        let response = response
            .expect("answered before the drain started")
            .unwrap();
        (response, state.h2.load(Ordering::SeqCst))
    }

    fn futures_block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn closes(response: &Response<()>) -> bool {
        response.headers().get(header::CONNECTION) == Some(&HeaderValue::from_static("close"))
    }

    #[test]
    fn closing_wakes_a_waiting_connection_and_is_ready_for_a_late_one() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let tracker = Tracker::new();
            let closers = Closers::watch(tracker.clone(), |task| drop(tokio::spawn(task)));
            let mut waiting = closers.register();
            let mut idle = closers.register();
            let task = tokio::spawn(async move {
                std::future::poll_fn(|cx| waiting.poll_closing(cx)).await;
            });
            tokio::task::yield_now().await;
            assert!(!task.is_finished());
            // Polled again with the same waker: no new registration.
            assert!(
                std::future::poll_fn(|cx| Poll::Ready(idle.poll_closing(cx)))
                    .await
                    .is_pending()
            );
            assert!(
                std::future::poll_fn(|cx| Poll::Ready(idle.poll_closing(cx)))
                    .await
                    .is_pending()
            );
            assert_eq!(lock(&closers.shared().wakers).len(), 2);
            drop(idle);
            assert_eq!(lock(&closers.shared().wakers).len(), 1);
            tracker.close_idle();
            task.await.unwrap();
            let mut late = closers.register();
            std::future::poll_fn(|cx| late.poll_closing(cx)).await;
        });
    }

    #[test]
    fn http1_responses_say_close_only_once_draining() {
        let (response, h2) = respond(false, Version::HTTP_11, http::StatusCode::OK);
        assert!(!closes(&response));
        assert!(!h2);
        let (response, _) = respond(true, Version::HTTP_11, http::StatusCode::OK);
        assert!(closes(&response));
        let (response, _) = respond(true, Version::HTTP_10, http::StatusCode::NOT_FOUND);
        assert!(closes(&response));
    }

    #[test]
    fn http2_and_upgrades_are_left_alone() {
        let (response, h2) = respond(true, Version::HTTP_2, http::StatusCode::OK);
        assert!(
            !closes(&response),
            "connection-specific headers are illegal in HTTP/2"
        );
        assert!(h2);
        let (response, _) = respond(
            true,
            Version::HTTP_11,
            http::StatusCode::SWITCHING_PROTOCOLS,
        );
        assert!(!closes(&response));
    }

    #[test]
    fn a_response_completed_outside_a_draining_poll_is_left_alone() {
        let service = DrainAware {
            inner: Reply(http::StatusCode::OK),
            state: Arc::default(),
        };
        let call = || service.call(Request::builder().body(()).unwrap());
        let mut inner = std::pin::pin!(call());
        let mut outer = std::pin::pin!(async {
            // A draining connection's poll ends; what is polled after it is not its.
            let inside = Draining(inner.as_mut()).await.unwrap();
            let after = call().await.unwrap();
            (inside, after)
        });
        let (inside, after) = futures_block_on(std::future::poll_fn(|cx| {
            poll_draining(outer.as_mut(), cx, false)
        }));
        assert!(closes(&inside));
        assert!(!closes(&after));
        assert!(!DRAINING.get());
    }
}
