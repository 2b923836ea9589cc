//! `cargo xtask fuzz [TARGET] [--iterations N]`: the parsers' fuzz tests (agent/src/fuzz and its
//! submodules) with many more inputs than `cargo xtask test` gives them.

use anyhow::{bail, Context as _, Result};

use crate::{ensure_tools, status, step, Tools};

/// The fuzz tests whose names contain `filter`.
fn fuzz_tests(tools: &Tools, filter: &str) -> Result<Vec<String>> {
    let listed = tools
        .cargo()
        .args([
            "test",
            "--release",
            "-p",
            "agent",
            "--lib",
            filter,
            "--",
            "--list",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("listing the fuzz tests")?;
    if !listed.status.success() {
        bail!("listing the fuzz tests failed");
    }
    Ok(String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .filter(|n| n.starts_with("fuzz::") && n.contains("::fuzz_"))
        .map(str::to_owned)
        .collect())
}

/// The parsers' fuzz tests (agent/src/fuzz/) with many more inputs, in release.
pub fn fuzz(args: &[String]) -> Result<()> {
    let mut iterations = "200000".to_owned();
    let mut target = String::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--iterations" => {
                iterations = it.next().context("--iterations needs a number")?.clone();
                iterations
                    .parse::<u64>()
                    .with_context(|| format!("--iterations {iterations:?}"))?;
            }
            t if !t.starts_with('-') => target = t.to_owned(),
            other => bail!("unknown argument {other:?}"),
        }
    }
    let tools = ensure_tools()?;
    // The fuzz tests live in agent/src/fuzz and its submodules (fuzz::netlink::fuzz_conntrack_…):
    // a name that matches none is an error, not a run of zero tests.
    let filter = if target.is_empty() {
        "fuzz::".to_owned()
    } else {
        format!("fuzz_{target}")
    };
    if fuzz_tests(&tools, &filter)?.is_empty() {
        let all: Vec<String> = fuzz_tests(&tools, "fuzz::")?
            .iter()
            .filter_map(|n| n.rsplit("::fuzz_").next().map(str::to_owned))
            .collect();
        bail!(
            "no fuzz test matches {target:?}; targets: {}",
            all.join(", ")
        );
    }
    step(&format!(
        "fuzzing {} with {iterations} inputs each (release)",
        if target.is_empty() {
            "every parser"
        } else {
            &target
        }
    ));
    status(
        tools
            .cargo()
            .args(["test", "--release", "-p", "agent", "--lib"])
            .arg(&filter)
            .args(["--", "--nocapture"])
            .env("NETCOST_FUZZ_ITERATIONS", &iterations),
    )
}
