//! Checks shared (as `mod manifests`) by the kustomize test (tests/tests/deploy.rs) and the Helm test
//! (tests/tests/helm.rs), so that both ways to install hold the same objects to the same policy:
//! every rendered object deserializes into its k8s-openapi type with no field lost, the agent's
//! DaemonSet keeps its security policy and puts what its config needs on the right volumes, and
//! the PrometheusRule passes `promtool check rules` and its unit tests.

// Each test file that includes this module uses part of it.
#![allow(dead_code)]

use std::{path::PathBuf, process::Command};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Namespace, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde_json::Value;

/// The objects of a multi-document YAML stream (empty documents left out).
pub fn parse_docs(what: &str, text: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| anyhow::anyhow!("{what} is not YAML: {e}"))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Deserializes every object into its typed form (unknown fields make serde_json fail only for
/// types that deny them, so also compare the round trip).
pub fn check_types(dir: &str, docs: &[Value]) -> Result<()> {
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
pub fn missing(written: &Value, typed: &Value) -> Vec<String> {
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

pub fn pod_spec(ds: &DaemonSet) -> Result<&k8s_openapi::api::core::v1::PodSpec> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("pod spec")
}

pub fn daemonset(docs: &[Value]) -> Result<DaemonSet> {
    let v = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet")?;
    Ok(serde_json::from_value(v.clone())?)
}

/// The agent's DaemonSet in `docs` (rendered from `dir`): not privileged, read-only root, no
/// privilege escalation, RuntimeDefault seccomp, exactly BPF, PERFMON and NET_ADMIN, nothing
/// writable under /sys/fs; the downward API's node name, the probes, every taint tolerated, the
/// node's network, rolling updates, port 3001; and the ConfigMap's config is one the agent
/// accepts, with its pins and checkpoint on writable hostPath volumes.
pub fn check_agent(dir: &str, docs: &[Value]) -> Result<()> {
    let ds = daemonset(docs)?;
    let pod = pod_spec(&ds)?;
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
    ensure!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) == Some("RuntimeDefault"),
        "{dir}: seccompProfile RuntimeDefault"
    );
    // The runtime's default AppArmor profile denies writes under /sys/fs/[^c]*/**: nothing
    // writable is mounted there.
    for m in c.volume_mounts.iter().flatten() {
        let under_sys_fs =
            m.mount_path.starts_with("/sys/fs/") && !m.mount_path.starts_with("/sys/fs/cgroup");
        ensure!(
            m.read_only == Some(true) || !under_sys_fs,
            "{dir}: {} is writable under /sys/fs",
            m.mount_path
        );
    }
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
    let config = agent::config::Config::parse(cm).map_err(|e| anyhow::anyhow!("{dir}: {e}"))?;
    // Pins and checkpoint land on writable hostPath volumes (the root is read-only), so
    // they outlive the pod: a restart or upgrade goes on with the same totals.
    ensure!(config.state.pin, "{dir}: pinning off");
    for (what, path, host) in [
        // Only netcost's own directory of the host's bpffs.
        (
            "state.pin_dir",
            &config.state.pin_dir,
            "/sys/fs/bpf/netcost",
        ),
        ("state.dir", &config.state.dir, "/var/lib/netcost"),
    ] {
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| path.starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())
            .with_context(|| format!("{dir}: no volume holds {what} {}", path.display()))?;
        ensure!(
            mount.read_only != Some(true),
            "{dir}: {what} on a read-only mount"
        );
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .and_then(|v| v.host_path.as_ref())
            .with_context(|| format!("{dir}: {what} is not on a hostPath volume"))?;
        ensure!(
            volume.path == host,
            "{dir}: {what} on hostPath {}",
            volume.path
        );
    }
    Ok(())
}

pub fn pod_labels(ds: &DaemonSet) -> std::collections::BTreeMap<String, String> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// The PrometheusRule's `spec` passes `promtool check rules` and the rule unit tests below.
pub fn check_rules(spec: &Value) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("nct-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup(dir.clone());
    let rules = dir.join("rules.json");
    std::fs::write(&rules, serde_json::to_string(spec)?)?;
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
      # n3's disk fills up at minute 5; its drains fail from minute 8 to 20; its EndpointSlice
      # watch never syncs.
      - series: 'netcost_checkpoint_errors_total{instance="n3"}'
        values: '0x5 1+2x30'
      - series: 'netcost_drain_errors_total{instance="n3"}'
        values: '0x8 1+1x12 13x30'
      - series: 'netcost_kubernetes_synced{instance="n3",resource="endpointslices"}'
        values: '0x30'
      - series: 'netcost_kubernetes_synced{instance="n3",resource="pods"}'
        values: '1x30'
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
        alertname: NetcostCheckpointFailing
        exp_alerts:
          - exp_labels: { severity: critical, instance: n3 }
            exp_annotations:
              summary: "netcost on n3 cannot write its checkpoint: its totals are frozen (nothing new is exposed) and the kernel's maps fill up; fix the state directory (full or read-only?)"
      - eval_time: 3m
        alertname: NetcostCheckpointFailing
        exp_alerts: []
      - eval_time: 15m
        alertname: NetcostDrainFailing
        exp_alerts:
          - exp_labels: { severity: critical, instance: n3 }
            exp_annotations:
              summary: "netcost on n3: drains fail, the kernel keeps its counts until one succeeds"
      # Drains work again from minute 20: no alert 10 minutes later.
      - eval_time: 32m
        alertname: NetcostDrainFailing
        exp_alerts: []
      - eval_time: 15m
        alertname: NetcostInventoryNotSynced
        exp_alerts:
          - exp_labels: { severity: warning, instance: n3, resource: endpointslices }
            exp_annotations:
              summary: "netcost on n3: the endpointslices watch is not synced; bytes wait for names and zones (held), then lose them"
      - eval_time: 15m
        alertname: NetcostAgentDown
        exp_alerts:
          - exp_labels: { severity: warning, instance: n2, job: netcost-agent }
            exp_annotations:
              summary: "netcost agent n2 is not scraped: its node's bytes are not counted into metrics"
"#;
