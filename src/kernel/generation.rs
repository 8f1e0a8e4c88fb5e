//! The nftables ruleset generation of this network namespace (`NFT_MSG_GETGEN`).
//!
//! The kernel increments it on every committed nftables transaction in the namespace, by
//! any program (nft, iptables-nft, firewalld, …), and on nothing else: packets filling
//! dynamic sets or counters do not change it. Plan uses it to know, without listing a
//! table of 10,000 routes, that nothing was committed since smartproxy's own last apply.

use std::io;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETGEN: u16 = 16;
const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_GEN_ID: u16 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HEADER: usize = 16;
const NFGENMSG: usize = 4;

/// The current generation, read from the kernel.
pub fn current() -> io::Result<u32> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&request(1), 0)?;
    let mut reply = Vec::with_capacity(4096);
    socket.recv(&mut reply, 0)?;
    parse_reply(&reply)
}

/// `nlmsghdr` + `nfgenmsg` asking for the generation.
fn request(seq: u32) -> Vec<u8> {
    let len = u32::try_from(NLMSG_HEADER + NFGENMSG).unwrap_or(20);
    let mut msg = Vec::with_capacity(NLMSG_HEADER + NFGENMSG);
    msg.extend(len.to_ne_bytes());
    msg.extend(((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    msg.extend(NLM_F_REQUEST.to_ne_bytes());
    msg.extend(seq.to_ne_bytes());
    msg.extend(0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.extend([0u8, 0u8]); // AF_UNSPEC, NFNETLINK_V0
    msg.extend(0u16.to_be_bytes()); // resource id
    msg
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("NFT_MSG_GETGEN: {what}"),
    )
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The generation id of a `NFT_MSG_NEWGEN` reply (or the error the kernel sent instead).
fn parse_reply(b: &[u8]) -> io::Result<u32> {
    let kind = u16_at(b, 4).ok_or_else(|| malformed("short reply"))?;
    if kind == NLMSG_ERROR {
        let code = b
            .get(NLMSG_HEADER..NLMSG_HEADER + 4)
            .and_then(|c| c.try_into().ok())
            .map(i32::from_ne_bytes)
            .ok_or_else(|| malformed("short error"))?;
        return Err(io::Error::from_raw_os_error(-code));
    }
    if kind != ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN) {
        return Err(malformed(&format!("unexpected message type {kind:#x}")));
    }
    let end = u32::from_ne_bytes(
        b.get(0..4)
            .and_then(|l| l.try_into().ok())
            .ok_or_else(|| malformed("short reply"))?,
    );
    let end = usize::try_from(end).unwrap_or(0).min(b.len());
    let mut at = NLMSG_HEADER + NFGENMSG;
    while at + 4 <= end {
        let len = usize::from(u16_at(b, at).ok_or_else(|| malformed("attribute"))?);
        let kind = u16_at(b, at + 2).ok_or_else(|| malformed("attribute"))? & 0x3fff;
        if len < 4 {
            break;
        }
        if kind == NFTA_GEN_ID {
            let id = b
                .get(at + 4..at + 8)
                .and_then(|v| v.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| malformed("short generation id"))?;
            return Ok(id);
        }
        at += len.div_ceil(4) * 4;
    }
    Err(malformed("no generation id in the reply"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(attrs: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        let len = u32::try_from(NLMSG_HEADER + NFGENMSG + attrs.len()).expect("small");
        b.extend(len.to_ne_bytes());
        b.extend(((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN).to_ne_bytes());
        b.extend([0u8; 10]);
        b.extend([0u8; 4]);
        b.extend(attrs);
        b
    }

    #[test]
    fn the_generation_id_is_read_from_its_attribute() {
        let mut attrs = Vec::new();
        // NFTA_GEN_PROC_PID first, then NFTA_GEN_ID.
        attrs.extend(8u16.to_ne_bytes());
        attrs.extend(2u16.to_ne_bytes());
        attrs.extend(77u32.to_be_bytes());
        attrs.extend(8u16.to_ne_bytes());
        attrs.extend(NFTA_GEN_ID.to_ne_bytes());
        attrs.extend(0x0102_0304u32.to_be_bytes());
        assert_eq!(parse_reply(&reply(&attrs)).expect("parses"), 0x0102_0304);
    }

    #[test]
    fn errors_and_garbage_are_errors_not_panics() {
        let mut err = Vec::new();
        err.extend(36u32.to_ne_bytes());
        err.extend(NLMSG_ERROR.to_ne_bytes());
        err.extend([0u8; 10]);
        err.extend((-1i32).to_ne_bytes());
        assert_eq!(
            parse_reply(&err).map_err(|e| e.raw_os_error()),
            Err(Some(1))
        );
        for cut in 0..12 {
            assert!(parse_reply(&reply(&[1, 2, 3])[..cut]).is_err());
        }
        assert!(parse_reply(&reply(&[])).is_err());
        assert!(parse_reply(&reply(&[0, 0, 1, 0, 9, 9, 9, 9])).is_err());
    }
}
