//! The store contract as tests. Every `BudgetStore` runs all of them through
//! [`conformance_tests!`](crate::conformance_tests), each on a fresh store with a manual clock.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tower_budget::alerts::{AlertEvent, AlertKind, AlertThresholds};
use tower_budget::clock::ManualClock;
use tower_budget::period::{Limits, LimitsPatch, PerPeriod, Period};
use tower_budget::store::{
    AlertOutbox, BudgetPatch, BudgetStore, Heartbeat, HeartbeatOutcome, Registration, Store,
    StoreError, TokenHash, MAX_REPORTED_CENTS,
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
            alert_thresholds_are_stored_and_reported,
            forecast_against_brute_force_on_random_ledgers,
            crossings_once_each_and_two_in_one_heartbeat,
            concurrent_heartbeats_cross_each_threshold_once,
            limit_changes_cross_and_recover,
            aged_out_spend_recovers_in_the_sweep,
            outbox_order_lease_retry_and_expiry,
            history_against_brute_force_on_random_ledgers,
            list_reports_agree_with_each_report,
            concurrent_statuses_are_each_exact,
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

/// Reports a random spend (1–999 ¢) for `w` at each of `times` (sorted), each recorded exactly;
/// the ledger as `(time, delta)`.
async fn record_ledger<S: BudgetStore>(
    store: &S,
    w: &WorkspaceId,
    times: Vec<DateTime<Utc>>,
    rng: &mut fastrand::Rng,
    clock: &ManualClock,
) -> Vec<(DateTime<Utc>, i64)> {
    let mut ledger = Vec::new();
    let mut cumulative = 0;
    for at in times {
        let delta = rng.i64(1..1_000);
        cumulative += delta;
        clock.set(at);
        assert_eq!(report(store, w, cumulative, None).await, recorded(delta));
        ledger.push((at, delta));
    }
    ledger
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

        let ledger = record_ledger(&store, &w, times, &mut rng, &clock).await;
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

fn thresholds(list: &[i64]) -> BudgetPatch {
    BudgetPatch {
        limits: LimitsPatch::new(),
        alert_thresholds: Some(Some(AlertThresholds::new(list).unwrap())),
    }
}

/// Every event in the outbox, claimed and acknowledged until none is left, in claim order.
pub async fn drain<S: AlertOutbox + ?Sized>(store: &S) -> Vec<AlertEvent> {
    let mut all = Vec::new();
    loop {
        let claimed = store.claim_alerts(100, secs(60)).await.unwrap();
        if claimed.is_empty() {
            return all;
        }
        for alert in claimed {
            store.alert_delivered(&alert).await.unwrap();
            all.push(alert.event);
        }
    }
}

/// `(type, period, threshold, limit, spend)` of each event.
fn summary(events: &[AlertEvent]) -> Vec<(AlertKind, String, u16, Option<i64>, i64)> {
    events
        .iter()
        .map(|e| (e.kind, e.period.clone(), e.threshold, e.limit, e.spend))
        .collect()
}

const CROSSED: AlertKind = AlertKind::ThresholdCrossed;
const RECOVERED: AlertKind = AlertKind::Recovered;

pub async fn alert_thresholds_are_stored_and_reported<S: BudgetStore + AlertOutbox>(
    store: S,
    clock: ManualClock,
) {
    clock.set(t0());
    let w = ws("ws-1");
    store.register(&w).await.unwrap();
    let report = store.report(&w).await.unwrap();
    assert_eq!(report.alert_thresholds.as_slice(), [80, 100], "the default");
    assert_eq!(
        report.exhausted_in_seconds,
        PerPeriod::default(),
        "no limits"
    );
    let after = store
        .patch_budget(&w, &thresholds(&[100, 50, 80, 50]))
        .await
        .unwrap();
    assert_eq!(after.alert_thresholds.as_slice(), [50, 80, 100]);
    assert_eq!(
        store.report(&w).await.unwrap().alert_thresholds.as_slice(),
        [50, 80, 100]
    );
    // Limits and thresholds in one patch; then `null` restores the default.
    let both = BudgetPatch {
        limits: limits(&[(Period::DAILY, 500)]),
        alert_thresholds: Some(Some(AlertThresholds::new(&[90]).unwrap())),
    };
    let after = store.patch_budget(&w, &both).await.unwrap();
    assert_eq!(after.alert_thresholds.as_slice(), [90]);
    assert_eq!(after.status.limits.get(Period::DAILY), Some(500));
    let restore = BudgetPatch {
        limits: LimitsPatch::new(),
        alert_thresholds: Some(None),
    };
    let after = store.patch_budget(&w, &restore).await.unwrap();
    assert_eq!(after.alert_thresholds.as_slice(), [80, 100]);
    assert_eq!(after.status.limits.get(Period::DAILY), Some(500), "kept");
    assert!(
        drain(&store).await.is_empty(),
        "changing the list fires nothing"
    );
    assert!(matches!(
        store.report(&ws("nobody")).await,
        Err(StoreError::NotFound)
    ));
}

/// Random ledgers, a random `now` and random limits around the spend: `exhausted_in_seconds`
/// equals a second-by-second simulation of the ledger going on at the trailing hour's rate.
pub async fn forecast_against_brute_force_on_random_ledgers<S: BudgetStore + AlertOutbox>(
    store: S,
    clock: ManualClock,
) {
    let seed = crate::common::seed("forecast_against_brute_force_on_random_ledgers");
    let mut rng = fastrand::Rng::with_seed(seed);
    let us = chrono::Duration::microseconds;
    let mut hits = 0;
    for case in 0..24 {
        let w = ws(&format!("ws-{case}"));
        store.register(&w).await.unwrap();
        let now = t0() + us(rng.i64(0..86_400_000_000));
        let mut times: Vec<DateTime<Utc>> = Vec::new();
        // Some spend in the last hour (the rate), some spread over 35 days, some right at
        // window edges and whole seconds.
        times.extend((0..rng.usize(0..6)).map(|_| now - us(rng.i64(0..3_600_000_000))));
        times.extend((0..rng.usize(0..25)).map(|_| now - us(rng.i64(0..35 * 86_400_000_000))));
        for p in Period::all() {
            let edge = now - chrono::Duration::from_std(p.window()).unwrap();
            if rng.bool() {
                times.push(edge + us(rng.i64(1..3_000_000)));
            }
        }
        times.sort();
        let mut ledger = Vec::new();
        let mut cumulative = 0;
        for at in times {
            let delta = rng.i64(1..500);
            cumulative += delta;
            clock.set(at);
            assert_eq!(report(&store, &w, cumulative, None).await, recorded(delta));
            ledger.push((at, delta));
        }
        clock.set(now);
        let spend_in = |p: Period| -> i64 {
            let lo = now - chrono::Duration::from_std(p.window()).unwrap();
            ledger
                .iter()
                .filter(|(at, _)| *at > lo && *at <= now)
                .map(|(_, d)| d)
                .sum()
        };
        let mut patch = LimitsPatch::new();
        for p in Period::all() {
            let spend = spend_in(p);
            let limit = match rng.u8(0..6) {
                0 => None,
                1 => Some(rng.i64(0..=spend)),
                2 => Some(spend + rng.i64(1..=spend_in(Period::HOURLY) + 2)),
                _ => Some(spend + rng.i64(1..3_000)),
            };
            patch = patch.with(p, limit).unwrap();
        }
        let got = store.patch_budget(&w, &patch.into()).await.unwrap();
        let again = store.report(&w).await.unwrap();
        assert_eq!(got, again, "the patch answers what a report reads");
        for p in Period::all() {
            let want = got.status.limits.get(p).and_then(|limit| {
                brute_force_exhausted_in(&ledger, now, p, limit, spend_in(Period::HOURLY))
            });
            hits += usize::from(want.is_some_and(|s| s > 0));
            assert_eq!(
                got.exhausted_in_seconds[p],
                want,
                "seed {seed}, case {case}, {p}: limit {:?}, spend {}, hourly {}",
                got.status.limits.get(p),
                got.status.spend[p],
                spend_in(Period::HOURLY)
            );
        }
    }
    assert!(
        hits > 0,
        "seed {seed}: no case had a forecast in the future"
    );
}

/// The first whole second `t` in `0..=window` at which the spend still in the window plus `t`
/// seconds at the trailing hour's rate reaches `limit`.
fn brute_force_exhausted_in(
    ledger: &[(DateTime<Utc>, i64)],
    now: DateTime<Utc>,
    p: Period,
    limit: i64,
    hourly: i64,
) -> Option<u64> {
    let window = chrono::Duration::from_std(p.window()).unwrap();
    let mut kept: Vec<(DateTime<Utc>, i64)> = ledger
        .iter()
        .filter(|(at, _)| *at > now - window && *at <= now)
        .copied()
        .collect();
    kept.sort();
    let mut in_window: i64 = kept.iter().map(|(_, d)| d).sum();
    let mut next = 0;
    for t in 0..=p.window().as_secs() {
        let edge = now + chrono::Duration::seconds(t as i64) - window;
        while next < kept.len() && kept[next].0 <= edge {
            in_window -= kept[next].1;
            next += 1;
        }
        if i128::from(in_window) * 3_600 + i128::from(hourly) * i128::from(t as i64)
            >= i128::from(limit) * 3_600
        {
            return Some(t);
        }
    }
    None
}

pub async fn crossings_once_each_and_two_in_one_heartbeat<S: BudgetStore + AlertOutbox>(
    store: S,
    clock: ManualClock,
) {
    clock.set(t0());
    let w = ws("ws-1");
    store.register(&w).await.unwrap();
    store
        .patch_budget(&w, &thresholds(&[50, 80, 100]))
        .await
        .unwrap();
    store
        .patch_limits(&w, &limits(&[(Period::HOURLY, 1_000)]))
        .await
        .unwrap();
    report(&store, &w, 400, None).await;
    assert!(drain(&store).await.is_empty());
    // 400 → 850 crosses 50 and 80: two events, in threshold order.
    clock.advance(secs(1));
    report(&store, &w, 850, None).await;
    // Staying above them fires nothing more.
    clock.advance(secs(1));
    report(&store, &w, 900, None).await;
    let events = drain(&store).await;
    assert_eq!(
        summary(&events),
        [
            (CROSSED, "hourly".into(), 50, Some(1_000), 850),
            (CROSSED, "hourly".into(), 80, Some(1_000), 850),
        ]
    );
    assert_ne!(events[0].id, events[1].id);
    assert_eq!(events[0].at, t0() + chrono::Duration::seconds(1));
    assert_eq!(events[0].workspace, w);
    // The hour passes: spend falls back below every threshold, and crossing 50 again fires
    // again; 100 fires once when reached.
    clock.advance(secs(3_600));
    report(&store, &w, 1_500, None).await;
    clock.advance(secs(1));
    report(&store, &w, 1_900, None).await;
    assert_eq!(
        summary(&drain(&store).await),
        [
            (CROSSED, "hourly".into(), 50, Some(1_000), 600),
            (CROSSED, "hourly".into(), 80, Some(1_000), 1_000),
            (CROSSED, "hourly".into(), 100, Some(1_000), 1_000),
        ]
    );
    // A report that records nothing decides nothing; a workspace without limits, nothing.
    report(&store, &w, 1_900, None).await;
    let free = ws("ws-free");
    store.register(&free).await.unwrap();
    report(&store, &free, 1_000_000, None).await;
    assert!(drain(&store).await.is_empty());
}

/// 30 concurrent heartbeats that together cross every threshold: exactly one event each.
pub async fn concurrent_heartbeats_cross_each_threshold_once<S: BudgetStore + AlertOutbox>(
    store: S,
    clock: ManualClock,
) {
    clock.set(t0());
    let store = Arc::new(store);
    let w = ws("ws-1");
    store.register(&w).await.unwrap();
    store
        .patch_budget(&w, &thresholds(&[10, 25, 50, 80, 100]))
        .await
        .unwrap();
    store
        .patch_limits(
            &w,
            &limits(&[(Period::HOURLY, 3_000), (Period::DAILY, 6_000)]),
        )
        .await
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(30));
    let tasks: Vec<_> = (1..=30u64)
        .map(|seq| {
            let (store, w, barrier) = (store.clone(), w.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                // Reports race; each counts what it adds over the last one applied.
                store
                    .record_heartbeat(&Heartbeat::new(w, Some(100 * seq as i64), Some(seq)))
                    .await
                    .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let spend = store.status(&w).await.unwrap().spend[Period::HOURLY];
    let events = drain(&*store).await;
    let mut crossed: Vec<(String, u16)> = events
        .iter()
        .map(|e| (e.period.clone(), e.threshold))
        .collect();
    crossed.sort();
    let mut want: Vec<(String, u16)> = Vec::new();
    for (period, limit) in [("daily", 6_000), ("hourly", 3_000)] {
        for t in [10u16, 25, 50, 80, 100] {
            if spend * 100 >= i64::from(t) * limit {
                want.push((period.into(), t));
            }
        }
    }
    assert_eq!(
        crossed, want,
        "spend {spend}: one event per crossed threshold"
    );
    assert!(events.iter().all(|e| e.kind == CROSSED));
    let ids: std::collections::HashSet<_> = events.iter().map(|e| &e.id).collect();
    assert_eq!(ids.len(), events.len(), "unique ids");
}

pub async fn limit_changes_cross_and_recover<S: BudgetStore + AlertOutbox>(
    store: S,
    clock: ManualClock,
) {
    clock.set(t0());
    let w = ws("ws-1");
    store.register(&w).await.unwrap();
    report(&store, &w, 600, None).await;
    // Setting a limit at or below the spend is a crossing, as a heartbeat's would be.
    store
        .patch_limits(&w, &limits(&[(Period::DAILY, 500)]))
        .await
        .unwrap();
    assert_eq!(
        summary(&drain(&store).await),
        [
            (CROSSED, "daily".into(), 80, Some(500), 600),
            (CROSSED, "daily".into(), 100, Some(500), 600),
        ]
    );
    // Raising it allows the period again: recovered, with the new limit.
    store
        .patch_limits(&w, &limits(&[(Period::DAILY, 700)]))
        .await
        .unwrap();
    assert_eq!(
        summary(&drain(&store).await),
        [(RECOVERED, "daily".into(), 100, Some(700), 600)]
    );
    // Raising it further takes spend under 80 %; lowering it again crosses 80 only.
    store
        .patch_limits(&w, &limits(&[(Period::DAILY, 800)]))
        .await
        .unwrap();
    assert!(drain(&store).await.is_empty(), "600 is 75 % of 800");
    store
        .patch_limits(&w, &limits(&[(Period::DAILY, 650)]))
        .await
        .unwrap();
    assert_eq!(
        summary(&drain(&store).await),
        [(CROSSED, "daily".into(), 80, Some(650), 600)]
    );
    // A limit of 0 blocks: every threshold; clearing an exceeded period's limit recovers it.
    store
        .patch_limits(&w, &limits(&[(Period::WEEKLY, 0)]))
        .await
        .unwrap();
    assert_eq!(
        summary(&drain(&store).await),
        [
            (CROSSED, "weekly".into(), 80, Some(0), 600),
            (CROSSED, "weekly".into(), 100, Some(0), 600),
        ]
    );
    store
        .patch_limits(&w, &LimitsPatch::new().with(Period::WEEKLY, None).unwrap())
        .await
        .unwrap();
    assert_eq!(
        summary(&drain(&store).await),
        [(RECOVERED, "weekly".into(), 100, None, 600)]
    );
}

pub async fn aged_out_spend_recovers_in_the_sweep<S: BudgetStore + AlertOutbox>(
    store: S,
    clock: ManualClock,
) {
    clock.set(t0());
    let w = ws("ws-1");
    store.register(&w).await.unwrap();
    store
        .patch_limits(
            &w,
            &limits(&[(Period::HOURLY, 100), (Period::DAILY, 10_000)]),
        )
        .await
        .unwrap();
    report(&store, &w, 150, None).await;
    assert_eq!(
        drain(&store).await.len(),
        2,
        "80 and 100 of the hourly limit"
    );
    assert_eq!(store.sweep_recovered().await.unwrap(), 0, "still exceeded");
    clock.advance(secs(3_599));
    assert_eq!(
        store.sweep_recovered().await.unwrap(),
        0,
        "still in the window"
    );
    clock.advance(secs(1));
    assert_eq!(store.sweep_recovered().await.unwrap(), 1);
    assert_eq!(store.sweep_recovered().await.unwrap(), 0, "once");
    let events = drain(&store).await;
    assert_eq!(
        summary(&events),
        [(RECOVERED, "hourly".into(), 100, Some(100), 0)]
    );
    assert_eq!(events[0].at, t0() + chrono::Duration::seconds(3_600));
    // Aged out with no sweep in between: the next heartbeat decides the recovery first, then
    // its own crossings.
    clock.advance(secs(1));
    report(&store, &w, 300, None).await;
    clock.advance(secs(3_600));
    report(&store, &w, 450, None).await;
    assert_eq!(
        summary(&drain(&store).await),
        [
            (CROSSED, "hourly".into(), 80, Some(100), 150),
            (CROSSED, "hourly".into(), 100, Some(100), 150),
            (RECOVERED, "hourly".into(), 100, Some(100), 0),
            (CROSSED, "hourly".into(), 80, Some(100), 150),
            (CROSSED, "hourly".into(), 100, Some(100), 150),
        ]
    );
}

pub async fn outbox_order_lease_retry_and_expiry<S: BudgetStore + AlertOutbox>(
    store: S,
    clock: ManualClock,
) {
    clock.set(t0());
    let (a, b) = (ws("ws-a"), ws("ws-b"));
    for w in [&a, &b] {
        store.register(w).await.unwrap();
        store
            .patch_budget(w, &thresholds(&[25, 50, 75]))
            .await
            .unwrap();
        store
            .patch_limits(w, &limits(&[(Period::HOURLY, 100)]))
            .await
            .unwrap();
        report(&store, w, 30, None).await;
        clock.advance(secs(1));
        report(&store, w, 60, None).await;
        clock.advance(secs(1));
        report(&store, w, 90, None).await;
    }
    // One event per workspace at a time, the oldest first.
    let first = store.claim_alerts(10, secs(60)).await.unwrap();
    let heads: Vec<_> = first
        .iter()
        .map(|c| (c.event.workspace.to_string(), c.event.threshold, c.attempts))
        .collect();
    assert_eq!(heads.len(), 2);
    assert!(heads.contains(&("ws-a".into(), 25, 1)) && heads.contains(&("ws-b".into(), 25, 1)));
    // Under lease: nobody else gets them, nor what follows them.
    assert!(store.claim_alerts(10, secs(60)).await.unwrap().is_empty());
    // a's head failed, one webhook has it: due again after the wait, with the same id.
    let a_head = first.iter().find(|c| c.event.workspace == a).unwrap();
    let b_head = first.iter().find(|c| c.event.workspace == b).unwrap();
    store
        .alert_failed(a_head, &["http://one".into()], secs(30))
        .await
        .unwrap();
    store.alert_delivered(b_head).await.unwrap();
    let next = store.claim_alerts(10, secs(60)).await.unwrap();
    assert_eq!(
        next.iter()
            .map(|c| (c.event.workspace.clone(), c.event.threshold))
            .collect::<Vec<_>>(),
        [(b.clone(), 50)],
        "a waits for its retry; b goes on"
    );
    clock.advance(secs(30));
    let again = store.claim_alerts(10, secs(60)).await.unwrap();
    let a_again = again.iter().find(|c| c.event.workspace == a).unwrap();
    assert_eq!(a_again.event, a_head.event, "same event, same id");
    assert_eq!(a_again.attempts, 2);
    assert_eq!(a_again.delivered_to, ["http://one".to_string()]);
    // A stale claim's failure report changes nothing once the event was claimed again.
    store.alert_failed(a_head, &[], secs(1)).await.unwrap();
    assert!(store.claim_alerts(10, secs(60)).await.unwrap().is_empty());
    // A lease that runs out (its claimer died) makes the event claimable again.
    clock.advance(secs(61));
    let reclaimed = store.claim_alerts(10, secs(60)).await.unwrap();
    assert_eq!(reclaimed.len(), 2, "a's head and b's second");
    // Not delivered within 24 hours: dropped, except while a claimer holds a live lease.
    clock.advance(secs(24 * 3_600));
    assert_eq!(store.claim_alerts(10, secs(3_600)).await.unwrap().len(), 2);
    assert_eq!(store.expire_alerts(secs(24 * 3_600)).await.unwrap(), 3);
    clock.advance(secs(3_601));
    assert_eq!(store.expire_alerts(secs(24 * 3_600)).await.unwrap(), 2);
    assert!(drain(&store).await.is_empty());
}

/// Spend per bucket equals the sum of the ledger's entries whose time lies in the bucket
/// (`[start, start + step)`), on random ledgers with entries on bucket edges.
pub async fn history_against_brute_force_on_random_ledgers<S: BudgetStore>(
    store: S,
    clock: ManualClock,
) {
    let seed = crate::common::seed("history_against_brute_force_on_random_ledgers");
    let mut rng = fastrand::Rng::with_seed(seed);
    let us = chrono::Duration::microseconds;
    for case in 0..20 {
        let w = ws(&format!("ws-{case}"));
        store.register(&w).await.unwrap();
        let step_secs = [3_600, 86_400, 900][case % 3];
        let step = chrono::Duration::seconds(step_secs);
        let now = t0() + us(rng.i64(0..86_400_000_000));
        let from = now - step * rng.i32(1..40);
        let from = from - us(from.timestamp_micros() % (step_secs * 1_000_000));
        let mut times: Vec<DateTime<Utc>> = (0..rng.usize(0..40))
            .map(|_| now - us(rng.i64(0..45 * step_secs * 1_000_000)))
            .collect();
        // Spend older than the retention may be gone (SPEC §13): the brute force sees only what
        // a store must keep.
        let kept =
            chrono::Duration::from_std(Period::retention()).unwrap() - chrono::Duration::days(1);
        // Entries exactly on edges, and a microsecond either side.
        for k in 0..4 {
            let edge = from + step * rng.i32(0..40);
            times.extend(
                [edge, edge - us(1), edge + us(1)]
                    .into_iter()
                    .filter(|_| k % 2 == 0 || rng.bool()),
            );
        }
        times.retain(|t| *t <= now && now - *t < kept);
        times.sort();
        let ledger = record_ledger(&store, &w, times, &mut rng, &clock).await;
        clock.set(now);
        let buckets = rng.usize(1..60);
        let got = store
            .spend_history(&w, step.to_std().unwrap(), from, buckets)
            .await
            .unwrap();
        let want: Vec<i64> = (0..buckets)
            .map(|i| {
                let start = from + step * i as i32;
                ledger
                    .iter()
                    .filter(|(at, _)| *at >= start && *at < start + step)
                    .map(|(_, d)| d)
                    .sum()
            })
            .collect();
        assert_eq!(got, want, "seed {seed}, case {case}");
    }
    assert!(matches!(
        store
            .spend_history(&ws("nobody"), Duration::from_secs(3_600), t0(), 3)
            .await,
        Err(StoreError::NotFound)
    ));
}

/// `list_reports` pages are the live workspaces in id order, each with exactly the report and
/// the waits that asking for that workspace alone gives.
pub async fn list_reports_agree_with_each_report<S: BudgetStore>(store: S, clock: ManualClock) {
    let seed = crate::common::seed("list_reports_agree_with_each_report");
    let mut rng = fastrand::Rng::with_seed(seed);
    let now = t0() + chrono::Duration::days(40);
    let mut live = Vec::new();
    for i in 0..23 {
        let id = format!("ws-{:02}", (i * 7) % 23);
        let w = ws(&id);
        store.register(&w).await.unwrap();
        let mut cumulative = 0;
        for _ in 0..rng.usize(0..12) {
            clock.set(now - chrono::Duration::seconds(rng.i64(1..40 * 86_400)));
            cumulative += rng.i64(1..500);
            store
                .record_heartbeat(&Heartbeat::new(w.clone(), Some(cumulative), None))
                .await
                .unwrap();
        }
        clock.set(now);
        let pairs: Vec<(Period, Option<i64>)> = Period::all()
            .map(|p| (p, [None, Some(0), Some(rng.i64(1..2_000))][rng.usize(0..3)]))
            .collect();
        set_limits(&store, &id, &pairs).await;
        if i % 5 == 4 {
            store.remove(&w).await.unwrap();
        } else {
            live.push(w);
        }
    }
    clock.set(now);
    live.sort();
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_reports(after.as_ref(), 4).await.unwrap();
        assert!(page.len() <= 4);
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        listed.extend(page);
    }
    let ids: Vec<_> = listed.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, live, "seed {seed}");
    let mut exceeded = 0;
    for (id, got) in &listed {
        let want = store.report(id).await.unwrap();
        assert_eq!(
            (
                &got.status,
                &got.alert_thresholds,
                &got.exhausted_in_seconds
            ),
            (
                &want.status,
                &want.alert_thresholds,
                &want.exhausted_in_seconds
            ),
            "seed {seed}, {id}"
        );
        let over = want
            .status
            .exceeded_periods()
            .iter()
            .fold(Limits::none(), |l, &p| l.with(p, want.status.limits.get(p)));
        let waits = store.retry_after(id, &over).await.unwrap();
        exceeded += usize::from(waits.iter().any(|(_, w)| w.is_some()));
        assert_eq!(got.retry_after, waits, "seed {seed}, {id}");
        assert_eq!(want.retry_after, waits, "seed {seed}, {id}");
    }
    assert!(exceeded > 0, "seed {seed}: no wait to compare");
}

/// Many status reads at once (a store may answer them together): each is the answer a read
/// alone gives, unknown and removed workspaces included.
pub async fn concurrent_statuses_are_each_exact<S: BudgetStore>(store: S, clock: ManualClock) {
    clock.set(t0());
    let mut ids = Vec::new();
    for i in 0..40i64 {
        let id = format!("c-{i:02}");
        store.register(&ws(&id)).await.unwrap();
        set_limits(
            &store,
            &id,
            &[
                (Period::HOURLY, Some(100 + i)),
                (Period::DAILY, Some(5 * i)),
            ],
        )
        .await;
        store
            .record_heartbeat(&Heartbeat::new(ws(&id), Some(3 * i + 1), None))
            .await
            .unwrap();
        if i % 10 == 9 {
            store.remove(&ws(&id)).await.unwrap();
        }
        ids.push(ws(&id));
    }
    ids.push(ws("nobody"));
    // The same workspace twice in one batch.
    ids.push(ws("c-00"));
    ids.push(ws("c-09"));
    let mut alone = Vec::new();
    for id in &ids {
        alone.push(store.status(id).await.map_err(|e| e.to_string()));
    }
    assert!(
        alone.iter().filter(|a| a.is_err()).count() == 6,
        "{alone:?}"
    );
    for _ in 0..3 {
        let together = futures_util::future::join_all(ids.iter().map(|id| store.status(id))).await;
        let together: Vec<_> = together
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect();
        assert_eq!(together, alone);
    }
}
