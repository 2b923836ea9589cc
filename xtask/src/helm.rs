//! Helm without a helm binary: PyPI's helm-python-sdk bundles Helm v4 as a library. `cargo xtask
//! test` installs it in a virtual environment (target/helm-venv) for tests/tests/helm.rs, and
//! `cargo xtask helm lint|template|package` runs the chart through it on a machine without helm
//! (with helm installed, the README's `helm …` commands do the same).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{status, step, workspace_root};

const SDK: &str = "helm-python-sdk==0.2.2";

fn venv() -> PathBuf {
    workspace_root().join("target/helm-venv")
}

/// The virtual environment's Python with helm-python-sdk, created on first use.
pub fn ensure_venv() -> Result<PathBuf> {
    let python = venv().join("bin/python");
    let ready = python.is_file()
        && Command::new(&python)
            .args(["-c", "import helm_python"])
            .output()
            .is_ok_and(|o| o.status.success());
    if ready {
        return Ok(python);
    }
    step(&format!("installing {SDK} in {}", venv().display()));
    status(Command::new("python3").args(["-m", "venv"]).arg(venv()))
        .context("creating the virtual environment (python3 with venv)")?;
    status(Command::new(venv().join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        SDK,
    ]))?;
    Ok(python)
}

/// `cargo xtask helm lint|template [NAMESPACE]|package`: the chart deploy/helm/netcost with its
/// default values (values files: use helm itself).
pub fn run(args: &[String]) -> Result<()> {
    let python = ensure_venv()?;
    let root = workspace_root();
    let chart = root.join("deploy/helm/netcost");
    let script = root.join("tests/helm/helm.py");
    let values = root.join("target/helm-values.json");
    std::fs::write(&values, "{}")?;
    let run = |argv: &[&Path]| -> Result<String> {
        let out = Command::new(&python)
            .arg(&script)
            .args(argv)
            .output()
            .context("running helm.py")?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?)
    };
    let json = |text: &str| -> Result<serde_json::Value> { Ok(serde_json::from_str(text)?) };
    match args.first().map(String::as_str) {
        Some("lint") => {
            let report = json(&run(&[Path::new("lint"), &chart, &values])?)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
            {
                bail!("the chart has lint findings");
            }
            Ok(())
        }
        Some("template") => {
            let namespace = args.get(1).map_or("netcost", String::as_str);
            let out = json(&run(&[
                Path::new("template"),
                &chart,
                Path::new("netcost"),
                Path::new(namespace),
                &values,
            ])?)?;
            print!("{}", out["manifest"].as_str().unwrap_or_default());
            Ok(())
        }
        Some("package") => {
            let dest = root.join("target/helm");
            std::fs::create_dir_all(&dest)?;
            let out = json(&run(&[Path::new("package"), &chart, &dest])?)?;
            step(&format!(
                "chart archive: {}",
                out["path"].as_str().unwrap_or("?")
            ));
            Ok(())
        }
        _ => bail!("usage: cargo xtask helm lint|template [NAMESPACE]|package"),
    }
}
