//! A local double of the Kubernetes API server, speaking exactly what kube-rs' client and
//! `kube::runtime::watcher` send and expect over plain `http://127.0.0.1:PORT`.
//!
//! [`ApiState`] holds the objects, a global resourceVersion counter and the event history; it is
//! shared (`Arc`) and outlives servers, so a test can stop an [`ApiServer`] in the middle of a
//! watch, change objects while it is down, and start another one on the same port. [`ApiState::compact`]
//! forgets the history, as a restarted API server rebuilding its watch cache would: watches that
//! resume from an older resourceVersion then get `410 Gone` and must relist.
//!
//! What is served (GET only; anything else is `405`):
//! - `{prefix}/{plural}/{name}`, `{prefix}/namespaces/{ns}/{plural}/{name}`: one object or a `404`
//!   `Status`;
//! - `{prefix}/{plural}`, `{prefix}/namespaces/{ns}/{plural}`: a list, with `fieldSelector`,
//!   `labelSelector`, `limit` + `continue` (pages of a snapshot taken at the first page; an
//!   expired token is an HTTP `410`), `resourceVersion` (current state is served for any value,
//!   except `resourceVersionMatch=Exact` below the compacted version, which is a `410`);
//! - the same with `watch=true`: newline-delimited JSON events in a chunked response, from the
//!   history after `resourceVersion` (an in-stream `ERROR` event with a `410` `Status` when that is
//!   older than the history), or from the current state (as `ADDED` events) for `0`/none or
//!   `sendInitialEvents=true`; field/label selector transitions become `ADDED`/`DELETED`;
//!   `BOOKMARK`s every [`ServerOptions::bookmark_interval`] with `allowWatchBookmarks=true`; a clean
//!   end after `min(timeoutSeconds, max_watch)`.
//!
//! `{prefix}` is `/api/v1` or `/apis/{group}/{version}`. Blocking std IO, one thread per
//! connection, HTTP/1.1 keep-alive.

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

/// The resourceVersion of a fresh [`ApiState`]; the first change gets the next one.
pub const FIRST_RESOURCE_VERSION: u64 = 1000;

/// How long [`ApiServer::start_on`] keeps retrying a port that is still in use.
const BIND_RETRY: Duration = Duration::from_secs(5);
/// Continue-token snapshots kept at most (oldest dropped first).
const MAX_SNAPSHOTS: usize = 64;

/// The kind of a recorded change, as its watch event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One request the double received, as sent (the query string is not decoded: kube-rs sends
/// e.g. `&fieldSelector=spec.nodeName%3Dnode-a&limit=500`, with a leading `&`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string, without the `?`.
    pub query: String,
    /// Whether it asked for a watch (`watch=true` or `watch=1`).
    pub watch: bool,
}

impl RequestRecord {
    /// A query parameter, decoded; `None` when absent.
    pub fn param(&self, key: &str) -> Option<String> {
        Query::parse(&self.query).get(key).map(str::to_owned)
    }
}

/// Objects, resourceVersions, history and the request log of the API. Shared between servers.
pub struct ApiState {
    inner: Mutex<Inner>,
    changed: Condvar,
}

/// (api prefix, plural, namespace or "" when cluster-scoped, name).
type Key = (String, String, String, String);

struct Change {
    rv: u64,
    api: String,
    plural: String,
    kind: EventType,
    /// The object after the change (for a delete: its last state, with the delete's rv).
    object: Value,
    /// The object before a modification, to turn selector transitions into ADDED/DELETED.
    before: Option<Value>,
}

struct Snapshot {
    id: u64,
    rv: u64,
    items: Vec<Value>,
}

struct Inner {
    rv: u64,
    /// History holds every change with an rv above this one.
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    requests: Vec<RequestRecord>,
    snapshots: Vec<Snapshot>,
    next_snapshot: u64,
    next_uid: u64,
    /// Bearer token → (user, groups), for TokenReview.
    tokens: BTreeMap<String, (String, Vec<String>)>,
    /// Users and groups allowed `get` on the non-resource URL /metrics.
    metrics_readers: std::collections::BTreeSet<String>,
}

impl Default for ApiState {
    fn default() -> Self {
        ApiState::new()
    }
}

