//! The store contract as tests. Every `BudgetStore` runs all of them through
//! [`conformance_tests!`](crate::conformance_tests), each on a fresh store with a manual clock.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tower_budget::clock::ManualClock;
use tower_budget::period::{Limits, LimitsPatch, Period};
use tower_budget::store::{
    BudgetStore, Heartbeat, HeartbeatOutcome, Registration, Store, StoreError, TokenHash,
    MAX_REPORTED_CENTS,
};
use tower_budget::WorkspaceId;

/// Expands to one `#[tokio::test]` per contract item, each calling `$make().await` for a fresh
/// `(store, clock)`.
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!(@each $make;
            unknown_workspace_is_not_found,
            register_remove_and_return,
            limits_merge_patch,
            concurrent_patches_of_different_periods_both_survive,
            heartbeat_delta_reset_clamp_and_zero,
            heartbeat_seq,
            windows_are_trailing_and_half_open,
            retry_after_is_when_enough_spend_ages_out,
            prune_drops_only_what_no_window_needs,
            list_pages_in_id_order,
            registration_and_token_rotation,
            exact_against_brute_force_on_random_ledgers,
            concurrent_seq_heartbeats_count_exactly,
            concurrent_identical_reports_count_once,
        );
    };
    (@each $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, clock) = $make().await;
                $crate::common::conformance::$name(store, clock).await;
            }
        )*
    };
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

pub fn ws(id: &str) -> WorkspaceId {
    WorkspaceId::new(id).unwrap()
}

