//! The gateway's HTTP/1.1 server for plain requests; hyper's serves everything else.
//!
//! Almost every request a gateway serves has one shape: an HTTP/1.1 `GET` or `POST` whose head
//! and `Content-Length` body arrive in a read or two, answered with a body of known length or a
//! stream. This module reads and answers those itself, with a fraction of the work hyper's
//! general server does per request (BENCHMARKS.md, "The gateway against nginx", the instruction
//! table). Anything else hands the connection, with every byte read so far, to hyper's HTTP/1
//! server for the rest of its life:
//!
//! - another method (`HEAD`, `PUT`, `PATCH`, `DELETE`, `OPTIONS`, `CONNECT`, …) or version;
//! - `Transfer-Encoding`, more than one `Content-Length` or one that is not a decimal number,
//!   `Expect`, `Upgrade` (or `Connection: upgrade`), `TE`;
//! - a request target that is not a path;
//! - a head that does not parse, of over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] fields;
//! - a request that with its body is over [`MAX_BUFFERED`] bytes, or whose body has not
//!   arrived when the header read timeout runs out.
//!
//! So hyper answers every malformed request (400, 431, …) as before, and the hostile cases
//! (request smuggling, chunked bodies, `100 Continue`, upgrades) stay with it. What this module
//! keeps of hyper's server:
//!
//! - the header read timeout: from the end of the last answer (or the first bytes) until the
//!   next head, and here its body, are in (an idle keep-alive connection is closed after it);
//!   a connection handed over on its expiry gets hyper's own header read timeout again;
//! - a client that closes its end while its request is in flight cancels the request (the
//!   agent's exchange is dropped), as long as no next request is buffered;
//! - pipelined requests are answered in order;
//! - `Connection: close` from the client or the service, and draining at shutdown, close the
//!   connection after the answer, which says `connection: close`;
//! - responses: a `date` field unless the service set one; `content-length` from the body's
//!   exact size, else `transfer-encoding: chunked`; no body for 1xx, 204 and 304; trailers
//!   are dropped (a client that asks for them with `TE` is hyper's); a body that fails, or
//!   ends before or runs past its length, closes the connection with the answer cut short.

use std::future::{poll_fn, Future as _};
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::agents::has_token;
use crate::app::{App, Open, HEADER_READ_TIMEOUT};
use crate::coarse_timer::{CoarseSleep, CoarseTimer};

/// The largest request head taken here (hyper takes larger ones).
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header fields in a request head taken here (hyper's default limit).
pub const MAX_HEADERS: usize = 100;
/// The largest request, head and body, taken here.
pub const MAX_BUFFERED: usize = 64 * 1024;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// Body bytes copied behind the head into one write; larger frames are written on their own.
const COALESCE: usize = 16 * 1024;
/// A write buffer grown past this by a large head is let go after its answer.
const KEEP_WRITE_CAPACITY: usize = 64 * 1024;

/// Serves an HTTP/1 connection whose client has sent its first bytes: requests this module
/// takes are answered here, and at the first one it does not, the connection goes to `hyper`.
pub async fn serve<S: App>(
    stream: TcpStream,
    service: S,
    open: &mut Open,
    timer: &CoarseTimer,
    hyper: &hyper::server::conn::http1::Builder,
) {
    let mut conn = Conn {
        stream,
        read: BytesMut::with_capacity(READ_CHUNK),
        write: Vec::new(),
    };
    let mut service = service;
    // Armed when a read finds nothing, disarmed when a request is in.
    let mut deadline: Option<CoarseSleep> = None;
    loop {
        let (request, mut close) = match parse(&mut conn.read) {
            Parsed::Request { request, close } => (request, close),
            Parsed::Invalid => {
                conn.answer_bad_request().await;
                return;
            }
            Parsed::Hyper => return conn.hand_over(service, open, hyper).await,
            parsed @ (Parsed::NeedHead | Parsed::NeedBody) => {
                match conn.read_more(open, timer, &mut deadline).await {
                    Read::More => continue,
                    Read::Closed => return,
                    // The head is in and the body is slow: hyper reads the rest of it (as it
                    // would have), with the request already on its way to the service.
                    Read::TimedOut if matches!(parsed, Parsed::NeedBody) => {
                        return conn.hand_over(service, open, hyper).await
                    }
                    Read::TimedOut => return,
                }
            }
        };
        deadline = None;
        let Ok(()) = poll_fn(|cx| tower::Service::poll_ready(&mut service, cx)).await;
        let response = {
            let call = pin!(tower::Service::call(&mut service, request));
            match conn.unless_client_leaves(call).await {
                Some(Ok(response)) => response,
                None => return,
            }
        };
        close |= open.is_draining() || says_close(response.headers());
        if !conn.answer(response, close).await || close {
            conn.close().await;
            return;
        }
        if conn.write.capacity() > KEEP_WRITE_CAPACITY {
            conn.write = Vec::new();
        }
    }
}

/// A client connection on this module's side.
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet taken as a request.
    read: BytesMut,
    /// A response head, and the body bytes that go out with it.
    write: Vec<u8>,
}

