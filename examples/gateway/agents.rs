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
//! (BENCHMARKS.md, "The gateway against nginx"): 48,542 → 42,150 instructions per proxied
//! request. The response is read while the request is being written: an error answer that
//! comes before the agent has read the whole body (a 413, a 401) is handed on at once and the
//! rest is not sent; a success waits until the body has gone out, as the agent is reading it
//! (nginx, with its default `proxy_request_buffering`, reads the whole body before it even
//! connects).
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
use futures_util::FutureExt;
use http::{HeaderMap, Method, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use wire::{has_token, strip_hop_by_hop};
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
/// The request's first write: its head and what of its body has arrived, up to about this.
const FIRST_WRITE: usize = 64 * 1024;
/// How much of an early success is read ahead while the rest of the request goes out.
const EARLY_ANSWER: usize = 64 * 1024;

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
    /// `gateway_agent_requests_resent_total`: requests sent again on a new connection after a
    /// pooled one turned out closed.
    resent: metrics::Counter,
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
            resent: metrics::counter!("gateway_agent_requests_resent_total"),
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

    /// Sends a request (`method`, the client's `headers`, `body`) to the agent at `to.host`,
    /// for `to.path`, on an idle connection to it or a new one, and reads the response head.
    ///
    /// The request body is not waited for: what of it has arrived goes out with the head, in
    /// one write, the rest as it comes; meanwhile the response is read, so an agent that
    /// answers before it has read the whole body (a 413, a 401) is heard at once.
    ///
    /// A pooled connection may turn out closed by the agent as the request went out. The
    /// request is then sent once more, on a new connection, when that cannot make the agent act
    /// twice: nothing of it was written, or it is idempotent (RFC 9110 §9.2.2), went out whole
    /// in its first write and no byte of a response came back.
    pub async fn send(
        self: &Arc<Self>,
        to: Target<'_>,
        method: &Method,
        headers: &HeaderMap,
        mut body: Body,
    ) -> Result<Response<Body>, Error> {
        let Target { host, path } = to;
        let length = body.size_hint().exact();
        let mut outgoing = Outgoing {
            framing: match length {
                Some(n) => RequestBody::Length(n),
                None => RequestBody::Chunked,
            },
            sent: 0,
            // Found out by the first poll below, which also closes a chunked body.
            ended: false,
        };
        let body_hint = length.map_or(0, |n| n.min(FIRST_WRITE as u64) as usize);
        let mut first = Vec::with_capacity(256 + 64 * headers.len() + path.len() + body_hint);
        wire::write_request_head(&mut first, method, path, host, headers, outgoing.framing);
        // What of the body is here already (a JSON-RPC call's usually arrived with its head).
        while !outgoing.ended && first.len() < FIRST_WRITE {
            match body.frame().now_or_never() {
                None => break,
                Some(frame) => outgoing.add(frame, &body, &mut first)?,
            }
        }
        let replayable = outgoing.ended && is_idempotent(method);
        let mut retried = false;
        loop {
            let pooled = if retried { None } else { self.checkout(host) };
            let (mut conn, key, reused) = match pooled {
                Some((conn, key)) => (conn, key, true),
                None => (self.connect(host).await?, Arc::from(host), false),
            };
            match exchange(&mut conn, &first, &mut body, &mut outgoing, method).await {
                Ok((head, sent_whole)) => return Ok(self.response(conn, key, head, sent_whole)),
                Err(failure) => {
                    let safe = failure.nothing_written
                        || (replayable && matches!(failure.head, HeadError::Closed));
                    if reused && !retried && safe {
                        retried = true;
                        self.resent.increment(1);
                        continue;
                    }
                    return Err(match failure.head {
                        HeadError::Closed => Error::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the agent closed the connection without answering",
                        )),
                        HeadError::Io(e) => Error::Io(e),
                        HeadError::Malformed(m) => Error::Malformed(m),
                        HeadError::RequestBody => Error::RequestBody,
                    });
                }
            }
        }
    }

    /// The response to hand on; its connection is reused after its body only if the request
    /// went out whole (after an early response the agent may still be reading it).
    fn response(
        self: &Arc<Self>,
        conn: Conn,
        key: Arc<str>,
        head: wire::Head,
        sent_whole: bool,
    ) -> Response<Body> {
        let state = match head.framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::Size),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = AgentBody {
            conn: Some(conn),
            state,
            back: (head.keep_alive && sent_whole).then(|| (self.clone(), key)),
        };
        if body.state == State::Done {
            body.finish();
        }
        let mut response = Response::new(Body::new(body));
        // The version stays HTTP/1.1: an HTTP/1.0 agent's would make the server answer the
        // client in 1.0 and close its connection.
        *response.status_mut() = head.status;
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

    /// A new connection to `host` (`name[:port]`, port 80 by default).
    async fn connect(&self, host: &str) -> Result<Conn, Error> {
        let (name, port) = name_and_port(host).ok_or(Error::Url)?;
        let io = self.connect_tcp(name, port).await?;
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

/// Where a request to an agent goes: made by [`Target::new`], which checks that neither part
/// can break out of the request head they are written into as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    host: &'a str,
    path: &'a str,
}

