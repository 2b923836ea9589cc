//! Self-test of the Kubernetes API double (`netcost_tests::apiserver`) against the real kube-rs
//! client and `kube::runtime::watcher`, as the agent uses them. No root needed.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{channel::mpsc, StreamExt};
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    core::v1::{Node, Pod},
};
use kube::{
    api::{Api, ListParams, PostParams, WatchEvent, WatchParams},
    runtime::{watcher, watcher::Event},
    Client, ResourceExt,
};
use netcost_tests::apiserver::{
    node_json, pod_json, replicaset_json, ApiServer, ApiState, RequestRecord, ServerOptions,
};
use serde_json::Value;

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(5);

fn client(url: &str) -> Res<Client> {
    Ok(Client::try_from(kube::Config::new(url.parse()?))?)
}

fn pod(ns: &str, name: &str, node: &str) -> Value {
    pod_json(ns, name, "", node, &["10.0.0.9"], None, false)
}

fn with_label(mut obj: Value, key: &str, value: &str) -> Value {
    obj["metadata"]["labels"][key] = value.into();
    obj
}

type Item<K> = watcher::Result<Event<K>>;

/// Polls a watcher on its own task, so it keeps running (and reconnecting) while the test waits,
/// and hands its items over a channel. After an error it waits 50 ms before polling again (a
/// short backoff, so an outage does not spin).
fn spawn_watcher<K>(api: Api<K>, config: watcher::Config) -> mpsc::UnboundedReceiver<Item<K>>
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + Debug + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded();
    tokio::spawn(async move {
        let mut stream = watcher(api, config).boxed();
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            if tx.unbounded_send(item).is_err() {
                return;
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    rx
}

fn describe<K: ResourceExt>(item: &Item<K>) -> String {
    match item {
        Ok(e) => e.to_string(),
        Err(e) => format!("error: {e}"),
    }
}

async fn recv<K>(rx: &mut mpsc::UnboundedReceiver<Item<K>>) -> Item<K> {
    tokio::time::timeout(WAIT, rx.next())
        .await
        .expect("no watcher event within 5 s")
        .expect("watcher ended")
}

/// The next `n` items, described; errors included.
async fn next_n<K: ResourceExt>(
    rx: &mut mpsc::UnboundedReceiver<Item<K>>,
    n: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(describe(&recv(rx).await));
    }
    out
}

/// A client-side store fed by watcher events, like the agent's inventory.
struct Store<K> {
    objects: BTreeMap<String, K>,
    buffer: Option<BTreeMap<String, K>>,
    inits: usize,
    errors: Vec<String>,
    log: Vec<String>,
}

impl<K: ResourceExt + Clone> Store<K> {
    fn new() -> Self {
        Store {
            objects: BTreeMap::new(),
            buffer: None,
            inits: 0,
            errors: Vec::new(),
            log: Vec::new(),
        }
    }

    fn feed(&mut self, item: &Item<K>) {
        self.log.push(describe(item));
        match item {
            Ok(Event::Init) => {
                self.inits += 1;
                self.buffer = Some(BTreeMap::new());
            }
            Ok(Event::InitApply(o)) => {
                let buffer = self.buffer.as_mut().expect("InitApply outside Init");
                buffer.insert(o.name_any(), o.clone());
            }
            Ok(Event::InitDone) => {
                self.objects = self.buffer.take().expect("InitDone without Init");
            }
            Ok(Event::Apply(o)) => {
                self.objects.insert(o.name_any(), o.clone());
            }
            Ok(Event::Delete(o)) => {
                self.objects.remove(&o.name_any());
            }
            Err(e) => self.errors.push(e.to_string()),
        }
    }

    fn names(&self) -> Vec<String> {
        self.objects.keys().cloned().collect()
    }

    /// Feeds events until `done` holds (checked after each event), or fails after 5 s.
    async fn until(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Item<K>>,
        mut done: impl FnMut(&Self) -> bool,
    ) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.next()).await {
                Ok(Some(item)) => self.feed(&item),
                _ => panic!("condition not reached within 5 s; events: {:?}", self.log),
            }
        }
    }
}

fn pod_requests(state: &ApiState) -> Vec<RequestRecord> {
    state
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/pods")
        .collect()
}

