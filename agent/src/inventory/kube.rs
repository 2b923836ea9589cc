//! The Kubernetes API side: watchers that keep the [`Inventory`] current.
//!
//! Cost to the API server is the constraint (per-node agents that each watch every pod of a
//! large cluster were most of the API calls in kubecost#2756):
//! - pods: only this node's, by the server-side field selector `spec.nodeName=<node>`;
//! - nodes: all of them (their zones place other nodes' addresses and pod CIDRs), or with
//!   `watch_nodes: false` only our own Node (`metadata.name=<node>`) for our zone;
//! - lists are paged by 100 objects: a Node carries an image list of several KB, and the agent's
//!   peak memory follows the page (measured with 1,000 nodes: 41 MiB unpaged, 34 MiB at 500,
//!   22.5 MiB at 100). Unpaged lists could be served from the API server's watch cache
//!   (`resourceVersion=0`; kube-rs drops it from paged lists), but a relist of a big cluster would
//!   then cost every agent tens of MB at once; recent API servers serve consistent lists from
//!   the watch cache anyway (KEP-2340);
//! - workloads: one GET per ReplicaSet or Job that owns a pod on this node, cached.
//!
//! Watches resume from their last resourceVersion with backoff (0.8 s doubling to 30 s) and
//! relist on 410 Gone; a relist replaces the inventory's set atomically.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    batch::v1::Job,
    core::v1::{Node, Pod},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::Api,
    runtime::{watcher, WatchStreamExt as _},
    Client, ResourceExt as _,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use super::{
    controller_of, direct_workload, node_meta, pod_meta, slice_key, slice_meta, Interner,
    Inventory, KubeHealth, KubeView, OwnerRef, SharedInventory, WatchHealth, Workload,
};
use crate::{config::KubernetesConfig, vocab::Registries};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubernetes.api_server {url:?}: {source}")]
    ApiServer {
        url: String,
        source: hyper::http::uri::InvalidUri,
    },
    #[error("finding the Kubernetes API (in-cluster service account or kubeconfig); set kubernetes.api_server or kubernetes.enabled: false: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("kubernetes is enabled but this node's name is unknown: set NODE_NAME (downward API spec.nodeName) or kubernetes.node_name")]
    NodeName,
}

