//! Root test: /metrics behind TLS and bearer tokens, as `deploy/overlays/metrics-auth` runs it.
//! Tokens are checked by the agent's production client against the API double's TokenReview and
//! SubjectAccessReview; the certificate is read again when its files change; /healthz and
//! /readyz stay open; and every request the agent makes is one the overlay's ClusterRole grants,
//! which grants nothing more.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use netcost_tests::{
    agent::Agent,
    apiserver::{ApiServer, ApiState},
    kubenode::{cluster, config},
    rbac, run, serial,
    simnode::{Offloads, SimNode},
};
use serde_json::Value;

const TRAFFIC: &str = env!("CARGO_BIN_EXE_nct-traffic");
const PROMETHEUS: &str = "system:serviceaccount:monitoring:prometheus-k8s";

/// A CA, and a server certificate for localhost signed by it (`serial` tells two apart).
fn certificates(dir: &Path, serial: &str) -> Result<()> {
    let s = |p: &str| dir.join(p).to_string_lossy().into_owned();
    if !dir.join("ca.key").exists() {
        run(&[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=nct-ca",
            "-keyout",
            &s("ca.key"),
            "-out",
            &s("ca.crt"),
        ])?;
    }
    run(&[
        "openssl",
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &s("new.key"),
        "-out",
        &s("server.csr"),
    ])?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    run(&[
        "openssl",
        "x509",
        "-req",
        "-in",
        &s("server.csr"),
        "-CA",
        &s("ca.crt"),
        "-CAkey",
        &s("ca.key"),
        "-set_serial",
        serial,
        "-days",
        "2",
        "-extfile",
        &s("ext.cnf"),
        "-out",
        &s("new.crt"),
    ])?;
    // Into place as a Secret volume's update does: each file replaced whole.
    std::fs::rename(dir.join("new.key"), dir.join("tls.key"))?;
    std::fs::rename(dir.join("new.crt"), dir.join("tls.crt"))?;
    Ok(())
}

/// The serial of the certificate the agent presents.
fn served_serial(port: u16) -> Result<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial"))
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn metrics_need_a_token_allowed_to_get_them_over_tls() -> Result<()> {
    let _serial = serial();
    let node = SimNode::build(TRAFFIC.as_ref(), Offloads::Default)?;
    let state = Arc::new(ApiState::new());
    cluster(&node, &state, &["pod1", "pod2", "hostpod"]);
    state.add_token("prom-token", PROMETHEUS, &["system:serviceaccounts"]);
    state.add_token(
        "other-token",
        "system:serviceaccount:shop:default",
        &["system:serviceaccounts"],
    );
    state.allow_metrics(PROMETHEUS);
    let api = ApiServer::start(state.clone())?;
    let tls = std::env::temp_dir().join(format!("nct-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tls);
    std::fs::create_dir_all(&tls)?;
    certificates(&tls, "0x1001")?;
    let extra = format!(
        "server:\n  tls:\n    cert_file: {}\n    key_file: {}\n  auth:\n    kubernetes: true\n    cache_seconds: 60\n",
        tls.join("tls.crt").display(),
        tls.join("tls.key").display()
    );
    let agent = Agent::start_tls("auth", &config(&api.url(), &extra), &tls.join("ca.crt"))?;
    let mut failures: Vec<String> = Vec::new();
    fn expect(
        failures: &mut Vec<String>,
        what: &str,
        got: Result<(u16, String)>,
        want: u16,
    ) -> Option<String> {
        match got {
            Ok((code, body)) if code == want => Some(body),
            other => {
                failures.push(format!("{what}: {other:?}, want {want}"));
                None
            }
        }
    }
    expect(
        &mut failures,
        "/healthz without a token",
        agent.get("/healthz"),
        200,
    );
    expect(
        &mut failures,
        "/readyz without a token",
        agent.get("/readyz"),
        200,
    );
    expect(
        &mut failures,
        "/metrics without a token",
        agent.get("/metrics"),
        401,
    );
    expect(
        &mut failures,
        "/metrics with a forged token",
        agent.get_with("/metrics", &[("Authorization", "Bearer forged")]),
        401,
    );
    expect(
        &mut failures,
        "/metrics by a user not allowed",
        agent.get_with("/metrics", &[("Authorization", "Bearer other-token")]),
        403,
    );
    for _ in 0..3 {
        if let Some(body) = expect(
            &mut failures,
            "/metrics by Prometheus",
            agent.get_with("/metrics", &[("Authorization", "Bearer prom-token")]),
            200,
        ) {
            if !body.contains("netcost_build_info") {
                failures.push("the allowed scrape has no metrics".into());
            }
        }
    }
    let reviews = |kind: &str| {
        state
            .requests()
            .iter()
            .filter(|r| r.path.ends_with(kind))
            .count()
    };
    eprintln!(
        "TokenReviews {}, SubjectAccessReviews {}",
        reviews("/tokenreviews"),
        reviews("/subjectaccessreviews")
    );
    // One review per token within the cache time: prom-token, other-token, forged.
    if reviews("/tokenreviews") != 3 || reviews("/subjectaccessreviews") != 2 {
        failures.push(format!(
            "reviews not cached: {} TokenReviews, {} SubjectAccessReviews",
            reviews("/tokenreviews"),
            reviews("/subjectaccessreviews")
        ));
    }
    // Plain HTTP on the TLS port gets no metrics.
    if let Ok((200, _)) = netcost_tests::agent::http_get(agent.port, "/metrics") {
        failures.push("plain HTTP served /metrics".into());
    }
    // The certificate is rotated in place: the agent presents the new one within seconds.
    let before = served_serial(agent.port)?;
    certificates(&tls, "0x2002")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut after = before.clone();
    while after == before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        after = served_serial(agent.port)?;
    }
    eprintln!("certificate serial {before} → {after}");
    if before != "serial=1001" || after != "serial=2002" {
        failures.push(format!("certificate not reloaded: {before} → {after}"));
    }
    expect(
        &mut failures,
        "/metrics after the rotation",
        agent.get_with("/metrics", &[("Authorization", "Bearer prom-token")]),
        200,
    );
    // Every request is granted by the overlay's ClusterRole, which grants nothing more.
    let rendered = run(&[
        "kubectl",
        "kustomize",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/overlays/metrics-auth"
        ),
    ])?;
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&rendered).context("parsing the rendered overlay")?;
    if let Err(e) = rbac::assert_within(&state, &rbac::granted_by(&docs, "netcost-agent")) {
        failures.push(format!("{e:#}"));
    }
    let log = agent.stop()?;
    let _ = std::fs::remove_dir_all(&tls);
    if !failures.is_empty() {
        bail!("{}\nagent log: {log}", failures.join("\n"));
    }
    ensure!(
        log.contains("TLS certificate reloaded"),
        "the log does not say the certificate was reloaded"
    );
    Ok(())
}