/// Waits (polling the request log) until `done` holds.
async fn wait_requests(state: &ApiState, what: &str, done: impl Fn(&[RequestRecord]) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done(&state.requests()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            state.requests()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The initial list sees only node-a's pods; applies, deletes and field-selector transitions
/// arrive as the production watcher expects; every pod request carried the field selector, in
/// exactly the form kube-rs sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_only_its_nodes_pods_and_selector_transitions() -> Res {
    let state = Arc::new(ApiState::new());
    state.apply("/api/v1", "pods", pod("shop", "web-1", "node-a"));
    state.apply("/api/v1", "pods", pod("shop", "web-2", "node-b"));
    state.apply("/api/v1", "pods", pod("kube-system", "agent-x", "node-a"));
    state.apply("/api/v1", "pods", pod("shop", "pending", ""));
    state.apply(
        "/apis/apps/v1",
        "replicasets",
        replicaset_json("shop", "web-7d9f", "web"),
    );
    let listed_rv = state.resource_version();
    let server = ApiServer::start(state.clone())?;
    let api = Api::<Pod>::all(client(&server.url())?);
    let mut rx = spawn_watcher(
        api,
        watcher::Config::default().fields("spec.nodeName=node-a"),
    );

    assert_eq!(
        next_n(&mut rx, 4).await,
        ["Init", "InitApply(agent-x)", "InitApply(web-1)", "InitDone"]
    );
    // Changes from here on reach the client through the watch that resumes at the list's version.
    state.apply("/api/v1", "pods", pod("shop", "web-3", "node-a"));
    let Ok(Event::Apply(web3)) = recv(&mut rx).await else {
        panic!("expected Apply(web-3)")
    };
    assert_eq!(web3.name_any(), "web-3");
    assert_eq!(web3.resource_version(), Some((listed_rv + 1).to_string()));
    assert!(web3.uid().is_some_and(|u| !u.is_empty()));
    assert!(web3.metadata.creation_timestamp.is_some());

    // Another node's pod changes: nothing. The pending pod gets scheduled here: ADDED.
    state.apply(
        "/api/v1",
        "pods",
        with_label(pod("shop", "web-2", "node-b"), "v", "2"),
    );
    state.apply("/api/v1", "pods", pod("shop", "pending", "node-a"));
    state.apply(
        "/api/v1",
        "pods",
        with_label(pod("shop", "web-3", "node-a"), "v", "2"),
    );
    let deleted_rv = state
        .delete("/api/v1", "pods", "shop", "web-1")
        .expect("web-1 exists");
    // A pod moving away: DELETED.
    state.apply("/api/v1", "pods", pod("kube-system", "agent-x", "node-b"));
    assert_eq!(
        next_n(&mut rx, 4).await,
        [
            "Apply(pending)",
            "Apply(web-3)",
            "Delete(web-1)",
            "Delete(agent-x)"
        ]
    );
    assert!(state.delete("/api/v1", "pods", "shop", "web-1").is_none());
    state.apply("/api/v1", "pods", pod("shop", "last", "node-a"));
    let Ok(Event::Apply(last)) = recv(&mut rx).await else {
        panic!("expected Apply(last)")
    };
    assert_eq!(last.resource_version(), Some((deleted_rv + 2).to_string()));

    let requests = pod_requests(&state);
    assert_eq!(requests.len(), 2, "one list and one watch: {requests:?}");
    for r in &requests {
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.param("fieldSelector").as_deref(),
            Some("spec.nodeName=node-a")
        );
    }
    // Exactly what kube-rs 5.0.0 sends: a leading '&', the selector form-urlencoded, a page
    // size of 500 and no resourceVersion on the list; the watch resumes at the list's version.
    assert_eq!(
        requests[0].query,
        "&fieldSelector=spec.nodeName%3Dnode-a&limit=500"
    );
    assert!(!requests[0].watch);
    assert_eq!(
        requests[1].query,
        format!(
            "&watch=true&timeoutSeconds=290&fieldSelector=spec.nodeName%3Dnode-a&allowWatchBookmarks=true&resourceVersion={listed_rv}"
        )
    );
    assert!(requests[1].watch);
    server.stop();
    Ok(())
}

