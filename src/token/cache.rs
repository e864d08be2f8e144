//! One token's life in the cache.
//!
//! ```text
//!            get()                     get() after refresh_at         get() after usable_until
//!  empty ──► fetch (single flight) ──► fresh ──► serve + renew in the ──► expired: wait for a
//!                                                background (once)        fetch; never served
//! ```
//! - Single flight: while a fetch is under way every caller awaits the same future.
//! - Refresh ahead: in the last part of its usable life the token keeps being served while one
//!   background fetch replaces it; a failed renewal is retried after a short pause.
//! - A waiter never gets a token already past its usable end (a fetch slower than the
//!   token's life): it gets [`TokenErrorKind::Late`] instead.
//! - Invalidation (after a 401) clears the token only if it is still the cached one, and bumps
//!   an epoch so that a fetch that started before it can never put its result back. It
//!   happens at most once per cooldown: a resource path that refuses every token costs one
//!   token request per cooldown, not one per call.
//! - With a shared store (`[cache] backend = "redis"`), a miss or a renewal asks the fleet
//!   first (`shared/`); a hit never does. An invalidation also clears the fleet's copy, and
//!   another replica's invalidation drops ours ([`TokenSlot::drop_refused`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::time::Instant;

use super::shared::{token_hash, Names, SharedStore};
use super::view::{FailureRecord, FetchRecord, SlotView, TokenState};
use super::{AccessToken, Fetcher, TokenError, TokenErrorKind, TokenKey, TokenRequest};

type FetchResult = Result<Arc<AccessToken>, Arc<TokenError>>;

/// How a token was obtained, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Served from the cache.
    Hit,
    /// Waited for a token request.
    Miss,
}

/// The cached token for one [`TokenKey`].
pub struct TokenSlot {
    key: TokenKey,
    request: Arc<TokenRequest>,
    fetcher: Arc<Fetcher>,
    shared: Option<(Arc<SharedStore>, Names)>,
    state: Mutex<State>,
}

impl std::fmt::Debug for TokenSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSlot").field("key", &self.key).finish()
    }
}

#[derive(Default)]
struct State {
    token: Option<Arc<AccessToken>>,
    inflight: Option<Shared<BoxFuture<'static, FetchResult>>>,
    epoch: u64,
    /// After a failed background renewal, no new one before this instant.
    renew_not_before: Option<Instant>,
    /// When a 401 last cleared the token (invalidations are rationed).
    invalidated_at: Option<Instant>,
    /// A subject token the authorization server refused, and when: answered from here for
    /// [`REFUSED_SUBJECT_TTL`].
    refused: Option<(Instant, Arc<TokenError>)>,
    /// The hash of the token last refused by a resource server: never taken from the shared
    /// store again (until a fetch succeeds).
    rejected: Option<[u8; 32]>,
    /// The last token request (for the status page).
    last_fetch: Option<FetchRecord>,
    /// The last failed one, kept after later successes.
    last_error: Option<FailureRecord>,
}

/// How long a token exchange refused for its subject token (an OAuth error answer, e.g.
/// `invalid_grant`) is answered from the cache, so a flood of requests carrying the same bad
/// token costs one token request per this pause, not one per request.
const REFUSED_SUBJECT_TTL: Duration = Duration::from_secs(5);

/// A failed background renewal is retried after this pause (or a quarter of the remaining
/// usable life, whichever is shorter), so a down server is not hammered by every request.
const RENEW_RETRY_PAUSE: Duration = Duration::from_secs(5);

impl TokenSlot {
    pub(super) fn new(request: Arc<TokenRequest>, fetcher: Arc<Fetcher>) -> TokenSlot {
        let key = TokenKey::of(&request);
        let shared = fetcher
            .shared()
            .and_then(|store| Some((store.clone(), store.names(&key)?)));
        TokenSlot {
            key,
            request,
            fetcher,
            shared,
            state: Mutex::new(State::default()),
        }
    }

    /// What this slot holds tokens for.
    pub fn key(&self) -> &TokenKey {
        &self.key
    }

