//! `proxy.ca_name_constraints`: the DNS subtrees a generated interception CA may sign for
//! (X.509 name constraints, RFC 5280 §4.2.1.10), so a leaked CA key cannot impersonate any
//! other host to a client that trusts the CA. Every IP address is excluded too: a constrained
//! CA signs for names only (without that, constraints on names leave IP SANs unconstrained).
//!
//! A subtree `payments.example` covers `payments.example` and every name under it
//! (`api.payments.example`), never `xpayments.example`. A leaf: config checks routes against
//! it, `ca.rs` writes and reads the extension.

use crate::host::HostPattern;

/// Whether every name `route` can match lies in one of the `subtrees` (normalized names).
pub fn covers(subtrees: &[String], route: &HostPattern) -> bool {
    let under = |name: &str, tree: &str| {
        name == tree
            || name
                .strip_suffix(tree)
                .is_some_and(|head| head.ends_with('.'))
    };
    match route {
        HostPattern::Exact(host) => {
            crate::destination::literal(host).is_none() && subtrees.iter().any(|t| under(host, t))
        }
        // `.example` (from `*.example`) is covered when `example` itself is under a subtree.
        HostPattern::Wildcard(suffix) => {
            let parent = suffix.trim_start_matches('.');
            subtrees.iter().any(|t| under(parent, t))
        }
    }
}

/// The extension a constrained CA carries: these DNS subtrees permitted, all IPs excluded.
pub fn extension(subtrees: &[String]) -> rcgen::NameConstraints {
    use rcgen::{CidrSubnet, GeneralSubtree};
    rcgen::NameConstraints {
        permitted_subtrees: subtrees
            .iter()
            .cloned()
            .map(GeneralSubtree::DnsName)
            .collect(),
        excluded_subtrees: vec![
            GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
            GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
        ],
    }
}

/// The permitted DNS subtrees a CA certificate (DER) carries, sorted; empty when it has no
/// name constraints. `None` when the certificate cannot be parsed.
pub fn carried(der: &[u8]) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let Some(ext) = cert.name_constraints().ok()? else {
        return Some(Vec::new());
    };
    let mut names: Vec<String> = (ext.value.permitted_subtrees.iter().flatten())
        .filter_map(|s| match s.base {
            GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    names.sort();
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subtree_covers_its_name_and_the_names_under_it() {
        let trees = vec!["payments.example".to_string(), "crm.example".to_string()];
        let cases = [
            ("payments.example", true),
            ("api.payments.example", true),
            ("*.payments.example", true),
            ("*.api.payments.example", true),
            ("xpayments.example", false),
            ("payments.example.evil", false),
            ("example", false),
            ("*.example", false),
            ("other.example", false),
            ("127.0.0.1", false),
            ("[::1]", false),
        ];
        for (host, want) in cases {
            let pattern = HostPattern::parse(host).unwrap();
            assert_eq!(covers(&trees, &pattern), want, "{host}");
        }
    }
}
