//! `netcost-agent`: the command line. The agent itself is wired in `app`.

use std::{path::PathBuf, process::ExitCode};

use agent::config::{Config, StateConfig};
use tracing_subscriber::EnvFilter;

mod app;

const USAGE: &str = "usage: netcost-agent [--config FILE]
       netcost-agent cleanup [--config FILE] [--pin-dir DIR] [--state-dir DIR] [--stay]
       netcost-agent report (--prometheus URL [--since 7d] | --metrics URL [--over 60s]) [...]
       netcost-agent view [--metrics URL] [--once [--after 10s]]

Counts every pod's network bytes in the kernel and serves them as Prometheus metrics.
  --config FILE   configuration (default: $NETCOST_CONFIG, else /etc/netcost/config.yaml)
  --version       print the version
  cleanup         detach the programs and remove every pin and the checkpoint (uninstall);
                  --pin-dir and --state-dir say where (default: the config's state section);
                  --stay then waits for SIGTERM (for a DaemonSet that cleans every node)
  report          cost per workload, top destinations and what to change (report --help)
  view            one agent live in the terminal: pods, classes, destinations, health (view --help)
Logging: RUST_LOG (default: info).";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if std::env::args().nth(1).as_deref() == Some("report") {
        return run_report(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("view") {
        return run_view(std::env::args().skip(2));
    }
    let mut args = std::env::args().skip(1);
    let mut cleanup = false;
    let mut stay = false;
    let mut pin_dir: Option<PathBuf> = None;
    let mut state_dir: Option<PathBuf> = None;
    let mut config_path = std::env::var_os("NETCOST_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/netcost/config.yaml"));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => match args.next() {
                Some(p) => config_path = PathBuf::from(p),
                None => {
                    eprintln!("netcost-agent: --config needs a file\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "cleanup" => cleanup = true,
            flag @ ("--pin-dir" | "--state-dir") => match args.next() {
                Some(p) if p.starts_with('/') => {
                    let p = Some(PathBuf::from(p));
                    if flag == "--pin-dir" {
                        pin_dir = p;
                    } else {
                        state_dir = p;
                    }
                }
                _ => {
                    eprintln!("netcost-agent: {flag} needs an absolute path\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--stay" => stay = true,
            "--version" => {
                println!("netcost-agent {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("netcost-agent: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if cleanup {
        return run_cleanup(&config_path, pin_dir, state_dir, stay);
    }
    if stay || pin_dir.is_some() || state_dir.is_some() {
        eprintln!("netcost-agent: --stay, --pin-dir and --state-dir go with cleanup\n{USAGE}");
        return ExitCode::from(2);
    }
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("netcost-agent: {e}");
            return ExitCode::from(2);
        }
    };
    // Before the runtime: its threads would keep the capabilities `prepare` drops.
    let prepared = match app::prepare(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("netcost-agent: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netcost-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(prepared)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netcost-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `netcost-agent report`: reads, prints, changes nothing.
fn run_report(args: impl Iterator<Item = String>) -> ExitCode {
    let args: Vec<String> = args.collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{}", agent::report::USAGE);
        return ExitCode::SUCCESS;
    }
    let options = match agent::report::parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("netcost-agent report: {e}\n{}", agent::report::USAGE);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netcost-agent report: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent::report::run(&options)) {
        Ok(report) => {
            print!("{}", agent::report::render(&report, options.format));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netcost-agent report: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `netcost-agent view`: reads one agent's /metrics and shows it.
fn run_view(args: impl Iterator<Item = String>) -> ExitCode {
    let args: Vec<String> = args.collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{}", agent::view::USAGE);
        return ExitCode::SUCCESS;
    }
    let options = match agent::view::parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("netcost-agent view: {e}\n{}", agent::view::USAGE);
            return ExitCode::from(2);
        }
    };
    match agent::view::run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netcost-agent view: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `netcost-agent cleanup`: what uninstalling needs on each node.
fn run_cleanup(
    config_path: &std::path::Path,
    pin_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    stay: bool,
) -> ExitCode {
    // A missing config file is fine here (the defaults say where the state is), and only its
    // `state` section is read: uninstalling must not depend on the rest being valid here.
    let state = if config_path.exists() {
        match StateConfig::load(config_path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("netcost-agent cleanup: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        StateConfig::default()
    };
    let state = StateConfig {
        pin_dir: pin_dir.unwrap_or(state.pin_dir),
        dir: state_dir.unwrap_or(state.dir),
        ..state
    };
    let mut ok = true;
    for line in app::cleanup(&state) {
        match line {
            Ok(done) => println!("{done}"),
            Err(e) => {
                eprintln!("netcost-agent cleanup: {e}");
                ok = false;
            }
        }
    }
    if stay {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(app::shutdown_signal()),
            Err(e) => eprintln!("netcost-agent cleanup: {e}"),
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
