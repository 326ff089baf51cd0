//! The in-process store: the zero-setup default for development and single-node use.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    derive_delta, AlertOutbox, BudgetPatch, BudgetReport, BudgetStatus, BudgetStore, Heartbeat,
    HeartbeatOutcome, PendingAlert, Registration, Registry, StoreError, TokenHash,
};
use crate::alerts::{self, AlertEvent, AlertThresholds, Decided, ForecastInput, Side};
use crate::clock::{Clock, SystemClock};
use crate::period::{is_exceeded, Limits, PerPeriod, Period, Spend};
use crate::WorkspaceId;

/// Default bound on ledger entries kept per workspace (about one report every 30 s for 35 days).
pub const DEFAULT_MAX_ENTRIES_PER_WORKSPACE: usize = 100_000;

/// An in-process [`BudgetStore`] with the same semantics as the Postgres store: exact trailing
/// windows, `seq`, reset and clamp rules, alert events decided under the workspace's lock. State
/// lives in memory and is lost on restart — the alert outbox too: events not yet delivered when
/// the process exits are never delivered.
///
/// Memory per workspace is bounded: ledger entries older than [`Period::retention`] are dropped
/// as new ones arrive, reports at the same microsecond share an entry, and beyond
/// `max_entries_per_workspace` the oldest entry is folded into the next one. Folding moves old
/// spend slightly *later*, so a window may count it a little longer — it never undercounts.
///
/// ```
/// # tokio_test_block_on(async {
/// use tower_budget::{store::{BudgetStore, Heartbeat, MemoryStore}, WorkspaceId};
/// let store = MemoryStore::new();
/// let ws = WorkspaceId::new("ws-1").unwrap();
/// store.register(&ws).await.unwrap();
/// store.record_heartbeat(&Heartbeat::new(ws.clone(), Some(250), None)).await.unwrap();
/// assert_eq!(store.status(&ws).await.unwrap().spend[tower_budget::period::Period::HOURLY], 250);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    workspaces: RwLock<BTreeMap<WorkspaceId, Arc<Mutex<Workspace>>>>,
    /// Token hash → workspace; its write lock also serialises registrations.
    tokens: RwLock<HashMap<TokenHash, WorkspaceId>>,
    /// Alert events not yet delivered. Taken after a workspace's lock, never before.
    outbox: Mutex<Outbox>,
    clock: Arc<dyn Clock>,
    max_entries: usize,
}

#[derive(Debug, Default)]
struct Workspace {
    removed: bool,
    registration: Registration,
    limits: Limits,
    /// `None`: the default thresholds.
    thresholds: Option<AlertThresholds>,
    /// Periods exceeded when alerts were last decided.
    exceeded: PerPeriod<bool>,
    previous_reported: i64,
    last_seq: Option<u64>,
    ledger: Ledger,
}

impl Workspace {
    fn status(&self, now: i64) -> BudgetStatus {
        BudgetStatus {
            limits: self.limits,
            spend: Spend::from_fn(|p| self.ledger.spend(now - window_micros(p), now)),
        }
    }

    fn thresholds(&self) -> AlertThresholds {
        self.thresholds.clone().unwrap_or_default()
    }

    fn report(&self, now: i64) -> BudgetReport {
        let status = self.status(now);
        let hourly_spend = status.spend[Period::HOURLY];
        BudgetReport {
            exhausted_in_seconds: PerPeriod::from_fn(|p| {
                let window = window_micros(p);
                let input = ForecastInput {
                    limit: status.limits.get(p)?,
                    window_secs: i64::try_from(p.window().as_secs()).unwrap_or(i64::MAX),
                    spend: status.spend[p],
                    hourly_spend,
                };
                let entries = self
                    .ledger
                    .entries_in(now - window, now)
                    .map(|(at, cents)| (at + window - now, cents));
                alerts::forecast(input, entries)
            }),
            retry_after: PerPeriod::from_fn(|p| {
                let limit = status.limits.get(p)?;
                is_exceeded(Some(limit), status.spend[p])
                    .then(|| self.release_in(p, limit, now))
                    .flatten()
            }),
            alert_thresholds: self.thresholds(),
            status,
        }
    }

