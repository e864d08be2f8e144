//! `oauth-egress env`: the environment that points an unchanged service at the proxy.
//!
//! Most HTTP stacks read the proxy from `HTTPS_PROXY`/`HTTP_PROXY` (both spellings) and a CA
//! bundle from a variable of their own. The bundle variables (`SSL_CERT_FILE`,
//! `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`) *replace* the default trust store, so pointing
//! them at the proxy's CA alone would break every host the proxy tunnels untouched: those
//! still present their real certificates. So they point at a bundle of the system roots plus
//! the proxy's CA, which this module writes. `NODE_EXTRA_CA_CERTS` adds to Node's roots, so it
//! gets the CA alone. Java reads neither; its flags are printed as a comment.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where Linux distributions and macOS keep the system CA bundle, most common first.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL, CentOS
    "/etc/ssl/ca-bundle.pem",             // openSUSE
    "/etc/ssl/cert.pem",                  // macOS, OpenBSD, Alpine
];

/// How `env` prints its variables (`--format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `export NAME='value'` lines, for `eval "$(oauth-egress env)"`.
    Sh,
    /// `NAME=value` lines, for Docker's `--env-file` and compose's `env_file`.
    Dotenv,
}

/// The variables for one proxy, ready to print.
#[derive(Debug)]
pub struct ClientEnv {
    /// The proxy URL clients should use, e.g. `http://127.0.0.1:3128`.
    pub proxy_url: String,
    /// The proxy's CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// System roots plus the proxy's CA, when a system bundle was found.
    pub bundle: Option<PathBuf>,
}

/// The URL a client on this machine uses for a proxy listening on `listen`: an unspecified
/// address (`0.0.0.0`, `::`) becomes loopback, since it cannot be connected to.
pub fn proxy_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    format!("http://{ip}:{}", listen.port())
}

/// The first system CA bundle of the usual places (Debian, Fedora, openSUSE, macOS) that exists.
pub fn find_system_bundle() -> Option<PathBuf> {
    SYSTEM_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

/// Writes `system` followed by `ca_pem` to `out`, atomically (a reader never sees half a
/// bundle), so it can be rewritten while services run.
pub fn write_bundle(system: &Path, ca_pem: &str, out: &Path) -> io::Result<()> {
    let mut bundle = std::fs::read_to_string(system).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!(
                "cannot read the system CA bundle {}: {err}",
                system.display()
            ),
        )
    })?;
    if !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str("# oauth-egress interception CA\n");
    bundle.push_str(ca_pem);
    write_atomically(out, bundle.as_bytes()).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!(
                "cannot write the CA bundle {}: {err} (choose another place with --bundle)",
                out.display()
            ),
        )
    })
}

/// Writes `bytes` to a fresh, unpredictably named file beside `out` (created with O_EXCL, so
/// a planted file or symlink is never written through), makes it world-readable (a bundle
/// of public certificates), and renames it over `out`.
fn write_atomically(out: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".ca-bundle.")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(out).map_err(|err| err.error)?;
    Ok(())
}

impl ClientEnv {
    /// The variables, in `format`, with comments saying what each is for.
    pub fn render(&self, format: Format) -> String {
        let ca = self.ca_cert.display().to_string();
        let bundle = self
            .bundle
            .as_ref()
            .map(|b| b.display().to_string())
            .unwrap_or_else(|| ca.clone());
        let mut out = String::new();
        let comment = |out: &mut String, text: &str| {
            let _ = writeln!(out, "# {text}");
        };
        comment(
            &mut out,
            &format!("oauth-egress at {}; CA {ca}", self.proxy_url),
        );
        for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
            push(&mut out, format, name, &self.proxy_url);
        }
        comment(&mut out, "Node adds this to its own roots:");
        push(&mut out, format, "NODE_EXTRA_CA_CERTS", &ca);
        if self.bundle.is_some() {
            comment(
                &mut out,
                "these replace the default roots, so they name the system roots plus the proxy's CA:",
            );
        } else {
            comment(
                &mut out,
                "no system CA bundle was found: these name the proxy's CA alone, so hosts the \
                 proxy tunnels untouched will fail verification",
            );
        }
        for name in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
            push(&mut out, format, name, &bundle);
        }
        let (host, port) = split_proxy_url(&self.proxy_url);
        comment(
            &mut out,
            &format!(
                "Java reads none of these: -Dhttps.proxyHost={host} -Dhttps.proxyPort={port} \
                 -Dhttp.proxyHost={host} -Dhttp.proxyPort={port} plus a truststore holding \
                 the CA (README: \"Point your service at it\")"
            ),
        );
        out
    }
}

