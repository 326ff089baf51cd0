//! Who is calling: bearer tokens, hashed, compared in constant time.

use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::store::{Registry, StoreError, TokenHash};
use crate::WorkspaceId;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// May do everything.
    Admin,
    /// May send this workspace's heartbeats and read its budget.
    Workspace(WorkspaceId),
}

impl Principal {
    /// Whether this caller may read `workspace`'s budget or send its heartbeats.
    pub fn may_act_for(&self, workspace: &WorkspaceId) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Workspace(own) => own == workspace,
        }
    }

    /// Whether this caller is the admin.
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin)
    }
}

/// Turns a bearer token into a [`Principal`]. Implement it to plug in another policy (an IdP,
/// mTLS identities…); [`TokenAuth`] is the shipped one.
#[async_trait]
pub trait Authorize: Send + Sync + 'static {
    /// The caller holding `bearer`, or `None` when the token is nobody's (→ 403).
    ///
    /// # Errors
    /// A store failure (→ 503).
    async fn authenticate(&self, bearer: &str) -> Result<Option<Principal>, StoreError>;
}

/// The shipped policy: one admin token, and per-workspace tokens issued at registration.
/// Only SHA-256 hashes are kept; the admin comparison is constant-time, and workspace tokens are
/// looked up by hash.
pub struct TokenAuth {
    admin: TokenHash,
    store: Arc<dyn Registry>,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth").finish_non_exhaustive()
    }
}

impl TokenAuth {
    /// Admin `admin_token`; workspace tokens from `store`.
    pub fn new(admin_token: &str, store: Arc<dyn Registry>) -> Self {
        TokenAuth {
            admin: hash_token(admin_token),
            store,
        }
    }
}

#[async_trait]
impl Authorize for TokenAuth {
    async fn authenticate(&self, bearer: &str) -> Result<Option<Principal>, StoreError> {
        let hash = hash_token(bearer);
        if constant_time_eq(hash.as_bytes(), self.admin.as_bytes()) {
            return Ok(Some(Principal::Admin));
        }
        Ok(self
            .store
            .workspace_for_token(&hash)
            .await?
            .map(Principal::Workspace))
    }
}

/// The SHA-256 of a token, as stores keep it.
pub fn hash_token(token: &str) -> TokenHash {
    TokenHash::from_bytes(Sha256::digest(token.as_bytes()).into())
}

/// A fresh random token: `prefix` and 64 hex digits (256 bits from the OS).
///
/// # Panics
/// Panics if the operating system has no randomness to give.
pub fn generate_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source");
    let mut token = String::with_capacity(prefix.len() + 64);
    token.push_str(prefix);
    for b in bytes {
        token.push_str(&format!("{b:02x}"));
    }
    token
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer …` header; `None` without one or with another scheme.
pub(crate) fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_hashes() {
        let a = generate_token("tbw_");
        assert!(a.starts_with("tbw_") && a.len() == 68);
        assert_ne!(a, generate_token("tbw_"));
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token("other"));
        assert!(constant_time_eq(&[7; 32], &[7; 32]));
        let mut b = [7; 32];
        b[31] = 8;
        assert!(!constant_time_eq(&[7; 32], &b));
    }

    #[test]
    fn bearer_header() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer ")), None);
        assert_eq!(bearer(&h("Bearer")), None);
        assert_eq!(bearer(&http::HeaderMap::new()), None);
    }
}
