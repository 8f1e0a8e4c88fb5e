//! The seal smartproxy puts on its cache files (`hmac-sha256:<hex>` line, then the text;
//! see src/state.rs `write_sealed`), written out so that tests can read a cache and forge a
//! seal the way someone holding the state directory's key could.
#![allow(dead_code)]

use std::path::Path;

use sha2::{Digest, Sha256};

const PREFIX: &str = "hmac-sha256:";

/// The state directory's sealing key (`seal.key`, hex).
pub fn key(state: &Path) -> Vec<u8> {
    let hex = std::fs::read_to_string(state.join("seal.key")).expect("seal.key exists");
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex key"))
        .collect()
}

/// HMAC-SHA256 of length-prefixed parts.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> String {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update((p.len() as u64).to_le_bytes());
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A sealed file's text without its seal line (the text as is when it has none).
pub fn body(text: &str) -> &str {
    match text.split_once('\n') {
        Some((head, rest)) if head.starts_with(PREFIX) => rest,
        _ => text,
    }
}

/// Writes `<table>.<suffix>` in `state` with `body` and a valid seal.
pub fn write(state: &Path, table: &str, suffix: &str, body: &str) {
    let m = mac(
        &key(state),
        &[table.as_bytes(), suffix.as_bytes(), body.as_bytes()],
    );
    std::fs::write(
        state.join(format!("{table}.{suffix}")),
        format!("{PREFIX}{m}\n{body}"),
    )
    .expect("write sealed file");
}
