//! The test-facing knobs and records of [`AuthServer`] beyond the basics:
//! client registration, trust anchors for token exchange and JWT bearer, refresh
//! tokens, discovery, the mTLS endpoint alias and per-grant counters.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use jsonwebtoken::Algorithm;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;

use crate::auth_server::{serve, AuthServer, TOKEN_PATH};
use crate::clients::{ClientRegistration, JwtPublicKey};
use crate::discovery::{DiscoveryMode, OAUTH_METADATA_PATH, OIDC_METADATA_PATH};
use crate::{lock, mtls, BoxError, TestPki};

impl AuthServer {
    /// Registers `client`, replacing any client with the same id.
    pub fn register_client(&self, client: ClientRegistration) {
        let mut clients = lock(&self.shared.clients);
        clients.retain(|c| c.id != client.id);
        clients.push(client);
    }

    /// Token exchange: trusts subject and actor tokens whose `iss` is `iss` and
    /// that verify with `key` (ES256 for EC keys, RS256/PS256 for RSA keys).
    /// The server always trusts its own access tokens.
    pub fn trust_issuer(&self, iss: &str, key: JwtPublicKey) {
        lock(&self.shared.trusted_issuers).insert(iss.to_string(), key);
    }

    /// JWT bearer grant: accepts assertions whose `iss` is `iss`, signed with
    /// `alg` by `key`. Several keys per issuer may be registered.
    pub fn trust_assertion_key(
        &self,
        iss: &str,
        key: JwtPublicKey,
        alg: Algorithm,
    ) -> Result<(), BoxError> {
        if !key.supports(alg) {
            return Err(format!("the key cannot verify {alg:?}").into());
        }
        lock(&self.shared.assertion_keys)
            .entry(iss.to_string())
            .or_default()
            .push((key, alg));
        Ok(())
    }

    /// Issues a refresh token for `client_id` with `scope` (out of band, as if an
    /// earlier grant had returned it); it starts a new rotation family.
    pub fn issue_refresh_token(&self, client_id: &str, scope: Option<&str>) -> String {
        lock(&self.shared.refresh).issue(client_id, scope.map(str::to_string))
    }

    /// Whether redeeming a refresh token returns a new one and kills the old one
    /// (default on). Off: no `refresh_token` in the response, the old one stays valid.
    pub fn set_rotate_refresh_tokens(&self, rotate: bool) {
        self.shared.settings().rotate_refresh_tokens = rotate;
    }

    /// Reads `client_secret_basic` credentials without form-decoding them, as Glewlwyd does
    /// (RFC 6749 §2.3.1 says to decode): a secret with reserved characters then fails unless
    /// the client sends it raw.
    pub fn set_basic_raw(&self, raw: bool) {
        self.shared.settings().basic_raw = raw;
    }

    /// Sets `fields` in the next `n` success answers of any grant, after the grant ran (a
    /// refresh token is rotated all the same); a `null` field is removed. Simulates servers
    /// whose answers are odd: `expires_in: 0`, an unknown `token_type`, a huge body.
    pub fn patch_next_answers(&self, n: usize, fields: serde_json::Value) {
        let fields = match fields {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        self.shared.settings().answer_patch = (n > 0).then_some((n, fields));
    }

    /// How many `refresh_token` grant requests reached the grant (any outcome;
    /// successes are counted in [`AuthServer::grants`]).
    pub fn refresh_grants(&self) -> usize {
        self.shared.refresh_grants.load(Ordering::SeqCst)
    }

    /// Issued access tokens by `grant_type` (`client_credentials`, `refresh_token`,
    /// and the token exchange and JWT bearer URNs).
    pub fn grants(&self) -> HashMap<String, usize> {
        self.shared.settings().grants.clone()
    }

    /// The last client assertion received (verified or not), as
    /// `{"header": {...}, "claims": {...}}`.
    pub fn last_assertion(&self) -> Option<serde_json::Value> {
        self.shared.settings().last_assertion.clone()
    }

    /// The `sub` of the last subject token that verified in a token exchange.
    pub fn last_subject_sub(&self) -> Option<String> {
        self.shared.settings().last_subject_sub.clone()
    }

    /// Which discovery documents are served (default [`DiscoveryMode::Both`]).
    pub fn set_discovery(&self, mode: DiscoveryMode) {
        self.shared.settings().discovery = mode;
    }

    /// Advertises `issuer` instead of the real issuer in the discovery documents
    /// (`None` restores the real one); tokens keep the real `iss`.
    pub fn set_advertised_issuer(&self, issuer: Option<String>) {
        self.shared.settings().advertised_issuer = issuer;
    }

    /// Advertises exactly `methods` as `token_endpoint_auth_methods_supported`
    /// (what is accepted does not change).
    pub fn set_advertised_auth_methods(&self, methods: Vec<String>) {
        self.shared.settings().advertised_auth_methods = Some(methods);
    }

    /// Advertises every supported authentication method again (the default).
    pub fn reset_advertised_auth_methods(&self) {
        self.shared.settings().advertised_auth_methods = None;
    }

    /// How many `GET`s of either discovery document arrived (including 404s).
    pub fn discovery_requests(&self) -> usize {
        self.shared.discovery_requests.load(Ordering::SeqCst)
    }

    /// `{issuer}/.well-known/openid-configuration`.
    pub fn openid_configuration_url(&self) -> String {
        format!("{}{OIDC_METADATA_PATH}", self.shared.issuer)
    }

    /// `{issuer}/.well-known/oauth-authorization-server`.
    pub fn oauth_metadata_url(&self) -> String {
        format!("{}{OAUTH_METADATA_PATH}", self.shared.issuer)
    }

    /// Starts the mTLS endpoint alias (RFC 8705 §5) on `listener`: the same routes
    /// over TLS with a leaf from `pki` for `server_names` (which must cover the
    /// public host), REQUIRING a client certificate issued by `client_ca`.
    /// `tls_client_auth` clients can only authenticate there; the other methods
    /// work there too. Returns the alias token endpoint, also advertised as
    /// `mtls_endpoint_aliases.token_endpoint`. Calling it again replaces nothing:
    /// each call adds a listener, and the last one is advertised.
    pub fn enable_mtls(
        &self,
        listener: TcpListener,
        pki: &TestPki,
        server_names: &[&str],
        client_ca: CertificateDer<'static>,
    ) -> Result<String, BoxError> {
        let port = listener.local_addr()?.port();
        let (chain, key) = pki.leaf(server_names)?;
        let tls = mtls::server_config(chain, key, client_ca)?;
        let endpoint = format!("https://{}:{port}{TOKEN_PATH}", self.shared.host);
        let task = serve(listener, tls, &self.shared, endpoint.clone());
        lock(&self.extra_tasks).push(task);
        *lock(&self.shared.mtls_endpoint) = Some(endpoint.clone());
        tracing::info!(%endpoint, "development authorization server mTLS alias listening");
        Ok(endpoint)
    }

    /// The token endpoint of the mTLS alias, once [`AuthServer::enable_mtls`] ran.
    pub fn mtls_token_endpoint(&self) -> Option<String> {
        lock(&self.shared.mtls_endpoint).clone()
    }
}
