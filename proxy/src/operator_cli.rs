//! The operator CLI: `tollgate status`, `endpoint list|get`, `policy get|trace` and `bpf list`, all answered by the
//! local daemon over its admin socket (`admin::client`); `-o json` prints the daemon's answer as is, the default
//! prints aligned tables. `status --server` also asks an Observer address (node or relay) for its node counts.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::admin::client;
use crate::admin::protocol::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Flags every admin command takes.
#[derive(Debug, Clone, Args)]
pub struct AdminOpts {
    /// The daemon's admin socket (its `--admin-socket`).
    #[arg(long, env = "TOLLGATE_ADMIN_SOCKET", default_value = crate::admin::DEFAULT_SOCKET)]
    pub admin_socket: PathBuf,
    /// Output: aligned tables, or the daemon's JSON answer.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub admin: AdminOpts,
    /// Also ask this Observer address (a node or a relay, host:port) for its connected/unavailable nodes.
    #[arg(long)]
    pub server: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Every endpoint: identity, labels, enforcement per direction, L7 ports.
    List(AdminOpts),
    /// One endpoint by identity number, namespace/pod or IP.
    Get {
        id: String,
        #[command(flatten)]
        admin: AdminOpts,
    },
}

#[derive(Debug, Subcommand)]
pub enum BpfCommand {
    /// Redirect-map, FQDN-gate and ipcache entries and the enrolled cgroups, readable.
    List(AdminOpts),
}

#[derive(Debug, Clone, Args)]
pub struct PolicyGetArgs {
    /// Only this endpoint (identity number, namespace/pod or IP).
    #[arg(long)]
    pub endpoint: Option<String>,
    #[command(flatten)]
    pub admin: AdminOpts,
}

#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// Source: namespace/pod or IP.
    #[arg(long)]
    pub from: String,
    /// Destination: namespace/pod or IP.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub port: u16,
    /// TCP or UDP (default TCP; UDP with --dns-name).
    #[arg(long)]
    pub protocol: Option<String>,
    #[arg(long)]
    pub http_method: Option<String>,
    #[arg(long)]
    pub http_path: Option<String>,
    #[arg(long)]
    pub dns_name: Option<String>,
    #[arg(long)]
    pub kafka_topic: Option<String>,
    /// produce or consume.
    #[arg(long)]
    pub kafka_role: Option<String>,
    /// Kafka API version to trace with (matters only for rules that pin `apiVersion`).
    #[arg(long)]
    pub kafka_api_version: Option<i16>,
    #[command(flatten)]
    pub admin: AdminOpts,
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn ask<T: DeserializeOwned>(opts: &AdminOpts, req: &Request) -> anyhow::Result<(Value, T)> {
    let v = client::call(&opts.admin_socket, req, TIMEOUT)?;
    let typed = serde_json::from_value(v.clone()).with_context(|| {
        format!(
            "reading the answer of the daemon at {}; are the CLI and daemon the same version?",
            opts.admin_socket.display()
        )
    })?;
    Ok((v, typed))
}

/// Asks the daemon and prints the answer: as it came with `--output json`, else rendered as text.
fn ask_and_print<T: DeserializeOwned>(
    opts: &AdminOpts,
    req: &Request,
    render: impl Fn(&T) -> String,
) -> anyhow::Result<bool> {
    let (v, answer) = ask::<T>(opts, req)?;
    if opts.output == Format::Json {
        return print_json(&v);
    }
    print!("{}", render(&answer));
    Ok(true)
}

fn print_json(v: &Value) -> anyhow::Result<bool> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(true)
}

/// `tollgate status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let local = ask::<Status>(&args.admin, &Request::Status);
    let relay = match &args.server {
        Some(s) => Some(relay_status(s).await?),
        None => None,
    };
    let (v, st) = match (local, &relay) {
        (Ok(x), _) => x,
        // Pointed at a relay from a machine without a daemon: the relay part alone is still an answer.
        (Err(e), Some(r)) if args.admin.output == Format::Table => {
            println!("Local daemon:    unavailable ({e:#})");
            print!("{}", render_relay(r));
            return Ok(());
        }
        (Err(e), _) => return Err(e),
    };
    if args.admin.output == Format::Json {
        let mut v = v;
        if let (Some(r), Some(obj)) = (&relay, v.as_object_mut()) {
            obj.insert("relay".into(), serde_json::to_value(r)?);
        }
        print_json(&v)?;
        return Ok(());
    }
    print!("{}", render_status(&st));
    if let Some(r) = &relay {
        print!("{}", render_relay(r));
    }
    Ok(())
}

