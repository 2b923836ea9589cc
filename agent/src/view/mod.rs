//! `netcost-agent view`: one agent, live in a terminal (`cargo xtask run` opens it on the agent
//! it started).
//!
//! In: the agent's `/metrics`, looked at every second (`report`'s scrape and parser). Out: the
//! live screen (`screen`, ratatui) with one row per owner, the selected owner's destinations and
//! the agent's health — or, without a terminal or with `--once`, one plain snapshot (`plain`)
//! after `--after`. `snapshot` turns samples into rows; `format` holds the units and the health
//! line. The view reads; it changes nothing.

use std::{io::IsTerminal as _, time::Duration};

use crate::{
    inventory::aws::http::HttpClient,
    report::{parse_duration, scrape, ReportError},
};

mod format;
mod plain;
mod screen;
mod snapshot;
#[cfg(test)]
mod tests;

pub use snapshot::{build, Snapshot};

pub const USAGE: &str =
    "usage: netcost-agent view [--metrics URL] [--once] [--after 10s] [--destinations N]

One agent live: a row per pod (and the node) with bytes per class and direction, rates, $/hour
and $ so far; the selected pod's top destinations; the agent's health. Keys: ↑/↓ select, s sort
(cost, bytes), n namespace, p pause, q quit.
  --metrics URL     the agent's /metrics (default http://127.0.0.1:3001/metrics)
  --once            print one plain snapshot and exit (also without a terminal)
  --after D         with --once: wait D (e.g. 10s), for rates over D (default 0)
  --destinations N  destinations per pod in the plain snapshot (default 5)";

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Fetch(#[from] ReportError),
    #[error("the terminal: {0}")]
    Terminal(std::io::Error),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ViewOptions {
    pub url: String,
    pub once: bool,
    pub after: Duration,
    pub destinations: usize,
}

pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<ViewOptions, ViewError> {
    let mut o = ViewOptions {
        url: "http://127.0.0.1:3001/metrics".into(),
        once: false,
        after: Duration::ZERO,
        destinations: 5,
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| ViewError::Usage(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--metrics" => o.url = value()?,
            "--once" => o.once = true,
            "--after" => {
                let v = value()?;
                o.after = match v.as_str() {
                    "0" | "0s" => Duration::ZERO,
                    _ => parse_duration(&v).ok_or_else(|| {
                        ViewError::Usage(format!("--after: {v:?} is not a duration such as 10s"))
                    })?,
                };
            }
            "--destinations" => {
                let v = value()?;
                o.destinations = v.parse().map_err(|_| {
                    ViewError::Usage(format!("--destinations: {v:?} is not a number"))
                })?;
            }
            other => return Err(ViewError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    Ok(o)
}

/// Looks at one agent: each look a snapshot, with rates since the look before.
pub struct Fetch {
    url: String,
    client: HttpClient,
    runtime: tokio::runtime::Runtime,
    last: Option<(Snapshot, std::time::Instant)>,
}

impl Fetch {
    pub fn new(url: &str) -> Result<Fetch, ViewError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ViewError::Terminal)?;
        Ok(Fetch {
            url: url.to_owned(),
            client: HttpClient::unpooled(),
            runtime,
            last: None,
        })
    }

    /// A new snapshot.
    pub fn look(&mut self) -> Result<Snapshot, ViewError> {
        // Short: the screen waits for it, and q must answer.
        let samples =
            self.runtime
                .block_on(scrape(&self.client, &self.url, Duration::from_secs(2)))?;
        let now = std::time::Instant::now();
        let previous = self
            .last
            .as_ref()
            .map(|(s, at)| (s, now.duration_since(*at).as_secs_f64()));
        let snapshot = build(&samples, previous);
        self.last = Some((snapshot.clone(), now));
        Ok(snapshot)
    }

    /// A new snapshot if the agent drained since the last one.
    pub fn look_if_drained(&mut self) -> Result<Option<Snapshot>, ViewError> {
        let before = self.last.as_ref().map(|(s, at)| (s.clone(), *at));
        let s = self.look()?;
        match before {
            Some((old, at)) if old.health.drains == s.health.drains => {
                // Not drained: keep the old look as the base of the rates.
                self.last = Some((old, at));
                Ok(None)
            }
            _ => Ok(Some(s)),
        }
    }
}

/// Runs the view until the user quits (or prints one snapshot).
pub fn run(options: &ViewOptions) -> Result<(), ViewError> {
    let mut fetch = Fetch::new(&options.url)?;
    if options.once || !std::io::stdout().is_terminal() {
        let first = fetch.look()?;
        let snapshot = if options.after.is_zero() {
            first
        } else {
            std::thread::sleep(options.after);
            fetch.look()?
        };
        print!("{}", plain::render(&snapshot, options.destinations));
        return Ok(());
    }
    screen::run(&mut fetch)
}
