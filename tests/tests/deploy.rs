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

const KUSTOMIZATIONS: [&str; 4] = [
    "deploy/base",
    "deploy/overlays/prometheus-operator",
    "deploy/overlays/kubecost",
    "deploy/overlays/metrics-auth",
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

/// Renders `dir` and checks every object against its k8s-openapi type.
fn rendered(dir: &str) -> Result<Vec<Value>> {
    let docs = render(dir)?;
    check_types(dir, &docs)?;
    Ok(docs)
}

fn pod_spec(ds: &DaemonSet) -> Result<&k8s_openapi::api::core::v1::PodSpec> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("pod spec")
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
        let docs = rendered(dir)?;
        let ds = daemonset(&docs)?;
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

/// The dashboard renders into a ConfigMap Grafana's sidecar loads, holding valid JSON (its
/// queries are run against a real Prometheus in tests/tests/opencost.rs).
#[test]
fn the_dashboard_renders_as_a_grafana_configmap() -> Result<()> {
    let dir = "deploy/grafana";
    let docs = rendered(dir)?;
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .context("ConfigMap")?;
    ensure!(
        cm["metadata"]["labels"]["grafana_dashboard"] == "1",
        "sidecar label"
    );
    let json: Value = serde_json::from_str(
        cm["data"]["netcost.json"]
            .as_str()
            .context("netcost.json")?,
    )?;
    ensure!(
        json["panels"].as_array().is_some_and(|p| p.len() >= 8),
        "panels"
    );
    Ok(())
}

/// The uninstall DaemonSet renders into valid objects, runs `cleanup` with no capability at all,
/// and mounts the same host paths the agent pins and checkpoints in.
#[test]
fn the_cleanup_daemonset_needs_no_capability() -> Result<()> {
    let dir = "deploy/cleanup";
    let docs = rendered(dir)?;
    let ds = daemonset(&docs)?;
    let pod = pod_spec(&ds)?;
    let c = pod.containers.first().context("container")?;
    let args: Vec<&str> = c.args.iter().flatten().map(String::as_str).collect();
    ensure!(
        args == ["cleanup", "--stay", "--pin-dir", "/run/netcost/bpf"],
        "args {args:?}"
    );
    let sc = c.security_context.as_ref().context("securityContext")?;
    let caps = sc.capabilities.as_ref().context("capabilities")?;
    ensure!(caps.add.is_none(), "capabilities added: {:?}", caps.add);
    ensure!(sc.read_only_root_filesystem == Some(true), "read-only root");
    ensure!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) == Some("RuntimeDefault"),
        "seccompProfile RuntimeDefault"
    );
    // --pin-dir is the mount of the host's /sys/fs/bpf/netcost, the default state dir the
    // mount of /var/lib/netcost.
    let mounted = |path: &str| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == path)
            .and_then(|m| pod.volumes.iter().flatten().find(|v| v.name == m.name))
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
    };
    ensure!(
        mounted("/run/netcost/bpf").as_deref() == Some("/sys/fs/bpf/netcost"),
        "pins: {:?}",
        mounted("/run/netcost/bpf")
    );
    let defaults = agent::config::StateConfig::default();
    let hosts: Vec<String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    for path in [&defaults.pin_dir, &defaults.dir] {
        ensure!(
            hosts.iter().any(|h| path.starts_with(h)),
            "{} is on no hostPath volume: {hosts:?}",
            path.display()
        );
    }
    Ok(())
}

/// No container engine runs here, so the image is not built. What can be proven is: the
/// Containerfile is multi-stage with a distroless (shell-less) final stage that holds the agent
/// alone, runs it as uid 0 in exec form with the DaemonSet's arguments, and the binary it copies
/// (the one every root test runs) needs no library beyond what that base image has.
#[test]
fn the_containerfile_ships_the_tested_binary_on_a_shell_less_base() -> Result<()> {
    let text = std::fs::read_to_string(root().join("deploy/Containerfile"))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    ensure!(
        froms.len() == 2,
        "want a build stage and a final stage: {froms:?}"
    );
    ensure!(
        froms[1].contains("gcr.io/distroless/cc-debian12"),
        "final stage {}",
        froms[1]
    );
    let final_stage = &lines[lines.iter().position(|l| l == froms[1]).unwrap_or(0)..];
    ensure!(
        final_stage
            .iter()
            .filter(|l| l.starts_with("COPY") || l.starts_with("ADD") || l.starts_with("RUN"))
            .copied()
            .eq(["COPY --from=build /netcost-agent /netcost-agent"]),
        "the final stage must add the agent and nothing else: {final_stage:?}"
    );
    ensure!(final_stage.contains(&"USER 0:0"), "USER");
    ensure!(
        final_stage.contains(&"ENTRYPOINT [\"/netcost-agent\"]"),
        "exec-form ENTRYPOINT"
    );
    // The binary links only what distroless/cc-debian12 provides (glibc 2.36, libgcc).
    let bin = netcost_tests::agent::agent_bin()?;
    let ldd = netcost_tests::run(&["ldd", &bin.to_string_lossy()])?;
    let allowed = [
        "linux-vdso.so.1",
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
        "libdl.so.2",
        "libpthread.so.0",
        "librt.so.1",
    ];
    for lib in ldd.lines().filter_map(|l| l.split_whitespace().next()) {
        let name = lib.rsplit('/').next().unwrap_or(lib);
        ensure!(
            allowed.contains(&name),
            "the agent needs {name}, which the base image lacks:\n{ldd}"
        );
    }
    let glibc = netcost_tests::run(&["ldd", "--version"])?;
    ensure!(
        glibc.lines().next().is_some_and(|l| l.ends_with(" 2.36")),
        "built against another glibc than the base image's 2.36: {glibc}"
    );
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
