//! The live screen: the health line, one row per owner (sortable by cost or bytes, filtered by
//! namespace), the selected owner's top destinations and labels, and the keys. Refreshed when
//! the agent has drained again; the terminal is restored on quit, on Ctrl-C and on a panic
//! (ratatui's hook).

use std::time::{Duration, Instant};

use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Paragraph, Row, Table, TableState, Wrap},
    DefaultTerminal, Frame,
};

use super::{
    format::{bytes, health_line, rate, usd},
    snapshot::{self, Snapshot},
    Fetch, ViewError,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    Cost,
    Bytes,
}

pub struct App {
    snapshot: Snapshot,
    sort: Sort,
    /// `None`: every namespace.
    namespace: Option<String>,
    paused: bool,
    table: TableState,
    /// The selected owner, so that the selection follows it when the rows are sorted again.
    selected: Option<(String, String)>,
    status: String,
}

impl App {
    fn rows(&self) -> Vec<&snapshot::Row> {
        let mut rows: Vec<&snapshot::Row> = self
            .snapshot
            .rows
            .iter()
            .filter(|r| self.namespace.as_ref().is_none_or(|n| &r.namespace == n))
            .collect();
        match self.sort {
            Sort::Cost => rows.sort_by(|a, b| {
                b.dollars
                    .total_cmp(&a.dollars)
                    .then(b.total_bytes().total_cmp(&a.total_bytes()))
            }),
            Sort::Bytes => rows.sort_by(|a, b| b.total_bytes().total_cmp(&a.total_bytes())),
        }
        rows
    }

    fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .snapshot
            .rows
            .iter()
            .map(|r| r.namespace.clone())
            .filter(|n| !n.is_empty())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn next_namespace(&mut self) {
        let all = self.namespaces();
        self.namespace = match &self.namespace {
            None => all.first().cloned(),
            Some(n) => all
                .iter()
                .position(|x| x == n)
                .and_then(|i| all.get(i + 1))
                .cloned(),
        };
        self.table.select(Some(0));
    }
}

/// Runs until the user quits.
pub fn run(fetch: &mut Fetch) -> Result<(), ViewError> {
    let first = fetch.look()?;
    let mut app = App {
        snapshot: first,
        sort: Sort::Cost,
        namespace: None,
        paused: false,
        table: TableState::default().with_selected(Some(0)),
        selected: None,
        status: String::new(),
    };
    let mut terminal = ratatui::init();
    let result = event_loop(&mut terminal, &mut app, fetch);
    ratatui::restore();
    result
}

fn event_loop(
    terminal: &mut DefaultTerminal,
    app: &mut App,
    fetch: &mut Fetch,
) -> Result<(), ViewError> {
    let mut polled = Instant::now();
    loop {
        terminal
            .draw(|f| draw(f, app))
            .map_err(ViewError::Terminal)?;
        if event::poll(Duration::from_millis(250)).map_err(ViewError::Terminal)? {
            if let Event::Key(key) = event::read().map_err(ViewError::Terminal)? {
                if key.kind != KeyEventKind::Press {
                    continue;
                }
                let ctrl_c =
                    key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
                match key.code {
                    _ if ctrl_c => return Ok(()),
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('s') => {
                        app.sort = match app.sort {
                            Sort::Cost => Sort::Bytes,
                            Sort::Bytes => Sort::Cost,
                        }
                    }
                    KeyCode::Char('n') => app.next_namespace(),
                    KeyCode::Char('p') => app.paused = !app.paused,
                    KeyCode::Down | KeyCode::Char('j') => {
                        app.selected = None;
                        app.table.select_next();
                    }
                    KeyCode::Up | KeyCode::Char('k') => {
                        app.selected = None;
                        app.table.select_previous();
                    }
                    _ => {}
                }
            }
        }
        // Looks at the agent every second; the screen changes when it has drained again.
        if !app.paused && polled.elapsed() >= Duration::from_secs(1) {
            polled = Instant::now();
            match fetch.look_if_drained() {
                Ok(Some(s)) => {
                    app.snapshot = s;
                    app.status.clear();
                }
                Ok(None) => {}
                Err(e) => app.status = format!("the agent did not answer: {e}"),
            }
        }
    }
}

/// Class names short enough for a column head.
fn short_class(class: &str) -> &str {
    match class {
        "same_zone" => "same-zone",
        "cross_zone" => "x-zone",
        "cross_region" => "x-region",
        "regional_public" => "public-ip",
        "same_region" => "in-region",
        other => other,
    }
}