impl ApiState {
    pub fn new() -> ApiState {
        ApiState {
            inner: Mutex::new(Inner {
                rv: FIRST_RESOURCE_VERSION,
                compacted: FIRST_RESOURCE_VERSION,
                objects: BTreeMap::new(),
                history: Vec::new(),
                requests: Vec::new(),
                snapshots: Vec::new(),
                next_snapshot: 1,
                next_uid: 1,
                tokens: BTreeMap::new(),
                metrics_readers: Default::default(),
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces an object of `api` (e.g. "/api/v1", "/apis/apps/v1") and `plural`
    /// (e.g. "pods"); namespace and name come from `obj.metadata`. Sets `metadata.resourceVersion`
    /// to the new resourceVersion (returned), `metadata.uid` if missing (a replaced object keeps
    /// its uid), `metadata.creationTimestamp` if missing, and `kind`/`apiVersion` if missing.
    /// Records ADDED or MODIFIED.
    ///
    /// Panics unless `obj` is an object with a `metadata.name`.
    pub fn apply(&self, api: &str, plural: &str, mut obj: Value) -> u64 {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("apply {api}/{plural}: object without metadata.name"))
            .to_owned();
        let namespace = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let key: Key = (api.to_owned(), plural.to_owned(), namespace, name);
        let mut inner = self.lock();
        let before = inner.objects.get(&key).cloned();
        inner.rv += 1;
        let rv = inner.rv;
        let map = obj.as_object_mut().expect("checked above");
        if !map.contains_key("apiVersion") {
            map.insert("apiVersion".into(), api_version(api).into());
        }
        if !map.contains_key("kind") {
            map.insert("kind".into(), kind_for_plural(plural).into());
        }
        let meta = map
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .expect("checked above");
        meta.insert("resourceVersion".into(), rv.to_string().into());
        let old_meta = |field: &str| {
            before
                .as_ref()
                .and_then(|b| b.pointer(&format!("/metadata/{field}")))
                .cloned()
        };
        if !meta.contains_key("uid") {
            let uid = old_meta("uid").unwrap_or_else(|| {
                let n = inner.next_uid;
                inner.next_uid += 1;
                format!("00000000-0000-4000-8000-{n:012x}").into()
            });
            meta.insert("uid".into(), uid);
        }
        if !meta.contains_key("creationTimestamp") {
            let ts = old_meta("creationTimestamp").unwrap_or_else(|| rfc3339_now().into());
            meta.insert("creationTimestamp".into(), ts);
        }
        let kind = if before.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        inner.history.push(Change {
            rv,
            api: api.to_owned(),
            plural: plural.to_owned(),
            kind,
            object: obj.clone(),
            before,
        });
        inner.objects.insert(key, obj);
        drop(inner);
        self.changed.notify_all();
        rv
    }

    /// Deletes an object (`namespace` "" when cluster-scoped); records DELETED with its last
    /// state at the new resourceVersion (returned). `None` when there was no such object.
    pub fn delete(&self, api: &str, plural: &str, namespace: &str, name: &str) -> Option<u64> {
        let key: Key = (api.into(), plural.into(), namespace.into(), name.into());
        let mut inner = self.lock();
        let mut obj = inner.objects.remove(&key)?;
        inner.rv += 1;
        let rv = inner.rv;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), rv.to_string().into());
        }
        inner.history.push(Change {
            rv,
            api: api.into(),
            plural: plural.into(),
            kind: EventType::Deleted,
            object: obj,
            before: None,
        });
        drop(inner);
        self.changed.notify_all();
        Some(rv)
    }

    /// An object as stored, if it exists.
    pub fn get(&self, api: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let key: Key = (api.into(), plural.into(), namespace.into(), name.into());
        self.lock().objects.get(&key).cloned()
    }

    /// Forgets the history up to now (and every list continue token): watches resuming from an
    /// older resourceVersion get `410 Gone` (an in-stream ERROR event), as do open watches that
    /// had not yet caught up.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.compacted = inner.rv;
        inner.history.clear();
        inner.snapshots.clear();
        drop(inner);
        self.changed.notify_all();
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Every request received so far, in order.
    /// A bearer token TokenReview accepts as `user` in `groups`.
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        self.lock().tokens.insert(
            token.to_owned(),
            (
                user.to_owned(),
                groups.iter().map(|g| g.to_string()).collect(),
            ),
        );
    }

    /// Lets a user or group `get` the non-resource URL /metrics (SubjectAccessReview).
    pub fn allow_metrics(&self, user_or_group: &str) {
        self.lock().metrics_readers.insert(user_or_group.to_owned());
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    fn record(&self, r: RequestRecord) {
        self.lock().requests.push(r);
    }

    /// Wakes every waiting watch. Taking the lock first means a watch that checked its server's
    /// stop flag before it was set is already waiting, so it cannot miss this wakeup.
    fn wake(&self) {
        drop(self.lock());
        self.changed.notify_all();
    }
}

/// Options of one server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Interval of BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// Cap on a watch's duration, on top of the client's `timeoutSeconds` (kube-rs asks for 290 s).
    pub max_watch: Duration,
    /// Calls [`ApiState::compact`] when the server starts, like a restarted API server whose
    /// watch cache starts empty.
    pub compact_on_start: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            bookmark_interval: Duration::from_secs(1),
            max_watch: Duration::from_secs(300),
            compact_on_start: false,
        }
    }
}

