//! Requests and 401 retries per route over the last few minutes: a ring of per-minute
//! buckets per route (five, so memory is fixed per route and old minutes fall out on their
//! own), for the status page. Metrics keep the lifetime totals; this answers "what is it
//! doing now" without a Prometheus.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Minutes kept.
pub const WINDOW_MINUTES: u64 = 5;

/// One minute's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    /// Minutes since [`Activity`]'s start; buckets of older minutes count as empty.
    minute: u64,
    requests: u64,
    retries_401: u64,
}

/// A route's ring.
#[derive(Debug, Default)]
struct Ring([Bucket; WINDOW_MINUTES as usize]);

impl Ring {
    fn add(&mut self, minute: u64, retried_401: bool) {
        let bucket = &mut self.0[(minute % WINDOW_MINUTES) as usize];
        if bucket.minute != minute {
            *bucket = Bucket {
                minute,
                ..Bucket::default()
            };
        }
        bucket.requests += 1;
        bucket.retries_401 += u64::from(retried_401);
    }

    fn window(&self, now: u64) -> Window {
        self.0
            .iter()
            .filter(|b| b.minute + WINDOW_MINUTES > now && b.minute <= now)
            .fold(Window::default(), |w, b| Window {
                requests: w.requests + b.requests,
                retries_401: w.retries_401 + b.retries_401,
            })
    }
}

/// A route's counts over the last [`WINDOW_MINUTES`] minutes (the current one included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Window {
    /// Requests answered on the route.
    pub requests: u64,
    /// Of them, resent once with a fresh token after a 401.
    pub retries_401: u64,
}

/// Every route's ring, keyed by route name; kept across reloads, pruned to the routes in
/// force (so it is bounded by the route table).
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    routes: Mutex<HashMap<String, Ring>>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            start: Instant::now(),
            routes: Mutex::default(),
        }
    }
}

impl Activity {
    fn minute_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_secs() / 60
    }

    /// A request on `route` was answered (`retried_401`: resent after a 401).
    pub fn record(&self, route: &str, retried_401: bool) {
        self.record_at(route, retried_401, Instant::now());
    }

    fn record_at(&self, route: &str, retried_401: bool, at: Instant) {
        let minute = self.minute_at(at);
        let mut routes = crate::sync::lock(&self.routes);
        match routes.get_mut(route) {
            Some(ring) => ring.add(minute, retried_401),
            // A route name not yet seen: only names of the route table reach here (the
            // forwarder records routed requests only), so this stays bounded.
            None => {
                let mut ring = Ring::default();
                ring.add(minute, retried_401);
                routes.insert(route.to_owned(), ring);
            }
        }
    }

    /// `route`'s counts over the window ending now.
    pub fn window(&self, route: &str) -> Window {
        self.window_at(route, Instant::now())
    }

    fn window_at(&self, route: &str, at: Instant) -> Window {
        let now = self.minute_at(at);
        crate::sync::lock(&self.routes)
            .get(route)
            .map(|ring| ring.window(now))
            .unwrap_or_default()
    }

    /// Forgets routes no longer configured (after a reload).
    pub fn retain<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::HashSet<&str> = names.into_iter().collect();
        crate::sync::lock(&self.routes).retain(|name, _| keep.contains(name.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn window_counts_the_last_five_minutes_only() {
        let activity = Activity::default();
        let t0 = activity.start;
        let min = |m: u64| t0 + Duration::from_secs(m * 60 + 1);
        // (minute of the request, retried)
        for (m, retried) in [(0, false), (0, true), (2, false), (4, true), (6, false)] {
            activity.record_at("api", retried, min(m));
        }
        // (minute looked at, requests, retries) — the window is [now - 4, now].
        let cases = [
            (0, 2, 1),
            (4, 4, 2),
            (5, 2, 1), // minute 0 fell out
            (6, 3, 1), // minute 6 overwrote minute 1's slot; 2, 4, 6 remain
            (10, 1, 0),
            (11, 0, 0),
        ];
        for (m, requests, retries_401) in cases {
            assert_eq!(
                activity.window_at("api", min(m)),
                Window {
                    requests,
                    retries_401
                },
                "at minute {m}"
            );
        }
        assert_eq!(activity.window_at("other", min(0)), Window::default());
        activity.retain(["other"]);
        assert_eq!(activity.window_at("api", min(6)), Window::default());
    }
}
