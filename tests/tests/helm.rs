//! The Helm chart (deploy/helm/netcost), rendered and linted by the Helm library that PyPI's
//! helm-python-sdk bundles (Helm v4; `cargo xtask test` installs it in a virtual environment,
//! target/helm-venv): lint clean in strict mode with the defaults and with every option on;
//! every rendering's objects typed with no field lost and the agent's DaemonSet under the same
//! security policy as the kustomizations; the default rendering the same objects and pod spec
//! as deploy/base, the Kubecost mode as the kubecost overlay; wrong values refused naming the
//! field; the PrometheusRule through promtool and the rule tests; the chart packages.

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

mod manifests;
use manifests::{check_agent, check_rules, check_types, daemonset, parse_docs, pod_spec};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    root().join("deploy/helm/netcost")
}

/// helm.py with the virtual environment's Python; `Err` carries Helm's message.
fn helm(args: &[&str], values: &Value) -> Result<Result<Value, String>> {
    let python = root().join("target/helm-venv/bin/python");
    ensure!(
        python.is_file(),
        "{} is missing: `cargo xtask test` installs helm-python-sdk there",
        python.display()
    );
    let dir = tempdir()?;
    let file = dir.0.join("values.json");
    std::fs::write(&file, serde_json::to_vec(values)?)?;
    let mut cmd = Command::new(&python);
    cmd.arg(root().join("tests/helm/helm.py"))
        .args(args)
        .arg(&file);
    let out = cmd.output().context("running helm.py")?;
    if !out.status.success() {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(Ok(serde_json::from_slice(&out.stdout)?))
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn tempdir() -> Result<TempDir> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "nct-helm-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d)?;
    Ok(TempDir(d))
}

/// The chart rendered as `helm install NAME -n NS` would apply it.
fn render(namespace: &str, values: &Value) -> Result<Vec<Value>> {
    let chart = chart();
    let out = helm(
        &["template", &chart.to_string_lossy(), "netcost", namespace],
        values,
    )?
    .map_err(|e| anyhow::anyhow!("rendering with {values}: {e}"))?;
    let manifest = out["manifest"].as_str().context("manifest")?;
    let docs = parse_docs(&format!("the chart with {values}"), manifest)?;
    check_types(&format!("helm {values}"), &docs)?;
    Ok(docs)
}

fn render_error(values: &Value) -> Result<String> {
    let chart = chart();
    match helm(
        &["template", &chart.to_string_lossy(), "netcost", "netcost"],
        values,
    )? {
        Ok(_) => bail!("the chart rendered with {values}"),
        Err(e) => Ok(e),
    }
}

/// Every option on at once (the PodMonitor aside: with metricsAuth it is refused, see below).
fn every_option() -> Value {
    json!({
        "image": {"repository": "registry.example/netcost-agent", "digest": format!("sha256:{}", "ab".repeat(32)), "pullPolicy": "IfNotPresent"},
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/netcost-agent"}},
        "config": {"listen": "[::]:3001", "drain_interval_seconds": 5, "cgroup_root": "/host/sys/fs/cgroup",
                   "kubernetes": {"enabled": true}, "imds": {"enabled": true}, "nat": {"conntrack": "auto"},
                   "egress": {"nat_gateway": {"zone_id": "use1-az2"}},
                   "state": {"pin": true, "pin_dir": "/run/netcost/bpf", "dir": "/var/lib/netcost"}},
        "resources": {"requests": {"cpu": "100m", "memory": "96Mi"}, "limits": {"memory": "192Mi"}},
        "tolerations": [{"operator": "Exists"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "eks.amazonaws.com/compute-type", "operator": "NotIn", "values": ["fargate"]}]}]}}},
        "priorityClassName": "system-node-critical",
        "podAnnotations": {"example.com/owner": "platform"},
        "podLabels": {"team": "platform"},
        "serviceMonitor": {"enabled": true, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": true, "labels": {"release": "kube-prometheus-stack"}},
        "grafanaDashboard": {"enabled": true, "namespace": "monitoring"},
        "kubecost": {"enabled": true, "priceGauges": false},
        "metricsAuth": {"enabled": true, "readers": [{"name": "prometheus-k8s", "namespace": "monitoring"}]},
        "cleanup": {"enabled": true},
    })
}

