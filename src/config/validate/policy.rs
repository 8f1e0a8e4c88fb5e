//! `[routes.action.security]` (allow and block lists, connection and rate limits),
//! `[routes.action.nftables]` (byte rates, priority) and the address lists of
//! `[routes.action.userspace]`.

use std::net::IpAddr;

use ipnet::IpNet;

use super::out_of_range;
use crate::config::parse::{RawNftables, RawSecurity};
use crate::config::{ByteRate, NftOptions, Rate, Security, SizeUnit, TimeUnit};
use crate::diag::{Diagnostic, Sp};

pub(super) fn security(s: &RawSecurity, diags: &mut Vec<Diagnostic>) -> Security {
    let allow = s
        .ip_allow_list
        .as_deref()
        .map(|l| ip_list(l, "ip_allow_list", diags))
        .unwrap_or_default();
    let block = s
        .ip_block_list
        .as_deref()
        .map(|l| ip_list(l, "ip_block_list", diags))
        .unwrap_or_default();
    let max_connections = s
        .max_connections
        .as_ref()
        .and_then(|m| match u32::try_from(m.value) {
            Ok(v @ 1..=1_000_000) => Some(v),
            _ => {
                diags.push(out_of_range(m.span, "max_connections", 1, 1_000_000));
                None
            }
        });
    let rate_limit = s.rate_limit.as_ref().and_then(|r| rate(r, diags));
    Security {
        allow_set: !allow.is_empty(),
        allow,
        block,
        max_connections,
        rate_limit,
    }
}

/// Parses a list of addresses and CIDRs, normalises host bits (with a warning) and merges
/// overlapping entries (with a warning): nft interval sets refuse overlaps.
pub(super) fn ip_list(list: &[Sp<String>], what: &str, diags: &mut Vec<Diagnostic>) -> Vec<IpNet> {
    let mut nets: Vec<Sp<IpNet>> = Vec::with_capacity(list.len());
    let mut host_bits: Vec<Diagnostic> = Vec::new();
    let mut overlaps: Vec<Diagnostic> = Vec::new();
    for entry in list {
        let text = entry.value.trim();
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => {
                let trunc = net.trunc();
                if trunc != net {
                    host_bits.push(
                        Diagnostic::warning(
                            "W003",
                            entry.span,
                            format!("`{net}` has host bits set; using `{trunc}`"),
                        )
                        .label("host bits set")
                        .help(format!("write \"{trunc}\"")),
                    );
                }
                nets.push(Sp::new(trunc, entry.span));
            }
            Err(_) => diags.push(
                Diagnostic::error(
                    "E017",
                    entry.span,
                    format!("invalid address or CIDR `{}` in `{what}`", entry.value),
                )
                .label("not an address or CIDR")
                .help(
                    "use an address (\"192.0.2.7\", \"2001:db8::7\") or a CIDR (\"192.0.2.0/24\")",
                ),
            ),
        }
    }
    // Sorted by network start, widest first: an entry overlaps the previous widest one iff
    // it starts inside it.
    let mut order: Vec<&Sp<IpNet>> = nets.iter().collect();
    order.sort_by(|a, b| {
        (
            matches!(a.value, IpNet::V6(_)),
            a.value.network(),
            a.value.prefix_len(),
        )
            .cmp(&(
                matches!(b.value, IpNet::V6(_)),
                b.value.network(),
                b.value.prefix_len(),
            ))
    });
    let mut cover: Option<&Sp<IpNet>> = None;
    for net in order {
        match cover {
            Some(c) if c.value.contains(&net.value.network()) => {
                overlaps.push(
                    Diagnostic::warning(
                        "W001",
                        net.span,
                        format!("`{}` overlaps `{}` in `{what}`; merged", net.value, c.value),
                    )
                    .label("overlaps another entry")
                    .also(c.span, "this entry covers it")
                    .help("remove the narrower entry"),
                );
            }
            _ => cover = Some(net),
        }
    }
    overlaps.sort_by_key(|d| d.primary.span);
    summarised(host_bits, "with host bits set", what, diags);
    summarised(overlaps, "overlapping others", what, diags);
    IpNet::aggregate(&nets.iter().map(|n| n.value).collect())
}

/// Warnings of one kind on one list: the first as it is, the others only counted in it
/// (5,000 duplicate entries give one warning, not 5,000 quotes of the line).
fn summarised(found: Vec<Diagnostic>, kind: &str, what: &str, diags: &mut Vec<Diagnostic>) {
    let more = found.len().saturating_sub(1);
    let Some(mut first) = found.into_iter().next() else {
        return;
    };
    if more > 0 {
        let s = if more == 1 { "y" } else { "ies" };
        first.message = format!(
            "{} (and {more} more entr{s} {kind} in this `{what}`)",
            first.message
        );
    }
    diags.push(first);
}