/// What an Observer address says about its nodes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayStatus {
    pub server: String,
    pub version: String,
    pub connected_nodes: Option<u32>,
    pub unavailable_nodes: Option<u32>,
    pub unavailable: Vec<String>,
    pub nodes: Vec<(String, String, String)>,
    pub num_flows: u64,
    pub max_flows: u64,
    pub seen_flows: u64,
}

async fn relay_status(server: &str) -> anyhow::Result<RelayStatus> {
    use crate::hubble::observer::{
        GetNodesRequest, ServerStatusRequest, observer_client::ObserverClient,
    };
    let url = if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    let mut c = ObserverClient::connect(url.clone()).await.map_err(|e| {
        anyhow::anyhow!("cannot reach the Observer API at {url} (--server): {e}; give a node's --observer-listen or a relay's address")
    })?;
    let st = c
        .server_status(ServerStatusRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("ServerStatus at {url} failed: {}", s.message()))?
        .into_inner();
    let nodes = c
        .get_nodes(GetNodesRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("GetNodes at {url} failed: {}", s.message()))?
        .into_inner();
    Ok(RelayStatus {
        server: server.to_string(),
        version: st.version,
        connected_nodes: st.num_connected_nodes,
        unavailable_nodes: st.num_unavailable_nodes,
        unavailable: st.unavailable_nodes,
        nodes: nodes
            .nodes
            .into_iter()
            .map(|n| {
                let state = crate::hubble::relay::NodeState::try_from(n.state)
                    .map(|s| s.as_str_name().to_string())
                    .unwrap_or_else(|_| n.state.to_string());
                (n.name, n.address, state)
            })
            .collect(),
        num_flows: st.num_flows,
        max_flows: st.max_flows,
        seen_flows: st.seen_flows,
    })
}

