//! Keys that name a secret or a file, as written: `RawSecret` (`{ env }` or `{ file }`, never
//! a literal) and `RawSource` (a path, `{ file }` or `{ env }`, never the content itself).
//! Both deserialize by hand so a secret written in the wrong place is refused without its
//! value appearing in the error message.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::Findings;
use crate::secret::SecretSource;

/// `{ env = "NAME" }` or `{ file = "path" }`. Deserialized by hand so that a literal secret
/// written by mistake is refused without its value appearing in the error message.
pub(super) enum RawSecret {
    Env(String),
    File(PathBuf),
    /// `{ exec = [program, args...], cache_secs = N }`.
    Exec(Vec<String>, u64),
}

impl RawSecret {
    pub(super) fn into_source(self, base: &Path) -> SecretSource {
        match self {
            RawSecret::Env(name) => SecretSource::Env(name),
            RawSecret::File(path) => SecretSource::File(resolve(base, path)),
            RawSecret::Exec(argv, cache_secs) => SecretSource::Exec(std::sync::Arc::new(
                crate::secret::exec::Exec::new(argv, std::time::Duration::from_secs(cache_secs)),
            )),
        }
    }
}

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        const LITERAL: &str =
            "a secret must be a table { env = \"NAME\" }, { file = \"path\" } or { exec = [...] }; \
                               literal values are refused so secrets stay out of config files";
        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = RawSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{ env = \"NAME\" } or { file = \"path\" }")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<RawSecret, E> {
                Err(E::custom(LITERAL))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawSecret, E> {
                Err(E::custom(LITERAL))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawSecret, E> {
                Err(E::custom(LITERAL))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawSecret, E> {
                Err(E::custom(LITERAL))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawSecret, E> {
                Err(E::custom(LITERAL))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSecret, A::Error> {
                const KEYS: &[&str] = &["env", "file", "exec", "cache_secs"];
                let mut found = None;
                let mut cache_secs = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value = match key.as_str() {
                        "env" => RawSecret::Env(map.next_value()?),
                        "file" => RawSecret::File(map.next_value::<String>()?.into()),
                        "exec" => RawSecret::Exec(map.next_value()?, 0),
                        "cache_secs" => {
                            cache_secs = Some(map.next_value::<u64>()?);
                            continue;
                        }
                        other => return Err(de::Error::unknown_field(other, KEYS)),
                    };
                    if found.replace(value).is_some() {
                        return Err(de::Error::custom(
                            "a secret has exactly one of `env`, `file` or `exec`",
                        ));
                    }
                }
                match (found, cache_secs) {
                    (Some(RawSecret::Exec(argv, _)), cache) => {
                        if argv.first().is_none_or(String::is_empty) {
                            return Err(de::Error::custom(
                                "exec needs the program and its arguments, e.g. exec = [\"vault\", \"kv\", \"get\", \"-field=secret\", \"kv/app\"]",
                            ));
                        }
                        Ok(RawSecret::Exec(argv, cache.unwrap_or(0)))
                    }
                    (Some(_), Some(_)) => Err(de::Error::custom("cache_secs goes with exec only")),
                    (Some(secret), None) => Ok(secret),
                    (None, _) => Err(de::Error::custom("a secret needs `env`, `file` or `exec`")),
                }
            }
        }
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// A key that names a file: `"path"` or `{ file = "path" }`, and, where the key allows it,
/// `{ env = "NAME" }` (the variable holds the content, e.g. PEM from a Kubernetes Secret).
/// Deserialized by hand so that PEM text or a token written in place of a path is refused
/// without its value appearing in the error message.
#[derive(Debug)]
pub(super) enum RawSource {
    /// A path, either form.
    File(PathBuf),
    /// An environment variable holding the content.
    Env(String),
}

impl RawSource {
    /// The source, relative paths resolved against `base`.
    pub(super) fn into_source(self, base: &Path) -> SecretSource {
        match self {
            RawSource::Env(name) => SecretSource::Env(name),
            RawSource::File(path) => SecretSource::File(resolve(base, path)),
        }
    }

    /// The path, for keys that must be a file; `why` says why `{ env }` cannot do.
    pub(super) fn into_path(
        self,
        base: &Path,
        at: &str,
        why: &str,
        found: &mut Findings,
    ) -> Option<PathBuf> {
        match self {
            RawSource::File(path) => Some(resolve(base, path)),
            RawSource::Env(name) => {
                found.problem(format!(
                    "{at} = {{ env = \"{name}\" }} cannot be used: {why}; give a path (\"path\" or {{ file = \"path\" }})"
                ));
                None
            }
        }
    }
}

/// Whether a string written where a path belongs is rather the content: PEM, or something
/// shaped like a token (a JWT, or 32+ random-looking token characters with no `/` or `.`).
fn looks_like_content(s: &str) -> bool {
    if s.contains('\n') || s.contains("-----BEGIN") {
        return true;
    }
    let token_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '='));
    let jwt = s.split('.').count() == 3 && s.split('.').all(|p| p.len() >= 8);
    // Random-looking: hex, or digits with both cases (a file name is rarely either).
    let random = s.chars().all(|c| c.is_ascii_hexdigit())
        || (s.chars().any(|c| c.is_ascii_digit())
            && s.chars().any(|c| c.is_ascii_uppercase())
            && s.chars().any(|c| c.is_ascii_lowercase()));
    token_chars && s.len() >= 32 && (jwt || (!s.contains('.') && random))
}

impl<'de> Deserialize<'de> for RawSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SourceVisitor;
        const CONTENT: &str = "this looks like a key, certificate or token, not a path: \
             content stays out of config files; put it in a file (\"path\" or { file = \"path\" }) \
             or an environment variable ({ env = \"NAME\" }); a file name of this shape can be \
             written as ./NAME";
        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = RawSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path: \"path\", { file = \"path\" } or { env = \"NAME\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSource, E> {
                if v.is_empty() {
                    return Err(E::custom("the path is empty"));
                }
                if looks_like_content(v) {
                    return Err(E::custom(CONTENT));
                }
                Ok(RawSource::File(v.into()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSource, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value = match key.as_str() {
                        "env" => RawSource::Env(map.next_value()?),
                        "file" => RawSource::File(map.next_value::<String>()?.into()),
                        other => return Err(de::Error::unknown_field(other, &["env", "file"])),
                    };
                    if found.replace(value).is_some() {
                        return Err(de::Error::custom("give exactly one of `env` or `file`"));
                    }
                }
                found.ok_or_else(|| de::Error::custom("give `file = \"path\"` or `env = \"NAME\"`"))
            }
        }
        deserializer.deserialize_any(SourceVisitor)
    }
}

