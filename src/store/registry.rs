//! The agents' registry: where each workspace's agent listens and the hash of its bearer token
//! — the half of a store the proxy and the API's authentication read.

use std::sync::Arc;

use async_trait::async_trait;

use super::{AlertOutbox, BudgetStore, StoreError};
use crate::WorkspaceId;

/// A SHA-256 hash of a workspace's bearer token: stores keep only this, never the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash from its 32 bytes (as a store reads them back).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        TokenHash(bytes)
    }

    /// The 32 bytes to store.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(…)")
    }
}

/// What a gateway keeps about a workspace besides its budget.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Registration {
    /// Where the workspace's agent listens (`http://127.0.0.1:9901`), if known.
    pub agent_url: Option<String>,
    /// The hash of the workspace's bearer token, if it has one.
    pub token_hash: Option<TokenHash>,
}

/// The agents' registry: each workspace's agent URL and token hash.
///
/// A workspace's registration lives and dies with its budget: [`BudgetStore::register`] and
/// [`BudgetStore::remove`] act on both, so a type implements the two traits over one set of
/// workspaces (a [`Store`]).
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers `workspace` (or brings a removed one back) with `registration`, replacing the
    /// previous agent URL and token hash in one step: the old token stops working at once.
    /// Limits, ledger, previous report and `seq` are kept.
    async fn register_agent(
        &self,
        workspace: &WorkspaceId,
        registration: &Registration,
    ) -> Result<(), StoreError>;

    /// The workspace's registration; [`StoreError::NotFound`] when unknown or removed.
    async fn registration(&self, workspace: &WorkspaceId) -> Result<Registration, StoreError>;

    /// The [`registration`](Self::registration) answer if it is at hand without waiting (a fresh
    /// cache entry), else `None`: the request path asks this first and skips the boxed future,
    /// the timer and the wake-up a call costs. The default has nothing at hand.
    fn registration_now(
        &self,
        workspace: &WorkspaceId,
    ) -> Option<Result<Registration, StoreError>> {
        let _ = workspace;
        None
    }

    /// The last registration this store answered for `workspace`, kept for when it cannot
    /// answer in time (the gateway's proxy uses it). Stores that cache keep it and drop it with
    /// the workspace's other entries (writes through them, "unknown" answers); the default keeps
    /// nothing.
    fn last_known_registration(&self, workspace: &WorkspaceId) -> Option<Registration> {
        let _ = workspace;
        None
    }

    /// The workspace whose token has this hash, removed ones included (their callers get 404,
    /// not 403).
    async fn workspace_for_token(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<WorkspaceId>, StoreError>;
}

#[async_trait]
impl<S: Registry + ?Sized> Registry for Arc<S> {
    async fn register_agent(
        &self,
        workspace: &WorkspaceId,
        registration: &Registration,
    ) -> Result<(), StoreError> {
        (**self).register_agent(workspace, registration).await
    }
    async fn registration(&self, workspace: &WorkspaceId) -> Result<Registration, StoreError> {
        (**self).registration(workspace).await
    }
    fn registration_now(
        &self,
        workspace: &WorkspaceId,
    ) -> Option<Result<Registration, StoreError>> {
        (**self).registration_now(workspace)
    }
    fn last_known_registration(&self, workspace: &WorkspaceId) -> Option<Registration> {
        (**self).last_known_registration(workspace)
    }
    async fn workspace_for_token(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<WorkspaceId>, StoreError> {
        (**self).workspace_for_token(token_hash).await
    }
}

/// Budgets, registry and alert outbox in one: what the budget API and the example gateway take.
/// Implemented for every type that implements the three ([`MemoryStore`](super::MemoryStore),
/// `postgres::PgStore`, a [`CachingStore`](super::CachingStore) of either); an
/// `Arc<dyn Store>` coerces to `Arc<dyn BudgetStore>`, `Arc<dyn Registry>` or
/// `Arc<dyn AlertOutbox>` for the parts that need only one.
pub trait Store: BudgetStore + Registry + AlertOutbox {}

impl<S: BudgetStore + Registry + AlertOutbox + ?Sized> Store for S {}
