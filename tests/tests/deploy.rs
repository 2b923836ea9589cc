//! The deploy/ manifests: every kustomization renders with `kubectl kustomize`, every rendered
//! object deserializes into its k8s-openapi type, the DaemonSet keeps its security policy, the
//! embedded agent config is one the agent accepts, and the PrometheusRule passes
//! `promtool check rules` and `promtool test rules`.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Namespace, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

const KUSTOMIZATIONS: [&str; 3] = [
    "deploy/base",
    "deploy/overlays/prometheus-operator",
    "deploy/overlays/kubecost",
];

fn render(dir: &str) -> Result<Vec<Value>> {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join(dir))
        .output()
        .context("running kubectl kustomize (kubectl with kustomize)")?;
    ensure!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .map_err(|e| anyhow::anyhow!("rendered {dir} is not YAML: {e}"))?;
    Ok(docs)
}

/// Deserializes every object into its typed form (unknown fields make serde_json fail only for
/// types that deny them, so also compare the round trip).
fn check_types(dir: &str, docs: &[Value]) -> Result<()> {
    fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Result<()> {
        let t: T = serde_json::from_value(v.clone())?;
        let back = serde_json::to_value(&t)?;
        // Every field we wrote survived: nothing was misspelled or misplaced.
        let lost = missing(v, &back);
        ensure!(lost.is_empty(), "fields not in the type: {lost:?}");
        Ok(())
    }
    for v in docs {
        let kind = v["kind"].as_str().unwrap_or("");
        let name = v["metadata"]["name"].as_str().unwrap_or("");
        let r = match kind {
            "Namespace" => typed::<Namespace>(v),
            "ServiceAccount" => typed::<ServiceAccount>(v),
            "ClusterRole" => typed::<ClusterRole>(v),
            "ClusterRoleBinding" => typed::<ClusterRoleBinding>(v),
            "ConfigMap" => typed::<ConfigMap>(v),
            "DaemonSet" => typed::<DaemonSet>(v),
            "Service" => typed::<Service>(v),
            // Prometheus Operator CRDs: not in k8s-openapi; checked by shape below.
            "PodMonitor" | "ServiceMonitor" | "PrometheusRule" => {
                ensure!(
                    v["apiVersion"] == "monitoring.coreos.com/v1",
                    "{kind} {name}: apiVersion"
                );
                Ok(())
            }
            other => bail!("{dir}: unexpected kind {other}"),
        };
        r.with_context(|| format!("{dir}: {kind} {name}"))?;
    }
    Ok(())
}

/// Paths present in `written` but not in `typed` (after a typed round trip).
fn missing(written: &Value, typed: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(a: &Value, b: &Value, path: String, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for (k, v) in x {
                    match y.get(k) {
                        Some(w) => walk(v, w, format!("{path}.{k}"), out),
                        None if v.is_null() => {}
                        None => out.push(format!("{path}.{k}")),
                    }
                }
            }
            (Value::Array(x), Value::Array(y)) => {
                for (i, (v, w)) in x.iter().zip(y).enumerate() {
                    walk(v, w, format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    walk(written, typed, String::new(), &mut out);
    out
}

fn daemonset(docs: &[Value]) -> Result<DaemonSet> {
    let v = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet")?;
    Ok(serde_json::from_value(v.clone())?)
}

#[test]
fn every_kustomization_renders_into_valid_typed_objects() -> Result<()> {
    for dir in KUSTOMIZATIONS {
        let docs = render(dir)?;
        check_types(dir, &docs)?;
        let ds = daemonset(&docs)?;
        let pod = ds
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .context("pod spec")?;
        let c = pod.containers.first().context("container")?;
        let sc = c.security_context.as_ref().context("securityContext")?;
        ensure!(sc.privileged == Some(false), "{dir}: privileged");
        ensure!(
            sc.allow_privilege_escalation == Some(false),
            "{dir}: allowPrivilegeEscalation"
        );
        ensure!(
            sc.read_only_root_filesystem == Some(true),
            "{dir}: readOnlyRootFilesystem"
        );
        let caps = sc.capabilities.as_ref().context("capabilities")?;
        let mut add = caps.add.clone().unwrap_or_default();
        add.sort();
        ensure!(
            add == ["BPF", "NET_ADMIN", "PERFMON"],
            "{dir}: capabilities {add:?}"
        );
        ensure!(
            caps.drop.as_deref() == Some(&["ALL".to_owned()][..]),
            "{dir}: drop ALL"
        );
        let node_name = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "NODE_NAME")
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone());
        ensure!(
            node_name.as_deref() == Some("spec.nodeName"),
            "{dir}: NODE_NAME from the downward API"
        );
        let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        ensure!(
            probe_path(&c.liveness_probe).as_deref() == Some("/healthz"),
            "{dir}: liveness"
        );
        ensure!(
            probe_path(&c.readiness_probe).as_deref() == Some("/readyz"),
            "{dir}: readiness"
        );
        ensure!(
            pod.tolerations
                .iter()
                .flatten()
                .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
            "{dir}: tolerates every taint"
        );
        ensure!(pod.host_network == Some(true), "{dir}: hostNetwork");
        let strategy = ds
            .spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.type_.clone());
        ensure!(
            strategy.as_deref() == Some("RollingUpdate"),
            "{dir}: rolling update"
        );
        let port = c.ports.iter().flatten().find(|p| p.container_port == 3001);
        ensure!(port.is_some(), "{dir}: port 3001");
        // The config the ConfigMap carries is one the agent accepts.
        let cm = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .and_then(|d| d["data"]["config.yaml"].as_str())
            .context("config.yaml in the ConfigMap")?;
        agent::config::Config::parse(cm).map_err(|e| anyhow::anyhow!("{dir}: {e}"))?;
        if dir.ends_with("kubecost") {
            let labels = pod_labels(&ds);
            ensure!(
                labels.get("app.kubernetes.io/name").map(String::as_str) == Some("network-costs"),
                "{dir}: {labels:?}"
            );
            ensure!(
                labels.get("app.kubernetes.io/instance").map(String::as_str) == Some("kubecost"),
                "{dir}: {labels:?}"
            );
            ensure!(
                docs.iter().all(|d| d["kind"] == "Namespace"
                    || d["kind"] == "ClusterRole"
                    || d["kind"] == "ClusterRoleBinding"
                    || d["metadata"]["namespace"] == "kubecost"),
                "{dir}: everything in the kubecost namespace"
            );
        }
    }
    Ok(())
}

