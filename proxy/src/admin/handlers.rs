//! The admin requests' answers, computed from a [`DaemonView`] (what the running daemon knows). No sockets here:
//! the tests answer requests from a conformance snapshot and canned eBPF state.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use policy_model::effective::{self, TraceL7, TraceQuestion};
use policy_model::{Direction, Identity, Protocol};
use redirect_ebpf::inspect::Inspection;

use super::protocol::*;
use crate::policy_source::{PolicySnapshot, ReloadError};

/// What the handlers may read of the running daemon.
pub trait DaemonView: Send + Sync {
    fn snapshot(&self) -> Arc<PolicySnapshot>;
    fn rejected_updates(&self) -> u64;
    fn last_reload_error(&self) -> Option<ReloadError>;
    /// `tproxy`, `so-original-dst` or `ebpf`.
    fn redirect_mode(&self) -> String;
    fn node(&self) -> Option<String>;
    fn listeners(&self) -> Vec<Listener>;
    /// `None` without the eBPF layer; `Some((pin root, inspection or the error reading it))`.
    fn datapath(&self) -> Option<(String, Result<Inspection, String>)>;
    /// The cgroup v2 id of a directory (its inode number), for naming attachments.
    fn cgroup_id(&self, path: &str) -> Option<u64>;
    /// The proxy's own cgroup id (it carries sockops + getsockopt, no endpoint).
    fn proxy_cgroup(&self) -> Option<(u64, String)>;
    fn tunnel(&self) -> Option<TunnelStatus>;
    fn flows(&self) -> FlowStatus;
    fn now(&self) -> SystemTime;
}

pub fn handle(d: &dyn DaemonView, req: Request) -> Response {
    match req {
        Request::Status => Response::ok(status(d)),
        Request::EndpointList => Response::ok(endpoints(&d.snapshot(), None)),
        Request::EndpointGet { id } => match endpoints(&d.snapshot(), Some(&id)) {
            list if list.is_empty() => Response::err(format!(
                "no endpoint {id:?}: give an identity number, namespace/pod or IP from `tollgate endpoint list`"
            )),
            list => Response::ok(list),
        },
        Request::PolicyGet { endpoint } => policy_get(&d.snapshot(), endpoint.as_deref()),
        Request::PolicyTrace(t) => trace(&d.snapshot(), d.now(), &t),
        Request::BpfList => bpf_list(d),
    }
}

pub fn status(d: &dyn DaemonView) -> Status {
    let snap = d.snapshot();
    Status {
        version: crate::hubble_server::version(),
        node: d.node(),
        redirect_mode: d.redirect_mode(),
        policy: PolicyStatus {
            generation: snap.generation,
            policies: snap.engine.policy_ids().to_vec(),
            endpoints: snap.endpoints.iter().count(),
            rejected_updates: d.rejected_updates(),
            last_reload_error: d.last_reload_error(),
        },
        datapath: d.datapath().map(|(pin_root, ins)| match ins {
            Ok(ins) => DatapathStatus {
                pin_root,
                error: None,
                maps: map_fill(&ins),
                cgroups: cgroups(d, &snap, &ins),
                tc_links: ins.tc_links.clone(),
            },
            Err(e) => DatapathStatus {
                pin_root,
                error: Some(e),
                maps: Vec::new(),
                cgroups: Vec::new(),
                tc_links: Vec::new(),
            },
        }),
        listeners: d.listeners(),
        tunnel: d.tunnel(),
        flows: d.flows(),
    }
}

fn map_fill(ins: &Inspection) -> Vec<MapFill> {
    ins.maps
        .iter()
        .map(|m| MapFill {
            name: m.name.to_string(),
            entries: m.entries,
            max_entries: m.max_entries,
        })
        .collect()
}

/// Pinned cgroup attachments, named by the endpoint whose `cgroup:` has that id.
fn cgroups(d: &dyn DaemonView, snap: &PolicySnapshot, ins: &Inspection) -> Vec<CgroupPrograms> {
    let named: Vec<(u64, String, String)> = snap
        .endpoints
        .iter()
        .filter_map(|ep| {
            let path = ep.cgroup.as_ref()?;
            Some((
                d.cgroup_id(path)?,
                path.clone(),
                format!("{}/{}", ep.namespace, ep.name),
            ))
        })
        .chain(
            d.proxy_cgroup()
                .map(|(id, path)| (id, path, "tollgate (proxy)".to_string())),
        )
        .collect();
    ins.cgroups
        .iter()
        .map(|c| {
            let n = named.iter().find(|(id, _, _)| *id == c.cgroup_id);
            CgroupPrograms {
                cgroup_id: c.cgroup_id,
                path: n.map(|n| n.1.clone()),
                endpoint: n.map(|n| n.2.clone()),
                identity: c.identity,
                programs: c.programs.clone(),
            }
        })
        .collect()
}

