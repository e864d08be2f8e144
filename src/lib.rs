//! oauth-egress: an egress forward proxy that gives legacy services OAuth credentials
//! without a line of their code changing.
//!
//! # Layout
//! The life of a request, in file order:
//!
//! | step | file |
//! |---|---|
//! | accept a caller connection, drain on shutdown | `listener.rs` |
//! | `CONNECT`, absolute-form `http://`/`https://` → intercept / forward / tunnel / deny (`admit`) | `connect.rs` |
//! | terminate TLS with a minted leaf, enforce host binding (421) | `intercept/mod.rs`, `intercept/ca.rs` |
//! | pick the route for host, port and path | `route.rs` |
//! | get the route's token: cache, single flight, refresh ahead | `token/cache.rs` |
//! | ask the authorization server | `token/endpoint.rs`, `token/client_auth.rs` |
//! | inject `Authorization`, send, retry once on 401 | `forward.rs`, `body.rs` (replay copy) |
//! | pooled, verified upstream TLS; hop-by-hop headers | `upstream.rs`, `tls.rs` |
//! | turn any failure into the caller's response | `error.rs` |
//!
//! Around it: `metrics.rs` (Prometheus counters, served by `admin.rs`), `config/` (figment → validate → [`config::Config`]; `client.rs`, `route.rs`), `secret.rs` (secret
//! sources, never printable), `client_env.rs` (what `oauth-egress env` prints), `proxy.rs` (the assembled state), `preflight.rs` (the start-up checks `check`, `run` and reload share), `admin.rs` (health).
//!
//! Not here: the development authorization server, echo API and test PKI live in the
//! `oauth-egress-devserver` crate (`crates/`), used by the tests and, behind the default-on
//! `demo` feature, by the binary's `oauth-egress demo` (`src/demo.rs`, a module of `main.rs`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod body;
pub mod client_env;
pub mod config;
pub mod connect;
pub mod error;
pub mod forward;
pub mod intercept;
pub mod listener;
pub mod metrics;
pub mod preflight;
pub mod proxy;
pub mod route;
pub mod secret;
pub mod sender;
pub mod server;
pub mod tls;
pub mod token;
pub mod upstream;
