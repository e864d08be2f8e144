//! oauth-egress: an egress forward proxy that gives legacy services OAuth credentials
//! without a line of their code changing.
//!
//! # Layout
//! The life of a request, in file order:
//!
//! | step | file |
//! |---|---|
//! | accept a caller connection (connection limits, `[limits]`), drain on shutdown; idle bounds | `listener.rs`, `drain.rs`, `idle.rs` |
//! | who is calling: `[[caller]]` by peer address or `Proxy-Authorization`, `proxy.callers` | `caller.rs` |
//! | `CONNECT`, absolute-form `http://`/`https://` → intercept / forward / tunnel / deny (`admit`) | `connect.rs` |
//! | or a connection iptables redirected (`[transparent]`): original destination, SNI / `Host` peek, then the same intercept / forward / tunnel / deny | `transparent/` (`rules.rs`: `oauth-egress iptables`) |
//! | where unmatched traffic may go: resolved once, address and port checked, dialled as checked | `destination.rs` |
//! | terminate TLS with a minted leaf, enforce host binding (421) | `intercept.rs`, `ca.rs` |
//! | pick the route for host, port and path | `route.rs`, `host.rs` (patterns, normalisation) |
//! | get the route's token: cache, single flight, refresh ahead | `token/cache.rs` |
//! | on a miss, renewal or 401 with `[cache] backend = "redis"`: the fleet's copy, lock, invalidation | `token/shared/` (`seal.rs`, `redis.rs`, `wire.rs`) |
//! | ask the authorization server | `token/endpoint.rs`, `token/answer.rs`, `token/client_auth.rs` |
//! | inject `Authorization` (and a DPoP proof), send | `forward.rs`, `sender/mod.rs` (`inject`), `replay.rs` (replay copy) |
//! | decide a resend: DPoP nonce, refused token, once per kind | `retry.rs` |
//! | pooled, verified upstream TLS; hop-by-hop headers | `upstream.rs`, `tls.rs` |
//! | turn any failure into the caller's response | `error.rs` |
//! | the access line, `x-request-id`, per-request metrics | `access.rs` |
//!
//! Around it: `access.rs` (the `access` line and request counters), `metrics.rs` (Prometheus counters, served by `admin.rs`), `config/` (figment →
//! validate → [`config::Config`]; one file per section), `name_constraints.rs` (`proxy.ca_name_constraints`), `jose.rs` (jti, base64url, JWK for the
//! signers), `secret.rs` (secret sources, never printable), `client_env.rs` (what
//! `oauth-egress env` prints), `proxy.rs` (the assembled state), `preflight.rs` (the start-up
//! checks `check`, `run` and reload share), `admin.rs` (health, metrics, the status page of `status/`), `sync.rs` (the one lock helper).
//!
//! Not here: the development authorization server, echo API and test PKI live in the
//! `oauth-egress-devserver` crate (`crates/`), used by the tests and, behind the default-on
//! `demo` feature, by the binary's `oauth-egress demo` (`src/demo.rs`, a module of `main.rs`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod admin;
pub mod body;
pub mod ca;
pub mod caller;
pub mod client_env;
pub mod config;
pub mod connect;
pub mod destination;
pub mod drain;
pub mod error;
pub mod forward;
pub mod host;
pub mod idle;
pub mod intercept;
mod jose;
pub mod listener;
pub mod metrics;
pub mod name_constraints;
pub mod path;
pub mod preflight;
pub mod proxy;
mod replay;
mod retry;
pub mod route;
pub mod secret;
pub mod sender;
pub mod server;
pub mod status;
pub mod sync;
pub mod tls;
pub mod token;
pub mod transparent;
pub mod upstream;