/// Aligned columns, two spaces apart (like `cilium`'s tab writer).
pub fn table(headers: &[&str], rows: &[Vec<String>], indent: &str) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::from(indent);
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                s.push_str(c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn or_dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

pub fn render_status(st: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Tollgate:        {}", st.version);
    let _ = writeln!(o, "Node:            {}", or_dash(st.node.as_deref()));
    let _ = writeln!(o, "Redirect mode:   {}", st.redirect_mode);
    let p = &st.policy;
    let _ = writeln!(
        o,
        "Policy:          generation {}, {} policies, {} endpoints, {} rejected updates",
        p.generation,
        p.policies.len(),
        p.endpoints,
        p.rejected_updates
    );
    match &p.last_reload_error {
        None => {
            let _ = writeln!(o, "Last reload:     ok");
        }
        Some(e) => {
            let _ = writeln!(
                o,
                "Last reload:     REJECTED at {} (generation {} keeps enforcing): {}",
                e.time, e.kept_generation, e.error
            );
        }
    }
    let f = &st.flows;
    let _ = writeln!(
        o,
        "Flow ring:       {}/{} records, {} seen, {} lost",
        f.ring_len, f.ring_capacity, f.seen, f.lost
    );
    let _ = writeln!(o, "Listeners:");
    let rows: Vec<Vec<String>> = st
        .listeners
        .iter()
        .map(|l| vec![l.name.clone(), l.address.clone()])
        .collect();
    o.push_str(&table(&["NAME", "ADDRESS"], &rows, "  "));
    match &st.datapath {
        None => {
            let _ = writeln!(
                o,
                "eBPF datapath:   not used (--redirect {})",
                st.redirect_mode
            );
        }
        Some(dp) => {
            let _ = writeln!(o, "eBPF datapath:   pinned at {}", dp.pin_root);
            if let Some(e) = &dp.error {
                let _ = writeln!(o, "  cannot read the pinned state: {e}");
            }
            let _ = writeln!(o, "Enrolled cgroups:");
            o.push_str(&cgroup_table(&dp.cgroups));
            if !dp.tc_links.is_empty() {
                let _ = writeln!(o, "TC links:        {}", dp.tc_links.join(", "));
            }
            let _ = writeln!(o, "Pinned maps:");
            o.push_str(&map_table(&dp.maps));
        }
    }
    match &st.tunnel {
        None => {
            let _ = writeln!(o, "mTLS tunnel:     off");
        }
        Some(t) => {
            let left = t
                .svid_expires_in_secs
                .map(|s| {
                    if s < 0 {
                        "EXPIRED".to_string()
                    } else {
                        format!("in {}", human_secs(s as u64))
                    }
                })
                .unwrap_or_else(|| "unknown".into());
            let _ = writeln!(
                o,
                "mTLS tunnel:     node {} as {}, SVID expires {} ({left})",
                t.node,
                t.node_id,
                or_dash(t.svid_expiry.as_deref())
            );
            let rows: Vec<Vec<String>> = t
                .peers
                .iter()
                .map(|p| vec![p.name.clone(), p.address.clone()])
                .collect();
            o.push_str(&table(&["PEER NODE", "TUNNEL ADDRESS"], &rows, "  "));
        }
    }
    o
}

fn human_secs(s: u64) -> String {
    match s {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn cgroup_table(cgroups: &[CgroupPrograms]) -> String {
    let rows: Vec<Vec<String>> = cgroups
        .iter()
        .map(|c| {
            vec![
                or_dash(c.endpoint.as_deref()),
                c.identity.map(|i| i.to_string()).unwrap_or("-".into()),
                c.cgroup_id.to_string(),
                c.programs.len().to_string(),
                c.programs.join(","),
            ]
        })
        .collect();
    table(
        &["ENDPOINT", "IDENTITY", "CGROUP-ID", "#PROGS", "PROGRAMS"],
        &rows,
        "  ",
    )
}

fn map_table(maps: &[MapFill]) -> String {
    let rows: Vec<Vec<String>> = maps
        .iter()
        .map(|m| match m.entries {
            Some(n) => vec![
                m.name.clone(),
                n.to_string(),
                m.max_entries.to_string(),
                fill_pct(n, m.max_entries),
            ],
            None => vec![
                m.name.clone(),
                "-".into(),
                format!("{} bytes", m.max_entries),
                "-".into(),
            ],
        })
        .collect();
    table(&["MAP", "ENTRIES", "MAX", "FILL"], &rows, "  ")
}

/// `12.5%`; `<0.1%` for a map that holds something but rounds to nothing.
fn fill_pct(n: usize, max: u32) -> String {
    let pct = n as f64 * 100.0 / f64::from(max.max(1));
    if n > 0 && pct < 0.1 {
        "<0.1%".into()
    } else {
        format!("{pct:.1}%")
    }
}

pub fn render_relay(r: &RelayStatus) -> String {
    let mut o = String::new();
    let n = |x: Option<u32>| x.map(|x| x.to_string()).unwrap_or("-".into());
    let _ = writeln!(
        o,
        "Observer {}:  {}, {} connected / {} unavailable nodes, flows {}/{} ({} seen)",
        r.server,
        r.version,
        n(r.connected_nodes),
        n(r.unavailable_nodes),
        r.num_flows,
        r.max_flows,
        r.seen_flows
    );
    let rows: Vec<Vec<String>> = r
        .nodes
        .iter()
        .map(|(name, addr, state)| vec![name.clone(), or_dash(Some(addr)), state.clone()])
        .collect();
    o.push_str(&table(&["NODE", "ADDRESS", "STATE"], &rows, "  "));
    o
}

/// `tollgate endpoint list|get`.
pub fn endpoint(cmd: EndpointCommand) -> anyhow::Result<bool> {
    let (opts, req) = match cmd {
        EndpointCommand::List(a) => (a, Request::EndpointList),
        EndpointCommand::Get { id, admin } => (admin, Request::EndpointGet { id }),
    };
    ask_and_print(&opts, &req, |eps: &Vec<EndpointView>| render_endpoints(eps))
}

pub fn render_endpoints(eps: &[EndpointView]) -> String {
    let on = |b: bool| if b { "Enabled" } else { "Disabled" }.to_string();
    let rows: Vec<Vec<String>> = eps
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                e.identity.to_string(),
                e.ip.clone(),
                on(e.ingress_enforced),
                on(e.egress_enforced),
                if e.l7_ports.is_empty() {
                    "-".into()
                } else {
                    e.l7_ports.join(", ")
                },
                e.labels.join(","),
            ]
        })
        .collect();
    table(
        &[
            "ENDPOINT",
            "IDENTITY",
            "IPV4",
            "INGRESS ENFORCEMENT",
            "EGRESS ENFORCEMENT",
            "L7 PORTS",
            "LABELS",
        ],
        &rows,
        "",
    )
}