impl<'a> Target<'a> {
    /// `host`: the agent's `host[:port]`, without user info — the request's Host field (as a
    /// browser sends it), the pool's key, and what is connected to. `path`: the request target
    /// in origin form, `/path[?query]`. `None` if either holds a space, a control character or
    /// DEL (a host that is not a name with an optional port fails at connect, `Error::Url`).
    pub fn new(host: &'a str, path: &'a str) -> Option<Target<'a>> {
        (head_safe(host) && head_safe(path)).then_some(Target { host, path })
    }
}

/// No byte that could end a request line or header field early (space, controls, DEL); bytes
/// past ASCII pass, as the `http` crate's parser lets them into paths.
fn head_safe(s: &str) -> bool {
    s.bytes().all(|b| b > b' ' && b != 0x7f)
}

/// An agent URL's `host[:port]` (user info left out) and its path (possibly empty), or `None`
/// unless it is `http://` with a host, an authority of RFC 3986 characters and a path with
/// neither query nor fragment (the API accepts only URLs the `http` crate parses, without query
/// or fragment, but the URL comes from the store, and is checked here again).
pub fn split_url(url: &str) -> Option<(&str, &str)> {
    // One pass over short strings, byte by byte: `find`, `split_once` and the like each set up
    // a `memchr`, and cost more here than the `Uri` parse this replaced.
    if !url.as_bytes().get(..7)?.eq_ignore_ascii_case(b"http://") {
        return None;
    }
    let rest = &url[7..];
    let mut host_start = 0;
    let mut end = rest.len();
    for (i, &b) in rest.as_bytes().iter().enumerate() {
        match b {
            b'/' => {
                end = i;
                break;
            }
            b'@' => host_start = i + 1,
            // RFC 3986 authority characters.
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => {}
            b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+'
            | b',' | b';' | b'=' | b':' | b'[' | b']' | b'%' => {}
            _ => return None,
        }
    }
    let (authority, path) = rest.split_at(end);
    let host = &authority[host_start..];
    let path_ok = path
        .bytes()
        .all(|b| b > b' ' && b != 0x7f && b != b'?' && b != b'#');
    (path_ok && name_and_port(host).is_some()).then_some((host, path))
}

/// `host[:port]` as a name (an IPv6 address without its brackets) to resolve and a port (80
/// when none is given); `None` without a name or with a port that is not one.
fn name_and_port(host: &str) -> Option<(&str, u16)> {
    let position = |s: &str, c: u8| s.bytes().position(|b| b == c);
    let (name, port) = match host.strip_prefix('[') {
        Some(bracketed) => {
            let close = position(bracketed, b']')?;
            let port = match bracketed.as_bytes()[close + 1..] {
                [] => "",
                [b':', ..] => &bracketed[close + 2..],
                _ => return None,
            };
            (&bracketed[..close], port)
        }
        None => match position(host, b':') {
            Some(i) => (&host[..i], &host[i + 1..]),
            None => (host, ""),
        },
    };
    let port = if port.is_empty() {
        80
    } else {
        let zeros = port.bytes().take_while(|&b| b == b'0').count();
        let port = &port[zeros.min(port.len() - 1)..];
        if port.len() > 5 {
            return None;
        }
        let mut n = 0u32;
        for b in port.bytes() {
            if !b.is_ascii_digit() {
                return None;
            }
            n = n * 10 + u32::from(b - b'0');
        }
        u16::try_from(n).ok()?
    };
    (!name.is_empty()).then_some((name, port))
}

