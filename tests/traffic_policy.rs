//! The policy behaviours of SPEC §4, proven with real packets from the client namespace
//! through the gateway running smartproxy to a backend, over IPv4 and IPv6: block and
//! allow lists, `rate_limit`, `max_connections`, `max_rate` (UDP and TCP), `priority`
//! (DSCP), `use_advanced_nat` (random source ports) and `log` (nflog group).

mod common;
mod policy_helpers;

use std::time::{Duration, Instant};

use common::topo::{Server, Topology};
use policy_helpers::{
    add_second_client, connect, is_reset, use_client_address, warm_up, CLIENT4_B, CLIENT6_B,
    CONNECT_TIMEOUT,
};

const GW4_80: &str = "192.0.2.1:80";
const GW6_80: &str = "[2001:db8:c::1]:80";

/// A TCP route on port 80 to backend1:9090 in both families, with extra TOML appended to
/// `[routes.action]` (`security`, `nftables` tables follow it).
fn web_route(extra: &str) -> String {
    format!(
        r#"
[[routes]]
name = "web"
[routes.match]
ports = 80
[routes.action]
targets = [{{ host = "198.51.100.2", port = 9090 }}, {{ host = "2001:db8:b1::2", port = 9090 }}]
{extra}
"#
    )
}

fn backends(t: &Topology) -> (Server, Server) {
    (
        Server::start(&t.b1, "b1", "198.51.100.2:9090"),
        Server::start(&t.b1, "b1v6", "[2001:db8:b1::2]:9090"),
    )
}

/// Asserts that a connection to `to` is answered by a reset, quickly.
fn assert_refused(ns: &common::Netns, to: &str, what: &str) {
    let start = Instant::now();
    match connect(ns, to, CONNECT_TIMEOUT) {
        Ok(c) => panic!("{what}: admitted ({})", c.greeting),
        Err(e) => assert!(
            is_reset(&e),
            "{what}: refused by a TCP reset, got {e} after {:?}",
            start.elapsed()
        ),
    }
}

fn greeting(ns: &common::Netns, to: &str, what: &str) -> String {
    connect(ns, to, CONNECT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .greeting
}

#[test]
fn block_list_refuses_its_members_with_a_reset() {
    if !common::netns_available("block_list_refuses_its_members_with_a_reset") {
        return;
    }
    let t = Topology::new("pbl");
    let _s = backends(&t);
    warm_up(&t);
    add_second_client(&t.client);
    t.apply(&web_route(
        r#"
[routes.action.security]
ip_block_list = ["192.0.2.66", "2001:db8:c::66"]
[routes.action.nftables]
preserve_source_ip = true
"#,
    ));
    let v4 = greeting(&t.client, GW4_80, "v4 from an unlisted address");
    assert!(v4.starts_with("b1 192.0.2.2 "), "{v4}");
    let v6 = greeting(&t.client, GW6_80, "v6 from an unlisted address");
    assert!(v6.starts_with("b1v6 2001:db8:c::2 "), "{v6}");

    use_client_address(&t.client, CLIENT4_B, CLIENT6_B);
    assert_refused(&t.client, GW4_80, "v4 from the blocked 192.0.2.66");
    assert_refused(&t.client, GW6_80, "v6 from the blocked 2001:db8:c::66");
}

#[test]
fn allow_list_admits_only_its_members() {
    if !common::netns_available("allow_list_admits_only_its_members") {
        return;
    }
    let t = Topology::new("pal");
    let _s = backends(&t);
    warm_up(&t);
    add_second_client(&t.client);
    t.apply(&web_route(
        r#"
[routes.action.security]
ip_allow_list = ["192.0.2.64/30", "2001:db8:c::66"]
[routes.action.nftables]
preserve_source_ip = true
"#,
    ));
    assert_refused(
        &t.client,
        GW4_80,
        "v4 from 192.0.2.2, not on the allow list",
    );
    assert_refused(
        &t.client,
        GW6_80,
        "v6 from 2001:db8:c::2, not on the allow list",
    );

    use_client_address(&t.client, CLIENT4_B, CLIENT6_B);
    let v4 = greeting(&t.client, GW4_80, "v4 from the allowed 192.0.2.66");
    assert!(v4.starts_with(&format!("b1 {CLIENT4_B} ")), "{v4}");
    let v6 = greeting(&t.client, GW6_80, "v6 from the allowed 2001:db8:c::66");
    assert!(v6.starts_with(&format!("b1v6 {CLIENT6_B} ")), "{v6}");
}

#[test]
fn rate_limit_refuses_new_connections_beyond_the_burst() {
    if !common::netns_available("rate_limit_refuses_new_connections_beyond_the_burst") {
        return;
    }
    let t = Topology::new("prl");
    let _s = backends(&t);
    warm_up(&t);
    let (rate, burst) = (2.0, 3u32);
    t.apply(&web_route(
        r#"
[routes.action.security]
rate_limit = "2/second burst 3"
"#,
    ));
    for to in [GW4_80, GW6_80] {
        let attempts = 12;
        let start = Instant::now();
        let mut admitted = 0u32;
        let mut errors = Vec::new();
        for _ in 0..attempts {
            match connect(&t.client, to, CONNECT_TIMEOUT) {
                Ok(_) => admitted += 1,
                Err(e) => {
                    assert!(is_reset(&e), "{to}: excess refused by a reset, got {e}");
                    errors.push(e.kind());
                }
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        let most = f64::from(burst) + rate * elapsed + 1.0;
        eprintln!("{to}: {admitted}/{attempts} admitted in {elapsed:.3} s (at most {most:.1})");
        assert!(
            admitted >= burst && f64::from(admitted) <= most,
            "{to}: {admitted} of {attempts} admitted in {elapsed:.3} s; \
             expected between {burst} and {most:.1}"
        );
    }
}

#[test]
fn max_connections_refuses_the_connection_over_the_limit() {
    if !common::netns_available("max_connections_refuses_the_connection_over_the_limit") {
        return;
    }
    let t = Topology::new("pmc");
    let _s = backends(&t);
    warm_up(&t);
    let max = 3;
    t.apply(&web_route(
        r#"
[routes.action.security]
max_connections = 3
"#,
    ));
    for to in [GW4_80, GW6_80] {
        let held: Vec<_> = (0..max)
            .map(|i| {
                connect(&t.client, to, CONNECT_TIMEOUT)
                    .unwrap_or_else(|e| panic!("{to}: connection {} of {max}: {e}", i + 1))
            })
            .collect();
        assert_refused(&t.client, to, &format!("{to}: connection {}", max + 1));
        // Closing one makes room again (closed connections leave the count).
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(3);
        let reopened = loop {
            match connect(&t.client, to, CONNECT_TIMEOUT) {
                Ok(c) => break Ok(c),
                Err(e) if Instant::now() >= deadline => break Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        assert!(
            reopened.is_ok(),
            "{to}: admitted again after closing: {reopened:?}"
        );
    }
}
