//! The server side of the websocket opening handshake (RFC 6455 §4.2), for a websocket
//! endless can move: the request checked, the `101 Switching Protocols` answer, and the
//! upgraded connection as endless' tracked stream. axum's `WebSocketUpgrade` does the same
//! and hands out a websocket built on hyper's `Upgraded`, which cannot be taken apart again;
//! [`Handshake`] hands out the stream, so the application builds the websocket itself
//! (`from_raw_socket`) and can take it apart to move it.

use std::fmt;

use bytes::Bytes;
use endless_unix::adapter::Stream;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use sha1::{Digest, Sha1};

use super::{NotMovable, upgraded_stream};
use crate::rt::HttpRuntime;

/// A websocket opening handshake, checked: answer it with [`response`](Self::response),
/// then await [`upgraded`](Self::upgraded) for the connection as endless' tracked stream.
///
/// Built from a request ([`Handshake::new`]), or, with the `axum` feature, extracted by an
/// axum handler like axum's `WebSocketUpgrade`. Only HTTP/1.1 upgrades (a `GET` with
/// `Connection: upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a
/// `Sec-WebSocket-Key`); a websocket over HTTP/2 (RFC 8441) could not move anyway.
///
/// # Examples
///
/// In a hyper service:
///
/// ```no_run
/// # use std::convert::Infallible;
/// # async fn service(mut req: hyper::Request<hyper::body::Incoming>)
/// #     -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, Infallible> {
/// use endless_hyper::ws::{Handshake, MessageBoundary, Socket};
/// use endless_tokio::Tokio;
/// use tokio_tungstenite::{WebSocketStream, tungstenite::protocol::Role};
///
/// let handshake = match Handshake::new(&mut req) {
///     Ok(handshake) => handshake,
///     Err(e) => return Ok(e.response()),
/// };
/// let response = handshake.response();
/// tokio::spawn(async move {
///     let Ok((stream, read)) = handshake.upgraded::<Tokio>().await else { return };
///     let socket = MessageBoundary::with_read(Socket::from(stream), read);
///     let ws = WebSocketStream::from_raw_socket(socket, Role::Server, None).await;
///     // … serve `ws`; hand it over when the drain starts …
/// #   drop(ws);
/// });
/// Ok(response)
/// # }
/// ```
///
/// In an axum handler (feature `axum`), in place of `WebSocketUpgrade`:
///
/// ```no_run
/// # #[cfg(feature = "axum")]
/// # fn doc() {
/// use axum::response::Response;
/// use endless_hyper::ws::Handshake;
/// use endless_tokio::Tokio;
///
/// async fn ws(handshake: Handshake) -> Response {
///     let response = handshake.response();
///     tokio::spawn(async move {
///         let Ok((stream, read)) = handshake.upgraded::<Tokio>().await else { return };
///         // … as above …
/// #       drop((stream, read));
///     });
///     response
/// }
///
/// let app: axum::Router = axum::Router::new().route("/ws", axum::routing::get(ws));
/// # drop(app);
/// # }
/// ```
pub struct Handshake {
    accept: HeaderValue,
    /// The subprotocols the client offers (`Sec-WebSocket-Protocol`), as it sent them.
    offered: Vec<HeaderValue>,
    /// The one this server speaks, if any: answered in `Sec-WebSocket-Protocol`.
    protocol: Option<HeaderValue>,
    on_upgrade: OnUpgrade,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("accept", &self.accept)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// Checks `req` as a websocket opening handshake and takes its upgrade (hyper's
    /// `OnUpgrade`, from the request's extensions).
    ///
    /// # Errors
    ///
    /// [`HandshakeError`], which says what is missing and answers with
    /// [`HandshakeError::response`].
    pub fn new<B>(req: &mut Request<B>) -> Result<Self, HandshakeError> {
        let accept = check(req.method(), req.headers())?;
        let offered = offered(req.headers());
        Self::with_upgrade(accept, offered, req.extensions_mut())
    }

    fn with_upgrade(
        accept: HeaderValue,
        offered: Vec<HeaderValue>,
        extensions: &mut http::Extensions,
    ) -> Result<Self, HandshakeError> {
        let on_upgrade = extensions
            .remove::<OnUpgrade>()
            .ok_or(HandshakeError::CannotUpgrade)?;
        Ok(Self {
            accept,
            offered,
            protocol: None,
            on_upgrade,
        })
    }

    /// The subprotocols the client offers (`Sec-WebSocket-Protocol`), in its order of
    /// preference.
    pub fn offered_protocols(&self) -> impl Iterator<Item = &str> {
        protocols_in(&self.offered)
    }