/// GET, HEAD, OPTIONS, TRACE, PUT, DELETE: safe to send again (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// How much of a request body has gone into the request, and how.
struct Outgoing {
    framing: RequestBody,
    /// Body bytes taken so far.
    sent: u64,
    /// The body has been taken whole (and the chunked terminator written, if chunked).
    ended: bool,
}

impl Outgoing {
    /// Encodes one polled frame of `body` onto `out`; at the body's end, checks its length
    /// against the one announced and ends a chunked body. Trailers are not forwarded.
    fn add(
        &mut self,
        frame: Option<Result<Frame<Bytes>, axum::Error>>,
        body: &Body,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        match frame {
            None => self.ended = true,
            Some(Err(_)) => return Err(Error::RequestBody),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) {
                    self.sent += data.len() as u64;
                    match self.framing {
                        RequestBody::Length(n) if self.sent > n => return Err(Error::RequestBody),
                        RequestBody::Length(_) => out.extend_from_slice(data),
                        RequestBody::Chunked => wire::write_chunk(out, data),
                    }
                }
                self.ended = body.is_end_stream();
            }
        }
        if self.ended {
            match self.framing {
                RequestBody::Length(n) if self.sent != n => return Err(Error::RequestBody),
                RequestBody::Length(_) => {}
                RequestBody::Chunked => out.extend_from_slice(wire::LAST_CHUNK),
            }
        }
        Ok(())
    }
}

/// Why an exchange on one connection failed, and whether the request may go out again.
struct Failure {
    head: HeadError,
    /// Not a byte of the request was written.
    nothing_written: bool,
}

enum HeadError {
    /// The agent closed the connection before sending anything.
    Closed,
    Io(io::Error),
    Malformed(wire::Malformed),
    /// The client's request body failed or did not match its length.
    RequestBody,
}