fn endpoint_names(snap: &PolicySnapshot, identity: u32) -> Vec<String> {
    snap.endpoints
        .iter_with_identity()
        .filter(|(_, id)| id.0 == identity)
        .map(|(ep, _)| format!("{}/{}", ep.namespace, ep.name))
        .collect()
}

/// Every endpoint, or those `id` names (identity number, `namespace/pod`, IP).
pub fn endpoints(snap: &PolicySnapshot, id: Option<&str>) -> Vec<EndpointView> {
    let l7 = snap.engine.l7_ports();
    snap.endpoints
        .iter_with_identity()
        .filter(|(ep, identity)| match id {
            None => true,
            Some(id) => {
                id == format!("{}/{}", ep.namespace, ep.name)
                    || id.parse::<u32>().is_ok_and(|n| n == identity.0)
                    || id.parse::<IpAddr>().is_ok_and(|ip| ip == ep.ip)
            }
        })
        .map(|(ep, identity)| EndpointView {
            name: format!("{}/{}", ep.namespace, ep.name),
            identity: identity.0,
            ip: ep.ip.to_string(),
            labels: ep.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            ingress_enforced: effective::enforced(&snap.engine, identity, Direction::Ingress),
            egress_enforced: effective::enforced(&snap.engine, identity, Direction::Egress),
            l7_ports: l7
                .iter()
                .filter(|p| p.identity == identity)
                .map(|p| {
                    let port = if p.end_port > p.port {
                        format!("{}-{}", p.port, p.end_port)
                    } else {
                        p.port.to_string()
                    };
                    let kind = p.kind.map(|k| k.to_string()).unwrap_or("auth".into());
                    format!("{port}/{} {kind} {}", p.protocol, p.direction)
                })
                .collect(),
            cgroup: ep.cgroup.clone(),
            node: ep.node.clone(),
        })
        .collect()
}

fn policy_get(snap: &PolicySnapshot, endpoint: Option<&str>) -> Response {
    let list = endpoints(snap, endpoint);
    if list.is_empty() && endpoint.is_some() {
        return Response::err(format!(
            "no endpoint {:?}: give an identity number, namespace/pod or IP from `tollgate endpoint list`",
            endpoint.unwrap_or_default()
        ));
    }
    let endpoints = list
        .into_iter()
        .map(|ep| {
            let eff = effective::effective(&snap.engine, Identity(ep.identity));
            EndpointPolicy {
                endpoint: ep.name,
                identity: ep.identity,
                effective: serde_json::to_value(eff).unwrap_or_default(),
            }
        })
        .collect();
    Response::ok(PolicyGet {
        generation: snap.generation,
        endpoints,
    })
}

/// `namespace/pod` or an IP, to the endpoint's IP.
fn resolve(snap: &PolicySnapshot, what: &str, flag: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = what.parse::<IpAddr>() {
        return Ok(ip);
    }
    let (ns, name) = what.split_once('/').ok_or_else(|| {
        format!("{flag} {what:?}: give namespace/pod (see `tollgate endpoint list`) or an IP")
    })?;
    snap.endpoints
        .by_name(ns, name)
        .map(|ep| ep.ip)
        .ok_or_else(|| {
            format!(
                "{flag} {what}: no such endpoint in policy generation {}",
                snap.generation
            )
        })
}

