//! The period table — the one place that says which budget windows exist — and the pure logic
//! on top of it: per-period values, tolerant reading and canonical writing of stored limits,
//! strict validation of limit patches, and [`exceeded_periods`].
//!
//! Nothing here does I/O. Every other part of the crate (SQL text, JSON parsing and output, the
//! 402 body, headers) iterates [`Period::all`], so adding a period is one line in `TABLE`.
//!
//! ```
//! use tower_budget::period::{Limits, Period, Spend, exceeded_periods};
//!
//! let limits = Limits::from_stored(&serde_json::json!({"hourly": 100, "monthly": 0}));
//! let mut spend = Spend::default();
//! spend[Period::HOURLY] = 150;
//! let names: Vec<&str> = exceeded_periods(&limits, &spend).iter().map(|p| p.name()).collect();
//! // 0 blocks everything; the hourly limit is reached too. Table order.
//! assert_eq!(names, ["hourly", "monthly"]);
//! ```

use std::fmt;
use std::ops::{Index, IndexMut};
use std::time::Duration;

use serde_json::{Map, Value};

struct PeriodDef {
    name: &'static str,
    window_secs: u64,
}

/// THE period table: name and trailing window. Order is the order of every output.
/// Adding a period (say `yearly`, 365 days) is one line here.
const TABLE: &[PeriodDef] = &[
    PeriodDef {
        name: "hourly",
        window_secs: 3_600,
    },
    PeriodDef {
        name: "daily",
        window_secs: 24 * 3_600,
    },
    PeriodDef {
        name: "weekly",
        window_secs: 7 * 24 * 3_600,
    },
    PeriodDef {
        name: "monthly",
        window_secs: 30 * 24 * 3_600,
    },
];

/// How many periods the table has.
pub(crate) const PERIOD_COUNT: usize = TABLE.len();

/// How long ledger entries are kept beyond the longest window before pruning removes them.
pub const RETENTION_SLACK: Duration = Duration::from_secs(5 * 24 * 3_600);

/// One budget period: a named trailing window from the period table.
///
/// A `Period` is a small copyable index into the table; it orders and iterates in table order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Period(u8);

impl Period {
    /// The hourly period.
    pub const HOURLY: Period = Period::named("hourly");
    /// The daily period.
    pub const DAILY: Period = Period::named("daily");
    /// The weekly period.
    pub const WEEKLY: Period = Period::named("weekly");
    /// The monthly period, which the legacy single `budget_limit` maps to.
    pub const MONTHLY: Period = Period::named("monthly");

    /// Looks a period up by name at compile time; fails the build if the table lacks it.
    const fn named(name: &str) -> Period {
        let mut i = 0;
        while i < TABLE.len() {
            if const_str_eq(TABLE[i].name, name) {
                return Period(i as u8);
            }
            i += 1;
        }
        panic!("period missing from the period table");
    }

    /// Every period, in table order.
    pub fn all() -> impl DoubleEndedIterator<Item = Period> + ExactSizeIterator + Clone {
        (0..PERIOD_COUNT as u8).map(Period)
    }

    /// Parses a period name as used in JSON (`"hourly"`, …).
    pub fn from_name(name: &str) -> Option<Period> {
        Period::all().find(|p| p.name() == name)
    }

