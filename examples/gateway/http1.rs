//! The gateway's HTTP/1.1 server for plain requests; hyper's serves everything else.
//!
//! Almost every request a gateway serves has one shape: an HTTP/1.1 `GET` or `POST` with a path
//! and at most one decimal `Content-Length`, answered with a body of known length or a stream.
//! This module reads and answers those itself, with a fraction of the work hyper's general
//! server does per request (BENCHMARKS.md, "The gateway against nginx", the instruction table).
//! Anything else hands the connection, with every byte read so far, to hyper's HTTP/1 server
//! for the rest of its life (counted by `gateway_http1_handovers_total{reason}`):
//!
//! - another method (`HEAD`, `PUT`, `PATCH`, `DELETE`, `OPTIONS`, `CONNECT`, …: `method`) or
//!   version (`version`), a request target that is not a path (`target`);
//! - `Transfer-Encoding`, more than one `Content-Length` or one that is not a decimal number
//!   (`framing`); `Expect`, `Upgrade` (or `Connection: upgrade`), `TE` (`expect_upgrade_te`);
//! - a head that does not parse or has over [`MAX_HEADERS`] fields (`malformed`).
//!
//! So hyper answers malformed requests (400, …) as before, and the hostile cases (request
//! smuggling, chunked bodies, `100 Continue`, upgrades) stay with it. A head over
//! [`MAX_HEAD`] bytes, complete or not, is answered 431 here (hyper took up to ~400 KiB). What this module keeps of hyper's server:
//!
//! - the header read timeout: from the end of the last answer (or the connection's first
//!   bytes) until the next head is in; an idle keep-alive connection, or one whose head does
//!   not complete, is closed after it (a head is complete before its connection is handed
//!   over, so hyper's own timeout starts only for the requests after);
//! - request bodies stream: the service is called once the head is in, with what of the body
//!   came with it, and the rest is read while the service runs (at most [`BODY_QUEUE`] bytes
//!   ahead of what it has taken, and at most [`BODY_QUEUE_CHUNKS`] reads); an answer that
//!   comes before the body is all in: if the service has let go of the body, what of it has
//!   arrived is read and dropped (up to [`BODY_QUEUE`] bytes) and the connection goes on if
//!   that finishes it, as with hyper; otherwise the body is cut (a reader still holding it
//!   gets an error; hyper would feed it on) and the connection closes after the answer;
//! - a client that closes its end while its request is in flight (its body included)
//!   cancels the request (the agent's exchange is dropped), as long as no next request is
//!   buffered and the body's queue is not full (then it is seen once the service moves);
//! - pipelined requests are answered in order;
//! - `Connection: close` from the client or the service, and draining at shutdown, close the
//!   connection after the answer, which says `connection: close`; draining closes an idle
//!   connection at once, and answers a request whose head is partly in first;
//! - responses: a `date` field unless the service set one; `content-length` from the body's
//!   exact size (else from the service's `Content-Length`), else `transfer-encoding: chunked`;
//!   no body for 204 and 304; a 1xx from the service becomes a 500; trailers are dropped (a
//!   client that asks for them with `TE` is hyper's); a body that fails, or ends before or runs
//!   past its length, closes the connection with the answer cut short.

use std::collections::VecDeque;
use std::future::{poll_fn, Future as _};
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::agents::has_token;
use crate::app::{App, Open, HEADER_READ_TIMEOUT};
use crate::coarse_timer::{CoarseSleep, CoarseTimer};

