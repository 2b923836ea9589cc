//! A snapshot as plain text, for pipes and scripts: exact byte counts per owner, class and
//! direction, rates, dollars, each owner's top destinations, and the health line.

use std::fmt::Write as _;

use crate::report::grid;

use super::{
    format::{health_line, rate, usd},
    snapshot::Snapshot,
};

pub fn render(s: &Snapshot, destinations: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", health_line(&s.health));
    let mut head = vec!["owner".to_owned(), "workload".to_owned()];
    head.extend(s.cells.iter().map(|(c, d)| format!("{c} {d}")));
    head.extend(["out/s", "in/s", "$/hour", "$ so far"].map(String::from));
    let mut rows = vec![head];
    for r in &s.rows {
        let mut row = vec![r.name(), r.workload.clone()];
        row.extend(
            s.cells
                .iter()
                .map(|c| format!("{:.0}", r.bytes.get(c).copied().unwrap_or(0.0))),
        );
        row.push(rate(r.rate_out));
        row.push(rate(r.rate_in));
        row.push(if s.health.priced {
            usd(r.dollars_per_hour)
        } else {
            "-".into()
        });
        row.push(if s.health.priced {
            usd(r.dollars)
        } else {
            "-".into()
        });
        rows.push(row);
    }
    grid(&mut out, false, &rows[0].clone(), rows[1..].to_vec());
    for r in s.rows.iter().filter(|r| !r.destinations.is_empty()) {
        let _ = writeln!(out, "\ntop destinations of {}:", r.name());
        let mut rows = vec![["direction", "class", "remote", "port", "bytes", "$"]
            .map(String::from)
            .to_vec()];
        for d in r.destinations.iter().take(destinations) {
            rows.push(vec![
                d.direction.clone(),
                d.class.clone(),
                d.remote.clone(),
                d.port.clone(),
                format!("{:.0}", d.bytes),
                usd(d.dollars),
            ]);
        }
        grid(&mut out, false, &rows[0].clone(), rows[1..].to_vec());
    }
    out
}