/// A short `max_watch` ends watches cleanly: the client resumes at the same resourceVersion
/// without relisting. After `compact()` it gets 410 Gone, relists (a second Init) and ends with
/// the right set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_short_watches_force_a_relist_with_the_right_set() -> Res {
    let state = Arc::new(ApiState::new());
    state.apply("/api/v1", "pods", pod("shop", "a1", "node-a"));
    state.apply("/api/v1", "pods", pod("shop", "a2", "node-a"));
    state.apply("/api/v1", "pods", pod("shop", "b1", "node-b"));
    let r0 = state.resource_version();
    // Bookmarks would move the client's resourceVersion forward; keep them out of the way.
    let options = ServerOptions {
        max_watch: Duration::from_secs(1),
        bookmark_interval: Duration::from_secs(60),
        ..ServerOptions::default()
    };
    let server = ApiServer::start_with(state.clone(), options)?;
    let api = Api::<Pod>::all(client(&server.url())?);
    let mut rx = spawn_watcher(
        api,
        watcher::Config::default().fields("spec.nodeName=node-a"),
    );
    let mut store = Store::new();
    store
        .until(&mut rx, |s| s.inits == 1 && s.buffer.is_none())
        .await;
    assert_eq!(store.names(), ["a1", "a2"]);

    // Two watches, both from the list's version: the first ended after max_watch and was resumed.
    let started = Instant::now();
    wait_requests(&state, "a resumed watch", |r| {
        r.iter().filter(|r| r.watch).count() >= 2
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "resumed after max_watch, not 290 s"
    );
    let requests = pod_requests(&state);
    let watches: Vec<_> = requests.iter().filter(|r| r.watch).collect();
    assert!(
        watches
            .iter()
            .all(|r| r.param("resourceVersion") == Some(r0.to_string())),
        "{watches:?}"
    );
    assert_eq!(
        requests.iter().filter(|r| !r.watch).count(),
        1,
        "no relist yet"
    );
    assert!(rx.try_recv().is_err(), "no event from a clean watch end");

    // One change the client sees (maybe), one it cannot (another node's), then the history goes.
    state.delete("/api/v1", "pods", "shop", "a1");
    state.apply(
        "/api/v1",
        "pods",
        with_label(pod("shop", "b1", "node-b"), "v", "2"),
    );
    state.compact();
    store
        .until(&mut rx, |s| s.inits == 2 && s.buffer.is_none())
        .await;
    assert_eq!(store.names(), ["a2"], "events: {:?}", store.log);
    assert_eq!(store.errors.len(), 1, "events: {:?}", store.log);
    assert!(
        store.errors[0].contains("too old resource version") && store.errors[0].contains("Expired"),
        "{:?}",
        store.errors
    );
    assert_eq!(
        pod_requests(&state).iter().filter(|r| !r.watch).count(),
        2,
        "one relist"
    );

    // The new watch works.
    state.apply("/api/v1", "pods", pod("shop", "a3", "node-a"));
    store.until(&mut rx, |s| s.objects.contains_key("a3")).await;
    assert_eq!(store.names(), ["a2", "a3"]);
    server.stop();
    Ok(())
}

