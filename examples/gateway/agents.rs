//! Connections to agents: HTTP/1.1 keep-alive connections, pooled per serving thread.
//!
//! Each serving thread has its own [`Proxy`](crate::proxy::Proxy) and so its own pool: a request
//! and the agent connection it uses run on one thread, and the pool's lock is never contended.
//! A connection goes back to the pool when its response body has been read to the end (a body
//! dropped before then closes it: HTTP/1.1 cannot abandon a response half-read), and is taken
//! again by the next request to the same `host:port` — the most recently used first, so a
//! quiet pool keeps its few warm connections and lets the others age out. Idle connections are
//! closed after [`IDLE_TIMEOUT`] (a task of the thread's runtime sweeps every second); at most
//! [`MAX_IDLE_PER_AGENT`] wait per agent and [`MAX_IDLE`] per thread.
//!
//! The request is written and the response read by the request's own task, with the bytes
//! handled by [`wire`], as nginx does: no connection task, no channel to it, no waking of one
//! task by another. Measured against hyper's client connection, which this replaced
//! (BENCHMARKS.md, "The gateway against nginx"): ~13,000 fewer instructions per proxied
//! request. Like nginx (`proxy_request_buffering`), the request body is sent whole before the
//! response is read: an agent that answers before it has read the body gets it all the same.
//!
//! A parked connection has no task reading it: whether the agent closed it meanwhile is seen
//! from the readiness the runtime recorded for its socket (a read is tried only when that says
//! something arrived), at checkout and in the sweep.

#[path = "agents/wire.rs"] // the same file when this one is included by a bench
mod wire;

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use wire::{Chunked, Framing, Parsed, RequestBody, Step};

/// How long an unused connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per agent (`host:port`); nginx's `keepalive 64` is per worker too.
pub const MAX_IDLE_PER_AGENT: usize = 64;
/// Idle connections kept per thread, over all agents (the client connection cap leaves file
/// descriptors for them, `app::connection_cap`).
pub const MAX_IDLE: usize = 256;
/// How often idle connections past their timeout are closed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 8 * 1024;
/// A request body of at most this many bytes, with its length known, is sent in one write
/// with the head (and can be sent again on another connection if the first was found closed).
const WHOLE_BODY: u64 = 64 * 1024;

