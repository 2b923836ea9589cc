use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{mpsc, Arc},
    time::Duration,
};

use agent::{
    config::{CgroupRoot, Config, ConntrackMode},
    drain::Drainer,
    identity::{find_cgroup2_mount, CgroupResolver},
    imds, k8s, kernel,
    metrics::{MapLabels, Metrics},
    nat::{self, NatTable, ResolverOptions},
    pipeline::{Pipeline, PipelineOptions},
    route::Router,
    server::{self, Health},
    topology::Place,
};
use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: netcost-agent [--config FILE]

Counts every pod's network bytes in the kernel and serves them as Prometheus metrics.
  --config FILE   configuration (default: $NETCOST_CONFIG, else /etc/netcost/config.yaml)
  --version       print the version
Logging: RUST_LOG (default: info).";

/// cgroup ids of pods that are gone stay resolvable this long, so late drains still attribute.
const CGROUP_RETENTION: Duration = Duration::from_secs(600);

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
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
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("netcost-agent: {e}");
            return ExitCode::from(2);
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
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netcost-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let cgroup_root = match &config.cgroup_root {
        CgroupRoot::Path(p) => p.clone(),
        CgroupRoot::Auto => {
            let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
            find_cgroup2_mount(&mounts)
                .context("no cgroup2 file system in /proc/mounts: netcost needs the cgroup v2 hierarchy mounted (set cgroup_root to point at it)")?
        }
    };
    let services = match &config.services.file {
        Some(path) => agent::services::ServiceRanges::load(path)?,
        None if config.services.bundled => agent::services::ServiceRanges::bundled(),
        None => Default::default(),
    };
    tracing::info!(
        origin = %services.origin,
        prefixes = services.prefixes,
        bundled_date = agent::services::bundled_date().unwrap_or("?"),
        "cloud-service ranges"
    );
    let price_table = match &config.prices.file {
        Some(path) => agent::prices::PriceTable::load(path)?,
        None => agent::prices::PriceTable::built_in(),
    };
    let kubecost = config
        .kubecost_config
        .as_deref()
        .map(agent::kubecost::KubecostRules::load)
        .transpose()?;
    let services = match &kubecost {
        Some(k) if !k.amazon_web_services => Default::default(),
        _ => services,
    };
    let router = Router {
        kubecost,
        services,
        nat_gateway: config.egress.nat_gateway.clone(),
        gateway_endpoints: config.egress.gateway_endpoints.clone(),
    };
    let (kernel, maps, translated) =
        kernel::load_and_attach(&cgroup_root, config.flow_entries, config.overflow_entries)
            .map_err(|e| {
                // Name the capability that is missing, if one is: the kernel only says EPERM.
                let missing = agent::privileges::missing_capabilities();
                let err = anyhow::Error::new(e).context(format!(
                    "attaching to cgroup v2 root {}",
                    cgroup_root.display()
                ));
                if missing.is_empty() {
                    err
                } else {
                    err.context(format!(
                        "missing capability {}",
                        missing
                            .iter()
                            .map(|(cap, why)| format!("{cap} ({why})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            })?;
    tracing::info!(
        cgroup_root = %cgroup_root.display(),
        programs = kernel.attached,
        "counting every socket's packets"
    );

    let mut registry = Registry::default();
    let mut metrics = Metrics::new(&mut registry);
    metrics.internet_route = router.internet_route(config.topology.own());
    metrics.programs_attached.set(kernel.attached as i64);
    for (map, capacity) in [
        ("flows", maps.flow_capacity),
        ("overflow", maps.overflow_capacity),
    ] {
        metrics
            .map_capacity
            .get_or_create(&MapLabels { map })
            .set(capacity as i64);
    }
    let registry = Arc::new(registry);

    // Our own place when neither the config nor our Node says it: IMDS, fetched in the
    // background (bytes to private addresses are held until a place is known).
    let fallback_place = Arc::new(std::sync::RwLock::new(Place::default()));
    if config.imds.enabled {
        tokio::spawn(imds::fill_place(
            config.imds.clone(),
            fallback_place.clone(),
        ));
    }

    let nat_table = start_conntrack(&config, translated, &metrics)?;

    let (kube_view, kube_health) = if config.kubernetes.enabled(k8s::in_cluster()) {
        let (view, health) = k8s::start(&config.kubernetes, &metrics).await?;
        (Some(view), Some(health))
    } else {
        tracing::info!("kubernetes disabled: pods are named by the UID in their cgroup path only");
        (None, None)
    };
    let health = Arc::new(Health::new(
        config.drain_interval * 3 + Duration::from_secs(5),
        kube_health,
    ));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    tracing::info!(address = %bound, "serving metrics on http://{bound}/metrics");
    tokio::spawn(server::serve(listener, registry.clone(), health.clone()));

    // The drain runs on its own thread: its syscalls block, and a slow drain must not delay scrapes.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let interval = config.drain_interval;
    let resolver = CgroupResolver::new(cgroup_root, CGROUP_RETENTION);
    let mut pipeline = Pipeline::new(
        Drainer::new(maps, 0),
        resolver,
        config.topology.clone(),
        fallback_place,
        kube_view,
        metrics.clone(),
        PipelineOptions {
            series_grace: config.series_grace,
            hold_max: config.kubernetes.hold_unknown,
            router,
            nat: nat_table,
            nat_wait: NAT_WAIT.max(config.drain_interval * 2),
            price_table,
            price_tier: config.prices.internet_tier,
            price_overrides: config.prices.overrides.clone(),
        },
    );
    let drain_health = health.clone();
    let drain_thread = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || loop {
            let stopping = !matches!(
                stop_rx.recv_timeout(interval),
                Err(mpsc::RecvTimeoutError::Timeout)
            );
            match pipeline.tick() {
                Ok(()) => drain_health.drained(),
                Err(e) => {
                    metrics.drain_errors.inc();
                    tracing::warn!(error = %e, "drain failed; the entries stay in the kernel for the next one");
                }
            }
            let maps = pipeline.drainer().buffers();
            for (map, n) in [
                ("flows", maps.last_flow_entries),
                ("overflow", maps.last_overflow_entries),
            ] {
                metrics.map_entries.get_or_create(&MapLabels { map }).set(n as i64);
            }
            metrics.map_entry_errors.inc_by(maps.last_entry_errors as u64);
            if stopping {
                return;
            }
        })
        .context("starting the drain thread")?;

    shutdown_signal().await;
    tracing::info!("stopping: final drain, then detaching");
    let _ = stop_tx.send(());
    let _ = tokio::task::spawn_blocking(move || drain_thread.join()).await;
    let attached = kernel.attached;
    drop(kernel);
    tracing::info!(programs = attached, "detached every program");
    Ok(())
}

/// How long bytes to a Service address wait for conntrack to name their connection.
const NAT_WAIT: Duration = Duration::from_secs(10);

/// Starts reading conntrack (kube-proxy's NAT decisions). `auto` goes on without it, saying so,
/// when the kernel or our privileges do not allow it.
fn start_conntrack(
    config: &Config,
    translated: kernel::TranslatedTrie,
    metrics: &Metrics,
) -> anyhow::Result<Option<nat::SharedNat>> {
    if config.nat.conntrack == ConntrackMode::Off {
        tracing::info!(
            "nat.conntrack is off: Service traffic is classified by the address pods sent to"
        );
        return Ok(None);
    }
    let retention = config
        .nat
        .retention
        .unwrap_or_else(|| Duration::from_secs(30).max(config.drain_interval * 3));
    let table = NatTable::new(
        config.nat.service_cidrs.clone(),
        config.nat.max_connections as usize * 2,
        retention,
    )
    .shared();
    let options = ResolverOptions {
        netns: config.nat.netns.clone(),
        receive_buffer: 8 * 1024 * 1024,
        resync: Duration::from_secs(300),
    };
    match nat::spawn_resolver(options, table.clone(), translated, metrics.clone()) {
        Ok(_) => {
            let t = nat::lock(&table);
            tracing::info!(
                connections = t.len() / 2,
                addresses = t.learned_addresses(),
                service_cidrs = config.nat.service_cidrs.len(),
                "reading conntrack: Service and SNAT traffic is classified by the real remote end"
            );
            drop(t);
            Ok(Some(table))
        }
        Err(e) if config.nat.conntrack == ConntrackMode::Auto => {
            tracing::warn!(error = %e, "conntrack unavailable: Service traffic is classified by the address pods sent to");
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context("nat.conntrack is true")),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