struct Shared {
    state: Arc<ApiState>,
    options: ServerOptions,
    stopping: AtomicBool,
    /// Clones of every open connection, to shut them down on stop.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// A running API double on 127.0.0.1. Stopping (or dropping) it closes the listener and cuts
/// every open connection, watches included, like an API server going away.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Starts on a free port with default options.
    pub fn start(state: Arc<ApiState>) -> Result<ApiServer> {
        ApiServer::start_with(state, ServerOptions::default())
    }

    /// Starts on a free port.
    pub fn start_with(state: Arc<ApiState>, options: ServerOptions) -> Result<ApiServer> {
        ApiServer::start_on(state, 0, options)
    }

    /// Starts on `port` (0: any free one), retrying for a few seconds while it is still in use.
    pub fn start_on(state: Arc<ApiState>, port: u16, options: ServerOptions) -> Result<ApiServer> {
        let listener = bind(port)?;
        let addr = listener.local_addr()?;
        if options.compact_on_start {
            state.compact();
        }
        let shared = Arc::new(Shared {
            state,
            options,
            stopping: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            workers: Mutex::new(Vec::new()),
        });
        let accept = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("apiserver-{}", addr.port()))
                .spawn(move || accept_loop(listener, shared))
                .context("spawning the API double's accept thread")?
        };
        Ok(ApiServer {
            shared,
            addr,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn state(&self) -> &Arc<ApiState> {
        &self.shared.state
    }

    /// Closes the listener, cuts every open connection and waits for all server threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the blocking accept; the accept thread drops the listener when it ends.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = accept.join();
        for (_, conn) in lock(&self.shared.conns).drain() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        self.shared.state.wake();
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bind(port: u16) -> Result<TcpListener> {
    let deadline = Instant::now() + BIND_RETRY;
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => return Ok(l),
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && port != 0
                    && Instant::now() < deadline =>
            {
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("binding 127.0.0.1:{port}")),
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stopping() {
            break;
        }
        let Ok(conn) = conn else {
            // EMFILE and the like: do not spin.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let Ok(clone) = conn.try_clone() else {
            continue;
        };
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        lock(&shared.conns).insert(id, clone);
        let worker = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("apiserver-conn-{id}"))
                .spawn(move || {
                    serve_connection(conn, &shared);
                    lock(&shared.conns).remove(&id);
                })
        };
        match worker {
            Ok(handle) => {
                let mut workers = lock(&shared.workers);
                workers.retain(|h| !h.is_finished());
                workers.push(handle);
            }
            Err(_) => {
                if let Some(c) = lock(&shared.conns).remove(&id) {
                    let _ = c.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// HTTP

struct Request {
    method: String,
    target: String,
    /// The client asked to close the connection after this response (or cannot keep it).
    close: bool,
    /// The body, for the POSTs the double answers (reviews); at most 1 MiB is kept.
    body: Vec<u8>,
}

/// Reads one request head and consumes its body. `None` at a clean end of the connection.
fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    // Tolerates empty lines before a request line (RFC 9112 §2.2).
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request line",
        ));
    };
    let mut req = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        close: version == "HTTP/1.0",
        body: Vec::new(),
    };
    let mut content_length = 0u64;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.parse().unwrap_or(0),
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    req.close = true;
                } else if v.contains("keep-alive") {
                    req.close = false;
                }
            }
            // A chunked request body is not parsed: answer, then close.
            "transfer-encoding" => req.close = true,
            _ => {}
        }
    }
    if content_length > 0 {
        let keep = content_length.min(1 << 20);
        reader.by_ref().take(keep).read_to_end(&mut req.body)?;
        io::copy(
            &mut reader.by_ref().take(content_length - keep),
            &mut io::sink(),
        )?;
    }
    Ok(Some(req))
}

