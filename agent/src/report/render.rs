//! The report as people read it (a plain table or Markdown, GiB and $/month) or as programs
//! do (JSON, bytes and dollars unrounded).

use std::fmt::Write as _;

use super::{
    analyze::Report,
    context::Money,
    series::{gib, grid, usd},
};

/// A window as people say it: 40 s, 15 min, 6.0 h, 7.0 d.
fn span(seconds: f64) -> String {
    match seconds {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s if s < 2.0 * 86400.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} d", s / 86400.0),
    }
}

fn money(m: &Money) -> [String; 3] {
    [gib(m.bytes), usd(m.dollars), usd(m.monthly)]
}

pub fn table(r: &Report, markdown: bool) -> String {
    let mut out = String::new();
    let h = |out: &mut String, title: &str| {
        if markdown {
            let _ = writeln!(out, "### {title}\n");
        } else {
            let _ = writeln!(out, "== {title}");
        }
    };
    let [b, d, m] = money(&r.total);
    let _ = writeln!(
        out,
        "netcost report: {region}, a window of {window}: {b}, {d} in the window, {m}/month projected (730 h)\n",
        region = r.region,
        window = span(r.window_seconds),
    );
    h(&mut out, &format!("Cost by {} and class", r.grouped_by));
    let rows = r
        .costs
        .iter()
        .map(|c| {
            let [b, d, m] = money(&c.money);
            vec![c.group.clone(), c.class.clone(), b, d, m]
        })
        .collect();
    grid(
        &mut out,
        markdown,
        &["who", "class", "bytes", "$ window", "$/month"],
        rows,
    );
    h(&mut out, "Top destinations");
    let rows = r
        .destinations
        .iter()
        .map(|x| {
            let [b, d, m] = money(&x.money);
            let port = x.port.map(|p| p.to_string()).unwrap_or_default();
            vec![
                x.from.clone(),
                x.direction.clone(),
                x.class.clone(),
                x.remote.clone(),
                port,
                b,
                d,
                m,
            ]
        })
        .collect();
    grid(
        &mut out,
        markdown,
        &[
            "from",
            "dir",
            "class",
            "remote",
            "served port",
            "bytes",
            "$ window",
            "$/month",
        ],
        rows,
    );
    h(&mut out, "Costliest pairs");
    let rows = r
        .pairs
        .iter()
        .map(|p| {
            let [b, d, m] = money(&p.money);
            vec![p.from.clone(), p.to.clone(), b, d, m]
        })
        .collect();
    grid(
        &mut out,
        markdown,
        &["from", "to", "bytes", "$ window", "$/month"],
        rows,
    );
    if let Some(a) = &r.agent {
        h(&mut out, "The agent's own scrapes");
        let _ = writeln!(
            out,
            "{:.0} bytes per /metrics answer, {:.0} answers an hour",
            a.bytes_per_scrape, a.scrapes_per_hour
        );
        let rows = a
            .by_class
            .iter()
            .map(|c| {
                let [b, d, m] = money(&c.money);
                vec![c.class.clone(), b, d, m]
            })
            .collect();
        grid(
            &mut out,
            markdown,
            &["scraper class", "bytes", "$ window", "$/month"],
            rows,
        );
    }
    h(&mut out, "What to change");
    if r.suggestions.is_empty() {
        out.push_str("Nothing worth changing in this window.\n\n");
    }
    for (i, s) in r.suggestions.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}{}. {} — saves {}/month (on {} in the window; {} gross, {} new cost)",
            if markdown { "**" } else { "" },
            i + 1,
            s.title,
            usd(s.monthly_saving),
            gib(s.bytes),
            usd(s.monthly_gross),
            usd(s.monthly_new_cost),
        );
        if markdown {
            out.truncate(out.trim_end().len());
            out.push_str("**\n");
        }
        let _ = writeln!(out, "\n{}\n", s.explanation);
        let fence = if markdown { "```\n" } else { "" };
        for line in format!("{fence}{}\n{fence}", s.change).lines() {
            let indent = if markdown { "" } else { "    " };
            let _ = writeln!(out, "{indent}{line}");
        }
        out.push('\n');
    }
    if !r.notes.is_empty() {
        h(&mut out, "Notes");
        for n in &r.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")) + "\n"
}
