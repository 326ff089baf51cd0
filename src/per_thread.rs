//! Small direct-mapped tables kept per worker thread: the hot paths' memos (the caching store's
//! front, the budget header values), which then touch nothing another thread writes.

use std::hash::{BuildHasher, Hash};

/// `len` slots, filled on first use; a key's slot is its hash modulo `len`. A collision only
/// replaces the slot's entry. The hash has a fixed seed: the table is per thread and bounded,
/// so a key chosen to collide costs its sender a miss, nothing more.
pub(crate) struct Slots<T> {
    slots: Vec<Option<T>>,
    len: usize,
    seed: u64,
}

impl<T> Slots<T> {
    pub(crate) const fn new(len: usize, seed: u64) -> Self {
        Slots {
            slots: Vec::new(),
            len,
            seed,
        }
    }

    /// The slot `key` maps to.
    pub(crate) fn slot(&mut self, key: impl Hash) -> &mut Option<T> {
        if self.slots.is_empty() {
            self.slots.resize_with(self.len, || None);
        }
        let hash = foldhash::fast::FixedState::with_seed(self.seed).hash_one(key);
        &mut self.slots[(hash as usize) % self.len]
    }
}
