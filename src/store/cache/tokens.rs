//! The caching store's token entries: token hash → workspace, kept only while a change feed
//! (the Postgres listener) tells the cache about every rotation and removal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use tokio::time::Instant;

use super::{read_lock, write_lock};
use crate::store::TokenHash;
use crate::WorkspaceId;

/// Token lookups answered from memory. Off by default: without a feed of changes, a token
/// rotated through another process would keep working here for a TTL. Only positive answers
/// are kept (a guessed token costs the guesser a store lookup, and fills nothing).
#[derive(Default)]
pub(super) struct Tokens {
    on: AtomicBool,
    /// Bumped by every change that can revoke a token: a lookup that started before one does
    /// not record its (possibly revoked) answer.
    epoch: AtomicU64,
    maps: RwLock<Maps>,
}

#[derive(Default)]
struct Maps {
    by_hash: HashMap<TokenHash, (WorkspaceId, Instant), foldhash::fast::RandomState>,
    /// Each workspace's one current token, so a change to a workspace finds its entry.
    by_workspace: HashMap<WorkspaceId, TokenHash, foldhash::fast::RandomState>,
}

impl Maps {
    fn remove_workspace(&mut self, workspace: &WorkspaceId) {
        if let Some(hash) = self.by_workspace.remove(workspace) {
            self.by_hash.remove(&hash);
        }
    }
}

impl Tokens {
    /// Turns caching on or off; off drops every entry.
    pub(super) fn set_on(&self, on: bool) {
        // Under the lock: a lookup recording its answer sees "off" before the map is emptied.
        let mut maps = write_lock(&self.maps);
        self.on.store(on, Ordering::Release);
        if !on {
            self.epoch.fetch_add(1, Ordering::AcqRel);
            *maps = Maps::default();
        }
    }

    pub(super) fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// The workspace of a fresh entry for `hash`.
    pub(super) fn get(&self, hash: &TokenHash, ttl: Duration) -> Option<WorkspaceId> {
        if !self.is_on() {
            return None;
        }
        let maps = read_lock(&self.maps);
        let (workspace, started) = maps.by_hash.get(hash)?;
        (Instant::now() < *started + ttl).then(|| workspace.clone())
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps a lookup's answer, unless caching is off or a change came after the lookup began.
    pub(super) fn record(
        &self,
        hash: TokenHash,
        workspace: &WorkspaceId,
        since: u64,
        started: Instant,
        capacity: usize,
    ) {
        let mut maps = write_lock(&self.maps);
        if !self.is_on() || self.epoch() != since {
            return;
        }
        maps.remove_workspace(workspace);
        if maps.by_hash.len() >= capacity {
            if let Some(victim) = maps.by_hash.values().next().map(|(w, _)| w.clone()) {
                maps.remove_workspace(&victim);
            }
        }
        maps.by_hash.insert(hash, (workspace.clone(), started));
        maps.by_workspace.insert(workspace.clone(), hash);
    }

    /// A change to `workspace`'s registration: its token entry goes, and lookups in flight do
    /// not record theirs.
    pub(super) fn forget(&self, workspace: &WorkspaceId) {
        let mut maps = write_lock(&self.maps);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        maps.remove_workspace(workspace);
    }

    pub(super) fn clear(&self) {
        let mut maps = write_lock(&self.maps);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        *maps = Maps::default();
    }
}