/// Why a request did not reach the agent.
#[derive(Debug)]
pub enum Error {
    /// The URL is not `http://host[:port]/…`.
    Url,
    /// Could not connect within the connect timeout (or at all).
    Connect(io::Error),
    /// The connection failed while sending or waiting for the response.
    Io(io::Error),
    /// The client's request body failed or did not match its length.
    RequestBody,
    /// The agent's response could not be read.
    Malformed(wire::Malformed),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Url => f.write_str("agent URL is not http://host[:port]/…"),
            Error::Connect(e) => write!(f, "connect: {e}"),
            Error::Io(e) => write!(f, "{e}"),
            Error::RequestBody => f.write_str("the request body did not arrive whole"),
            Error::Malformed(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

/// One thread's connections to agents.
pub struct Agents {
    idle: Mutex<Idle>,
    connect_timeout: Duration,
    /// `gateway_agent_connections_opened_total`: with keep-alive working it stays near the
    /// number of requests in flight at once, not the number of requests.
    opened: metrics::Counter,
}

#[derive(Default)]
struct Idle {
    by_agent: HashMap<Arc<str>, Agent, foldhash::fast::RandomState>,
    count: usize,
}

/// One agent's parked connections, least recently used first, and the map's key again (so that
/// a checkout hands the body its key without allocating).
struct Agent {
    key: Arc<str>,
    parked: Vec<Parked>,
}

struct Parked {
    conn: Conn,
    since: Instant,
}

/// A connection to an agent, and what was read from it and not yet used (empty whenever the
/// connection is parked).
struct Conn {
    io: TcpStream,
    read: BytesMut,
}

impl Conn {
    /// Whether the agent may still take a request here: nothing (no close, no stray bytes)
    /// has arrived since its last response. Costs a system call only when the runtime saw the
    /// socket become readable.
    fn is_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: the agent closed it or sent something unasked — or the readiness is
            // left from the last response (a read that filled its buffer): a read settles it.
            Poll::Ready(Ok(())) => matches!(
                self.io.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Reads what the agent sent next onto `read`; 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read.reserve(READ_SIZE);
        // Into the buffer's spare capacity, unzeroed, through the socket's `AsyncRead`: a read
        // shorter than the space offered tells the runtime the socket is drained, so a parked
        // connection's readiness is clear (see `is_open`). Nothing is read when it is pending,
        // so dropping the future then loses nothing.
        std::future::Future::poll(std::pin::pin!(self.io.read_buf(&mut self.read)), cx)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

impl Agents {
    /// A pool whose connects wait at most `connect_timeout` in all. Within a Tokio runtime, a
    /// task of that runtime closes idle connections past [`IDLE_TIMEOUT`] every second (until
    /// the pool is dropped); without one, they are closed when the pool is next used.
    pub fn new(connect_timeout: Duration) -> Arc<Agents> {
        let agents = Arc::new(Agents {
            idle: Mutex::new(Idle::default()),
            connect_timeout,
            opened: metrics::counter!("gateway_agent_connections_opened_total"),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = Arc::downgrade(&agents);
            runtime.spawn(async move {
                let mut every = tokio::time::interval(SWEEP_EVERY);
                loop {
                    every.tick().await;
                    let Some(agents) = pool.upgrade() else { return };
                    agents.lock().sweep_all(Instant::now());
                }
            });
        }
        agents
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `request` (its URI absolute, `http://host[:port]/path?query`) on an idle
    /// connection to its agent, or a new one, and reads the response head. A request whose
    /// pooled connection turns out closed before any of the response arrived is sent again on
    /// a new connection when that is safe: it was not written at all, or it is idempotent
    /// (RFC 9110 §9.2.2) and was sent whole in one write.
    pub async fn send(self: &Arc<Self>, request: Request<Body>) -> Result<Response<Body>, Error> {
        let (parts, mut body) = request.into_parts();
        if parts.uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return Err(Error::Url);
        }
        let Some(authority) = parts.uri.authority() else {
            return Err(Error::Url);
        };
        // Sent in origin form, with the agent's `host[:port]` as Host (never the URL's user
        // info), as a browser would.
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let host = match authority.as_str().rsplit_once('@') {
            Some((_, host)) => host,
            None => authority.as_str(),
        };
        let length = body.size_hint().exact();
        let framing = match length {
            Some(n) => RequestBody::Length(n),
            None => RequestBody::Chunked,
        };
        // Sized for a typical head and the body, so that it is not grown as it is written.
        let body_bytes = length.filter(|&n| n <= WHOLE_BODY).unwrap_or(0) as usize;
        let mut request_bytes =
            Vec::with_capacity(256 + 64 * parts.headers.len() + path.len() + body_bytes);
        wire::write_request_head(
            &mut request_bytes,
            &parts.method,
            path,
            host,
            &parts.headers,
            framing,
        );
        // A small body of known length goes with the head, in one write: usually it has
        // arrived with the client's head, and the request can be sent again as it is.
        let whole = length.is_some_and(|n| n <= WHOLE_BODY);
        if whole && length != Some(0) {
            let expected = length.unwrap_or(0);
            let start = request_bytes.len();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| Error::RequestBody)?;
                if let Some(data) = frame.data_ref() {
                    request_bytes.extend_from_slice(data);
                    if (request_bytes.len() - start) as u64 > expected {
                        return Err(Error::RequestBody);
                    }
                }
            }
            if ((request_bytes.len() - start) as u64) != expected {
                return Err(Error::RequestBody);
            }
        }
        let replayable = whole && is_idempotent(&parts.method);
        loop {
            let (mut conn, key, reused) = match self.checkout(host) {
                Some((conn, key)) => (conn, key, true),
                None => (self.connect(authority).await?, Arc::from(host), false),
            };
            if let Err(e) = conn.io.write_all(&request_bytes).await {
                // The agent cannot have acted on a request it did not receive whole, and the
                // body (unless it went with the head) is not touched yet.
                if reused {
                    continue;
                }
                return Err(Error::Io(e));
            }
            if !whole {
                send_body(&mut conn, &mut body, length).await?;
            }
            match read_head(&mut conn, &parts.method).await {
                Ok(head) => {
                    return Ok(self.response(conn, key, head));
                }
                // Closed before a byte of the response: a pooled connection the agent had
                // closed as the request went out.
                Err(HeadError::Closed) if reused && replayable => continue,
                Err(HeadError::Closed) => {
                    return Err(Error::Io(io::ErrorKind::UnexpectedEof.into()))
                }
                Err(HeadError::Io(e)) => return Err(Error::Io(e)),
                Err(HeadError::Malformed(m)) => return Err(Error::Malformed(m)),
            }
        }
    }

    fn response(self: &Arc<Self>, conn: Conn, key: Arc<str>, head: wire::Head) -> Response<Body> {
        let state = match head.framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::Size),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = AgentBody {
            conn: Some(conn),
            state,
            back: head.keep_alive.then(|| (self.clone(), key)),
        };
        if body.state == State::Done {
            body.finish();
        }
        let mut response = Response::new(Body::new(body));
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        response
    }

    /// The most recently parked open connection to `host` (`host[:port]`), with the pool's key.
    fn checkout(&self, host: &str) -> Option<(Conn, Arc<str>)> {
        let now = Instant::now();
        let mut idle = self.lock();
        let Idle {
            by_agent, count, ..
        } = &mut *idle;
        let agent = by_agent.get_mut(host)?;
        let mut found = None;
        // The most recent first; closed and expired ones met on the way go.
        while let Some(p) = agent.parked.pop() {
            *count -= 1;
            if now < p.since + IDLE_TIMEOUT && p.conn.is_open() {
                found = Some((p.conn, agent.key.clone()));
                break;
            }
        }
        if agent.parked.is_empty() {
            by_agent.remove(host);
        }
        found
    }

    async fn connect(&self, authority: &http::uri::Authority) -> Result<Conn, Error> {
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let io = self.connect_tcp(host, port).await?;
        io.set_nodelay(true).map_err(Error::Connect)?;
        self.opened.increment(1);
        Ok(Conn {
            io,
            read: BytesMut::new(),
        })
    }

    /// A TCP connection to one of `host`'s addresses, in the order the resolver gives them, each
    /// given an equal share of what is left of the connect timeout (an address that drops
    /// packets does not take the whole of it).
    async fn connect_tcp(&self, host: &str, port: u16) -> Result<TcpStream, Error> {
        let timed_out = || Error::Connect(io::ErrorKind::TimedOut.into());
        let deadline = Instant::now() + self.connect_timeout;
        let addresses: Vec<std::net::SocketAddr> =
            tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| timed_out())?
                .map_err(Error::Connect)?
                .collect();
        let mut failure = Error::Connect(io::ErrorKind::NotFound.into());
        for (i, address) in addresses.iter().enumerate() {
            let share =
                deadline.saturating_duration_since(Instant::now()) / (addresses.len() - i) as u32;
            match tokio::time::timeout(share, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e)) => failure = Error::Connect(e),
                Err(_) => failure = timed_out(),
            }
        }
        Err(failure)
    }

    /// Parks a connection whose response was read to the end.
    fn park(&self, key: Arc<str>, conn: Conn) {
        let now = Instant::now();
        let mut idle = self.lock();
        if idle.count >= MAX_IDLE {
            idle.sweep_all(now);
            if idle.count >= MAX_IDLE {
                return; // dropped: it closes
            }
        }
        let Idle {
            by_agent, count, ..
        } = &mut *idle;
        let agent = by_agent.entry(key.clone()).or_insert_with(|| Agent {
            key,
            parked: Vec::new(),
        });
        if agent.parked.len() >= MAX_IDLE_PER_AGENT {
            agent.parked.remove(0); // the least recently used
        } else {
            *count += 1;
        }
        agent.parked.push(Parked { conn, since: now });
    }
}