/// `path` against `base` unless it is absolute.
pub(super) fn resolve(base: &Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{from_toml, ClientConfig, Config, Grant, SubjectSource, TokenExchange};

    /// One key that names a file: the TOML it goes in (`{v}` is the value) and how to read
    /// the parsed source back (`file:PATH` or `env:NAME`).
    struct Key {
        name: &'static str,
        toml: &'static str,
        parsed: fn(&Config) -> String,
        /// Whether `{ env }` is refused, and the word the refusal must contain.
        env_refused: Option<&'static str>,
    }

    fn client(config: &Config) -> &ClientConfig {
        &config.clients["c"]
    }

    fn shown(source: &Option<SecretSource>) -> String {
        format!("{:?}", source.as_ref().expect("parsed"))
    }

    const CLIENT: &str = "[clients.c]\ntoken_endpoint = \"https://idp.example/token\"\n\
        client_id = \"c\"\nauth = \"private_key_jwt\"\n";
    const ROUTE: &str = "[[route]]\nhost = \"api.example\"\nclient = \"c\"\n";

    fn keys() -> Vec<Key> {
        vec![
            Key {
                name: "proxy.ca_cert",
                toml: "[proxy]\nca_cert = {v}\nca_key = \"absent.key\"\n",
                parsed: |c| format!("{:?}", c.proxy.ca_cert),
                env_refused: None,
            },
            Key {
                name: "proxy.ca_key",
                toml: "[proxy]\nca_key = {v}\nca_cert = \"absent.pem\"\n",
                parsed: |c| format!("{:?}", c.proxy.ca_key),
                env_refused: None,
            },
            Key {
                name: "proxy.upstream_roots",
                toml: "[proxy]\nupstream_roots = [{v}]\n",
                parsed: |c| format!("{:?}", c.proxy.upstream_roots[0]),
                env_refused: None,
            },
            Key {
                name: "client_cert",
                toml: "private_key = \"k.pem\"\nclient_cert = {v}\nclient_key = \"c.key\"\n",
                parsed: |c| shown(&client(c).client_cert),
                env_refused: None,
            },
            Key {
                name: "client_key",
                toml: "private_key = \"k.pem\"\nclient_key = {v}\nclient_cert = \"c.pem\"\n",
                parsed: |c| shown(&client(c).client_key),
                env_refused: None,
            },
            Key {
                name: "private_key",
                toml: "private_key = {v}\n",
                parsed: |c| shown(&client(c).private_key),
                env_refused: None,
            },
            Key {
                name: "assertion_cert",
                toml: "private_key = \"k.pem\"\nassertion_cert = {v}\n",
                parsed: |c| shown(&client(c).assertion_cert),
                env_refused: None,
            },
            Key {
                name: "dpop_key",
                toml: "private_key = \"k.pem\"\ndpop_key = {v}\n",
                parsed: |c| shown(&client(c).dpop_key),
                env_refused: None,
            },
            Key {
                name: "refresh_token",
                toml: "private_key = \"k.pem\"\nROUTE\ngrant = \"refresh_token\"\nrefresh_token = {v}\n",
                parsed: |c| match &c.routes[0].grant {
                    Grant::RefreshToken { file } => format!("file:{}", file.display()),
                    other => panic!("{other:?}"),
                },
                env_refused: Some("written back"),
            },
            Key {
                name: "subject_token",
                toml: "private_key = \"k.pem\"\nROUTE\ngrant = \"token_exchange\"\nsubject_token = {v}\n",
                parsed: |c| match &c.routes[0].grant {
                    Grant::TokenExchange(TokenExchange {
                        subject: SubjectSource::Workload(s),
                        ..
                    }) => format!("{s:?}"),
                    other => panic!("{other:?}"),
                },
                env_refused: None,
            },
            Key {
                name: "actor_token",
                toml: "private_key = \"k.pem\"\nROUTE\ngrant = \"token_exchange\"\n\
                       subject_token = \"inbound\"\nactor_token = {v}\n",
                parsed: |c| match &c.routes[0].grant {
                    Grant::TokenExchange(TokenExchange {
                        actor: Some((s, _)),
                        ..
                    }) => format!("{s:?}"),
                    other => panic!("{other:?}"),
                },
                env_refused: None,
            },
        ]
    }

    /// The whole config for `key` with value `v`: a client, a route, the key where it goes.
    fn config_text(key: &Key, v: &str) -> String {
        let body = key.toml.replace("{v}", v).replace("ROUTE\n", ROUTE);
        if key.name.starts_with("proxy.") {
            format!("{body}{CLIENT}private_key = \"k.pem\"\n")
        } else {
            format!("{CLIENT}{body}")
        }
    }

    #[test]
    fn every_file_key_takes_a_path_a_file_table_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        // upstream_roots are read while validating: give them a real certificate.
        let cert = crate::secret::test_keys::certificate();
        std::fs::write(base.join("roots.pem"), &cert).unwrap();
        let var = "OAUTH_EGRESS_TEST_CONFIG_SOURCE_PEM";
        std::env::set_var(var, &cert);
        for key in keys() {
            // Only upstream_roots must exist; the CA files must not (both absent is valid).
            let file = match key.name {
                "proxy.upstream_roots" => "roots.pem",
                _ => "material.pem",
            };
            let path = base.join(file);
            let forms = [
                ("string", format!("\"{file}\"")),
                ("file table", format!("{{ file = \"{file}\" }}")),
                ("absolute", format!("\"{}\"", path.display())),
                ("env table", format!("{{ env = \"{var}\" }}")),
            ];
            for (form, value) in &forms {
                let text = config_text(&key, value);
                let result = from_toml(&text, base, "case");
                let label = format!("{} as {form}", key.name);
                match (form.starts_with("env"), key.env_refused) {
                    (true, Some(word)) => {
                        let err = result.expect_err(&label).to_string();
                        assert!(
                            err.contains(key.name.trim_start_matches("proxy.")),
                            "{label}: {err}"
                        );
                        assert!(err.contains(word), "{label}: {err}");
                    }
                    (true, None) => {
                        let config = result.unwrap_or_else(|e| panic!("{label}: {e}\n{text}"));
                        assert_eq!((key.parsed)(&config), format!("env:{var}"), "{label}");
                    }
                    (false, _) => {
                        let config = result.unwrap_or_else(|e| panic!("{label}: {e}\n{text}"));
                        assert_eq!(
                            (key.parsed)(&config),
                            format!("file:{}", path.display()),
                            "{label}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn content_written_where_a_path_belongs_is_refused_unechoed() {
        let dir = tempfile::tempdir().unwrap();
        let pem = "-----BEGIN PRIVATE KEY-----\\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\\n-----END PRIVATE KEY-----";
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ3b3JrbG9hZCJ9.c2lnbmF0dXJlLWJ5dGVz";
        let opaque = "gho_16C7e42F292c6912E7710c838347Ae178B4a";
        for key in keys() {
            for secret in [pem, jwt, opaque] {
                let text = config_text(&key, &format!("\"{secret}\""));
                let err = from_toml(&text, dir.path(), "case")
                    .expect_err(key.name)
                    .to_string();
                assert!(err.contains("not a path"), "{}: {err}", key.name);
                for part in ["MIGHAgEA", "eyJzdWIi", "16C7e42F"] {
                    assert!(!err.contains(part), "{}: {err}", key.name);
                }
            }
        }
        // Path-shaped names stay paths.
        for fine in [
            "tokens/actor.jwt",
            "sa-token",
            "./a-very-long-file-name-without-any-dot",
            "billing-service-account-token-file",
        ] {
            assert!(!looks_like_content(fine), "{fine}");
        }
    }
}