    /// The period's name as used in JSON and headers.
    pub fn name(self) -> &'static str {
        TABLE[self.index()].name
    }

    /// The trailing window: spend in `(now − window, now]` counts.
    pub fn window(self) -> Duration {
        Duration::from_secs(TABLE[self.index()].window_secs)
    }

    /// Position in the table, `0..PERIOD_COUNT`.
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }

    /// How long from `now` until spend recorded at `at` leaves this period's trailing window:
    /// the wait `Retry-After` reports (both stores compute it here). `None` once it has left.
    pub fn time_until_out(
        self,
        at: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<Duration> {
        let window = chrono::Duration::from_std(self.window()).ok()?;
        (at + window - now).to_std().ok()
    }

    /// A wait as `retry_after_seconds` reports it: whole seconds, rounded up, at least 1.
    pub fn whole_seconds_up(wait: Duration) -> u64 {
        (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
    }

    /// The longest window of the table.
    pub fn longest_window() -> Duration {
        Period::all().map(Period::window).max().unwrap_or_default()
    }

    /// How far back the ledger must reach: the longest window plus [`RETENTION_SLACK`].
    pub fn retention() -> Duration {
        Period::longest_window() + RETENTION_SLACK
    }

    /// The allowed names, comma-separated in table order (for error messages).
    pub(crate) fn names_list() -> String {
        Period::all()
            .map(Period::name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl fmt::Debug for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One value per period, indexed by [`Period`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PerPeriod<T>([T; PERIOD_COUNT]);

impl<T> PerPeriod<T> {
    /// Builds the values by calling `f` for each period in table order.
    pub fn from_fn(mut f: impl FnMut(Period) -> T) -> Self {
        PerPeriod(std::array::from_fn(|i| f(Period(i as u8))))
    }

    /// The periods with their values, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (Period, &T)> {
        Period::all().zip(self.0.iter())
    }

    /// Applies `f` to every value.
    pub fn map<U>(&self, mut f: impl FnMut(Period, &T) -> U) -> PerPeriod<U> {
        PerPeriod::from_fn(|p| f(p, &self[p]))
    }
}

impl<T: Default> Default for PerPeriod<T> {
    fn default() -> Self {
        PerPeriod::from_fn(|_| T::default())
    }
}

impl<T> Index<Period> for PerPeriod<T> {
    type Output = T;
    fn index(&self, p: Period) -> &T {
        &self.0[p.index()]
    }
}

impl<T> IndexMut<Period> for PerPeriod<T> {
    fn index_mut(&mut self, p: Period) -> &mut T {
        &mut self.0[p.index()]
    }
}

/// Spend in integer USD cents per period's trailing window.
pub type Spend = PerPeriod<i64>;

/// A workspace's limits in integer USD cents: `None` is no limit, `Some(0)` blocks all.
///
/// Invariant: every present limit is `>= 0`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Limits(PerPeriod<Option<i64>>);

impl Limits {
    /// No limit on any period.
    pub fn none() -> Self {
        Limits::default()
    }

    /// The limit of `period`, if any.
    pub fn get(&self, period: Period) -> Option<i64> {
        self.0[period]
    }

    /// Returns these limits with `period` set to `cents` (`None` clears it).
    ///
    /// # Panics
    /// Panics if `cents` is negative; limits from untrusted input go through
    /// [`LimitsPatch::from_json`] or [`Limits::from_stored`], which never panic.
    #[must_use]
    pub fn with(mut self, period: Period, cents: Option<i64>) -> Self {
        assert!(cents.is_none_or(|c| c >= 0), "a limit must be >= 0 cents");
        self.0[period] = cents;
        self
    }

    /// True when no period has a limit.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|(_, l)| l.is_none())
    }

    /// The periods with their limits, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (Period, Option<i64>)> + '_ {
        self.0.iter().map(|(p, l)| (p, *l))
    }

    /// Reads stored config tolerantly: anything that is not an object, unknown keys, and values
    /// that are not non-negative integers within `i64` read as "no limit" for that period.
    /// Never fails, never panics.
    pub fn from_stored(stored: &Value) -> Self {
        let Value::Object(map) = stored else {
            return Limits::none();
        };
        Limits(PerPeriod::from_fn(|p| {
            map.get(p.name())
                .and_then(Value::as_i64)
                .filter(|c| *c >= 0)
        }))
    }

    /// Reads limits from the text of each period's stored JSON number (`None` where the stored
    /// value is absent or not a number), as a database can hand them out without parsing the
    /// whole document. Text that is not a non-negative integer within `i64` (`1.5`, `1e400`
    /// written out, `-3`) reads as no limit. Never fails, never panics.
    pub fn from_stored_numbers<'a>(mut number: impl FnMut(Period) -> Option<&'a str>) -> Self {
        Limits(PerPeriod::from_fn(|p| {
            number(p)
                .and_then(|text| text.trim().parse::<i64>().ok())
                .filter(|c| *c >= 0)
        }))
    }

    /// Like [`Limits::from_stored`] for stored text; malformed JSON reads as no limits.
    pub fn from_stored_str(stored: Option<&str>) -> Self {
        stored
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .map_or_else(Limits::none, |v| Limits::from_stored(&v))
    }

    /// The canonical stored form: an object with only the limited periods, in table order.
    pub fn to_json(&self) -> Value {
        let map: Map<String, Value> = self
            .iter()
            .filter_map(|(p, l)| l.map(|c| (p.name().to_owned(), Value::from(c))))
            .collect();
        Value::Object(map)
    }

    /// Applies a merge patch (RFC 7396 semantics over the periods).
    #[must_use]
    pub fn patched(mut self, patch: &LimitsPatch) -> Self {
        for (p, change) in patch.0.iter() {
            if let Some(new) = change {
                self.0[p] = *new;
            }
        }
        self
    }
}

/// Whether one period is exceeded: it has a limit and `spend >= limit` (so a limit of 0 always is).
pub fn is_exceeded(limit: Option<i64>, spend: i64) -> bool {
    limit.is_some_and(|l| spend >= l)
}

/// Every exceeded period, in table order.
pub fn exceeded_periods(limits: &Limits, spend: &Spend) -> Vec<Period> {
    Period::all()
        .filter(|&p| is_exceeded(limits.get(p), spend[p]))
        .collect()
}

/// A validated change to some periods' limits with merge-patch semantics: for each period,
/// `None` keeps the stored value, `Some(None)` clears it, `Some(Some(c))` sets it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LimitsPatch(PerPeriod<Option<Option<i64>>>);

impl LimitsPatch {
    /// A patch that changes nothing.
    pub fn new() -> Self {
        LimitsPatch::default()
    }

    /// Returns the patch with `period` set to `cents` (`None` clears the limit).
    ///
    /// # Errors
    /// [`LimitsError::Negative`] when `cents` is negative.
    pub fn with(mut self, period: Period, cents: Option<i64>) -> Result<Self, LimitsError> {
        if cents.is_some_and(|c| c < 0) {
            return Err(LimitsError::Negative { period });
        }
        self.0[period] = Some(cents);
        Ok(self)
    }

    /// The legacy single monthly limit (`{"budget_limit": …}`): sets or clears monthly only.
    ///
    /// # Errors
    /// [`LimitsError::Negative`] when `cents` is negative.
    pub fn legacy_monthly(cents: Option<i64>) -> Result<Self, LimitsError> {
        LimitsPatch::new().with(Period::MONTHLY, cents)
    }

    /// The change for `period`: `None` keeps, `Some(None)` clears, `Some(Some(c))` sets.
    pub fn get(&self, period: Period) -> Option<Option<i64>> {
        self.0[period]
    }

    /// Validates a `budget_limits` object strictly: known period names only, each value `null`
    /// or a non-negative JSON integer within `i64`.
    ///
    /// # Errors
    /// A [`LimitsError`] naming the first offending key; nothing is partially applied.
    pub fn from_json(value: &Value) -> Result<Self, LimitsError> {
        let Value::Object(map) = value else {
            return Err(LimitsError::NotAnObject);
        };
        let mut patch = LimitsPatch::new();
        for (key, v) in map {
            let period = Period::from_name(key)
                .ok_or_else(|| LimitsError::UnknownPeriod { name: key.clone() })?;
            let cents = match v {
                Value::Null => None,
                Value::Number(n) => Some(integer_cents(n, period)?),
                _ => return Err(LimitsError::NotAnInteger { period }),
            };
            patch = patch.with(period, cents)?;
        }
        Ok(patch)
    }
}

/// A JSON number as integer cents: integers within `i64` only.
fn integer_cents(n: &serde_json::Number, period: Period) -> Result<i64, LimitsError> {
    if let Some(c) = n.as_i64() {
        return Ok(c);
    }
    if n.is_u64() {
        return Err(LimitsError::OutOfRange { period });
    }
    // serde_json reads integers beyond 64 bits as floats; tell them apart from fractions.
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() >= i64::MAX as f64 => {
            Err(LimitsError::OutOfRange { period })
        }
        _ => Err(LimitsError::NotAnInteger { period }),
    }
}