/// Sets (or with `None` clears) limits of workspace `w` in one patch.
pub async fn set_limits<S: BudgetStore + ?Sized>(
    store: &S,
    w: &str,
    pairs: &[(Period, Option<i64>)],
) {
    let patch = pairs
        .iter()
        .try_fold(LimitsPatch::new(), |p, &(period, c)| p.with(period, c))
        .unwrap();
    store.patch_limits(&ws(w), &patch).await.unwrap();
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

async fn report<S: BudgetStore>(
    store: &S,
    w: &WorkspaceId,
    cents: i64,
    seq: Option<u64>,
) -> HeartbeatOutcome {
    store
        .record_heartbeat(&Heartbeat::new(w.clone(), Some(cents), seq))
        .await
        .unwrap()
}

fn recorded(delta: i64) -> HeartbeatOutcome {
    HeartbeatOutcome {
        recorded_delta_cents: delta,
        stale: false,
    }
}

const STALE: HeartbeatOutcome = HeartbeatOutcome {
    recorded_delta_cents: 0,
    stale: true,
};

fn limits(pairs: &[(Period, i64)]) -> LimitsPatch {
    pairs
        .iter()
        .try_fold(LimitsPatch::new(), |p, &(period, c)| {
            p.with(period, Some(c))
        })
        .unwrap()
}

pub async fn unknown_workspace_is_not_found<S: BudgetStore>(store: S, _clock: ManualClock) {
    let w = ws("nobody");
    assert!(matches!(store.status(&w).await, Err(StoreError::NotFound)));
    assert!(matches!(store.limits(&w).await, Err(StoreError::NotFound)));
    assert!(matches!(
        store.patch_limits(&w, &LimitsPatch::new()).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .record_heartbeat(&Heartbeat::new(w.clone(), Some(5), None))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(store.remove(&w).await, Err(StoreError::NotFound)));
    assert!(matches!(
        store.retry_after(&w, &Limits::none()).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.list_workspaces(None, 10).await.unwrap().is_empty());
}

pub async fn register_remove_and_return<S: BudgetStore>(store: S, clock: ManualClock) {
    clock.set(t0());
    let w = ws("ws-1");
    store.register(&w).await.unwrap();
    store.register(&w).await.unwrap(); // idempotent
    let fresh = store.status(&w).await.unwrap();
    assert!(fresh.limits.is_empty());
    assert!(fresh
        .periods()
        .all(|p| p.spend == 0 && p.remaining.is_none()));

    store
        .patch_limits(&w, &limits(&[(Period::HOURLY, 100)]))
        .await
        .unwrap();
    assert_eq!(report(&store, &w, 40, Some(3)).await, recorded(40));

    store.remove(&w).await.unwrap();
    assert!(matches!(store.status(&w).await, Err(StoreError::NotFound)));
    assert!(matches!(store.limits(&w).await, Err(StoreError::NotFound)));
    assert!(matches!(
        store
            .record_heartbeat(&Heartbeat::new(w.clone(), Some(50), Some(4)))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(
        matches!(store.remove(&w).await, Err(StoreError::NotFound)),
        "second remove"
    );
    assert!(store.list_workspaces(None, 10).await.unwrap().is_empty());

    // Registering again brings everything back: limits, ledger, previous report and seq.
    store.register(&w).await.unwrap();
    let back = store.status(&w).await.unwrap();
    assert_eq!(back.limits.get(Period::HOURLY), Some(100));
    assert_eq!(back.spend[Period::HOURLY], 40);
    assert_eq!(report(&store, &w, 50, Some(3)).await, STALE, "seq kept");
    assert_eq!(
        report(&store, &w, 50, Some(4)).await,
        recorded(10),
        "previous kept"
    );
    assert_eq!(store.list_workspaces(None, 10).await.unwrap(), [w]);
}

pub async fn limits_merge_patch<S: BudgetStore>(store: S, _clock: ManualClock) {
    let w = ws("ws-1");
    store.register(&w).await.unwrap();
    let after = store
        .patch_limits(
            &w,
            &limits(&[
                (Period::HOURLY, 100),
                (Period::DAILY, 500),
                (Period::MONTHLY, 0),
            ]),
        )
        .await
        .unwrap()
        .limits;
    assert_eq!(
        after.to_json(),
        serde_json::json!({"hourly": 100, "daily": 500, "monthly": 0})
    );

    let patch = LimitsPatch::new()
        .with(Period::DAILY, None)
        .unwrap()
        .with(Period::WEEKLY, Some(7_000))
        .unwrap();
    let after = store.patch_limits(&w, &patch).await.unwrap().limits;
    assert_eq!(
        after.to_json(),
        serde_json::json!({"hourly": 100, "weekly": 7000, "monthly": 0})
    );
    assert_eq!(store.limits(&w).await.unwrap(), after);

    let after = store
        .patch_limits(&w, &LimitsPatch::legacy_monthly(Some(2_000)).unwrap())
        .await
        .unwrap()
        .limits;
    assert_eq!(after.get(Period::MONTHLY), Some(2_000));
    assert_eq!(
        after.get(Period::HOURLY),
        Some(100),
        "legacy patch touches monthly only"
    );
    let after = store
        .patch_limits(&w, &LimitsPatch::legacy_monthly(None).unwrap())
        .await
        .unwrap()
        .limits;
    assert_eq!(after.get(Period::MONTHLY), None);
    assert_eq!(store.status(&w).await.unwrap().limits, after);

    // Another workspace is untouched.
    let other = ws("ws-2");
    store.register(&other).await.unwrap();
    assert!(store.limits(&other).await.unwrap().is_empty());
}

pub async fn concurrent_patches_of_different_periods_both_survive<S: BudgetStore>(
    store: S,
    _clock: ManualClock,
) {
    let store = Arc::new(store);
    let w = ws("ws-1");
    store.register(&w).await.unwrap();
    for round in 1..=25 {
        let tasks: Vec<_> = Period::all()
            .zip(0..)
            .map(|(p, i)| {
                let (store, w) = (store.clone(), w.clone());
                tokio::spawn(async move {
                    store
                        .patch_limits(&w, &limits(&[(p, round * 10 + i)]))
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let now = store.limits(&w).await.unwrap();
        for (p, i) in Period::all().zip(0..) {
            assert_eq!(now.get(p), Some(round * 10 + i), "round {round}, {p}");
        }
    }
}

pub async fn heartbeat_delta_reset_clamp_and_zero<S: BudgetStore>(store: S, clock: ManualClock) {
    clock.set(t0());
    let w = ws("ws-1");
    store.register(&w).await.unwrap();
    let steps: &[(i64, i64)] = &[
        (100, 100),                          // first report: all of it is new
        (150, 50),                           // cumulative grows
        (150, 0),                            // same report again
        (0, 0),                              // 0 = nothing to report...
        (160, 10),                           // ...and did not clear previous
        (40, 40),                            // lower: the agent's counter was reset
        (-7, 0),                             // negative clamps to 0
        (45, 5),                             // previous is still 40
        (i64::MAX, MAX_REPORTED_CENTS - 45), // clamped to the $10 B cap
        (MAX_REPORTED_CENTS, 0),
    ];
    let mut total = 0;
    for &(reported, want) in steps {
        clock.advance(secs(1));
        assert_eq!(
            report(&store, &w, reported, None).await,
            recorded(want),
            "report {reported}"
        );
        total += want;
    }
    let status = store.status(&w).await.unwrap();
    assert!(Period::all().all(|p| status.spend[p] == total));
    // `None` is "nothing to report" too.
    let none = store
        .record_heartbeat(&Heartbeat::new(w.clone(), None, None))
        .await
        .unwrap();
    assert_eq!(none, recorded(0));
}

pub async fn heartbeat_seq<S: BudgetStore>(store: S, clock: ManualClock) {
    clock.set(t0());
    let w = ws("ws-1");
    store.register(&w).await.unwrap();
    assert_eq!(report(&store, &w, 100, Some(5)).await, recorded(100));
    assert_eq!(report(&store, &w, 200, Some(5)).await, STALE, "replay");
    assert_eq!(report(&store, &w, 300, Some(3)).await, STALE, "older");
    // A stale report changed nothing: the next delta is still against 100.
    assert_eq!(report(&store, &w, 120, Some(6)).await, recorded(20));
    assert_eq!(
        report(&store, &w, 50, Some(7)).await,
        recorded(50),
        "lower value, new seq: reset"
    );
    assert_eq!(
        report(&store, &w, 0, Some(8)).await,
        recorded(0),
        "0 records nothing"
    );
    assert_eq!(
        report(&store, &w, 60, Some(8)).await,
        STALE,
        "...but seq 8 was accepted"
    );
    assert_eq!(
        report(&store, &w, 60, None).await,
        recorded(10),
        "no seq: rules alone"
    );
    assert_eq!(
        report(&store, &w, 61, Some(9)).await,
        recorded(1),
        "seq still counts after"
    );
    assert_eq!(
        report(&store, &w, 70, Some(u64::MAX)).await,
        recorded(9),
        "full u64 range"
    );
    assert_eq!(report(&store, &w, 80, Some(u64::MAX)).await, STALE);
    assert_eq!(report(&store, &w, 80, Some(u64::MAX - 1)).await, STALE);
    let status = store.status(&w).await.unwrap();
    assert_eq!(status.spend[Period::HOURLY], 100 + 20 + 50 + 10 + 1 + 9);
}

pub async fn windows_are_trailing_and_half_open<S: BudgetStore>(store: S, clock: ManualClock) {
    let w = ws("ws-1");
    store.register(&w).await.unwrap();
    // 10 cents 40 days ago, 20 cents 10 days ago, 30 cents 2 days ago, 40 cents 2 hours ago,
    // 50 cents 10 minutes ago: cumulative reports.
    let now = t0();
    let ago = |s: u64| now - chrono::Duration::seconds(s as i64);
    let mut cumulative = 0;
    for (at, delta) in [
        (ago(40 * 86_400), 10),
        (ago(10 * 86_400), 20),
        (ago(2 * 86_400), 30),
        (ago(7_200), 40),
        (ago(600), 50),
    ] {
        clock.set(at);
        cumulative += delta;
        assert_eq!(report(&store, &w, cumulative, None).await, recorded(delta));
    }
    clock.set(now);
    let s = store.status(&w).await.unwrap();
    assert_eq!(
        Period::all().map(|p| s.spend[p]).collect::<Vec<_>>(),
        [50, 90, 120, 140]
    );
    // Exactly one window later the event at the left edge no longer counts: (now − w, now].
    clock.set(ago(600) + chrono::Duration::hours(1));
    assert_eq!(store.status(&w).await.unwrap().spend[Period::HOURLY], 0);
    clock.set(ago(600) + chrono::Duration::hours(1) - chrono::Duration::microseconds(1));
    assert_eq!(store.status(&w).await.unwrap().spend[Period::HOURLY], 50);
    // An event at exactly `now` counts.
    clock.set(ago(600));
    assert_eq!(store.status(&w).await.unwrap().spend[Period::HOURLY], 50);
    clock.set(ago(600) - chrono::Duration::microseconds(1));
    assert_eq!(store.status(&w).await.unwrap().spend[Period::HOURLY], 0);
}

pub async fn retry_after_is_when_enough_spend_ages_out<S: BudgetStore>(
    store: S,
    clock: ManualClock,
) {
    let w = ws("ws-1");
    store.register(&w).await.unwrap();
    let now = t0();
    let ago = |s: i64| now - chrono::Duration::seconds(s);
    // Hourly: 400 at −50 min, 300 at −30 min, 500 at −10 min → 1200 in the hour.
    let mut cumulative = 0;
    for (at, delta) in [(ago(3_000), 400), (ago(1_800), 300), (ago(600), 500)] {
        clock.set(at);
        cumulative += delta;
        report(&store, &w, cumulative, None).await;
    }
    clock.set(now);
    let over = Limits::none()
        .with(Period::HOURLY, Some(1_000)) // 1200 ≥ 1000: the 400 leaving (in 10 min) is enough
        .with(Period::DAILY, Some(600)) // needs 400 and 300 gone: in 30 min
        .with(Period::WEEKLY, Some(0)) // no wait helps
        .with(Period::MONTHLY, Some(1_200)); // 1200 ≥ 1200: 400 leaving suffices, in 29 d 23 h 10 min
    let wait = store.retry_after(&w, &over).await.unwrap();
    assert_eq!(wait[Period::HOURLY], Some(secs(600)));
    assert_eq!(wait[Period::DAILY], Some(secs(86_400 - 1_800)));
    assert_eq!(wait[Period::WEEKLY], None);
    assert_eq!(wait[Period::MONTHLY], Some(secs(30 * 86_400 - 3_000)));
    // Sub-second precision is kept: the store does not round.
    clock.set(now + chrono::Duration::milliseconds(250));
    let wait = store.retry_after(&w, &over).await.unwrap();
    assert_eq!(wait[Period::HOURLY], Some(Duration::from_millis(599_750)));
    // No limit given → no answer.
    assert_eq!(
        store.retry_after(&w, &Limits::none()).await.unwrap()[Period::HOURLY],
        None
    );
}

pub async fn prune_drops_only_what_no_window_needs<S: BudgetStore>(store: S, clock: ManualClock) {
    let w = ws("ws-1");
    store.register(&w).await.unwrap();
    let now = t0();
    let mut cumulative = 0;
    let days = [60_i64, 50, 36, 34, 29, 1];
    for d in days {
        clock.set(now - chrono::Duration::days(d));
        cumulative += 10;
        report(&store, &w, cumulative, None).await;
    }
    clock.set(now);
    let before = store.status(&w).await.unwrap();
    assert_eq!(before.spend[Period::MONTHLY], 20);
    // Postgres prunes the three entries older than 35 days here; the memory store already
    // dropped the two oldest when later reports arrived, and prunes the one at exactly −36 d.
    let pruned = store.prune().await.unwrap();
    assert!((1..=3).contains(&pruned), "pruned {pruned}");
    assert_eq!(store.prune().await.unwrap(), 0, "nothing left to prune");
    assert_eq!(
        store.status(&w).await.unwrap(),
        before,
        "windows unchanged by pruning"
    );
    // The entry at −34 days is within retention and still there: five days earlier the
    // monthly window (−35 d, −5 d] holds it and the one at −29 days.
    clock.set(now - chrono::Duration::days(5));
    assert_eq!(store.status(&w).await.unwrap().spend[Period::MONTHLY], 20);
}

pub async fn list_pages_in_id_order<S: BudgetStore>(store: S, _clock: ManualClock) {
    for id in ["c", "a", "e", "b", "d"] {
        store.register(&ws(id)).await.unwrap();
    }
    store.remove(&ws("c")).await.unwrap();
    let ids = |v: Vec<WorkspaceId>| v.iter().map(|w| w.as_str().to_owned()).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_workspaces(None, 100).await.unwrap()),
        ["a", "b", "d", "e"]
    );
    assert_eq!(
        ids(store.list_workspaces(None, 2).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(
        ids(store.list_workspaces(Some(&ws("b")), 2).await.unwrap()),
        ["d", "e"]
    );
    assert_eq!(
        ids(store.list_workspaces(Some(&ws("bb")), 1).await.unwrap()),
        ["d"]
    );
    assert!(store
        .list_workspaces(Some(&ws("e")), 2)
        .await
        .unwrap()
        .is_empty());
}

pub async fn registration_and_token_rotation<S: Store>(store: S, _clock: ManualClock) {
    let w = ws("ws-1");
    let first = Registration {
        agent_url: Some("http://127.0.0.1:9901".into()),
        token_hash: Some(TokenHash::from_bytes([1; 32])),
    };
    store.register_agent(&w, &first).await.unwrap();
    assert_eq!(store.registration(&w).await.unwrap(), first);
    assert_eq!(
        store
            .workspace_for_token(&TokenHash::from_bytes([1; 32]))
            .await
            .unwrap(),
        Some(w.clone())
    );
    store
        .patch_limits(&w, &limits(&[(Period::DAILY, 10)]))
        .await
        .unwrap();

    // Registering again moves the URL and rotates the token; limits stay.
    let second = Registration {
        agent_url: Some("http://127.0.0.1:9902/agent".into()),
        token_hash: Some(TokenHash::from_bytes([2; 32])),
    };
    store.register_agent(&w, &second).await.unwrap();
    assert_eq!(store.registration(&w).await.unwrap(), second);
    assert_eq!(
        store
            .workspace_for_token(&TokenHash::from_bytes([1; 32]))
            .await
            .unwrap(),
        None,
        "old token gone at once"
    );
    assert_eq!(
        store
            .workspace_for_token(&TokenHash::from_bytes([2; 32]))
            .await
            .unwrap(),
        Some(w.clone())
    );
    assert_eq!(store.limits(&w).await.unwrap().get(Period::DAILY), Some(10));

    // Removed: no registration, but the token still names the workspace (its caller gets 404).
    store.remove(&w).await.unwrap();
    assert!(matches!(
        store.registration(&w).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store
            .workspace_for_token(&TokenHash::from_bytes([2; 32]))
            .await
            .unwrap(),
        Some(w.clone())
    );
    // A plain register brings it back with its registration; register_agent would replace it.
    store.register(&w).await.unwrap();
    assert_eq!(store.registration(&w).await.unwrap(), second);
    let other = ws("ws-2");
    store.register(&other).await.unwrap();
    assert_eq!(
        store.registration(&other).await.unwrap(),
        Registration::default()
    );
    assert_eq!(
        store
            .workspace_for_token(&TokenHash::from_bytes([9; 32]))
            .await
            .unwrap(),
        None
    );
}

/// Random ledgers with events right at window edges, at hour boundaries and in the future of
/// the check, and a random `now`: spend per window and retry-after equal brute force.
pub async fn exact_against_brute_force_on_random_ledgers<S: BudgetStore>(
    store: S,
    clock: ManualClock,
) {
    let seed = crate::common::seed("exact_against_brute_force_on_random_ledgers");
    let mut rng = fastrand::Rng::with_seed(seed);
    let us = chrono::Duration::microseconds;
    for case in 0..40 {
        let w = ws(&format!("ws-{case}"));
        store.register(&w).await.unwrap();
        let now = t0() + us(rng.i64(0..86_400_000_000));
        let mut times = vec![now, now + us(1), now - us(1)];
        for p in Period::all() {
            let edge = now - chrono::Duration::from_std(p.window()).unwrap();
            times.extend([edge - us(1), edge, edge + us(1)]);
        }
        let hour = now - us(now.timestamp_micros() % 3_600_000_000);
        times.extend(
            (0..5).map(|h| {
                hour - chrono::Duration::hours(rng.i64(0..800)) + chrono::Duration::hours(h)
            }),
        );
        times.extend(
            (0..rng.usize(0..30)).map(|_| now - us(rng.i64(-3_600_000_000..33 * 86_400_000_000))),
        );
        // Not every candidate happens; some happen twice at the same instant.
        times.retain(|_| rng.u8(0..4) != 0);
        let dup: Vec<_> = times
            .iter()
            .filter(|_| rng.u8(0..8) == 0)
            .copied()
            .collect();
        times.extend(dup);
        times.sort();

        let mut ledger = Vec::new();
        let mut cumulative = 0;
        for at in times {
            let delta = rng.i64(1..1_000);
            cumulative += delta;
            clock.set(at);
            assert_eq!(report(&store, &w, cumulative, None).await, recorded(delta));
            ledger.push((at, delta));
        }
        clock.set(now);
        let status = store.status(&w).await.unwrap();
        let mut over = Limits::none();
        for p in Period::all() {
            let lo = now - chrono::Duration::from_std(p.window()).unwrap();
            let spend: i64 = ledger
                .iter()
                .filter(|(at, _)| *at > lo && *at <= now)
                .map(|(_, d)| d)
                .sum();
            assert_eq!(status.spend[p], spend, "seed {seed}, case {case}, {p}");
            if spend > 0 {
                over = over.with(p, Some(rng.i64(1..=spend)));
            }
        }
        let wait = store.retry_after(&w, &over).await.unwrap();
        for p in Period::all() {
            let want = over
                .get(p)
                .map(|limit| brute_force_wait(&ledger, now, p, limit));
            assert_eq!(wait[p], want, "seed {seed}, case {case}, {p} retry-after");
        }
    }
}

/// The earliest future instant, among "an entry leaves the window", at which the window's spend
/// (entries up to `now` only: no new spend) is below `limit`.
fn brute_force_wait(
    ledger: &[(DateTime<Utc>, i64)],
    now: DateTime<Utc>,
    p: Period,
    limit: i64,
) -> Duration {
    let window = chrono::Duration::from_std(p.window()).unwrap();
    let spend_at = |t: DateTime<Utc>| -> i64 {
        ledger
            .iter()
            .filter(|(at, _)| *at > t - window && *at <= now)
            .map(|(_, d)| d)
            .sum()
    };
    ledger
        .iter()
        .map(|(at, _)| *at + window)
        .filter(|t| *t > now && spend_at(*t) < limit)
        .min()
        .map(|t| (t - now).to_std().unwrap())
        .expect("spend >= limit > 0 always ends")
}

/// 32 tasks send cumulative = 10·seq for seq 1..=N in random order: exactly 10·N is recorded.
pub async fn concurrent_seq_heartbeats_count_exactly<S: BudgetStore>(store: S, clock: ManualClock) {
    const N: u64 = 320;
    clock.set(t0());
    let store = Arc::new(store);
    let w = ws("ws-1");
    store.register(&w).await.unwrap();
    let mut seqs: Vec<u64> = (1..=N).collect();
    fastrand::Rng::with_seed(crate::common::seed(
        "concurrent_seq_heartbeats_count_exactly",
    ))
    .shuffle(&mut seqs);
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let mine: Vec<u64> = seqs.iter().copied().skip(t).step_by(32).collect();
            let (store, w) = (store.clone(), w.clone());
            tokio::spawn(async move {
                let mut recorded = 0;
                for seq in mine {
                    let hb = Heartbeat::new(w.clone(), Some(10 * seq as i64), Some(seq));
                    recorded += store
                        .record_heartbeat(&hb)
                        .await
                        .unwrap()
                        .recorded_delta_cents;
                }
                recorded
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 10 * N as i64, "sum of recorded deltas");
    assert_eq!(
        store.status(&w).await.unwrap().spend[Period::HOURLY],
        10 * N as i64,
        "ledger"
    );
}

/// 30 identical reports without seq at the same moment count once.
pub async fn concurrent_identical_reports_count_once<S: BudgetStore>(store: S, clock: ManualClock) {
    clock.set(t0());
    let store = Arc::new(store);
    let w = ws("ws-1");
    store.register(&w).await.unwrap();
    report(&*store, &w, 1_000, None).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(30));
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let (store, w, barrier) = (store.clone(), w.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                report(&*store, &w, 1_750, None).await.recorded_delta_cents
            })
        })
        .collect();
    let mut deltas = Vec::new();
    for t in tasks {
        deltas.push(t.await.unwrap());
    }
    deltas.sort();
    assert_eq!(deltas.iter().sum::<i64>(), 750);
    assert_eq!(deltas.iter().filter(|d| **d > 0).count(), 1);
    assert_eq!(store.status(&w).await.unwrap().spend[Period::DAILY], 1_750);
}