/// `netcost_kubernetes_*`: how each watch stands.
#[derive(Clone, Default)]
pub struct KubeMetrics {
    synced: Family<ResourceLabels, Gauge>,
    objects: Family<ResourceLabels, Gauge>,
    watch_errors: Family<ResourceLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

impl KubeMetrics {
    pub fn register(registries: &mut Registries) -> KubeMetrics {
        let m = KubeMetrics::default();
        let r = registries.live();
        r.register(
            "kubernetes_synced",
            "1 when the watch of a Kubernetes resource has listed everything and is current",
            m.synced.clone(),
        );
        r.register(
            "kubernetes_objects",
            "Objects of a Kubernetes resource known to the agent",
            m.objects.clone(),
        );
        r.register(
            "kubernetes_watch_errors",
            "Errors of a Kubernetes watch (it resumes with backoff, relisting after 410 Gone)",
            m.watch_errors.clone(),
        );
        m
    }
}

/// Owner GETs that take longer than this fall back to what the pod itself says.
const OWNER_TIMEOUT: Duration = Duration::from_secs(5);
/// Cached owner answers kept at most (pods of one node reference far fewer owners).
const OWNER_CACHE: usize = 4096;

/// A client for the configured API server, or the in-cluster / kubeconfig one.
pub async fn client(config: &KubernetesConfig) -> Result<Client, KubeError> {
    let kube_config = match &config.api_server {
        Some(url) => {
            let uri = url.parse().map_err(|source| KubeError::ApiServer {
                url: url.clone(),
                source,
            })?;
            kube::Config::new(uri)
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(kube_config)?)
}

/// Starts the pod and node watches for this node; returns what attribution reads and what
/// `/readyz` reports.
pub async fn start(
    config: &KubernetesConfig,
    metrics: &KubeMetrics,
) -> Result<(KubeView, Arc<KubeHealth>), KubeError> {
    let node_name = config
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
        .ok_or(KubeError::NodeName)?;
    let client = client(config).await?;
    let inventory = Inventory::shared();
    let health = Arc::new(KubeHealth::default());
    tokio::spawn(watch_pods(
        client.clone(),
        node_name.clone(),
        inventory.clone(),
        health.clone(),
        metrics.clone(),
    ));
    tokio::spawn(watch_nodes(
        client.clone(),
        node_name.clone(),
        config.watch_nodes,
        inventory.clone(),
        health.clone(),
        metrics.clone(),
    ));
    if config.watch_endpointslices {
        tokio::spawn(watch_endpointslices(
            client,
            inventory.clone(),
            health.clone(),
            metrics.clone(),
        ));
    }
    tracing::info!(node = %node_name, api = ?config.api_server, all_nodes = config.watch_nodes, endpointslices = config.watch_endpointslices, "watching this node's pods and the nodes");
    let view = KubeView {
        inventory,
        node_name,
        watch_nodes: config.watch_nodes,
        watch_endpointslices: config.watch_endpointslices,
        health: health.clone(),
    };
    Ok((view, health))
}

/// Resolves a pod's controller to its workload: a ReplicaSet to its Deployment, a Job to its
/// CronJob. Answers are cached per owner, so one node asks once per ReplicaSet or Job.
pub struct OwnerResolver {
    client: Client,
    cache: HashMap<OwnerRef, Workload>,
}

impl OwnerResolver {
    pub fn new(client: Client) -> OwnerResolver {
        OwnerResolver {
            client,
            cache: HashMap::new(),
        }
    }

    pub async fn workload(&mut self, pod: &Pod) -> Workload {
        let owner = controller_of(pod);
        let fallback = direct_workload(pod, owner.as_ref());
        let Some(owner) = owner.filter(|o| o.kind == "ReplicaSet" || o.kind == "Job") else {
            return fallback;
        };
        if let Some(w) = self.cache.get(&owner) {
            return w.clone();
        }
        let looked_up = tokio::time::timeout(OWNER_TIMEOUT, self.lookup(&owner)).await;
        let workload = match looked_up {
            Ok(Ok(Some(w))) => w,
            Ok(Ok(None)) => fallback,
            Ok(Err(e)) => {
                tracing::debug!(owner = ?owner, error = %e, "owner lookup failed; using what the pod says");
                fallback
            }
            Err(_) => {
                tracing::debug!(owner = ?owner, "owner lookup timed out; using what the pod says");
                fallback
            }
        };
        if self.cache.len() >= OWNER_CACHE {
            self.cache.clear();
        }
        self.cache.insert(owner, workload.clone());
        workload
    }

    /// The owner's own controller, if it has one; `None` when the owner is gone.
    async fn lookup(&self, owner: &OwnerRef) -> Result<Option<Workload>, kube::Error> {
        let refs = if owner.kind == "ReplicaSet" {
            let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &owner.namespace);
            api.get_opt(&owner.name)
                .await?
                .map(|o| o.metadata.owner_references.unwrap_or_default())
        } else {
            let api: Api<Job> = Api::namespaced(self.client.clone(), &owner.namespace);
            api.get_opt(&owner.name)
                .await?
                .map(|o| o.metadata.owner_references.unwrap_or_default())
        };
        let Some(refs) = refs else {
            return Ok(None);
        };
        let top = refs.iter().find(|r| r.controller == Some(true));
        Ok(Some(match top {
            Some(r) => Workload {
                kind: r.kind.clone(),
                name: r.name.clone(),
            },
            None => Workload {
                kind: owner.kind.clone(),
                name: owner.name.clone(),
            },
        }))
    }
}

/// The bookkeeping every watch loop shares: health, the `netcost_kubernetes_*` metrics of its
/// resource, and rate-limited error logs.
struct WatchLoop<'a> {
    resource: &'static str,
    health: &'a WatchHealth,
    synced: Gauge,
    objects: Gauge,
    errors: Counter,
    last_error_log: Option<Instant>,
}