fn draw(f: &mut Frame, app: &mut App) {
    let [top, main, detail, keys] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(6),
        Constraint::Length(12),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let h = &app.snapshot.health;
    let title = format!(
        " netcost — node {} {} ",
        if h.node.is_empty() {
            "(this machine)"
        } else {
            &h.node
        },
        h.zone
    );
    let mut health = health_line(h);
    if !app.status.is_empty() {
        health = format!("{} | {health}", app.status);
    }
    f.render_widget(
        Paragraph::new(health)
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(title)),
        top,
    );

    let cells = app.snapshot.cells.clone();
    let priced = h.priced;
    let rows = app.rows();
    let mut header = vec!["owner".to_owned(), "workload".to_owned()];
    header.extend(cells.iter().map(|(c, d)| {
        let d = if d == "egress" { "out" } else { "in" };
        format!("{} {d}", short_class(c))
    }));
    header.extend(["out/s", "in/s", "$/hour", "$ so far"].map(String::from));
    let money = |d: f64| if priced { usd(d) } else { "-".to_owned() };
    let table_rows: Vec<Row> = rows
        .iter()
        .map(|r| {
            let mut c = vec![Cell::from(r.name()), Cell::from(r.workload.clone())];
            c.extend(
                cells
                    .iter()
                    .map(|k| Cell::from(bytes(r.bytes.get(k).copied().unwrap_or(0.0)))),
            );
            c.push(Cell::from(rate(r.rate_out)));
            c.push(Cell::from(rate(r.rate_in)));
            c.push(Cell::from(money(r.dollars_per_hour)));
            c.push(Cell::from(money(r.dollars)));
            Row::new(c)
        })
        .collect();
    let longest = |f: &dyn Fn(&snapshot::Row) -> usize, at_least: usize, at_most: usize| {
        let n = rows.iter().map(|r| f(r)).max().unwrap_or(0);
        Constraint::Length(n.clamp(at_least, at_most) as u16)
    };
    let mut widths = vec![
        longest(&|r| r.name().chars().count(), 12, 48),
        longest(&|r| r.workload.chars().count(), 8, 28),
    ];
    widths.extend(
        header[2..2 + cells.len()]
            .iter()
            .map(|h| Constraint::Length(h.len().max(10) as u16)),
    );
    widths.extend([12, 12, 9, 9].map(Constraint::Length));
    // The same owner as before wherever the sort put it; else the row under the cursor, the
    // first one once there are rows (ratatui clears the selection of an empty table).
    let kept = app
        .selected
        .as_ref()
        .and_then(|k| rows.iter().position(|r| &r.key() == k));
    let selected = match (kept, app.table.selected(), rows.is_empty()) {
        (_, _, true) => None,
        (Some(i), _, false) => Some(i),
        (None, None, false) => Some(0),
        (None, Some(i), false) => Some(i.min(rows.len() - 1)),
    };
    let chosen = selected.and_then(|i| rows.get(i)).map(|r| (*r).clone());
    let sort = match app.sort {
        Sort::Cost => "cost",
        Sort::Bytes => "bytes",
    };
    let filter = app.namespace.clone().unwrap_or_else(|| "all".into());
    let table = Table::new(table_rows, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .block(Block::bordered().title(format!(
            " {} owners, sorted by {sort}, namespace {filter}{} ",
            rows.len(),
            if app.paused { ", PAUSED" } else { "" }
        )));
    app.table.select(selected);
    app.selected = chosen.as_ref().map(snapshot::Row::key);
    f.render_stateful_widget(table, main, &mut app.table);

    let (title, lines) = match &chosen {
        Some(r) => {
            let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            let mut lines = vec![Line::from(format!("labels: {}", labels.join(", ")))];
            if r.destinations.is_empty() {
                lines.push(Line::from(
                    "no destination series (destinations.enabled: false?)",
                ));
            }
            for d in r.destinations.iter().take(9) {
                let port = if d.port.is_empty() {
                    String::new()
                } else {
                    format!(" port {}", d.port)
                };
                lines.push(Line::from(format!(
                    "{:<7} {:<13} {:<48} {:>12} {:>10}{port}",
                    d.direction,
                    d.class,
                    d.remote,
                    bytes(d.bytes),
                    money(d.dollars)
                )));
            }
            (format!(" top destinations of {} ", r.name()), lines)
        }
        None => (
            " top destinations ".to_owned(),
            vec![Line::from("no owner selected")],
        ),
    };
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        detail,
    );
    f.render_widget(
        Paragraph::new(format!(
            "↑/↓ select · s sort ({sort}) · n namespace ({filter}) · p {} · q quit",
            if app.paused { "resume" } else { "pause" }
        )),
        keys,
    );
}