fn serve_connection(conn: TcpStream, shared: &Shared) {
    let _ = conn.set_nodelay(true);
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    while !shared.stopping() {
        let req = match read_request(&mut reader) {
            Ok(Some(req)) => req,
            _ => return,
        };
        match handle(shared, &req, &mut writer) {
            Ok(()) if !req.close => {}
            _ => {
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        _ => "Internal Server Error",
    }
}

fn write_json(w: &mut TcpStream, code: u16, body: &Value) -> io::Result<()> {
    let body = serde_json::to_vec(body)?;
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\nContent-Length: {}\r\n\r\n",
        reason_phrase(code),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    w.write_all(&out)
}

fn write_chunk(w: &mut TcpStream, event: &Value) -> io::Result<()> {
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    let mut out = format!("{:x}\r\n", line.len()).into_bytes();
    out.extend_from_slice(&line);
    out.extend_from_slice(b"\r\n");
    w.write_all(&out)
}

fn write_last_chunk(w: &mut TcpStream) -> io::Result<()> {
    w.write_all(b"0\r\n\r\n")
}

/// A `meta/v1` `Status` as the API server sends it on failures.
fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

fn too_old(requested: u64, oldest: u64) -> Value {
    status(
        410,
        "Expired",
        &format!("too old resource version: {requested} ({oldest})"),
        None,
    )
}

// ------------------------------------------------------------------------------------------------
// Query strings, paths, selectors

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Query {
        Query(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k, true), decode(v, true))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

/// Percent-decoding; `+` is a space in query strings (kube-rs encodes with form_urlencoded).
fn decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("0");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 3;
                continue;
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a path addresses.
struct Target {
    api: String,
    plural: String,
    /// `None`: all namespaces (or a cluster-scoped resource).
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|s| decode(s, false))
        .collect();
    let (api, rest) = match segs.first().map(String::as_str) {
        Some("api") if segs.len() >= 2 => (format!("/api/{}", segs[1]), &segs[2..]),
        Some("apis") if segs.len() >= 3 => (format!("/apis/{}/{}", segs[1], segs[2]), &segs[3..]),
        _ => return None,
    };
    if rest.iter().any(String::is_empty) {
        return None;
    }
    let target = |plural: &String, namespace: Option<&String>, name: Option<&String>| Target {
        api: api.clone(),
        plural: plural.clone(),
        namespace: namespace.cloned(),
        name: name.cloned(),
    };
    match rest {
        [plural] => Some(target(plural, None, None)),
        [ns_word, ns, plural] if ns_word == "namespaces" => Some(target(plural, Some(ns), None)),
        [ns_word, ns, plural, name] if ns_word == "namespaces" => {
            Some(target(plural, Some(ns), Some(name)))
        }
        [plural, name] => Some(target(plural, None, Some(name))),
        _ => None,
    }
}

/// "v1" for "/api/v1", "apps/v1" for "/apis/apps/v1".
fn api_version(api: &str) -> String {
    api.trim_start_matches("/apis/")
        .trim_start_matches("/api/")
        .to_owned()
}

fn api_group(api: &str) -> &str {
    api.strip_prefix("/apis/")
        .and_then(|gv| gv.split('/').next())
        .unwrap_or("")
}

fn kind_for_plural(plural: &str) -> String {
    let known = [
        ("pods", "Pod"),
        ("nodes", "Node"),
        ("namespaces", "Namespace"),
        ("services", "Service"),
        ("endpoints", "Endpoints"),
        ("endpointslices", "EndpointSlice"),
        ("configmaps", "ConfigMap"),
        ("secrets", "Secret"),
        ("replicasets", "ReplicaSet"),
        ("deployments", "Deployment"),
        ("daemonsets", "DaemonSet"),
        ("statefulsets", "StatefulSet"),
        ("jobs", "Job"),
        ("cronjobs", "CronJob"),
    ];
    if let Some((_, kind)) = known.iter().find(|(p, _)| *p == plural) {
        return (*kind).to_owned();
    }
    let singular = plural.strip_suffix('s').unwrap_or(plural);
    let mut c = singular.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

enum FieldTerm {
    Eq(String, String),
    Ne(String, String),
}

enum LabelTerm {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

#[derive(Default)]
struct Selectors {
    fields: Vec<FieldTerm>,
    labels: Vec<LabelTerm>,
}

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

impl Selectors {
    fn parse(fields: Option<&str>, labels: Option<&str>) -> Result<Selectors, String> {
        let mut sel = Selectors::default();
        for term in split_terms(fields.unwrap_or("")) {
            let t = if let Some((k, v)) = term.split_once("!=") {
                FieldTerm::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==") {
                FieldTerm::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                FieldTerm::Eq(k.trim().into(), v.trim().into())
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            sel.fields.push(t);
        }
        for term in split_terms(labels.unwrap_or("")) {
            let t = if let Some(open) = term.find('(') {
                let close = term
                    .rfind(')')
                    .filter(|&c| c > open)
                    .ok_or_else(|| format!("invalid label selector term {term:?}"))?;
                let values = term[open + 1..close]
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .collect();
                let head: Vec<&str> = term[..open].split_whitespace().collect();
                match head.as_slice() {
                    [k, "in"] => LabelTerm::In((*k).into(), values),
                    [k, "notin"] => LabelTerm::NotIn((*k).into(), values),
                    _ => return Err(format!("invalid label selector term {term:?}")),
                }
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelTerm::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==") {
                LabelTerm::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                LabelTerm::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = term.strip_prefix('!') {
                LabelTerm::NotExists(k.trim().into())
            } else if term.contains(char::is_whitespace) {
                return Err(format!("invalid label selector term {term:?}"));
            } else {
                LabelTerm::Exists(term.into())
            };
            sel.labels.push(t);
        }
        Ok(sel)
    }

    fn matches(&self, obj: &Value) -> bool {
        let field = |path: &str| -> String {
            let mut v = obj;
            for seg in path.split('.') {
                match v.get(seg) {
                    Some(next) => v = next,
                    None => return String::new(),
                }
            }
            match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            }
        };
        let label = |k: &str| {
            obj.pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
        };
        self.fields.iter().all(|t| match t {
            FieldTerm::Eq(p, v) => field(p) == *v,
            FieldTerm::Ne(p, v) => field(p) != *v,
        }) && self.labels.iter().all(|t| match t {
            LabelTerm::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelTerm::Ne(k, v) => label(k) != Some(v.as_str()),
            LabelTerm::Exists(k) => label(k).is_some(),
            LabelTerm::NotExists(k) => label(k).is_none(),
            LabelTerm::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelTerm::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
        })
    }
}

fn namespace_of(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

impl Target {
    fn covers(&self, key: &Key) -> bool {
        key.0 == self.api
            && key.1 == self.plural
            && self.namespace.as_ref().is_none_or(|ns| *ns == key.2)
    }

    fn covers_change(&self, c: &Change) -> bool {
        c.api == self.api
            && c.plural == self.plural
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| ns == namespace_of(&c.object))
    }
}

impl Inner {
    /// The Kind served for `api`/`plural`: that of a stored object, else from a small table.
    fn kind(&self, api: &str, plural: &str) -> String {
        self.objects
            .iter()
            .find(|(k, _)| k.0 == api && k.1 == plural)
            .and_then(|(_, o)| o.get("kind").and_then(Value::as_str))
            .map(str::to_owned)
            .unwrap_or_else(|| kind_for_plural(plural))
    }

    fn current<'a>(
        &'a self,
        target: &'a Target,
        sel: &'a Selectors,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(|(k, o)| target.covers(k) && sel.matches(o))
            .map(|(_, o)| o)
    }
}

// ------------------------------------------------------------------------------------------------
// Handlers

fn handle(shared: &Shared, req: &Request, w: &mut TcpStream) -> io::Result<()> {
    let (path, raw_query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let query = Query::parse(raw_query);
    let watch = query.flag("watch");
    let state = &shared.state;
    state.record(RequestRecord {
        method: req.method.clone(),
        path: path.to_owned(),
        query: raw_query.to_owned(),
        watch,
    });
    if req.method == "POST" {
        if let Some(answer) = review(state, path, &req.body) {
            return write_json(w, 201, &answer);
        }
    }
    if req.method != "GET" {
        let s = status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            None,
        );
        return write_json(w, 405, &s);
    }
    let Some(target) = parse_path(path) else {
        let s = status(
            404,
            "NotFound",
            "the server could not find the requested resource",
            None,
        );
        return write_json(w, 404, &s);
    };
    let mut sel = match Selectors::parse(query.get("fieldSelector"), query.get("labelSelector")) {
        Ok(sel) => sel,
        Err(msg) => return write_json(w, 400, &status(400, "BadRequest", &msg, None)),
    };
    match (&target.name, watch) {
        (Some(name), false) => get(state, &target, name, w),
        (Some(name), true) => {
            // The deprecated single-object watch: a watch with a name field selector.
            sel.fields
                .push(FieldTerm::Eq("metadata.name".into(), name.clone()));
            serve_watch(shared, &target, &query, &sel, w)
        }
        (None, true) => serve_watch(shared, &target, &query, &sel, w),
        (None, false) => list(state, &target, &query, &sel, w),
    }
}

/// TokenReview and SubjectAccessReview, answered from the tokens and readers the test set.
fn review(state: &ApiState, path: &str, body: &[u8]) -> Option<Value> {
    let mut obj: Value = serde_json::from_slice(body).ok()?;
    let inner = state.lock();
    match path {
        "/apis/authentication.k8s.io/v1/tokenreviews" => {
            let token = obj["spec"]["token"].as_str().unwrap_or_default();
            obj["status"] = match inner.tokens.get(token) {
                Some((user, groups)) => json!({"authenticated": true, "user": {
                    "username": user, "uid": uid_for(user), "groups": groups}}),
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            };
        }
        "/apis/authorization.k8s.io/v1/subjectaccessreviews" => {
            let spec = &obj["spec"];
            let who: Vec<&str> = std::iter::once(spec["user"].as_str().unwrap_or_default())
                .chain(
                    spec["groups"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str),
                )
                .collect();
            let attrs = &spec["nonResourceAttributes"];
            let allowed = attrs["path"] == "/metrics"
                && attrs["verb"] == "get"
                && who.iter().any(|w| inner.metrics_readers.contains(*w));
            obj["status"] = json!({"allowed": allowed});
        }
        _ => return None,
    }
    Some(obj)
}

fn get(state: &ApiState, target: &Target, name: &str, w: &mut TcpStream) -> io::Result<()> {
    let ns = target.namespace.clone().unwrap_or_default();
    let found = state.get(&target.api, &target.plural, &ns, name);
    match found {
        Some(obj) => write_json(w, 200, &obj),
        None => {
            let group = api_group(&target.api);
            let resource = if group.is_empty() {
                target.plural.clone()
            } else {
                format!("{}.{group}", target.plural)
            };
            let mut details = json!({"name": name, "kind": target.plural});
            if !group.is_empty() {
                details["group"] = group.into();
            }
            let s = status(
                404,
                "NotFound",
                &format!("{resource} \"{name}\" not found"),
                Some(details),
            );
            write_json(w, 404, &s)
        }
    }
}

/// A list item as the API server sends it: without `kind` and `apiVersion`.
fn list_item(obj: &Value) -> Value {
    let mut item = obj.clone();
    if let Some(m) = item.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    item
}

fn list(
    state: &ApiState,
    target: &Target,
    query: &Query,
    sel: &Selectors,
    w: &mut TcpStream,
) -> io::Result<()> {
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0);
    let mut inner = state.lock();
    let kind = format!("{}List", inner.kind(&target.api, &target.plural));
    let (rv, items, offset, snapshot_id) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let parsed = token
                .strip_prefix("nct-")
                .and_then(|t| t.split_once('-'))
                .and_then(|(id, off)| Some((id.parse::<u64>().ok()?, off.parse::<usize>().ok()?)));
            let Some((id, offset)) = parsed else {
                drop(inner);
                let s = status(400, "BadRequest", "continue key is not valid", None);
                return write_json(w, 400, &s);
            };
            let Some(snap) = inner.snapshots.iter().find(|s| s.id == id) else {
                drop(inner);
                let s = status(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    None,
                );
                return write_json(w, 410, &s);
            };
            (snap.rv, snap.items.clone(), offset, Some(id))
        }
        None => {
            let exact = query.get("resourceVersionMatch") == Some("Exact");
            let asked = query
                .get("resourceVersion")
                .and_then(|v| v.parse::<u64>().ok());
            if let (true, Some(asked)) = (exact, asked) {
                if asked < inner.compacted {
                    let s = too_old(asked, inner.compacted);
                    drop(inner);
                    return write_json(w, 410, &s);
                }
            }
            let items: Vec<Value> = inner.current(target, sel).map(list_item).collect();
            (inner.rv, items, 0, None)
        }
    };
    let end = limit.map_or(items.len(), |l| (offset + l).min(items.len()));
    let page: Vec<Value> = items.get(offset..end).unwrap_or_default().to_vec();
    let mut metadata = Map::new();
    metadata.insert("resourceVersion".into(), rv.to_string().into());
    if end < items.len() {
        let id = match snapshot_id {
            Some(id) => id,
            None => {
                let id = inner.next_snapshot;
                inner.next_snapshot += 1;
                if inner.snapshots.len() >= MAX_SNAPSHOTS {
                    inner.snapshots.remove(0);
                }
                inner.snapshots.push(Snapshot {
                    id,
                    rv,
                    items: items.clone(),
                });
                id
            }
        };
        metadata.insert("continue".into(), format!("nct-{id}-{end}").into());
        metadata.insert("remainingItemCount".into(), (items.len() - end).into());
    }
    drop(inner);
    let body = json!({
        "kind": kind,
        "apiVersion": api_version(&target.api),
        "metadata": metadata,
        "items": page,
    });
    write_json(w, 200, &body)
}

