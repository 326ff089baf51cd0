//! HTTP/1.1 toward agents, as bytes: the request head the gateway writes, the response head it
//! reads, and how the response body is delimited (RFC 9112 §6). No I/O here.
//!
//! Strict where a lenient reading could make the gateway and the agent disagree on where a
//! response ends — on a pooled connection that would hand one caller's response to the next:
//! a response with both `Transfer-Encoding` and `Content-Length`, a `Content-Length` that is not
//! one decimal number, a malformed chunk, a head over [`MAX_HEAD`] bytes or [`MAX_HEADERS`]
//! fields is an error, and its connection is closed.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// The largest response head accepted (hyper's default read buffer limit is larger; nginx's
/// `proxy_buffer_size` is 4–8 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with extensions) and the most trailer bytes accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// Why an agent's response cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed response from the agent: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

impl From<Malformed> for std::io::Error {
    fn from(m: Malformed) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, m)
    }
}

/// How a request body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    /// `Content-Length: n` (0 is written only for methods that usually carry a body).
    Length(u64),
    /// `Transfer-Encoding: chunked`: the length is not known up front.
    Chunked,
}

/// Appends a request head to `out`: `method path HTTP/1.1`, `host`, the framing header of
/// `body`, then `headers` — less their `Host` (the client's name for the gateway, not the
/// agent's), whatever framing headers they carry (this head's framing is the one the body is
/// written with) and `Expect` (the gateway sends the body without waiting for a
/// `100 Continue`; the client had its own from the gateway's server).
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    path_and_query: &str,
    host: &str,
    headers: &HeaderMap,
    body: RequestBody,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    match body {
        RequestBody::Length(0) if matches!(*method, Method::GET | Method::HEAD) => {}
        RequestBody::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        RequestBody::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    for (name, value) in headers {
        if matches!(
            *name,
            http::header::HOST
                | http::header::CONTENT_LENGTH
                | http::header::TRANSFER_ENCODING
                | http::header::EXPECT
        ) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk of a chunked request body (`data` not empty).
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    use std::io::Write;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked request body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, a 204, a 304.
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: …, chunked`.
    Chunked,
    /// Until the agent closes the connection.
    UntilClose,
}

/// A final response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request once the body has been read.
    pub keep_alive: bool,
}

/// What the start of a buffer holds.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// An interim (1xx) response of this many bytes, to be skipped.
    Interim(usize),
    /// A final response head.
    Final(Head),
}

/// Parses the response head at the start of `buf`, the answer to a `method` request. On
/// `Final`, the head's bytes have been split off `buf` (the header values share them).
pub fn parse_response_head(buf: &mut BytesMut, method: &Method) -> Result<Parsed, Malformed> {
    // Neither array is zeroed first: at 100 fields that alone would cost more than the parse.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(Malformed("head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(Malformed("too many header fields")),
        Err(_) => return Err(Malformed("invalid head")),
    };
    if len > MAX_HEAD {
        return Err(Malformed("head too large"));
    }
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Malformed("invalid status"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Malformed("protocol switch not asked for"));
    }
    if status.is_informational() {
        return Ok(Parsed::Interim(len));
    }
    if *method == Method::CONNECT && status.is_success() {
        return Err(Malformed("tunnel not supported"));
    }
    let http_10 = response.version != Some(1);
    // Where each field's name and value lie in `buf`, so that once the head is split off and
    // frozen the values can share its bytes instead of each being copied.
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let mut many: Vec<(usize, usize, usize, usize)>;
    let mut few = [(0, 0, 0, 0); 16];
    let count = response.headers.len();
    let spans = if count <= few.len() {
        &mut few[..count]
    } else {
        many = vec![(0, 0, 0, 0); count];
        &mut many[..]
    };
    for (span, h) in spans.iter_mut().zip(response.headers.iter()) {
        let (name, value) = (offset(h.name.as_bytes()), offset(h.value));
        *span = (name, name + h.name.len(), value, value + h.value.len());
    }
    let head = buf.split_to(len).freeze();
    // Room for the fields the gateway adds on the way back (request id, budget headers)
    // without growing the map.
    let mut headers = HeaderMap::with_capacity(count + 4);
    let mut length: Option<u64> = None;
    // The agent's own spelling of the length, handed on when it is the canonical one (no
    // formatting, no allocation).
    let mut length_value: Option<HeaderValue> = None;
    let mut close = http_10;
    // Transfer codings over all fields: only `chunked` alone is read (any other would reach the
    // client unlabelled once the hop-by-hop field is dropped).
    let mut te_fields = 0;
    let mut codings = 0;
    let mut chunked_count = 0;
    // Whether a `Connection` field names others to drop (rare: they are dropped at the end),
    // and whether it says `close` (a field of that name goes too, RFC 9110 §7.6.1).
    let mut strip_named = false;
    let mut names_close = false;
    for &mut (name_start, name_end, start, end) in spans {
        let raw_name = &head[name_start..name_end];
        // Hop-by-hop fields are this connection's, not the client's: read for framing and
        // persistence here and left out of the head handed on, so no name or value is built
        // only to be dropped (`Connection: keep-alive`, `Keep-Alive: timeout=5`).
        if is_hop_by_hop_name(raw_name) {
            let value = &head[start..end];
            if raw_name.eq_ignore_ascii_case(b"transfer-encoding") {
                te_fields += 1;
                for coding in value.split(|&b| b == b',').map(trim) {
                    if coding.is_empty() {
                        continue;
                    }
                    codings += 1;
                    chunked_count += usize::from(coding.eq_ignore_ascii_case(b"chunked"));
                }
            } else if raw_name.eq_ignore_ascii_case(b"connection") {
                let says_close = has_token(value, b"close");
                close |= says_close;
                names_close |= says_close;
                if names_other_fields(value) {
                    strip_named = true;
                    let value = HeaderValue::from_maybe_shared(head.slice(start..end))
                        .map_err(|_| Malformed("invalid header value"))?;
                    headers.append(http::header::CONNECTION, value);
                }
            }
            continue;
        }
        let name =
            HeaderName::from_bytes(raw_name).map_err(|_| Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| Malformed("invalid header value"))?;
        if name == http::header::CONTENT_LENGTH {
            let n = content_length(value.as_bytes())?;
            if length.is_some_and(|l| l != n) {
                return Err(Malformed("conflicting Content-Length"));
            }
            length = Some(n);
            let canonical = value.as_bytes().iter().all(u8::is_ascii_digit)
                && (value.len() == 1 || value.as_bytes()[0] != b'0');
            if canonical {
                length_value = Some(value);
            }
            continue; // written once below
        }
        headers.append(name, value);
    }
    let no_body = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let chunked = te_fields > 0;
    if chunked && !(codings == 1 && chunked_count == 1) {
        return Err(Malformed("transfer coding other than chunked alone"));
    }
    if let Some(n) = length {
        if chunked {
            return Err(Malformed("both Transfer-Encoding and Content-Length"));
        }
        // A 204's or 304's would only make the server warn as it drops it.
        if !(status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED) {
            let value = length_value.unwrap_or_else(|| HeaderValue::from(n));
            headers.insert(http::header::CONTENT_LENGTH, value);
        }
    }
    if strip_named {
        // Drops the fields `Connection` names (even `Content-Length`: the length is in the
        // framing), and `Connection` itself.
        strip_hop_by_hop(&mut headers);
    }
    if names_close {
        headers.remove(&CLOSE);
    }
    let framing = match (no_body, chunked, length) {
        (true, _, _) => Framing::Empty,
        (false, true, _) => Framing::Chunked,
        (false, false, Some(n)) => Framing::Length(n),
        (false, false, None) => Framing::UntilClose,
    };
    Ok(Parsed::Final(Head {
        status,
        headers,
        keep_alive: !close && framing != Framing::UntilClose,
        framing,
    }))
}

/// `Content-Length`: one decimal number, or a list of the same one (`5, 5`).
fn content_length(value: &[u8]) -> Result<u64, Malformed> {
    let mut found = None;
    for part in value.split(|&b| b == b',') {
        let digits = trim(part);
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Malformed("invalid Content-Length"));
        }
        let n = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(Malformed("conflicting Content-Length"));
        }
        found = Some(n);
    }
    found.ok_or(Malformed("invalid Content-Length"))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

pub fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Within a chunk's data, this many bytes to go.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields (dropped), then an empty line; this many bytes
    /// of them seen so far.
    Trailers(usize),
    /// The body is complete.
    Done,
}

/// One step of chunked decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body bytes.
    Data(Bytes),
    /// `buf` holds too little to go on: read more.
    NeedMore,
    /// The body ended (the bytes after it stay in `buf`).
    Done,
}

impl Chunked {
    /// Decodes from the start of `buf`, consuming what it decodes.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Malformed> {
        loop {
            match *self {
                Chunked::Done => return Ok(Step::Done),
                Chunked::Size => {
                    let Some(line) = line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Step::NeedMore);
                    };
                    let size = chunk_size(&buf[..line])?;
                    let _ = buf.split_to(line + 2);
                    *self = if size == 0 {
                        Chunked::Trailers(0)
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    *self = if left == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left)
                    };
                    return Ok(Step::Data(data));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Malformed("chunk data not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers(seen) => {
                    let Some(line) = line(buf, MAX_TRAILERS.saturating_sub(seen + 2))? else {
                        return Ok(Step::NeedMore);
                    };
                    let _ = buf.split_to(line + 2);
                    *self = if line == 0 {
                        Chunked::Done
                    } else {
                        Chunked::Trailers(seen + line + 2)
                    };
                }
            }
        }
    }
}

/// The length of the CRLF-terminated line at the start of `buf` (without the CRLF), `None` if
/// it is not all there yet; a line longer than `max`, or with a bare CR or LF, is an error.
fn line(buf: &[u8], max: usize) -> Result<Option<usize>, Malformed> {
    let window = &buf[..buf.len().min(max + 2)];
    match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if window[i] == b'\n' => Err(Malformed("bare LF")),
        Some(i) if i + 1 == window.len() => {
            if window.len() == buf.len() {
                Ok(None) // the LF has not arrived yet
            } else {
                Err(Malformed("line too long"))
            }
        }
        Some(i) if window[i + 1] == b'\n' => Ok(Some(i)),
        Some(_) => Err(Malformed("bare CR")),
        None if window.len() == buf.len() && buf.len() <= max => Ok(None),
        None => Err(Malformed("line too long")),
    }
}

/// A chunk-size line: hexadecimal digits, then optional extensions (`;name=value`), ignored.
fn chunk_size(line: &[u8]) -> Result<u64, Malformed> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(Malformed("invalid chunk size"));
    }
    let rest = trim(&line[digits..]);
    if !(rest.is_empty() || rest[0] == b';') {
        return Err(Malformed("invalid chunk size"));
    }
    Ok(line[..digits].iter().fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16).unwrap_or(0);
        (n << 4) | u64::from(v)
    }))
}

/// A `static`, not a `const`: a const array is built anew (and dropped) at every use.
static HOP_BY_HOP: [HeaderName; 8] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

/// Whether `name` is one of [`HOP_BY_HOP`]: one string match (by length first), not eight
/// name comparisons.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Drops hop-by-hop headers, those named in `Connection` included.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Usually there are none: one pass over the few names present, instead of a hashed
    // removal per hop-by-hop name (`Connection` is one of them, so its list is seen here too).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // The fields `Connection` names besides the hop-by-hop ones. Usually none: clients and
    // agents send `Connection: keep-alive` or `close`, which need no name built (and no
    // allocation).
    let mut named = Vec::new();
    let mut names_close = false;
    for value in headers.get_all(http::header::CONNECTION) {
        // As bytes: a value with a byte past ASCII somewhere still names the fields it names.
        for token in value.as_bytes().split(|&b| b == b',').map(trim) {
            // `close` is an option, but a field of that name goes too (RFC 9110 §7.6.1).
            if token.eq_ignore_ascii_case(b"close") {
                names_close = true;
                continue;
            }
            // The request id is the gateway's own field (`app::RequestIds`), not the sender's
            // to drop.
            if token.is_empty()
                || is_hop_by_hop_name(token)
                || token.eq_ignore_ascii_case(b"x-request-id")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                named.push(name);
            }
        }
    }
    // The hop-by-hop fields present, one at a time: a scan of the few names there instead of
    // hashing all eight.
    while let Some(name) = headers.keys().find(|n| is_hop_by_hop(n)).cloned() {
        headers.remove(&name);
    }
    for name in &named {
        headers.remove(name);
    }
    if names_close {
        headers.remove(&CLOSE);
    }
}

/// A field named `close`, dropped when `Connection` says `close`.
static CLOSE: HeaderName = HeaderName::from_static("close");

/// Whether a field named `name` (as received, any case) is one of [`HOP_BY_HOP`].
/// Their lengths first: most fields of a response are none of them, and are told by length.
fn is_hop_by_hop_name(name: &[u8]) -> bool {
    matches!(name.len(), 2 | 7 | 10 | 17 | 18 | 19)
        && HOP_BY_HOP
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
}

/// Whether a `Connection` value names fields besides `close` and the hop-by-hop ones (which
/// go anyway; a field named `close` is dropped on its own).
fn names_other_fields(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .map(trim)
        .any(|t| !(t.is_empty() || t.eq_ignore_ascii_case(b"close") || is_hop_by_hop_name(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, method: Method) -> Result<(Head, BytesMut), Malformed> {
        let mut buf = BytesMut::from(raw.as_bytes());
        match parse_response_head(&mut buf, &method)? {
            Parsed::Final(head) => Ok((head, buf)),
            other => panic!("not a final head: {other:?}"),
        }
    }

    /// Hop-by-hop fields are read for framing and persistence and left out of the head handed
    /// on, with the fields `Connection` names; the others stay, in any case of their names.
    #[test]
    fn hop_by_hop_fields_are_read_and_left_out() {
        let (head, _) = parse(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
             X-Kept: 1\r\n\r\n",
            Method::POST,
        )
        .unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert!(head.keep_alive);
        let mut names: Vec<_> = head.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-kept"]);

        let (head, _) = parse(
            "HTTP/1.1 200 OK\r\nCONNECTION: Close, X-Hop\r\nx-hop: 1\r\nX-Kept: 2\r\n\
             content-length: 0\r\n\r\n",
            Method::POST,
        )
        .unwrap();
        assert!(!head.keep_alive, "close read in any case");
        let mut names: Vec<_> = head.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["content-length", "x-kept"],
            "x-hop named by Connection"
        );

        // Fields of the lengths the quick check looks at stay; a named field before
        // `Connection` goes; `x-request-id` cannot be named away; a field called `close` goes.
        let (head, _) = parse(
            "HTTP/1.1 200 OK\r\nx-hop: 1\r\nSet-Cookie: a=1\r\nExpires: 0\r\n\
             x-request-id: r\r\nclose: 1\r\nConnection: close, x-hop, x-request-id\r\n\
             content-length: 0\r\n\r\n",
            Method::POST,
        )
        .unwrap();
        let mut names: Vec<_> = head.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["content-length", "expires", "set-cookie", "x-request-id"]
        );
    }

    /// A `Connection` value with a byte past ASCII in one token still names the others.
    #[test]
    fn connection_with_a_non_ascii_token_still_names_the_others() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONNECTION,
            HeaderValue::from_bytes(b"x-hop, caf\xc3\xa9").unwrap(),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept"]);
    }

    /// `Connection: close` alone drops a field named `close`; one naming `Content-Length`
    /// drops the field, the framing keeps the length.
    #[test]
    fn connection_drops_close_and_content_length_fields() {
        let (head, _) = parse(
            "HTTP/1.1 200 OK\r\nclose: 1\r\nConnection: close\r\nX-Kept: 1\r\n\
             content-length: 0\r\n\r\n",
            Method::POST,
        )
        .unwrap();
        assert!(!head.keep_alive);
        let mut names: Vec<_> = head.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "x-kept"]);

        let (head, rest) = parse(
            "HTTP/1.1 200 OK\r\nConnection: content-length\r\ncontent-length: 2\r\n\r\nok",
            Method::POST,
        )
        .unwrap();
        assert_eq!(head.framing, Framing::Length(2));
        assert_eq!(&rest[..], b"ok");
        assert!(head.headers.is_empty(), "{:?}", head.headers);
    }

    /// Framing is read from hop-by-hop fields in any case of their names.
    #[test]
    fn framing_fields_count_in_any_case() {
        for raw in [
            "HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: chunked\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: GZIP, chunked\r\n\r\n",
        ] {
            assert!(parse(raw, Method::POST).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn a_plain_response_is_delimited_by_its_length() {
        let (head, rest) = parse(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            Method::POST,
        )
        .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(2));
        assert!(head.keep_alive);
        assert_eq!(head.headers["content-type"], "application/json");
        assert_eq!(head.headers["content-length"], "2");
        assert_eq!(&rest[..], b"{}", "the body stays in the buffer");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |raw: &str, method: Method| parse(raw, method).map(|(h, _)| h.framing);
        let ok = "HTTP/1.1 200 OK\r\n";
        assert_eq!(
            framing(
                &format!("{ok}transfer-encoding: chunked\r\n\r\n"),
                Method::GET
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing(
                &format!("{ok}transfer-encoding: , Chunked\r\ntransfer-encoding: \r\n\r\n"),
                Method::GET
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing(&format!("{ok}\r\n"), Method::GET),
            Ok(Framing::UntilClose)
        );
        assert_eq!(
            framing(&format!("{ok}content-length: 10\r\n\r\n"), Method::HEAD),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 204 No Content\r\ncontent-length: 10\r\n\r\n",
                Method::GET
            ),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\n\r\n", Method::GET),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing(
                &format!("{ok}content-length: 5, 5\r\ncontent-length: 5\r\n\r\n"),
                Method::GET
            ),
            Ok(Framing::Length(5))
        );
    }

    #[test]
    fn lengths_are_passed_on_once_and_not_for_204_or_304() {
        let (head, _) = parse(
            "HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\ncontent-length: 2\r\n\r\nok",
            Method::GET,
        )
        .unwrap();
        let lengths: Vec<_> = head.headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["2"]);
        // Passed on in its one canonical spelling, whatever the agent's.
        for (spelled, passed) in [("0", "0"), ("007", "7"), (" 7 ", "7"), ("7, 07", "7")] {
            let raw = format!("HTTP/1.1 200 OK\r\ncontent-length: {spelled}\r\n\r\n");
            let (head, _) = parse(&raw, Method::GET).unwrap();
            let lengths: Vec<_> = head.headers.get_all("content-length").iter().collect();
            assert_eq!(lengths, [passed], "{spelled:?}");
        }
        for status in ["204 No Content", "304 Not Modified"] {
            let raw = format!("HTTP/1.1 {status}\r\ncontent-length: 10\r\n\r\n");
            let (head, _) = parse(&raw, Method::GET).unwrap();
            assert!(!head.headers.contains_key("content-length"), "{status}");
        }
        let (head, _) = parse(
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            Method::HEAD,
        )
        .unwrap();
        assert_eq!(
            head.headers["content-length"], "10",
            "a HEAD answer keeps its length"
        );
    }

    #[test]
    fn ambiguous_lengths_are_refused() {
        let ok = "HTTP/1.1 200 OK\r\n";
        for fields in [
            "content-length: 5\r\ntransfer-encoding: chunked\r\n",
            "transfer-encoding: chunked\r\ncontent-length: 5\r\n",
            "content-length: 5\r\ncontent-length: 6\r\n",
            "content-length: 5, 6\r\n",
            "content-length: +5\r\n",
            "content-length: -1\r\n",
            "content-length: 0x10\r\n",
            "content-length: \r\n",
            "content-length: 99999999999999999999\r\n",
            "transfer-encoding: chunked, gzip\r\n",
            "transfer-encoding: gzip, chunked\r\n",
            "transfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n",
            "transfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n",
            "transfer-encoding: chunked, chunked\r\n",
            "transfer-encoding: gzip\r\n",
            "transfer-encoding: \r\n",
        ] {
            let raw = format!("{ok}{fields}\r\n");
            assert!(parse(&raw, Method::GET).is_err(), "{fields:?} accepted");
        }
    }

    #[test]
    fn keep_alive_unless_the_agent_says_otherwise() {
        let alive = |raw: &str| parse(raw, Method::GET).unwrap().0.keep_alive;
        assert!(alive("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!alive(
            "HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!alive(
            "HTTP/1.1 200 OK\r\nconnection: upgrade, close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!alive("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!alive("HTTP/1.1 200 OK\r\n\r\n"), "delimited by the close");
    }

    #[test]
    fn interim_responses_are_skipped_and_a_switch_is_refused() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"[..]);
        match parse_response_head(&mut buf, &Method::POST) {
            Ok(Parsed::Interim(25)) => {}
            other => panic!("{other:?}"),
        }
        let mut buf = BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..]);
        assert!(parse_response_head(&mut buf, &Method::GET).is_err());
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 Connection established\r\n\r\n"[..]);
        assert!(
            parse_response_head(&mut buf, &Method::CONNECT).is_err(),
            "no tunnels"
        );
    }

    #[test]
    fn heads_are_bounded() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        assert!(matches!(
            parse_response_head(&mut buf, &Method::GET),
            Ok(Parsed::Partial)
        ));
        buf.extend_from_slice(format!("x: {}\r\n", "a".repeat(MAX_HEAD)).as_bytes());
        assert!(parse_response_head(&mut buf, &Method::GET).is_err());
        let many = "x: y\r\n".repeat(MAX_HEADERS + 1);
        let mut buf = BytesMut::from(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes());
        assert!(parse_response_head(&mut buf, &Method::GET).is_err());
        for bad in [
            "HTTP/1.1 200 OK\r\nx y: z\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx: a\x01b\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(bad.as_bytes());
            assert!(
                parse_response_head(&mut buf, &Method::GET).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    /// Decodes `raw` fed in pieces of `piece` bytes; the data and what is left after the body.
    fn decode(raw: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), Malformed> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            match state.step(&mut buf)? {
                Step::Data(d) => data.extend_from_slice(&d),
                Step::Done => return Ok((data, [&buf[..], &raw[fed..]].concat())),
                Step::NeedMore if fed == raw.len() => return Err(Malformed("truncated")),
                Step::NeedMore => {
                    let end = (fed + piece).min(raw.len());
                    buf.extend_from_slice(&raw[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_however_they_arrive() {
        let raw = b"5\r\nhello\r\n6;name=value\r\n world\r\nA \r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for piece in 1..raw.len() {
            let (data, rest) = decode(raw, piece).unwrap();
            assert_eq!(data, b"hello world0123456789", "in pieces of {piece}");
            assert_eq!(rest, b"NEXT", "in pieces of {piece}");
        }
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"5\r\nhelloXX0\r\n\r\n"[..],
            b"g\r\n",
            b"\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                decode(bad, 1).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
        let long_line = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE));
        assert!(decode(long_line.as_bytes(), 1000).is_err());
        let long_trailers = format!("0\r\n{}\r\n", "x: y\r\n".repeat(MAX_TRAILERS / 6 + 1));
        assert!(decode(long_trailers.as_bytes(), 1000).is_err());
        assert_eq!(
            decode(b"ffffffffffffffff\r\n", 100),
            Err(Malformed("truncated")),
            "the largest size parses (and then waits for its data)"
        );
    }

    #[test]
    fn the_request_head_carries_its_own_framing() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("host", HeaderValue::from_static("client.example"));
        headers.insert("expect", HeaderValue::from_static("100-continue"));
        headers.append("x-many", HeaderValue::from_static("1"));
        headers.append("x-many", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            &Method::POST,
            "/a?b=c",
            "agent:9000",
            &headers,
            RequestBody::Length(2),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b=c HTTP/1.1\r\nhost: agent:9000\r\ncontent-length: 2\r\n\
             content-type: application/json\r\nx-many: 1\r\nx-many: 2\r\n\r\n"
        );
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            &Method::GET,
            "/",
            "a",
            &HeaderMap::new(),
            RequestBody::Length(0),
        );
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            &Method::PUT,
            "/",
            "a",
            &HeaderMap::new(),
            RequestBody::Chunked,
        );
        write_chunk(&mut out, &[b'x'; 26]);
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("PUT / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n1a\r\n{}\r\n0\r\n\r\n", "x".repeat(26))
        );
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer agent-token"),
        );
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type"]);
    }

    /// The fast check and the list name the same headers: each listed one alone is stripped.
    #[test]
    fn every_hop_by_hop_name_alone_is_stripped() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
            assert!(is_hop_by_hop_name(name.as_str().as_bytes()), "{name}");
            let upper = name.as_str().to_ascii_uppercase();
            assert!(is_hop_by_hop_name(upper.as_bytes()), "{upper}");
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            h.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name} stays");
        }
        assert!(!is_hop_by_hop(&http::header::CONTENT_LENGTH));
    }

    /// A `Connection` header may name extra fields to drop, but not the request id.
    #[test]
    fn connection_cannot_drop_the_request_id() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("x-request-id, x-other"),
        );
        h.insert("x-request-id", HeaderValue::from_static("id-1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-request-id"], "id-1");
    }
}
