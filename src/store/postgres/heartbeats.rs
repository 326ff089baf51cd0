//! Heartbeats written in groups: concurrent reports share one transaction.
//!
//! Every transaction that records spend also notifies the other replicas (the V4 trigger), and
//! PostgreSQL serialises the commits of notifying transactions: it holds a lock from the
//! notification until the commit record is on disk. One heartbeat per transaction then costs one
//! disk flush each, in turn — about a third of the throughput without notifications
//! (BENCHMARKS.md). So reports that arrive while a group is being written wait in a queue and go
//! together in the next one: one transaction, one statement per report (each names its one
//! workspace; they are pipelined, so the group costs one round trip), one flush and one
//! notification lock. When the store is idle a report goes alone, at once.
//!
//! Two lanes, each writing one group at a time: a workspace always goes to the same lane (by a
//! hash of its id), so its reports are applied in the order they were queued, and the lanes
//! never touch the same rows (one lane's group can run while the other's commits). Within a
//! group, reports are applied in workspace-id order (a stable sort: each workspace's reports keep
//! their order), so groups of different processes lock rows in the same order and cannot
//! deadlock. A row held by another transaction fails the group after the lock
//! timeout (2 s), not the statement timeout. A report whose caller stopped waiting (it was
//! answered with an error) is left out of its group: checked when the group is formed, once it
//! has its connection, and just before its commit (a group whose caller left while its
//! statements ran — waiting for a row lock, say — is rolled back and written again without it). An error answer means "not
//! written", short of an ambiguous commit.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::IsolationLevel;

use super::{db, run_on, sql};
use crate::store::{Heartbeat, HeartbeatOutcome, StoreError};

/// Most reports in one group.
const MAX_GROUP: usize = 256;
/// Reports waiting for a group; beyond it a report is refused at once (503 at the API).
const QUEUE: usize = 4_096;
/// How long a group waits for a row lock before it gives up.
const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '2s'";

struct Report {
    heartbeat: Heartbeat,
    /// The injected clock's time, or `None` for the database's.
    at: Option<DateTime<Utc>>,
    answer: oneshot::Sender<Result<HeartbeatOutcome, StoreError>>,
    /// Alive while the caller waits: gone once it stopped waiting (its future dropped, or its
    /// wait over), and then the report is not to be written.
    caller: Weak<()>,
}

/// Lanes of groups written at the same time. Measured with the ingest bench (BENCHMARKS.md):
/// one lane leaves the database idle while a group commits.
const LANES: usize = 2;

type Lane = Mutex<Option<mpsc::Sender<Report>>>;

/// The queues in front of the group writers, each started on first use (a store is made outside
/// any runtime) and again if the runtime it ran on has gone.
pub(super) struct Heartbeats {
    lanes: [Lane; LANES],
    pool: Pool,
    query_timeout: Duration,
}

impl std::fmt::Debug for Heartbeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeats").finish_non_exhaustive()
    }
}

impl Heartbeats {
    pub(super) fn new(pool: Pool, query_timeout: Duration) -> Self {
        Heartbeats {
            lanes: Default::default(),
            pool,
            query_timeout,
        }
    }

    /// Records `heartbeat` with its group. Bounded: a full queue refuses at once, and the
    /// answer comes within the time of the group ahead and its own (each bounded by the pool's
    /// wait and the query timeout).
    pub(super) async fn record(
        &self,
        heartbeat: &Heartbeat,
        at: Option<DateTime<Utc>>,
    ) -> Result<HeartbeatOutcome, StoreError> {
        let (answer, answered) = oneshot::channel();
        // Held until this call returns or is dropped; the group checks it before writing.
        let waiting = Arc::new(());
        let mut report = Report {
            heartbeat: heartbeat.clone(),
            at,
            answer,
            caller: Arc::downgrade(&waiting),
        };
        let lane = {
            use std::hash::BuildHasher;
            let seed = foldhash::fast::FixedState::with_seed(0x6c61_6e65);
            &self.lanes[(seed.hash_one(&heartbeat.workspace) as usize) % LANES]
        };
        // At most twice: the second time with a writer started afresh.
        for _ in 0..2 {
            let sender = self.sender(lane);
            match sender.try_send(report) {
                Ok(()) => {
                    let limit = 2 * (self.query_timeout + POOL_WAIT);
                    let answer = match tokio::time::timeout(limit, answered).await {
                        Ok(Ok(outcome)) => outcome,
                        Ok(Err(_)) => Err(StoreError::unavailable(GroupLost)),
                        Err(_) => Err(StoreError::unavailable(Waited(limit))),
                    };
                    drop(waiting);
                    return answer;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(StoreError::unavailable(QueueFull))
                }
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    report = back;
                    Self::forget(lane, &sender);
                }
            }
        }
        Err(StoreError::unavailable(GroupLost))
    }

    fn sender(&self, lane: &Lane) -> mpsc::Sender<Report> {
        let mut sender = lane.lock().unwrap_or_else(|e| e.into_inner());
        sender
            .get_or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(write_groups(rx, self.pool.clone(), self.query_timeout));
                tx
            })
            .clone()
    }

    /// Drops a sender whose writer is gone (its runtime shut down), unless already replaced.
    fn forget(lane: &Lane, dead: &mpsc::Sender<Report>) {
        let mut sender = lane.lock().unwrap_or_else(|e| e.into_inner());
        if sender.as_ref().is_some_and(|s| s.same_channel(dead)) {
            *sender = None;
        }
    }
}

/// The longest a group waits for a pooled connection (the pool's default wait timeout).
pub(super) const POOL_WAIT: Duration = Duration::from_secs(2);

