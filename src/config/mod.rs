//! Route files: loading, parsing (shape) and validation (meaning).
//!
//! `load` reads files and directories into a [`SourceMap`]; `parse` turns each file into
//! spanned raw structs; `validate` turns all of them into one [`Config`] or a list of
//! diagnostics. Nothing here touches the network or the kernel.
//!
//! The value types it shares with `model` and `render` live in [`crate::types`] and are
//! re-exported here.

pub mod parse;
pub mod validate;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use ipnet::IpNet;
use serde::Serialize;

use crate::diag::{Diagnostic, FileId, SourceMap, Sp, Span};
pub use crate::types::{
    ActionKind, Affinity, ByteRate, Engine, EngineChoice, PortRange, Protocol, Rate, Redirect,
    SizeUnit, TargetPort, TimeUnit, Tls, TlsMode, L4,
};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "value")]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub host: Sp<Host>,
    pub port: TargetPort,
    pub weight: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Security {
    /// Merged, sorted, non-overlapping.
    pub allow: Vec<IpNet>,
    pub allow_set: bool,
    pub block: Vec<IpNet>,
    pub max_connections: Option<u32>,
    pub rate_limit: Option<Rate>,
}

/// `[routes.action.userspace]`: PROXY protocol v2 toward targets and from front load
/// balancers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UserspaceOptions {
    /// Send a PROXY v2 header with the client's address to the target.
    pub send_proxy_protocol: bool,
    /// Peers whose connections to this route's listeners start with a PROXY v2 header.
    pub accept_proxy_protocol: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NftOptions {
    pub preserve_source_ip: bool,
    pub max_rate: Option<ByteRate>,
    pub priority: Option<u8>,
    pub use_ip_sets: bool,
    pub use_advanced_nat: bool,
}

impl Default for NftOptions {
    fn default() -> Self {
        Self {
            preserve_source_ip: false,
            max_rate: None,
            priority: None,
            use_ip_sets: true,
            use_advanced_nat: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub table: String,
    pub default_engine: EngineChoice,
    pub ct_mark_mask: u32,
    pub log_group: u16,
    /// Where `[settings]`, its `default_engine` and its `ct_mark_mask` were written, for
    /// diagnostics about routes that these settings constrain.
    #[serde(skip)]
    pub span: Option<Span>,
    #[serde(skip)]
    pub default_engine_span: Option<Span>,
    #[serde(skip)]
    pub ct_mark_mask_span: Option<Span>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            table: "smartproxy".into(),
            default_engine: EngineChoice::Auto,
            ct_mark_mask: 0x00ff_0000,
            log_group: 0,
            span: None,
            default_engine_span: None,
            ct_mark_mask_span: None,
        }
    }
}

/// One validated route. `order` is its position across all files (file name order, then
/// position in the file): the tie-breaker for userspace matching.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub name: String,
    #[serde(skip)]
    pub name_span: Span,
    pub description: String,
    pub enabled: bool,
    pub priority: i64,
    pub log: bool,
    pub order: usize,
    pub protocol: Protocol,
    pub ports: Vec<PortRange>,
    #[serde(skip)]
    pub ports_span: Span,
    pub domains: Vec<String>,
    pub addresses: Vec<IpAddr>,
    pub kind: ActionKind,
    pub engine: Engine,
    pub targets: Vec<Target>,
    pub affinity: Affinity,
    pub security: Security,
    pub nftables: NftOptions,
    pub tls: Option<Tls>,
    pub redirect: Option<Redirect>,
    pub userspace: UserspaceOptions,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Config {
    pub settings: Settings,
    pub routes: Vec<Route>,
}

/// What `load` and `validate` produced: the sources (for rendering diagnostics), the
/// diagnostics, and the config when there were no errors.
#[derive(Debug)]
pub struct Loaded {
    pub sources: SourceMap,
    pub diagnostics: Vec<Diagnostic>,
    pub config: Option<Config>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// How route files are read. The default is the safe one: symlinks that leave a route
/// directory are refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Follow symlinks in a route directory that point outside it (`--follow-symlinks`).
    pub follow_symlinks: bool,
}

/// The largest route file read (a bigger one is E040, found before reading it).
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// The most bytes of route files one run reads, all files together.
pub const MAX_TOTAL_BYTES: u64 = 64 << 20;

static PROCESS_OPTIONS: std::sync::OnceLock<LoadOptions> = std::sync::OnceLock::new();

/// Sets the options [`load`] uses in this process: the command line's global flags, set
/// once by `run` before any command reads route files (so that every command, serve's
/// reloads included, honours `--follow-symlinks` without passing it along).
pub fn set_process_options(options: LoadOptions) {
    let _ = PROCESS_OPTIONS.set(options);
}

/// Reads PATHs (files, or directories of `*.toml` merged in name order), parses and
/// validates them, with the process's [`LoadOptions`] (the safe default unless the
/// command line said otherwise). I/O problems are diagnostics too, so one run reports
/// everything.
pub fn load(paths: &[PathBuf]) -> Loaded {
    load_with(paths, &PROCESS_OPTIONS.get().copied().unwrap_or_default())
}