/// How a wait for more of a request ended.
enum Read {
    More,
    /// End of stream, a read error, or the thread drains.
    Closed,
    /// The header read timeout ran out.
    TimedOut,
}

impl Conn {
    /// Reads what the client sent next, within the header read timeout; `Closed` as soon as
    /// the thread drains while nothing is there to read.
    async fn read_more(
        &mut self,
        open: &mut Open,
        timer: &CoarseTimer,
        deadline: &mut Option<CoarseSleep>,
    ) -> Read {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 2 {
            self.read.reserve(READ_CHUNK);
        }
        let Conn { stream, read, .. } = self;
        poll_fn(|cx| {
            match pin!(stream.read_buf(&mut *read)).poll(cx) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Read::Closed),
                Poll::Ready(Ok(_)) => return Poll::Ready(Read::More),
                Poll::Pending => {}
            }
            if open.draining(cx) {
                return Poll::Ready(Read::Closed);
            }
            let sleep = deadline.get_or_insert_with(|| timer.sleep_for(HEADER_READ_TIMEOUT));
            match Pin::new(sleep).poll(cx) {
                Poll::Ready(()) => Poll::Ready(Read::TimedOut),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// `fut`'s output, or `None` once the client has closed its end (as hyper does, only
    /// looked at while no next request is buffered: a read of that finds nothing more to say).
    async fn unless_client_leaves<F: std::future::Future>(
        &mut self,
        fut: Pin<&mut F>,
    ) -> Option<F::Output> {
        let mut fut = fut;
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            if self.client_left(cx) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// Whether the client's end is closed; reads (and keeps) the start of a next request.
    fn client_left(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        if self.read.capacity() < READ_CHUNK / 2 {
            self.read.reserve(READ_CHUNK);
        }
        let Conn { stream, read, .. } = self;
        matches!(
            pin!(stream.read_buf(&mut *read)).poll(cx),
            Poll::Ready(Ok(0) | Err(_))
        )
    }

    /// Writes `response`; false if the connection cannot go on (the body failed or broke its
    /// length, or the client is gone).
    async fn answer(&mut self, response: Response<Body>, close: bool) -> bool {
        let (parts, mut body) = response.into_parts();
        let framing = if parts.status.is_informational()
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED
        {
            Framing::None
        } else if body.is_end_stream() {
            Framing::Length(0)
        } else {
            match body.size_hint().exact() {
                Some(n) => Framing::Length(n),
                None => Framing::Chunked,
            }
        };
        self.write.clear();
        write_head(
            &mut self.write,
            parts.status,
            &parts.headers,
            framing,
            close,
        );
        let mut left = match framing {
            Framing::None | Framing::Length(0) => return self.flush().await,
            Framing::Length(n) => n,
            Framing::Chunked => u64::MAX,
        };
        loop {
            // What the body has ready goes out with what is buffered; the buffer is written
            // before waiting for more.
            let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if !self.flush().await {
                        return false;
                    }
                    let next = pin!(poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)));
                    match self.unless_client_leaves(next).await {
                        Some(frame) => frame,
                        None => return false,
                    }
                }
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "response body failed; closing the connection");
                    let _ = self.flush().await;
                    return false;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_trailers) => continue,
                },
            };
            if data.is_empty() {
                continue;
            }
            if let Framing::Length(_) = framing {
                let len = data.len() as u64;
                if len > left {
                    tracing::debug!("response body longer than its length; closing the connection");
                    let _ = self.flush().await;
                    return false;
                }
                left -= len;
            } else {
                let _ = write!(self.write, "{:x}\r\n", data.len());
            }
            if self.write.len() + data.len() <= COALESCE {
                self.write.extend_from_slice(&data);
            } else if !(self.flush().await && self.write_all(&data).await) {
                return false;
            }
            if framing == Framing::Chunked {
                self.write.extend_from_slice(b"\r\n");
            }
        }
        match framing {
            Framing::Chunked => self.write.extend_from_slice(b"0\r\n\r\n"),
            _ if left > 0 => {
                tracing::debug!("response body shorter than its length; closing the connection");
                let _ = self.flush().await;
                return false;
            }
            _ => {}
        }
        self.flush().await
    }

    /// Writes and empties the write buffer; false if the client is gone.
    async fn flush(&mut self) -> bool {
        if self.write.is_empty() {
            return true;
        }
        let ok = self.stream.write_all(&self.write).await.is_ok();
        self.write.clear();
        ok
    }

    async fn write_all(&mut self, data: &[u8]) -> bool {
        self.stream.write_all(data).await.is_ok()
    }

    /// Ends the connection after its last answer: the client reads a FIN after the answer
    /// rather than a reset (which could overtake it).
    async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// A request whose head parsed but cannot be represented (a target or field `http` does
    /// not accept): 400, and the connection closes, as hyper answers it.
    async fn answer_bad_request(&mut self) {
        self.write.clear();
        let headers = HeaderMap::new();
        write_head(
            &mut self.write,
            StatusCode::BAD_REQUEST,
            &headers,
            Framing::Length(0),
            true,
        );
        if self.flush().await {
            self.close().await;
        }
    }

    /// Gives the connection, with what was read of it, to hyper's HTTP/1 server.
    async fn hand_over<S: App>(
        self,
        service: S,
        open: &mut Open,
        hyper: &hyper::server::conn::http1::Builder,
    ) {
        use tower::ServiceExt as _;
        let io = hyper_util::rt::TokioIo::new(Rewind {
            read: self.read.freeze(),
            stream: self.stream,
        });
        let service = hyper_util::service::TowerToHyperService::new(
            service.map_request(|r: Request<hyper::body::Incoming>| r.map(Body::new)),
        );
        let conn = hyper.serve_connection(io, service);
        let _ = open.serve(conn, |c| c.graceful_shutdown()).await;
    }
}