/// The largest request head: over it, complete or not, the answer is 431 (nginx's limit too,
/// 4 × 8 KiB).
pub const MAX_HEAD: usize = 32 * 1024;
/// The most header fields in a request head taken here (hyper's default limit).
pub const MAX_HEADERS: usize = 100;
/// Request body bytes read ahead of what the service has taken (one read may overshoot it).
pub const BODY_QUEUE: usize = 64 * 1024;
/// Reads of request body queued ahead of what the service has taken.
pub const BODY_QUEUE_CHUNKS: usize = 64;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// Body bytes copied behind the head into one write; larger frames are written on their own.
const COALESCE: usize = 16 * 1024;
/// A write buffer grown past this (by a large head, or body bytes copied behind it) is let
/// go after its answer: an idle connection keeps at most this much of it.
const KEEP_WRITE_CAPACITY: usize = 4 * 1024;
/// A read buffer grown past this by a large request is let go once empty.
const KEEP_READ_CAPACITY: usize = 2 * READ_CHUNK;

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
    // The header read timeout: armed when a read finds nothing, disarmed when a head is in.
    let mut deadline: Option<CoarseSleep> = None;
    // How much of a partial head has been parsed: it is parsed again only once the bytes
    // after that could end it.
    let mut parsed_up_to: usize = 0;
    // Empty lines dropped since the last request: they count towards the head's limit.
    let mut skipped = 0;
    loop {
        // Empty lines before a request (RFC 9112 §2.2) are dropped, so that a client sending
        // only those cannot have the whole buffer parsed again for each of them.
        let blank = leading_empty_lines(&conn.read);
        if blank > 0 {
            bytes::Buf::advance(&mut conn.read, blank);
            parsed_up_to = parsed_up_to.saturating_sub(blank);
            skipped += blank;
        }
        let parsed = if may_end_head(&conn.read, parsed_up_to) {
            parse(&mut conn.read)
        } else {
            Parsed::NeedHead
        };
        let (request, feed, mut close) = match parsed {
            Parsed::Request {
                request,
                feed,
                close,
            } => (request, feed, close),
            Parsed::Invalid => {
                conn.answer_error(StatusCode::BAD_REQUEST).await;
                return;
            }
            Parsed::Hyper(reason) => {
                // Its slot back now: a handed-over connection may live long.
                drop(deadline.take());
                metrics::counter!("gateway_http1_handovers_total", "reason" => reason).increment(1);
                return conn.hand_over(service, open, hyper).await;
            }
            Parsed::TooLarge => {
                conn.answer_error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
                    .await;
                return;
            }
            Parsed::NeedHead if conn.read.len() + skipped >= MAX_HEAD => {
                // Not handed to hyper: it would take up to ~400 KiB, with a header read timeout
                // of its own.
                conn.answer_error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
                    .await;
                return;
            }
            Parsed::NeedHead => {
                parsed_up_to = conn.read.len();
                if conn.read_more(open, timer, &mut deadline).await {
                    continue;
                }
                return;
            }
        };
        deadline = None;
        parsed_up_to = 0;
        skipped = 0;
        let Ok(()) = poll_fn(|cx| tower::Service::poll_ready(&mut service, cx)).await;
        let response = {
            let call = pin!(tower::Service::call(&mut service, request));
            match conn.drive(call, feed.as_ref()).await {
                Some(Ok(response)) => response,
                None => return,
            }
        };
        if let Some(feed) = feed.filter(|f| f.left() > 0) {
            // Answered before its body was all in. If nothing reads it any more, what of it has
            // arrived is read and dropped, as hyper does; if that does not finish it, where the
            // next request starts is unknown, and the connection ends after this answer.
            if feed.reader_gone() {
                conn.drop_arrived(&feed).await;
            }
            if feed.left() > 0 {
                feed.cut();
                close = true;
            }
        }
        close |= open.is_draining() || says_close(response.headers());
        if !conn.answer(response, close).await || close {
            conn.close().await;
            return;
        }
        if conn.write.capacity() > KEEP_WRITE_CAPACITY {
            conn.write = Vec::new();
        }
        if conn.read.is_empty() && conn.read.capacity() > KEEP_READ_CAPACITY {
            conn.read = BytesMut::new();
        }
    }
}

/// How many bytes at the start of `buf` are whole empty lines (`\r\n` or `\n`).
fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match &buf[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [b'\n', ..] => at += 1,
            _ => return at,
        }
    }
}

/// Whether `buf`, parsed up to `parsed_up_to` without finding the end of a head, may now hold
/// one: the blank line that ends it (`\n\n` or `\n\r\n`, as httparse reads lines) is in the
/// bytes since, or overlaps them.
fn may_end_head(buf: &[u8], parsed_up_to: usize) -> bool {
    if parsed_up_to == 0 {
        return !buf.is_empty();
    }
    buf[parsed_up_to.saturating_sub(2)..]
        .windows(2)
        .any(|w| w == b"\n\n" || w == b"\n\r")
}