    /// What its token requests ask for.
    pub fn request(&self) -> &TokenRequest {
        &self.request
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// A token usable now: the cached one, or the result of the (single) fetch under way.
    pub async fn get(self: &Arc<Self>) -> Result<(Arc<AccessToken>, Lookup), Arc<TokenError>> {
        let pending = {
            let mut st = self.lock();
            let now = Instant::now();
            if let Some(token) = st.token.clone() {
                if token.is_usable_at(now) {
                    if now >= token.refresh_at
                        && st.inflight.is_none()
                        && st.renew_not_before.is_none_or(|t| now >= t)
                    {
                        tracing::debug!(client = %self.key.client, "renewing token ahead of expiry");
                        crate::metrics::refresh_ahead(&self.key.client);
                        // The task runs on its own; the shared handle stays in `inflight`.
                        drop(self.start_fetch(&mut st, true));
                    }
                    return Ok((token, Lookup::Hit));
                }
                st.token = None;
            }
            if let Some((at, err)) = &st.refused {
                if st.inflight.is_none() && now.saturating_duration_since(*at) < REFUSED_SUBJECT_TTL
                {
                    return Err(err.clone());
                }
            }
            match &st.inflight {
                Some(fetch) => fetch.clone(),
                None => self.start_fetch(&mut st, false),
            }
        };
        let token = pending.await?;
        // A fetch slower than the token's usable life (or a token capped by an `exp` that is
        // nearly past) must not hand a waiter a token it may no longer send.
        if !token.is_usable_at(Instant::now()) {
            return Err(Arc::new(TokenError::new(
                &self.key.client,
                TokenErrorKind::Late,
            )));
        }
        Ok((token, Lookup::Miss))
    }

    /// A slot for the same key in a new configuration: its own (current) request and fetcher,
    /// carrying over only `previous`'s cached token, if still usable.
    pub(super) fn carrying(self, previous: &TokenSlot) -> TokenSlot {
        let old = previous.lock();
        let token = old.token.clone().filter(|t| t.is_usable_at(Instant::now()));
        {
            let mut st = self.lock();
            st.token = token;
            // The status page keeps the slot's history across a reload.
            st.last_fetch = old.last_fetch.clone();
            st.last_error = old.last_error.clone();
        }
        drop(old);
        self
    }

    /// Whether a usable token is cached right now (readiness; never waits or fetches).
    pub fn has_usable_token(&self) -> bool {
        self.lock()
            .token
            .as_ref()
            .is_some_and(|t| t.is_usable_at(Instant::now()))
    }

    /// What the status page shows of this slot (never the token).
    pub fn view(&self) -> SlotView {
        let st = self.lock();
        let now = Instant::now();
        let usable = st.token.as_ref().filter(|t| t.is_usable_at(now));
        SlotView {
            state: TokenState::of(
                usable.is_some(),
                st.inflight.is_some(),
                st.last_fetch.as_ref().is_some_and(|f| !f.ok),
            ),
            expires_in: usable.map(|t| t.usable_until.saturating_duration_since(now)),
            last_fetch: st.last_fetch.clone(),
            last_error: st.last_error.clone(),
        }
    }

    /// Forgets `token` if it is still the cached one (after the resource server refused it)
    /// and no invalidation happened in the last `cooldown`. Returns whether it was forgotten.
    /// A fetch started before this call will not store its result.
    ///
    /// The cooldown bounds what a path that refuses every token costs: one token request per
    /// cooldown (and, on a `refresh_token` route, one rotation), not one per call.
    pub fn invalidate(&self, token: &Arc<AccessToken>, cooldown: Duration) -> bool {
        let hash = token_hash(token);
        {
            let mut st = self.lock();
            let now = Instant::now();
            let cooling = st
                .invalidated_at
                .is_some_and(|at| now.saturating_duration_since(at) < cooldown);
            if cooling || !st.token.as_ref().is_some_and(|t| Arc::ptr_eq(t, token)) {
                return false;
            }
            st.token = None;
            st.inflight = None;
            st.epoch += 1;
            st.invalidated_at = Some(now);
            st.rejected = Some(hash);
        }
        if let Some((store, names)) = &self.shared {
            store.invalidated(names, hash);
        }
        true
    }

    /// Another replica's resource server refused a token: drop ours if `is_it` says it is
    /// the same one, and never take it from the shared store again.
    pub(super) fn drop_refused(&self, is_it: impl Fn(&AccessToken) -> bool) {
        let mut st = self.lock();
        if let Some(token) = st.token.take_if(|t| is_it(t)) {
            tracing::debug!(client = %self.key.client, "another replica's token was refused; dropping ours");
            st.rejected = Some(token_hash(&token));
        }
    }

    /// A token from the fleet, or fetched here (under the fleet's lock when shared).
    async fn obtain(
        self: &Arc<Self>,
        started: Instant,
        background: bool,
        rejected: Option<[u8; 32]>,
    ) -> Result<AccessToken, TokenError> {
        let fetch = |seed| self.fetcher.fetch(&self.request, started, seed);
        match &self.shared {
            Some((store, names)) => {
                store.register(names, self);
                store.obtain(names, background, rejected, fetch).await
            }
            None => fetch(None).await.result,
        }
    }

    fn start_fetch(
        self: &Arc<Self>,
        st: &mut State,
        background: bool,
    ) -> Shared<BoxFuture<'static, FetchResult>> {
        let (epoch, rejected) = (st.epoch, st.rejected);
        let slot = self.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let result = slot
                .obtain(started, background, rejected)
                .await
                .map(Arc::new)
                .map_err(Arc::new);
            slot.finish(epoch, &result, background, started.elapsed());
            result
        });
        let client = self.key.client.clone();
        let fut: BoxFuture<'static, FetchResult> = async move {
            task.await.unwrap_or_else(|join| {
                let error =
                    TokenError::new(&client, TokenErrorKind::Internal("the fetch task ended"));
                Err(Arc::new(error.because(join)))
            })
        }
        .boxed();
        let shared = fut.shared();
        st.inflight = Some(shared.clone());
        shared
    }

    fn finish(&self, epoch: u64, result: &FetchResult, background: bool, latency: Duration) {
        let mut st = self.lock();
        let at = std::time::SystemTime::now();
        st.last_fetch = Some(FetchRecord {
            at,
            latency,
            ok: result.is_ok(),
        });
        if let Err(err) = result {
            st.last_error = Some(FailureRecord::of(err, at));
        }
        if st.epoch != epoch {
            // Invalidated while we were fetching: the answer may be the refused token.
            return;
        }
        st.inflight = None;
        match result {
            Ok(token) => {
                st.token = Some(token.clone());
                st.renew_not_before = None;
                st.refused = None;
                st.rejected = None;
            }
            Err(err) => {
                let refused = matches!(
                    crate::error::Classify::class(&**err),
                    crate::error::Class::Refused
                );
                if refused && self.request.subject.is_some() {
                    st.refused = Some((Instant::now(), err.clone()));
                }
                if background {
                    let now = Instant::now();
                    let remaining = st.token.as_ref().map_or(Duration::ZERO, |t| {
                        t.usable_until.saturating_duration_since(now)
                    });
                    st.renew_not_before = Some(now + RENEW_RETRY_PAUSE.min(remaining / 4));
                }
                tracing::warn!(client = %self.key.client, error = %err, background, "token request failed");
            }
        }
    }
}