/// `20/second` or `20/second burst 40` (burst default 5).
fn rate(r: &Sp<String>, diags: &mut Vec<Diagnostic>) -> Option<Rate> {
    let parsed = (|| {
        let mut words = r.value.split_whitespace();
        let (count, unit) = words.next()?.split_once('/')?;
        let count: u64 = count.parse().ok().filter(|c| *c >= 1)?;
        let unit = time_unit(unit)?;
        let burst = match (words.next(), words.next(), words.next()) {
            (None, _, _) => 5,
            (Some("burst"), Some(b), None) => b.parse().ok().filter(|b| *b >= 1)?,
            _ => return None,
        };
        Some(Rate { count, unit, burst })
    })();
    match parsed {
        None => diags.push(
            Diagnostic::error("E018", r.span, format!("invalid rate `{}`", r.value))
                .label("expected `N/unit` or `N/unit burst M`")
                .help("write e.g. \"20/second\" or \"20/second burst 40\" (units: second, minute, hour, day)"),
        ),
        Some(rate) if rate.count > NFT_MAX || rate.burst > NFT_MAX => {
            diags.push(
                Diagnostic::error("E018", r.span, format!("rate `{}` is too large", r.value))
                    .label("more than nftables can count")
                    .help(format!("nftables holds a rate and its burst in 32 bits: at most {NFT_MAX} each")),
            );
            return None;
        }
        Some(_) => {}
    }
    parsed
}

/// The largest count or burst that an nftables `limit` holds (32 bits).
const NFT_MAX: u64 = u32::MAX as u64;

fn time_unit(s: &str) -> Option<TimeUnit> {
    match s {
        "second" => Some(TimeUnit::Second),
        "minute" => Some(TimeUnit::Minute),
        "hour" => Some(TimeUnit::Hour),
        "day" => Some(TimeUnit::Day),
        _ => None,
    }
}

/// `10 mbytes/second` (units bytes, kbytes, mbytes).
fn byte_rate(r: &Sp<String>, diags: &mut Vec<Diagnostic>) -> Option<ByteRate> {
    let parsed = (|| {
        let text = r.value.trim();
        let split = text.find(|c: char| !c.is_ascii_digit())?;
        let amount: u64 = text[..split].parse().ok().filter(|a| *a >= 1)?;
        let (size, unit) = text[split..].trim().split_once('/')?;
        let size = match size.trim() {
            "bytes" => SizeUnit::Bytes,
            "kbytes" => SizeUnit::Kbytes,
            "mbytes" => SizeUnit::Mbytes,
            _ => return None,
        };
        Some(ByteRate {
            amount,
            size,
            unit: time_unit(unit.trim())?,
        })
    })();
    let Some(rate) = parsed else {
        diags.push(
            Diagnostic::error("E018", r.span, format!("invalid byte rate `{}`", r.value))
                .label("expected `N bytes|kbytes|mbytes/unit`")
                .help("write e.g. \"10 mbytes/second\""),
        );
        return None;
    };
    // The kernel's byte bucket holds one second's worth; nft keeps it in 32 bits.
    let unit_bytes: u64 = match rate.size {
        SizeUnit::Bytes => 1,
        SizeUnit::Kbytes => 1024,
        SizeUnit::Mbytes => 1024 * 1024,
    };
    let burst = rate
        .amount
        .checked_mul(unit_bytes)
        .map(|b| b / rate.unit.seconds());
    let too_large = if rate.amount > NFT_MAX {
        Some("more than nftables can count")
    } else if burst.is_none_or(|b| b > NFT_MAX) {
        Some("one second's worth exceeds 4 GiB")
    } else {
        None
    };
    if let Some(why) = too_large {
        diags.push(
            Diagnostic::error(
                "E018",
                r.span,
                format!("byte rate `{}` is too large", r.value),
            )
            .label(why)
            .help(format!("nftables holds the amount and the byte bucket (one second's worth) in 32 bits: at most {NFT_MAX} and 4095 mbytes/second")),
        );
        return None;
    }
    Some(rate)
}

pub(super) fn nft_options(n: &RawNftables, diags: &mut Vec<Diagnostic>) -> NftOptions {
    let priority = n
        .priority
        .as_ref()
        .and_then(|p| match u8::try_from(p.value) {
            Ok(v @ 0..=7) => Some(v),
            _ => {
                diags.push(out_of_range(p.span, "priority", 0, 7));
                None
            }
        });
    NftOptions {
        preserve_source_ip: n.preserve_source_ip.as_ref().is_some_and(|b| b.value),
        max_rate: n.max_rate.as_ref().and_then(|r| byte_rate(r, diags)),
        priority,
        use_ip_sets: n.use_ip_sets.as_ref().is_none_or(|b| b.value),
        use_advanced_nat: n.use_advanced_nat.as_ref().is_some_and(|b| b.value),
    }
}
