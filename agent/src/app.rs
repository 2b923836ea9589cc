//! Wiring: builds every component from the config and runs them. In two steps: [`prepare`]
//! does everything that needs a capability (load and attach the programs, adopt the pins, open
//! conntrack) before any other thread exists, then drops every capability; [`run`] starts the
//! rest (the API watchers, AWS, the server, the drain) without them.

use std::{
    path::PathBuf,
    sync::{mpsc, Arc},
    time::Duration,
};

use agent::{
    aws::{self, AwsOptions, CloudFacts, SourcesSummary},
    checkpoint::{CheckpointStore, MapsIdentity, StartTotals},
    config::{CgroupRoot, Config, ConntrackMode},
    drain::{CountingBuffers as _, Drainer},
    identity::{find_cgroup2_mount, CgroupResolver},
    k8s, kernel,
    metrics::{MapLabels, Metrics, StartLabels},
    nat::{self, NatTable, ResolverOptions},
    pipeline::{Pipeline, PipelineOptions},
    prices::PriceTable,
    route::Router,
    server::{self, Health},
};
use anyhow::Context as _;
use prometheus_client::registry::Registry;

/// cgroup ids of pods that are gone stay resolvable this long, so late drains still attribute.
const CGROUP_RETENTION: Duration = Duration::from_secs(600);

/// What [`prepare`] made: the attached programs and everything the rest is built from.
pub struct Prepared {
    config: Config,
    kernel: kernel::Kernel,
    drainer: Drainer<kernel::KernelMaps>,
    totals: StartTotals,
    metrics: Metrics,
    durable: Registry,
    live: Registry,
    router: Router,
    price_table: PriceTable,
    nat_table: Option<nat::SharedNat>,
    checkpoint: Option<(CheckpointStore, MapsIdentity)>,
    cgroup_root: PathBuf,
}