/// The report's group was not written and no answer came back (the runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the call's group did not run (the runtime is shutting down, or it overran)")]
pub(super) struct GroupLost;

/// The report was not answered in time (queued behind slow groups, or its group still running).
#[derive(Debug, thiserror::Error)]
#[error("the call was not answered within {0:?}")]
pub(super) struct Waited(pub(super) Duration);

/// More reports are waiting than the queue holds.
#[derive(Debug, thiserror::Error)]
#[error("too many calls waiting for the database")]
pub(super) struct QueueFull;

/// Takes what is queued, up to a group, whenever the previous group is written; ends with the
/// queue.
async fn write_groups(mut queue: mpsc::Receiver<Report>, pool: Pool, query_timeout: Duration) {
    while let Some(first) = queue.recv().await {
        // Whatever arrived while the previous group was being written goes now — except the
        // reports whose caller stopped waiting (it was answered 503, so "not written" must
        // hold; the agent's next cumulative report carries the spend anyway).
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut next = Some(first);
        while let Some(report) = next.take() {
            if !report.answer.is_closed() && report.caller.strong_count() > 0 {
                group.push(report);
            }
            if group.len() < MAX_GROUP {
                next = queue.try_recv().ok();
            }
        }
        if !group.is_empty() {
            write(group, pool.clone(), query_timeout).await;
        }
    }
}

/// One group in one transaction; every report gets its own answer (or the group's error).
async fn write(mut group: Vec<Report>, pool: Pool, query_timeout: Duration) {
    // Lock order: by workspace; a stable sort keeps each workspace's reports in arrival order.
    group.sort_by(|a, b| a.heartbeat.workspace.cmp(&b.heartbeat.workspace));
    let params: Vec<_> = group
        .iter()
        .map(|r| {
            (
                r.heartbeat.workspace.to_string(),
                r.heartbeat.reported_cents(),
                r.heartbeat.seq.map(|s| s.to_string()),
                r.at,
            )
        })
        .collect();
    let callers: Vec<Weak<()>> = group.iter().map(|r| r.caller.clone()).collect();
    let rows = run_on(pool, query_timeout, move |client| {
        Box::pin(async move {
            let stmt = client
                .prepare_cached(sql::RECORD_HEARTBEAT)
                .await
                .map_err(db)?;
            let (names, windows) = (&*sql::PERIOD_NAMES, &*sql::PERIOD_WINDOWS);
            // A caller may stop waiting (and be answered with an error) while the group waits
            // for this connection or for a row lock: its report must then not be written. So
            // the callers are checked before the statements and again just before the commit;
            // if one left meanwhile, the transaction is rolled back and run again without it.
            // Each rerun has fewer reports (a caller gone stays gone), so there are at most as
            // many as the group has reports, all within the query timeout. What remains is the
            // commit's own round trip, as ambiguous as a single report's.
            loop {
                let wanted: Vec<bool> = callers.iter().map(|c| c.strong_count() > 0).collect();
                if !wanted.contains(&true) {
                    return Ok(wanted.iter().map(|_| None).collect::<Vec<_>>());
                }
                // Read committed whatever the database's default: each report locks its row
                // and reads it fresh, as when it ran alone.
                let tx = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::ReadCommitted)
                    .start()
                    .await
                    .map_err(db)?;
                let args: Vec<[&(dyn ToSql + Sync); 6]> = params
                    .iter()
                    .zip(&wanted)
                    .filter(|(_, &w)| w)
                    .map(|((id, reported, seq, at), _)| {
                        [id as &(dyn ToSql + Sync), reported, seq, at, names, windows]
                    })
                    .collect();
                // Sent without waiting for each answer, in this order (each request goes out
                // when its future is first polled, and `join_all` polls in order): the lock
                // timeout, the reports, then the default again — so that the commit, which
                // waits for the notification lock, is bounded by the statement timeout and
                // not by 2 s.
                let (set, rows, reset) = futures_util::future::join3(
                    tx.batch_execute(LOCK_TIMEOUT),
                    join_all(args.iter().map(|a| tx.query_one(&stmt, a))),
                    tx.batch_execute("SET LOCAL lock_timeout = DEFAULT"),
                )
                .await;
                set.map_err(db)?;
                let rows = rows
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db)?;
                reset.map_err(db)?;
                let left = callers
                    .iter()
                    .zip(&wanted)
                    .any(|(c, &w)| w && c.strong_count() == 0);
                if left {
                    tx.rollback().await.map_err(db)?;
                    continue;
                }
                tx.commit().await.map_err(db)?;
                // One entry per report of the group, `None` for those left out.
                let mut rows = rows.into_iter();
                return Ok(wanted
                    .iter()
                    .map(|&w| if w { rows.next() } else { None })
                    .collect());
            }
        })
    })
    .await;
    match rows {
        Ok(rows) => {
            for (report, row) in group.into_iter().zip(rows) {
                // Left out: its caller is gone, there is no one to answer.
                let Some(row) = row else { continue };
                let outcome = if row.get::<_, bool>(0) {
                    Ok(HeartbeatOutcome {
                        recorded_delta_cents: row.get(1),
                        stale: row.get(2),
                    })
                } else {
                    Err(StoreError::NotFound)
                };
                let _ = report.answer.send(outcome);
            }
        }
        Err(e) => {
            // One error for the whole group: nothing of it was written (short of an
            // ambiguous commit, as for a single report).
            let e = std::sync::Arc::new(e);
            for report in group {
                let _ = report
                    .answer
                    .send(Err(StoreError::unavailable(SharedError(e.clone()))));
            }
        }
    }
}

/// A group's error, handed to each of its reports.
#[derive(Debug)]
pub(super) struct SharedError(pub(super) std::sync::Arc<StoreError>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}
