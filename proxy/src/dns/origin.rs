//! Where a redirected DNS query was going: the resolver the pod addressed, from the redirect layer's maps (UDP by
//! the datagram's 4-tuple, TCP by the accepted socket), with an optional fixed resolver as the fallback.

use std::net::SocketAddr;
use std::sync::Arc;

use redirect_ebpf::OriginalDstReader;
use tokio::net::TcpStream;

use super::server::{Origin, QueryOrigin};

/// The eBPF maps, then `fallback` (`--dns-upstream`) for queries without a record.
#[derive(Debug)]
pub struct EbpfQueryOrigin {
    pub reader: Arc<OriginalDstReader>,
    pub fallback: Option<SocketAddr>,
}

impl QueryOrigin for EbpfQueryOrigin {
    fn udp(&self, client: SocketAddr, local: SocketAddr) -> Option<Origin> {
        // The listener is bound to the pod-facing address, not loopback: no netns cookie in the key.
        match self.reader.original_dst_of_datagram(client, local, 0) {
            Ok(Some(od)) => Some(Origin { resolver: od.addr }),
            Ok(None) => self.fallback.map(|resolver| Origin { resolver }),
            Err(e) => {
                tracing::warn!(%client, "DNS original destination lookup failed: {e}");
                self.fallback.map(|resolver| Origin { resolver })
            }
        }
    }

    fn tcp(&self, stream: &TcpStream) -> Option<Origin> {
        match self.reader.original_dst_of_socket(stream) {
            Ok(Some(od)) => Some(Origin { resolver: od.addr }),
            Ok(None) => self.fallback.map(|resolver| Origin { resolver }),
            Err(e) => {
                tracing::warn!("DNS original destination lookup failed: {e}");
                self.fallback.map(|resolver| Origin { resolver })
            }
        }
    }
}