/// Why a limits patch was refused. The messages are meant for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// `budget_limits` was not a JSON object.
    #[error("budget_limits must be a JSON object mapping period names to integer cents or null")]
    NotAnObject,
    /// A key that is not in the period table.
    #[error("unknown period \"{name}\"; allowed periods: {}", Period::names_list())]
    UnknownPeriod {
        /// The key as sent.
        name: String,
    },
    /// A negative limit.
    #[error("limit for {period} must be >= 0 cents (0 blocks all, null removes the limit)")]
    Negative {
        /// The offending period.
        period: Period,
    },
    /// A fraction, string, boolean, array or object where integer cents were expected.
    #[error("limit for {period} must be an integer number of cents or null")]
    NotAnInteger {
        /// The offending period.
        period: Period,
    },
    /// An integer beyond the signed 64-bit range.
    #[error("limit for {period} is out of range (at most {} cents)", i64::MAX)]
    OutOfRange {
        /// The offending period.
        period: Period,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_is_consistent() {
        assert_eq!(Period::all().len(), PERIOD_COUNT);
        for p in Period::all() {
            assert_eq!(Period::from_name(p.name()), Some(p));
            assert!(p.window() > Duration::ZERO);
        }
        // Windows grow in table order, so "longest" is the last one and output reads naturally.
        let windows: Vec<_> = Period::all().map(Period::window).collect();
        assert!(windows.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Period::longest_window(), Period::MONTHLY.window());
        assert_eq!(Period::retention(), Duration::from_secs(35 * 24 * 3600));
        assert_eq!(Period::names_list(), "hourly, daily, weekly, monthly");
    }

    #[test]
    fn stored_limits_are_read_tolerantly() {
        let cases: &[(Value, [Option<i64>; 4])] = &[
            (
                json!({"hourly": 100, "weekly": 5000}),
                [Some(100), None, Some(5000), None],
            ),
            (json!({"monthly": 0}), [None, None, None, Some(0)]),
            (
                json!({"hourly": null, "daily": 7}),
                [None, Some(7), None, None],
            ),
            (
                json!({"hourly": -1, "daily": 7}),
                [None, Some(7), None, None],
            ),
            (
                json!({"yearly": 9, "daily": 7}),
                [None, Some(7), None, None],
            ),
            (
                json!({"hourly": 1.5, "daily": "7"}),
                [None, None, None, None],
            ),
            (
                json!({"hourly": true, "daily": [1]}),
                [None, None, None, None],
            ),
            (
                json!({"hourly": 18446744073709551615u64}),
                [None, None, None, None],
            ),
            (json!([1, 2]), [None, None, None, None]),
            (json!("hourly"), [None, None, None, None]),
            (Value::Null, [None, None, None, None]),
        ];
        for (stored, want) in cases {
            let limits = Limits::from_stored(stored);
            let got: Vec<_> = limits.iter().map(|(_, l)| l).collect();
            assert_eq!(got, want, "reading {stored}");
        }
        assert_eq!(Limits::from_stored_str(None), Limits::none());
        assert_eq!(Limits::from_stored_str(Some("{not json")), Limits::none());
        assert_eq!(
            Limits::from_stored_str(Some(r#"{"daily": 3}"#)).get(Period::DAILY),
            Some(3)
        );
    }

    #[test]
    fn encode_keeps_only_known_non_negative_periods_in_table_order() {
        let limits =
            Limits::from_stored(&json!({"monthly": 2000, "bogus": 1, "hourly": 0, "daily": -3}));
        let encoded = limits.to_json();
        assert_eq!(encoded, json!({"hourly": 0, "monthly": 2000}));
        assert_eq!(
            serde_json::to_string(&encoded).unwrap(),
            r#"{"hourly":0,"monthly":2000}"#
        );
        assert_eq!(Limits::from_stored(&encoded), limits);
        assert_eq!(Limits::none().to_json(), json!({}));
    }

    #[test]
    fn exceeded_means_limit_present_and_spend_reached() {
        let limits = Limits::none()
            .with(Period::HOURLY, Some(100))
            .with(Period::DAILY, Some(0))
            .with(Period::WEEKLY, Some(1000));
        let spend = Spend::from_fn(|p| [99, 0, 1000, 1_000_000][p.index()]);
        // hourly 99 < 100: fine; daily limit 0 blocks all even with no spend; weekly reached;
        // monthly has no limit whatever the spend.
        assert_eq!(
            exceeded_periods(&limits, &spend),
            [Period::DAILY, Period::WEEKLY]
        );
        assert!(exceeded_periods(&Limits::none(), &spend).is_empty());
        assert!(!is_exceeded(None, i64::MAX));
        assert!(is_exceeded(Some(0), 0));
        assert!(is_exceeded(Some(5), 5));
        assert!(!is_exceeded(Some(5), 4));
    }

    #[test]
    fn patch_merges_set_clear_and_keeps_unlisted() {
        let stored = Limits::none()
            .with(Period::HOURLY, Some(100))
            .with(Period::DAILY, Some(500))
            .with(Period::MONTHLY, Some(9000));
        let patch =
            LimitsPatch::from_json(&json!({"hourly": 50, "daily": null, "weekly": 0})).unwrap();
        let merged = stored.patched(&patch);
        assert_eq!(
            merged.to_json(),
            json!({"hourly": 50, "weekly": 0, "monthly": 9000})
        );
        assert_eq!(stored.patched(&LimitsPatch::new()), stored);
        let legacy = LimitsPatch::legacy_monthly(None).unwrap();
        assert_eq!(merged.patched(&legacy).get(Period::MONTHLY), None);
        assert_eq!(merged.patched(&legacy).get(Period::HOURLY), Some(50));
    }

    #[test]
    fn patch_validation_is_strict_with_clear_messages() {
        let bad: &[(Value, &str)] = &[
            (json!([1]), "must be a JSON object"),
            (json!(5), "must be a JSON object"),
            (
                json!({"yearly": 1}),
                "unknown period \"yearly\"; allowed periods: hourly, daily, weekly, monthly",
            ),
            (json!({"hourly": -1}), "hourly must be >= 0"),
            (json!({"hourly": 1.5}), "hourly must be an integer"),
            (json!({"hourly": 100.0}), "hourly must be an integer"),
            (json!({"daily": "100"}), "daily must be an integer"),
            (json!({"daily": true}), "daily must be an integer"),
            (json!({"daily": {"x": 1}}), "daily must be an integer"),
            (
                json!({"weekly": 9223372036854775808u64}),
                "weekly is out of range",
            ),
            (json!({"weekly": 1e20}), "weekly is out of range"),
            (json!({"hourly": 5, "weekly": -5}), "weekly must be >= 0"),
        ];
        for (body, want) in bad {
            let err = LimitsPatch::from_json(body).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: got {err:?}, want {want:?}");
        }
        let big = LimitsPatch::from_json(&json!({"monthly": i64::MAX})).unwrap();
        assert_eq!(big.get(Period::MONTHLY), Some(Some(i64::MAX)));
        assert_eq!(
            LimitsPatch::from_json(&json!({})).unwrap(),
            LimitsPatch::new()
        );
        assert!(LimitsPatch::legacy_monthly(Some(-1)).is_err());
    }
}
