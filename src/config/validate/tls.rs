//! `[routes.action.tls]`: the mode and the PEM files it needs.

use std::path::{Path, PathBuf};

use super::{missing, one_of};
use crate::config::parse::{RawCertificate, RawTls};
use crate::config::{Tls, TlsMode};
use crate::diag::{Diagnostic, Sp};

pub(super) fn tls(t: &RawTls, dir: &Path, diags: &mut Vec<Diagnostic>) -> Option<Tls> {
    let Some(mode_text) = &t.mode else {
        if t.rejected.contains("mode") {
            return None;
        }
        diags.push(missing(
            t.span,
            "tls `mode`",
            "add `mode = \"passthrough\"`, \"terminate\" or \"terminate-and-reencrypt\"",
        ));
        return None;
    };
    let mode = one_of(
        mode_text,
        "TLS mode",
        &[
            ("passthrough", TlsMode::Passthrough),
            ("terminate", TlsMode::Terminate),
            ("terminate-and-reencrypt", TlsMode::TerminateAndReencrypt),
        ],
        diags,
    )?;
    let (cert, key) = match (&t.certificate, mode) {
        (None, TlsMode::Passthrough) => (None, None),
        (None, _) => {
            diags.push(
                Diagnostic::error(
                    "E028",
                    mode_text.span,
                    "a terminating TLS mode needs a certificate",
                )
                .label("terminates TLS here")
                .help(
                    "add `certificate = { cert = \"certs/site.pem\", key = \"certs/site.key\" }`",
                ),
            );
            return None;
        }
        (Some(c), _) => {
            let cert = pem_file(c, "cert", dir, PemKind::Certificate, diags);
            let key = pem_file(c, "key", dir, PemKind::Key, diags);
            (cert, key)
        }
    };
    let insecure_skip_verify = t.insecure_skip_verify.as_ref().is_some_and(|b| b.value);
    let ca = match &t.ca {
        Some(ca) if mode == TlsMode::TerminateAndReencrypt => {
            pem_at(ca, dir, PemKind::Certificate, diags)
        }
        _ => None,
    };
    if mode != TlsMode::TerminateAndReencrypt {
        let ignored = [
            t.ca.as_ref().map(|c| (c.span, "ca")),
            t.insecure_skip_verify
                .as_ref()
                .map(|b| (b.span, "insecure_skip_verify")),
        ];
        for (span, key) in ignored.into_iter().flatten() {
            diags.push(
                Diagnostic::error(
                    "E030",
                    span,
                    format!("`{key}` has no effect: only `terminate-and-reencrypt` talks TLS to the targets"),
                )
                .label("ignored")
                .help("remove it, or use `mode = \"terminate-and-reencrypt\"`"),
            );
        }
    }
    Some(Tls {
        mode,
        cert,
        key,
        ca,
        insecure_skip_verify,
    })
}

#[derive(Clone, Copy)]
enum PemKind {
    Certificate,
    Key,
}

fn pem_file(
    certificate: &RawCertificate,
    field: &str,
    dir: &Path,
    kind: PemKind,
    diags: &mut Vec<Diagnostic>,
) -> Option<PathBuf> {
    let path = match kind {
        PemKind::Certificate => certificate.cert.as_ref(),
        PemKind::Key => certificate.key.as_ref(),
    };
    let Some(path) = path else {
        if certificate.rejected.contains(field) {
            return None;
        }
        diags.push(missing(
            certificate.span,
            &format!("certificate `{field}`"),
            "give both `cert` and `key` paths (relative to the route file)",
        ));
        return None;
    };
    pem_at(path, dir, kind, diags)
}

/// Checks that `path` (relative to `dir`) is a readable PEM file of `kind`.
fn pem_at(
    path: &Sp<String>,
    dir: &Path,
    kind: PemKind,
    diags: &mut Vec<Diagnostic>,
) -> Option<PathBuf> {
    let full = dir.join(&path.value);
    let bytes = match std::fs::read(&full) {
        Ok(b) => b,
        Err(err) => {
            diags.push(
                Diagnostic::error(
                    "E020",
                    path.span,
                    format!("cannot read `{}`: {err}", full.display()),
                )
                .label("file not readable")
                .help("paths are relative to the route file's folder"),
            );
            return None;
        }
    };
    let ok = match kind {
        PemKind::Certificate => {
            let certs: Vec<_> = rustls_pemfile::certs(&mut bytes.as_slice()).collect();
            !certs.is_empty() && certs.iter().all(Result::is_ok)
        }
        PemKind::Key => matches!(
            rustls_pemfile::private_key(&mut bytes.as_slice()),
            Ok(Some(_))
        ),
    };
    if !ok {
        let (what, help) = match kind {
            PemKind::Certificate => (
                "a PEM certificate",
                "`cert` takes a PEM file with `-----BEGIN CERTIFICATE-----` blocks (leaf first)",
            ),
            PemKind::Key => (
                "a PEM private key",
                "`key` takes a PEM file with a `-----BEGIN PRIVATE KEY-----` block (PKCS#8, RSA or EC)",
            ),
        };
        diags.push(
            Diagnostic::error(
                "E021",
                path.span,
                format!("`{}` is not {what}", full.display()),
            )
            .label(format!("expected {what}"))
            .help(help),
        );
        return None;
    }
    Some(full)
}