/// [`load`] with explicit options.
pub fn load_with(paths: &[PathBuf], options: &LoadOptions) -> Loaded {
    let mut sources = SourceMap::default();
    let mut diagnostics = Vec::new();
    let mut files = Vec::new();
    let mut reader = Reader {
        options: *options,
        total: 0,
        sources: &mut sources,
        diagnostics: &mut diagnostics,
    };
    for path in paths {
        files.extend(reader.expand(path));
    }
    let decoded: Vec<_> = files
        .into_iter()
        .map(|(display, bytes)| decode(display, bytes, &mut sources))
        .collect();
    let results = parse_all(&sources, &decoded);
    let mut parsed = Vec::new();
    for (file, result) in decoded.into_iter().zip(results) {
        match (file, result) {
            (Decoded::BadUtf8 { id, offset }, _) => diagnostics.push(
                Diagnostic::error(
                    "E002",
                    Span::new(id, offset..offset),
                    "file is not valid UTF-8",
                )
                .label("first invalid byte here")
                .help("save the route file as UTF-8")
                .quote_span_only(),
            ),
            (Decoded::Text { id, display }, Some((raw, diags))) => {
                diagnostics.extend(diags);
                let dir = Path::new(&display)
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                parsed.push((id, dir, raw));
            }
            (Decoded::Text { .. }, None) => {}
        }
    }
    let config = validate::validate(&parsed, &mut diagnostics);
    crate::diag::sort(&mut diagnostics);
    let config = if diagnostics.iter().any(Diagnostic::is_error) {
        None
    } else {
        Some(config)
    };
    Loaded {
        sources,
        diagnostics,
        config,
    }
}

/// A read file, added to the source map: its text, or where its UTF-8 broke.
enum Decoded {
    Text { id: FileId, display: String },
    BadUtf8 { id: FileId, offset: usize },
}

/// Adds a file's text to `sources`; invalid UTF-8 keeps the text up to the first bad byte.
fn decode(display: String, bytes: Vec<u8>, sources: &mut SourceMap) -> Decoded {
    match String::from_utf8(bytes) {
        Ok(text) => {
            let id = sources.add(display.clone(), text);
            Decoded::Text { id, display }
        }
        Err(err) => {
            let offset = err.utf8_error().valid_up_to();
            let bytes = err.into_bytes();
            let text = String::from_utf8_lossy(&bytes[..offset]).into_owned();
            let id = sources.add(display, text);
            Decoded::BadUtf8 { id, offset }
        }
    }
}

/// Parses the decoded files (independent of each other, so on several threads) and
/// returns, in the order of `files`, each text's raw structs and diagnostics (`None` for bad
/// UTF-8).
fn parse_all(sources: &SourceMap, files: &[Decoded]) -> Vec<Option<Parsed>> {
    in_parallel(files, |file| match file {
        Decoded::Text { id, .. } => {
            let mut diags = Vec::new();
            let raw = parse::parse_file(*id, &sources.file(*id).text, &mut diags);
            Some((raw, diags))
        }
        Decoded::BadUtf8 { .. } => None,
    })
}

/// `items.iter().map(f).collect()`, on as many threads as the machine offers: the result
/// is in the order of `items`, never depending on the number of threads. Items may differ
/// much in cost (a route file of one huge block list next to files of 500 routes), so each
/// thread takes the next item rather than a fixed share of them.
pub(crate) fn in_parallel<T, R, F>(items: &[T], f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut mine = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                break mine;
            };
            mine.push((i, f(item)));
        }
    };
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads).map(|_| scope.spawn(work)).collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, result)| result).collect()
}

/// One file's raw structs and the diagnostics its parse found.
type Parsed = (parse::RawFile, Vec<Diagnostic>);

/// Reads route files: only regular files, each at most [`MAX_FILE_BYTES`] and all together
/// at most [`MAX_TOTAL_BYTES`], checked before opening (a FIFO would block, `/dev/zero`
/// never ends) and again while reading (`/proc` files claim a size of 0); symlinks in a
/// directory that lead out of it only with `follow_symlinks`. A path named on the command
/// line is the operator's choice and is followed if it is a symlink.
struct Reader<'a> {
    options: LoadOptions,
    total: u64,
    sources: &'a mut SourceMap,
    diagnostics: &'a mut Vec<Diagnostic>,
}