fn watch_event(kind: &str, object: &Value) -> Value {
    json!({"type": kind, "object": object})
}

fn bookmark(kind: &str, api_version: &str, rv: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    watch_event(
        "BOOKMARK",
        &json!({"kind": kind, "apiVersion": api_version, "metadata": metadata}),
    )
}

/// The event a watcher with `target`/`sel` gets for a change, if any: selector transitions of a
/// modification are sent as ADDED (starts matching) or DELETED (stops matching).
fn event_for(change: &Change, target: &Target, sel: &Selectors) -> Option<Value> {
    if !target.covers_change(change) {
        return None;
    }
    let now = sel.matches(&change.object);
    let kind = match change.kind {
        EventType::Added | EventType::Deleted => now.then_some(change.kind.as_str()),
        EventType::Modified => {
            let was = change.before.as_ref().is_some_and(|b| sel.matches(b));
            match (was, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
    };
    kind.map(|k| watch_event(k, &change.object))
}

enum Wake {
    Events(Vec<Value>),
    Expired(Value),
    Bookmark,
    Deadline,
}

fn serve_watch(
    shared: &Shared,
    target: &Target,
    query: &Query,
    sel: &Selectors,
    w: &mut TcpStream,
) -> io::Result<()> {
    let state = &shared.state;
    let options = &shared.options;
    let duration = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|&t| t > 0)
        .map_or(options.max_watch, |t| {
            Duration::from_secs(t).min(options.max_watch)
        });
    let bookmarks = query.flag("allowWatchBookmarks");
    let initial_events = query.flag("sendInitialEvents");
    let start_rv = match query.get("resourceVersion").unwrap_or("") {
        "" | "0" => None,
        v => match v.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                let s = status(
                    400,
                    "BadRequest",
                    &format!("invalid resource version {v:?}"),
                    None,
                );
                return write_json(w, 400, &s);
            }
        },
    };
    let version = api_version(&target.api);
    let mut first = Vec::new();
    let (kind, pos) = {
        let inner = state.lock();
        let kind = inner.kind(&target.api, &target.plural);
        match start_rv {
            Some(rv) if rv < inner.compacted && !initial_events => {
                first.push(watch_event("ERROR", &too_old(rv, inner.compacted)));
                (kind, None)
            }
            Some(rv) if !initial_events => (kind, Some(rv)),
            // "0", none, or a streaming list: the current state first.
            _ => {
                first.extend(inner.current(target, sel).map(|o| watch_event("ADDED", o)));
                (kind, Some(inner.rv))
            }
        }
    };
    w.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    for event in &first {
        write_chunk(w, event)?;
    }
    let Some(mut pos) = pos else {
        // Too old: the ERROR event, then a clean end.
        return write_last_chunk(w);
    };
    if initial_events {
        write_chunk(w, &bookmark(&kind, &version, pos, true))?;
    }
    let deadline = Instant::now() + duration;
    let mut next_bookmark = Instant::now() + options.bookmark_interval;
    loop {
        let wake = {
            let mut inner = state.lock();
            loop {
                if shared.stopping() {
                    return Err(io::Error::other("API double stopping"));
                }
                if pos < inner.compacted {
                    break Wake::Expired(too_old(pos, inner.compacted));
                }
                if inner.rv > pos {
                    let from = inner.history.partition_point(|c| c.rv <= pos);
                    let events: Vec<Value> = inner.history[from..]
                        .iter()
                        .filter_map(|c| event_for(c, target, sel))
                        .collect();
                    pos = inner.rv;
                    if !events.is_empty() {
                        break Wake::Events(events);
                    }
                }
                let now = Instant::now();
                if now >= deadline {
                    break Wake::Deadline;
                }
                if bookmarks && now >= next_bookmark {
                    break Wake::Bookmark;
                }
                let until = if bookmarks {
                    deadline.min(next_bookmark)
                } else {
                    deadline
                };
                inner = state
                    .changed
                    .wait_timeout(inner, until - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        match wake {
            Wake::Events(events) => {
                for event in &events {
                    write_chunk(w, event)?;
                }
            }
            Wake::Expired(s) => {
                write_chunk(w, &watch_event("ERROR", &s))?;
                return write_last_chunk(w);
            }
            Wake::Bookmark => {
                write_chunk(w, &bookmark(&kind, &version, pos, false))?;
                next_bookmark = Instant::now() + options.bookmark_interval;
            }
            Wake::Deadline => return write_last_chunk(w),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Object builders

/// A stable pseudo-UID derived from a string (FNV-1a), for owner references.
pub fn uid_for(seed: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (h >> 20) & 0xfff,
        h & 0xffff_ffff_ffff
    )
}

fn owner_ref(kind: &str, name: &str) -> Value {
    let api_version = match kind {
        "ReplicaSet" | "Deployment" | "DaemonSet" | "StatefulSet" => "apps/v1",
        "Job" | "CronJob" => "batch/v1",
        _ => "v1",
    };
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid_for(&format!("{kind}/{name}")),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// A running Pod. `uid` "" lets [`ApiState::apply`] assign one; `node` "" is an unscheduled pod;
/// `ips` the pod IPs (the first is `status.podIP`); `owner` its controller (kind, name).
pub fn pod_json(
    namespace: &str,
    name: &str,
    uid: &str,
    node: &str,
    ips: &[&str],
    owner: Option<(&str, &str)>,
    host_network: bool,
) -> Value {
    let mut metadata = json!({"name": name, "namespace": namespace, "labels": {"app": name}});
    if !uid.is_empty() {
        metadata["uid"] = uid.into();
    }
    if let Some((kind, owner_name)) = owner {
        metadata["ownerReferences"] = json!([owner_ref(kind, owner_name)]);
    }
    let mut spec = json!({"containers": [{"name": "main", "image": "registry.example/app:1"}]});
    if !node.is_empty() {
        spec["nodeName"] = node.into();
    }
    if host_network {
        spec["hostNetwork"] = true.into();
    }
    let mut status = json!({"phase": if node.is_empty() { "Pending" } else { "Running" }});
    if let Some(first) = ips.first() {
        status["podIP"] = (*first).into();
        status["podIPs"] = ips.iter().map(|ip| json!({"ip": ip})).collect();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status})
}

/// A Node with the well-known topology labels, an InternalIP and pod CIDRs.
pub fn node_json(
    name: &str,
    zone: &str,
    region: &str,
    zone_id: &str,
    internal_ip: &str,
    pod_cidrs: &[&str],
) -> Value {
    let mut spec = json!({});
    if let Some(first) = pod_cidrs.first() {
        spec["podCIDR"] = (*first).into();
        spec["podCIDRs"] = pod_cidrs.iter().map(|c| Value::from(*c)).collect();
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": zone,
            "topology.kubernetes.io/region": region,
            "topology.k8s.aws/zone-id": zone_id,
        }},
        "spec": spec,
        "status": {"addresses": [
            {"type": "InternalIP", "address": internal_ip},
            {"type": "Hostname", "address": name},
        ]},
    })
}

/// One endpoint of an EndpointSlice: its addresses, node, zone and pod.
pub struct EndpointSpec<'a> {
    pub addresses: &'a [&'a str],
    pub node: Option<&'a str>,
    pub zone: Option<&'a str>,
    pub pod: Option<&'a str>,
}

