//! Token request parameters a route or client adds: `token_params` (extra form fields, the
//! ones the proxy owns refused) and list-valued `resource` / `audience`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Findings;

/// `"one"` or `["one", "two"]`, as written.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values, in order, duplicates dropped.
    pub(super) fn into_vec(this: Option<OneOrMany>) -> Vec<String> {
        let mut values = match this {
            None => Vec::new(),
            Some(OneOrMany::One(v)) => vec![v],
            Some(OneOrMany::Many(vs)) => vs,
        };
        let mut seen = std::collections::HashSet::new();
        values.retain(|v| seen.insert(v.clone()));
        values
    }
}

/// Form parameters the proxy writes itself: the grant's, client authentication's, and the
/// ones with a key of their own (`scopes`, `audience`, `resource`). A `token_params` entry
/// may not set one, so no config can send a second `grant_type` or override a credential.
pub const OWNED_PARAMS: &[(&str, &str)] = &[
    ("grant_type", "grant"),
    ("client_id", "clients.NAME.client_id"),
    ("client_secret", "clients.NAME.client_secret"),
    ("client_assertion", "clients.NAME.auth"),
    ("client_assertion_type", "clients.NAME.auth"),
    ("scope", "scopes"),
    ("audience", "audience"),
    ("resource", "resource"),
    ("refresh_token", "refresh_token"),
    ("subject_token", "subject_token"),
    ("subject_token_type", "subject_token_type"),
    ("actor_token", "actor_token"),
    ("actor_token_type", "actor_token_type"),
    ("requested_token_type", "requested_token_type"),
    ("assertion", "grant = \"jwt_bearer\""),
    ("code", "a grant the proxy does not run"),
    ("code_verifier", "a grant the proxy does not run"),
    ("redirect_uri", "a grant the proxy does not run"),
    ("username", "a grant the proxy does not run"),
    ("password", "a grant the proxy does not run"),
    ("device_code", "a grant the proxy does not run"),
];

/// `token_params`, checked: no name the proxy owns, no empty name.
pub(super) fn check_token_params(
    params: &BTreeMap<String, String>,
    at: &str,
    found: &mut Findings,
) {
    for name in params.keys() {
        if name.is_empty() {
            found.problem(format!("{at}: token_params has an empty parameter name"));
        } else if let Some((_, key)) = OWNED_PARAMS.iter().find(|(owned, _)| owned == name) {
            found.problem(format!(
                "{at}: token_params may not set {name:?}: the proxy writes it (from {key})"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::from_toml;

    fn config(client_extra: &str, route_extra: &str) -> String {
        format!(
            "[clients.c]\ntoken_endpoint = \"https://idp.example/token\"\nclient_id = \"c\"\n\
             auth = \"none\"\n{client_extra}\n[[route]]\nhost = \"api.example\"\nclient = \"c\"\n{route_extra}\n"
        )
    }

    #[test]
    fn token_params_merge_route_over_client_and_refuse_owned_names() {
        let dir = tempfile::tempdir().unwrap();
        let text = config(
            "token_params = { tenant = \"t1\", organization = \"org_a\" }",
            "token_params = { organization = \"org_b\" }",
        );
        let c = from_toml(&text, dir.path(), "case").unwrap();
        let merged: Vec<(&str, &str)> = c.routes[0]
            .token_params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(merged, [("organization", "org_b"), ("tenant", "t1")]);
        for (client, route, words) in [
            (
                "token_params = { grant_type = \"password\" }",
                "",
                "clients.c: token_params may not set \"grant_type\"",
            ),
            (
                "",
                "token_params = { client_assertion = \"x\" }",
                "token_params may not set \"client_assertion\"",
            ),
            ("", "token_params = { scope = \"a\" }", "(from scopes)"),
            (
                "",
                "token_params = { \"\" = \"a\" }",
                "empty parameter name",
            ),
        ] {
            let err = from_toml(&config(client, route), dir.path(), "case")
                .unwrap_err()
                .to_string();
            assert!(err.contains(words), "{err}");
        }
    }

    #[test]
    fn resource_and_audience_take_one_or_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[&str], &[&str]); 3] = [
            ("resource = \"https://a.example/\"", &["https://a.example/"], &[]),
            (
                "resource = [\"https://a.example/\", \"https://b.example/\", \"https://a.example/\"]\naudience = [\"x\", \"y\"]",
                &["https://a.example/", "https://b.example/"],
                &["x", "y"],
            ),
            ("audience = \"x\"", &[], &["x"]),
        ];
        for (lines, resource, audience) in cases {
            let c = from_toml(&config("", lines), dir.path(), "case").unwrap();
            assert_eq!(c.routes[0].resource, resource, "{lines}");
            assert_eq!(c.routes[0].audience, audience, "{lines}");
        }
        let err = from_toml(
            &config("", "resource = [\"https://a/\", \"not a uri\"]"),
            dir.path(),
            "case",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"not a uri\""), "{err}");
    }
}