/// Writes `first` and then the rest of `body`, while reading the final response head; the
/// head, and whether the whole request went out before it came.
async fn exchange(
    conn: &mut Conn,
    first: &[u8],
    body: &mut Body,
    outgoing: &mut Outgoing,
    method: &Method,
) -> Result<(wire::Head, bool), Failure> {
    let Conn { io, read } = conn;
    let (mut reader, mut writer) = io.split();
    // Shared by the two halves below (a `Cell` would make the future `!Send`).
    let written = std::sync::atomic::AtomicUsize::new(0);
    let progress = || written.load(std::sync::atomic::Ordering::Relaxed);
    let sending = async {
        while progress() < first.len() {
            match writer.write(&first[progress()..]).await {
                Ok(0) => return Err(HeadError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    written.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => return Err(HeadError::Io(e)),
            }
        }
        let mut chunk = Vec::new();
        while !outgoing.ended {
            let frame = body.frame().await;
            chunk.clear();
            outgoing
                .add(frame, body, &mut chunk)
                .map_err(|_| HeadError::RequestBody)?;
            writer.write_all(&chunk).await.map_err(HeadError::Io)?;
        }
        Ok(())
    };
    let mut sending = std::pin::pin!(sending);
    let mut sent = None;
    // A success that arrives before the request is all written (an agent answering as it
    // reads an upload) waits for the rest of the request, the agent is reading it; meanwhile
    // its answer is read on into the buffer, up to `EARLY_ANSWER`, so that an agent writing
    // more than the sockets hold cannot stall both sides — past that, or if the agent closes,
    // it is handed on as it is and the rest of the request is not sent. Any other early
    // answer (an error, a redirect, one that says it closes) is handed on at once.
    let mut early = None;
    let mut received = false;
    let head = loop {
        let waiting = early.is_some();
        tokio::select! {
            biased;
            done = &mut sending, if sent.is_none() => match done {
                // The client's body failed: nothing more to wait for.
                Err(HeadError::RequestBody) => {
                    return Err(Failure { head: HeadError::RequestBody, nothing_written: false })
                }
                // A failed write: the agent may have answered and closed, so the reading
                // goes on (a dead connection ends it at once).
                done => sent = Some(done.is_ok()),
            },
            event = std::future::poll_fn(|cx| {
                poll_reading(&mut reader, read, method, &mut received, waiting, cx)
            }) => match event {
                Reading::Head(Ok(head))
                    if sent.is_none() && head.status.is_success() && head.keep_alive =>
                {
                    early = Some(head)
                }
                Reading::Head(head) => break head,
                Reading::More(Ok(n)) if n > 0 => {}
                // The agent closed or failed after its early answer: handed on as it is.
                Reading::More(_) => {
                    if let Some(head) = early.take() {
                        break Ok(head);
                    }
                }
            },
        }
        if sent.is_some() || read.len() >= EARLY_ANSWER {
            if let Some(head) = early.take() {
                break Ok(head);
            }
        }
    };
    match head {
        Ok(head) => Ok((head, sent == Some(true))),
        Err(head) => Err(Failure {
            head,
            nothing_written: progress() == 0,
        }),
    }
}

/// What the reading half of an exchange saw.
enum Reading {
    /// The final response head (interim 1xx responses skipped), or why there is none.
    Head(Result<wire::Head, HeadError>),
    /// Bytes of an early answer read on into the buffer (0: the agent closed).
    More(io::Result<usize>),
}

/// Reads onto `buf`: the final response head, or with `waiting` (the head is in, the request
/// still going out) whatever comes next. `received`: whether any byte has come.
fn poll_reading(
    reader: &mut tokio::net::tcp::ReadHalf<'_>,
    buf: &mut BytesMut,
    method: &Method,
    received: &mut bool,
    waiting: bool,
    cx: &mut Context<'_>,
) -> Poll<Reading> {
    if waiting {
        buf.reserve(READ_SIZE);
        return std::future::Future::poll(std::pin::pin!(reader.read_buf(buf)), cx)
            .map(Reading::More);
    }
    loop {
        match wire::parse_response_head(buf, method) {
            Ok(Parsed::Final(head)) => return Poll::Ready(Reading::Head(Ok(head))),
            Ok(Parsed::Interim(len)) => {
                let _ = buf.split_to(len);
                continue;
            }
            Ok(Parsed::Partial) => {}
            Err(m) => return Poll::Ready(Reading::Head(Err(HeadError::Malformed(m)))),
        }
        buf.reserve(READ_SIZE);
        let read = std::task::ready!(std::future::Future::poll(
            std::pin::pin!(reader.read_buf(buf)),
            cx
        ));
        let failed = match read {
            Ok(0) if !*received => HeadError::Closed,
            Ok(0) => HeadError::Io(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {
                *received = true;
                continue;
            }
            // A reset before any response: the same as a close for a pooled connection.
            Err(e) if !*received && e.kind() == io::ErrorKind::ConnectionReset => HeadError::Closed,
            Err(e) => HeadError::Io(e),
        };
        return Poll::Ready(Reading::Head(Err(failed)));
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

    /// A listener on a free local port, and the agent URL with `path` on it.
    async fn listen(path: &str) -> (tokio::net::TcpListener, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        (listener, url)
    }

    /// An agent that answers each request on a connection with an empty 200, and says when a
    /// connection it accepted was closed by the other side.
    async fn agent() -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let (listener, url) = listen("/").await;
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

    /// Where `url` (`http://host[:port][/path]`) points.
    fn to(url: &str) -> Target<'_> {
        let (host, path) = split_url(url).unwrap();
        Target::new(host, if path.is_empty() { "/" } else { path }).unwrap()
    }

    /// Agent URLs from the store are split without the `http` crate's parser, so anything
    /// that could break out of the request head, or is not a plain `http://` URL, is refused.
    #[test]
    fn agent_urls_split_into_host_and_path() {
        for (url, host, path) in [
            ("http://127.0.0.1:9901", "127.0.0.1:9901", ""),
            ("HTTP://agent/a2a/", "agent", "/a2a/"),
            ("http://user:pw@agent:81/p", "agent:81", "/p"),
            ("http://[::1]:8080/x", "[::1]:8080", "/x"),
            ("http://[::1]/", "[::1]", "/"),
            ("http://agent:/p", "agent:", "/p"),
            ("Http://a@b@agent/", "agent", "/"),
            ("http://@agent", "agent", ""),
            ("http://agent:000080/", "agent:000080", "/"),
            ("http://agent:0/", "agent:0", "/"),
            ("http://agent/caf\u{e9}", "agent", "/caf\u{e9}"),
        ] {
            assert_eq!(split_url(url), Some((host, path)), "{url}");
        }
        for bad in [
            "https://agent/",
            "http://",
            "http:///p",
            "http://agent:x/",
            "http://agent:65536/",
            "http://agent:80:80/",
            "http://[::1/",
            "http://[::1]x/",
            "http://::1/",
            "http://agent /p",
            "http://agent/p q",
            "http://agent/p\r\nx: y",
            "http://agent\r\nx: y/",
            "http://agent/p?q=1",
            "http://agent/p#f",
            "http://agent?q",
            "http://agent/p\u{7f}",
            "http://agent/p\tq",
            "http://agent:065536/",
            "ftp://agent/",
            "agent:80",
        ] {
            assert_eq!(split_url(bad), None, "{bad:?}");
        }
        assert_eq!(name_and_port("agent"), Some(("agent", 80)));
        assert_eq!(name_and_port("[fe80::1]:9"), Some(("fe80::1", 9)));
        assert_eq!(name_and_port("agent:"), Some(("agent", 80)));
        assert_eq!(name_and_port("agent:000080"), Some(("agent", 80)));
        // What the head is written from is checked again, whoever builds it.
        assert!(Target::new("agent:80", "/p?q=1").is_some());
        assert!(Target::new("agent", "/p q").is_none());
        assert!(Target::new("agent", "/p\r\nx: y").is_none());
        assert!(Target::new("agent\r\nx: y", "/").is_none());
    }

    async fn get(agents: &Arc<Agents>, url: &str) {
        let response = agents
            .send(to(url), &Method::GET, &HeaderMap::new(), Body::empty())
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        drop(response); // empty: the connection goes back to the pool
    }

    /// What a canned agent does after its answer.
    #[derive(Clone, Copy, PartialEq)]
    enum Then {
        /// Waits for the next request.
        Stay,
        /// Closes the connection.
        Close,
        /// Reads the next request on the connection, then closes it without answering.
        DropNext,
    }

    /// An agent that writes `answer` for each request (read whole: to the end of its head, then
    /// its `Content-Length` or last chunk) and then does `then`; it counts the connections it
    /// accepts and hands each request it read to the channel.
    async fn canned(
        answer: &'static [u8],
        then: Then,
    ) -> (
        String,
        Arc<std::sync::atomic::AtomicUsize>,
        tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    ) {
        let (listener, url) = listen("/").await;
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (requests, received) = tokio::sync::mpsc::unbounded_channel();
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let requests = requests.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut answered = false;
                    while let Some(request) = read_request(&mut stream, &mut pending).await {
                        let _ = requests.send(request);
                        if answered && then == Then::DropNext {
                            return;
                        }
                        if stream.write_all(answer).await.is_err() || then == Then::Close {
                            return;
                        }
                        answered = true;
                    }
                });
            }
        });
        (url, accepted, received)
    }

    /// One whole request from `stream` (`pending` holds what was read past the last one);
    /// `None` when the peer closed.
    async fn read_request(
        stream: &mut tokio::net::TcpStream,
        pending: &mut Vec<u8>,
    ) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        loop {
            if let Some(end) = request_end(pending) {
                return Some(pending.drain(..end).collect());
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Where the request at the start of `bytes` ends, if it is all there.
    fn request_end(bytes: &[u8]) -> Option<usize> {
        let head = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let text = String::from_utf8_lossy(&bytes[..head]).to_ascii_lowercase();
        if text.contains("transfer-encoding: chunked") {
            let end = bytes[head..].windows(5).position(|w| w == b"0\r\n\r\n")?;
            return Some(head + end + 5);
        }
        let length = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
        (bytes.len() >= head + length).then_some(head + length)
    }

    /// Requests the agent received so far.
    fn drain(requests: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) -> usize {
        std::iter::from_fn(|| requests.try_recv().ok()).count()
    }

    /// A POST the agent may have acted on is never sent twice; an idempotent request is sent
    /// once more, on a new connection — not on the next pooled one, which may be as stale.
    #[tokio::test]
    async fn only_idempotent_requests_are_sent_again_and_only_once() {
        let (url, count, mut requests) = canned(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Then::DropNext,
        )
        .await;
        let agents = Agents::new(Duration::from_secs(1));
        call(&agents, Method::POST, &url, Body::from("{}"))
            .await
            .unwrap();
        // The pooled connection's next request is read and dropped unanswered.
        let lost = call(&agents, Method::POST, &url, Body::from("{}")).await;
        assert!(lost.is_err(), "{lost:?}");
        // Wait for the agent to have seen both (the channel is fed as it reads).
        for _ in 0..2 {
            requests.recv().await.unwrap();
        }
        assert_eq!(
            (drain(&mut requests), accepted(&count)),
            (0, 1),
            "the POST went out once"
        );

        // Three pooled connections, each of which will drop its next request.
        let three = futures_util::future::join_all(
            (0..3).map(|_| call(&agents, Method::GET, &url, Body::empty())),
        )
        .await;
        assert!(three.iter().all(Result::is_ok));
        assert_eq!(agents.lock().count, 3);
        assert_eq!(accepted(&count), 4);
        let (status, body) = call(&agents, Method::GET, &url, Body::empty())
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"ok"[..]));
        // Three for the pool, then the GET on a pooled connection and once more on a new one.
        for _ in 0..5 {
            requests.recv().await.unwrap();
        }
        assert_eq!(drain(&mut requests), 0);
        assert_eq!(accepted(&count), 5, "the second send used a new connection");
        assert_eq!(agents.lock().count, 3, "two pooled left, and the new one");
    }

    /// An agent that answers before reading the body — and then reads no more — is heard at
    /// once, not after the upload times out.
    #[tokio::test]
    async fn an_answer_before_the_body_is_read_comes_through() {
        let (listener, url) = listen("/upload").await;
        let (done, mut finished) = tokio::sync::mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = vec![0u8; 1024];
            let _ = stream.read(&mut head).await.unwrap();
            stream
                .write_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 4\r\n\r\nbig!")
                .await
                .unwrap();
            // Holds the connection open, reading nothing more, until the test is over.
            let _ = finished.recv().await;
        });
        let agents = Agents::new(Duration::from_secs(1));
        // Far more than the sockets' buffers take: its writing cannot finish.
        let upload = Body::from(vec![b'x'; 64 << 20]);
        let answered = tokio::time::timeout(
            Duration::from_secs(30),
            call(&agents, Method::POST, &url, upload),
        )
        .await
        .expect("the early answer arrived while the body was still being sent");
        let (status, body) = answered.unwrap();
        assert_eq!(
            (status, &body[..]),
            (http::StatusCode::PAYLOAD_TOO_LARGE, &b"big!"[..])
        );
        assert_eq!(
            agents.lock().count,
            0,
            "a connection with a half-sent request is not reused"
        );
        drop(done);
    }

    /// An agent on one connection at a time that reads a request head, says so, then (with
    /// `early`) answers a 200 at once; it reads the whole `Content-Length` body and then sends
    /// (the head, if not sent yet, and) a body saying how many bytes it got.
    async fn length_agent(early: bool) -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let (listener, url) = listen("/").await;
        let (heads, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 65536];
                let head_end = loop {
                    if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                };
                let _ = heads.send(());
                let head = String::from_utf8_lossy(&got[..head_end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |n| n.trim().parse().unwrap());
                let answer = |n: usize| format!("received {n:>8}");
                let answer_head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                    answer(0).len()
                );
                if early {
                    stream.write_all(answer_head.as_bytes()).await.unwrap();
                }
                while got.len() < head_end + length {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = answer(got.len() - head_end);
                let reply = if early {
                    body
                } else {
                    format!("{answer_head}{body}")
                };
                stream.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        (url, seen)
    }

    /// Sends a 300 KiB PUT whose frames are fed only once the agent has the request head (a
    /// gateway that waited for the body before writing the head would wait for ever); what the
    /// agent says it received.
    async fn upload_over_time(
        url: &str,
        mut heads: tokio::sync::mpsc::UnboundedReceiver<()>,
    ) -> String {
        let agents = Agents::new(Duration::from_secs(1));
        let (feed, frames) = tokio::sync::mpsc::channel::<Bytes>(1);
        let total = 300 * 1024;
        let body = Body::new(Announced {
            frames,
            left: total,
        });
        let caller = tokio::spawn({
            let agents = agents.clone();
            let url = url.to_owned();
            async move { call(&agents, Method::PUT, &url, body).await }
        });
        tokio::time::timeout(Duration::from_secs(30), heads.recv())
            .await
            .expect("the head went out before any of the body was there")
            .unwrap();
        for _ in 0..300 {
            feed.send(Bytes::from(vec![b'y'; 1024])).await.unwrap();
        }
        let (status, body) = tokio::time::timeout(Duration::from_secs(30), caller)
            .await
            .expect("the exchange finished")
            .unwrap()
            .unwrap();
        assert_eq!(status, http::StatusCode::OK);
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// A body that arrives over time is streamed behind the head with the length it announced;
    /// nothing waits for it before the head goes out.
    #[tokio::test]
    async fn a_body_arriving_over_time_is_streamed_with_its_length() {
        let (url, heads) = length_agent(false).await;
        assert_eq!(upload_over_time(&url, heads).await, "received   307200");
    }

    /// A success answered before the agent has read the body (an agent streaming its answer
    /// to an upload) does not cut the upload short: the rest of the body still goes out.
    #[tokio::test]
    async fn an_early_success_still_gets_the_whole_body() {
        let (url, heads) = length_agent(true).await;
        assert_eq!(upload_over_time(&url, heads).await, "received   307200");
    }

    /// An agent that answers a success early and writes more than the sockets hold before it
    /// reads the upload does not stall both sides until the timeout: past a bound, its answer
    /// is handed on as it is and the rest of the upload is dropped.
    #[tokio::test]
    async fn an_early_answer_larger_than_the_sockets_does_not_stall() {
        let (listener, url) = listen("/").await;
        let answer_len = 8 << 20;
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let _ = stream.read(&mut buf).await.unwrap();
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {answer_len}\r\n\r\n");
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(&vec![b'a'; answer_len]).await.unwrap();
            // Only then does it read the upload, to the end of the connection.
            while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let agents = Agents::new(Duration::from_secs(1));
        let upload = Body::from(vec![b'x'; 64 << 20]);
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(30),
            call(&agents, Method::POST, &url, upload),
        )
        .await
        .expect("neither side stalled")
        .unwrap();
        assert_eq!(status, http::StatusCode::OK);
        assert_eq!(body.len(), answer_len);
        assert_eq!(
            agents.lock().count,
            0,
            "the request was not sent whole: not reused"
        );
    }

    /// A request that failed while it was being written on a pooled connection is not sent
    /// again unless it is idempotent: the agent may have acted on what it read.
    #[tokio::test]
    async fn a_post_cut_while_being_written_is_not_sent_again() {
        let (listener, url) = listen("/").await;
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut pending = Vec::new();
                // The first request is answered; of the second, a little is read, then the
                // connection is reset.
                read_request(&mut stream, &mut pending).await.unwrap();
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                #[allow(deprecated)] // SO_LINGER 0: a reset, which is the point here
                stream.set_linger(Some(Duration::ZERO)).unwrap();
                drop(stream);
            }
        });
        let agents = Agents::new(Duration::from_secs(1));
        call(&agents, Method::POST, &url, Body::from("{}"))
            .await
            .unwrap();
        let cut = call(
            &agents,
            Method::POST,
            &url,
            Body::from(vec![b'z'; 32 << 20]),
        )
        .await;
        assert!(cut.is_err(), "{cut:?}");
        assert_eq!(
            accepted(&connections),
            1,
            "not sent again on a new connection"
        );
    }

    /// A body of announced length whose frames come from a channel.
    struct Announced {
        frames: tokio::sync::mpsc::Receiver<Bytes>,
        left: u64,
    }

    impl HttpBody for Announced {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            let frame = std::task::ready!(self.frames.poll_recv(cx));
            if let Some(data) = &frame {
                self.left -= data.len() as u64;
            }
            Poll::Ready(frame.map(|d| Ok(Frame::data(d))))
        }

        fn is_end_stream(&self) -> bool {
            self.left == 0
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.left)
        }
    }

    /// Bytes an agent sends on a parked connection (a late, unasked-for response) would be read
    /// as the next caller's answer: the connection is closed as soon as they are seen.
    #[tokio::test]
    async fn a_parked_connection_that_receives_bytes_is_closed() {
        let (listener, url) = listen("/").await;
        let (stray, mut stray_now) = tokio::sync::mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                n += 1;
                let mut pending = Vec::new();
                read_request(&mut stream, &mut pending).await.unwrap();
                let own = if n == 1 { &b"first"[..] } else { &b"other"[..] };
                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
                stream.write_all(&[&head[..], own].concat()).await.unwrap();
                if n == 1 {
                    let _ = stray_now.recv().await;
                    let late = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nstolen";
                    stream.write_all(late).await.unwrap();
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                    });
                }
            }
        });
        let agents = Agents::new(Duration::from_secs(1));
        let (_, body) = call(&agents, Method::GET, &url, Body::empty())
            .await
            .unwrap();
        assert_eq!(&body[..], b"first");
        assert_eq!(agents.lock().count, 1);
        stray.send(()).unwrap();
        // Polled with a deadline: the runtime notes the socket readable once the bytes land.
        let deadline = Instant::now() + Duration::from_secs(10);
        while agents.lock().count > 0 {
            assert!(Instant::now() < deadline, "the parked connection was kept");
            tokio::task::yield_now().await;
            agents.lock().sweep_all(Instant::now());
        }
        let (_, body) = call(&agents, Method::GET, &url, Body::empty())
            .await
            .unwrap();
        assert_eq!(&body[..], b"other");
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_and_close_delimited_bodies_end_at_the_close() {
        let (url, count, _) = canned(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Then::Stay,
        )
        .await;
        let agents = Agents::new(Duration::from_secs(1));
        for _ in 0..2 {
            let (status, body) = call(&agents, Method::POST, &url, Body::from("{}"))
                .await
                .unwrap();
            assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"ok"[..]));
        }
        assert_eq!(accepted(&count), 1);
        let (url, count, _) = canned(b"HTTP/1.1 200 OK\r\n\r\nuntil the close", Then::Close).await;
        for _ in 0..2 {
            let (_, body) = call(&agents, Method::GET, &url, Body::empty())
                .await
                .unwrap();
            assert_eq!(&body[..], b"until the close");
        }
        assert_eq!(accepted(&count), 2, "not reused");
    }

    async fn call(
        agents: &Arc<Agents>,
        method: Method,
        url: &str,
        body: Body,
    ) -> Result<(http::StatusCode, Bytes), Error> {
        let response = agents
            .send(to(url), &method, &HeaderMap::new(), body)
            .await?;
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
            Then::Stay,
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
            Then::Stay,
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
        let (url, count, _) = canned(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Then::Close,
        )
        .await;
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
            Then::Stay,
        )
        .await;
        let agents = Agents::new(Duration::from_secs(1));
        let sent = call(&agents, Method::GET, &url, Body::empty()).await;
        assert!(matches!(sent, Err(Error::Malformed(_))), "{sent:?}");
        // Closed three bytes into a ten-byte body.
        let (url, _, _) = canned(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
            Then::Close,
        )
        .await;
        let response = agents
            .send(to(&url), &Method::GET, &HeaderMap::new(), Body::empty())
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
        let (url, _, mut requests) = canned(b"HTTP/1.1 204 No Content\r\n\r\n", Then::Stay).await;
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

        let mut headers = HeaderMap::new();
        headers.insert("content-length", http::HeaderValue::from_static("999"));
        headers.insert(
            "transfer-encoding",
            http::HeaderValue::from_static("chunked"),
        );
        let body = Body::from("{\"a\":1}");
        agents
            .send(to(&url), &Method::POST, &headers, body)
            .await
            .unwrap();
        let request = String::from_utf8(requests.recv().await.unwrap()).unwrap();
        assert!(request.contains("\r\ncontent-length: 7\r\n"), "{request}");
        assert!(
            !request.contains("999") && !request.contains("chunked"),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\n{\"a\":1}"), "{request}");
    }

    /// A connection idle past the timeout is closed by the sweep, with no request to notice it.
    #[tokio::test]
    async fn idle_connections_are_closed_after_the_timeout() {
        let (url, mut closures) = agent().await;
        let agents = Agents::new(Duration::from_secs(1));
        get(&agents, &url).await;
        get(&agents, &url).await;
        // Paused only now: a paused clock jumps to the next timer whenever the runtime waits,
        // which would time a connect out while the kernel completes it.
        tokio::time::pause();
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