/// A client connection on this module's side.
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet taken as a request.
    read: BytesMut,
    /// A response head, and the body bytes that go out with it.
    write: Vec<u8>,
}

impl Conn {
    /// Reads what the client sent next, within the header read timeout; false at end of
    /// stream, on an error, when the timeout runs out, or when the thread drains while nothing
    /// of a next request is there (a part of one is read on: it is answered, then the
    /// connection closes).
    async fn read_more(
        &mut self,
        open: &mut Open,
        timer: &CoarseTimer,
        deadline: &mut Option<CoarseSleep>,
    ) -> bool {
        self.make_room();
        let Conn { stream, read, .. } = self;
        poll_fn(|cx| {
            match pin!(stream.read_buf(&mut *read)).poll(cx) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(false),
                Poll::Ready(Ok(_)) => return Poll::Ready(true),
                Poll::Pending => {}
            }
            if read.is_empty() && open.draining(cx) {
                return Poll::Ready(false);
            }
            let sleep = deadline.get_or_insert_with(|| timer.sleep_for(HEADER_READ_TIMEOUT));
            Pin::new(sleep).poll(cx).map(|()| false)
        })
        .await
    }

    /// `fut`'s output, or `None` once the client has closed its end. Meanwhile the rest of
    /// the request's body, if `feed` waits for it, is read and queued for the service; once it
    /// is all in, the end of the client's stream is looked for as hyper does: only while no
    /// next request is buffered (a read of that finds nothing more to say).
    async fn drive<F: std::future::Future>(
        &mut self,
        fut: Pin<&mut F>,
        feed: Option<&Feed>,
    ) -> Option<F::Output> {
        let mut fut = fut;
        poll_fn(|cx| loop {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            match self.pump(cx, feed) {
                Pump::Gone => return Poll::Ready(None),
                // The service may take it at once.
                Pump::Fed => continue,
                Pump::Idle => return Poll::Pending,
            }
        })
        .await
    }

    /// Reads and drops what of `feed`'s body has arrived (at most [`BODY_QUEUE`] bytes),
    /// without waiting for more.
    async fn drop_arrived(&mut self, feed: &Feed) {
        let mut budget = BODY_QUEUE;
        let Conn { stream, read, .. } = self;
        poll_fn(|cx| loop {
            if feed.left() == 0 || budget == 0 {
                return Poll::Ready(());
            }
            if read.is_empty() {
                if read.capacity() < READ_CHUNK / 2 {
                    read.reserve(READ_CHUNK);
                }
                match pin!(stream.read_buf(&mut *read)).poll(cx) {
                    Poll::Ready(Ok(n)) if n > 0 => {}
                    _ => return Poll::Ready(()),
                }
            }
            budget = budget.saturating_sub(feed.drop_from(read));
        })
        .await
    }

    /// Reads for the body `feed` waits for, or looks for the end of the client's stream.
    fn pump(&mut self, cx: &mut Context<'_>, feed: Option<&Feed>) -> Pump {
        if let Some(feed) = feed.filter(|f| f.left() > 0) {
            if !feed.has_room(cx) {
                return Pump::Idle;
            }
            if self.read.is_empty() {
                self.make_room();
                let Conn { stream, read, .. } = self;
                match pin!(stream.read_buf(&mut *read)).poll(cx) {
                    Poll::Ready(Ok(0) | Err(_)) => {
                        feed.cut();
                        return Pump::Gone;
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Pending => return Pump::Idle,
                }
            }
            feed.push(&mut self.read, cx);
            return Pump::Fed;
        }
        if !self.read.is_empty() {
            return Pump::Idle;
        }
        self.make_room();
        let Conn { stream, read, .. } = self;
        match pin!(stream.read_buf(&mut *read)).poll(cx) {
            Poll::Ready(Ok(0) | Err(_)) => Pump::Gone,
            _ => Pump::Idle,
        }
    }

    /// Room for a read in the read buffer.
    fn make_room(&mut self) {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 2 {
            self.read.reserve(READ_CHUNK);
        }
    }

    /// Writes `response`; false if the connection cannot go on (the body failed or broke its
    /// length, or the client is gone).
    async fn answer(&mut self, response: Response<Body>, close: bool) -> bool {
        let (mut parts, mut body) = response.into_parts();
        if parts.status.is_informational() {
            // As hyper does: a 1xx is not a final answer, and a client would take the next
            // one for this request's.
            tracing::warn!(status = %parts.status, "a 1xx response from the service: 500 instead");
            self.answer_error(StatusCode::INTERNAL_SERVER_ERROR).await;
            return false;
        }
        let framing =
            if parts.status == StatusCode::NO_CONTENT || parts.status == StatusCode::NOT_MODIFIED {
                Framing::None
            } else if body.is_end_stream() {
                Framing::Length(0)
            } else {
                match body
                    .size_hint()
                    .exact()
                    .or_else(|| length_field(&parts.headers))
                {
                    Some(n) => Framing::Length(n),
                    None => Framing::Chunked,
                }
            };
        if framing == Framing::None {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
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
                    match self.drive(next, None).await {
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

    /// Ends the connection after its last answer with a FIN after it. (Bytes the client sent
    /// that are left unread still make the kernel answer them with a reset, as with hyper.)
    async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// An answer with `status` and no body, after which the connection closes: to a request
    /// this module cannot take (400 for a target or field `http` does not accept, as hyper
    /// answers it; 431 for a head over [`MAX_HEAD`], complete or not), or in place of a 1xx.
    /// False if the client is gone.
    async fn answer_error(&mut self, status: StatusCode) -> bool {
        self.write.clear();
        let headers = HeaderMap::new();
        write_head(&mut self.write, status, &headers, Framing::Length(0), true);
        let written = self.flush().await;
        if written {
            self.close().await;
        }
        written
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

/// What a look at the client connection found.
enum Pump {
    /// The client's end is closed (or failed).
    Gone,
    /// Body bytes were queued for the service.
    Fed,
    /// Nothing to do until the socket or the service moves.
    Idle,
}

/// A request body still arriving: the connection's task reads it while the service runs and
/// queues it here; the service's [`ArrivingBody`] takes it from here.
#[derive(Clone)]
struct Feed(Arc<Mutex<Arrival>>);

struct Arrival {
    /// What was read and not yet taken: one chunk per read, so their number is bounded too
    /// (a client sending a byte at a time would otherwise queue 32 bytes of bookkeeping each).
    queue: VecDeque<Bytes>,
    queued: usize,
    /// Bytes of the body still to be read from the connection.
    left: u64,
    /// The body will not be all read: the client left, or the answer came first.
    cut: bool,
    /// The body's reader, waiting for more.
    waker: Option<Waker>,
    /// The connection's task, waiting for room in the queue (the body may be read by another
    /// task).
    room: Option<Waker>,
}

impl Arrival {
    fn has_room(&self) -> bool {
        self.queued < BODY_QUEUE && self.queue.len() < BODY_QUEUE_CHUNKS
    }
}

impl Feed {
    fn lock(&self) -> MutexGuard<'_, Arrival> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn left(&self) -> u64 {
        self.lock().left
    }

    /// Whether the queue has room; if not, `cx` is woken when the reader makes some.
    fn has_room(&self, cx: &Context<'_>) -> bool {
        let mut arrival = self.lock();
        if arrival.has_room() {
            return true;
        }
        arrival.room = Some(cx.waker().clone());
        false
    }

    /// Queues what of `read` belongs to the body (the rest is the next request's), and wakes
    /// the body's reader unless it is the task that polls `cx` (which polls it next).
    fn push(&self, read: &mut BytesMut, cx: &Context<'_>) {
        let mut arrival = self.lock();
        let take = read
            .len()
            .min(usize::try_from(arrival.left).unwrap_or(usize::MAX));
        if take == 0 {
            return;
        }
        arrival.queue.push_back(read.split_to(take).freeze());
        arrival.queued += take;
        arrival.left -= take as u64;
        if let Some(waker) = arrival.waker.take() {
            if !waker.will_wake(cx.waker()) {
                waker.wake();
            }
        }
    }

    /// Whether the body's reader has dropped it.
    fn reader_gone(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// Drops what of `read` belongs to the body; how much that was.
    fn drop_from(&self, read: &mut BytesMut) -> usize {
        let mut arrival = self.lock();
        let take = read
            .len()
            .min(usize::try_from(arrival.left).unwrap_or(usize::MAX));
        bytes::Buf::advance(read, take);
        arrival.left -= take as u64;
        take
    }

    /// Marks the body as never to be all read: its reader gets an error after what is queued.
    fn cut(&self) {
        let mut arrival = self.lock();
        arrival.cut = true;
        if let Some(waker) = arrival.waker.take() {
            waker.wake();
        }
    }
}

/// The service's side of a [`Feed`]: the body bytes as they are read, then its end (or an
/// error if it is cut short).
struct ArrivingBody(Feed);

impl http_body::Body for ArrivingBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        let mut arrival = self.0.lock();
        if let Some(chunk) = arrival.queue.pop_front() {
            arrival.queued -= chunk.len();
            if arrival.has_room() {
                if let Some(room) = arrival.room.take() {
                    if !room.will_wake(cx.waker()) {
                        room.wake();
                    }
                }
            }
            return Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
        }
        if arrival.left == 0 {
            return Poll::Ready(None);
        }
        if arrival.cut {
            return Poll::Ready(Some(Err(std::io::ErrorKind::UnexpectedEof.into())));
        }
        match &arrival.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => arrival.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let arrival = self.0.lock();
        arrival.left == 0 && arrival.queue.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let arrival = self.0.lock();
        http_body::SizeHint::with_exact(arrival.left + arrival.queued as u64)
    }
}

/// How a response's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// The status has no body (204, 304; a 1xx is answered 500 before).
    None,
    Length(u64),
    Chunked,
}

/// What the buffered bytes hold.
// Moved once per request; boxing the request would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// A request, taken from the buffer with what of its body is there (`feed` waits for the
    /// rest); `close` if the client asked to close after it.
    Request {
        request: Request<Body>,
        feed: Option<Feed>,
        close: bool,
    },
    /// The head is not all there yet.
    NeedHead,
    /// A head over [`MAX_HEAD`] bytes.
    TooLarge,
    /// A request for hyper's server (see the module's documentation), and why (the
    /// `reason` of `gateway_http1_handovers_total`).
    Hyper(&'static str),
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
        Ok(httparse::Status::Complete(_)) => return Parsed::TooLarge,
        Ok(httparse::Status::Partial) => return Parsed::NeedHead,
        Err(_) => return Parsed::Hyper("malformed"),
    };
    if head.version != Some(1) {
        return Parsed::Hyper("version");
    }
    let method = match head.method {
        Some("GET") => Method::GET,
        Some("POST") => Method::POST,
        _ => return Parsed::Hyper("method"),
    };
    let Some(path) = head.path.filter(|p| p.starts_with('/')) else {
        return Parsed::Hyper("target");
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
                return Parsed::Hyper("framing");
            }
            match decimal(value) {
                Some(n) => length = Some(n),
                None => return Parsed::Hyper("framing"),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Parsed::Hyper("framing");
        } else if name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"te")
        {
            return Parsed::Hyper("expect_upgrade_te");
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(value, b"upgrade") {
                return Parsed::Hyper("expect_upgrade_te");
            }
            close |= has_token(value, b"close");
        }
        // Each fits: the head is at most MAX_HEAD (32 KiB) bytes.
        fields[i] = [
            offset(name) as u16,
            name.len() as u16,
            offset(value) as u16,
            value.len() as u16,
        ];
    }
    let length = length.unwrap_or(0);
    // What of the body is here: all of it, or what came with the head.
    let here =
        usize::try_from(length).map_or(buf.len() - head_len, |l| l.min(buf.len() - head_len));
    // The request is taken from here on: what `http` does not accept of it (httparse and it
    // agree on field names and values; a target may differ) is answered 400.
    let count = head.headers.len();
    let head_bytes = buf.split_to(head_len).freeze();
    let body = buf.split_to(here).freeze();
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
    let left = length - here as u64;
    let (body, feed) = if left > 0 {
        let mut queue = VecDeque::new();
        if !body.is_empty() {
            queue.push_back(body);
        }
        let feed = Feed(Arc::new(Mutex::new(Arrival {
            queue,
            queued: here,
            left,
            cut: false,
            waker: None,
            room: None,
        })));
        (Body::new(ArrivingBody(feed.clone())), Some(feed))
    } else if body.is_empty() {
        (Body::empty(), None)
    } else {
        (Body::from(body), None)
    };
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Parsed::Request {
        request,
        feed,
        close,
    }
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