/// GET, HEAD, OPTIONS, TRACE, PUT, DELETE: safe to send again (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Streams a request body that did not go with the head: `Content-Length` bodies as they are
/// (and no more or fewer bytes than announced), the others chunked.
async fn send_body(conn: &mut Conn, body: &mut Body, length: Option<u64>) -> Result<(), Error> {
    let mut sent = 0u64;
    let mut chunk = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Error::RequestBody)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not forwarded
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        let bytes = match length {
            Some(n) if sent > n => return Err(Error::RequestBody),
            Some(_) => &data[..],
            None => {
                chunk.clear();
                wire::write_chunk(&mut chunk, &data);
                &chunk[..]
            }
        };
        conn.io.write_all(bytes).await.map_err(Error::Io)?;
    }
    match length {
        Some(n) if sent != n => Err(Error::RequestBody),
        Some(_) => Ok(()),
        None => conn.io.write_all(wire::LAST_CHUNK).await.map_err(Error::Io),
    }
}

enum HeadError {
    /// The agent closed the connection before sending anything.
    Closed,
    Io(io::Error),
    Malformed(wire::Malformed),
}

/// Reads the final response head (interim 1xx responses are skipped).
async fn read_head(conn: &mut Conn, method: &Method) -> Result<wire::Head, HeadError> {
    let mut received = false;
    loop {
        match wire::parse_response_head(&mut conn.read, method) {
            Ok(Parsed::Final(head)) => return Ok(head),
            Ok(Parsed::Interim(len)) => {
                let _ = conn.read.split_to(len);
                continue;
            }
            Ok(Parsed::Partial) => {}
            Err(m) => return Err(HeadError::Malformed(m)),
        }
        match conn.fill().await {
            Ok(0) if !received => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => received = true,
            // A reset before any response: the same as a close for a pooled connection.
            Err(e) if !received && e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(HeadError::Closed)
            }
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

impl Idle {
    /// Closes what idled past its timeout or was closed by the agent.
    fn sweep_all(&mut self, now: Instant) {
        self.by_agent.retain(|_, agent| {
            agent
                .parked
                .retain(|p| now < p.since + IDLE_TIMEOUT && p.conn.is_open());
            !agent.parked.is_empty()
        });
        self.count = self.by_agent.values().map(|a| a.parked.len()).sum();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes to go.
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

/// A response body read from its agent connection, which goes back to the pool when the body
/// has been read to the end.
struct AgentBody {
    conn: Option<Conn>,
    state: State,
    /// Where the connection goes once the body is read; `None` if it is not to be reused.
    back: Option<(Arc<Agents>, Arc<str>)>,
}

impl HttpBody for AgentBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let data = match &mut this.state {
                State::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                State::Length(left) if !conn.read.is_empty() => {
                    let take = conn
                        .read
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    let data = conn.read.split_to(take).freeze();
                    if *left == 0 {
                        this.state = State::Done;
                        this.finish(); // the last bytes: the connection is free now
                    }
                    data
                }
                State::Chunked(chunked) => match chunked.step(&mut conn.read) {
                    Ok(Step::Data(data)) => data,
                    Ok(Step::Done) => {
                        this.state = State::Done;
                        continue;
                    }
                    Ok(Step::NeedMore) => {
                        if let Err(e) = std::task::ready!(this.fill(cx)) {
                            return Poll::Ready(Some(Err(e)));
                        }
                        continue;
                    }
                    Err(m) => {
                        this.fail();
                        return Poll::Ready(Some(Err(m.into())));
                    }
                },
                State::UntilClose if !conn.read.is_empty() => conn.read.split().freeze(),
                State::UntilClose => match std::task::ready!(conn.poll_fill(cx)) {
                    Ok(0) => {
                        this.back = None;
                        this.state = State::Done;
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        this.fail();
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                State::Length(_) => {
                    if let Err(e) = std::task::ready!(this.fill(cx)) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    continue;
                }
            };
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl AgentBody {
    /// Reads more of a body that must go on: the agent closing the connection first is an
    /// error (the body is cut short).
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
        };
        let result = match std::task::ready!(conn.poll_fill(cx)) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the agent closed the connection before the end of the body",
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.fail();
        }
        Poll::Ready(result)
    }

    /// The body is over: its connection goes back to the pool if it may carry another request
    /// — the agent did not say it closes it, and sent nothing past this response (bytes
    /// nobody asked for would be read as the next caller's response).
    fn finish(&mut self) {
        self.state = State::Done;
        let conn = self.conn.take();
        if let (Some(conn), Some((agents, key))) = (conn, self.back.take()) {
            if conn.read.is_empty() {
                agents.park(key, conn);
            }
        }
    }

    /// The body cannot be read: its connection is closed.
    fn fail(&mut self) {
        self.back = None;
        self.conn = None;
        self.state = State::Done;
    }
}

impl Drop for AgentBody {
    /// A body read to its end whose last poll never came (a server stops at `is_end_stream`)
    /// parks its connection all the same; any other is cut short and closes it.
    fn drop(&mut self) {
        if self.state == State::Done {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An agent that answers each request on a connection with an empty 200, and says when a
    /// connection it accepted was closed by the other side.
    async fn agent() -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let (closed, closures) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let closed = closed.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                let _ = closed.send(());
                                return;
                            }
                            Ok(_) => {
                                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                                if stream.write_all(answer).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (url, closures)
    }

    async fn get(agents: &Arc<Agents>, url: &str) {
        let request = Request::get(url).body(Body::empty()).unwrap();
        let response = agents.send(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        drop(response); // empty: the connection goes back to the pool
    }

    /// An agent that writes `answer` for every read of a request (the tests send one request
    /// at a time, in one write), closing the connection after it with `close`; it counts the
    /// connections it accepts and hands each request it read to the channel.
    async fn canned(
        answer: &'static [u8],
        close: bool,
    ) -> (
        String,
        Arc<std::sync::atomic::AtomicUsize>,
        tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (requests, received) = tokio::sync::mpsc::unbounded_channel();
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let requests = requests.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut request = Vec::new();
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        request.extend_from_slice(&buf[..n]);
                        // A chunked request is read to its last chunk.
                        let chunked = request
                            .windows(26)
                            .any(|w| w == b"transfer-encoding: chunked");
                        if chunked && !request.ends_with(b"0\r\n\r\n") {
                            continue;
                        }
                        let _ = requests.send(std::mem::take(&mut request));
                        if stream.write_all(answer).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted, received)
    }

    async fn call(
        agents: &Arc<Agents>,
        method: Method,
        url: &str,
        body: Body,
    ) -> Result<(http::StatusCode, Bytes), Error> {
        let request = Request::builder()
            .method(method)
            .uri(url)
            .body(body)
            .unwrap();
        let response = agents.send(request).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| Error::RequestBody)?;
        Ok((status, body.to_bytes()))
    }

    fn accepted(count: &std::sync::atomic::AtomicUsize) -> usize {
        count.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn chunked_responses_are_decoded_and_their_connection_reused() {
        let (url, count, _) = canned(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
            false,
        )
        .await;
        let agents = Agents::new(Duration::from_secs(1));
        for _ in 0..3 {
            let (status, body) = call(&agents, Method::GET, &url, Body::empty())
                .await
                .unwrap();
            assert_eq!(status, http::StatusCode::OK);
            assert_eq!(&body[..], b"hello world");
        }
        assert_eq!(accepted(&count), 1);
    }

    /// Bytes past the end of a response would be read as the next caller's response: the
    /// connection they came on is not reused.
    #[tokio::test]
    async fn bytes_past_the_response_close_the_connection() {
        let (url, count, _) = canned(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstolen",
            false,
        )
        .await;
        let agents = Agents::new(Duration::from_secs(1));
        for _ in 0..3 {
            let (_, body) = call(&agents, Method::POST, &url, Body::from("{}"))
                .await
                .unwrap();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(accepted(&count), 3);
    }

    /// An agent that closes its idle connections without saying so: calls still go through,
    /// on new connections.
    #[tokio::test]
    async fn an_agent_closing_idle_connections_fails_no_call() {
        let (url, count, _) = canned(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
        let agents = Agents::new(Duration::from_secs(1));
        for method in [Method::GET, Method::PUT, Method::GET] {
            let (status, body) = call(&agents, method, &url, Body::empty()).await.unwrap();
            assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"ok"[..]));
        }
        assert_eq!(accepted(&count), 3);
    }

    #[tokio::test]
    async fn ambiguous_and_cut_responses_are_errors() {
        let (url, _, _) = canned(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            false,
        )
        .await;
        let agents = Agents::new(Duration::from_secs(1));
        let sent = call(&agents, Method::GET, &url, Body::empty()).await;
        assert!(matches!(sent, Err(Error::Malformed(_))), "{sent:?}");
        // Closed three bytes into a ten-byte body.
        let (url, _, _) = canned(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", true).await;
        let response = agents
            .send(Request::get(&url).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(
            response.into_body().collect().await.is_err(),
            "a cut body ends in an error"
        );
    }

    /// A request body of unknown length goes chunked; one of known length with its length
    /// (the client's own `Content-Length` and `Transfer-Encoding` never reach the agent).
    #[tokio::test]
    async fn request_bodies_carry_their_own_framing() {
        let (url, _, mut requests) = canned(b"HTTP/1.1 204 No Content\r\n\r\n", false).await;
        let agents = Agents::new(Duration::from_secs(1));
        let chunks = futures_util::stream::iter(
            ["ab", "cde"].map(|c| Ok::<_, io::Error>(Bytes::from_static(c.as_bytes()))),
        );
        let (status, _) = call(&agents, Method::POST, &url, Body::from_stream(chunks))
            .await
            .unwrap();
        assert_eq!(status, http::StatusCode::NO_CONTENT);
        let request = String::from_utf8(requests.recv().await.unwrap()).unwrap();
        assert!(
            request.starts_with("POST / HTTP/1.1\r\nhost: 127.0.0.1:"),
            "{request}"
        );
        assert!(
            request.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{request}"
        );
        assert!(
            request.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
            "{request}"
        );

        let mut request = Request::post(&url).body(Body::from("{\"a\":1}")).unwrap();
        request
            .headers_mut()
            .insert("content-length", http::HeaderValue::from_static("999"));
        request.headers_mut().insert(
            "transfer-encoding",
            http::HeaderValue::from_static("chunked"),
        );
        agents.send(request).await.unwrap();
        let request = String::from_utf8(requests.recv().await.unwrap()).unwrap();
        assert!(request.contains("\r\ncontent-length: 7\r\n"), "{request}");
        assert!(
            !request.contains("999") && !request.contains("chunked"),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\n{\"a\":1}"), "{request}");
    }

    /// A connection idle past the timeout is closed by the sweep, with no request to notice it.
    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_after_the_timeout() {
        let (url, mut closures) = agent().await;
        let agents = Agents::new(Duration::from_secs(1));
        get(&agents, &url).await;
        get(&agents, &url).await;
        assert_eq!(agents.lock().count, 1, "one connection, reused and parked");
        tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        assert_eq!(agents.lock().count, 1, "not yet");
        tokio::time::advance(Duration::from_secs(3)).await;
        // The sweep runs on its interval; the agent sees the close.
        tokio::time::timeout(Duration::from_secs(5), closures.recv())
            .await
            .expect("the agent saw its connection closed")
            .unwrap();
        assert_eq!(agents.lock().count, 0);
    }
}
