//! Route files to what serve runs: the userspace routes by listener with their TLS
//! configurations, and the model the kernel routes and health checks follow. Both come out
//! of one load as one [`Loaded`], which `Shared::install` swaps in whole. Diagnostics are
//! rendered as `check` renders them, cut short for the log ([`log_summary`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::warn;

use super::kernel::{self, Carrier};
use super::routes::{self, ListenAddr, Listener};
use super::tls::{self, Roots};
use super::RouteState;
use crate::config::TlsMode;
use crate::diag::{Diagnostic, SourceMap};
use crate::model::Model;

/// Diagnostics of a load rendered into serve's output; the others are counted.
pub(crate) const LOG_DIAGNOSTICS: usize = 20;
/// The longest line of them logged (a source line may be megabytes long).
const LOG_LINE_MAX: usize = 300;
/// The most text of them logged in all.
const LOG_TEXT_MAX: usize = 32 * 1024;

/// Why route files cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The files' errors, rendered (file:line:col) and cut short by [`log_summary`].
    #[error("{0}")]
    Diagnostics(String),
    /// Without nftables, kernel routes the userspace engine cannot serve.
    #[error("{0}")]
    Userspace(String),
    #[error("route `{route}`: TLS termination needs a certificate and key")]
    NoCertificate { route: String },
    #[error(transparent)]
    Tls(#[from] tls::Error),
}

/// The routing of new connections, by listening address.
pub(crate) struct Running {
    pub(crate) listeners: BTreeMap<ListenAddr, Arc<Listener>>,
    /// TLS server configurations of the routes that terminate, by route name.
    pub(crate) server_tls: HashMap<String, Arc<rustls::ServerConfig>>,
    /// TLS client configurations for re-encrypting to targets, by route name.
    pub(crate) client_tls: HashMap<String, Arc<rustls::ClientConfig>>,
    /// Each route's counters and admission state, by route name (filled by `install`).
    pub(crate) state: HashMap<String, RouteState>,
}

/// One loaded configuration: what a new connection is routed by, and the model it came
/// from (its kernel routes, its targets), never one without the other.
pub struct Loaded {
    pub(crate) running: Running,
    pub(crate) model: Model,
}

impl Loaded {
    /// Nothing to serve (before the first install).
    pub(crate) fn empty() -> Loaded {
        Loaded {
            running: Running {
                listeners: BTreeMap::new(),
                server_tls: HashMap::new(),
                client_tls: HashMap::new(),
                state: HashMap::new(),
            },
            model: Model::default(),
        }
    }

    /// The model the files lowered to (without kernel routes unless the kernel carries them).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The addresses serve listens on for this configuration.
    pub fn listening(&self) -> Vec<ListenAddr> {
        self.running.listeners.keys().copied().collect()
    }

    /// Every userspace route a listener can pick, by name (once per listener).
    pub(crate) fn route_names(&self) -> Vec<String> {
        self.running
            .listeners
            .values()
            .flat_map(|l| l.by_domain.iter().chain(&l.default))
            .map(|r| r.name.clone())
            .collect()
    }
}