/// How a response's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// The status has no body (1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// What the buffered bytes hold.
// Moved once per request; boxing the request would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// A request, taken from the buffer; `close` if the client asked to close after it.
    Request { request: Request<Body>, close: bool },
    /// The head is not all there yet.
    NeedHead,
    /// The head is in, its body not yet all.
    NeedBody,
    /// A request for hyper's server (see the module's documentation).
    Hyper,
    /// A request taken from the buffer that `http` cannot represent.
    Invalid,
}

/// Takes the first request from `buf` if it is whole and of the shape this module serves.
fn parse(buf: &mut BytesMut) -> Parsed {
    if buf.is_empty() {
        return Parsed::NeedHead;
    }
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut []);
    let head_len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut head, buf, &mut raw)
    {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::NeedHead,
        _ => return Parsed::Hyper,
    };
    if head.version != Some(1) {
        return Parsed::Hyper;
    }
    let method = match head.method {
        Some("GET") => Method::GET,
        Some("POST") => Method::POST,
        _ => return Parsed::Hyper,
    };
    let Some(path) = head.path.filter(|p| p.starts_with('/')) else {
        return Parsed::Hyper;
    };
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let path = offset(path.as_bytes())..offset(path.as_bytes()) + path.len();
    // Where each field's name and value lie in the head, to share the head's bytes instead of
    // copying them.
    let mut fields = [[0u16; 4]; MAX_HEADERS];
    let mut length: Option<u64> = None;
    let mut close = false;
    for (i, field) in head.headers.iter().enumerate() {
        let name = field.name.as_bytes();
        let value = field.value;
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return Parsed::Hyper;
            }
            match decimal(value) {
                Some(n) => length = Some(n),
                None => return Parsed::Hyper,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"te")
        {
            return Parsed::Hyper;
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(value, b"upgrade") {
                return Parsed::Hyper;
            }
            close |= has_token(value, b"close");
        }
        // Each fits: the head is at most MAX_HEAD (16 KiB) bytes.
        fields[i] = [
            offset(name) as u16,
            name.len() as u16,
            offset(value) as u16,
            value.len() as u16,
        ];
    }
    let length = length.unwrap_or(0);
    let Some(total) = usize::try_from(length)
        .ok()
        .and_then(|l| l.checked_add(head_len))
        .filter(|&t| t <= MAX_BUFFERED)
    else {
        return Parsed::Hyper;
    };
    if buf.len() < total {
        return Parsed::NeedBody;
    }
    // The request is taken from here on: what `http` does not accept of it (httparse and it
    // agree on field names and values; a target may differ) is answered 400.
    let count = head.headers.len();
    let head_bytes = buf.split_to(head_len).freeze();
    let body = buf.split_to(total - head_len).freeze();
    let Ok(uri) = http::Uri::from_maybe_shared(head_bytes.slice(path)) else {
        return Parsed::Invalid;
    };
    let mut headers = HeaderMap::with_capacity(count);
    for &[name_at, name_len, value_at, value_len] in &fields[..count] {
        let range = |at: u16, len: u16| usize::from(at)..usize::from(at) + usize::from(len);
        let name = HeaderName::from_bytes(&head_bytes[range(name_at, name_len)]);
        let value = HeaderValue::from_maybe_shared(head_bytes.slice(range(value_at, value_len)));
        let (Ok(name), Ok(value)) = (name, value) else {
            return Parsed::Invalid;
        };
        headers.append(name, value);
    }
    let mut request = Request::new(if body.is_empty() {
        Body::empty()
    } else {
        Body::from(body)
    });
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Parsed::Request { request, close }
}