/// The L7 question and its description, from the trace flags.
fn trace_l7(t: &TraceRequest) -> Result<(TraceL7, Option<String>), String> {
    let http = t.http_method.is_some() || t.http_path.is_some();
    let kafka = t.kafka_topic.is_some() || t.kafka_role.is_some();
    let given = [http, t.dns_name.is_some(), kafka];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err("give one request: --http-method/--http-path, --dns-name, or --kafka-topic/--kafka-role".into());
    }
    if http {
        let method = t.http_method.clone().unwrap_or("GET".into());
        let path = t.http_path.clone().unwrap_or("/".into());
        let what = format!("HTTP {method} {path}");
        return Ok((TraceL7::Http { method, path }, Some(what)));
    }
    if let Some(name) = &t.dns_name {
        return Ok((
            TraceL7::Dns { name: name.clone() },
            Some(format!("DNS {name}")),
        ));
    }
    if kafka {
        let role = t.kafka_role.clone().unwrap_or("produce".into());
        let api_key = match role.to_ascii_lowercase().as_str() {
            "produce" => 0,
            "consume" => 1,
            other => return Err(format!("--kafka-role {other:?}: give produce or consume")),
        };
        let topic = t
            .kafka_topic
            .clone()
            .ok_or("--kafka-role needs --kafka-topic")?;
        let api_version = t.kafka_api_version.unwrap_or(0);
        let what = format!("Kafka {role} topic={topic} (apiVersion {api_version})");
        return Ok((
            TraceL7::Kafka {
                api_key,
                api_version,
                topic,
            },
            Some(what),
        ));
    }
    Ok((TraceL7::None, None))
}

fn trace(snap: &PolicySnapshot, now: SystemTime, t: &TraceRequest) -> Response {
    let question = || -> Result<(TraceQuestion, Option<String>), String> {
        let src = resolve(snap, &t.from, "--from")?;
        let dst = resolve(snap, &t.to, "--to")?;
        let (l7, what) = trace_l7(t)?;
        let protocol = match t
            .protocol
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            None if t.dns_name.is_some() => Protocol::Udp,
            None => Protocol::Tcp,
            Some(other) => return Err(format!("--protocol {other:?}: give TCP or UDP")),
        };
        Ok((
            TraceQuestion {
                src,
                dst,
                port: t.port,
                protocol,
                l7,
            },
            what,
        ))
    };
    let (q, what) = match question() {
        Ok(x) => x,
        Err(e) => return Response::err(e),
    };
    let cache = snap.fqdn.read();
    let result = effective::trace(&snap.engine, &cache, now, &q);
    Response::ok(TraceAnswer {
        generation: snap.generation,
        from: t.from.clone(),
        to: t.to.clone(),
        port: t.port,
        protocol: q.protocol.to_string(),
        request: what,
        trace: serde_json::to_value(result).unwrap_or_default(),
    })
}

/// `TCP` or `UDP`, as the eBPF maps' rows show a protocol.
fn protocol_name(p: redirect_ebpf::Protocol) -> &'static str {
    match p {
        redirect_ebpf::Protocol::Tcp => "TCP",
        redirect_ebpf::Protocol::Udp => "UDP",
    }
}

fn l7_name(k: redirect_ebpf::L7Kind) -> &'static str {
    match k {
        redirect_ebpf::L7Kind::Http => "http",
        redirect_ebpf::L7Kind::Kafka => "kafka",
        redirect_ebpf::L7Kind::Dns => "dns",
    }
}

fn redirect_row(snap: &PolicySnapshot, r: &redirect_ebpf::inspect::RedirectEntry) -> RedirectRow {
    RedirectRow {
        identity: r.identity,
        endpoints: endpoint_names(snap, r.identity),
        direction: r.direction.to_string(),
        protocol: r.protocol.map_or("-", protocol_name).into(),
        port: r.port,
        l7: r.l7.map_or("-", l7_name).into(),
        proxy_port: r.proxy_port,
        fqdn_restricted: r.fqdn_restricted,
    }
}

