//! One request through a node proxy's mTLS tunnel, as whatever SVID the test hands it: what a (compromised or
//! misconfigured) node proxy could send. Uses the proxy's own tunnel client.
//!
//! `tollgate-tunnel-probe --svid-dir DIR --node IP:PORT --node-id SPIFFE_ID --dst IP:PORT --path /x`
//! prints the HTTP status line of the destination's answer, or `refused: <error>` and exits 1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn arg(args: &[String], name: &str) -> Result<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .with_context(|| format!("missing {name}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(arg(&args, "--svid-dir")?);
    let node: SocketAddr = arg(&args, "--node")?.parse()?;
    let node_id = certs::SpiffeId::parse(&arg(&args, "--node-id")?)?;
    let dst: SocketAddr = arg(&args, "--dst")?.parse()?;
    let path = arg(&args, "--path")?;
    let (store, _handle) = certs::FileSource::new(&certs::SvidFiles::in_dir(&dir))
        .start()
        .context("loading the SVID")?;
    let client = tollgate::tunnel::TunnelClient::new(Duration::from_secs(5));
    let tunnel = client
        .open(&store, node, &certs::AllowedIds::ids([node_id]), dst, None)
        .await;
    let mut stream = match tunnel {
        Ok(t) => t.stream,
        Err(e) => {
            println!("refused: {e}");
            std::process::exit(1);
        }
    };
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    println!("{}", text.lines().next().unwrap_or("no response"));
    Ok(())
}
