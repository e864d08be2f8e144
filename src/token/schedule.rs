//! When a token stops being sent and when its renewal starts: pure arithmetic, tested in a
//! case table.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::config::TokenSettings;

/// The skew is at most this share of a token's lifetime, so a short token is not thrown away
/// early (a 15 s token loses 0.6 s, not half its life).
pub const MAX_SKEW_SHARE: f64 = 0.04;
/// Renewals start at a random point in a window of this share of the lifetime...
const JITTER_SHARE: f64 = 0.02;
/// ...but never wider than this, so a day-long token still renews within minutes of its mark.
const MAX_JITTER: Duration = Duration::from_secs(300);

/// A token's timetable, as offsets from the moment its request was sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// The token is sent until then, never after.
    pub usable_for: Duration,
    /// From then on, the next caller starts one background renewal.
    pub renew_after: Duration,
}

/// When a token with `lifetime` (its `expires_in`) stops being used and when its renewal
/// starts; `jitter` in `0..=1` picks the point in the renewal window (random in production).
///
/// - usable for `lifetime - skew`, the skew capped at [`MAX_SKEW_SHARE`] of the lifetime
///   (the margin for the proxied request's flight and the resource server's clock);
/// - renewed `timeout` before that (one token request at its slowest, so steady traffic
///   never waits), plus a jitter of up to 2 % of the lifetime (at most 5 minutes) that
///   spreads the renewals of many proxies; lead and jitter together never exceed `ahead`
///   (`refresh_ahead_percent`, at most half) of the lifetime.
///
/// A steady caller therefore renews once per `renew_after`, i.e. at most
/// `1 / (1 - MAX_SKEW_SHARE - ahead)` token requests per lifetime: 1.136 with the default 8 %,
/// for any lifetime. When the lifetime is too short for the whole timeout to fit (under
/// `timeout / (ahead - 2 %)`, 167 s with the defaults), the lead is what fits, and a token
/// endpoint slower than that makes callers wait for the renewal (never use an expired token).
pub fn schedule(
    lifetime: Duration,
    skew: Duration,
    timeout: Duration,
    ahead: f64,
    jitter: f64,
) -> Schedule {
    let skew = skew.min(lifetime.mul_f64(MAX_SKEW_SHARE));
    let usable_for = lifetime - skew;
    let budget = lifetime.mul_f64(ahead.clamp(0.0, 0.5));
    let spread = lifetime
        .mul_f64(JITTER_SHARE)
        .min(budget / 2)
        .min(MAX_JITTER);
    let lead = timeout.min(budget - spread);
    let renew_after = usable_for.saturating_sub(lead + spread.mul_f64(jitter.clamp(0.0, 1.0)));
    Schedule {
        usable_for,
        renew_after,
    }
}

/// [`schedule`] for a token obtained at `sent_at`, with `[tokens]` settings and a random
/// jitter: `(usable_until, refresh_at)`.
pub(super) fn lifetimes(
    sent_at: Instant,
    expires_in: Duration,
    s: &TokenSettings,
) -> (Instant, Instant) {
    let jitter = rand::rng().random_range(0.0..=1.0);
    let plan = schedule(
        expires_in,
        s.expiry_skew,
        s.request_timeout,
        s.refresh_ahead,
        jitter,
    );
    (sent_at + plan.usable_for, sent_at + plan.renew_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_cases() {
        let (skew, timeout, ahead) = (Duration::from_secs(60), Duration::from_secs(10), 0.08);
        // (lifetime s, usable s, renew from s (jitter 1), renew until s (jitter 0))
        let cases = [
            (10.0, 9.6, 8.8, 9.0),
            (15.0, 14.4, 13.2, 13.5),
            (60.0, 57.6, 52.8, 54.0),
            (300.0, 288.0, 272.0, 278.0),
            (3600.0, 3540.0, 3458.0, 3530.0),
            (86400.0, 86340.0, 86030.0, 86330.0),
        ];
        for (lifetime, usable, early, late) in cases {
            let l = Duration::from_secs_f64(lifetime);
            let at = |j| schedule(l, skew, timeout, ahead, j);
            let close = |a: Duration, b: f64| (a.as_secs_f64() - b).abs() < 1e-6;
            assert!(
                close(at(0.0).usable_for, usable),
                "usable {lifetime}: {:?}",
                at(0.0)
            );
            assert!(
                close(at(1.0).renew_after, early),
                "early {lifetime}: {:?}",
                at(1.0)
            );
            assert!(
                close(at(0.0).renew_after, late),
                "late {lifetime}: {:?}",
                at(0.0)
            );
            // At most 1.15 token requests per lifetime, and the renewal starts at least the
            // timeout before the usable end whenever the lifetime leaves room for it.
            assert!(
                lifetime / at(1.0).renew_after.as_secs_f64() <= 1.15,
                "{lifetime}"
            );
            if lifetime >= 167.0 {
                assert!(
                    at(0.0).usable_for - at(0.0).renew_after >= timeout,
                    "{lifetime}"
                );
            }
        }
    }

    #[test]
    fn schedule_edges() {
        let s = |l: u64, skew: u64, ahead: f64| {
            schedule(
                Duration::from_secs(l),
                Duration::from_secs(skew),
                Duration::from_secs(10),
                ahead,
                0.5,
            )
        };
        // No skew, no refresh ahead: used to the end, renewed when it ends.
        let p = s(4, 0, 0.0);
        assert_eq!(
            (p.usable_for, p.renew_after),
            (Duration::from_secs(4), Duration::from_secs(4))
        );
        // refresh_ahead is capped at half the lifetime, the skew at 4 %.
        let p = s(100, 3600, 0.99);
        assert_eq!(p.usable_for, Duration::from_secs(96));
        assert_eq!(p.renew_after, Duration::from_secs(85), "{p:?}");
        // A one-second token still has a future.
        let p = s(1, 60, 0.08);
        assert!(
            p.renew_after > Duration::ZERO && p.renew_after < p.usable_for,
            "{p:?}"
        );
    }
}
