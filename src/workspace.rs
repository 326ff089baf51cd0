//! Workspace identifiers, validated once at the edge so stores and logs can trust them.

use std::fmt;
use std::sync::Arc;

/// The longest workspace id accepted, in bytes.
pub const MAX_WORKSPACE_ID_LEN: usize = 128;

/// A validated workspace id: 1 to [`MAX_WORKSPACE_ID_LEN`] bytes of ASCII letters, digits,
/// `-`, `_`, `.` and `:`. Cheap to clone.
///
/// ```
/// use tower_budget::WorkspaceId;
/// assert!(WorkspaceId::new("ws-1").is_ok());
/// assert!(WorkspaceId::new("../etc").is_err());
/// assert!(WorkspaceId::new("").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkspaceId(Arc<str>);

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
        Ok(WorkspaceId(Arc::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for WorkspaceId {
    fn as_ref(&self) -> &str {
        &self.0
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
        s.serialize_str(&self.0)
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
}
