//! `ca export` (the CA certificate as PEM, DER or a PKCS#12 truststore for Java) and
//! `ca bundle` (the system roots plus the CA, one PEM file: what `env` writes, on its own).

use std::io::Write;
use std::path::PathBuf;

use super::{load, load_ca, ConfigArg, Failure};

/// The export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CaFormat {
    /// PEM text (curl, Python, Node, Go, OpenSSL).
    Pem,
    /// Binary DER (Windows, Android, some appliances).
    Der,
    /// A PKCS#12 truststore holding the CA as a trusted certificate (Java: `-Djavax.net.ssl.trustStore=ca.p12 -Djavax.net.ssl.trustStorePassword=changeit`).
    P12,
}

#[derive(clap::Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// What to write.
    #[arg(long, value_enum, default_value = "pem")]
    format: CaFormat,
    /// The PKCS#12 password (`changeit`, the JDK's default, when not given).
    #[arg(long, default_value = "changeit")]
    password: String,
}

#[derive(clap::Args)]
pub(crate) struct BundleArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Where to write it (default: `ca-bundle.pem` beside `proxy.ca_cert`, or stdout when
    /// the CA comes from a variable).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// The system CA bundle to start from (default: the first of the usual places that exists).
    #[arg(long)]
    system_roots: Option<PathBuf>,
}

/// The alias of the CA in the truststore.
const ALIAS: &str = "oauth-egress-ca";

/// The CA certificate in `format`.
pub(crate) fn encode(
    ca: &oauth_egress::intercept::ca::CertificateAuthority,
    format: CaFormat,
    password: &str,
) -> Result<Vec<u8>, Failure> {
    let der = || {
        ca.cert_der()
            .ok_or_else(|| Failure::Other(anyhow::anyhow!("the CA certificate is not valid PEM")))
    };
    match format {
        CaFormat::Pem => Ok(ca.cert_pem().as_bytes().to_vec()),
        CaFormat::Der => der(),
        CaFormat::P12 => {
            let cert = p12_keystore::Certificate::from_der(&der()?)
                .map_err(|e| Failure::Other(anyhow::anyhow!("PKCS#12: {e}")))?;
            let mut store = p12_keystore::KeyStore::new();
            store.add_entry(ALIAS, p12_keystore::KeyStoreEntry::Certificate(cert));
            store
                .writer(password)
                .write()
                .map_err(|e| Failure::Other(anyhow::anyhow!("PKCS#12: {e}")))
        }
    }
}

pub(crate) fn export(args: &ExportArgs) -> Result<(), Failure> {
    let config = load(&args.config.config)?;
    let ca = load_ca(&config)?;
    let bytes = encode(&ca, args.format, &args.password)?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| Failure::Other(anyhow::anyhow!("writing to stdout: {e}")))
}

pub(crate) fn bundle(args: &BundleArgs) -> Result<(), Failure> {
    use oauth_egress::client_env;
    let config = load(&args.config.config)?;
    let ca = load_ca(&config)?;
    let system = args
        .system_roots
        .clone()
        .or_else(client_env::find_system_bundle)
        .ok_or_else(|| {
            Failure::Other(anyhow::anyhow!(
                "no system CA bundle found in the usual places; pass --system-roots FILE"
            ))
        })?;
    let out = args
        .out
        .clone()
        .or_else(|| config.proxy.ca_cert.path().map(|p| p.with_file_name("ca-bundle.pem")))
        .ok_or_else(|| {
            Failure::Config(format!(
                "{}: proxy.ca_cert is {}, so there is no directory to put the bundle beside; pass --out FILE",
                config.origin, config.proxy.ca_cert
            ))
        })?;
    client_env::write_bundle(&system, ca.cert_pem(), &out)
        .map_err(|err| Failure::Other(anyhow::anyhow!("{}: {err}", out.display())))?;
    println!("{}", out.display());
    Ok(())
}
