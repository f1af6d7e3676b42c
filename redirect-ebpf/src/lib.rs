//! Tollgate's eBPF redirect layer.
//!
//! Owns: the C programs in `bpf/` (cgroup connect/sendmsg/recvmsg/getpeername v4+v6, sockops and a UDP egress tuple
//! recorder on pod cgroups; sockops + getsockopt(SO_ORIGINAL_DST) on the proxy's cgroup; a TC ingress classifier
//! doing `bpf_sk_assign`), the map layouts shared with them (`bpf/lib/maps.h` <-> [`maps`]), and their pins under the pin root.
//!
//! Must not touch: policy decisions (the proxy computes [`L7Redirect`]s from policy-model and hands them over),
//! iptables/routing (the deployment sets up the `fwmark -> local table` rule TC steering needs), and the proxy's
//! sockets (it only reads records about them).

mod cgroup;
pub mod error;
pub mod inspect;
pub mod lookup;
pub mod maps;
pub mod model;
mod netns;
mod pins;
mod privileges;
pub mod redirect;
pub mod socket;

pub use error::RedirectError;
pub use lookup::{FlowKey, OriginalDstReader};
pub use model::{Direction, FourTuple, L7Kind, L7Redirect, OriginalDst, Protocol, ProxyConfig};
pub use redirect::{DEFAULT_PIN_ROOT, EndpointInfo, FqdnDenialRing, Redirect, RedirectOptions};

#[cfg(test)]
mod tests {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}

    /// The proxy keeps the loader behind a lock and shares the reader between accept tasks.
    #[test]
    fn handles_can_cross_threads() {
        send::<crate::Redirect>();
        send_sync::<crate::OriginalDstReader>();
    }
}