/// Loads the route files into what serve runs, and the model. Unless the kernel carries
/// them, the kernel routes join the userspace ones.
pub fn load(paths: &[PathBuf], carrier: Carrier) -> Result<Loaded, Error> {
    let loaded = crate::config::load(paths);
    let rendered = |diags: &[Diagnostic]| log_summary(&loaded.sources, diags);
    let Some(cfg) = loaded.config.as_ref() else {
        return Err(Error::Diagnostics(rendered(&loaded.diagnostics)));
    };
    if !loaded.diagnostics.is_empty() {
        for line in rendered(&loaded.diagnostics).lines() {
            if !line.trim().is_empty() {
                warn!("{line}");
            }
        }
    }
    let mut cfg = cfg.clone();
    if carrier != Carrier::Kernel {
        let moved = kernel::to_userspace(&mut cfg).map_err(Error::Userspace)?;
        if carrier == Carrier::Fallback && !moved.is_empty() {
            warn!(
                "nftables is not available: kernel route{} {} served in userspace instead",
                if moved.len() == 1 { "" } else { "s" },
                moved
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let mut model = crate::lower::lower(&cfg, &crate::lower::SystemResolver)
        .map_err(|d| Error::Diagnostics(rendered(&d)))?;
    if carrier != Carrier::Kernel {
        model.kernel.clear();
    }
    let (server_tls, client_tls) = tls_configs(&model)?;
    let running = Running {
        listeners: routes::listeners(&model.userspace)
            .into_iter()
            .map(|(a, l)| (a, Arc::new(l)))
            .collect(),
        server_tls,
        client_tls,
        state: HashMap::new(),
    };
    Ok(Loaded { running, model })
}

type ServerConfigs = HashMap<String, Arc<rustls::ServerConfig>>;
type ClientConfigs = HashMap<String, Arc<rustls::ClientConfig>>;

/// The TLS configurations of the routes that terminate (and re-encrypt), by route name;
/// the system's roots are read once for all routes that trust them.
fn tls_configs(model: &Model) -> Result<(ServerConfigs, ClientConfigs), Error> {
    let mut server_tls = HashMap::new();
    let mut client_tls = HashMap::new();
    let mut system_roots: Option<Arc<rustls::ClientConfig>> = None;
    for r in &model.userspace {
        let Some(tls) = &r.tls else { continue };
        if tls.mode == TlsMode::Passthrough {
            continue;
        }
        if tls.mode == TlsMode::TerminateAndReencrypt {
            let config = if tls.insecure_skip_verify {
                warn!(
                    route = %r.name,
                    "insecure_skip_verify: the targets' certificates are NOT verified; anyone on the path to them can read and change this route's traffic"
                );
                Arc::new(tls::client_config(Roots::None)?)
            } else if let Some(ca) = &tls.ca {
                Arc::new(tls::client_config(Roots::File(ca))?)
            } else if let Some(c) = &system_roots {
                c.clone()
            } else {
                let c = Arc::new(tls::client_config(Roots::System)?);
                system_roots = Some(c.clone());
                c
            };
            client_tls.insert(r.name.clone(), config);
        }
        let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
            return Err(Error::NoCertificate {
                route: r.name.clone(),
            });
        };
        server_tls.insert(r.name.clone(), Arc::new(tls::server_config(cert, key)?));
    }
    Ok((server_tls, client_tls))
}

/// The first [`LOG_DIAGNOSTICS`] of `diags` (errors first) rendered as `check` renders
/// them, each line at most [`LOG_LINE_MAX`] characters and all at most [`LOG_TEXT_MAX`]
/// bytes, then how many were left out: a route file with thousands of problems costs serve's
/// log a few kilobytes, not megabytes. `smartproxy check` shows them all.
fn log_summary(sources: &SourceMap, diags: &[Diagnostic]) -> String {
    let mut ordered: Vec<&Diagnostic> = diags.iter().filter(|d| d.is_error()).collect();
    ordered.extend(diags.iter().filter(|d| !d.is_error()));
    let shown: Vec<Diagnostic> = ordered
        .iter()
        .take(LOG_DIAGNOSTICS)
        .map(|d| (*d).clone())
        .collect();
    let text = crate::diag::render(sources, &shown, crate::diag::Format::Text, false);
    let mut out = String::new();
    for line in text.lines() {
        if out.len() + LOG_LINE_MAX + 1 > LOG_TEXT_MAX {
            out.push_str("…\n");
            break;
        }
        match line.char_indices().nth(LOG_LINE_MAX) {
            Some((cut, _)) => {
                out.push_str(&line[..cut]);
                out.push_str("…\n");
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let more = diags.len() - shown.len();
    if more > 0 {
        let _ = writeln!(
            out,
            "and {more} more; run `smartproxy check` on the route files to see them all"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_with_many_problems_logs_twenty_diagnostics_cut_short_and_a_count() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("routes.toml");
        // 30 conflicting pairs, the ports written after a comment 10,000 characters long.
        let mut text = String::new();
        for i in 0..30 {
            for side in ["a", "b"] {
                text += &format!(
                    "[[routes]]\nname = \"{side}{i}\"\n[routes.match]\nports = [{}] # {}\n\
                     [routes.action]\nforwarding_engine = \"nftables\"\n\
                     targets = [{{ host = \"198.51.100.2\", port = 80 }}]\n",
                    9000 + i,
                    "x".repeat(10_000)
                );
            }
        }
        std::fs::write(&path, text).expect("write");
        let loaded = crate::config::load(&[path]);
        assert_eq!(loaded.diagnostics.len(), 30, "{:?}", loaded.diagnostics);
        let summary = log_summary(&loaded.sources, &loaded.diagnostics);
        assert_eq!(summary.matches("error[E012]").count(), LOG_DIAGNOSTICS);
        assert!(
            summary.ends_with(
                "and 10 more; run `smartproxy check` on the route files to see them all\n"
            ),
            "{summary}"
        );
        assert!(summary
            .lines()
            .all(|l| l.chars().count() <= LOG_LINE_MAX + 1));
        assert!(summary.len() <= LOG_TEXT_MAX + 1024, "{}", summary.len());
    }

    fn write(dir: &std::path::Path, text: &str) -> PathBuf {
        let path = dir.join("routes.toml");
        std::fs::write(&path, text).expect("write");
        path
    }

    const MIXED: &str = "[[routes]]\nname = \"web\"\n[routes.match]\nports = [8080]\n\
        [routes.action]\nforwarding_engine = \"nftables\"\n\
        targets = [{ host = \"198.51.100.2\", port = 80 }]\n\
        [[routes]]\nname = \"edge\"\n[routes.match]\nports = [8443]\naddresses = [\"127.0.0.1\"]\n\
        [routes.action]\nforwarding_engine = \"userspace\"\n\
        targets = [{ host = \"198.51.100.3\", port = 443 }]\n";

    #[test]
    fn a_load_keeps_the_kernel_routes_in_the_model_only_when_the_kernel_carries_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(dir.path(), MIXED);
        let kernel = load(std::slice::from_ref(&path), Carrier::Kernel).expect("loads");
        assert_eq!(kernel.model().kernel.len(), 1);
        assert_eq!(
            kernel.listening(),
            vec!["127.0.0.1:8443".parse().expect("addr")]
        );
        let moved = load(&[path], Carrier::Fallback).expect("loads");
        assert!(moved.model().kernel.is_empty());
        let mut names = moved.route_names();
        names.sort();
        assert_eq!(
            names.iter().filter(|n| *n == "edge").count(),
            1,
            "{names:?}"
        );
        assert!(names.iter().any(|n| n == "web"), "{names:?}");
    }

    #[test]
    fn a_load_with_errors_is_refused_with_the_file_position() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(dir.path(), "[[routes]]\nname = 7\n");
        let Err(Error::Diagnostics(text)) = load(&[path], Carrier::Kernel) else {
            panic!("an invalid file must be refused with its diagnostics");
        };
        assert!(text.contains("routes.toml:2:"), "{text}");
    }
}
