//! What crosses the wire to Redis: the client (URL, ACL user, password, TLS roots), a
//! token's bytes before sealing, and the invalidation listener.
//!
//! A token's plaintext (sealed before it leaves the process): `scheme (1) | usable_until
//! (8, unix ms) | refresh_at (8, unix ms) | scope length (2, 0xffff for none) | scope |
//! token`. Times travel as wall-clock instants, so any replica can place them on its own clock.

use std::sync::Weak;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::redis::Dialer;
use super::{SharedError, SharedStore};
use crate::config::{cluster_nodes, RedisSettings};
use crate::token::{AccessToken, TokenScheme};

/// The Redis (or Redis Cluster) client for `settings`: the URL's node(s), the ACL user and
/// password, and for `rediss://` / `rediss+cluster://` the trusted roots.
pub(super) fn client(
    settings: &RedisSettings,
    password: Option<&SecretString>,
    roots_pem: Option<Vec<u8>>,
) -> Result<Dialer, SharedError> {
    let Some(urls) = cluster_nodes(&settings.url) else {
        return node_client(&settings.url, settings, password, roots_pem)
            .map(|c| Dialer::One(Box::new(c)));
    };
    let nodes = urls
        .iter()
        .map(|url| node_client(url, settings, password, roots_pem.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut builder = redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
        .connection_timeout(settings.timeout)
        .response_timeout(settings.timeout)
        .retries(1);
    if let Some(user) = &settings.username {
        builder = builder.username(user);
    }
    if let Some(password) = password {
        builder = builder.password(password.expose_secret());
    }
    if settings.url.starts_with("rediss+") {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: roots_pem,
        });
    }
    let cluster = Box::new(builder.build().map_err(url_error)?);
    Ok(Dialer::Cluster { cluster, nodes })
}

fn url_error(err: redis::RedisError) -> SharedError {
    SharedError::Url(err.to_string())
}

/// The client for one Redis at `url`.
fn node_client(
    url: &str,
    settings: &RedisSettings,
    password: Option<&SecretString>,
    roots_pem: Option<Vec<u8>>,
) -> Result<redis::Client, SharedError> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info().map_err(url_error)?;
    let mut redis_info = info.redis_settings().clone();
    if let Some(user) = &settings.username {
        redis_info = redis_info.set_username(user);
    }
    if let Some(password) = password {
        redis_info = redis_info.set_password(password.expose_secret());
    }
    let info = info.set_redis_settings(redis_info);
    if url.starts_with("rediss://") {
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: roots_pem,
        };
        return redis::Client::build_with_tls(info, certs).map_err(url_error);
    }
    redis::Client::open(info).map_err(url_error)
}

fn unix_ms(at: Instant) -> u64 {
    let (now, wall) = (Instant::now(), wall_now());
    let t = if at >= now {
        wall + (at - now)
    } else {
        wall.saturating_sub(now - at)
    };
    u64::try_from(t.as_millis()).unwrap_or(u64::MAX)
}

fn instant(ms: u64) -> Instant {
    let (now, wall) = (Instant::now(), wall_now());
    let t = Duration::from_millis(ms);
    if t >= wall {
        now + (t - wall)
    } else {
        now.checked_sub(wall - t).unwrap_or(now)
    }
}

fn wall_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// `token` as plaintext bytes (wiped on drop).
pub(super) fn encode(token: &AccessToken) -> Zeroizing<Vec<u8>> {
    let header = token.authorization();
    let value = &header.as_bytes()[token.scheme.name().len() + 1..];
    let mut out = Zeroizing::new(Vec::with_capacity(20 + value.len()));
    out.push(u8::from(token.scheme == TokenScheme::Dpop));
    out.extend_from_slice(&unix_ms(token.usable_until).to_be_bytes());
    out.extend_from_slice(&unix_ms(token.refresh_at).to_be_bytes());
    match token.granted_scope.as_deref().filter(|s| s.len() < 0xffff) {
        Some(scope) => {
            out.extend_from_slice(&(scope.len() as u16).to_be_bytes());
            out.extend_from_slice(scope.as_bytes());
        }
        None => out.extend_from_slice(&0xffffu16.to_be_bytes()),
    }
    out.extend_from_slice(value);
    out
}

/// The token `plain` holds, if it is well formed.
pub(super) fn decode(plain: &[u8]) -> Option<AccessToken> {
    let (&dpop, rest) = plain.split_first()?;
    let (usable, rest) = rest.split_at_checked(8)?;
    let (refresh, rest) = rest.split_at_checked(8)?;
    let (len, rest) = rest.split_at_checked(2)?;
    let len = u16::from_be_bytes(len.try_into().ok()?);
    let (scope, rest) = match len {
        0xffff => (None, rest),
        n => {
            let (scope, rest) = rest.split_at_checked(usize::from(n))?;
            (Some(std::str::from_utf8(scope).ok()?.to_string()), rest)
        }
    };
    let value = SecretString::from(std::str::from_utf8(rest).ok()?.to_string());
    AccessToken::new(
        value,
        instant(u64::from_be_bytes(usable.try_into().ok()?)),
        instant(u64::from_be_bytes(refresh.try_into().ok()?)),
        scope,
        dpop == 1,
    )
    .ok()
}

/// Listens for invalidations on `channel` for as long as `store` lives, reconnecting after
/// a pause when Redis goes away; with a cluster, each reconnection tries the next listed
/// node (a `PUBLISH` on any node reaches every node's subscribers), starting at one picked
/// by the process id so a fleet's subscriptions spread over the nodes.
pub(super) fn listen(store: Weak<SharedStore>, clients: Vec<redis::Client>, channel: String) {
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(200);
        let mut turn = std::process::id() as usize;
        while store.strong_count() > 0 {
            let Some(client) = clients.get(turn % clients.len().max(1)) else {
                return;
            };
            turn = turn.wrapping_add(1);
            if let Ok(Ok(mut pubsub)) =
                tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()).await
            {
                if pubsub.subscribe(&channel).await.is_ok() {
                    pause = Duration::from_millis(200);
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let Some(store) = store.upgrade() else { return };
                        if let Ok(text) = message.get_payload::<String>() {
                            store.on_invalidation(&text);
                        }
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_survives_encoding_and_garbage_does_not_decode() {
        let now = Instant::now();
        let cases = [(None, false), (Some("a b".to_string()), true)];
        for (scope, dpop) in cases {
            let t = AccessToken::new(
                "tok.en-1".into(),
                now + Duration::from_secs(60),
                now + Duration::from_secs(50),
                scope.clone(),
                dpop,
            )
            .unwrap();
            let back = decode(&encode(&t)).unwrap();
            assert_eq!(back.authorization(), t.authorization());
            assert_eq!(back.granted_scope, scope);
            let drift =
                back.usable_until.max(t.usable_until) - back.usable_until.min(t.usable_until);
            assert!(drift < Duration::from_millis(5), "{drift:?}");
        }
        for garbage in [&b""[..], b"\x00", b"\x00\x01\x02", &[0u8; 19]] {
            assert!(decode(garbage).is_none());
        }
    }
}
