//! Wiring: builds every component from its part of the config and runs them. In two steps:
//! [`prepare`] does everything that needs a capability (load and attach the programs, adopt the
//! pins, open conntrack) before any other thread exists, then drops every capability; [`run`]
//! starts the rest (the API watchers, AWS, the server, the drain) without them.

use std::{
    path::PathBuf,
    sync::{mpsc, Arc},
    time::Duration,
};

use agent::{
    attribute::{find_cgroup2_mount, Attributor, CgroupResolver},
    classify::{
        nat::{self, ConntrackMetrics, SharedNat},
        route::Router,
        topology::StaticTopology,
        Classifier, TopologyMetrics,
    },
    config::{CgroupRoot, Config, StateConfig},
    drain::{self, CountingBuffers as _, DrainMetrics, Drainer},
    expose::{server, tls::Tls, DestinationMetrics, ExpositionCache, Health, TrafficMetrics},
    inventory::{
        aws::{self, AwsMetrics, AwsOptions, CloudFacts, SourcesSummary},
        kube::{self, KubeMetrics},
    },
    kernel,
    pipeline::{Pipeline, Stages},
    price::{PriceMetrics, PriceTable, Pricer},
    state::{CheckpointMetrics, CheckpointStore, MapsIdentity, Saver, StartTotals},
    vocab::Registries,
};
use anyhow::Context as _;

/// cgroup ids of pods that are gone stay resolvable this long, so late drains still attribute.
const CGROUP_RETENTION: Duration = Duration::from_secs(600);