/// One value set per option (each alone), then all together.
fn cases() -> Vec<(&'static str, Value)> {
    vec![
        ("defaults", json!({})),
        ("image tag", json!({"image": {"tag": "0.1.0-rc1"}})),
        (
            "image digest",
            json!({"image": {"digest": format!("sha256:{}", "0".repeat(64))}}),
        ),
        (
            "pull secrets",
            json!({"imagePullSecrets": [{"name": "registry"}]}),
        ),
        (
            "existing ConfigMap",
            json!({"existingConfigMap": "my-netcost-config"}),
        ),
        (
            "resources",
            json!({"resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}}),
        ),
        (
            "nodeSelector",
            json!({"nodeSelector": {"kubernetes.io/os": "linux"}}),
        ),
        (
            "affinity",
            every_option()
                .get("affinity")
                .cloned()
                .map(|a| json!({"affinity": a}))
                .unwrap_or_default(),
        ),
        ("no priority class", json!({"priorityClassName": ""})),
        ("pod annotations", json!({"podAnnotations": {"a": "b"}})),
        (
            "no prometheus.io annotations",
            json!({"prometheusAnnotations": false}),
        ),
        (
            "ServiceMonitor",
            json!({"serviceMonitor": {"enabled": true}}),
        ),
        ("PodMonitor", json!({"podMonitor": {"enabled": true}})),
        (
            "PrometheusRule",
            json!({"prometheusRule": {"enabled": true}}),
        ),
        (
            "Grafana dashboard",
            json!({"grafanaDashboard": {"enabled": true}}),
        ),
        ("Kubecost mode", json!({"kubecost": {"enabled": true}})),
        (
            "Kubecost mode without price gauges",
            json!({"kubecost": {"enabled": true, "priceGauges": false}}),
        ),
        ("metrics auth", json!({"metricsAuth": {"enabled": true}})),
        (
            "cleanup beside the agent",
            json!({"cleanup": {"enabled": true}}),
        ),
        (
            "cleanup alone",
            json!({"cleanup": {"enabled": true}, "agent": {"enabled": false}}),
        ),
        ("every option", every_option()),
    ]
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn lint_is_clean_in_strict_mode_with_defaults_and_every_option() -> Result<()> {
    let chart = chart();
    for values in [
        json!({}),
        every_option(),
        json!({"podMonitor": {"enabled": true}}),
    ] {
        let report = helm(&["lint", &chart.to_string_lossy()], &values)?
            .map_err(|e| anyhow::anyhow!("lint with {values}: {e}"))?;
        ensure!(report["total_charts_linted"] == 1, "{report}");
        // Severity 2 is a warning, 3 an error; strict mode makes warnings errors.
        let findings: Vec<&Value> = report["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
            .collect();
        ensure!(findings.is_empty(), "lint with {values}: {findings:?}");
        ensure!(
            report["errors"].as_array().is_none_or(|e| e.is_empty()),
            "lint with {values}: {report}"
        );
    }
    Ok(())
}

/// Every rendering: typed objects (in `render`), and wherever the agent runs, the kustomize
/// test's policy; wherever the cleanup DaemonSet runs, no capability at all.
#[test]
fn every_rendering_keeps_the_security_policy() -> Result<()> {
    for (case, values) in cases() {
        let mut docs = render("netcost", &values)?;
        let what = format!("helm, {case}");
        let agents: Vec<Value> = of_kind(&docs, "DaemonSet")
            .into_iter()
            .filter(|d| d["metadata"]["name"] == "netcost-agent")
            .cloned()
            .collect();
        if values["agent"]["enabled"] == false {
            ensure!(agents.is_empty(), "{what}: the agent is off");
        } else {
            ensure!(agents.len() == 1, "{what}: one agent DaemonSet");
            if values.get("existingConfigMap").is_some() {
                ensure!(
                    of_kind(&docs, "ConfigMap").is_empty(),
                    "{what}: no ConfigMap of ours"
                );
                let ds = daemonset(&docs)?;
                let volume = pod_spec(&ds)?
                    .volumes
                    .iter()
                    .flatten()
                    .find(|v| v.name == "config")
                    .and_then(|v| v.config_map.as_ref())
                    .map(|c| c.name.clone());
                ensure!(
                    volume.as_deref() == Some("my-netcost-config"),
                    "{what}: {volume:?}"
                );
                // The policy's config checks, on the config the user's ConfigMap would hold.
                docs.extend(
                    of_kind(&render("netcost", &json!({}))?, "ConfigMap")
                        .into_iter()
                        .cloned(),
                );
            }
            // The agent's DaemonSet (the cleanup one, when rendered too, is checked below).
            let agent_docs: Vec<Value> = docs
                .iter()
                .filter(|d| d["metadata"]["name"] != "netcost-cleanup")
                .cloned()
                .collect();
            check_agent(&what, &agent_docs)?;
        }
        for cleanup in of_kind(&docs, "DaemonSet")
            .into_iter()
            .filter(|d| d["metadata"]["name"] == "netcost-cleanup")
        {
            let ds: k8s_openapi::api::apps::v1::DaemonSet =
                serde_json::from_value(cleanup.clone())?;
            let c = pod_spec(&ds)?
                .containers
                .first()
                .context("cleanup container")?;
            let sc = c.security_context.as_ref().context("securityContext")?;
            let caps = sc.capabilities.as_ref().context("capabilities")?;
            ensure!(caps.add.is_none(), "{what}: cleanup adds {:?}", caps.add);
            ensure!(
                sc.read_only_root_filesystem == Some(true),
                "{what}: cleanup root"
            );
            ensure!(sc.privileged == Some(false), "{what}: cleanup privileged");
        }
        let ds = agents.first();
        if let Some(ds) = ds {
            let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
            let want = values["prometheusAnnotations"] != false;
            ensure!(
                (annotations["prometheus.io/scrape"] == "true") == want,
                "{what}: prometheus.io annotations {annotations}"
            );
        }
    }
    Ok(())
}

fn kustomize(dir: &str) -> Result<Vec<Value>> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
        .context("running kubectl kustomize")?;
    ensure!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_docs(dir, &String::from_utf8(out.stdout)?)
}

/// An object as compared across the two renderings: the labels and annotations Helm adds, and
/// kustomize's name hash on the ConfigMap, left out.
fn normalized(doc: &Value) -> Value {
    let mut d = doc.clone();
    if let Some(m) = d["metadata"].as_object_mut() {
        m.remove("labels");
        m.remove("annotations");
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            m.insert("name".into(), Value::from(unhashed(name)));
        }
    }
    if let Some(t) = d["spec"]["template"]["metadata"].as_object_mut() {
        t.remove("annotations");
    }
    for v in d["spec"]["template"]["spec"]["volumes"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if let Some(name) = v["configMap"]["name"].as_str().map(unhashed) {
            v["configMap"]["name"] = name.into();
        }
    }
    // Volumes and mounts are sets: kustomize's patches put what they add first.
    let by_name = |v: &mut Value| {
        if let Some(list) = v.as_array_mut() {
            list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        }
    };
    by_name(&mut d["spec"]["template"]["spec"]["volumes"]);
    for c in d["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        by_name(&mut c["volumeMounts"]);
    }
    if d["kind"] == "ConfigMap" {
        // Compared as the agent reads it, below.
        d.as_object_mut().map(|m| m.remove("data"));
    }
    d
}

/// `netcost-agent-7h2k9f4m8t` → `netcost-agent` (kustomize's configMapGenerator suffix).
fn unhashed(name: &str) -> String {
    match name.rsplit_once('-') {
        Some((base, hash))
            if hash.len() == 10
                && hash.chars().all(|c| c.is_ascii_alphanumeric())
                && base == "netcost-agent" =>
        {
            base.to_owned()
        }
        _ => name.to_owned(),
    }
}

fn by_kind_and_name(docs: &[Value]) -> BTreeMap<(String, String), Value> {
    docs.iter()
        // helm install --create-namespace makes the namespace; a chart that rendered it would
        // fail `helm install -n` into an existing one.
        .filter(|d| d["kind"] != "Namespace")
        .map(|d| {
            let n = normalized(d);
            (
                (
                    n["kind"].as_str().unwrap_or("").to_owned(),
                    n["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                ),
                n,
            )
        })
        .collect()
}

/// The agent's config of a rendering, as the agent parses it.
fn parsed_config(docs: &[Value]) -> Result<String> {
    let text = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["config.yaml"].is_string())
        .and_then(|d| d["data"]["config.yaml"].as_str())
        .context("config.yaml")?;
    let config = agent::config::Config::parse(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(format!("{config:?}"))
}

fn same_as_kustomize(values: &Value, namespace: &str, dir: &str) -> Result<()> {
    let helm = render(namespace, values)?;
    let kustomized = kustomize(dir)?;
    let (h, k) = (by_kind_and_name(&helm), by_kind_and_name(&kustomized));
    ensure!(
        h.keys().collect::<Vec<_>>() == k.keys().collect::<Vec<_>>(),
        "{dir}: objects differ: helm {:?}, kustomize {:?}",
        h.keys().collect::<Vec<_>>(),
        k.keys().collect::<Vec<_>>()
    );
    for (key, object) in &h {
        ensure!(
            object == &k[key],
            "{dir}: {key:?} differs:\nhelm:      {object}\nkustomize: {}",
            k[key]
        );
    }
    ensure!(
        parsed_config(&helm)? == parsed_config(&kustomized)?,
        "{dir}: the agent's config differs"
    );
    Ok(())
}

#[test]
fn the_default_rendering_is_deploy_base() -> Result<()> {
    same_as_kustomize(&json!({}), "netcost", "deploy/base")
}

#[test]
fn the_kubecost_mode_is_the_kubecost_overlay() -> Result<()> {
    same_as_kustomize(
        &json!({"kubecost": {"enabled": true}}),
        "kubecost",
        "deploy/overlays/kubecost",
    )
}

#[test]
fn the_price_gauges_switch_reaches_the_agent_config() -> Result<()> {
    let docs = render(
        "kubecost",
        &json!({"kubecost": {"enabled": true, "priceGauges": false}}),
    )?;
    let config = parsed_config(&docs)?;
    ensure!(config.contains("kubecost_price_gauges: false"), "{config}");
    let on = parsed_config(&render(
        "kubecost",
        &json!({"kubecost": {"enabled": true}}),
    )?)?;
    ensure!(on.contains("kubecost_price_gauges: true"), "{on}");
    Ok(())
}

#[test]
fn wrong_values_fail_naming_the_field() -> Result<()> {
    for (values, field) in [
        (json!({"resources": "lots"}), "resources"),
        (json!({"replicas": 3}), "replicas"),
        (json!({"port": "metrics"}), "port"),
        (json!({"kubecost": {"enabled": "yes"}}), "enabled"),
        (json!({"image": {"digest": "latest"}}), "digest"),
        (
            json!({"podMonitor": {"enabled": true}, "metricsAuth": {"enabled": true}}),
            "podMonitor",
        ),
    ] {
        let error = render_error(&values)?;
        ensure!(
            error.contains(field),
            "{values}: the error does not name {field}: {error}"
        );
    }
    Ok(())
}

#[test]
fn the_rules_and_dashboard_are_the_tested_ones() -> Result<()> {
    let docs = render(
        "netcost",
        &json!({"prometheusRule": {"enabled": true}, "grafanaDashboard": {"enabled": true}}),
    )?;
    let rule = of_kind(&docs, "PrometheusRule");
    let rule = rule.first().context("PrometheusRule")?;
    check_rules(&rule["spec"])?;
    let overlay = kustomize("deploy/overlays/prometheus-operator")?;
    let theirs = overlay
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .context("overlay rule")?;
    ensure!(
        rule["spec"] == theirs["spec"],
        "the chart's rules differ from the overlay's"
    );
    let dashboard = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "netcost-dashboard")
        .context("dashboard ConfigMap")?;
    ensure!(
        dashboard["metadata"]["labels"]["grafana_dashboard"] == "1",
        "sidecar label"
    );
    let json: Value = serde_json::from_str(
        dashboard["data"]["netcost.json"]
            .as_str()
            .context("netcost.json")?,
    )?;
    let ours: Value =
        serde_json::from_slice(&std::fs::read(root().join("deploy/grafana/netcost.json"))?)?;
    ensure!(
        json == ours,
        "the chart's dashboard differs from deploy/grafana/netcost.json"
    );
    Ok(())
}

#[test]
fn the_chart_is_the_agents_version_and_packages() -> Result<()> {
    let chart_yaml = std::fs::read_to_string(chart().join("Chart.yaml"))?;
    let chart: Value = serde_saphyr::from_str(&chart_yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(chart["apiVersion"] == "v2", "apiVersion");
    let workspace = std::fs::read_to_string(root().join("Cargo.toml"))?;
    let version = workspace
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| l.trim().strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .context("workspace version")?;
    ensure!(
        chart["appVersion"] == version.as_str(),
        "appVersion {} vs agent {version}",
        chart["appVersion"]
    );
    let dest = tempdir()?;
    let chart_dir = self::chart();
    let python = root().join("target/helm-venv/bin/python");
    let done = Command::new(python)
        .arg(root().join("tests/helm/helm.py"))
        .args([
            "package",
            &chart_dir.to_string_lossy(),
            &dest.0.to_string_lossy(),
        ])
        .output()?;
    ensure!(
        done.status.success(),
        "helm package: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    let archive = dest.0.join(format!(
        "netcost-{}.tgz",
        chart["version"].as_str().unwrap_or("")
    ));
    ensure!(
        archive.is_file() && std::fs::metadata(&archive)?.len() > 1000,
        "{} missing",
        archive.display()
    );
    let listing = Command::new("tar").arg("tzf").arg(&archive).output()?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in [
        "netcost/Chart.yaml",
        "netcost/values.yaml",
        "netcost/values.schema.json",
        "netcost/templates/daemonset.yaml",
        "netcost/templates/NOTES.txt",
        "netcost/files/prometheus-rules.yaml",
    ] {
        ensure!(
            listing.lines().any(|l| l == file),
            "{file} not in the archive:\n{listing}"
        );
    }
    Ok(())
}
