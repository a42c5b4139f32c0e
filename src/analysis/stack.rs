//! Stacking: across many hosts (or captures), the rows that only a few of
//! them have. A process name, a module, a listening port or a finding that
//! one host in twenty shows is where a responder looks first.

use std::collections::{BTreeMap, BTreeSet};

use memimage::plugins::{Row, Value};

use super::Analysis;

/// One value that few hosts have.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outlier {
    pub plugin: String,
    /// What is compared: `comm`, `module`, `listener`, `finding`.
    pub kind: &'static str,
    pub value: String,
    pub hosts: Vec<String>,
    /// How many hosts were compared for this plugin.
    pub of: usize,
}

/// At most this share of the hosts (and at least one) makes a value rare.
const RARE_SHARE: f64 = 0.2;

/// The values of `plugin`'s rows that stacking compares, with their kind.
fn keys(plugin: &str, rows: &[Row]) -> Option<(&'static str, BTreeSet<String>)> {
    let text = |r: &Row, k: &str| match r.get(k) {
        Some(Value::Str(s)) => Some(s.clone()),
        Some(Value::Int(v)) => Some(v.to_string()),
        Some(Value::UInt(v)) => Some(v.to_string()),
        _ => None,
    };
    let set = |f: &dyn Fn(&Row) -> Option<String>| rows.iter().filter_map(f).collect();
    Some(match plugin {
        "pslist" | "pstree" | "psaux" => ("comm", set(&|r| text(r, "comm"))),
        "lsmod" => ("module", set(&|r| text(r, "name"))),
        "netstat" => (
            "listener",
            set(&|r| {
                (text(r, "state").as_deref() == Some("LISTEN")).then(|| {
                    format!(
                        "{} {}:{}",
                        text(r, "proto").unwrap_or_default(),
                        text(r, "local_addr").unwrap_or_default(),
                        text(r, "local_port").unwrap_or_default()
                    )
                })
            }),
        ),
        // Triage and the integrity checks: rows with a result.
        _ if rows.iter().any(|r| r.get("result").is_some()) => (
            "finding",
            set(&|r| {
                (text(r, "result").as_deref() == Some("finding")).then(|| {
                    format!(
                        "{}: {}",
                        text(r, "check").unwrap_or_default(),
                        text(r, "what").unwrap_or_default()
                    )
                })
            }),
        ),
        _ => return None,
    })
}

/// The rare values of every plugin that at least two hosts ran, rarest
/// first. Findings are listed even when every host has them.
pub fn outliers(analyses: &[(String, &Analysis)]) -> Vec<Outlier> {
    let mut by_plugin: BTreeMap<(String, &'static str), BTreeMap<String, Vec<String>>> =
        BTreeMap::new();
    let mut hosts_per_plugin: BTreeMap<String, usize> = BTreeMap::new();
    for (host, analysis) in analyses {
        for (plugin, rows) in &analysis.results {
            let Some((kind, values)) = keys(plugin, rows) else {
                continue;
            };
            *hosts_per_plugin.entry(plugin.clone()).or_default() += 1;
            let slot = by_plugin.entry((plugin.clone(), kind)).or_default();
            for v in values {
                slot.entry(v).or_default().push(host.clone());
            }
        }
    }
    let mut out = Vec::new();
    for ((plugin, kind), values) in by_plugin {
        let of = hosts_per_plugin.get(&plugin).copied().unwrap_or(0);
        if of < 2 && kind != "finding" {
            continue;
        }
        let rare = ((of as f64 * RARE_SHARE).floor() as usize).max(1);
        for (value, hosts) in values {
            if kind == "finding" || (hosts.len() <= rare && hosts.len() < of) {
                out.push(Outlier {
                    plugin: plugin.clone(),
                    kind,
                    value,
                    hosts,
                    of,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        (a.hosts.len() * b.of)
            .cmp(&(b.hosts.len() * a.of))
            .then_with(|| (&a.plugin, &a.value).cmp(&(&b.plugin, &b.value)))
    });
    out
}

/// The outliers as a table.
pub fn render(outliers: &[Outlier]) -> String {
    if outliers.is_empty() {
        return "no outliers: every value is shared by more than a few hosts\n".into();
    }
    let mut s = String::new();
    for o in outliers {
        s.push_str(&format!(
            "{:<8} {:<8} {:<40} on {} of {}: {}\n",
            o.plugin,
            o.kind,
            o.value,
            o.hosts.len(),
            o.of,
            o.hosts.join(", ")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&'static str, &str)]) -> Row {
        Row {
            fields: pairs
                .iter()
                .map(|(k, v)| (*k, Value::Str(v.to_string())))
                .collect(),
        }
    }

    fn host(comms: &[&str], modules: &[&str], ports: &[&str]) -> Analysis {
        Analysis {
            results: vec![
                (
                    "pslist".into(),
                    comms.iter().map(|c| row(&[("comm", c)])).collect(),
                ),
                (
                    "lsmod".into(),
                    modules.iter().map(|m| row(&[("name", m)])).collect(),
                ),
                (
                    "netstat".into(),
                    ports
                        .iter()
                        .map(|p| {
                            row(&[
                                ("proto", "TCP"),
                                ("local_addr", "0.0.0.0"),
                                ("local_port", p),
                                ("state", "LISTEN"),
                            ])
                        })
                        .collect(),
                ),
            ],
        }
    }

    #[test]
    fn the_one_odd_host_is_named_and_shared_values_are_not() {
        let normal = host(&["init", "sshd", "nginx"], &["e1000"], &["22", "80"]);
        let odd = host(
            &["init", "sshd", "nginx", "xmrig"],
            &["e1000", "diamorphine"],
            &["22", "80", "4444"],
        );
        let mut analyses: Vec<(String, &Analysis)> =
            (0..9).map(|i| (format!("web-{i}"), &normal)).collect();
        analyses.push(("web-9".into(), &odd));
        let found = outliers(&analyses);
        let values: Vec<(&str, &str, Vec<String>)> = found
            .iter()
            .map(|o| (o.kind, o.value.as_str(), o.hosts.clone()))
            .collect();
        let web9 = vec!["web-9".to_string()];
        assert_eq!(
            values,
            [
                ("module", "diamorphine", web9.clone()),
                ("listener", "TCP 0.0.0.0:4444", web9.clone()),
                ("comm", "xmrig", web9),
            ]
        );
        assert!(found.iter().all(|o| o.of == 10));
    }

    #[test]
    fn identical_hosts_have_no_outliers_and_one_host_is_not_stacked() {
        let a = host(&["init", "sshd"], &["e1000"], &["22"]);
        let same: Vec<(String, &Analysis)> = (0..3).map(|i| (format!("h{i}"), &a)).collect();
        assert!(outliers(&same).is_empty());
        assert!(outliers(&[("only".to_string(), &a)]).is_empty());
    }

    #[test]
    fn findings_are_listed_even_when_every_host_has_them() {
        let triage = |what: &str| Analysis {
            results: vec![(
                "triage".into(),
                vec![row(&[
                    ("check", "check_syscall"),
                    ("result", "finding"),
                    ("what", what),
                ])],
            )],
        };
        let (a, b) = (
            triage("x64_sys_call case 62 hooked"),
            triage("x64_sys_call case 62 hooked"),
        );
        let found = outliers(&[("a".into(), &a), ("b".into(), &b)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].hosts, ["a", "b"]);
        assert_eq!(found[0].kind, "finding");
    }
}
