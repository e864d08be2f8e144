//! Token exchange subjects: whose token a route exchanges, and one cached token per subject.
//!
//! The cache key carries a SHA-256 of the subject token, so two callers (or two generations
//! of a rotated workload token) never share a token, and an entry never outlives the subject
//! token's own `exp`. A workload token file is checked for changes at most once a second.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use lru::LruCache;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::assertion::unverified_exp;
use super::{Fetcher, TokenKey, TokenRequest, TokenSlot};
use crate::config::SubjectSource;
use crate::error::{Class, Classify};
use crate::secret::{SecretError, SecretSource};
use crate::sync::lock;

/// At most this many subjects are cached per route; past it, expired ones go first, then the
/// least recently used (a busy caller's token stays however many others come and go).
const MAX_SUBJECTS: NonZeroUsize = NonZeroUsize::new(10_000).unwrap();

/// Where a route's token slot comes from.
#[derive(Debug)]
pub enum RouteToken {
    /// One token for every request.
    Fixed(Arc<TokenSlot>),
    /// One token per subject token (token exchange).
    PerSubject(Arc<SubjectSlots>),
}

/// Why no subject token could be had for a request.
#[derive(Debug, thiserror::Error)]
pub enum SubjectError {
    /// The caller sent no bearer token on an on-behalf-of route.
    #[error("this route exchanges the caller's own token: send `Authorization: Bearer <token>`")]
    Missing,
    /// The caller's token has expired.
    #[error("the caller's token has expired; get a new one")]
    Expired,
    /// The workload token has expired.
    #[error("workload token in {location}: the token has expired (exp is in the past)")]
    WorkloadExpired {
        /// Where it lives.
        location: SecretSource,
    },
    /// The workload token could not be read.
    #[error("workload token in {location}: {source}")]
    WorkloadUnreadable {
        /// Where it lives.
        location: SecretSource,
        /// Why.
        source: SecretError,
    },
}

impl SubjectError {
    /// Whether the caller can fix it (401) rather than the operator (502).
    pub fn is_callers(&self) -> bool {
        matches!(self, SubjectError::Missing | SubjectError::Expired)
    }
}

impl Classify for SubjectError {
    fn class(&self) -> Class {
        if self.is_callers() {
            Class::Caller
        } else {
            Class::Internal
        }
    }
}

impl RouteToken {
    /// The slot for this request.
    pub fn slot(&self, headers: &HeaderMap) -> Result<Arc<TokenSlot>, SubjectError> {
        match self {
            RouteToken::Fixed(slot) => Ok(slot.clone()),
            RouteToken::PerSubject(subjects) => subjects.slot(headers),
        }
    }
}

struct Workload {
    source: SecretSource,
    state: Mutex<Option<WorkloadState>>,
}

struct WorkloadState {
    checked: Instant,
    modified: Option<SystemTime>,
    len: u64,
    token: Arc<SecretString>,
}

/// Token slots for a token-exchange route, one per subject token.
pub struct SubjectSlots {
    template: TokenRequest,
    base_key: TokenKey,
    fetcher: Arc<Fetcher>,
    workload: Option<Workload>,
    slots: Mutex<Subjects<Arc<TokenSlot>>>,
}

/// The cached slots by subject-token hash with their subject's `exp`, and when a full cache
/// may next be swept for expired subjects (a sweep walks every entry, so at most once a second).
struct Subjects<T> {
    slots: LruCache<[u8; 32], (T, Option<u64>)>,
    next_sweep: u64,
}

impl<T> Subjects<T> {
    fn new(cap: NonZeroUsize) -> Subjects<T> {
        Subjects {
            slots: LruCache::new(cap),
            next_sweep: 0,
        }
    }

    /// Caches `slot`, making room first: expired subjects (if a sweep is due), else the
    /// least recently used one.
    fn put(&mut self, hash: [u8; 32], slot: T, exp: Option<u64>) {
        let now = crate::jose::unix_now();
        if self.slots.len() >= self.slots.cap().get() && now >= self.next_sweep {
            self.next_sweep = now + 1;
            let expired: Vec<[u8; 32]> = (self.slots.iter())
                .filter(|(_, (_, exp))| exp.is_some_and(|e| e <= now))
                .map(|(hash, _)| *hash)
                .collect();
            for hash in expired {
                self.slots.pop(&hash);
            }
        }
        self.slots.put(hash, (slot, exp));
    }

    /// The slot cached for `hash`, now the most recently used.
    fn get(&mut self, hash: &[u8; 32]) -> Option<&T> {
        self.slots.get(hash).map(|(slot, _)| slot)
    }
}

impl std::fmt::Debug for SubjectSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectSlots")
            .field("key", &self.base_key)
            .finish()
    }
}

impl SubjectSlots {
    /// Slots for `template` (whose subject is filled per request) from `source`.
    pub(super) fn new(
        template: TokenRequest,
        source: &SubjectSource,
        fetcher: Arc<Fetcher>,
    ) -> SubjectSlots {
        let workload = match source {
            SubjectSource::Inbound => None,
            SubjectSource::Workload(source) => Some(Workload {
                source: source.clone(),
                state: Mutex::new(None),
            }),
        };
        SubjectSlots {
            base_key: TokenKey::of(&template),
            template,
            fetcher,
            workload,
            slots: Mutex::new(Subjects::new(MAX_SUBJECTS)),
        }
    }

