//! Status reads in groups: concurrent [`status`](crate::store::BudgetStore::status) calls share
//! one statement.
//!
//! A gateway with many active workspaces refreshes each cached decision once per TTL — with
//! 100,000 of them on a 30 s TTL, thousands of status reads a second, each alone a task, a pool
//! checkout, a round trip, the wake-ups on both sides and the database's executor start-up for
//! the statement's subplans. Reads are collected for at most [`WINDOW`] after the first of a
//! group arrives (or until [`MAX_GROUP`]) and read with one `STATUS_MANY` statement (the `STATUS`
//! statement `LATERAL` over the ids), so each answer is what it would have been alone. Measured
//! (BENCHMARKS.md, "1,000,000 registered workspaces"): at 100,000 active workspaces, Postgres CPU
//! per proxied request 42.8 → 24.1 µs and the gateway's 72.7 → 64.2 µs. The price is up to
//! [`WINDOW`] (plus the timer's tick) on a cache miss, well inside the check timeout.
//! Up to [`IN_FLIGHT`] groups are read at once, each bounded as a whole; a caller that stops
//! waiting (a timed-out check) is left out of its group; a group's reads with different clock
//! readings (an injected clock) go as one statement per reading, side by side. One reader serves
//! the process: it runs on the runtime that first read, so a miss on another serving thread
//! wakes that one (misses only; a hit never reaches it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::heartbeats::{GroupLost, QueueFull, SharedError, Waited, POOL_WAIT};
use super::{db, run_on, sql, status_of};
use crate::store::{BudgetStatus, StoreError};
use crate::WorkspaceId;

/// Most reads in one group.
const MAX_GROUP: usize = 128;
/// How long the first read of a group waits for others.
const WINDOW: Duration = Duration::from_millis(1);
/// Groups read at the same time.
const IN_FLIGHT: usize = 8;
/// Reads waiting; beyond it a read is refused at once.
const QUEUE: usize = 4_096;

struct Read {
    workspace: String,
    at: Option<DateTime<Utc>>,
    answer: oneshot::Sender<Result<Option<BudgetStatus>, StoreError>>,
}

pub(super) struct StatusReads {
    queue: Mutex<Option<mpsc::Sender<Read>>>,
    pool: Pool,
    query_timeout: Duration,
}

impl std::fmt::Debug for StatusReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusReads").finish_non_exhaustive()
    }
}

impl StatusReads {
    pub(super) fn new(pool: Pool, query_timeout: Duration) -> Self {
        StatusReads {
            queue: Mutex::new(None),
            pool,
            query_timeout,
        }
    }

    pub(super) async fn status(
        &self,
        workspace: &WorkspaceId,
        at: Option<DateTime<Utc>>,
    ) -> Result<BudgetStatus, StoreError> {
        let (answer, answered) = oneshot::channel();
        let mut read = Read {
            workspace: workspace.to_string(),
            at,
            answer,
        };
        for _ in 0..2 {
            let sender = self.sender();
            match sender.try_send(read) {
                Ok(()) => {
                    let limit = 2 * (self.query_timeout + POOL_WAIT) + WINDOW;
                    return match tokio::time::timeout(limit, answered).await {
                        Ok(Ok(status)) => status?.ok_or(StoreError::NotFound),
                        Ok(Err(_)) => Err(StoreError::unavailable(GroupLost)),
                        Err(_) => Err(StoreError::unavailable(Waited(limit))),
                    };
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(StoreError::unavailable(QueueFull))
                }
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    read = back;
                    let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                    if queue.as_ref().is_some_and(|s| s.same_channel(&sender)) {
                        *queue = None;
                    }
                }
            }
        }
        Err(StoreError::unavailable(GroupLost))
    }

    fn sender(&self) -> mpsc::Sender<Read> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue
            .get_or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(read_groups(rx, self.pool.clone(), self.query_timeout));
                tx
            })
            .clone()
    }
}

async fn read_groups(mut queue: mpsc::Receiver<Read>, pool: Pool, query_timeout: Duration) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    // The longest a group may take, pool wait included: its callers stop waiting by then.
    let limit = 2 * (query_timeout + POOL_WAIT);
    while let Some(first) = queue.recv().await {
        // The permit first: a group gathered before it could go stale while it waits.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let deadline = tokio::time::Instant::now() + WINDOW;
        let mut group = Vec::with_capacity(MAX_GROUP);
        group.push(first);
        while group.len() < MAX_GROUP {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(read)) => group.push(read),
                _ => break,
            }
        }
        group.retain(|r| !r.answer.is_closed());
        if group.is_empty() {
            continue;
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            // Overrun (a pool without timeouts): the answers are dropped, callers get GroupLost.
            let _ = tokio::time::timeout(limit, read(group, pool, query_timeout)).await;
            drop(permit);
        });
    }
}

/// One statement per clock reading in `group` (one for all with the database's clock), run
/// side by side; every read gets its own answer (or its statement's error).
async fn read(group: Vec<Read>, pool: Pool, query_timeout: Duration) {
    let mut by_clock: Vec<Vec<Read>> = Vec::new();
    for read in group {
        match by_clock.iter_mut().find(|g| g[0].at == read.at) {
            Some(same) => same.push(read),
            None => by_clock.push(vec![read]),
        }
    }
    futures_util::future::join_all(
        by_clock
            .into_iter()
            .map(|reads| read_at(reads, pool.clone(), query_timeout)),
    )
    .await;
}

async fn read_at(now: Vec<Read>, pool: Pool, query_timeout: Duration) {
    let at = now[0].at;
    let ids: Vec<String> = now.iter().map(|r| r.workspace.clone()).collect();
    let rows = run_on(pool, query_timeout, move |client| {
        Box::pin(async move {
            let stmt = client.prepare_cached(&sql::STATUS_MANY).await.map_err(db)?;
            client.query(&stmt, &[&ids, &at]).await.map_err(db)
        })
    })
    .await;
    match rows {
        Ok(rows) => {
            let mut found: Vec<Option<BudgetStatus>> = vec![None; now.len()];
            for row in &rows {
                let n: i64 = row.get("batch_n");
                if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| found.get_mut(i)) {
                    *slot = Some(status_of(row));
                }
            }
            for (read, status) in now.into_iter().zip(found) {
                let _ = read.answer.send(Ok(status));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for read in now {
                let _ = read
                    .answer
                    .send(Err(StoreError::unavailable(SharedError(e.clone()))));
            }
        }
    }
}
