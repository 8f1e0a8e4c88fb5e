//! The topology itself works: a kernel route carries a TCP connection from the client
//! through the gateway to a backend, over IPv4 and IPv6.

mod common;

use std::time::Duration;

use common::topo::{self, Server, Topology};

#[test]
fn a_kernel_route_carries_tcp_over_ipv4_and_ipv6() {
    if !common::netns_available("a_kernel_route_carries_tcp_over_ipv4_and_ipv6") {
        return;
    }
    let t = Topology::new("smk");
    let _s4 = Server::start(&t.b1, "b1", "198.51.100.2:9090");
    let _s6 = Server::start(&t.b1, "b1v6", "[2001:db8:b1::2]:9090");
    t.apply(
        r#"
[[routes]]
name = "web"
[routes.match]
ports = 80
[routes.action]
targets = [{ host = "198.51.100.2", port = 9090 }, { host = "2001:db8:b1::2", port = 9090 }]
"#,
    );
    let v4 = topo::hello(&t.client, "192.0.2.1:80", Duration::from_secs(3)).expect("v4 connects");
    assert!(
        v4.starts_with("b1 198.51.100.1 "),
        "masqueraded to the gateway: {v4}"
    );
    let v6 =
        topo::hello(&t.client, "[2001:db8:c::1]:80", Duration::from_secs(3)).expect("v6 connects");
    assert!(
        v6.starts_with("b1v6 2001:db8:b1::1 "),
        "masqueraded to the gateway: {v6}"
    );
}
