//! The TLS ClientHello of a connection on a listener that routes by SNI (or terminates):
//! read as it arrives, in as many segments and records as the client sends, fed to rustls'
//! `Acceptor`, up to [`HELLO_MAX`] bytes. Every byte read is kept, so that `passthrough`
//! can replay them untouched.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest ClientHello serve waits for (post-quantum key shares make them ~2 KB; a
/// client may pad them much further). Larger ones are refused.
pub const HELLO_MAX: usize = 64 * 1024;

/// What a connection's ClientHello said.
pub(crate) struct Hello {
    /// Every byte read from the client so far.
    pub(crate) bytes: Vec<u8>,
    /// `None`: the bytes are not TLS (a plain-TCP client on a listener with SNI routes).
    pub(crate) accepted: Option<rustls::server::Accepted>,
    pub(crate) sni: Option<String>,
}

/// Reads until rustls has a whole ClientHello (or the bytes cannot be one).
pub(crate) async fn read_hello<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Hello> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut bytes = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a ClientHello",
            ));
        }
        if bytes.len() + n > HELLO_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ClientHello too large",
            ));
        }
        bytes.extend_from_slice(&chunk[..n]);
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh)? == 0 {
                break;
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_owned);
                return Ok(Hello {
                    bytes,
                    accepted: Some(accepted),
                    sni,
                });
            }
            Ok(None) => {}
            Err(_) => {
                return Ok(Hello {
                    bytes,
                    accepted: None,
                    sni: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;

    /// The first flight of a rustls client for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
        let mut client = rustls::ClientConnection::new(Arc::new(config), server).expect("client");
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).expect("write");
        }
        out
    }

    /// Sends `bytes` in pieces of `size`, then keeps the stream open.
    async fn hello_in_pieces(bytes: Vec<u8>, size: usize) -> io::Result<Hello> {
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 17);
        let sending = tokio::spawn(async move {
            for piece in bytes.chunks(size) {
                theirs.write_all(piece).await.expect("write");
                tokio::task::yield_now().await;
            }
            theirs
        });
        let hello = read_hello(&mut ours).await;
        drop(sending.await);
        hello
    }

    #[tokio::test]
    async fn a_hello_in_many_segments_gives_its_name_and_every_byte() {
        let bytes = client_hello("www.example.test");
        let hello = hello_in_pieces(bytes.clone(), 7).await.expect("a hello");
        assert_eq!(hello.sni.as_deref(), Some("www.example.test"));
        assert!(hello.accepted.is_some());
        assert_eq!(hello.bytes, bytes);
    }

    #[tokio::test]
    async fn plain_bytes_are_no_hello_but_are_kept() {
        let hello = hello_in_pieces(b"GET / HTTP/1.1\r\n\r\n".to_vec(), 100)
            .await
            .expect("read");
        assert!(hello.accepted.is_none() && hello.sni.is_none());
        assert_eq!(hello.bytes, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_close_before_the_hello_and_an_endless_one_are_errors() {
        let bytes = client_hello("a.test");
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        theirs.write_all(&bytes[..10]).await.expect("write");
        drop(theirs);
        let e = read_hello(&mut ours).await.err().expect("closed");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // A ClientHello announced 65,520 bytes long, in full records: rustls waits for the
        // rest, serve stops at HELLO_MAX.
        let mut endless = Vec::new();
        for i in 0..5 {
            endless.extend_from_slice(&[0x16, 0x03, 0x01, 0x40, 0x00]);
            let mut record = vec![0u8; 0x4000];
            if i == 0 {
                record[..4].copy_from_slice(&[0x01, 0x00, 0xff, 0xf0]);
            }
            endless.extend_from_slice(&record);
        }
        let e = hello_in_pieces(endless, 4096)
            .await
            .err()
            .expect("too large");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