    /// Speaks the first of `supported` (the server's order of preference) that the client
    /// offers, if any: the response then names it (`Sec-WebSocket-Protocol`), as axum's
    /// `WebSocketUpgrade::protocols` does. Without a match the handshake goes on without a
    /// subprotocol (the client decides whether that will do).
    #[must_use]
    pub fn protocols<I>(mut self, supported: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.protocol = choose(&self.offered, supported);
        self
    }

    /// The subprotocol chosen by [`protocols`](Self::protocols), if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_ref().and_then(|p| p.to_str().ok())
    }

    /// The answer that completes the handshake: `101 Switching Protocols` with
    /// `Sec-WebSocket-Accept`, and an empty body. Send it, then await
    /// [`upgraded`](Self::upgraded).
    pub fn response<B: Default>(&self) -> Response<B> {
        switching(&self.accept, self.protocol.as_ref())
    }

    /// Once the response is sent: the connection as endless' tracked stream, and the bytes
    /// read past the handshake ([`upgraded_stream`]; build the websocket on
    /// [`MessageBoundary::with_read`](super::MessageBoundary::with_read) of them).
    ///
    /// # Errors
    ///
    /// [`UpgradeError::Failed`] if the upgrade did not happen (the response was not 101,
    /// the connection ended); [`UpgradeError::NotMovable`], with the connection, if it is
    /// not a stream endless can move (TLS, another listener).
    pub async fn upgraded<N: HttpRuntime>(self) -> Result<(Stream<N>, Bytes), UpgradeError> {
        let upgraded = self.on_upgrade.await.map_err(UpgradeError::Failed)?;
        upgraded_stream::<N>(upgraded).map_err(UpgradeError::NotMovable)
    }
}

/// Checks the request's method and headers; the `Sec-WebSocket-Accept` to answer with.
fn check(method: &Method, headers: &HeaderMap) -> Result<HeaderValue, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::MethodNotGet);
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeError::NotAnUpgrade);
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(HandshakeError::NotWebSocket);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError::MissingKey)?;
    Ok(accept_key(key.as_bytes()))
}

/// `101 Switching Protocols` to a websocket, with its accept key and subprotocol.
fn switching<B: Default>(accept: &HeaderValue, protocol: Option<&HeaderValue>) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept.clone());
    if let Some(protocol) = protocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.clone());
    }
    response
}

/// The subprotocols in `Sec-WebSocket-Protocol` values, in order.
fn protocols_in(offered: &[HeaderValue]) -> impl Iterator<Item = &str> {
    offered
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// The first of `supported` that is offered.
fn choose<I>(offered: &[HeaderValue], supported: I) -> Option<HeaderValue>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    supported
        .into_iter()
        .find(|s| protocols_in(offered).any(|p| p == s.as_ref()))
        .and_then(|p| HeaderValue::from_str(p.as_ref()).ok())
}

/// Every `Sec-WebSocket-Protocol` value of the request.
fn offered(headers: &HeaderMap) -> Vec<HeaderValue> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .cloned()
        .collect()
}

/// Whether a comma-separated header has `token` (case-insensitive), in any of its values.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2): the key and the
/// protocol's GUID, hashed with SHA-1, in base64.
fn accept_key(key: &[u8]) -> HeaderValue {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    let accept = data_encoding::BASE64.encode(&sha1.finalize());
    HeaderValue::from_str(&accept).expect("base64 is a valid header value")
}

/// Why a request is not a websocket opening handshake [`Handshake`] can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Not a `GET`.
    MethodNotGet,
    /// No `Connection: upgrade`.
    NotAnUpgrade,
    /// No `Upgrade: websocket`.
    NotWebSocket,
    /// `Sec-WebSocket-Version` is not 13.
    UnsupportedVersion,
    /// No `Sec-WebSocket-Key`.
    MissingKey,
    /// The connection cannot be upgraded: HTTP/2, or hyper's upgrade was already taken.
    CannotUpgrade,
}