/// What [`prepare`] made: the attached programs and everything the rest is built from.
pub struct Prepared {
    config: Config,
    kernel: kernel::Kernel,
    drainer: Drainer<kernel::KernelMaps>,
    totals: StartTotals,
    registries: Registries,
    drain_metrics: DrainMetrics,
    checkpoint_metrics: CheckpointMetrics,
    router: Router,
    price_table: PriceTable,
    nat_table: Option<SharedNat>,
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
    let router = Router::from_config(
        &config.services,
        &config.egress,
        config.kubecost_config.as_deref(),
    )?;
    let price_table = match &config.prices.file {
        Some(path) => PriceTable::load(path)?,
        None => PriceTable::built_in(),
    };
    let state = &config.state;
    let pin_root = if state.pin && kernel::sys::on_bpffs(&state.pin_dir) {
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
        .map(kernel::other_layout_dirs)
        .unwrap_or_default();
    let kernel::Loaded {
        mut kernel,
        mut maps,
        translated,
        origin,
        maps_id,
    } = kernel::load(&kernel::LoadOptions {
        flow_entries: config.flow_entries,
        overflow_entries: config.overflow_entries,
        flow_quota: config.flows_per_owner,
        pins: pins.as_deref(),
    })
    .map_err(|e| name_missing_capability(e, "loading the eBPF programs"))?;

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
    let epoch = maps.epoch().context("reading the kernel's epoch")?;
    let totals = StartTotals::open(
        store.as_ref(),
        &origin,
        other_layouts.first().map(PathBuf::as_path),
        &identity,
        epoch,
    );
    let (drainer, resumed) =
        Drainer::resume(maps, totals.drain_state()).context("reading the kernel's buffers")?;
    tracing::info!(
        maps = ?origin,
        totals = totals.label(),
        ?resumed,
        pinned = pins.is_some(),
        checkpoint = ?store.as_ref().map(|s| s.path.display().to_string()),
        "state"
    );

    // Every metric group registers itself: the totals in the durable registry (exposed only
    // from an encoding made after their checkpoint was written), the agent's own state in the
    // live one (encoded at each scrape).
    let mut registries = Registries::default();
    let drain_metrics = DrainMetrics::register(&mut registries);
    let checkpoint_metrics = CheckpointMetrics::register(&mut registries);
    checkpoint_metrics.started(origin.label(), totals.label(), pins.is_some());
    drain_metrics.set_capacity(drainer.buffers());
    drain_metrics.set_interval(config.drain_interval);
    let conntrack_metrics = ConntrackMetrics::register(&mut registries);
    let nat_table =
        nat::start(&config.nat, translated, conntrack_metrics).context("nat.conntrack is true")?;

    // Attach last: the TRANSLATED trie is filled from conntrack by now, so our programs count
    // Service connections right from their first packet.
    let attached = kernel.attach(&cgroup_root).map_err(|e| {
        name_missing_capability(
            e,
            &format!("attaching to cgroup v2 root {}", cgroup_root.display()),
        )
    })?;
    drain_metrics.set_attached(kernel.attached);
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

    kernel::privileges::drop_all_except(&[])
        .context("dropping the capabilities no longer needed")?;
    tracing::info!("capabilities dropped: the agent runs on with none (the conntrack reader keeps CAP_NET_ADMIN for its resync dumps)");
    Ok(Prepared {
        checkpoint: store.map(|s| (s, identity)),
        config,
        kernel,
        drainer,
        totals,
        registries,
        drain_metrics,
        checkpoint_metrics,
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
        mut registries,
        drain_metrics,
        checkpoint_metrics,
        router,
        price_table,
        nat_table,
        checkpoint,
        cgroup_root,
    } = prepared;
    let exposition = Arc::new(ExpositionCache::default());
    let base = StaticTopology::from_config(&config.topology);

    // What AWS says (our place when neither the config nor our Node says it, our subnets,
    // every subnet of the VPC), fetched in the background; bytes to private addresses are held
    // until each source has answered once.
    let kube_on = config.kubernetes.enabled(kube::in_cluster());
    let cloud = Arc::new(std::sync::RwLock::new(CloudFacts::starting(
        config.imds.enabled,
    )));
    let summary = SourcesSummary {
        config_prefixes: base.prefix_counts().map(|(_, n)| n).sum(),
        nodes: kube_on,
        endpointslices: kube_on && config.kubernetes.watch_endpointslices,
        imds: config.imds.enabled,
    };
    let aws_metrics = AwsMetrics::register(&mut registries);
    if config.imds.enabled || config.ec2.vpc_id.is_some() {
        tokio::spawn(aws::run(
            AwsOptions {
                imds: config.imds.clone(),
                ec2: config.ec2.clone(),
                region: config.topology.own.region.clone(),
                env: aws::credentials::process_env(),
                summary,
            },
            cloud.clone(),
            aws_metrics,
        ));
    } else {
        summary.log(Err(
            "instance metadata is off and ec2.vpc_id is not set".into()
        ));
    }

    let kube_metrics = KubeMetrics::register(&mut registries);
    let (kube_view, kube_health) = if kube_on {
        let (view, health) = kube::start(&config.kubernetes, &kube_metrics).await?;
        (Some(view), Some(health))
    } else {
        tracing::info!("kubernetes disabled: pods are named by the UID in their cgroup path only");
        (None, None)
    };
    let health = Arc::new(Health::new(config.server.stale_after, kube_health));

    let stages = Stages {
        attributor: Attributor::new(
            CgroupResolver::new(cgroup_root, CGROUP_RETENTION),
            config.series_grace,
            config.kubernetes.hold_unknown,
        ),
        traffic: TrafficMetrics::register(
            &mut registries,
            router.internet_route(&config.topology.own),
            config.kubecost_price_gauges,
        ),
        classifier: Classifier::new(
            base,
            cloud,
            kube_view,
            router,
            nat_table,
            config.nat.wait,
            TopologyMetrics::register(&mut registries),
        )
        .name_peers_if(config.destinations.enabled),
        destinations: DestinationMetrics::register(&mut registries, &config.destinations),
        pricer: Pricer::new(
            price_table,
            config.prices.clone(),
            PriceMetrics::register(&mut registries),
        ),
    };
    let scrape_metrics = server::ScrapeMetrics::register(&mut registries);
    let saver = checkpoint.map(|(store, maps)| Saver::new(store, maps, checkpoint_metrics));
    let mut pipeline = Pipeline::new(drainer, stages, saver, drain_metrics.clone());
    // Before anything is served: no scrape ever sees the totals start again.
    if let StartTotals::Restored { checkpoint: cp, .. } = &totals {
        pipeline.restore(cp, std::time::Instant::now());
        tracing::info!(
            series = cp.totals.traffic.len(),
            saved_unix_seconds = cp.saved_unix_seconds,
            "totals restored from the checkpoint"
        );
    }
    // What was restored is on the disk already: it may be served before the first drain.
    let Registries { durable, live } = registries;
    exposition.publish_registry(&durable);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    tracing::info!(address = %bound, "serving metrics on http://{bound}/metrics");
    let tls = match config.server.tls.clone() {
        Some(files) => {
            let tls = Tls::load(files).context("server.tls")?;
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
            let client = kube::client(&config.kubernetes).await?;
            Some(Arc::new(agent::expose::auth::Authenticator::new(
                Arc::new(agent::expose::auth::KubeReviewer { client }),
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
    let served = server::Served {
        cache: exposition.clone(),
        live: Arc::new(live),
        health: health.clone(),
        metrics: scrape_metrics,
    };
    tokio::spawn(server::serve(
        listener,
        served,
        config.server.clone(),
        auth,
        tls,
    ));

    // The drain runs on its own thread: its syscalls block, and a slow drain must not delay scrapes.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let interval = config.drain_interval;
    let flow_capacity = config.flow_entries;
    let drain_thread = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || loop {
            let stopping = drain::wait_for_drain(&stop_rx, interval, || {
                // Early when the buffer being written is half full: a flood of new flows must
                // not fill the map before the interval ends.
                let early = pipeline
                    .drainer()
                    .buffers()
                    .active_fill()
                    .is_ok_and(|n| n >= u64::from(flow_capacity / 2));
                if early {
                    drain_metrics.early();
                }
                early
            });
            match pipeline.tick() {
                Ok(durability) => {
                    if durability.exposable() {
                        exposition.publish_registry(&durable);
                    }
                    health.drained();
                }
                Err(e) => {
                    drain_metrics.failed();
                    tracing::warn!(error = %e, "drain failed; the entries stay in the kernel for the next one");
                }
            }
            drain_metrics.drained(pipeline.drainer().buffers());
            release_freed_memory();
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

/// Wraps a load or attach error, naming the capability that is missing if one is: the kernel
/// only says EPERM.
fn name_missing_capability(e: kernel::KernelError, what: &str) -> anyhow::Error {
    let missing = kernel::privileges::missing_capabilities();
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

/// `netcost-agent cleanup`: detaches every program, removes every pin and the checkpoint.
/// Returns what it did (or could not do), one line each.
pub fn cleanup(state: &StateConfig) -> Vec<Result<String, String>> {
    let mut lines = Vec::new();
    match kernel::cleanup(&state.pin_dir) {
        Ok(done) if done.is_empty() => lines.push(Ok(format!(
            "no pins under {} and no netcost program attached",
            state.pin_dir.display()
        ))),
        Ok(done) => lines.extend(done.into_iter().map(Ok)),
        Err(e) => lines.push(Err(e.to_string())),
    }
    let store = CheckpointStore::in_dir(&state.dir);
    match store.remove() {
        Ok(true) => lines.push(Ok(format!("removed {}", store.path.display()))),
        Ok(false) => {}
        Err(e) => lines.push(Err(format!("removing {}: {e}", store.path.display()))),
    }
    lines
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

/// A drain allocates and frees tens of megabytes at 100,000 flows (the batch, the ranking, the
/// checkpoint text, the exposition); glibc keeps freed memory in its arenas, so the resident
/// size stays at the peak of the busiest drain. Handing the free pages back after each drain
/// costs a walk of the heap (about a millisecond) and keeps RSS near what is in use.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