/// One variable line.
fn push(out: &mut String, format: Format, name: &str, value: &str) {
    let _ = match format {
        Format::Sh => writeln!(out, "export {name}={}", sh_quote(value)),
        Format::Dotenv => writeln!(out, "{name}={value}"),
    };
}

/// Single-quotes `value` for POSIX sh (a `'` becomes `'\''`).
fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// `http://host:port` → (`host`, `port`), for the Java flags.
fn split_proxy_url(url: &str) -> (&str, &str) {
    let authority = url.trim_start_matches("http://");
    match authority.rsplit_once(':') {
        Some((host, port)) => (host.trim_start_matches('[').trim_end_matches(']'), port),
        None => (authority, "80"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_become_loopback() {
        assert_eq!(
            proxy_url("0.0.0.0:3128".parse().unwrap()),
            "http://127.0.0.1:3128"
        );
        assert_eq!(proxy_url("[::]:3128".parse().unwrap()), "http://[::1]:3128");
        assert_eq!(
            proxy_url("10.0.0.5:8080".parse().unwrap()),
            "http://10.0.0.5:8080"
        );
        assert_eq!(
            proxy_url("[::1]:3128".parse().unwrap()),
            "http://[::1]:3128"
        );
    }

    #[test]
    fn sh_output_quotes_and_names_the_bundle() {
        let env = ClientEnv {
            proxy_url: "http://127.0.0.1:3128".into(),
            ca_cert: "/etc/o'e/ca.pem".into(),
            bundle: Some("/etc/o'e/bundle.pem".into()),
        };
        let text = env.render(Format::Sh);
        assert!(text.contains("export HTTPS_PROXY='http://127.0.0.1:3128'\n"));
        assert!(text.contains("export https_proxy='http://127.0.0.1:3128'\n"));
        assert!(text.contains(r"export NODE_EXTRA_CA_CERTS='/etc/o'\''e/ca.pem'"));
        assert!(text.contains(r"export SSL_CERT_FILE='/etc/o'\''e/bundle.pem'"));
        assert!(text.contains("-Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=3128"));
        let dotenv = env.render(Format::Dotenv);
        assert!(dotenv.contains("\nCURL_CA_BUNDLE=/etc/o'e/bundle.pem\n"));
    }

    #[test]
    fn without_a_system_bundle_the_ca_alone_is_named_and_the_risk_said() {
        let env = ClientEnv {
            proxy_url: "http://[::1]:3128".into(),
            ca_cert: "/ca.pem".into(),
            bundle: None,
        };
        let text = env.render(Format::Sh);
        assert!(text.contains("export REQUESTS_CA_BUNDLE='/ca.pem'"));
        assert!(text.contains("tunnels untouched will fail verification"));
        assert!(text.contains("-Dhttps.proxyHost=::1 -Dhttps.proxyPort=3128"));
    }

    #[test]
    fn the_bundle_is_system_roots_then_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("system.pem");
        std::fs::write(&system, "SYSTEM").unwrap();
        let out = dir.path().join("bundle.pem");
        write_bundle(&system, "CA\n", &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "SYSTEM\n# oauth-egress interception CA\nCA\n"
        );
        let err = write_bundle(&dir.path().join("absent"), "CA", &out).unwrap_err();
        assert!(err.to_string().contains("cannot read the system CA bundle"));
    }

    /// The bundle goes through an unpredictable temporary file: one planted at the name a
    /// predictable scheme would use (here a symlink to another file) is never written.
    #[cfg(unix)]
    #[test]
    fn the_bundle_is_never_written_through_a_planted_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("system.pem");
        std::fs::write(&system, "SYSTEM").unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let out = dir.path().join("bundle.pem");
        std::os::unix::fs::symlink(&victim, out.with_extension("pem.tmp")).unwrap();
        write_bundle(&system, "CA\n", &out).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(std::fs::read_to_string(&out).unwrap().ends_with("CA\n"));
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".ca-bundle."))
            .collect();
        assert!(left.is_empty(), "temporary file left behind");
    }
}
