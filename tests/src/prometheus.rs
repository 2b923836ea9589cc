//! A real Prometheus (Debian's package) in a temporary directory, listening on loopback and
//! scraping only the given targets; killed and its directory removed on drop.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::{
    agent::{free_port, http_get},
    Proc,
};

/// A Prometheus server in a temporary directory, killed and removed on drop.
pub struct Prometheus {
    _proc: Proc,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    pub fn start(target_port: u16) -> Result<Prometheus> {
        let dir = std::env::temp_dir().join(format!("nct-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{ scrape_interval: 1s, scrape_timeout: 1s }}\n\
                 scrape_configs:\n  - job_name: netcost\n    static_configs: [{{ targets: [\"127.0.0.1:{target_port}\"] }}]\n"
            ),
        )?;
        let port = free_port()?;
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log"))?)
            .spawn()
            .context("starting prometheus (Debian package `prometheus`)")?;
        let p = Prometheus {
            _proc: Proc::new(child, "prometheus"),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.get("/-/ready").ok().map(|(c, _)| c) != Some(200) {
            ensure!(
                Instant::now() < deadline,
                "prometheus not ready: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(p)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    pub fn get(&self, path_and_query: &str) -> Result<(u16, String)> {
        http_get(self.port, path_and_query)
    }

    /// An instant query at `time` (Unix seconds); the result vector.
    pub fn query(&self, expr: &str, time: f64) -> Result<Vec<Value>> {
        let q = format!(
            "/api/v1/query?query={}&time={time:.3}",
            crate::uri_encode(expr)
        );
        let (code, body) = self.get(&q)?;
        ensure!(code == 200, "query {expr}: HTTP {code}: {body}");
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

/// A sample's value.
pub fn value(v: &Value) -> Result<f64> {
    v["value"][1]
        .as_str()
        .context("no value")?
        .parse()
        .context("not a number")
}

/// Now, in Unix seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