impl HandshakeError {
    /// The status to answer with: `405 Method Not Allowed` for [`Self::MethodNotGet`],
    /// `426 Upgrade Required` (with `Sec-WebSocket-Version: 13`) for a version this does
    /// not speak, `400 Bad Request` otherwise.
    pub fn status(self) -> StatusCode {
        match self {
            Self::MethodNotGet => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The answer to the request: [`status`](Self::status), and this error's message as
    /// the body.
    pub fn response<B: From<String>>(self) -> Response<B> {
        let mut response = Response::new(B::from(format!("{self}\n")));
        *response.status_mut() = self.status();
        if self == Self::UnsupportedVersion {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MethodNotGet => "a websocket handshake is a GET request",
            Self::NotAnUpgrade => "a websocket handshake needs `Connection: upgrade`",
            Self::NotWebSocket => "a websocket handshake needs `Upgrade: websocket`",
            Self::UnsupportedVersion => "only websocket version 13 is spoken here",
            Self::MissingKey => "a websocket handshake needs a `Sec-WebSocket-Key`",
            Self::CannotUpgrade => "this connection cannot be upgraded (HTTP/2, or taken)",
        })
    }
}

impl std::error::Error for HandshakeError {}

/// Why [`Handshake::upgraded`] has no stream.
#[derive(Debug)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The upgrade did not happen: the response was not `101`, or the connection ended.
    Failed(hyper::Error),
    /// The upgraded connection is not one endless can move; it is given back, to be served
    /// here.
    NotMovable(NotMovable),
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(_) => f.write_str("the websocket upgrade did not happen"),
            Self::NotMovable(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for UpgradeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Failed(e) => Some(e),
            Self::NotMovable(_) => None,
        }
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Handshake {
    type Rejection = HandshakeError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let accept = check(&parts.method, &parts.headers)?;
        let offered = offered(&parts.headers);
        Self::with_upgrade(accept, offered, &mut parts.extensions)
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for HandshakeError {
    fn into_response(self) -> axum::response::Response {
        self.response::<axum::body::Body>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(edit: impl FnOnce(&mut http::request::Builder)) -> Request<()> {
        let mut builder = Request::get("/ws")
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==");
        edit(&mut builder);
        builder.body(()).unwrap()
    }

    #[test]
    fn the_accept_key_of_rfc_6455() {
        // RFC 6455 §1.3's example.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn what_a_handshake_lacks() {
        // Without hyper, a request has no upgrade to take: everything else is checked first.
        let mut req = request(|_| {});
        assert_eq!(
            Handshake::new(&mut req).unwrap_err(),
            HandshakeError::CannotUpgrade
        );
        let mut req = request(|_| {});
        *req.method_mut() = Method::POST;
        assert_eq!(
            Handshake::new(&mut req).unwrap_err(),
            HandshakeError::MethodNotGet
        );
        for (name, value, error) in [
            (
                header::CONNECTION,
                "keep-alive",
                HandshakeError::NotAnUpgrade,
            ),
            (header::UPGRADE, "h2c", HandshakeError::NotWebSocket),
            (
                header::SEC_WEBSOCKET_VERSION,
                "8",
                HandshakeError::UnsupportedVersion,
            ),
        ] {
            let mut req = request(|_| {});
            req.headers_mut()
                .insert(name, HeaderValue::from_static(value));
            assert_eq!(Handshake::new(&mut req).unwrap_err(), error);
        }
        let mut req = request(|_| {});
        req.headers_mut().remove(header::SEC_WEBSOCKET_KEY);
        assert_eq!(
            Handshake::new(&mut req).unwrap_err(),
            HandshakeError::MissingKey
        );
    }

    #[test]
    fn a_subprotocol_is_chosen_from_what_the_client_offers() {
        let mut req = request(|_| {});
        req.headers_mut().append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat.v2, chat.v1"),
        );
        req.headers_mut().append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("graphql-ws"),
        );
        let offered = offered(req.headers());
        assert_eq!(
            protocols_in(&offered).collect::<Vec<_>>(),
            ["chat.v2", "chat.v1", "graphql-ws"]
        );
        // The server's order decides, as axum's.
        let protocol = choose(&offered, ["mqtt", "graphql-ws", "chat.v1"]);
        assert_eq!(protocol.as_ref().unwrap(), "graphql-ws");
        let accept = check(req.method(), req.headers()).unwrap();
        let response = switching::<String>(&accept, protocol.as_ref());
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            response.headers()[header::SEC_WEBSOCKET_PROTOCOL],
            "graphql-ws"
        );
        assert_eq!(
            response.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        // Nothing in common: no subprotocol.
        assert_eq!(choose(&offered, ["mqtt"]), None);
        let response = switching::<String>(&accept, None);
        assert!(
            !response
                .headers()
                .contains_key(header::SEC_WEBSOCKET_PROTOCOL)
        );
    }

    #[test]
    fn errors_answer_with_their_status() {
        let response = HandshakeError::UnsupportedVersion.response::<String>();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_VERSION], "13");
        assert_eq!(
            HandshakeError::MethodNotGet.response::<String>().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            HandshakeError::MissingKey.response::<String>().status(),
            StatusCode::BAD_REQUEST
        );
    }
}