fn bpf_list(d: &dyn DaemonView) -> Response {
    let Some((pin_root, ins)) = d.datapath() else {
        return Response::err(format!(
            "this daemon runs with --redirect {}: there are no eBPF maps (start it with --redirect ebpf)",
            d.redirect_mode()
        ));
    };
    let ins = match ins {
        Ok(i) => i,
        Err(e) => return Response::err(format!("reading the pinned maps under {pin_root}: {e}")),
    };
    let snap = d.snapshot();
    let now = d.now();
    let cache = snap.fqdn.read();
    let redirects = ins
        .redirects
        .iter()
        .map(|r| redirect_row(&snap, r))
        .collect();
    let fqdn = ins
        .fqdn
        .iter()
        .map(|f| FqdnRow {
            identity: f.identity,
            endpoints: endpoint_names(&snap, f.identity),
            ip: f.ip.to_string(),
            names: cache.names_for_ip_at(f.ip, now),
            port: match (f.protocol, f.port) {
                (None, _) | (_, 0) => "any".into(),
                (Some(proto), p) => format!("{}/{p}", protocol_name(proto)),
            },
            expires_in_secs: f.expires_in.map(|t| t.as_secs()),
        })
        .collect();
    let ipcache = ins
        .ipcache
        .iter()
        .map(|e| IpcacheRow {
            prefix: format!("{}/{}", e.ip, e.prefix_len),
            identity: e.identity,
            local: e.local,
        })
        .collect();
    Response::ok(BpfList {
        pin_root,
        maps: map_fill(&ins),
        redirects,
        fqdn,
        ipcache,
        cgroups: cgroups(d, &snap, &ins),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use redirect_ebpf::inspect::{CgroupAttachment, FqdnEntry, MapFill as Fill, RedirectEntry};

    /// A daemon from the http-ledger conformance case with canned eBPF state.
    pub(crate) struct Fake {
        pub snap: Arc<PolicySnapshot>,
        pub ins: Option<Inspection>,
        pub error: Option<ReloadError>,
    }

    impl Fake {
        pub(crate) fn new() -> Self {
            let snap = crate::conformance::conformance_snapshot("http-ledger");
            let ledger = snap
                .endpoints
                .identity_of_ip("10.0.21.20".parse().unwrap())
                .0;
            let ins = Inspection {
                maps: vec![Fill {
                    name: "tg_policy",
                    entries: Some(1),
                    max_entries: 65536,
                }],
                redirects: vec![RedirectEntry {
                    identity: ledger,
                    direction: Direction::Ingress,
                    protocol: Some(redirect_ebpf::Protocol::Tcp),
                    port: 8080,
                    l7: Some(redirect_ebpf::L7Kind::Http),
                    proxy_port: 0,
                    fqdn_restricted: false,
                }],
                fqdn: vec![FqdnEntry {
                    identity: ledger,
                    ip: "192.0.2.9".parse().unwrap(),
                    protocol: None,
                    port: 0,
                    expires_in: Some(std::time::Duration::from_secs(30)),
                }],
                ipcache: Vec::new(),
                cgroups: vec![CgroupAttachment {
                    cgroup_id: 77,
                    identity: Some(ledger),
                    ipv4: None,
                    programs: vec!["tg_connect4".into(), "tg_sockops".into()],
                }],
                tc_links: Vec::new(),
            };
            Fake {
                snap: Arc::new(snap),
                ins: Some(ins),
                error: None,
            }
        }
    }

    impl DaemonView for Fake {
        fn snapshot(&self) -> Arc<PolicySnapshot> {
            self.snap.clone()
        }
        fn rejected_updates(&self) -> u64 {
            u64::from(self.error.is_some())
        }
        fn last_reload_error(&self) -> Option<ReloadError> {
            self.error.clone()
        }
        fn redirect_mode(&self) -> String {
            if self.ins.is_some() { "ebpf" } else { "tproxy" }.into()
        }
        fn node(&self) -> Option<String> {
            None
        }
        fn listeners(&self) -> Vec<Listener> {
            vec![Listener {
                name: "proxy".into(),
                address: "0.0.0.0:15001".into(),
            }]
        }
        fn datapath(&self) -> Option<(String, Result<Inspection, String>)> {
            self.ins
                .clone()
                .map(|i| ("/sys/fs/bpf/t".to_string(), Ok(i)))
        }
        fn cgroup_id(&self, _path: &str) -> Option<u64> {
            None
        }
        fn proxy_cgroup(&self) -> Option<(u64, String)> {
            Some((77, "/sys/fs/cgroup/unified/tollgate".into()))
        }
        fn tunnel(&self) -> Option<TunnelStatus> {
            None
        }
        fn flows(&self) -> FlowStatus {
            FlowStatus {
                ring_capacity: 4096,
                ring_len: 3,
                seen: 3,
                lost: 0,
            }
        }
        fn now(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH
        }
    }

    fn ok<T: serde::de::DeserializeOwned>(r: Response) -> T {
        assert!(r.ok, "{:?}", r.error);
        serde_json::from_value(r.result.unwrap()).unwrap()
    }

    #[test]
    fn status_reports_generation_error_maps_and_programs() {
        let mut d = Fake::new();
        d.error = Some(ReloadError {
            time: "t".into(),
            kept_generation: 1,
            error: "policy.yaml: document 0: spec: bad".into(),
        });
        let st: Status = ok(handle(&d, Request::Status));
        assert_eq!(st.policy.generation, 1);
        assert_eq!(st.policy.policies, ["billing/ledger-http"]);
        assert_eq!(st.policy.endpoints, 3);
        assert_eq!(st.policy.last_reload_error.unwrap().kept_generation, 1);
        let dp = st.datapath.unwrap();
        assert_eq!(dp.maps[0].entries, Some(1));
        assert_eq!(dp.cgroups[0].endpoint.as_deref(), Some("tollgate (proxy)"));
        assert_eq!(dp.cgroups[0].programs.len(), 2);
    }

    #[test]
    fn endpoints_show_enforcement_and_l7_ports_and_get_finds_by_any_name() {
        let d = Fake::new();
        let all: Vec<EndpointView> = ok(handle(&d, Request::EndpointList));
        assert_eq!(all.len(), 3);
        let ledger = all.iter().find(|e| e.name == "billing/ledger").unwrap();
        assert!(ledger.ingress_enforced && !ledger.egress_enforced);
        assert_eq!(ledger.l7_ports, ["8080/TCP http ingress"]);
        let portal = all.iter().find(|e| e.name == "billing/portal").unwrap();
        assert!(!portal.ingress_enforced && portal.l7_ports.is_empty());
        for id in ["billing/ledger", "10.0.21.20", &ledger.identity.to_string()] {
            let one: Vec<EndpointView> = ok(handle(&d, Request::EndpointGet { id: id.into() }));
            assert_eq!(one[0].name, "billing/ledger", "{id}");
        }
        let r = handle(
            &d,
            Request::EndpointGet {
                id: "billing/nope".into(),
            },
        );
        assert!(r.error.unwrap().contains("tollgate endpoint list"));
    }

    #[test]
    fn policy_get_and_trace_answer_from_the_snapshot() {
        let d = Fake::new();
        let pg: PolicyGet = ok(handle(
            &d,
            Request::PolicyGet {
                endpoint: Some("billing/ledger".into()),
            },
        ));
        assert_eq!(pg.endpoints.len(), 1);
        assert_eq!(
            pg.endpoints[0].effective["ingress"]["rules"][0]["name"],
            "CiliumNetworkPolicy billing/ledger-http ingress[0]"
        );
        let t = |method: &str, path: &str, from: &str| {
            let a: TraceAnswer = ok(handle(
                &d,
                Request::PolicyTrace(TraceRequest {
                    from: from.into(),
                    to: "billing/ledger".into(),
                    port: 8080,
                    http_method: Some(method.into()),
                    http_path: Some(path.into()),
                    ..Default::default()
                }),
            ));
            a.trace
        };
        let allowed = t("GET", "/books/v2/entries", "billing/portal");
        assert_eq!(allowed["verdict"], "Allow");
        assert_eq!(
            allowed["reason"],
            "allowed by CiliumNetworkPolicy billing/ledger-http ingress[0] l7[0]"
        );
        let denied = t("DELETE", "/books/v2/entries", "billing/portal");
        assert_eq!(denied["verdict"], "Deny");
        assert_eq!(
            t("GET", "/books/v2/x", "billing/reporter")["connection"],
            "Deny"
        );
        let bad = handle(
            &d,
            Request::PolicyTrace(TraceRequest {
                from: "portal".into(),
                to: "billing/ledger".into(),
                port: 8080,
                ..Default::default()
            }),
        );
        assert!(bad.error.unwrap().contains("namespace/pod"));
        let both = handle(
            &d,
            Request::PolicyTrace(TraceRequest {
                from: "billing/portal".into(),
                to: "billing/ledger".into(),
                port: 8080,
                dns_name: Some("x".into()),
                kafka_topic: Some("t".into()),
                ..Default::default()
            }),
        );
        assert!(both.error.unwrap().contains("give one request"));
    }

    #[test]
    fn bpf_list_names_endpoints_and_refuses_without_ebpf() {
        let mut d = Fake::new();
        let b: BpfList = ok(handle(&d, Request::BpfList));
        assert_eq!(b.redirects[0].endpoints, ["billing/ledger"]);
        assert_eq!(
            (b.redirects[0].l7.as_str(), b.redirects[0].protocol.as_str()),
            ("http", "TCP")
        );
        assert_eq!(
            (b.fqdn[0].port.as_str(), b.fqdn[0].expires_in_secs),
            ("any", Some(30))
        );
        d.ins = None;
        let r = handle(&d, Request::BpfList);
        assert!(r.error.unwrap().contains("--redirect ebpf"));
    }
}
