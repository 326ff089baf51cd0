//! `exhausted_in_seconds`: when a period's limit is reached if spend goes on at the trailing
//! hour's rate, counting the spend that leaves the window meanwhile.
//!
//! With `H` the trailing hour's spend, the projected spend of a window of `W` seconds, `t` whole
//! seconds from now (`0 ≤ t ≤ W`), is
//!
//! ```text
//! S(t) = (spend now still in the window at now + t) + H · t / 3600
//! ```
//!
//! The answer is the smallest whole `t` with `S(t) ≥ limit`: `0` when already exhausted, `None`
//! when no `t ≤ W` reaches it, when `H` is 0, or without a limit. Between two instants at which
//! a ledger entry leaves the window `S` grows linearly, so each such stretch is checked with one
//! integer division: the cost is one pass over the window's entries, oldest first. The Postgres
//! store runs the same computation in SQL (`store/postgres/sql.rs`, `FORECAST`); both are
//! checked against a second-by-second simulation of the ledger (`tests/common/conformance.rs`).

/// What a forecast of one period reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ForecastInput {
    /// The period's limit in cents.
    pub(crate) limit: i64,
    /// The period's window in seconds.
    pub(crate) window_secs: i64,
    /// The period's spend now.
    pub(crate) spend: i64,
    /// The trailing hour's spend now.
    pub(crate) hourly_spend: i64,
}

const MICROS: i64 = 1_000_000;

/// The forecast for `input` (see the [module docs](self)). `entries` are the window's ledger
/// entries as `(microseconds from now until they leave the window, cents)`, oldest first; an
/// entry recorded at `a` leaves when `now + t ≥ a + window`.
pub fn exhausted_in_seconds(
    limit: Option<i64>,
    window_secs: i64,
    spend: i64,
    hourly_spend: i64,
    entries: impl IntoIterator<Item = (i64, i64)>,
) -> Option<u64> {
    let limit = limit?;
    forecast(
        ForecastInput {
            limit,
            window_secs,
            spend,
            hourly_spend,
        },
        entries,
    )
}

pub(crate) fn forecast(
    input: ForecastInput,
    entries: impl IntoIterator<Item = (i64, i64)>,
) -> Option<u64> {
    let ForecastInput {
        limit,
        window_secs,
        spend,
        hourly_spend,
    } = input;
    if spend >= limit {
        return Some(0);
    }
    if hourly_spend <= 0 {
        return None;
    }
    // Within a stretch where `remaining` cents of today's spend are still in the window, the
    // first whole second at which `remaining + H·t/3600 ≥ limit`.
    let first_second = |remaining: i64| -> i128 {
        let short = (i128::from(limit) - i128::from(remaining)) * 3_600;
        if short <= 0 {
            0
        } else {
            let h = i128::from(hourly_spend);
            (short + h - 1) / h
        }
    };
    let end = i128::from(window_secs) + 1;
    let mut remaining = spend;
    let mut start: i128 = 0;
    for (leaves_in_micros, cents) in entries {
        // The first whole second at which this entry is out of the window.
        let leaves = i128::from(leaves_in_micros.div_euclid(MICROS))
            + i128::from(leaves_in_micros.rem_euclid(MICROS) > 0);
        let stop = leaves.min(end);
        let t = first_second(remaining).max(start);
        if t < stop {
            return u64::try_from(t).ok();
        }
        remaining -= cents;
        start = start.max(leaves);
        if start >= end {
            return None;
        }
    }
    let t = first_second(remaining).max(start);
    (t < end).then(|| u64::try_from(t).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Second by second: the definition itself.
    fn brute(input: ForecastInput, entries: &[(i64, i64)]) -> Option<u64> {
        (0..=input.window_secs).find_map(|t| {
            let kept: i64 = entries
                .iter()
                .filter(|(leaves, _)| *leaves > t * MICROS)
                .map(|(_, c)| c)
                .sum();
            let projected =
                i128::from(kept) * 3_600 + i128::from(input.hourly_spend) * i128::from(t);
            (projected >= i128::from(input.limit) * 3_600).then_some(t as u64)
        })
    }

    #[test]
    fn matches_the_definition_on_random_windows() {
        let mut rng = fastrand::Rng::with_seed(7);
        for case in 0..3_000 {
            let window_secs = [60, 600, 3_600][case % 3];
            let n = rng.usize(0..12);
            let mut leaves: Vec<i64> = (0..n).map(|_| rng.i64(1..=window_secs * MICROS)).collect();
            leaves.sort_unstable();
            let entries: Vec<(i64, i64)> = leaves.iter().map(|&l| (l, rng.i64(1..50))).collect();
            let spend: i64 = entries.iter().map(|e| e.1).sum();
            let input = ForecastInput {
                limit: rng.i64(0..spend * 3 + 10),
                window_secs,
                spend,
                hourly_spend: if rng.bool() { spend } else { rng.i64(0..100) },
            };
            assert_eq!(
                forecast(input, entries.iter().copied()),
                brute(input, &entries),
                "case {case}: {input:?} {entries:?}"
            );
        }
    }

    #[test]
    fn steady_spend_reaches_the_limit_when_expected() {
        // 100 cents in the last hour, nothing older: the hourly limit 200 is 100 cents away at
        // 100 cents/hour, but the existing 100 leave the window meanwhile.
        let input = ForecastInput {
            limit: 200,
            window_secs: 86_400,
            spend: 100,
            hourly_spend: 100,
        };
        // Entered 10 minutes ago: leaves the daily window in 23 h 50 min.
        let entry = [((86_400 - 600) * MICROS, 100)];
        assert_eq!(forecast(input, entry), Some(3_600));
        assert_eq!(
            exhausted_in_seconds(None, 3_600, 100, 100, entry),
            None,
            "no limit"
        );
        let idle = ForecastInput {
            hourly_spend: 0,
            ..input
        };
        assert_eq!(forecast(idle, entry), None);
        let spent = ForecastInput {
            spend: 200,
            ..input
        };
        assert_eq!(forecast(spent, entry), Some(0));
    }
}
