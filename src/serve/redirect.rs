//! Redirect routes: read an HTTP/1.x request head (up to [`REQUEST_HEAD_MAX`] bytes within
//! 10 s) and answer with the route's status and `Location`, built from its `to` template
//! (`{host}`, `{path}`, `{port}`).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::model::UserspaceRoute;

/// The largest HTTP request head a redirect route reads.
const REQUEST_HEAD_MAX: usize = 16 * 1024;

/// How long a client has to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers an HTTP/1.x request with the route's redirect; `head` holds what was read of
/// the request already (a listener that looked for a ClientHello).
pub(crate) async fn redirect<S: AsyncRead + AsyncWrite + Unpin>(
    route: &UserspaceRoute,
    mut stream: S,
    local: SocketAddr,
    mut head: Vec<u8>,
) -> io::Result<()> {
    let Some(target) = &route.redirect else {
        return Err(io::Error::other(
            "redirect route without `[routes.action.redirect]`",
        ));
    };
    let read = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream, &mut head)).await;
    match read {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request within 10 s",
            ))
        }
    }
    let answer = answer(&target.to, target.status, &head, local);
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads on until `head` holds a whole request head.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, head: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > REQUEST_HEAD_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a request",
            ));
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// The whole answer to request `head` that arrived on `local`.
fn answer(to: &str, status: u16, head: &[u8], local: SocketAddr) -> String {
    let location = location(to, head, local);
    let reason = match status {
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        _ => "Redirect",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

/// The `Location` for request `head`: the template with the request's path, its `Host`
/// without the port (else the local address), and the local port; no control characters
/// (a request cannot add header lines to the answer).
fn location(to: &str, head: &[u8], local: SocketAddr) -> String {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_owned();
    let host = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| local.ip().to_string());
    let location = to
        .replace("{host}", strip_port(&host))
        .replace("{path}", &path)
        .replace("{port}", &local.port().to_string());
    location.chars().filter(|c| !c.is_control()).collect()
}

/// `example.com:8080` → `example.com`; `[2001:db8::1]:80` → `[2001:db8::1]`.
fn strip_port(host: &str) -> &str {
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddr {
        "192.0.2.10:8080".parse().expect("addr")
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(strip_port("example.test:8080"), "example.test");
        assert_eq!(strip_port("example.test"), "example.test");
        assert_eq!(strip_port("[2001:db8::1]:80"), "[2001:db8::1]");
        assert_eq!(strip_port("[2001:db8::1]"), "[2001:db8::1]");
    }

    #[test]
    fn the_location_takes_host_path_and_port_from_the_request() {
        let head = b"GET /a/b?c=1 HTTP/1.1\r\nhOsT: www.example.test:8080\r\n\r\n";
        assert_eq!(
            location("https://{host}{path}", head, local()),
            "https://www.example.test/a/b?c=1"
        );
        assert_eq!(
            location("http://{host}:{port}/", b"GET / HTTP/1.0\r\n\r\n", local()),
            "http://192.0.2.10:8080/"
        );
        assert_eq!(
            location("https://x{path}", b"\r\n\r\n", local()),
            "https://x/"
        );
    }

    #[test]
    fn a_request_cannot_add_header_lines_to_the_answer() {
        let head = b"GET /\x01Set-Cookie:x HTTP/1.1\r\nHost: a.test\x7f\r\n\r\n";
        let answer = answer("https://{host}{path}", 308, head, local());
        assert_eq!(
            answer,
            "HTTP/1.1 308 Permanent Redirect\r\nLocation: https://a.test/Set-Cookie:x\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert!(super::answer("/", 399, head, local()).starts_with("HTTP/1.1 399 Redirect\r\n"));
    }

    #[tokio::test]
    async fn a_request_in_pieces_is_answered_and_a_huge_head_refused() {
        let mut route = crate::model::UserspaceRoute::bare("r", 0, 0, &[]);
        route.redirect = Some(crate::types::Redirect {
            to: "https://{host}{path}".into(),
            status: 301,
        });
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let serving =
            tokio::spawn(
                async move { redirect(&route, ours, local(), b"GET /x HT".to_vec()).await },
            );
        theirs
            .write_all(b"TP/1.1\r\nHost: h.test\r\n\r\n")
            .await
            .expect("write");
        let mut got = String::new();
        theirs.read_to_string(&mut got).await.expect("read");
        serving.await.expect("joined").expect("answered");
        assert!(
            got.starts_with("HTTP/1.1 301 Moved Permanently\r\nLocation: https://h.test/x\r\n"),
            "{got}"
        );
        let mut head = vec![b'a'; REQUEST_HEAD_MAX + 1];
        let (mut ours, _theirs) = tokio::io::duplex(64);
        let e = read_head(&mut ours, &mut head)
            .await
            .expect_err("too large");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
