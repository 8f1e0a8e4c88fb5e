//! The value words config, model and render share: protocols, ports, rates, modes.
//!
//! A leaf: it imports no other module of the crate, so `config` (which parses them),
//! `model` (which carries them) and `render` (which prints them) all depend on it and
//! not on each other. `config` re-exports every type here.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    Auto,
    Nftables,
    Userspace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Nftables,
    Userspace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    All,
}

impl Protocol {
    /// The transport protocols this choice covers.
    pub fn l4(self) -> &'static [L4] {
        match self {
            Protocol::Tcp => &[L4::Tcp],
            Protocol::Udp => &[L4::Udp],
            Protocol::All => &[L4::Tcp, L4::Udp],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    pub fn as_str(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        }
    }
}

/// An inclusive port range; a single port is `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// The number of ports: never zero, since validation ensures `first <= last`.
    #[allow(clippy::len_without_is_empty)] // a range is never empty
    pub fn len(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    pub fn overlaps(self, other: PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    pub fn contains(self, other: PortRange) -> bool {
        self.first <= other.first && other.last <= self.last
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Forward,
    Block,
    Redirect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    None,
    Source,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum TargetPort {
    /// Always this port.
    Fixed { port: u16 },
    /// The port the packet was sent to.
    Preserve,
    /// `first-last`, mapped 1:1 from the route's one matched range.
    Range { first: u16, last: u16 },
}

/// `N/unit [burst M]` for new connections per source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rate {
    pub count: u64,
    pub unit: TimeUnit,
    pub burst: u64,
}

/// `N bytes|kbytes|mbytes/unit`, burst one unit's worth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ByteRate {
    pub amount: u64,
    pub size: SizeUnit,
    pub unit: TimeUnit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    Second,
    Minute,
    Hour,
    Day,
}

impl TimeUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeUnit::Second => "second",
            TimeUnit::Minute => "minute",
            TimeUnit::Hour => "hour",
            TimeUnit::Day => "day",
        }
    }

    pub fn seconds(self) -> u64 {
        match self {
            TimeUnit::Second => 1,
            TimeUnit::Minute => 60,
            TimeUnit::Hour => 3600,
            TimeUnit::Day => 86_400,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SizeUnit {
    Bytes,
    Kbytes,
    Mbytes,
}

impl SizeUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            SizeUnit::Bytes => "bytes",
            SizeUnit::Kbytes => "kbytes",
            SizeUnit::Mbytes => "mbytes",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Passthrough,
    Terminate,
    TerminateAndReencrypt,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tls {
    pub mode: TlsMode,
    /// Absolute or relative-to-cwd paths, resolved against the route file's folder.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// terminate-and-reencrypt: verify targets against this CA file instead of the
    /// system's roots.
    pub ca: Option<PathBuf>,
    /// terminate-and-reencrypt: do not verify targets (logged loudly on every load).
    pub insecure_skip_verify: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Redirect {
    pub to: String,
    pub status: u16,
}

/// An address family, as nft spells it in object names (`4`, `6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}