/// The privileged part: on the main thread, before the runtime and every thread but the
/// conntrack reader's exist. Ends by dropping every capability of this thread (the conntrack
/// thread keeps CAP_NET_ADMIN alone, for its resync dumps).
pub fn prepare(config: Config) -> anyhow::Result<Prepared> {
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
    let state = &config.state;
    let pin_root = if state.pin && agent::bpf_sys::on_bpffs(&state.pin_dir) {
        Some(state.pin_dir.clone())
    } else {
        if state.pin {
            tracing::error!(pin_dir = %state.pin_dir.display(), "state.pin_dir is not on a BPF file system: maps and links are not pinned, so a restart loses what the kernel counted since the last drain. Mount bpffs (mount -t bpf bpf /sys/fs/bpf, or mount it into the pod) or set state.pin: false");
        }
        None
    };
    let pins = pin_root.as_deref().map(kernel::versioned_pin_dir);
    // Pins of another layout (an upgrade across ABI versions): their programs count into maps
    // this agent cannot read. They are removed once our programs are attached.
    let other_layouts = pin_root
        .as_deref()
        .map(other_layout_dirs)
        .unwrap_or_default();
    let loaded = kernel::load(&kernel::LoadOptions {
        flow_entries: config.flow_entries,
        overflow_entries: config.overflow_entries,
        flow_quota: config.flows_per_owner,
        pins: pins.as_deref(),
    })
    .map_err(|e| name_missing_capability(e, "loading the eBPF programs"))?;
    let kernel::Loaded {
        mut kernel,
        maps,
        translated,
        origin,
        maps_id,
    } = loaded;

    // Which totals to go on from: the checkpoint, if it belongs to these maps (or the maps are
    // new, so there is nothing in them it could disagree with).
    let store = match std::fs::create_dir_all(&state.dir) {
        Ok(()) => Some(CheckpointStore::in_dir(&state.dir)),
        Err(e) => {
            tracing::error!(dir = %state.dir.display(), error = %e, "state.dir is not writable: the totals are not checkpointed, so they start from zero at every restart");
            None
        }
    };
    let identity = MapsIdentity::current(maps_id);
    let mut maps = maps;
    let epoch = maps.epoch().context("reading the kernel's epoch")?;
    let totals = match store.as_ref().map(CheckpointStore::load).transpose() {
        Ok(checkpoint) => StartTotals::decide(
            &origin,
            other_layouts.first().map(PathBuf::as_path),
            checkpoint.flatten(),
            &identity,
            epoch,
        ),
        // Corrupt, truncated or of a newer format: kept for whoever looks into it, and the
        // totals start again (restoring part of it could take a counter back).
        Err(e) => {
            let aside = store.as_ref().map(CheckpointStore::set_aside);
            let reason = match aside {
                Some(Ok(p)) => format!("{e}; moved aside to {}", p.display()),
                Some(Err(m)) => format!("{e}; could not move it aside: {m}"),
                None => e.to_string(),
            };
            StartTotals::Reset {
                reason,
                incompatible: false,
            }
        }
    };
    let drain_state = match &totals {
        StartTotals::Reset {
            reason,
            incompatible: true,
        } => {
            tracing::warn!(%reason, "incompatible layout: starting fresh, the totals start from zero (a counter reset Prometheus sees)");
            None
        }
        StartTotals::Reset { reason, .. } => {
            tracing::warn!(%reason, "the totals start from zero");
            None
        }
        StartTotals::Restored { drain, .. } => *drain,
        StartTotals::New => None,
    };
    let (drainer, resumed) =
        Drainer::resume(maps, drain_state).context("reading the kernel's buffers")?;
    tracing::info!(
        maps = ?origin,
        totals = totals.label(),
        ?resumed,
        pinned = pins.is_some(),
        checkpoint = ?store.as_ref().map(|s| s.path.display().to_string()),
        "state"
    );

    // Two registries: the totals, exposed only from an encoding made after their checkpoint was
    // written, and the agent's own state, encoded at each scrape.
    let mut durable = Registry::default();
    let mut live = Registry::default();
    let mut metrics = Metrics::new_split(&mut durable, &mut live);
    metrics.internet_route = router.internet_route(config.topology.own());
    metrics
        .start_info
        .get_or_create(&StartLabels {
            maps: origin.label(),
            totals: totals.label(),
            pins: if pins.is_some() { "pinned" } else { "unpinned" },
        })
        .set(1);
    for (map, capacity) in [
        ("flows", drainer.buffers().flow_capacity),
        ("overflow", drainer.buffers().overflow_capacity),
    ] {
        metrics
            .map_capacity
            .get_or_create(&MapLabels { map })
            .set(capacity as i64);
    }
    let nat_table = start_conntrack(&config, translated, &metrics)?;

    // Attach last: the TRANSLATED trie is filled from conntrack by now, so our programs count
    // Service connections right from their first packet.
    let attached = kernel.attach(&cgroup_root).map_err(|e| {
        name_missing_capability(
            e,
            &format!("attaching to cgroup v2 root {}", cgroup_root.display()),
        )
    })?;
    metrics.programs_attached.set(kernel.attached as i64);
    tracing::info!(
        cgroup_root = %cgroup_root.display(),
        programs = ?attached,
        "counting every socket's packets"
    );
    for dir in &other_layouts {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => tracing::info!(dir = %dir.display(), "removed the pins of another layout"),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the pins of another layout")
            }
        }
    }

    agent::privileges::drop_all_except(&[])
        .context("dropping the capabilities no longer needed")?;
    tracing::info!("capabilities dropped: the agent runs on with none (the conntrack reader keeps CAP_NET_ADMIN for its resync dumps)");
    Ok(Prepared {
        checkpoint: store.map(|s| (s, identity)),
        config,
        kernel,
        drainer,
        totals,
        metrics,
        durable,
        live,
        router,
        price_table,
        nat_table,
        cgroup_root,
    })
}