    /// How long until the spend in `p`'s window falls below `limit` as entries age out; `None`
    /// for a limit of 0 (never) or when nothing has to age out.
    fn release_in(&self, p: Period, limit: i64, now: i64) -> Option<Duration> {
        if limit <= 0 {
            return None;
        }
        let leaves_at = self
            .ledger
            .first_entry_above(self.ledger.total_at(now) - limit)?;
        p.time_until_out(
            DateTime::from_timestamp_micros(leaves_at)?,
            DateTime::from_timestamp_micros(now)?,
        )
    }

    /// Decides the alert events of a change from `before` to the workspace's state now (see
    /// [`alerts::decide`]).
    fn decide(&mut self, before: &BudgetStatus, now: i64) -> Vec<Decided> {
        let after = self.status(now);
        alerts::decide(
            &self.thresholds(),
            Side {
                limits: &before.limits,
                spend: &before.spend,
            },
            Side {
                limits: &after.limits,
                spend: &after.spend,
            },
            &mut self.exceeded,
        )
    }
}

/// The in-process outbox: events in the order they were decided.
#[derive(Debug)]
struct Outbox {
    /// Unique to this store, so ids of two processes never collide.
    prefix: String,
    next_key: i64,
    events: BTreeMap<i64, Queued>,
}

#[derive(Debug)]
struct Queued {
    event: AlertEvent,
    created: i64,
    attempts: u32,
    due: i64,
    leased_until: i64,
    delivered_to: Vec<String>,
}

impl Default for Outbox {
    fn default() -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Outbox {
            prefix: format!("mem-{:x}", started.as_nanos()),
            next_key: 1,
            events: BTreeMap::new(),
        }
    }
}