/// A `Content-Length` value: one decimal number, without sign or spaces (RFC 9110 §8.6).
fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

/// Whether a service's response asks to close the connection.
fn says_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v.as_bytes(), b"close"))
}

/// Appends a response head: the status line, the service's fields less its framing fields,
/// this module's framing, `date` unless the service set one, and `connection: close` when the
/// connection closes after it.
fn write_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut closes = false;
    for (name, value) in headers {
        if matches!(*name, header::CONTENT_LENGTH | header::TRANSFER_ENCODING) {
            continue;
        }
        if *name == header::CONNECTION && close {
            closes |= has_token(value.as_bytes(), b"close");
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        date::append(out);
        out.extend_from_slice(b"\r\n");
    }
    if close && !closes {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The `date` field's value (RFC 9110 §5.6.7), formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    pub fn append(out: &mut Vec<u8>) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        CACHED.with_borrow_mut(|(at, text)| {
            if *at != secs {
                *at = secs;
                *text = format(secs);
            }
            out.extend_from_slice(text.as_bytes());
        });
    }

    pub fn format(secs: u64) -> String {
        let at = i64::try_from(secs)
            .ok()
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
            .unwrap_or_default();
        at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
    }
}

/// A connection handed to hyper: the bytes already read first, then the socket.
struct Rewind {
    read: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn parse_all(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let parsed = parse(&mut buf);
        (parsed, buf)
    }

