//! A small Kubernetes API server for tests: serves list and watch (chunked JSON event stream) for a fixed set of
//! collections from objects shaped exactly as a real API server returns them, with resourceVersions, `410 Gone`
//! for a compacted resourceVersion, injectable 500s, and merge-PATCH of the status subresource. It records every
//! request so tests can check what the daemon asked for. No real cluster can run on the test machine.

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
}

#[derive(Debug, Clone)]
pub struct ApiServer {
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<(u64, &'static str, Value)>,
    /// Bumped to end every open watch stream (as an API server restart or load balancer timeout does).
    cut: broadcast::Sender<()>,
    pub requests: Arc<Mutex<Vec<(String, String)>>>,
    pub patches: Arc<Mutex<Vec<(String, Value)>>>,
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
            patches: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        server
    }

    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Adds or replaces an object (ADDED/MODIFIED event).
    pub fn put(&self, collection: &'static str, mut obj: Value) {
        let mut st = self.store.lock().unwrap();
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
        if method == "PATCH" && path.ends_with("/status") {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            return self.patch_status(&path, serde_json::from_slice(&body).unwrap_or(Value::Null));
        }
        let Some(coll) = collection_of(&path) else {
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
            return self.watch(coll, since);
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
        let items: Vec<Value> = st.objects[coll.path].values().cloned().collect();
        full(
            StatusCode::OK,
            &json!({"kind": coll.list_kind, "apiVersion": coll.api_version,
                    "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
        )
    }

    fn watch(&self, coll: &'static Collection, since: u64) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let mut live = self.events.subscribe();
        let mut cut = self.cut.subscribe();
        let (backlog, gone) = {
            let st = self.store.lock().unwrap();
            let gone = since != 0 && since < st.compacted_below;
            let backlog: Vec<(u64, Value)> = st
                .history
                .iter()
                .filter(|(rv, c, _)| *rv > since && *c == coll.path)
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
                        Ok((rv, c, ev)) if c == coll.path && rv > last => {
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

    fn patch_status(&self, path: &str, body: Value) -> Response<Body> {
        // /apis/cilium.io/v2/[namespaces/{ns}/]{plural}/{name}/status
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (ns, plural, name) = match parts.as_slice() {
            [
                "apis",
                "cilium.io",
                "v2",
                "namespaces",
                ns,
                plural,
                name,
                "status",
            ] => (*ns, *plural, *name),
            ["apis", "cilium.io", "v2", plural, name, "status"] => ("", *plural, *name),
            _ => return full(StatusCode::NOT_FOUND, &status_body(404, "NotFound", path)),
        };
        let coll = COLLECTIONS
            .iter()
            .find(|c| c.path.ends_with(&format!("/{plural}")))
            .expect("cilium collection");
        self.patches
            .lock()
            .unwrap()
            .push((path.to_string(), body.clone()));
        let Some(mut obj) = self.get(coll.path, &format!("{ns}/{name}")) else {
            return full(
                StatusCode::NOT_FOUND,
                &status_body(404, "NotFound", &format!("{ns}/{name}")),
            );
        };
        obj["status"] = body["status"].clone();
        self.put(coll.path, obj.clone());
        full(
            StatusCode::OK,
            &self.get(coll.path, &format!("{ns}/{name}")).unwrap(),
        )
    }
}
