//! `cargo xtask bench` (filled in below).
use anyhow::Result;
use std::path::Path;

pub fn run(_tools: &crate::Tools, _agent: &Path) -> Result<()> {
    anyhow::bail!("bench: not written yet")
}
