//! `docker/k8s/monitoring/`: the PrometheusRule's rules pass `promtool check rules` and the
//! `promtool test rules` cases (Debian's `prometheus` package; skipped, loudly, without it:
//! `.ci/run` does not install it, 96 MB), and every metric the rules and the Grafana
//! dashboard name is one the proxy exports (README's table).

use std::process::Command;

const RULE: &str = include_str!("../docker/k8s/monitoring/prometheusrule.yaml");
const RULE_TESTS: &str = include_str!("../docker/k8s/monitoring/prometheusrule.test.yaml");
const DASHBOARD: &str = include_str!("../docker/k8s/monitoring/grafana-dashboard.json");
const README: &str = include_str!("../README.md");

/// The PrometheusRule's `spec:`, dedented: a plain Prometheus rule file.
fn rules_file() -> String {
    let spec = RULE.split_once("\nspec:\n").expect("a spec: section").1;
    spec.lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `oauth_egress_*` name in `text`, without histogram suffixes.
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .match_indices("oauth_egress_")
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .map(|n| n.trim_end_matches("_bucket").to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn rules_and_dashboard_name_only_exported_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    assert_eq!(dashboard["uid"], "oauth-egress");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 5);
    for panel in panels {
        assert!(
            panel["title"].is_string() && panel["gridPos"]["w"].is_number(),
            "{panel}"
        );
        assert!(!panel["targets"].as_array().unwrap().is_empty(), "{panel}");
    }
    for name in metric_names(&rules_file())
        .into_iter()
        .chain(metric_names(DASHBOARD))
    {
        assert!(
            README.contains(&format!("`{name}`")),
            "{name} is not in README's metrics table"
        );
    }
}

#[test]
fn promtool_checks_the_rules_and_runs_two_alert_tests() {
    if Command::new("promtool").arg("--version").output().is_err() {
        // .ci/run installs it: in CI a missing promtool is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing in CI (.ci/run installs Debian's prometheus)"
        );
        eprintln!(
            "SKIPPED: promtool not installed (apt-get install --no-install-recommends prometheus); \
             the alert rules were not checked"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules_file()).unwrap();
    std::fs::write(dir.path().join("rules.test.yaml"), RULE_TESTS).unwrap();
    for args in [
        &["check", "rules", "rules.yaml"][..],
        &["test", "rules", "rules.test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