    /// These slots, carrying over `previous`'s cached tokens, each in a new slot with this
    /// configuration's request and fetcher.
    pub(super) fn carrying(self, previous: &SubjectSlots) -> SubjectSlots {
        {
            let old = lock(&previous.slots);
            let mut new = lock(&self.slots);
            // Least recently used first, so the new cache keeps the old one's order.
            for (hash, (slot, exp)) in old.slots.iter().rev() {
                let mut request = self.template.clone();
                request.subject = slot.request().subject.clone();
                request.subject_exp = *exp;
                let fresh = TokenSlot::new(Arc::new(request), self.fetcher.clone());
                new.put(*hash, Arc::new(fresh.carrying(slot)), *exp);
            }
        }
        self
    }

    /// How many subjects hold a slot, and the view of the worst of them (the most recently
    /// used among equals), for the status page.
    pub fn summary(&self) -> (usize, Option<super::view::SlotView>) {
        let slots = lock(&self.slots);
        let worst = slots
            .slots
            .iter()
            .map(|(_, (slot, _))| slot.view())
            .reduce(|a, b| {
                if b.state.severity() > a.state.severity() {
                    b
                } else {
                    a
                }
            });
        (slots.slots.len(), worst)
    }

    fn slot(&self, headers: &HeaderMap) -> Result<Arc<TokenSlot>, SubjectError> {
        let subject = match &self.workload {
            None => Arc::new(inbound_bearer(headers).ok_or(SubjectError::Missing)?),
            Some(w) => w.current()?,
        };
        let exp = unverified_exp(subject.expose_secret());
        if exp.is_some_and(|exp| exp <= crate::jose::unix_now()) {
            return Err(match &self.workload {
                None => SubjectError::Expired,
                Some(w) => SubjectError::WorkloadExpired {
                    location: w.source.clone(),
                },
            });
        }
        let hash = super::subject_hash(&subject);
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.get(&hash) {
            return Ok(slot.clone());
        }
        let mut request = self.template.clone();
        request.subject = Some(subject);
        request.subject_exp = exp;
        let slot = Arc::new(TokenSlot::new(Arc::new(request), self.fetcher.clone()));
        slots.put(hash, slot.clone(), exp);
        Ok(slot)
    }
}

/// The caller's `Authorization: Bearer` token.
fn inbound_bearer(headers: &HeaderMap) -> Option<SecretString> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && super::is_token68(token))
        .then(|| SecretString::from(token.to_string()))
}

impl Workload {
    /// The current token, re-read when the file changed (checked at most once a second).
    fn current(&self) -> Result<Arc<SecretString>, SubjectError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        if let Some(s) = state.as_ref() {
            if now.duration_since(s.checked) < Duration::from_secs(1) {
                return Ok(s.token.clone());
            }
        }
        let (modified, len) = match &self.source {
            SecretSource::File(path) => file_stamp(path),
            _ => (None, 0),
        };
        if let Some(s) = state.as_mut() {
            if matches!(self.source, SecretSource::File(_))
                && s.modified == modified
                && s.len == len
            {
                s.checked = now;
                return Ok(s.token.clone());
            }
        }
        let token = self
            .source
            .load()
            .map_err(|source| SubjectError::WorkloadUnreadable {
                location: self.source.clone(),
                source,
            })?;
        let token = Arc::new(SecretString::from(token.expose_secret().trim().to_string()));
        *state = Some(WorkloadState {
            checked: now,
            modified,
            len,
            token: token.clone(),
        });
        Ok(token)
    }
}

fn file_stamp(path: &PathBuf) -> (Option<SystemTime>, u64) {
    match std::fs::metadata(path) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(cap: usize) -> Subjects<u32> {
        Subjects::new(NonZeroUsize::new(cap).unwrap())
    }

    #[test]
    fn a_full_subject_cache_drops_the_least_recently_used_subject_only() {
        let mut subjects = cache(2);
        subjects.put([1; 32], 1, None);
        subjects.put([2; 32], 2, None);
        assert_eq!(subjects.get(&[1; 32]), Some(&1));
        subjects.put([3; 32], 3, None);
        assert_eq!(subjects.get(&[1; 32]), Some(&1), "recently used, kept");
        assert_eq!(subjects.get(&[2; 32]), None, "least recently used, dropped");
        assert_eq!(subjects.get(&[3; 32]), Some(&3));
    }

    #[test]
    fn a_full_subject_cache_drops_expired_subjects_before_used_ones() {
        let now = crate::jose::unix_now();
        let mut subjects = cache(3);
        subjects.put([1; 32], 1, Some(now + 3600));
        subjects.put([2; 32], 2, Some(now - 1));
        subjects.put([3; 32], 3, None);
        subjects.put([4; 32], 4, Some(now + 3600));
        // [1] was the least recently used, but [2] had expired: it went instead.
        assert_eq!(subjects.get(&[2; 32]), None);
        for n in [1, 3, 4] {
            assert_eq!(subjects.get(&[n; 32]), Some(&u32::from(n)));
        }
    }
}