/// Everything else, until SIGTERM or Ctrl-C: a last drain and checkpoint, and the programs stay
/// attached when pinned.
pub async fn run(prepared: Prepared) -> anyhow::Result<()> {
    let Prepared {
        config,
        kernel,
        drainer,
        totals,
        metrics,
        durable,
        live,
        router,
        price_table,
        nat_table,
        checkpoint,
        cgroup_root,
    } = prepared;
    let live = Arc::new(live);
    let exposition = Arc::new(server::ExpositionCache::default());

    // What AWS says (our place when neither the config nor our Node says it, our subnets,
    // every subnet of the VPC), fetched in the background; bytes to private addresses are held
    // until each source has answered once.
    let kube_on = config.kubernetes.enabled(k8s::in_cluster());
    let cloud = Arc::new(std::sync::RwLock::new(CloudFacts::starting(
        config.imds.enabled,
    )));
    let summary = SourcesSummary {
        config_prefixes: config.topology.prefix_counts().map(|(_, n)| n).sum(),
        nodes: kube_on,
        endpointslices: kube_on && config.kubernetes.watch_endpointslices,
        imds: config.imds.enabled,
    };
    if config.imds.enabled || config.ec2.vpc_id.is_some() {
        tokio::spawn(aws::run(
            AwsOptions {
                imds: config.imds.clone(),
                ec2: config.ec2.clone(),
                region: config.topology.own().region.clone(),
                env: aws::credentials::process_env(),
                summary,
            },
            cloud.clone(),
            metrics.aws_errors.clone(),
        ));
    } else {
        summary.log(Err(
            "instance metadata is off and ec2.vpc_id is not set".into()
        ));
    }

    let (kube_view, kube_health) = if kube_on {
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

    let resolver = CgroupResolver::new(cgroup_root.clone(), CGROUP_RETENTION);
    let mut pipeline = Pipeline::new(
        drainer,
        resolver,
        config.topology.clone(),
        cloud,
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
            checkpoint,
        },
    );
    // Before anything is served: no scrape ever sees the totals start again.
    if let StartTotals::Restored { checkpoint: cp, .. } = &totals {
        pipeline.restore(cp, std::time::Instant::now());
        tracing::info!(
            series = cp.traffic.len(),
            saved_unix_seconds = cp.saved_unix_seconds,
            "totals restored from the checkpoint"
        );
    }
    // What was restored is on the disk already: it may be served before the first drain.
    publish(&exposition, &durable);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    tracing::info!(address = %bound, "serving metrics on http://{bound}/metrics");
    let tls = match config.server.tls.clone() {
        Some(files) => {
            let tls = agent::tls::Tls::load(files).context("server.tls")?;
            tokio::spawn(tls.clone().watch(Duration::from_secs(5)));
            Some(tls)
        }
        None => None,
    };
    let auth = match config.server.auth_cache {
        Some(ttl) => {
            anyhow::ensure!(
                kube_on,
                "server.auth checks tokens with the Kubernetes API, which is not in use here"
            );
            let client = k8s::client(&config.kubernetes).await?;
            Some(Arc::new(agent::auth::Authenticator::new(
                Arc::new(agent::auth::KubeReviewer { client }),
                ttl,
            )))
        }
        None => None,
    };
    tracing::info!(
        tls = tls.is_some(),
        bearer_tokens = auth.is_some(),
        "metrics: {}",
        match (&tls, &auth) {
            (None, None) => "open (plain HTTP, no token)",
            (Some(_), None) => "TLS, no token",
            (None, Some(_)) => "bearer tokens over plain HTTP",
            (Some(_), Some(_)) => "TLS and bearer tokens",
        }
    );
    tokio::spawn(server::serve(
        listener,
        exposition.clone(),
        live.clone(),
        health.clone(),
        config.server.clone(),
        auth,
        tls,
    ));

    // The drain runs on its own thread: its syscalls block, and a slow drain must not delay scrapes.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let interval = config.drain_interval;
    let flow_capacity = config.flow_entries;
    let drain_health = health.clone();
    let drain_thread = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || loop {
            let stopping = wait_for_drain(&stop_rx, interval, || {
                // Early when the buffer being written is half full: a flood of new flows must
                // not fill the map before the interval ends.
                let early = pipeline
                    .drainer()
                    .buffers()
                    .active_fill()
                    .is_ok_and(|n| n >= u64::from(flow_capacity / 2));
                if early {
                    metrics.early_drains.inc();
                }
                early
            });
            match pipeline.tick() {
                Ok(durability) => {
                    if durability.exposable() {
                        publish(&exposition, &durable);
                    }
                    drain_health.drained();
                }
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
    tracing::info!("stopping: final drain and checkpoint");
    let _ = stop_tx.send(());
    let _ = tokio::task::spawn_blocking(move || drain_thread.join()).await;
    let attached = kernel.attached;
    match &kernel.pins {
        Some(dir) => {
            tracing::info!(programs = attached, pins = %dir.display(), "the programs stay attached and go on counting for the next agent (`netcost-agent cleanup` detaches them)")
        }
        None => tracing::info!(programs = attached, "detached every program"),
    }
    drop(kernel);
    Ok(())
}

/// Waits until the next drain is due: `interval` passed, `early()` says so (asked every 200 ms),
/// or the agent stops (then true).
fn wait_for_drain(
    stop: &mpsc::Receiver<()>,
    interval: Duration,
    mut early: impl FnMut() -> bool,
) -> bool {
    const CHECK: Duration = Duration::from_millis(200);
    let due = std::time::Instant::now() + interval;
    loop {
        let left = due.saturating_duration_since(std::time::Instant::now());
        match stop.recv_timeout(left.min(CHECK)) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return true,
        }
        if left <= CHECK || early() {
            return false;
        }
    }
}

/// Encodes the totals for the server (on the drain thread: a scrape costs no encoding).
fn publish(cache: &server::ExpositionCache, durable: &Registry) {
    let mut text = String::with_capacity(256 * 1024);
    match prometheus_client::encoding::text::encode(&mut text, durable) {
        Ok(()) => cache.publish(text),
        Err(e) => {
            tracing::warn!(error = %e, "encoding the metrics failed; the previous encoding stays")
        }
    }
}

/// Wraps a load or attach error, naming the capability that is missing if one is: the kernel
/// only says EPERM.
fn name_missing_capability(e: kernel::KernelError, what: &str) -> anyhow::Error {
    let missing = agent::privileges::missing_capabilities();
    let err = anyhow::Error::new(e).context(what.to_owned());
    if missing.is_empty() {
        return err;
    }
    err.context(format!(
        "missing capability {}",
        missing
            .iter()
            .map(|(cap, why)| format!("{cap} ({why})"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// `<pin_dir>/v<N>` directories of other ABI versions.
fn other_layout_dirs(pin_root: &std::path::Path) -> Vec<PathBuf> {
    let ours = kernel::versioned_pin_dir(pin_root);
    let Ok(entries) = std::fs::read_dir(pin_root) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p != &ours
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('v') && n[1..].parse::<u32>().is_ok())
        })
        .collect()
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

pub async fn shutdown_signal() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_comes_at_the_interval_early_when_asked_or_at_once_when_stopping() {
        let (tx, rx) = mpsc::channel::<()>();
        let t = std::time::Instant::now();
        assert!(!wait_for_drain(&rx, Duration::from_millis(300), || false));
        assert!(t.elapsed() >= Duration::from_millis(300));
        let t = std::time::Instant::now();
        let mut asked = 0;
        assert!(!wait_for_drain(&rx, Duration::from_secs(60), || {
            asked += 1;
            asked == 2
        }));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "early: {:?}",
            t.elapsed()
        );
        tx.send(()).unwrap();
        assert!(wait_for_drain(&rx, Duration::from_secs(60), || false));
    }
}