impl Reader<'_> {
    fn error(&mut self, code: &'static str, path: &Path, message: String, help: &str) {
        let id = self.sources.add(path.display().to_string(), String::new());
        self.diagnostics
            .push(Diagnostic::error(code, Span::new(id, 0..0), message).help(help));
    }

    /// A path's route files with their bytes, in name order for a directory.
    fn expand(&mut self, path: &Path) -> Vec<(String, Vec<u8>)> {
        if !path.is_dir() {
            return self.read(path, None).into_iter().collect();
        }
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(err) => {
                self.error(
                    "E007",
                    path,
                    format!("cannot read directory `{}`: {err}", path.display()),
                    "check the path and its permissions",
                );
                return Vec::new();
            }
        };
        let mut names: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            // A directory named `*.toml` is not a route file; everything else is judged.
            .filter(|p| !p.is_dir())
            .collect();
        names.sort();
        if names.is_empty() {
            self.error(
                "E007",
                path,
                format!(
                    "directory `{}` holds no `*.toml` route files",
                    path.display()
                ),
                "put route files named `*.toml` in it, or name a file",
            );
        }
        names
            .into_iter()
            .filter_map(|p| self.read(&p, Some(path)))
            .collect()
    }

    /// The metadata of `path`, or an E007 diagnostic.
    fn stat(
        &mut self,
        path: &Path,
        meta: std::io::Result<std::fs::Metadata>,
    ) -> Option<std::fs::Metadata> {
        meta.map_err(|err| {
            self.error(
                "E007",
                path,
                format!("cannot read `{}`: {err}", path.display()),
                "check the path and its permissions",
            );
        })
        .ok()
    }

    /// One file's bytes, or a diagnostic. `dir` is the route directory it was found in.
    fn read(&mut self, path: &Path, dir: Option<&Path>) -> Option<(String, Vec<u8>)> {
        let shown = path.display().to_string();
        let cannot = |err: std::io::Error| format!("cannot read `{shown}`: {err}");
        let link = self.stat(path, std::fs::symlink_metadata(path))?;
        let followed = link.file_type().is_symlink();
        if followed {
            if let Some(dir) = dir.filter(|_| !self.options.follow_symlinks) {
                if !stays_inside(path, dir) {
                    self.error(
                        "E041",
                        path,
                        format!(
                            "`{shown}` is a symlink that leads out of the route directory `{}`; not read",
                            dir.display()
                        ),
                        "move the file into the directory, or pass `--follow-symlinks` to read it",
                    );
                    return None;
                }
            }
        }
        let meta = self.stat(path, std::fs::metadata(path))?;
        if !meta.file_type().is_file() {
            self.error(
                "E039",
                path,
                format!("`{shown}` is {}, not a regular file; not read", kind(&meta)),
                "route files are regular files; name the file itself",
            );
            return None;
        }
        if let Some(message) = self.too_big(&shown, meta.len()) {
            self.error("E040", path, message, TOO_BIG_HELP);
            return None;
        }
        let bytes = match read_capped(path, followed, &meta, MAX_FILE_BYTES) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let message = format!(
                    "`{shown}` grew past {} MiB while being read; not read",
                    MAX_FILE_BYTES >> 20
                );
                self.error("E040", path, message, TOO_BIG_HELP);
                return None;
            }
            Err(err) => {
                self.error(
                    "E007",
                    path,
                    cannot(err),
                    "check the path and its permissions",
                );
                return None;
            }
        };
        if let Some(message) = self.too_big(&shown, bytes.len() as u64) {
            self.error("E040", path, message, TOO_BIG_HELP);
            return None;
        }
        self.total += bytes.len() as u64;
        Some((shown, bytes))
    }

    /// Why a file of `len` bytes is not read: beyond the per-file or the total cap.
    fn too_big(&self, shown: &str, len: u64) -> Option<String> {
        if len > MAX_FILE_BYTES {
            return Some(format!(
                "`{shown}` is {len} bytes, more than the {} MiB a route file may have; not read",
                MAX_FILE_BYTES >> 20
            ));
        }
        if self.total + len > MAX_TOTAL_BYTES {
            return Some(format!(
                "`{shown}` would bring the route files read to more than {} MiB; not read",
                MAX_TOTAL_BYTES >> 20
            ));
        }
        None
    }
}

const TOO_BIG_HELP: &str =
    "route files are small text files; check that the path names the right file";

/// Whether a symlink in `dir` resolves to a file inside `dir` (both canonicalised).
fn stays_inside(link: &Path, dir: &Path) -> bool {
    match (std::fs::canonicalize(link), std::fs::canonicalize(dir)) {
        (Ok(target), Ok(dir)) => target.starts_with(dir),
        _ => false,
    }
}

/// What a non-regular file is, for E039.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// At most `cap` bytes of a regular file, or `None` when it holds more. Opened without
/// blocking (a FIFO swapped in after the check returns at once) and, unless the path is a
/// symlink we chose to follow, without following one; the open file must be the one that
/// was checked.
fn read_capped(
    path: &Path,
    followed: bool,
    checked: &std::fs::Metadata,
    cap: u64,
) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if !followed {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() || meta.dev() != checked.dev() || meta.ino() != checked.ino() {
        return Err(std::io::Error::other(
            "the file changed while it was opened",
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len().min(cap)).unwrap_or(0));
    file.take(cap + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= cap).then_some(bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn in_parallel_keeps_the_order_of_the_items() {
        let items: Vec<u64> = (0..1000).collect();
        // Uneven costs, so that threads finish items out of order.
        let squares = super::in_parallel(&items, |&i| {
            let spin = if i % 7 == 0 { 10_000 } else { 1 };
            (0..spin).fold(i * i, |acc, _| std::hint::black_box(acc))
        });
        assert_eq!(squares, items.iter().map(|i| i * i).collect::<Vec<_>>());
    }
}