/// `tollgate policy get`.
pub fn policy_get(args: PolicyGetArgs) -> anyhow::Result<bool> {
    let req = Request::PolicyGet {
        endpoint: args.endpoint.clone(),
    };
    ask_and_print(&args.admin, &req, render_policy_get)
}

pub fn render_policy_get(pg: &PolicyGet) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Policy generation {}", pg.generation);
    for ep in &pg.endpoints {
        let Ok(eff) = serde_json::from_value::<policy_model::effective::EffectivePolicy>(
            ep.effective.clone(),
        ) else {
            continue;
        };
        let _ = writeln!(o, "\nEndpoint {} (identity {})", ep.endpoint, ep.identity);
        for (dir, rules) in [("Ingress", &eff.ingress), ("Egress", &eff.egress)] {
            let mode = if rules.enforced {
                "enforced (default deny)"
            } else {
                "not enforced (allow all)"
            };
            let _ = writeln!(o, "  {dir}: {mode}");
            if rules.rules.is_empty() {
                continue;
            }
            let rows: Vec<Vec<String>> = rules
                .rules
                .iter()
                .flat_map(|r| {
                    let ports = if r.ports.is_empty() {
                        vec![("all ports".to_string(), String::new())]
                    } else {
                        r.ports
                            .iter()
                            .map(|p| {
                                let l7 = match p.l7 {
                                    Some(k) => format!("{k}: {}", p.l7_rules.join(" | ")),
                                    None => String::new(),
                                };
                                (p.ports.join(","), l7)
                            })
                            .collect()
                    };
                    let action = if r.rule.deny { "DENY" } else { "allow" };
                    let auth = if r.auth_required {
                        " (auth required)"
                    } else {
                        ""
                    };
                    ports
                        .into_iter()
                        .map(|(ports, l7)| {
                            vec![
                                format!("{action}{auth}"),
                                r.peers.join(","),
                                ports,
                                or_dash(Some(&l7)),
                                format!("{} ({}#{})", r.name, r.source_file, r.source_document),
                            ]
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            o.push_str(&table(
                &["ACTION", "PEERS", "PORTS", "L7 RULES", "RULE (SOURCE)"],
                &rows,
                "    ",
            ));
        }
    }
    o
}

/// `tollgate policy trace`.
pub fn policy_trace(args: TraceArgs) -> anyhow::Result<bool> {
    let req = Request::PolicyTrace(TraceRequest {
        from: args.from,
        to: args.to,
        port: args.port,
        protocol: args.protocol,
        http_method: args.http_method,
        http_path: args.http_path,
        dns_name: args.dns_name,
        kafka_topic: args.kafka_topic,
        kafka_role: args.kafka_role,
        kafka_api_version: args.kafka_api_version,
    });
    let (v, t) = ask::<TraceAnswer>(&args.admin, &req)?;
    let trace: policy_model::effective::Trace = serde_json::from_value(t.trace.clone())
        .context("reading the trace in the daemon's answer")?;
    let allowed = trace.verdict == policy_model::Decision::Allow;
    if args.admin.output == Format::Json {
        print_json(&v)?;
    } else {
        print!("{}", render_trace(&t, &trace));
    }
    // Like `policy test`: the exit code says the verdict (0 allowed, 1 denied).
    Ok(allowed)
}

pub fn render_trace(t: &TraceAnswer, tr: &policy_model::effective::Trace) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Tracing {} (identity {}) -> {} (identity {}) port {}/{} against policy generation {}",
        t.from, tr.src_identity, t.to, tr.dst_identity, t.port, t.protocol, t.generation
    );
    let _ = writeln!(
        o,
        "  Connection: {}  {}",
        verdict_word(tr.connection),
        tr.connection_reason
    );
    if let Some(kind) = tr.l7 {
        let _ = writeln!(o, "  L7:         {kind} rules on this port");
    }
    if let (Some(d), Some(r)) = (tr.request, &tr.request_reason) {
        let _ = writeln!(
            o,
            "  Request:    {}  {}  {r}",
            t.request.as_deref().unwrap_or("-"),
            verdict_word(d)
        );
    }
    if let Some(n) = &tr.note {
        let _ = writeln!(o, "  Note:       {n}");
    }
    let _ = writeln!(o, "Final verdict: {}", verdict_word(tr.verdict));
    o
}

fn verdict_word(d: policy_model::Decision) -> &'static str {
    match d {
        policy_model::Decision::Allow => "ALLOWED",
        policy_model::Decision::Deny => "DENIED",
    }
}

