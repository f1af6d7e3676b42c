//! A small Kubernetes API server for tests: serves list and watch (chunked JSON event stream) for a fixed set of
//! collections from objects shaped exactly as a real API server returns them, with resourceVersions, `410 Gone`
//! for a compacted resourceVersion, injectable 500s, create (POST) of Cilium policies validated against the CRD
//! schema `tollgate crds` prints (strict field validation, as kubectl applies), merge-PATCH and server-side apply
//! of the status subresource (conditions merged by `type`, per field manager, no write when nothing changed), and
//! `coordination.k8s.io/v1` Leases with optimistic concurrency. It can be stopped and restarted on the same address
//! (an API server outage). It records every request and its User-Agent so tests can check what the daemon asked
//! for. No real cluster can run on the test machine.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::structural;

/// One served collection: its path, list kind and apiVersion.
#[derive(Debug, Clone)]
pub struct Collection {
    pub path: &'static str,
    pub api_version: &'static str,
    pub list_kind: &'static str,
    pub fixture: &'static str,
}

pub const COLLECTIONS: &[Collection] = &[
    Collection {
        path: "/api/v1/pods",
        api_version: "v1",
        list_kind: "PodList",
        fixture: "pods.json",
    },
    Collection {
        path: "/api/v1/namespaces",
        api_version: "v1",
        list_kind: "NamespaceList",
        fixture: "namespaces.json",
    },
    Collection {
        path: "/apis/networking.k8s.io/v1/networkpolicies",
        api_version: "networking.k8s.io/v1",
        list_kind: "NetworkPolicyList",
        fixture: "networkpolicies.json",
    },
    Collection {
        path: "/apis/cilium.io/v2/ciliumnetworkpolicies",
        api_version: "cilium.io/v2",
        list_kind: "CiliumNetworkPolicyList",
        fixture: "ciliumnetworkpolicies.json",
    },
    Collection {
        path: "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies",
        api_version: "cilium.io/v2",
        list_kind: "CiliumClusterwideNetworkPolicyList",
        fixture: "ciliumclusterwidenetworkpolicies.json",
    },
];

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    /// collection path -> "ns/name" -> object
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    /// (rv, collection, watch event) since start.
    history: Vec<(u64, &'static str, Value)>,
    /// A watch from a resourceVersion below this gets 410 Gone.
    compacted_below: u64,
    fail_next_list: BTreeMap<&'static str, u32>,
    /// "ns/name" -> Lease object.
    leases: BTreeMap<String, Value>,
    /// (collection, "ns/name", condition type) -> the field manager that applied it.
    condition_owners: BTreeMap<(&'static str, String, String), String>,
}

/// What a request path names: a collection, optionally a namespace, an object and a subresource.
#[derive(Debug, Default)]
struct Route {
    /// The cluster-wide collection path, e.g. /apis/cilium.io/v2/ciliumnetworkpolicies.
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn route_of(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (base, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (format!("/api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("/apis/{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        other => (None, other),
    };
    let (resource, name, subresource) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(n.to_string()), None),
        [r, n, sub] => (*r, Some(n.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Route {
        collection: format!("{base}/{resource}"),
        namespace,
        name,
        subresource,
    })
}

/// Which objects a list or watch asks for: a namespace and `labelSelector` equality terms (`k=v`, `k==v`).
#[derive(Debug, Clone, Default)]
struct Selector {
    namespace: Option<String>,
    labels: Vec<(String, String)>,
}

impl Selector {
    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        self.namespace
            .as_deref()
            .is_none_or(|ns| meta["namespace"].as_str() == Some(ns))
            && self
                .labels
                .iter()
                .all(|(k, v)| meta["labels"][k].as_str() == Some(v.as_str()))
    }
}

fn parse_label_selector(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|term| {
            let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The one listener task and its connections, so `stop` can drop them all (connections refused, as during an
/// API server restart).
#[derive(Debug, Default)]
struct Serving {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, Clone)]
pub struct ApiServer {
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<(u64, &'static str, Value)>,
    /// Bumped to end every open watch stream (as an API server restart or load balancer timeout does).
    cut: broadcast::Sender<()>,
    pub requests: Arc<Mutex<Vec<(String, String)>>>,
    /// The User-Agent header of each request, in the order of `requests`.
    pub user_agents: Arc<Mutex<Vec<String>>>,
    /// Status patches received: (path, body, content type).
    pub patches: Arc<Mutex<Vec<(String, Value)>>>,
    pub patch_types: Arc<Mutex<Vec<String>>>,
    serving: Arc<Mutex<Serving>>,
}

fn key_of(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or(""),
        obj["metadata"]["name"].as_str().unwrap_or("")
    )
}

fn collection_of(path: &str) -> Option<&'static Collection> {
    COLLECTIONS.iter().find(|c| c.path == path)
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

impl ApiServer {
    /// Starts on 127.0.0.1 with the fixtures from `fixture_dir`.
    pub async fn start(fixture_dir: &std::path::Path) -> ApiServer {
        let mut store = Store {
            rv: 1000,
            ..Default::default()
        };
        for c in COLLECTIONS {
            let text = std::fs::read_to_string(fixture_dir.join(c.fixture))
                .unwrap_or_else(|e| panic!("reading fixture {}: {e}", c.fixture));
            let items: Vec<Value> = serde_json::from_str(&text).unwrap();
            let mut map = BTreeMap::new();
            for mut obj in items {
                store.rv += 1;
                obj["metadata"]["resourceVersion"] = store.rv.to_string().into();
                map.insert(key_of(&obj), obj);
            }
            store.objects.insert(c.path, map);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = ApiServer {
            addr: listener.local_addr().unwrap(),
            store: Arc::new(Mutex::new(store)),
            events: broadcast::channel(1024).0,
            cut: broadcast::channel(16).0,
            requests: Arc::default(),
            user_agents: Arc::default(),
            patches: Arc::default(),
            patch_types: Arc::default(),
            serving: Arc::default(),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let s = self.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s2 = s.clone();
                let conn = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s2.clone();
                        async move { Ok::<_, Infallible>(s.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
                s.serving.lock().unwrap().tasks.push(conn);
            }
        });
        self.serving.lock().unwrap().tasks.push(accept);
    }

    /// An outage: the listener closes (new connections are refused) and every open connection and watch is dropped.
    pub fn stop(&self) {
        let _ = self.cut.send(());
        for task in self.serving.lock().unwrap().tasks.drain(..) {
            task.abort();
        }
    }

    /// Back from the outage on the same address, with the same objects.
    pub async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|e| panic!("rebinding {}: {e}", self.addr));
        self.serve(listener);
    }

    /// The client configuration for this server (tests build their client from it as the daemon does).
    pub fn config(&self) -> kube::Config {
        kube::Config::new(format!("http://{}", self.addr).parse().unwrap())
    }

    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Adds or replaces an object (ADDED/MODIFIED event).
    pub fn put(&self, collection: &'static str, obj: Value) {
        let mut st = self.store.lock().unwrap();
        self.put_locked(&mut st, collection, obj);
    }

    /// Replaces only the status of the stored object, in one step with reading it (as the real server's status
    /// subresource: a concurrent spec update is never overwritten with the spec the writer read). `false`: no such
    /// object. A status equal to the stored one writes nothing (no new resourceVersion, no event).
    fn put_status(&self, collection: &'static str, key: &str, status: Value) -> bool {
        let mut st = self.store.lock().unwrap();
        let Some(current) = st.objects.get(collection).and_then(|m| m.get(key)) else {
            return false;
        };
        if current["status"] != status {
            let mut obj = current.clone();
            obj["status"] = status;
            self.put_locked(&mut st, collection, obj);
        }
        true
    }

    fn put_locked(&self, st: &mut Store, collection: &'static str, mut obj: Value) {
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
        let key = key_of(&obj);
        let map = st.objects.get_mut(collection).expect("known collection");
        let kind = if map.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        map.insert(key, obj.clone());
        let ev = json!({"type": kind, "object": obj});
        st.history.push((rv, collection, ev.clone()));
        let _ = self.events.send((rv, collection, ev));
    }

    /// Deletes an object; `notify: false` drops it without a watch event (a missed event only a re-list repairs).
    pub fn delete(&self, collection: &'static str, key: &str, notify: bool) {
        let mut st = self.store.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let Some(mut obj) = st.objects.get_mut(collection).unwrap().remove(key) else {
            panic!("no {key} in {collection}")
        };
        if notify {
            obj["metadata"]["resourceVersion"] = rv.to_string().into();
            let ev = json!({"type": "DELETED", "object": obj});
            st.history.push((rv, collection, ev.clone()));
            let _ = self.events.send((rv, collection, ev));
        }
    }

    pub fn get(&self, collection: &'static str, key: &str) -> Option<Value> {
        self.store.lock().unwrap().objects[collection]
            .get(key)
            .cloned()
    }

    /// A Lease as stored ("namespace", "name").
    pub fn stored_lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.store
            .lock()
            .unwrap()
            .leases
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    /// The next `n` lists of `collection` answer 500.
    pub fn fail_lists(&self, collection: &'static str, n: u32) {
        self.store
            .lock()
            .unwrap()
            .fail_next_list
            .insert(collection, n);
    }

    /// Forgets history: every watch resuming from an older resourceVersion gets 410 Gone; open watches are cut.
    pub fn compact_and_cut(&self) {
        {
            let mut st = self.store.lock().unwrap();
            st.rv += 1;
            st.compacted_below = st.rv;
        }
        let _ = self.cut.send(());
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().to_string();
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        self.requests
            .lock()
            .unwrap()
            .push((method.clone(), pq.clone()));
        let user_agent = req
            .headers()
            .get(hyper::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        self.user_agents.lock().unwrap().push(user_agent);
        let path = req.uri().path().to_string();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let content_type = req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let route = route_of(&path).unwrap_or_default();
        if method != "GET" || route.name.is_some() {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            // YAML is a superset of JSON: apply patches may be either.
            let body: Value = serde_yaml::from_slice(&body).unwrap_or(Value::Null);
            return self.handle_write(&method, &path, &route, &query, &content_type, body);
        }
        // A namespaced list or watch (`/api/v1/namespaces/NS/pods`) serves the cluster-wide collection's objects
        // of that namespace; `labelSelector` (equality terms) narrows either.
        let namespaced = route.namespace.is_some() && route.subresource.is_none();
        let list_path = if namespaced {
            route.collection.clone()
        } else {
            path.clone()
        };
        let selector = Selector {
            namespace: route.namespace.clone().filter(|_| namespaced),
            labels: query
                .get("labelSelector")
                .map(|s| parse_label_selector(&percent_decode(s)))
                .unwrap_or_default(),
        };
        let Some(coll) = collection_of(&list_path) else {
            return full(
                StatusCode::NOT_FOUND,
                &status_body(404, "NotFound", &format!("{path} not found")),
            );
        };
        if method != "GET" {
            return full(
                StatusCode::METHOD_NOT_ALLOWED,
                &status_body(405, "MethodNotAllowed", "only GET"),
            );
        }
        let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        if watching {
            let since: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return self.watch(coll, since, selector);
        }
        let mut st = self.store.lock().unwrap();
        if let Some(n) = st.fail_next_list.get_mut(coll.path)
            && *n > 0
        {
            *n -= 1;
            return full(
                StatusCode::INTERNAL_SERVER_ERROR,
                &status_body(500, "InternalError", "etcdserver: request timed out"),
            );
        }
        let items: Vec<Value> = st.objects[coll.path]
            .values()
            .filter(|o| selector.matches(o))
            .cloned()
            .collect();
        full(
            StatusCode::OK,
            &json!({"kind": coll.list_kind, "apiVersion": coll.api_version,
                    "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
        )
    }

    fn watch(&self, coll: &'static Collection, since: u64, selector: Selector) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let mut live = self.events.subscribe();
        let mut cut = self.cut.subscribe();
        let (backlog, gone) = {
            let st = self.store.lock().unwrap();
            let gone = since != 0 && since < st.compacted_below;
            let backlog: Vec<(u64, Value)> = st
                .history
                .iter()
                .filter(|(rv, c, ev)| {
                    *rv > since && *c == coll.path && selector.matches(&ev["object"])
                })
                .map(|(rv, _, ev)| (*rv, ev.clone()))
                .collect();
            (backlog, gone)
        };
        tokio::spawn(async move {
            let line = |v: &Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
            if gone {
                let ev = json!({"type": "ERROR", "object": status_body(410, "Expired", "too old resource version")});
                let _ = tx.send(line(&ev)).await;
                return;
            }
            let mut last = since;
            for (rv, ev) in backlog {
                last = rv;
                if tx.send(line(&ev)).await.is_err() {
                    return;
                }
            }
            let deadline = tokio::time::sleep(Duration::from_secs(60));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    ev = live.recv() => match ev {
                        Ok((rv, c, ev)) if c == coll.path && rv > last && selector.matches(&ev["object"]) => {
                            last = rv;
                            if tx.send(line(&ev)).await.is_err() { return; }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    },
                    _ = cut.recv() => return,
                    _ = &mut deadline => return,
                }
            }
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
            .unwrap()
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_write(
        &self,
        method: &str,
        path: &str,
        route: &Route,
        query: &BTreeMap<String, String>,
        content_type: &str,
        body: Value,
    ) -> Response<Body> {
        if route.collection == "/apis/coordination.k8s.io/v1/leases" {
            return self.lease(method, route, body);
        }
        let Some(coll) = collection_of(&route.collection) else {
            return full(
                StatusCode::NOT_FOUND,
                &status_body(404, "NotFound", &route.collection),
            );
        };
        let key = format!(
            "{}/{}",
            route.namespace.as_deref().unwrap_or(""),
            route.name.as_deref().unwrap_or("")
        );
        match (method, route.name.is_some(), route.subresource.as_deref()) {
            ("POST", false, None) => self.create(coll, route, body),
            ("GET", true, None) => match self.get(coll.path, &key) {
                Some(obj) => full(StatusCode::OK, &obj),
                None => full(StatusCode::NOT_FOUND, &status_body(404, "NotFound", &key)),
            },
            ("PATCH", true, Some("status")) => {
                self.patch_status(coll, path, route, &key, query, content_type, body)
            }
            _ => full(
                StatusCode::METHOD_NOT_ALLOWED,
                &status_body(405, "MethodNotAllowed", &format!("{method} {route:?}")),
            ),
        }
    }

    /// The openAPIV3Schema a Cilium collection is validated against: the one `tollgate crds` prints.
    fn schema_of(coll: &Collection) -> Option<Value> {
        let crd = match coll.fixture {
            "ciliumnetworkpolicies.json" => tollgate::kubernetes::crd::cilium_network_policy(),
            "ciliumclusterwidenetworkpolicies.json" => {
                tollgate::kubernetes::crd::cilium_clusterwide_network_policy()
            }
            _ => return None,
        };
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()?
            .open_api_v3_schema
            .as_ref()?;
        Some(serde_json::to_value(schema).unwrap())
    }

    fn invalid(kind: &str, name: &str, errors: &[String]) -> Response<Body> {
        full(
            StatusCode::UNPROCESSABLE_ENTITY,
            &status_body(
                422,
                "Invalid",
                &format!("{kind} \"{name}\" is invalid: {}", errors.join(", ")),
            ),
        )
    }

    fn create(&self, coll: &'static Collection, route: &Route, mut obj: Value) -> Response<Body> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if let Some(schema) = Self::schema_of(coll) {
            let errors = structural::validate(&obj, &schema);
            if !errors.is_empty() {
                let kind = obj["kind"].as_str().unwrap_or("").to_string();
                return Self::invalid(&kind, &name, &errors);
            }
        }
        if let Some(ns) = &route.namespace {
            obj["metadata"]["namespace"] = ns.clone().into();
        }
        // The status subresource: status is not set by create.
        if let Some(map) = obj.as_object_mut() {
            map.remove("status");
        }
        obj["metadata"]["generation"] = 1.into();
        let key = key_of(&obj);
        if self.get(coll.path, &key).is_some() {
            return full(
                StatusCode::CONFLICT,
                &status_body(409, "AlreadyExists", &format!("{key} already exists")),
            );
        }
        self.put(coll.path, obj);
        full(StatusCode::CREATED, &self.get(coll.path, &key).unwrap())
    }

    #[allow(clippy::too_many_arguments)]
    fn patch_status(
        &self,
        coll: &'static Collection,
        path: &str,
        route: &Route,
        key: &str,
        query: &BTreeMap<String, String>,
        content_type: &str,
        body: Value,
    ) -> Response<Body> {
        self.patches
            .lock()
            .unwrap()
            .push((path.to_string(), body.clone()));
        self.patch_types
            .lock()
            .unwrap()
            .push(content_type.to_string());
        let Some(mut obj) = self.get(coll.path, key) else {
            return full(StatusCode::NOT_FOUND, &status_body(404, "NotFound", key));
        };
        let before = obj.clone();
        let status = match content_type {
            "application/merge-patch+json" => body["status"].clone(),
            "application/apply-patch+yaml" => {
                let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
                    return full(
                        StatusCode::BAD_REQUEST,
                        &status_body(
                            400,
                            "BadRequest",
                            "PATCH: fieldManager is required for apply requests",
                        ),
                    );
                };
                if body["apiVersion"].is_null() || body["kind"].is_null() {
                    return full(
                        StatusCode::BAD_REQUEST,
                        &status_body(400, "BadRequest", "apply patches need apiVersion and kind"),
                    );
                }
                self.apply_conditions(coll.path, key, manager, &obj["status"], &body["status"])
            }
            other => {
                return full(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    &status_body(415, "UnsupportedMediaType", other),
                );
            }
        };
        obj["status"] = status;
        if let Some(schema) = Self::schema_of(coll) {
            let errors = structural::validate(&obj, &schema);
            if !errors.is_empty() {
                let name = route.name.clone().unwrap_or_default();
                return Self::invalid(obj["kind"].as_str().unwrap_or(""), &name, &errors);
            }
        }
        // Like the real server: a patch that changes nothing writes nothing (no new resourceVersion, no event).
        if obj != before && !self.put_status(coll.path, key, obj["status"].take()) {
            return full(StatusCode::NOT_FOUND, &status_body(404, "NotFound", key));
        }
        full(StatusCode::OK, &self.get(coll.path, key).unwrap())
    }

    /// Server-side apply of `status.conditions` (a list-map keyed by `type`): the manager's applied conditions
    /// replace theirs by type, conditions of other managers stay, the manager's conditions it no longer applies go.
    fn apply_conditions(
        &self,
        coll: &'static str,
        key: &str,
        manager: &str,
        current: &Value,
        applied: &Value,
    ) -> Value {
        let mut st = self.store.lock().unwrap();
        let owner = |st: &Store, t: &str| {
            st.condition_owners
                .get(&(coll, key.to_string(), t.to_string()))
                .cloned()
        };
        let applied_list = applied["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let applied_types: Vec<String> = applied_list
            .iter()
            .map(|c| c["type"].as_str().unwrap_or("").to_string())
            .collect();
        let mut out: Vec<Value> = Vec::new();
        for c in current["conditions"].as_array().into_iter().flatten() {
            let t = c["type"].as_str().unwrap_or("").to_string();
            let mine = owner(&st, &t).as_deref() == Some(manager);
            if applied_types.contains(&t) || mine {
                continue;
            }
            out.push(c.clone());
        }
        for (c, t) in applied_list.into_iter().zip(applied_types) {
            st.condition_owners
                .insert((coll, key.to_string(), t), manager.to_string());
            out.push(c);
        }
        let mut status = current.clone();
        if !status.is_object() {
            status = json!({});
        }
        status["conditions"] = Value::Array(out);
        status
    }

    /// Leases: get, create (409 when it exists), update (409 when the resourceVersion is stale).
    fn lease(&self, method: &str, route: &Route, mut body: Value) -> Response<Body> {
        let ns = route.namespace.clone().unwrap_or_default();
        let mut st = self.store.lock().unwrap();
        match (method, &route.name) {
            ("GET", Some(name)) => match st.leases.get(&format!("{ns}/{name}")) {
                Some(l) => full(StatusCode::OK, l),
                None => full(
                    StatusCode::NOT_FOUND,
                    &status_body(404, "NotFound", &format!("leases \"{name}\" not found")),
                ),
            },
            ("POST", None) => {
                let key = format!("{ns}/{}", body["metadata"]["name"].as_str().unwrap_or(""));
                if st.leases.contains_key(&key) {
                    return full(
                        StatusCode::CONFLICT,
                        &status_body(409, "AlreadyExists", &key),
                    );
                }
                st.rv += 1;
                body["metadata"]["resourceVersion"] = st.rv.to_string().into();
                body["metadata"]["namespace"] = ns.into();
                st.leases.insert(key, body.clone());
                full(StatusCode::CREATED, &body)
            }
            ("PUT", Some(name)) => {
                let key = format!("{ns}/{name}");
                let current_rv = st
                    .leases
                    .get(&key)
                    .map(|l| l["metadata"]["resourceVersion"].clone());
                if current_rv != Some(body["metadata"]["resourceVersion"].clone()) {
                    return full(
                        StatusCode::CONFLICT,
                        &status_body(
                            409,
                            "Conflict",
                            "Operation cannot be fulfilled on leases.coordination.k8s.io: the object has been \
                             modified; please apply your changes to the latest version and try again",
                        ),
                    );
                }
                st.rv += 1;
                body["metadata"]["resourceVersion"] = st.rv.to_string().into();
                st.leases.insert(key, body.clone());
                full(StatusCode::OK, &body)
            }
            _ => full(
                StatusCode::METHOD_NOT_ALLOWED,
                &status_body(405, "MethodNotAllowed", method),
            ),
        }
    }
}
