//! Root test: each of the metrics server's limits reached on its own, with small limits set in
//! the config so that each is reached for sure: a connection beyond the cap is answered `503`
//! and closed, a silent connection is closed at the header timeout, a request head over 16 KiB is
//! refused, a gzip scrape is one gzip member that decodes to the exposition, and a reader that
//! stops taking its answer mid-way is closed by the no-progress timeout at the latest.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use netcost_tests::{agent::Agent, run, serial};

const CAP: usize = 16;
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads until the server closes (EOF or reset) or `limit` passes; what came, and whether it
/// was closed.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    while Instant::now() < deadline {
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

/// How many of the connections from `client_ports` the agent holds its end of: the kernel keeps
/// a closed socket with unsent data (an orphan, inode 0) until the peer takes it or it times
/// out, so the socket table says it, not the peer. (Before `accept`, the inode is 0 too.)
fn agent_holds(agent_port: u16, client_ports: &[u16]) -> Result<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let port = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    Ok(table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 9
                && port(f[1]) == Some(agent_port)
                && port(f[2]).is_some_and(|p| client_ports.contains(&p))
                && f[9] != "0"
        })
        .count())
}

/// Waits (up to `limit`) until the agent has accepted every connection from `client_ports`.
fn wait_until_accepted(agent_port: u16, client_ports: &[u16], limit: Duration) -> Result<()> {
    let t = Instant::now();
    while agent_holds(agent_port, client_ports)? < client_ports.len() && t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn status_line(answer: &[u8]) -> String {
    String::from_utf8_lossy(answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn every_server_limit_is_reached_and_holds() -> Result<()> {
    let _serial = serial();
    let config = format!(
        "drain_interval_seconds: 0.5\nserver: {{ header_timeout_seconds: {}, idle_timeout_seconds: {}, max_connections: {CAP} }}\n{}kubernetes:\n  enabled: false\n",
        HEADER_TIMEOUT.as_secs(),
        IDLE_TIMEOUT.as_secs(),
        netcost_tests::simnode::TOPOLOGY_YAML
    );
    let agent = Agent::start("http-limits", &config)?;
    let mut failures = Vec::new();

    // The cap: CAP silent connections hold every slot; the next one is told 503 and closed.
    let mut silent: Vec<TcpStream> = (0..CAP)
        .map(|_| TcpStream::connect(("127.0.0.1", agent.port)))
        .collect::<Result<_, _>>()?;
    // Wait until the agent took every one (the socket table gives its end an inode then).
    let ports: Vec<u16> = silent
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?;
    wait_until_accepted(agent.port, &ports, HEADER_TIMEOUT / 2)?;
    let t = Instant::now();
    let mut extra = TcpStream::connect(("127.0.0.1", agent.port))?;
    let asked = Instant::now();
    let (answer, closed) = read_until_closed(&mut extra, Duration::from_secs(3));
    let line = status_line(&answer);
    eprintln!(
        "connection {} of {CAP}: {line:?}, closed {closed} after {:?}",
        CAP + 1,
        asked.elapsed(),
    );
    if !line.starts_with("HTTP/1.1 503") || !closed {
        failures.push(format!(
            "connection beyond the cap of {CAP}: {line:?}, closed {closed}"
        ));
    }
    // The silent ones are closed at the header timeout, which frees the slots.
    let mut closed_silent = 0;
    for s in silent.iter_mut() {
        let (_, closed) = read_until_closed(s, HEADER_TIMEOUT * 3);
        closed_silent += usize::from(closed);
    }
    let elapsed = t.elapsed();
    eprintln!("silent connections closed: {closed_silent} of {CAP} within {elapsed:?}");
    if closed_silent != CAP {
        failures.push(format!(
            "{closed_silent} of {CAP} silent connections closed at the header timeout"
        ));
    }
    drop(silent);
    match agent.get("/healthz") {
        Ok((200, _)) => {}
        other => failures.push(format!("/healthz once the slots are free: {other:?}")),
    }

    // A head over 16 KiB is refused (and one under it is served: the limit is where it says).
    let head = |filler: usize| {
        format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(filler)
        )
    };
    for (filler, want_ok) in [(15 * 1024, true), (20 * 1024, false)] {
        let mut s = TcpStream::connect(("127.0.0.1", agent.port))?;
        // The server may close before the whole head is written: that is a refusal too.
        let _ = s.write_all(head(filler).as_bytes());
        let (answer, _) = read_until_closed(&mut s, Duration::from_secs(5));
        let line = status_line(&answer);
        eprintln!("head with {filler} filler bytes: {line:?}");
        let ok = line.starts_with("HTTP/1.1 200");
        if ok != want_ok {
            failures.push(format!("a head with {filler} filler bytes got {line:?}"));
        }
    }

    // gzip: asked for, given, and it decodes to the exposition. HTTP/1.0, so that the body
    // ends at the close rather than in chunks.
    let mut s = TcpStream::connect(("127.0.0.1", agent.port))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nAccept-Encoding: gzip\r\n\r\n")?;
    let (answer, _) = read_until_closed(&mut s, Duration::from_secs(5));
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response head")?;
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    let mut text = String::new();
    let decoded = flate2::read::GzDecoder::new(&answer[split + 4..]).read_to_string(&mut text);
    eprintln!(
        "gzip scrape: {} bytes on the wire, {} decoded ({decoded:?})",
        answer.len() - split - 4,
        text.len()
    );
    if !head.contains("content-encoding: gzip")
        || decoded.is_err()
        || !text.contains("netcost_build_info")
    {
        failures.push(format!(
            "a gzip scrape: head {head:?}, decoding {decoded:?}"
        ));
    }
    // And as curl reads it (it reads one gzip member and fails on anything after it).
    let url = format!("http://127.0.0.1:{}/metrics", agent.port);
    match run(&["curl", "-sS", "--compressed", "-D", "-", &url]) {
        Ok(a)
            if a.to_ascii_lowercase().contains("content-encoding: gzip")
                && a.contains("netcost_build_info") => {}
        other => failures.push(format!("curl --compressed: {:?}", other.map(|a| a.len()))),
    }

    // A reader that stops taking its answer: 300 pipelined scrapes into a 2 KiB receive buffer.
    let one = agent.get("/metrics")?.1.len();
    let mut stuck = TcpStream::connect(("127.0.0.1", agent.port))?;
    netcost_tests::small_receive_buffer(&stuck, 2048);
    let client_port = stuck.local_addr()?.port();
    wait_until_accepted(agent.port, &[client_port], Duration::from_secs(1))?;
    stuck
        .write_all(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                .repeat(300)
                .as_slice(),
        )
        .context("pipelining the scrapes")?;
    let sent = Instant::now();
    let mut closed_after = None;
    while sent.elapsed() < IDLE_TIMEOUT * 3 {
        if agent_holds(agent.port, &[client_port])? == 0 {
            closed_after = Some(sent.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (taken, _) = read_until_closed(&mut stuck, Duration::from_secs(5));
    eprintln!(
        "stuck reader: closed after {closed_after:?}; it got {} of {} bytes asked for",
        taken.len(),
        300 * one
    );
    match closed_after {
        // At the latest at the no-progress timeout. Pipelined, it goes sooner: hyper's header
        // timer runs while it waits to read the next request behind an answer it cannot send.
        Some(t) if t <= IDLE_TIMEOUT + Duration::from_secs(1) => {}
        other => failures.push(format!(
            "a reader that stopped was closed after {other:?}, want at most {IDLE_TIMEOUT:?}"
        )),
    }
    if taken.len() >= 300 * one {
        failures.push("the stuck reader got every answer: nothing stalled".into());
    }
    match agent.get("/healthz") {
        Ok((200, _)) => {}
        other => failures.push(format!("/healthz at the end: {other:?}")),
    }
    agent.stop()?;
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}