/// `tollgate bpf list`.
pub fn bpf(cmd: BpfCommand) -> anyhow::Result<bool> {
    let BpfCommand::List(opts) = cmd;
    ask_and_print(&opts, &Request::BpfList, render_bpf)
}

pub fn render_bpf(b: &BpfList) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Pinned at {}", b.pin_root);
    o.push_str(&map_table(&b.maps));
    let headers = [
        "IDENTITY",
        "ENDPOINTS",
        "DIRECTION",
        "PROTO",
        "PORT",
        "L7",
        "PROXY PORT",
        "FLAGS",
    ];
    let title = "Redirect map (tg_policy)";
    map_section(&mut o, title, &b.redirects, &headers, redirect_cells);
    let headers = ["IDENTITY", "ENDPOINTS", "IP", "NAMES", "PORT", "EXPIRES IN"];
    let title = "FQDN gate (tg_fqdn_allow)";
    map_section(&mut o, title, &b.fqdn, &headers, fqdn_cells);
    let headers = ["PREFIX", "IDENTITY", "WHERE"];
    map_section(
        &mut o,
        "IP cache (tg_ipcache)",
        &b.ipcache,
        &headers,
        ipcache_cells,
    );
    let _ = writeln!(o, "\nEnrolled cgroups:");
    o.push_str(&cgroup_table(&b.cgroups));
    o
}

/// One map of `tollgate bpf list`: its title and entry count, then a table of its rows.
fn map_section<T>(
    o: &mut String,
    title: &str,
    rows: &[T],
    headers: &[&str],
    cells: fn(&T) -> Vec<String>,
) {
    let _ = writeln!(o, "\n{title}: {} entries", rows.len());
    let rows: Vec<Vec<String>> = rows.iter().map(cells).collect();
    o.push_str(&table(headers, &rows, "  "));
}

fn redirect_cells(r: &RedirectRow) -> Vec<String> {
    vec![
        r.identity.to_string(),
        or_dash(Some(&r.endpoints.join(","))),
        r.direction.clone(),
        r.protocol.clone(),
        if r.protocol == "-" {
            "-".into()
        } else {
            r.port.to_string()
        },
        r.l7.clone(),
        if r.proxy_port == 0 {
            "default".into()
        } else {
            r.proxy_port.to_string()
        },
        if r.fqdn_restricted {
            "fqdn-restricted".into()
        } else {
            "-".into()
        },
    ]
}

fn fqdn_cells(f: &FqdnRow) -> Vec<String> {
    vec![
        f.identity.to_string(),
        or_dash(Some(&f.endpoints.join(","))),
        f.ip.clone(),
        or_dash(Some(&f.names.join(","))),
        f.port.clone(),
        f.expires_in_secs
            .map(|s| format!("{s}s"))
            .unwrap_or("never".into()),
    ]
}

fn ipcache_cells(e: &IpcacheRow) -> Vec<String> {
    vec![
        e.prefix.clone(),
        e.identity.to_string(),
        if e.local {
            "local".into()
        } else {
            "remote".into()
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_two_spaces_apart() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xxxx".into(), "1".into()],
                vec!["y".into(), "22".into()],
            ],
            "  ",
        );
        assert_eq!(t, "  A     LONGER\n  xxxx  1\n  y     22\n");
    }

    #[test]
    fn fill_levels_never_show_a_used_map_as_empty() {
        assert_eq!(fill_pct(0, 65536), "0.0%");
        assert_eq!(fill_pct(3, 65536), "<0.1%");
        assert_eq!(fill_pct(1, 1), "100.0%");
    }

    #[test]
    fn seconds_read_like_durations() {
        assert_eq!(human_secs(59), "59s");
        assert_eq!(human_secs(3_700), "1h1m");
        assert_eq!(human_secs(90_000), "1d1h");
    }
}
