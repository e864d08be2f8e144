//! Token exchange subjects: whose token a route exchanges, and one cached token per subject.
//!
//! The cache key carries a SHA-256 of the subject token, so two callers (or two generations
//! of a rotated workload token) never share a token, and an entry never outlives the subject
//! token's own `exp`. A workload token file is checked for changes at most once a second.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::assertion::unverified_exp;
use super::{Fetcher, TokenKey, TokenRequest, TokenSlot};
use crate::config::SubjectSource;
use crate::error::{Class, Classify};
use crate::secret::{SecretError, SecretSource};
use crate::sync::lock;

/// At most this many subjects are cached per route; expired ones go first.
const MAX_SUBJECTS: usize = 10_000;

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
    slots: Mutex<HashMap<[u8; 32], Arc<TokenSlot>>>,
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
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// These slots, carrying over `previous`'s cached tokens, each in a new slot with this
    /// configuration's request and fetcher.
    pub(super) fn carrying(self, previous: &SubjectSlots) -> SubjectSlots {
        {
            let old = lock(&previous.slots);
            let mut new = lock(&self.slots);
            for (hash, slot) in old.iter() {
                let mut request = self.template.clone();
                request.subject = slot.request().subject.clone();
                request.subject_exp = slot.request().subject_exp;
                let fresh = TokenSlot::new(Arc::new(request), self.fetcher.clone());
                new.insert(*hash, Arc::new(fresh.carrying(slot)));
            }
        }
        self
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
        if slots.len() >= MAX_SUBJECTS {
            let now = crate::jose::unix_now();
            slots.retain(|_, s| s.request().subject_exp.is_some_and(|e| e > now));
            if slots.len() >= MAX_SUBJECTS {
                slots.clear();
            }
        }
        let mut request = self.template.clone();
        request.subject = Some(subject);
        request.subject_exp = exp;
        let slot = Arc::new(TokenSlot::new(Arc::new(request), self.fetcher.clone()));
        slots.insert(hash, slot.clone());
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
