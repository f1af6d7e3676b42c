//! Tollgate's node proxy: the `tollgate` daemon and CLI.
//!
//! This crate wires the pieces together: transparent listeners, protocol handlers, the flow log and policy sources.
//! Policy decisions themselves live in `policy-model` (pure); this crate only carries them out on real sockets.

pub mod policy_cli;
