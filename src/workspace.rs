//! Workspace identifiers, validated once at the edge so stores and logs can trust them.

use std::fmt;
use std::sync::Arc;

/// The longest workspace id accepted, in bytes.
pub const MAX_WORKSPACE_ID_LEN: usize = 128;

/// A validated workspace id: 1 to [`MAX_WORKSPACE_ID_LEN`] bytes of ASCII letters, digits,
/// `-`, `_`, `.` and `:`. Cheap to clone: ids up to 46 bytes (a UUID with a prefix) are held
/// inline, so making, cloning and dropping one on the request path allocates nothing and shares
/// no reference count between threads; longer ones share one allocation.
///
/// ```
/// use tower_budget::WorkspaceId;
/// assert!(WorkspaceId::new("ws-1").is_ok());
/// assert!(WorkspaceId::new("../etc").is_err());
/// assert!(WorkspaceId::new("").is_err());
/// ```
#[derive(Clone)]
pub struct WorkspaceId(Repr);

/// Longest id held inline (the whole value is then 48 bytes).
const INLINE: usize = 46;

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<str>),
}

impl WorkspaceId {
    /// Validates `id`.
    ///
    /// # Errors
    /// [`InvalidWorkspaceId`] when `id` is empty, too long, or has a character outside the set.
    pub fn new(id: &str) -> Result<Self, InvalidWorkspaceId> {
        let valid_char =
            |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':');
        if id.is_empty()
            || id.len() > MAX_WORKSPACE_ID_LEN
            || !id.bytes().all(valid_char)
            || id == "."
            || id == ".."
        {
            return Err(InvalidWorkspaceId(()));
        }
        Ok(WorkspaceId(match u8::try_from(id.len()) {
            Ok(len) if id.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                Repr::Inline { len, bytes }
            }
            _ => Repr::Shared(Arc::from(id)),
        }))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Validated ASCII, so always UTF-8.
            Repr::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            Repr::Shared(s) => s,
        }
    }

    /// The id's bytes: what equality, order and hashing compare (ASCII, so the same order as
    /// the text's).
    fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared(s) => s.as_bytes(),
        }
    }
}

impl PartialEq for WorkspaceId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for WorkspaceId {}

impl PartialOrd for WorkspaceId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for WorkspaceId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for WorkspaceId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Debug for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for WorkspaceId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::str::FromStr for WorkspaceId {
    type Err = InvalidWorkspaceId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkspaceId::new(s)
    }
}

impl serde::Serialize for WorkspaceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A workspace id that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workspace id must be 1 to {MAX_WORKSPACE_ID_LEN} characters of A-Z a-z 0-9 - _ . :")]
pub struct InvalidWorkspaceId(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        for ok in [
            "ws-1",
            "a",
            "Team_7.agent:2",
            &"x".repeat(MAX_WORKSPACE_ID_LEN),
        ] {
            assert_eq!(WorkspaceId::new(ok).unwrap().as_str(), ok);
        }
        assert_eq!(std::mem::size_of::<WorkspaceId>(), 48);
        for bad in [
            "",
            "a b",
            "a/b",
            "ü",
            "..",
            ".",
            "a\0",
            "%2F",
            &"x".repeat(MAX_WORKSPACE_ID_LEN + 1),
        ] {
            assert!(WorkspaceId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn inline_and_shared_ids_compare_order_and_hash_alike() {
        use std::collections::hash_map::DefaultHasher;
        use std::hash::{Hash, Hasher};
        let hash = |w: &WorkspaceId| {
            let mut h = DefaultHasher::new();
            w.hash(&mut h);
            h.finish()
        };
        // Around the inline capacity, and the longest id.
        let texts: Vec<String> = [1, INLINE - 1, INLINE, INLINE + 1, MAX_WORKSPACE_ID_LEN]
            .iter()
            .flat_map(|&n| ["a".repeat(n), format!("{}b", "a".repeat(n - 1))])
            .collect();
        let ids: Vec<WorkspaceId> = texts.iter().map(|t| WorkspaceId::new(t).unwrap()).collect();
        assert!(matches!(ids[4].0, Repr::Inline { .. }));
        assert!(matches!(ids[6].0, Repr::Shared(_)));
        for (a, ta) in ids.iter().zip(&texts) {
            assert_eq!(a.as_str(), ta);
            assert_eq!(a.to_string(), *ta);
            assert_eq!(format!("{a:?}"), format!("{ta:?}"));
            for (b, tb) in ids.iter().zip(&texts) {
                assert_eq!(a == b, ta == tb, "{ta} == {tb}");
                assert_eq!(a.cmp(b), ta.cmp(tb), "{ta} cmp {tb}");
                assert_eq!(hash(a) == hash(b), ta == tb, "{ta} hash {tb}");
            }
            assert_eq!(a.clone(), *a);
        }
    }
}
