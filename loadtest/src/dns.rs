//! DNS query load: one A query per request over UDP, `authority` as the name. Encoding and answer checking are
//! pure; [`DnsConn`] does the socket work. A query counts as successful when an answer with the same ID, the
//! response bit set and RCODE 0 (NOERROR) arrives within the timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

/// How long one query may wait for its answer before it counts as an error.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A standard recursive query for `name` type A class IN. Labels longer than 63 bytes are truncated (the load
/// target name is the user's choice; an invalid name should still produce a well-formed packet).
pub fn encode_query(id: u16, name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(18 + name.len());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00]); // RD
    p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QDCOUNT 1
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        let l = &label.as_bytes()[..label.len().min(63)];
        p.push(l.len() as u8);
        p.extend_from_slice(l);
    }
    p.push(0);
    p.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    p
}

/// What an incoming datagram means for the outstanding query `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Not a response to this query (stale ID from a timed-out query, or not a response at all): keep waiting.
    Unrelated,
    Ok,
    /// The server answered with this RCODE (NXDOMAIN = 3, REFUSED = 5, ...).
    Failed(u8),
}

pub fn check_answer(id: u16, packet: &[u8]) -> Answer {
    if packet.len() < 12
        || u16::from_be_bytes([packet[0], packet[1]]) != id
        || packet[2] & 0x80 == 0
    {
        return Answer::Unrelated;
    }
    match packet[3] & 0x0f {
        0 => Answer::Ok,
        rcode => Answer::Failed(rcode),
    }
}

/// A UDP "connection" sending one query at a time.
#[derive(Debug)]
pub struct DnsConn {
    sock: UdpSocket,
    name: String,
    next_id: u16,
}

impl DnsConn {
    pub async fn open(addr: SocketAddr, name: &str) -> std::io::Result<Self> {
        let local: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .expect("literal");
        let sock = UdpSocket::bind(local).await?;
        sock.connect(addr).await?;
        Ok(Self {
            sock,
            name: name.to_string(),
            next_id: 1,
        })
    }

    pub async fn query(&mut self) -> bool {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        if self.sock.send(&encode_query(id, &self.name)).await.is_err() {
            return false;
        }
        let mut buf = [0u8; 1500];
        let wait = async {
            loop {
                let Ok(n) = self.sock.recv(&mut buf).await else {
                    return false;
                };
                match check_answer(id, &buf[..n]) {
                    Answer::Unrelated => continue,
                    Answer::Ok => return true,
                    Answer::Failed(_) => return false,
                }
            }
        };
        tokio::time::timeout(QUERY_TIMEOUT, wait)
            .await
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_wire_format() {
        let q = encode_query(0x1234, "a.bc.");
        assert_eq!(
            q,
            vec![
                0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 2, b'b', b'c', 0, 0, 1, 0, 1
            ]
        );
    }

    #[test]
    fn answers_are_matched_by_id_and_rcode() {
        let mut r = encode_query(7, "x");
        r[2] |= 0x80;
        assert_eq!(check_answer(7, &r), Answer::Ok);
        assert_eq!(check_answer(8, &r), Answer::Unrelated);
        r[3] = 0x83;
        assert_eq!(check_answer(7, &r), Answer::Failed(3));
        // The query itself (QR clear) is not an answer.
        assert_eq!(check_answer(7, &encode_query(7, "x")), Answer::Unrelated);
        assert_eq!(check_answer(7, &[0; 5]), Answer::Unrelated);
    }
}
