//! [`OriginalDstReader`]: read-only access to the original-destination maps, by pin path, without loading any
//! program. The proxy's accept path uses it (directly or through [`crate::Redirect`]), and so can any other process
//! that needs to know where a redirected flow was going.

use std::os::fd::AsFd;
use std::path::Path;

use aya::maps::{HashMap, MapData, MapError};

use crate::error::RedirectError;
use crate::maps::{MAP_ODST_COOKIE, MAP_ODST_TUPLE, OrigDstValue, TupleKey};
use crate::model::{FourTuple, OriginalDst, Protocol};
use crate::socket;

/// How to find a redirected flow's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowKey {
    /// SO_COOKIE of the client socket or of the proxy's accepted socket.
    Cookie(u64),
    Tuple(FourTuple),
}

pub struct OriginalDstReader {
    by_cookie: HashMap<MapData, u64, OrigDstValue>,
    by_tuple: HashMap<MapData, TupleKey, OrigDstValue>,
}

impl std::fmt::Debug for OriginalDstReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginalDstReader").finish_non_exhaustive()
    }
}

fn open_map(pin_root: &Path, name: &'static str) -> Result<aya::maps::Map, RedirectError> {
    let path = pin_root.join("maps").join(name);
    let data = MapData::from_pin(&path).map_err(|e| {
        RedirectError::Invalid(format!(
            "opening pinned map {}: {e}; is the redirect layer loaded with this pin root?",
            path.display()
        ))
    })?;
    Ok(aya::maps::Map::LruHashMap(data))
}

impl OriginalDstReader {
    pub(crate) fn from_maps(
        by_cookie: HashMap<MapData, u64, OrigDstValue>,
        by_tuple: HashMap<MapData, TupleKey, OrigDstValue>,
    ) -> Self {
        OriginalDstReader {
            by_cookie,
            by_tuple,
        }
    }

    /// Opens the pinned maps under `pin_root` (as created by [`crate::Redirect::load`]).
    pub fn open(pin_root: &Path) -> Result<Self, RedirectError> {
        let cookie = open_map(pin_root, MAP_ODST_COOKIE)?;
        let tuple = open_map(pin_root, MAP_ODST_TUPLE)?;
        Ok(OriginalDstReader {
            by_cookie: HashMap::try_from(cookie).map_err(RedirectError::map(MAP_ODST_COOKIE))?,
            by_tuple: HashMap::try_from(tuple).map_err(RedirectError::map(MAP_ODST_TUPLE))?,
        })
    }

    /// The record of a redirected flow.
    pub fn original_dst(&self, key: FlowKey) -> Result<Option<OriginalDst>, RedirectError> {
        let value = match key {
            FlowKey::Cookie(cookie) => optional(self.by_cookie.get(&cookie, 0), MAP_ODST_COOKIE)?,
            FlowKey::Tuple(tuple) => optional(self.by_tuple.get(&tuple.key()?, 0), MAP_ODST_TUPLE)?,
        };
        Ok(value.as_ref().and_then(OriginalDst::from_value))
    }

    /// The record of the flow an accepted proxy socket carries: by its cookie (re-keyed by sockops on the proxy's
    /// cgroup), else by its 4-tuple (plus its netns cookie, which only counts for loopback).
    pub fn original_dst_of_socket(
        &self,
        fd: impl AsFd,
    ) -> Result<Option<OriginalDst>, RedirectError> {
        let fd = fd.as_fd();
        let io = |what: &str| {
            let what = what.to_string();
            move |source| RedirectError::Io { what, source }
        };
        let cookie = socket::socket_cookie(fd).map_err(io("getsockopt(SO_COOKIE)"))?;
        if let Some(od) = self.original_dst(FlowKey::Cookie(cookie))? {
            return Ok(Some(od));
        }
        let tuple = FourTuple {
            client: socket::peer_addr(fd).map_err(io("getpeername"))?,
            proxy: socket::local_addr(fd).map_err(io("getsockname"))?,
            protocol: Protocol::Tcp,
            netns_cookie: socket::netns_cookie(fd).unwrap_or(0),
        };
        self.original_dst(FlowKey::Tuple(tuple))
    }

    /// The record of a UDP datagram the DNS listener received from `client` on `listener`.
    pub fn original_dst_of_datagram(
        &self,
        client: std::net::SocketAddr,
        listener: std::net::SocketAddr,
        netns_cookie: u64,
    ) -> Result<Option<OriginalDst>, RedirectError> {
        self.original_dst(FlowKey::Tuple(FourTuple {
            client,
            proxy: listener,
            protocol: Protocol::Udp,
            netns_cookie,
        }))
    }
}

pub(crate) fn optional<V>(
    r: Result<V, MapError>,
    map: &'static str,
) -> Result<Option<V>, RedirectError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(RedirectError::map(map)(e)),
    }
}