/// An EndpointSlice of Service `service` (`None`: a slice of no Service) as the EndpointSlice
/// controller writes it.
pub fn endpointslice_json(
    namespace: &str,
    name: &str,
    service: Option<&str>,
    address_type: &str,
    endpoints: &[EndpointSpec],
) -> Value {
    let mut labels =
        json!({"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"});
    if let Some(s) = service {
        labels["kubernetes.io/service-name"] = s.into();
    }
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            let mut v = json!({"addresses": e.addresses, "conditions": {"ready": true, "serving": true, "terminating": false}});
            if let Some(n) = e.node {
                v["nodeName"] = n.into();
            }
            if let Some(z) = e.zone {
                v["zone"] = z.into();
            }
            if let Some(p) = e.pod {
                v["targetRef"] = json!({"kind": "Pod", "namespace": namespace, "name": p, "uid": uid_for(p)});
            }
            v
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 5001, "protocol": "TCP"}],
    })
}

/// A ReplicaSet controlled by Deployment `deployment`.
pub fn replicaset_json(namespace: &str, name: &str, deployment: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": namespace,
            "ownerReferences": [owner_ref("Deployment", deployment)]},
        "spec": {"selector": {"matchLabels": {"app": deployment}}},
    })
}

/// A Job controlled by CronJob `cronjob`.
pub fn job_json(namespace: &str, name: &str, cronjob: &str) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace,
            "ownerReferences": [owner_ref("CronJob", cronjob)]},
        "spec": {"template": {"spec": {"containers": [], "restartPolicy": "Never"}}},
    })
}

