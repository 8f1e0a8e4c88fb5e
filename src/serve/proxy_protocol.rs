//! PROXY protocol v2 (the binary form HAProxy defined): the header serve sends to targets
//! with `send_proxy_protocol`, and reads from the peers listed in `accept_proxy_protocol`.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::policy::canonical;

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY (0x21) or LOCAL (0x20).
const PROXY: u8 = 0x21;
const LOCAL: u8 = 0x20;
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;
/// Longer headers (TLVs) are refused.
const MAX_PAYLOAD: usize = 1024;

/// The header announcing a connection from `source` to `destination`.
pub fn header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (src, dst) = (canonical(source.ip()), canonical(destination.ip()));
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&SIGNATURE);
    out.push(PROXY);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(TCP4);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(TCP6);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Reads a header: the (source, destination) it announces, or `None` for LOCAL. Reads
/// exactly the header's bytes, so what follows is the client's.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<(SocketAddr, SocketAddr)>> {
    let mut head = [0u8; 16];
    r.read_exact(&mut head).await?;
    if head[..12] != SIGNATURE {
        return Err(bad("not a PROXY protocol v2 header"));
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > MAX_PAYLOAD {
        return Err(bad("PROXY protocol header too long"));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    match head[12] {
        LOCAL => return Ok(None),
        PROXY => {}
        _ => return Err(bad("unknown PROXY protocol version or command")),
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match head[13] {
        TCP4 if len >= 12 => {
            let ip = |b: &[u8]| IpAddr::from([b[0], b[1], b[2], b[3]]);
            Ok(Some((
                SocketAddr::new(ip(&payload[0..4]), port(&payload[8..10])),
                SocketAddr::new(ip(&payload[4..8]), port(&payload[10..12])),
            )))
        }
        TCP6 if len >= 36 => {
            let ip = |b: &[u8]| {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                canonical(IpAddr::from(a))
            };
            Ok(Some((
                SocketAddr::new(ip(&payload[0..16]), port(&payload[32..34])),
                SocketAddr::new(ip(&payload[16..32]), port(&payload[34..36])),
            )))
        }
        _ => Err(bad("PROXY protocol header for an unsupported family")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_now(bytes: &[u8]) -> io::Result<Option<(SocketAddr, SocketAddr)>> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(read(&mut &bytes[..]))
    }

    #[test]
    fn headers_round_trip_in_both_families() {
        for (s, d) in [
            ("192.0.2.7:4000", "198.51.100.1:443"),
            ("[2001:db8::7]:4000", "[2001:db8::1]:443"),
        ] {
            let (s, d): (SocketAddr, SocketAddr) = (s.parse().expect("s"), d.parse().expect("d"));
            assert_eq!(read_now(&header(s, d)).expect("reads"), Some((s, d)));
        }
    }

    #[test]
    fn garbage_short_and_local_headers() {
        assert!(read_now(b"GET / HTTP/1.1\r\n\r\n").is_err());
        let h = header(
            "192.0.2.7:1".parse().expect("s"),
            "192.0.2.8:2".parse().expect("d"),
        );
        for cut in 0..h.len() {
            assert!(read_now(&h[..cut]).is_err(), "cut at {cut}");
        }
        let mut local = h.clone();
        local[12] = LOCAL;
        assert_eq!(read_now(&local).expect("local"), None);
        let mut long = h;
        long[14] = 0xff;
        assert!(read_now(&long).is_err());
    }
}
