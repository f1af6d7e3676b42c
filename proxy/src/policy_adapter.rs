//! The one place this crate touches policy-model's API: re-exports plus the small helpers the proxy needs on top
//! of it (is a reason a deny rule? which traffic direction decided?).
//!
//! TEMPORARY STAND-INS: policy-model's API is being written in parallel; until it lands, the contract's names are
//! mirrored here so the proxy compiles and its pure parts can be tested. Replaced by re-exports once it lands.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use crate::flow::TrafficDirection;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity(pub u32);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ip: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    pub document: usize,
    pub field_path: String,
    pub reason: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: document {}: {}: {}",
            self.file, self.document, self.field_path, self.reason
        )
    }
}

#[derive(Debug, Default)]
pub struct EndpointTable {
    eps: Vec<Endpoint>,
}

impl EndpointTable {
    pub fn from_yaml(_file: &str, _yaml: &str) -> Result<Self, PolicyError> {
        Ok(EndpointTable::default())
    }
    pub fn by_ip(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.eps.iter().find(|e| e.ip == ip)
    }
    pub fn identity_of_ip(&self, _ip: IpAddr) -> Identity {
        Identity(2)
    }
}

#[derive(Debug, Default)]
pub struct FqdnCache {}

#[derive(Debug)]
pub struct Policy;

#[derive(Debug)]
pub struct PolicyLoad {
    pub policies: Vec<Policy>,
    pub errors: Vec<PolicyError>,
}

pub fn load_policies(_file: &str, _yaml: &str) -> PolicyLoad {
    PolicyLoad {
        policies: Vec::new(),
        errors: Vec::new(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L7Kind {
    Http,
    Kafka,
    Dns,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(pub String);

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderAction {
    Add { name: String, value: String },
    Delete { name: String },
    Replace { name: String, value: String },
    Log { name: String },
}

#[derive(Debug)]
pub struct Flow;

#[derive(Debug)]
pub struct ConnectionVerdict {
    pub decision: Decision,
    pub l7: Option<L7Kind>,
    pub reason: Reason,
}

#[derive(Debug)]
pub struct RequestVerdict {
    pub decision: Decision,
    pub reason: Reason,
    pub header_actions: Vec<HeaderAction>,
}

#[derive(Debug)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
}

#[derive(Debug)]
pub struct PolicyEngine;

impl PolicyEngine {
    pub fn compile(_p: Vec<Policy>, _e: &EndpointTable) -> (PolicyEngine, Vec<PolicyError>) {
        (PolicyEngine, Vec::new())
    }
    pub fn flow(&self, _s: IpAddr, _d: IpAddr, _port: u16, _p: Protocol) -> Flow {
        Flow
    }
    pub fn connection(&self, _f: &Flow, _c: &FqdnCache, _now: SystemTime) -> ConnectionVerdict {
        ConnectionVerdict {
            decision: Decision::Deny,
            l7: None,
            reason: Reason("stand-in".into()),
        }
    }
    pub fn http(&self, _f: &Flow, _r: &HttpRequest<'_>) -> RequestVerdict {
        RequestVerdict {
            decision: Decision::Deny,
            reason: Reason("stand-in".into()),
            header_actions: Vec::new(),
        }
    }
}

/// Whether the reason names a deny rule (`ingressDeny`/`egressDeny`), as opposed to "nothing allowed it".
pub fn is_deny_rule(_reason: &Reason) -> bool {
    false
}

/// The traffic direction whose policy decided.
pub fn direction(_reason: &Reason) -> Option<TrafficDirection> {
    None
}
