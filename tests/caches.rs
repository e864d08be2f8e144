//! Bounded caches: a token exchange the authorization server refused for the caller's token is
//! answered from the cache for a short while (the LRU caps themselves are unit-tested).

mod support;

use std::time::Duration;

use oauth_egress_devserver::WorkloadIssuer;
use support::{Harness, Setup, SCOPE};

#[tokio::test]
async fn a_refused_caller_token_is_not_exchanged_again_at_once() {
    let h = Harness::start(Setup {
        route_extra: format!(
            "scopes = [\"{SCOPE}\"]\ngrant = \"token_exchange\"\nsubject_token = \"inbound\""
        ),
        ..Setup::default()
    })
    .await;
    let trusted = WorkloadIssuer::new("https://workloads.test").unwrap();
    h.auth
        .trust_issuer(trusted.iss(), trusted.public_key().unwrap());
    // A token from an issuer the authorization server does not trust: refused (invalid_grant).
    let stranger = WorkloadIssuer::new("https://elsewhere.test")
        .unwrap()
        .mint("mallory", "proxy", Duration::from_secs(300))
        .unwrap();
    let client = h.client();
    for _ in 0..5 {
        let res = client
            .get(h.api_url())
            .bearer_auth(&stranger)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        let body = res.text().await.unwrap();
        assert!(body.contains("invalid_grant"), "{body}");
        assert!(!body.contains(&stranger), "{body}");
    }
    assert_eq!(h.auth.token_requests(), 1, "one exchange for five requests");
    // Another caller is not affected.
    let alice = trusted
        .mint("alice", "proxy", Duration::from_secs(300))
        .unwrap();
    let res = client
        .get(h.api_url())
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(h.auth.token_requests(), 2);
    // Briefly: after the pause the same token is tried again.
    tokio::time::sleep(Duration::from_millis(5100)).await;
    let res = client
        .get(h.api_url())
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(h.auth.token_requests(), 3);
    h.stop().await;
}