fn rfc3339_now() -> String {
    crate::rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_queries_like_form_urlencoded() {
        let q = Query::parse(
            "&fieldSelector=spec.nodeName%3Dnode-a&labelSelector=a+in+%28x%2Cy%29&watch=1",
        );
        assert_eq!(q.get("fieldSelector"), Some("spec.nodeName=node-a"));
        assert_eq!(q.get("labelSelector"), Some("a in (x,y)"));
        assert!(q.flag("watch"));
        assert_eq!(decode("100%", true), "100%");
        assert_eq!(decode("%4", true), "%4");
    }

    #[test]
    fn selectors() {
        let pod = pod_json("shop", "web", "", "node-a", &[], None, false);
        let m = |f: Option<&str>, l: Option<&str>| Selectors::parse(f, l).unwrap().matches(&pod);
        assert!(m(
            Some("spec.nodeName=node-a,metadata.namespace==shop"),
            None
        ));
        assert!(!m(Some("spec.nodeName!=node-a"), None));
        assert!(m(Some("spec.hostNetwork="), None));
        assert!(m(
            None,
            Some("app=web,!tier,app in (db, web),tier notin (x)")
        ));
        assert!(m(None, Some("app")) && !m(None, Some("!app")));
        assert!(!m(None, Some("app notin (web)")));
        assert!(m(None, Some("tier!=x")));
        assert!(Selectors::parse(Some("nonsense"), None).is_err());
    }

    #[test]
    fn paths() {
        let t = parse_path("/apis/apps/v1/namespaces/shop/replicasets/rs-1").unwrap();
        assert_eq!(
            (t.api.as_str(), t.plural.as_str()),
            ("/apis/apps/v1", "replicasets")
        );
        assert_eq!(
            (t.namespace.as_deref(), t.name.as_deref()),
            (Some("shop"), Some("rs-1"))
        );
        let t = parse_path("/api/v1/nodes/n1").unwrap();
        assert_eq!((t.namespace, t.name.as_deref()), (None, Some("n1")));
        assert!(parse_path("/api/v1/namespaces/shop/pods/p/status").is_none());
        assert_eq!(api_version("/apis/batch/v1"), "batch/v1");
        assert_eq!(kind_for_plural("widgets"), "Widget");
    }

    #[test]
    fn timestamps_look_like_rfc3339() {
        let ts = rfc3339_now();
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.starts_with("20") && ts.ends_with('Z'), "{ts}");
    }
}
