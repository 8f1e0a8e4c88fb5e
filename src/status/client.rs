//! Asking a running `smartproxy serve` for its status over the table's local socket.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::Status;
use crate::state;

/// The local socket a running serve answers status on: state::path(table, "sock").
pub fn socket_path(table: &str) -> PathBuf {
    state::path(table, "sock")
}

/// How long a running serve has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read from the socket (a status of 100,000 routes is ~30 MB).
const ANSWER_MAX: usize = 64 * 1024 * 1024;

/// Asks a running serve (connect to socket_path, write "status\n", read a JSON Status to
/// EOF); None when none answers within ~2 s.
pub fn ask_serve(table: &str) -> Option<Status> {
    let deadline = Instant::now() + ASK_TIMEOUT;
    let mut stream = std::os::unix::net::UnixStream::connect(socket_path(table)).ok()?;
    stream.set_write_timeout(Some(ASK_TIMEOUT)).ok()?;
    stream.write_all(b"status\n").ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if answer.len() + n > ANSWER_MAX => return None,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    serde_json::from_slice(&answer).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_socket_lives_in_the_state_directory() {
        let p = socket_path("edge");
        assert_eq!(p.parent(), Some(state::dir().as_path()));
        assert_eq!(p.file_name().and_then(|n| n.to_str()), Some("edge.sock"));
    }
}
