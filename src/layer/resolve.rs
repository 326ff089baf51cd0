//! Which workspace a request is for.

use std::borrow::Cow;

use http::request::Parts;
use http::HeaderName;

use crate::WorkspaceId;

/// Finds the workspace a request is for. `None` means the request is not for any workspace and
/// passes through unchecked. The layer validates what is returned (see [`WorkspaceId::new`]) and
/// answers `400` for an invalid id rather than let it through unchecked.
///
/// Implemented for closures `Fn(&http::request::Parts) -> Option<String>`, and by
/// [`PathSegment`], [`Header`] and [`Extension`].
pub trait ResolveWorkspace: Send + Sync + 'static {
    /// The raw workspace id of `request`, if it has one.
    fn resolve<'a>(&self, request: &'a Parts) -> Option<Cow<'a, str>>;
}

impl<F> ResolveWorkspace for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn resolve<'a>(&self, request: &'a Parts) -> Option<Cow<'a, str>> {
        self(request).map(Cow::Owned)
    }
}

/// The path segment right after a prefix: `PathSegment::new("/workspaces/")` reads `ws-1` from
/// `/workspaces/ws-1/a2a` and from `/workspaces/ws-1`.
///
/// Caveat: the segment is taken as sent, percent-encoding included; an encoded id such as
/// `ws%2D1` fails validation and gets `400`, so an encoding trick cannot slip past the check.
#[derive(Clone, Debug)]
pub struct PathSegment {
    prefix: Cow<'static, str>,
}

impl PathSegment {
    /// Reads the segment after `prefix`, which should end with `/`.
    pub fn new(prefix: impl Into<Cow<'static, str>>) -> Self {
        PathSegment {
            prefix: prefix.into(),
        }
    }
}

impl Default for PathSegment {
    /// `/workspaces/{id}/…`
    fn default() -> Self {
        PathSegment::new("/workspaces/")
    }
}

impl ResolveWorkspace for PathSegment {
    fn resolve<'a>(&self, request: &'a Parts) -> Option<Cow<'a, str>> {
        let rest = request.uri.path().strip_prefix(&*self.prefix)?;
        let id = rest.split('/').next().unwrap_or(rest);
        Some(Cow::Borrowed(id))
    }
}

/// A request header, such as `x-workspace-id`. Caveat: any client can set a header; use this only
/// behind something that sets or strips it (an authenticating proxy), or where the header is the
/// routing key anyway.
#[derive(Clone, Debug)]
pub struct Header {
    name: HeaderName,
}

impl Header {
    /// Reads `name`.
    pub fn new(name: HeaderName) -> Self {
        Header { name }
    }
}

impl ResolveWorkspace for Header {
    fn resolve<'a>(&self, request: &'a Parts) -> Option<Cow<'a, str>> {
        // A header that is not visible ASCII still resolves, to an id that fails validation.
        request
            .headers
            .get(&self.name)
            .map(|v| v.to_str().map_or(Cow::Borrowed("\u{fffd}"), Cow::Borrowed))
    }
}

/// A [`WorkspaceId`] request extension, put there by an earlier layer (authentication, routing).
#[derive(Clone, Copy, Debug, Default)]
pub struct Extension;

impl ResolveWorkspace for Extension {
    fn resolve<'a>(&self, request: &'a Parts) -> Option<Cow<'a, str>> {
        request
            .extensions
            .get::<WorkspaceId>()
            .map(|w| Cow::Borrowed(w.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, header: Option<&str>) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        if let Some(h) = header {
            b = b.header("x-workspace-id", h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn path_segment() {
        let r = PathSegment::default();
        for (uri, want) in [
            ("/workspaces/ws-1/a2a", Some("ws-1")),
            ("/workspaces/ws-1", Some("ws-1")),
            ("/workspaces/ws-1/a2a/x?y=1", Some("ws-1")),
            ("/workspaces/", Some("")),
            ("/other/ws-1", None),
            ("/workspaces", None),
        ] {
            assert_eq!(r.resolve(&parts(uri, None)).as_deref(), want, "{uri}");
        }
    }

    #[test]
    fn header_extension_and_closure() {
        let h = Header::new(HeaderName::from_static("x-workspace-id"));
        assert_eq!(
            h.resolve(&parts("/", Some("ws-2"))).as_deref(),
            Some("ws-2")
        );
        assert_eq!(h.resolve(&parts("/", None)), None);

        let mut p = parts("/", None);
        assert_eq!(Extension.resolve(&p), None);
        p.extensions.insert(WorkspaceId::new("ws-3").unwrap());
        assert_eq!(Extension.resolve(&p).as_deref(), Some("ws-3"));

        let c = |p: &Parts| p.uri.query().map(str::to_owned);
        assert_eq!(c.resolve(&parts("/?ws-4", None)).as_deref(), Some("ws-4"));
    }
}
