//! DNS pieces shared by the DNS and upgrade e2e tests: dnsmasq as a pod's resolver, and a client that queries in a
//! loop and reports failures and the longest gap between answers.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{ChildGuard, Pod, require_tool};

/// Starts dnsmasq in `pod`, authoritative for `host_records` (`name,ip[,ip6]`), listening on `listen`:53; returns
/// once it answers `probe` (a name whose answer contains `probe_ip`) from inside its own namespace.
pub fn start_dnsmasq(
    pod: &Pod,
    listen: &str,
    host_records: &[String],
    extra_args: &[String],
    probe: (&str, &str),
) -> Result<ChildGuard> {
    let dnsmasq = require_tool("dnsmasq");
    let dig = require_tool("dig");
    let mut cmd = pod.command(dnsmasq);
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--pid-file=",
        "--bind-interfaces",
        &format!("--listen-address={listen}"),
        "--port=53",
    ])
    .args(extra_args)
    .args(host_records.iter().map(|r| format!("--host-record={r}")))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let guard = ChildGuard::spawn(&mut cmd)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = pod
            .command(&dig)
            .args([
                &format!("@{listen}"),
                "+time=1",
                "+tries=1",
                "+short",
                probe.0,
            ])
            .output()?;
        if String::from_utf8_lossy(&o.stdout).contains(probe.1) {
            return Ok(guard);
        }
        if Instant::now() > deadline {
            bail!(
                "dnsmasq did not come up: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A client in `pod` sending an A query for `name` to `resolver`:53 every 10 ms for `secs` seconds (1 s timeout,
/// a new socket per query, each answer's id and rcode checked). Prints `ok N fail N maxgap_ms N` when done.
pub fn query_loop(pod: &Pod, resolver: &str, name: &str, secs: u64) -> std::io::Result<Child> {
    let mut c = pod.command(require_tool("python3"));
    c.args([
        "-c",
        &format!(
            "import socket,time,struct,random\n\
             qn=b''.join(bytes([len(l)])+l.encode() for l in '{name}'.split('.'))+b'\\x00'\n\
             q=lambda i: struct.pack('>HHHHHH',i,0x0100,1,0,0,0)+qn+b'\\x00\\x01\\x00\\x01'\n\
             ok=fail=0;last=time.time();gap=0;end=time.time()+{secs}\n\
             while time.time()<end:\n\
             \x20s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(1)\n\
             \x20i=random.randint(1,65535)\n\
             \x20try:\n\
             \x20\x20s.sendto(q(i),('{resolver}',53));r=s.recv(512)\n\
             \x20\x20assert r[0]*256+r[1]==i and r[3]&15==0\n\
             \x20\x20now=time.time();gap=max(gap,now-last);last=now;ok+=1\n\
             \x20except Exception:\n\
             \x20\x20fail+=1\n\
             \x20s.close();time.sleep(0.01)\n\
             print('ok',ok,'fail',fail,'maxgap_ms',int(gap*1000))"
        ),
    ]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.spawn()
}

/// A number from `query_loop`'s summary (`ok`, `fail`, `maxgap_ms`).
pub fn loop_field(summary: &str, key: &str) -> u64 {
    summary
        .split_whitespace()
        .skip_while(|w| *w != key)
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {summary}"))
}