impl<'a> WatchLoop<'a> {
    fn new(resource: &'static str, health: &'a WatchHealth, metrics: &KubeMetrics) -> Self {
        let labels = ResourceLabels { resource };
        WatchLoop {
            resource,
            health,
            synced: metrics.synced.get_or_create(&labels).clone(),
            objects: metrics.objects.get_or_create(&labels).clone(),
            errors: metrics.watch_errors.get_or_create(&labels).clone(),
            last_error_log: None,
        }
    }

    /// The event to apply, or `None` after recording an error (the watcher retries by itself).
    fn accept<K>(
        &mut self,
        item: Result<watcher::Event<K>, watcher::Error>,
    ) -> Option<watcher::Event<K>> {
        match item {
            Ok(event) => {
                self.health.event();
                Some(event)
            }
            Err(e) => {
                self.errors.inc();
                self.health.error();
                self.synced.set(0);
                log_watch_error(self.resource, &e, &mut self.last_error_log);
                None
            }
        }
    }

    /// After an event was applied: the inventory now holds `count` objects of this resource.
    fn applied(&self, count: usize) {
        if self.health.synced() {
            self.synced.set(1);
        }
        self.objects.set(count as i64);
    }
}

/// Watches this node's pods into the inventory until the process ends.
pub async fn watch_pods(
    client: Client,
    node_name: String,
    inventory: SharedInventory,
    health: Arc<KubeHealth>,
    metrics: KubeMetrics,
) {
    let api: Api<Pod> = Api::all(client.clone());
    let config = paged(watcher::Config::default().fields(&format!("spec.nodeName={node_name}")));
    let mut owners = OwnerResolver::new(client);
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut state = WatchLoop::new("pods", &health.pods, &metrics);
    while let Some(item) = stream.next().await {
        let Some(event) = state.accept(item) else {
            continue;
        };
        match event {
            watcher::Event::Init => write(&inventory).pods_init(),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let workload = owners.workload(&pod).await;
                match pod_meta(&pod, workload) {
                    Some(meta) => write(&inventory).pod_apply(meta),
                    None => {
                        tracing::warn!(pod = %pod.name_any(), "pod without uid or name ignored")
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.uid() {
                    write(&inventory).pod_delete(&uid);
                }
            }
            watcher::Event::InitDone => {
                write(&inventory).pods_init_done();
                health.pods.listed();
                tracing::info!(node = %node_name, pods = read(&inventory).pod_count(), "pod inventory synced");
            }
        }
        state.applied(read(&inventory).pod_count());
    }
}

/// Watches Nodes (all of them, or only ours) into the inventory until the process ends.
pub async fn watch_nodes(
    client: Client,
    node_name: String,
    all_nodes: bool,
    inventory: SharedInventory,
    health: Arc<KubeHealth>,
    metrics: KubeMetrics,
) {
    let api: Api<Node> = Api::all(client);
    let mut config = paged(watcher::Config::default());
    if !all_nodes {
        config = config.fields(&format!("metadata.name={node_name}"));
    }
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut state = WatchLoop::new("nodes", &health.nodes, &metrics);
    while let Some(item) = stream.next().await {
        let Some(event) = state.accept(item) else {
            continue;
        };
        match event {
            watcher::Event::Init => write(&inventory).nodes_init(),
            watcher::Event::InitApply(node) | watcher::Event::Apply(node) => {
                let (meta, problems) = node_meta(&node);
                if !problems.is_empty() {
                    tracing::warn!(node = %meta.name, problems = ?problems, "node fields skipped");
                }
                if meta.name == node_name && !meta.place.is_placed() {
                    tracing::warn!(node = %meta.name, "our Node has no {} / {} labels: set topology.zone and topology.region or enable imds", crate::inventory::ZONE_LABEL, crate::inventory::REGION_LABEL);
                }
                write(&inventory).node_apply(meta);
            }
            watcher::Event::Delete(node) => write(&inventory).node_delete(&node.name_any()),
            watcher::Event::InitDone => {
                write(&inventory).nodes_init_done();
                health.nodes.listed();
                let inv = read(&inventory);
                tracing::info!(
                    nodes = inv.node_count(),
                    own_node_found = inv.node(&node_name).is_some(),
                    "node inventory synced"
                );
            }
        }
        state.applied(read(&inventory).node_count());
    }
}

/// Watches every EndpointSlice into the inventory until the process ends, as kube-proxy does on
/// every node: each endpoint's address with its node and zone places Service backends (headless
/// ones included) that no Node address or pod CIDR covers, as with the VPC CNI.
pub async fn watch_endpointslices(
    client: Client,
    inventory: SharedInventory,
    health: Arc<KubeHealth>,
    metrics: KubeMetrics,
) {
    let api: Api<EndpointSlice> = Api::all(client);
    let mut stream = watcher(api, paged(watcher::Config::default()))
        .default_backoff()
        .boxed();
    let mut state = WatchLoop::new("endpointslices", &health.endpointslices, &metrics);
    let mut names = Interner::default();
    let mut last_problem_log: Option<Instant> = None;
    while let Some(item) = stream.next().await {
        let Some(event) = state.accept(item) else {
            continue;
        };
        match event {
            watcher::Event::Init => write(&inventory).slices_init(),
            watcher::Event::InitApply(slice) | watcher::Event::Apply(slice) => {
                let (meta, problems) = slice_meta(&slice, &mut names);
                if !problems.is_empty()
                    && last_problem_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    last_problem_log = Some(Instant::now());
                    tracing::warn!(slice = %slice.name_any(), problems = ?problems, "EndpointSlice fields skipped");
                }
                match meta {
                    Some(meta) => write(&inventory).slice_apply(meta),
                    // A slice that became FQDN-typed (or lost its name) places nothing.
                    None => write(&inventory).slice_delete(&key_of(&slice)),
                }
            }
            watcher::Event::Delete(slice) => write(&inventory).slice_delete(&key_of(&slice)),
            watcher::Event::InitDone => {
                write(&inventory).slices_init_done();
                health.endpointslices.listed();
                let inv = read(&inventory);
                tracing::info!(
                    slices = inv.slice_count(),
                    endpoints = inv.endpoint_count(),
                    "EndpointSlice inventory synced"
                );
            }
        }
        state.applied(read(&inventory).slice_count());
    }
}

fn key_of(slice: &EndpointSlice) -> String {
    slice_key(&slice.namespace().unwrap_or_default(), &slice.name_any())
}

fn write(inventory: &SharedInventory) -> std::sync::RwLockWriteGuard<'_, Inventory> {
    inventory.write().unwrap_or_else(PoisonError::into_inner)
}

fn read(inventory: &SharedInventory) -> std::sync::RwLockReadGuard<'_, Inventory> {
    inventory.read().unwrap_or_else(PoisonError::into_inner)
}

/// One warning per resource per 30 s while the API is unreachable, the rest at debug.
fn log_watch_error(resource: &str, error: &watcher::Error, last: &mut Option<Instant>) {
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
        *last = Some(Instant::now());
        tracing::warn!(resource, error = %error, "kubernetes watch failed; counting goes on, retrying with backoff");
    } else {
        tracing::debug!(resource, error = %error, "kubernetes watch failed");
    }
}

/// Whether the Kubernetes API is where the agent runs (the in-cluster service environment).
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

/// Lists in pages of 100 objects (see the module comment).
fn paged(config: watcher::Config) -> watcher::Config {
    config.page_size(100)
}