    fn kind(parsed: &Parsed) -> &'static str {
        match parsed {
            Parsed::Request { .. } => "request",
            Parsed::NeedHead => "need head",
            Parsed::NeedBody => "need body",
            Parsed::Hyper => "hyper",
            Parsed::Invalid => "invalid",
        }
    }

    #[tokio::test]
    async fn plain_requests_are_taken_whole_and_what_follows_is_left() {
        let (parsed, rest) = parse_all(
            b"POST /w/a2a?q=1 HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\nx-a:  2 \r\nContent-Length: 3\r\n\r\nabcGET /",
        );
        let Parsed::Request { request, close } = parsed else {
            panic!("{}", kind(&parsed));
        };
        assert!(!close);
        assert_eq!(&rest[..], b"GET /");
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/w/a2a?q=1");
        assert_eq!(request.version(), http::Version::HTTP_11);
        assert_eq!(request.headers()["host"], "gw");
        let xa: Vec<_> = request.headers().get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(request.headers()["content-length"], "3");
        let body = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"abc");

        let (parsed, rest) = parse_all(b"GET / HTTP/1.1\r\n\r\n");
        let Parsed::Request { request, .. } = parsed else {
            panic!("{}", kind(&parsed));
        };
        assert!(rest.is_empty());
        assert!(request.into_body().is_end_stream());
    }

    #[test]
    fn requests_of_other_shapes_are_left_whole_for_hyper() {
        let many_fields = {
            let mut head = b"GET / HTTP/1.1\r\n".to_vec();
            for i in 0..=MAX_HEADERS {
                head.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            head
        };
        let large_body = format!("POST / HTTP/1.1\r\ncontent-length: {MAX_BUFFERED}\r\n\r\n");
        let cases: Vec<&[u8]> = vec![
            b"HEAD / HTTP/1.1\r\n\r\n",
            b"PUT / HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"CONNECT gw:443 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://gw/ HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nconnection: keep-alive, Upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nte: trailers\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\nab",
            b"POST / HTTP/1.1\r\ncontent-length: +1\r\n\r\na",
            b"POST / HTTP/1.1\r\ncontent-length: 1,1\r\n\r\na",
            b"POST / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\na",
            b"GET / HTTP/1.1\r\nbad\x01name: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nx: a\r\n folded\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
            &many_fields,
            large_body.as_bytes(),
        ];
        for case in cases {
            let (parsed, rest) = parse_all(case);
            assert_eq!(
                kind(&parsed),
                "hyper",
                "{:?}",
                String::from_utf8_lossy(case)
            );
            assert_eq!(&rest[..], case, "the buffer was changed");
        }
    }

    #[test]
    fn partial_requests_wait_and_an_endless_head_goes_to_hyper() {
        for (case, expected) in [
            (&b""[..], "need head"),
            (b"GET / HTTP/1.1\r\nhost: g", "need head"),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nabc",
                "need body",
            ),
        ] {
            let (parsed, rest) = parse_all(case);
            assert_eq!(
                kind(&parsed),
                expected,
                "{:?}",
                String::from_utf8_lossy(case)
            );
            assert_eq!(&rest[..], case);
        }
        let mut endless = b"GET / HTTP/1.1\r\nx: ".to_vec();
        endless.resize(MAX_HEAD, b'a');
        assert_eq!(kind(&parse_all(&endless).0), "hyper");
        endless.truncate(MAX_HEAD - 1);
        assert_eq!(kind(&parse_all(&endless).0), "need head");
    }

    #[test]
    fn a_target_http_refuses_is_taken_and_answered_400() {
        // httparse takes `<`, `>` and a backquote in a path (and `"` in a query); `http` does not.
        for target in ["/a<b", "/a>b", "/a`b", "/a?b\"c"] {
            let request = format!("GET {target} HTTP/1.1\r\n\r\nGET /");
            let (parsed, rest) = parse_all(request.as_bytes());
            assert_eq!(kind(&parsed), "invalid", "{target}");
            assert_eq!(&rest[..], b"GET /", "{target}");
        }
    }

    #[test]
    fn connection_close_is_seen_in_any_field_and_token() {
        for (head, close) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], false),
            (b"GET / HTTP/1.1\r\nconnection: keep-alive\r\n\r\n", false),
            (
                b"GET / HTTP/1.1\r\nConnection: keep-alive , CLOSE\r\n\r\n",
                true,
            ),
            (
                b"GET / HTTP/1.1\r\nconnection: close\r\nconnection: keep-alive\r\n\r\n",
                true,
            ),
        ] {
            let Parsed::Request { close: seen, .. } = parse_all(head).0 else {
                panic!("not taken");
            };
            assert_eq!(seen, close, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn heads_carry_this_module_s_framing_a_date_and_close() {
        let mut headers = HeaderMap::new();
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("transfer-encoding", HeaderValue::from_static("gzip"));
        headers.insert("x-request-id", HeaderValue::from_static("r-1"));
        let written = |framing, close, headers: &HeaderMap| {
            let mut out = Vec::new();
            write_head(&mut out, StatusCode::OK, headers, framing, close);
            String::from_utf8(out).unwrap()
        };
        let head = written(Framing::Length(3), true, &headers);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        assert_eq!(head.matches("content-length").count(), 1, "{head}");
        assert!(head.contains("\r\ncontent-length: 3\r\n"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert!(head.contains("\r\nx-request-id: r-1\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert_eq!(head.matches("\r\ndate: ").count(), 1, "{head}");

        let head = written(Framing::Chunked, false, &headers);
        assert!(
            head.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{head}"
        );
        assert!(!head.contains("content-length"), "{head}");
        assert!(!head.contains("connection"), "{head}");

        headers.insert("connection", HeaderValue::from_static("close"));
        headers.insert(
            "date",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        let head = written(Framing::None, true, &headers);
        assert!(!head.contains("content-length"), "{head}");
        assert_eq!(head.matches("connection").count(), 1, "{head}");
        assert_eq!(head.matches("date").count(), 1, "{head}");
        assert!(
            head.contains("\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"),
            "{head}"
        );

        let mut out = Vec::new();
        write_head(
            &mut out,
            StatusCode::from_u16(599).unwrap(),
            &HeaderMap::new(),
            Framing::Length(0),
            false,
        );
        assert!(out.starts_with(b"HTTP/1.1 599 \r\n"));
    }

    #[test]
    fn dates_are_http_dates() {
        assert_eq!(date::format(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(date::format(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        let mut out = Vec::new();
        date::append(&mut out);
        assert_eq!(out.len(), 29);
    }

    #[test]
    fn lengths_are_plain_decimal_numbers() {
        for (value, length) in [
            (&b"0"[..], Some(0)),
            (b"0042", Some(42)),
            (b"9999999999999999999", Some(9_999_999_999_999_999_999)),
            (b"18446744073709551615", None),
            (b"", None),
            (b"4 ", None),
            (b"-1", None),
            (b"0x10", None),
        ] {
            assert_eq!(
                decimal(value),
                length,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }
}