fn pod_labels(ds: &DaemonSet) -> std::collections::BTreeMap<String, String> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

#[test]
fn prometheus_rules_pass_promtool_and_their_unit_tests() -> Result<()> {
    let docs = render("deploy/overlays/prometheus-operator")?;
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .context("no PrometheusRule")?;
    let dir = std::env::temp_dir().join(format!("nct-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup(dir.clone());
    let rules = dir.join("rules.json");
    std::fs::write(&rules, serde_json::to_string(&rule["spec"])?)?;
    let promtool = |args: &[&str]| -> Result<String> {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .context("running promtool")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(out.status.success(), "promtool {args:?}:\n{text}");
        Ok(text)
    };
    promtool(&["check", "rules", "rules.json"])?;
    std::fs::write(dir.join("tests.yaml"), RULE_TESTS)?;
    let out = promtool(&["test", "rules", "tests.yaml"])?;
    eprintln!("{out}");
    Ok(())
}

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sample series: two pods of one namespace costing $0.036/h and $0.0036/h, an agent with one
/// program detached, and one whose target is down.
const RULE_TESTS: &str = r#"
rule_files: [rules.json]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'netcost_network_cost_dollars_total{owner="pod",namespace="shop",workload_kind="Deployment",workload="cart",traffic_class="cross_zone",direction="egress",instance="n1"}'
        values: '0+0.0006x120'
      - series: 'netcost_network_cost_dollars_total{owner="pod",namespace="shop",workload_kind="Deployment",workload="web",traffic_class="internet",direction="egress",instance="n1"}'
        values: '0+0.00006x120'
      - series: 'netcost_programs_attached{instance="n1"}'
        values: '2x10 1x20'
      - series: 'up{job="netcost-agent",instance="n2"}'
        values: '1x5 0x20'
    promql_expr_test:
      # Rounded: this promtool compares floats exactly.
      - expr: round(namespace:netcost_cost_dollars:rate1h, 0.000001)
        eval_time: 120m
        exp_samples:
          - labels: '{namespace="shop"}'
            value: 0.0396
      - expr: round(workload:netcost_cost_dollars:rate1h{workload="cart"}, 0.000001)
        eval_time: 120m
        exp_samples:
          - labels: '{namespace="shop",workload_kind="Deployment",workload="cart"}'
            value: 0.036
    alert_rule_test:
      - eval_time: 15m
        alertname: NetcostProgramsDetached
        exp_alerts:
          - exp_labels: { severity: critical, instance: n1 }
            exp_annotations:
              summary: "netcost on n1 has 1 of its 2 programs attached: bytes are not counted"
      - eval_time: 15m
        alertname: NetcostAgentDown
        exp_alerts:
          - exp_labels: { severity: warning, instance: n2, job: netcost-agent }
            exp_annotations:
              summary: "netcost agent n2 is not scraped: its node's bytes are not counted into metrics"
"#;
