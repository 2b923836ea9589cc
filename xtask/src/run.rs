//! `cargo xtask run`: the agent on this machine, live in the terminal. Starts the release agent
//! with `deploy/config/local.yaml` (the region and a kubeconfig as asked), its log in a file so
//! that nothing but the view is on the screen, waits for its `/metrics`, then runs
//! `netcost-agent view` on it. When the view ends (q, Ctrl-C), the agent is stopped with SIGTERM:
//! a last drain and checkpoint, and its programs stay attached (pinned) for the next run.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{step, workspace_root};

const METRICS: &str = "http://127.0.0.1:3001/metrics";

pub struct RunOptions {
    once: bool,
    after: Option<String>,
    region: Option<String>,
    kubeconfig: Option<PathBuf>,
}

pub fn parse(args: &[String]) -> Result<RunOptions> {
    let mut o = RunOptions {
        once: false,
        after: None,
        region: None,
        kubeconfig: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--once" => o.once = true,
            "--after" => o.after = Some(value()?.clone()),
            "--region" => {
                let r = value()?;
                if r.is_empty()
                    || !r
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                {
                    bail!("--region {r:?}: an AWS region name such as us-east-1");
                }
                o.region = Some(r.clone());
            }
            "--kubeconfig" => {
                let f = PathBuf::from(value()?);
                if !f.is_file() {
                    bail!("--kubeconfig {}: no such file", f.display());
                }
                o.kubeconfig = Some(f);
            }
            other => bail!(
                "cargo xtask run: unknown argument {other:?} (--once, --after D, --region R, --kubeconfig FILE, or cleanup)"
            ),
        }
    }
    Ok(o)
}

/// The local config with the region and the cluster asked for.
fn config(o: &RunOptions, dir: &Path) -> Result<PathBuf> {
    let base = workspace_root().join("deploy/config/local.yaml");
    let mut text =
        std::fs::read_to_string(&base).with_context(|| format!("reading {}", base.display()))?;
    if let Some(region) = &o.region {
        text = text
            .replace("  region: local\n", &format!("  region: {region}\n"))
            .replace("  zone: local-a\n", &format!("  zone: {region}a\n"));
    }
    if o.kubeconfig.is_some() {
        text = text.replace(
            "kubernetes:\n  enabled: false\n",
            "kubernetes:\n  enabled: true\n",
        );
    }
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Kills the agent with SIGTERM on the way out, whatever happens.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn metrics_answer() -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:3001".parse().expect("an address"),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    // "HTTP/1.0 200" (an HTTP/1.0 request is answered in kind).
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && head[8..] == *b" 200"
}

pub fn run(agent: &Path, o: &RunOptions) -> Result<()> {
    let dir = workspace_root().join("target/netcost-run");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = config(o, &dir)?;
    let log_path = dir.join("agent.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = Command::new(agent);
    cmd.arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    if let Some(k) = &o.kubeconfig {
        cmd.env("KUBECONFIG", k);
        if std::env::var_os("NODE_NAME").is_none() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            cmd.env("NODE_NAME", host.trim());
        }
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", agent.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !metrics_answer() {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("the agent stopped ({status}):\n{}", tail.join("\n"));
        }
        if Instant::now() > deadline {
            let _ = Running(child);
            bail!(
                "the agent did not answer on {METRICS} within 60 s; its log: {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Something else may answer on the port while ours failed to bind: ours must be running.
    std::thread::sleep(Duration::from_millis(300));
    if let Some(status) = child.try_wait()? {
        bail!(
            "the agent stopped ({status}) although {METRICS} answers: is another agent running? Its log: {}",
            log_path.display()
        );
    }
    let running = Running(child);
    step(&format!(
        "agent running (pid {}), metrics at {METRICS}, its log in {}",
        running.0.id(),
        log_path.display()
    ));
    let mut view = Command::new(agent);
    view.args(["view", "--metrics", METRICS]);
    if o.once {
        view.arg("--once");
    }
    if let Some(after) = &o.after {
        view.args(["--after", after]);
    }
    let status = view.status().context("starting the view")?;
    drop(running);
    step("agent stopped; its programs stay attached (pinned under /sys/fs/bpf/netcost) and the next run goes on with the same totals (`cargo xtask run cleanup` detaches them)");
    if !status.success() {
        bail!("the view failed ({status})");
    }
    Ok(())
}