/// A response's `Content-Length`, if it has one that is a plain decimal number.
fn length_field(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => decimal(value.as_bytes()),
        _ => None,
    }
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
    for (name, value) in headers {
        // This module frames the body; a closing connection says `close` alone.
        if matches!(*name, header::CONTENT_LENGTH | header::TRANSFER_ENCODING)
            || (close && *name == header::CONNECTION)
        {
            continue;
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
    if close {
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

    /// The request `bytes` hold, whose body is not all there, and its feed.
    fn streaming(bytes: &[u8]) -> (Request<Body>, Feed) {
        let (parsed, rest) = parse_all(bytes);
        assert!(rest.is_empty());
        match parsed {
            Parsed::Request {
                request,
                feed: Some(feed),
                ..
            } => (request, feed),
            parsed => panic!("{}", kind(&parsed)),
        }
    }

    fn kind(parsed: &Parsed) -> String {
        match parsed {
            Parsed::Request { .. } => "request".into(),
            Parsed::NeedHead => "need head".into(),
            Parsed::TooLarge => "too large".into(),
            Parsed::Hyper(reason) => format!("hyper: {reason}"),
            Parsed::Invalid => "invalid".into(),
        }
    }

    #[tokio::test]
    async fn plain_requests_are_taken_whole_and_what_follows_is_left() {
        let (parsed, rest) = parse_all(
            b"POST /w/a2a?q=1 HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\nx-a:  2 \r\nContent-Length: 3\r\n\r\nabcGET /",
        );
        let Parsed::Request {
            request,
            feed: None,
            close: false,
        } = parsed
        else {
            panic!("{}", kind(&parsed));
        };
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
        let large_head = {
            let mut head = b"GET / HTTP/1.1\r\nx: ".to_vec();
            head.resize(MAX_HEAD, b'a');
            head.extend_from_slice(b"\r\n\r\n");
            head
        };
        let cases: Vec<(&[u8], &str)> = vec![
            (b"HEAD / HTTP/1.1\r\n\r\n", "method"),
            (b"PUT / HTTP/1.1\r\ncontent-length: 0\r\n\r\n", "method"),
            (b"OPTIONS * HTTP/1.1\r\n\r\n", "method"),
            (b"CONNECT gw:443 HTTP/1.1\r\n\r\n", "method"),
            (b"GET / HTTP/1.0\r\n\r\n", "version"),
            (b"GET http://gw/ HTTP/1.1\r\n\r\n", "target"),
            (b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", "framing"),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
                "framing",
            ),
            (b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\nab", "framing"),
            (b"POST / HTTP/1.1\r\ncontent-length: +1\r\n\r\na", "framing"),
            (b"POST / HTTP/1.1\r\ncontent-length: 1,1\r\n\r\na", "framing"),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\na",
                "framing",
            ),
            (
                b"POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
                "expect_upgrade_te",
            ),
            (b"GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n", "expect_upgrade_te"),
            (b"GET / HTTP/1.1\r\nconnection: keep-alive, Upgrade\r\n\r\n", "expect_upgrade_te"),
            (b"GET / HTTP/1.1\r\nte: trailers\r\n\r\n", "expect_upgrade_te"),
            (b"GET / HTTP/1.1\r\nbad\x01name: 1\r\n\r\n", "malformed"),
            (b"GET / HTTP/1.1\r\nx: a\r\n folded\r\n\r\n", "malformed"),
            (b"GET /\x7f HTTP/1.1\r\n\r\n", "malformed"),
            (&many_fields, "malformed"),
        ];
        assert_eq!(kind(&parse_all(&large_head).0), "too large");
        for (case, reason) in cases {
            let (parsed, rest) = parse_all(case);
            assert_eq!(
                kind(&parsed),
                format!("hyper: {reason}"),
                "{:?}",
                String::from_utf8_lossy(case)
            );
            assert_eq!(&rest[..], case, "the buffer was changed");
        }
    }

    #[tokio::test]
    async fn a_body_not_all_there_streams_from_what_came_with_its_head() {
        let (request, feed) = streaming(b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc");
        let mut body = request.into_body();
        assert_eq!(body.size_hint().exact(), Some(10));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"abc");
        assert_eq!(body.size_hint().exact(), Some(7));
        // The rest, and the next request's start, arrive: only the body's part is taken.
        let mut read = BytesMut::from(&b"defghijGET /"[..]);
        let waker = futures_util::task::noop_waker();
        feed.push(&mut read, &Context::from_waker(&waker));
        assert_eq!(&read[..], b"GET /");
        assert_eq!(feed.left(), 0);
        let rest = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&rest[..], b"defghij");
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());

        // A body cut short: what was queued, then an error.
        let (request, feed) = streaming(b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc");
        feed.cut();
        let mut body = request.into_body();
        assert_eq!(
            &body.frame().await.unwrap().unwrap().into_data().unwrap()[..],
            b"abc"
        );
        assert!(body.frame().await.unwrap().is_err());
    }

    #[test]
    fn a_reader_that_makes_room_in_the_queue_wakes_the_connection() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl futures_util::task::ArcWake for Count {
            fn wake_by_ref(count: &Arc<Self>) {
                count.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let (request, feed) = streaming(b"POST / HTTP/1.1\r\ncontent-length: 200000\r\n\r\n");
        let woken = Arc::new(Count(Default::default()));
        let conn = futures_util::task::waker(woken.clone());
        let conn = Context::from_waker(&conn);
        let mut read = BytesMut::from(&vec![b'x'; BODY_QUEUE][..]);
        feed.push(&mut read, &conn);
        assert!(read.is_empty());
        assert!(!feed.has_room(&conn));
        // The body read on another task: taking a chunk wakes the connection's.
        let reader = futures_util::task::noop_waker();
        let mut body = request.into_body();
        let frame = Pin::new(&mut body).poll_frame(&mut Context::from_waker(&reader));
        assert!(matches!(frame, Poll::Ready(Some(Ok(_)))));
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(feed.has_room(&conn));
        assert_eq!(body.size_hint().exact(), Some(200_000 - BODY_QUEUE as u64));
        // A byte at a time: the queue holds at most BODY_QUEUE_CHUNKS reads.
        for _ in 0..BODY_QUEUE_CHUNKS {
            assert!(feed.has_room(&conn));
            feed.push(&mut BytesMut::from(&b"y"[..]), &conn);
        }
        assert!(!feed.has_room(&conn));
    }

    #[test]
    fn partial_heads_wait_and_are_parsed_again_only_when_they_may_have_ended() {
        for case in [
            &b""[..],
            b"GET / HTTP/1.1\r\nhost: g",
            b"GET / HTTP/1.1\r\nx: y\r\n",
        ] {
            let (parsed, rest) = parse_all(case);
            assert_eq!(
                kind(&parsed),
                "need head",
                "{:?}",
                String::from_utf8_lossy(case)
            );
            assert_eq!(&rest[..], case);
        }
        // However long: `serve` answers 431 at MAX_HEAD.
        let mut endless = b"GET / HTTP/1.1\r\nx: ".to_vec();
        endless.resize(2 * MAX_HEAD, b'a');
        assert_eq!(kind(&parse_all(&endless).0), "need head");

        let head = b"GET / HTTP/1.1\r\nx: y\r\n\r\n";
        assert!(!may_end_head(b"", 0));
        assert!(may_end_head(b"G", 0));
        // Wherever a head was split, the bytes after the split may end it.
        for split in 1..head.len() {
            assert!(may_end_head(head, split), "split at {split}");
        }
        // Heads ended by bare line feeds, or a bare one after a carriage return, likewise.
        for head in [
            &b"GET / HTTP/1.1\nx: y\n\n"[..],
            b"GET / HTTP/1.1\r\nx: y\n\r\n",
        ] {
            assert_eq!(kind(&parse_all(head).0), "request");
            for split in 1..head.len() {
                assert!(may_end_head(head, split), "split at {split}");
            }
        }
        assert_eq!(leading_empty_lines(b"\r\n\n\r\nGET"), 5);
        assert_eq!(leading_empty_lines(b"\r\r\nGET"), 0);
        assert_eq!(leading_empty_lines(b"\r\n\r"), 2);
        // Bytes that hold no blank line do not.
        assert!(!may_end_head(b"GET / HTTP/1.1\r\nx: y", 5));
        assert!(may_end_head(b"GET / HTTP/1.1\n\n", 15));
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

    /// This module's side of a loopback connection, and the client's.
    async fn pair() -> (Conn, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let conn = Conn {
            stream,
            read: BytesMut::new(),
            write: Vec::new(),
        };
        (conn, client)
    }

    /// What the client reads once `conn` is dropped.
    async fn written(conn: Conn, mut client: TcpStream) -> String {
        drop(conn);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        String::from_utf8(got).unwrap()
    }

    /// A body whose size hint says `say` bytes and which gives `give`.
    struct Sized {
        say: u64,
        give: usize,
    }

    impl http_body::Body for Sized {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            let give = std::mem::take(&mut self.give);
            Poll::Ready((give > 0).then(|| Ok(http_body::Frame::data(vec![b'x'; give].into()))))
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.say)
        }
    }

    #[tokio::test]
    async fn answers_that_break_their_length_are_cut_and_the_connection_closes() {
        for (say, give, whole) in [(5, 5, true), (5, 10, false), (10, 5, false)] {
            let (mut conn, client) = pair().await;
            let response = Response::new(Body::new(Sized { say, give }));
            assert_eq!(conn.answer(response, false).await, whole, "{say} {give}");
            let text = written(conn, client).await;
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(
                head.contains(&format!("\r\ncontent-length: {say}")),
                "{text}"
            );
            // Never more than the length said; less only as a cut answer.
            assert_eq!(
                body.len(),
                if give > say as usize { 0 } else { give },
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn no_body_for_204_and_304_and_a_1xx_becomes_a_500() {
        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            let (mut conn, client) = pair().await;
            let mut response = Response::new(Body::from("abc"));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert("content-length", HeaderValue::from_static("3"));
            assert!(conn.answer(response, false).await);
            let text = written(conn, client).await;
            assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
            assert!(text.ends_with("\r\n\r\n"), "{text}");
            assert!(!text.contains("content-length"), "{text}");
            assert!(!text.contains("transfer-encoding"), "{text}");
        }
        let (mut conn, client) = pair().await;
        let mut response = Response::new(Body::from("abc"));
        *response.status_mut() = StatusCode::EARLY_HINTS;
        assert!(!conn.answer(response, false).await);
        let text = written(conn, client).await;
        assert!(
            text.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[tokio::test]
    async fn a_body_of_unknown_size_is_chunked_unless_the_service_gave_its_length() {
        let stream = || {
            let chunks = futures_util::stream::iter([
                Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(b"ab"))),
                Ok(http_body::Frame::data(Bytes::from_static(b"cde"))),
            ]);
            Body::new(http_body_util::StreamBody::new(chunks))
        };
        let (mut conn, client) = pair().await;
        assert!(conn.answer(Response::new(stream()), false).await);
        let text = written(conn, client).await;
        assert!(
            text.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
            "{text}"
        );

        let (mut conn, client) = pair().await;
        let mut response = Response::new(stream());
        response
            .headers_mut()
            .insert("content-length", HeaderValue::from_static("5"));
        assert!(conn.answer(response, false).await);
        let text = written(conn, client).await;
        assert!(text.contains("\r\ncontent-length: 5\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nabcde"), "{text}");
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
