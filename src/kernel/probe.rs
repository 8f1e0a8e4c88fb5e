//! Whether this process may change nftables in its network namespace: `nft` is installed
//! (found in `PATH`) and the process holds CAP_NET_ADMIN (bit 12 of `CapEff` in
//! `/proc/self/status`). Reads only the file system and `/proc`; runs nothing.

use std::path::Path;

/// CAP_NET_ADMIN's bit in the capability sets.
const CAP_NET_ADMIN: u32 = 12;

/// `Ok` when `nft` is on `PATH` and this process holds CAP_NET_ADMIN; else why not.
pub fn capability() -> Result<(), String> {
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| is_executable(&dir.join("nft")))
    });
    if !on_path {
        return Err("`nft` is not installed (not found in PATH)".into());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !has_net_admin(&status) {
        return Err("this process lacks CAP_NET_ADMIN in its network namespace".into());
    }
    Ok(())
}

/// Whether the `CapEff:` line of a `/proc/PID/status` text has CAP_NET_ADMIN.
fn has_net_admin(status: &str) -> bool {
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    effective & (1 << CAP_NET_ADMIN) != 0
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_net_admin_is_bit_12_of_the_effective_set() {
        let status = |eff: &str| format!("Name:\tx\nCapPrm:\t000001ffffffffff\nCapEff:\t{eff}\n");
        assert!(has_net_admin(&status("000001ffffffffff")));
        assert!(has_net_admin(&status("0000000000001000")));
        assert!(!has_net_admin(&status("0000000000000fff")));
        assert!(!has_net_admin(&status("0000000000002000")));
        assert!(!has_net_admin("CapPrm:\t0000000000001000\n"));
        assert!(!has_net_admin("CapEff:\tnot hex\n"));
    }

    #[test]
    fn the_answer_matches_this_process() {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc");
        let nft_found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| is_executable(&d.join("nft"))));
        match capability() {
            Ok(()) => assert!(nft_found && has_net_admin(&status)),
            Err(why) if !nft_found => assert!(why.contains("not installed"), "{why}"),
            Err(why) => {
                assert!(!has_net_admin(&status));
                assert!(why.contains("CAP_NET_ADMIN"), "{why}");
            }
        }
    }
}