impl Outbox {
    fn push(&mut self, workspace: &WorkspaceId, decided: Vec<Decided>, now: i64) {
        for d in decided {
            let key = self.next_key;
            self.next_key += 1;
            let event = AlertEvent {
                id: format!("{}-{key}", self.prefix),
                kind: d.kind,
                workspace: workspace.clone(),
                period: d.period.name().to_owned(),
                threshold: d.threshold,
                limit: d.limit,
                spend: d.spend,
                at: DateTime::from_timestamp_micros(now).unwrap_or_default(),
            };
            self.events.insert(
                key,
                Queued {
                    event,
                    created: now,
                    attempts: 0,
                    due: now,
                    leased_until: i64::MIN,
                    delivered_to: Vec::new(),
                },
            );
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        MemoryStore {
            workspaces: RwLock::default(),
            tokens: RwLock::default(),
            outbox: Mutex::default(),
            clock: Arc::new(SystemClock),
            max_entries: DEFAULT_MAX_ENTRIES_PER_WORKSPACE,
        }
    }

    /// Uses `clock` for ledger timestamps and window ends (tests inject a `ManualClock`).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Bounds the ledger entries kept per workspace (at least 2).
    #[must_use]
    pub fn with_max_entries_per_workspace(mut self, max: usize) -> Self {
        self.max_entries = max.max(2);
        self
    }

    fn get(&self, workspace: &WorkspaceId) -> Result<Arc<Mutex<Workspace>>, StoreError> {
        let map = self.workspaces.read().unwrap_or_else(|e| e.into_inner());
        map.get(workspace).cloned().ok_or(StoreError::NotFound)
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a registered, not removed workspace under its lock.
    fn with_live<T>(
        &self,
        workspace: &WorkspaceId,
        f: impl FnOnce(&mut Workspace) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let ws = self.get(workspace)?;
        let mut ws = ws.lock().unwrap_or_else(|e| e.into_inner());
        if ws.removed {
            return Err(StoreError::NotFound);
        }
        f(&mut ws)
    }
}

#[async_trait]
impl BudgetStore for MemoryStore {
    async fn register(&self, workspace: &WorkspaceId) -> Result<(), StoreError> {
        let mut map = self.workspaces.write().unwrap_or_else(|e| e.into_inner());
        let ws = map.entry(workspace.clone()).or_default();
        ws.lock().unwrap_or_else(|e| e.into_inner()).removed = false;
        Ok(())
    }

    async fn remove(&self, workspace: &WorkspaceId) -> Result<(), StoreError> {
        self.with_live(workspace, |ws| {
            ws.removed = true;
            Ok(())
        })
    }

    async fn limits(&self, workspace: &WorkspaceId) -> Result<Limits, StoreError> {
        self.with_live(workspace, |ws| Ok(ws.limits))
    }

    async fn patch_budget(
        &self,
        workspace: &WorkspaceId,
        patch: &BudgetPatch,
    ) -> Result<BudgetReport, StoreError> {
        let now = micros(self.clock.now());
        self.with_live(workspace, |ws| {
            let before = ws.status(now);
            ws.limits = ws.limits.patched(&patch.limits);
            if let Some(thresholds) = &patch.alert_thresholds {
                ws.thresholds.clone_from(thresholds);
            }
            let events = ws.decide(&before, now);
            self.outbox().push(workspace, events, now);
            Ok(ws.report(now))
        })
    }

    async fn status(&self, workspace: &WorkspaceId) -> Result<BudgetStatus, StoreError> {
        let now = micros(self.clock.now());
        self.with_live(workspace, |ws| Ok(ws.status(now)))
    }

    async fn report(&self, workspace: &WorkspaceId) -> Result<BudgetReport, StoreError> {
        let now = micros(self.clock.now());
        self.with_live(workspace, |ws| Ok(ws.report(now)))
    }

    async fn retry_after(
        &self,
        workspace: &WorkspaceId,
        over: &Limits,
    ) -> Result<PerPeriod<Option<Duration>>, StoreError> {
        let now = micros(self.clock.now());
        self.with_live(workspace, |ws| {
            Ok(PerPeriod::from_fn(|p| ws.release_in(p, over.get(p)?, now)))
        })
    }

    async fn record_heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatOutcome, StoreError> {
        let now = micros(self.clock.now());
        let max_entries = self.max_entries;
        self.with_live(&hb.workspace, |ws| {
            if let (Some(seq), Some(last)) = (hb.seq, ws.last_seq) {
                if seq <= last {
                    return Ok(HeartbeatOutcome {
                        recorded_delta_cents: 0,
                        stale: true,
                    });
                }
            }
            let reported = hb.reported_cents();
            let delta = derive_delta(ws.previous_reported, reported);
            let delta = if delta > 0 {
                // Alerts are decided at the entry's time: a clock that stepped back joins the
                // last entry (see `Ledger::append`).
                let at = now.max(ws.ledger.last_at().unwrap_or(i64::MIN));
                let before = ws.status(at);
                let recorded = ws.ledger.append(now, delta, max_entries);
                ws.ledger.prune(now - retention_micros());
                if recorded > 0 {
                    let events = ws.decide(&before, at);
                    self.outbox().push(&hb.workspace, events, at);
                }
                recorded
            } else {
                0
            };
            if reported > 0 {
                ws.previous_reported = reported;
            }
            if hb.seq.is_some() {
                ws.last_seq = hb.seq;
            }
            Ok(HeartbeatOutcome {
                recorded_delta_cents: delta,
                stale: false,
            })
        })
    }

    async fn spend_history(
        &self,
        workspace: &WorkspaceId,
        step: Duration,
        from: DateTime<Utc>,
        buckets: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let step = i64::try_from(step.as_micros()).unwrap_or(i64::MAX);
        let from = micros(from);
        self.with_live(workspace, |ws| {
            let edge = |i: usize| {
                from.saturating_add(step.saturating_mul(i64::try_from(i).unwrap_or(i64::MAX)))
            };
            Ok((0..buckets)
                .map(|i| ws.ledger.total_before(edge(i + 1)) - ws.ledger.total_before(edge(i)))
                .collect())
        })
    }

    async fn list_workspaces(
        &self,
        after: Option<&WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<WorkspaceId>, StoreError> {
        use std::ops::Bound;
        let map = self.workspaces.read().unwrap_or_else(|e| e.into_inner());
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(map
            .range::<WorkspaceId, _>((start, Bound::Unbounded))
            .filter(|(_, ws)| !ws.lock().unwrap_or_else(|e| e.into_inner()).removed)
            .map(|(id, _)| id.clone())
            .take(limit)
            .collect())
    }

    async fn prune(&self) -> Result<u64, StoreError> {
        let cutoff = micros(self.clock.now()) - retention_micros();
        let all: Vec<_> = {
            let map = self.workspaces.read().unwrap_or_else(|e| e.into_inner());
            map.values().cloned().collect()
        };
        // One workspace lock at a time: a prune never holds up more than one workspace.
        Ok(all
            .iter()
            .map(|ws| {
                ws.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .ledger
                    .prune(cutoff)
            })
            .sum())
    }
}

#[async_trait]
impl AlertOutbox for MemoryStore {
    async fn claim_alerts(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<PendingAlert>, StoreError> {
        let now = micros(self.clock.now());
        let lease = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
        let mut outbox = self.outbox();
        let mut heads = std::collections::HashSet::new();
        let mut claimed = Vec::new();
        for (&key, queued) in outbox.events.iter_mut() {
            if claimed.len() >= max {
                break;
            }
            // Only a workspace's oldest event: its events go out in order.
            if !heads.insert(queued.event.workspace.clone()) {
                continue;
            }
            if queued.due <= now && queued.leased_until <= now {
                queued.attempts += 1;
                queued.leased_until = now.saturating_add(lease);
                claimed.push(PendingAlert {
                    event: queued.event.clone(),
                    delivered_to: queued.delivered_to.clone(),
                    attempts: queued.attempts,
                    key,
                });
            }
        }
        Ok(claimed)
    }

    async fn alert_delivered(&self, alert: &PendingAlert) -> Result<(), StoreError> {
        self.outbox().events.remove(&alert.key);
        Ok(())
    }

    async fn alert_failed(
        &self,
        alert: &PendingAlert,
        delivered_to: &[String],
        retry_in: Duration,
    ) -> Result<(), StoreError> {
        let now = micros(self.clock.now());
        let mut outbox = self.outbox();
        if let Some(queued) = outbox.events.get_mut(&alert.key) {
            if queued.attempts == alert.attempts {
                queued.delivered_to = delivered_to.to_vec();
                queued.leased_until = i64::MIN;
                queued.due =
                    now.saturating_add(i64::try_from(retry_in.as_micros()).unwrap_or(i64::MAX));
            }
        }
        Ok(())
    }

    async fn expire_alerts(&self, max_age: Duration) -> Result<u64, StoreError> {
        let now = micros(self.clock.now());
        let cutoff = now.saturating_sub(i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX));
        let mut outbox = self.outbox();
        let before = outbox.events.len();
        outbox
            .events
            .retain(|_, q| q.created >= cutoff || q.leased_until > now);
        Ok((before - outbox.events.len()) as u64)
    }

    async fn sweep_recovered(&self) -> Result<u64, StoreError> {
        let now = micros(self.clock.now());
        let all: Vec<_> = {
            let map = self.workspaces.read().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .map(|(id, ws)| (id.clone(), ws.clone()))
                .collect()
        };
        let mut decided = 0;
        for (id, ws) in all {
            let mut ws = ws.lock().unwrap_or_else(|e| e.into_inner());
            if ws.removed || !ws.exceeded.iter().any(|(_, e)| *e) {
                continue;
            }
            let now_status = ws.status(now);
            let events = ws.decide(&now_status, now);
            decided += events.len() as u64;
            self.outbox().push(&id, events, now);
        }
        Ok(decided)
    }
}

#[async_trait]
impl Registry for MemoryStore {
    async fn register_agent(
        &self,
        workspace: &WorkspaceId,
        registration: &Registration,
    ) -> Result<(), StoreError> {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        let ws = {
            let mut map = self.workspaces.write().unwrap_or_else(|e| e.into_inner());
            map.entry(workspace.clone()).or_default().clone()
        };
        let mut ws = ws.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = ws.registration.token_hash.take() {
            tokens.remove(&old);
        }
        if let Some(new) = registration.token_hash {
            tokens.insert(new, workspace.clone());
        }
        ws.registration = registration.clone();
        ws.removed = false;
        Ok(())
    }

    async fn registration(&self, workspace: &WorkspaceId) -> Result<Registration, StoreError> {
        self.with_live(workspace, |ws| Ok(ws.registration.clone()))
    }

    async fn workspace_for_token(
        &self,
        token_hash: &TokenHash,
    ) -> Result<Option<WorkspaceId>, StoreError> {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        Ok(tokens.get(token_hash).cloned())
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn window_micros(p: Period) -> i64 {
    i64::try_from(p.window().as_micros()).unwrap_or(i64::MAX)
}

fn retention_micros() -> i64 {
    i64::try_from(Period::retention().as_micros()).unwrap_or(i64::MAX)
}

/// An append-only ledger of running totals, oldest first.
#[derive(Debug, Default)]
struct Ledger {
    /// The running total before the oldest kept entry (what pruning or folding removed).
    base_total: i64,
    entries: VecDeque<Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    at: i64,
    /// Running total after this entry.
    total: i64,
}

impl Ledger {
    fn total(&self) -> i64 {
        self.entries.back().map_or(self.base_total, |e| e.total)
    }

    fn last_at(&self) -> Option<i64> {
        self.entries.back().map(|e| e.at)
    }

    /// The entries in `(lo, hi]` as `(time, cents)`, oldest first.
    fn entries_in(&self, lo: i64, hi: i64) -> impl Iterator<Item = (i64, i64)> + '_ {
        let first = self.entries.partition_point(|e| e.at <= lo);
        let end = self.entries.partition_point(|e| e.at <= hi);
        let mut previous = match first {
            0 => self.base_total,
            n => self.entries[n - 1].total,
        };
        self.entries.range(first..end.max(first)).map(move |e| {
            let cents = e.total - previous;
            previous = e.total;
            (e.at, cents)
        })
    }

    /// Appends `delta` at `at` and returns what was recorded; times never go backwards, so a
    /// late clock joins the last entry. Running totals never overflow: near `i64::MAX` they are
    /// shifted down by the total before the oldest kept entry (only differences are ever read),
    /// and what still does not fit saturates.
    fn append(&mut self, at: i64, delta: i64, max_entries: usize) -> i64 {
        if self.total() > i64::MAX - delta && self.base_total > 0 {
            let base = self.base_total;
            self.entries.iter_mut().for_each(|e| e.total -= base);
            self.base_total = 0;
        }
        let delta = delta.min(i64::MAX - self.total());
        if delta <= 0 {
            return 0;
        }
        let total = self.total() + delta;
        match self.entries.back_mut() {
            Some(last) if last.at >= at => last.total = total,
            _ => self.entries.push_back(Entry { at, total }),
        }
        if self.entries.len() > max_entries {
            // Fold the oldest entry into the next: its spend now counts from the later time.
            self.entries.pop_front();
        }
        delta
    }

    /// Running total over entries at or before `t`.
    fn total_at(&self, t: i64) -> i64 {
        match self.entries.partition_point(|e| e.at <= t) {
            0 => self.base_total,
            n => self.entries[n - 1].total,
        }
    }

    /// Running total over entries strictly before `t`.
    fn total_before(&self, t: i64) -> i64 {
        match self.entries.partition_point(|e| e.at < t) {
            0 => self.base_total,
            n => self.entries[n - 1].total,
        }
    }

    /// Spend in `(lo, hi]`.
    fn spend(&self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return 0;
        }
        self.total_at(hi) - self.total_at(lo)
    }

    /// Time of the first entry whose running total exceeds `total`.
    fn first_entry_above(&self, total: i64) -> Option<i64> {
        let i = self.entries.partition_point(|e| e.total <= total);
        self.entries.get(i).map(|e| e.at)
    }

    /// Drops entries before `cutoff`; returns how many.
    fn prune(&mut self, cutoff: i64) -> u64 {
        let mut n = 0;
        while let Some(e) = self.entries.front().copied().filter(|e| e.at < cutoff) {
            self.base_total = e.total;
            self.entries.pop_front();
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(events: &[(i64, i64)]) -> Ledger {
        let mut l = Ledger::default();
        for &(at, delta) in events {
            assert_eq!(l.append(at, delta, usize::MAX), delta);
        }
        l
    }

    #[test]
    fn spend_is_exact_over_half_open_windows() {
        let l = ledger(&[(10, 1), (20, 2), (20, 4), (30, 8)]);
        assert_eq!(l.entries.len(), 3, "same instant shares an entry");
        assert_eq!(l.spend(0, 100), 15);
        assert_eq!(
            l.spend(10, 30),
            14,
            "left edge excluded, right edge included"
        );
        assert_eq!(l.spend(9, 10), 1);
        assert_eq!(l.spend(20, 29), 0);
        assert_eq!(l.spend(30, 30), 0);
    }

    #[test]
    fn late_clock_joins_the_last_entry() {
        let l = ledger(&[(50, 1), (40, 2)]);
        assert_eq!(l.spend(45, 50), 3);
    }

    #[test]
    fn prune_keeps_window_sums() {
        let mut l = ledger(&[(10, 1), (20, 2), (30, 4)]);
        assert_eq!(l.prune(21), 2);
        assert_eq!(l.spend(25, 40), 4);
        assert_eq!(l.spend(0, 40), 4, "pruned spend no longer counts");
        assert_eq!(l.prune(21), 0);
    }

    #[test]
    fn folding_never_undercounts() {
        let mut l = Ledger::default();
        for at in 1..=10 {
            l.append(at, 1, 4);
        }
        assert_eq!(l.entries.len(), 4);
        // Exact would be 3 for (7, 10]; folded spend moves later, never earlier.
        assert_eq!(l.spend(7, 10), 3);
        // The six folded reports now count from t=7: a window reaching back past 7 sees all.
        assert_eq!(l.spend(6, 10), 10);
        assert_eq!(l.spend(0, 10), 10);
    }

    #[test]
    fn first_entry_above() {
        let l = ledger(&[(10, 5), (20, 5), (30, 5)]);
        assert_eq!(l.first_entry_above(0), Some(10));
        assert_eq!(l.first_entry_above(5), Some(20));
        assert_eq!(l.first_entry_above(12), Some(30));
        assert_eq!(l.first_entry_above(15), None);
    }

    #[test]
    fn totals_never_overflow_they_shift_or_saturate() {
        // Everything kept: nothing to shift away, so the spend saturates.
        let mut l = ledger(&[(1, i64::MAX - 1)]);
        assert_eq!(l.append(2, 5, 10), 1, "saturates at i64::MAX");
        assert_eq!(l.spend(0, 10), i64::MAX);
        assert_eq!(l.append(3, 5, 10), 0);
        // Old spend pruned: the totals shift down and new spend is counted exactly.
        let mut l = ledger(&[(1, i64::MAX - 10), (5, 4)]);
        l.prune(2);
        assert_eq!(l.append(6, 100, 10), 100);
        assert_eq!(l.spend(2, 10), 104, "exact after the shift");
        assert_eq!(l.spend(5, 10), 100);
        assert_eq!(l.first_entry_above(l.total_at(10) - 50), Some(6));
    }
}