/// The API server goes away in the middle of a watch and comes back on the same port without
/// its history: the watcher reports errors while it is down, then relists and sees what changed
/// during the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_recovers_from_a_restart_on_the_same_port_with_lost_history() -> Res {
    let state = Arc::new(ApiState::new());
    let node = |name: &str, zone: &str| {
        node_json(
            name,
            zone,
            "us-east-1",
            "use1-az1",
            "10.0.0.1",
            &["10.1.0.0/24"],
        )
    };
    state.apply("/api/v1", "nodes", node("n1", "us-east-1a"));
    state.apply("/api/v1", "nodes", node("n2", "us-east-1a"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = ApiServer::start_on(state.clone(), port, ServerOptions::default())?;
    let url = server.url();
    // The agent's node watcher configuration.
    let api = Api::<Node>::all(client(&url)?);
    let mut rx = spawn_watcher(api, watcher::Config::default().any_semantic());
    let mut store = Store::new();
    store
        .until(&mut rx, |s| s.inits == 1 && s.buffer.is_none())
        .await;
    assert_eq!(store.names(), ["n1", "n2"]);
    wait_requests(&state, "the node watch", |r| r.iter().any(|r| r.watch)).await;

    server.stop();
    store.until(&mut rx, |s| !s.errors.is_empty()).await;
    state.apply("/api/v1", "nodes", node("n3", "us-east-1b"));
    state.delete("/api/v1", "nodes", "", "n1");
    state.apply("/api/v1", "nodes", node("n2", "us-east-1c"));
    let server = ApiServer::start_on(
        state.clone(),
        port,
        ServerOptions {
            compact_on_start: true,
            ..ServerOptions::default()
        },
    )?;
    assert_eq!(server.url(), url);
    store
        .until(&mut rx, |s| {
            s.inits == 2 && s.buffer.is_none() && s.names() == ["n2", "n3"]
        })
        .await;
    let zone = store.objects["n2"]
        .labels()
        .get("topology.kubernetes.io/zone")
        .cloned();
    assert_eq!(zone.as_deref(), Some("us-east-1c"));
    // `any_semantic()` asks for resourceVersion=0, but kube-rs drops it when a page size is set.
    let lists: Vec<_> = state.requests().into_iter().filter(|r| !r.watch).collect();
    assert!(lists.len() >= 2, "{lists:?}");
    assert!(lists.iter().all(|r| r.query == "&limit=500"), "{lists:?}");
    // The watcher still works after the restart.
    state.apply("/api/v1", "nodes", node("n4", "us-east-1b"));
    store.until(&mut rx, |s| s.objects.contains_key("n4")).await;
    server.stop();
    Ok(())
}

/// Bookmarks on a raw watch carry the latest resourceVersion; a watch ends cleanly after the
/// client's timeoutSeconds; a too-old resourceVersion is an in-stream ERROR 410; a streaming list
/// (sendInitialEvents) sends the state and an initial-events-end bookmark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watch_bookmarks_timeouts_410_and_streaming_lists() -> Res {
    let state = Arc::new(ApiState::new());
    state.apply("/api/v1", "pods", pod("shop", "p1", "node-a"));
    let options = ServerOptions {
        bookmark_interval: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let server = ApiServer::start_with(state.clone(), options)?;
    let api = Api::<Pod>::all(client(&server.url())?);

    let list = api.list(&ListParams::default()).await?;
    let r0 = state.resource_version();
    assert_eq!(list.metadata.resource_version, Some(r0.to_string()));
    assert_eq!(
        (list.types.kind.as_str(), list.types.api_version.as_str()),
        ("PodList", "v1")
    );
    assert_eq!(list.items.len(), 1);

    let started = Instant::now();
    let mut watch = api
        .watch(&WatchParams::default().timeout(1), &r0.to_string())
        .await?
        .boxed();
    let first = tokio::time::timeout(WAIT, watch.next())
        .await?
        .expect("an event")?;
    let WatchEvent::Bookmark(bm) = first else {
        panic!("expected a bookmark, got {first:?}")
    };
    assert_eq!(bm.metadata.resource_version, r0.to_string());
    assert_eq!(
        (bm.types.kind.as_str(), bm.types.api_version.as_str()),
        ("Pod", "v1")
    );
    let r1 = state.apply("/api/v1", "pods", pod("shop", "p2", "node-b"));
    let mut rest = Vec::new();
    while let Some(event) = tokio::time::timeout(WAIT, watch.next()).await? {
        rest.push(event?);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "the watch ended after {elapsed:?}, timeoutSeconds=1"
    );
    let WatchEvent::Added(p2) = &rest[0] else {
        panic!("expected Added(p2), got {rest:?}")
    };
    assert_eq!(p2.resource_version(), Some(r1.to_string()));
    let later_bookmarks: Vec<String> = rest[1..]
        .iter()
        .map(|e| match e {
            WatchEvent::Bookmark(b) => b.metadata.resource_version.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(!later_bookmarks.is_empty());
    assert!(
        later_bookmarks.iter().all(|rv| *rv == r1.to_string()),
        "{later_bookmarks:?}"
    );
    let watch_request = state
        .requests()
        .into_iter()
        .find(|r| r.watch)
        .expect("a watch");
    assert_eq!(
        watch_request.param("allowWatchBookmarks").as_deref(),
        Some("true")
    );
    assert_eq!(watch_request.param("timeoutSeconds").as_deref(), Some("1"));

    // Too old after compaction: one ERROR event with a 410 Status, then a clean end.
    state.apply("/api/v1", "pods", pod("shop", "p3", "node-a"));
    state.compact();
    let events: Vec<_> = api
        .watch(&WatchParams::default(), &r0.to_string())
        .await?
        .collect()
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    let Ok(WatchEvent::Error(status)) = &events[0] else {
        panic!("expected ERROR, got {events:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    assert!(
        status
            .message
            .starts_with(&format!("too old resource version: {r0} (")),
        "{status:?}"
    );

    // Streaming list: the current state as ADDED, then the initial-events-end bookmark.
    let wp = WatchParams::default()
        .fields("spec.nodeName=node-a")
        .initial_events();
    let mut watch = api.watch(&wp, "0").await?.boxed();
    let mut names = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, watch.next())
            .await?
            .expect("an event")?
        {
            WatchEvent::Added(p) => names.push(p.name_any()),
            WatchEvent::Bookmark(b) => {
                assert!(b
                    .metadata
                    .annotations
                    .contains_key("k8s.io/initial-events-end"));
                assert_eq!(
                    b.metadata.resource_version,
                    state.resource_version().to_string()
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(names, ["p1", "p3"]);
    drop(watch);
    server.stop();
    Ok(())
}

/// GET of one object (namespaced and cluster-scoped), 404 as a `kube::Error::Api`, paginated
/// lists over a snapshot, an expired continue token as HTTP 410, label and field selectors,
/// and 405 for writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_list_pagination_selectors_and_errors() -> Res {
    let state = Arc::new(ApiState::new());
    state.apply(
        "/apis/apps/v1",
        "replicasets",
        replicaset_json("shop", "web-7d9f", "web"),
    );
    state.apply(
        "/api/v1",
        "nodes",
        node_json("node-a", "z", "r", "zid", "10.0.0.1", &[]),
    );
    for (ns, name, node, tier) in [
        ("shop", "p1", "node-a", Some("front")),
        ("shop", "p2", "node-b", Some("db")),
        ("shop", "p3", "node-a", None),
        ("infra", "p4", "node-a", Some("front")),
        ("infra", "p5", "node-b", None),
    ] {
        let mut p = pod(ns, name, node);
        if let Some(t) = tier {
            p = with_label(p, "tier", t);
        }
        state.apply("/api/v1", "pods", p);
    }
    let server = ApiServer::start(state.clone())?;
    let client = client(&server.url())?;

    let rs = Api::<ReplicaSet>::namespaced(client.clone(), "shop");
    let found = rs.get("web-7d9f").await?;
    let owners = found.metadata.owner_references.unwrap_or_default();
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].name.as_str()),
        ("Deployment", "web")
    );
    match rs.get("missing").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
            assert_eq!(s.message, "replicasets.apps \"missing\" not found");
        }
        other => panic!("expected a 404, got {other:?}"),
    }
    assert!(rs.get_opt("missing").await?.is_none());
    assert!(Api::<ReplicaSet>::namespaced(client.clone(), "other")
        .get_opt("web-7d9f")
        .await?
        .is_none());
    let node = Api::<Node>::all(client.clone()).get("node-a").await?;
    assert_eq!(node.name_any(), "node-a");

    // Pages of 2 over a snapshot: changes after the first page do not show up.
    let pods = Api::<Pod>::all(client.clone());
    let rv = state.resource_version().to_string();
    let mut seen = Vec::new();
    let mut page = pods.list(&ListParams::default().limit(2)).await?;
    state.apply("/api/v1", "pods", pod("shop", "p0", "node-a"));
    loop {
        assert_eq!(page.metadata.resource_version.as_deref(), Some(rv.as_str()));
        assert!(page.items.len() <= 2);
        seen.extend(
            page.items
                .iter()
                .map(|p| format!("{}/{}", p.namespace().unwrap(), p.name_any())),
        );
        let Some(token) = page.metadata.continue_.clone().filter(|t| !t.is_empty()) else {
            break;
        };
        page = pods
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await?;
    }
    assert_eq!(
        seen,
        ["infra/p4", "infra/p5", "shop/p1", "shop/p2", "shop/p3"]
    );

    // A continue token outlives no compaction: HTTP 410 Expired.
    let first = pods.list(&ListParams::default().limit(2)).await?;
    state.compact();
    let token = first.metadata.continue_.expect("a continue token");
    match pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410, got {other:?}"),
    }

    let names = |lp: ListParams| {
        let pods = pods.clone();
        async move {
            let list = pods.list(&lp).await.expect("list");
            list.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        names(ListParams::default().labels("tier=front")).await,
        ["p4", "p1"]
    );
    assert_eq!(
        names(ListParams::default().labels("tier!=front")).await,
        ["p5", "p0", "p2", "p3"]
    );
    assert_eq!(
        names(ListParams::default().labels("tier")).await,
        ["p4", "p1", "p2"]
    );
    assert_eq!(
        names(ListParams::default().labels("!tier,app")).await,
        ["p5", "p0", "p3"]
    );
    assert_eq!(
        names(ListParams::default().labels("tier in (db,front),app=p1")).await,
        ["p1"]
    );
    assert_eq!(
        names(ListParams::default().fields("metadata.namespace=shop,spec.nodeName!=node-b")).await,
        ["p0", "p1", "p3"]
    );
    let infra = Api::<Pod>::namespaced(client.clone(), "infra");
    let infra: Vec<_> = infra
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(infra, ["p4", "p5"]);

    // Writes are not served.
    let mut new_pod = Pod::default();
    new_pod.metadata.name = Some("p9".into());
    let shop = Api::<Pod>::namespaced(client.clone(), "shop");
    match shop.create(&PostParams::default(), &new_pod).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (405, "MethodNotAllowed"))
        }
        other => panic!("expected a 405, got {other:?}"),
    }
    server.stop();
    Ok(())
}
