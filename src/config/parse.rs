//! TOML route files -> spanned raw structs.
//!
//! This layer checks only shape: that keys are known (with a "did you mean" hint), that
//! values have the right TOML type, and that files are UTF-8 TOML. Every value keeps the
//! byte span it was written at; meaning is checked later, in `validate`.

use std::borrow::Cow;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::diag::{Diagnostic, FileId, Sp, Span};

/// A port as written: `80` or `"8000-8010"` or `"preserve"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawPort {
    Int(i64),
    Str(String),
}

/// The keys of one table whose value was written but rejected here (wrong type, integer
/// too large, or a list with a rejected item). Validation uses it so that a key already
/// reported is not reported again as missing or empty.
#[derive(Debug, Default)]
pub struct Rejected(Vec<String>);

impl Rejected {
    pub fn contains(&self, key: &str) -> bool {
        self.0.iter().any(|k| k == key)
    }
}

#[derive(Debug, Default)]
pub struct RawFile {
    pub settings: Option<RawSettings>,
    pub routes: Vec<RawRoute>,
}

#[derive(Debug)]
pub struct RawSettings {
    pub span: Span,
    pub table: Option<Sp<String>>,
    pub default_engine: Option<Sp<String>>,
    pub ct_mark_mask: Option<Sp<String>>,
    pub log_group: Option<Sp<i64>>,
}

#[derive(Debug)]
pub struct RawRoute {
    pub span: Span,
    pub rejected: Rejected,
    pub name: Option<Sp<String>>,
    pub description: Option<Sp<String>>,
    pub enabled: Option<Sp<bool>>,
    pub priority: Option<Sp<i64>>,
    pub log: Option<Sp<bool>>,
    pub matcher: Option<RawMatch>,
    pub action: Option<RawAction>,
}

#[derive(Debug)]
pub struct RawMatch {
    pub span: Span,
    pub rejected: Rejected,
    pub ports: Option<Sp<Vec<Sp<RawPort>>>>,
    pub protocol: Option<Sp<String>>,
    pub domains: Option<Vec<Sp<String>>>,
    pub addresses: Option<Vec<Sp<String>>>,
}

#[derive(Debug)]
pub struct RawAction {
    pub span: Span,
    pub rejected: Rejected,
    pub kind: Option<Sp<String>>,
    pub forwarding_engine: Option<Sp<String>>,
    pub targets: Option<Sp<Vec<RawTarget>>>,
    pub affinity: Option<Sp<String>>,
    pub security: Option<RawSecurity>,
    pub nftables: Option<RawNftables>,
    pub tls: Option<RawTls>,
    pub redirect: Option<RawRedirect>,
    pub userspace: Option<RawUserspace>,
}

/// `[routes.action.userspace]`: options of the userspace engine.
#[derive(Debug)]
pub struct RawUserspace {
    pub span: Span,
    pub send_proxy_protocol: Option<Sp<bool>>,
    pub accept_proxy_protocol: Option<Vec<Sp<String>>>,
}

#[derive(Debug)]
pub struct RawTarget {
    pub span: Span,
    pub rejected: Rejected,
    pub host: Option<Sp<String>>,
    pub port: Option<Sp<RawPort>>,
    pub weight: Option<Sp<i64>>,
}

#[derive(Debug)]
pub struct RawSecurity {
    pub span: Span,
    pub ip_allow_list: Option<Vec<Sp<String>>>,
    pub ip_block_list: Option<Vec<Sp<String>>>,
    pub max_connections: Option<Sp<i64>>,
    pub rate_limit: Option<Sp<String>>,
}

#[derive(Debug)]
pub struct RawNftables {
    pub span: Span,
    pub preserve_source_ip: Option<Sp<bool>>,
    pub max_rate: Option<Sp<String>>,
    pub priority: Option<Sp<i64>>,
    pub use_ip_sets: Option<Sp<bool>>,
    pub use_advanced_nat: Option<Sp<bool>>,
}

#[derive(Debug)]
pub struct RawTls {
    pub span: Span,
    pub rejected: Rejected,
    pub mode: Option<Sp<String>>,
    pub certificate: Option<RawCertificate>,
    /// terminate-and-reencrypt: the CA file that signs the targets' certificates.
    pub ca: Option<Sp<String>>,
    /// terminate-and-reencrypt: do not verify the targets' certificates at all.
    pub insecure_skip_verify: Option<Sp<bool>>,
}

#[derive(Debug)]
pub struct RawCertificate {
    pub span: Span,
    pub rejected: Rejected,
    pub cert: Option<Sp<String>>,
    pub key: Option<Sp<String>>,
}

#[derive(Debug)]
pub struct RawRedirect {
    pub span: Span,
    pub rejected: Rejected,
    pub to: Option<Sp<String>>,
    pub status: Option<Sp<i64>>,
}

const TOP_KEYS: &[&str] = &["settings", "routes"];
const SETTINGS_KEYS: &[&str] = &["table", "default_engine", "ct_mark_mask", "log_group"];
const ROUTE_KEYS: &[&str] = &[
    "name",
    "description",
    "enabled",
    "priority",
    "log",
    "match",
    "action",
];
const MATCH_KEYS: &[&str] = &["ports", "protocol", "domains", "addresses"];
const ACTION_KEYS: &[&str] = &[
    "type",
    "forwarding_engine",
    "targets",
    "affinity",
    "security",
    "nftables",
    "tls",
    "redirect",
    "userspace",
];
const USERSPACE_KEYS: &[&str] = &["send_proxy_protocol", "accept_proxy_protocol"];
const TARGET_KEYS: &[&str] = &["host", "port", "weight"];
const SECURITY_KEYS: &[&str] = &[
    "ip_allow_list",
    "ip_block_list",
    "max_connections",
    "rate_limit",
];
const NFTABLES_KEYS: &[&str] = &[
    "preserve_source_ip",
    "max_rate",
    "priority",
    "use_ip_sets",
    "use_advanced_nat",
];
const TLS_KEYS: &[&str] = &["mode", "certificate", "ca", "insecure_skip_verify"];
const CERT_KEYS: &[&str] = &["cert", "key"];
const REDIRECT_KEYS: &[&str] = &["to", "status"];

/// Every section with its keys, to tell a user who put a key in the wrong place where it
/// belongs.
const SECTIONS: &[(&str, &[&str])] = &[
    ("[settings]", SETTINGS_KEYS),
    ("[[routes]]", ROUTE_KEYS),
    ("[routes.match]", MATCH_KEYS),
    ("[routes.action]", ACTION_KEYS),
    ("a target `{ host, port, weight }`", TARGET_KEYS),
    ("[routes.action.security]", SECURITY_KEYS),
    ("[routes.action.nftables]", NFTABLES_KEYS),
    ("[routes.action.tls]", TLS_KEYS),
    ("[routes.action.tls.certificate]", CERT_KEYS),
    ("[routes.action.redirect]", REDIRECT_KEYS),
    ("[routes.action.userspace]", USERSPACE_KEYS),
];

/// Parses one file's text. Shape errors go to `diags`; what could be read is returned so
/// that validation can go on and report everything in one run.
pub fn parse_file(file: FileId, text: &str, diags: &mut Vec<Diagnostic>) -> RawFile {
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(err) => {
            let range = err.span().unwrap_or(0..0);
            let message = err.message().trim().to_owned();
            // The parser does not name the duplicated key or table; its span does.
            let quoted = text
                .get(range.clone())
                .filter(|t| !t.is_empty() && t.len() <= 64 && !t.contains('\n'));
            let (message, label, help) = match quoted {
                Some(key) if message == "duplicate key" => (
                    format!("invalid TOML: duplicate key `{key}`"),
                    "written again here",
                    "a key or a table is written once per file; merge the two",
                ),
                _ => (
                    format!("invalid TOML: {message}"),
                    "here",
                    "fix the TOML syntax; see https://toml.io for the format",
                ),
            };
            diags.push(
                Diagnostic::error("E001", Span::new(file, range), message)
                    .label(label)
                    .help(help)
                    .quote_span_only(),
            );
            return RawFile::default();
        }
    };
    let mut cx = Cx { file, diags };
    cx.read_document(doc.get_ref())
}

type Value<'i> = Spanned<DeValue<'i>>;

struct Cx<'d> {
    file: FileId,
    diags: &'d mut Vec<Diagnostic>,
}

impl Cx<'_> {
    fn span(&self, range: std::ops::Range<usize>) -> Span {
        Span::new(self.file, range)
    }

    fn read_document(&mut self, doc: &DeTable<'_>) -> RawFile {
        let mut out = RawFile::default();
        for (key, value) in doc.iter() {
            match key.get_ref().as_ref() {
                "settings" => {
                    if let Some(table) = self.table(value, "[settings]") {
                        out.settings = Some(self.read_settings(table, self.span(value.span())));
                    }
                }
                "routes" => out.routes = self.read_routes(value),
                _ => self.unknown(key, TOP_KEYS, "the top level"),
            }
        }
        out
    }

    fn read_settings(&mut self, table: &DeTable<'_>, span: Span) -> RawSettings {
        let mut s = RawSettings {
            span,
            table: None,
            default_engine: None,
            ct_mark_mask: None,
            log_group: None,
        };
        for (key, value) in table.iter() {
            match key.get_ref().as_ref() {
                "table" => s.table = self.string(value),
                "default_engine" => s.default_engine = self.string(value),
                "ct_mark_mask" => s.ct_mark_mask = self.string_or_int(value),
                "log_group" => s.log_group = self.int(value),
                _ => self.unknown(key, SETTINGS_KEYS, "[settings]"),
            }
        }
        s
    }

    fn read_routes(&mut self, value: &Value<'_>) -> Vec<RawRoute> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, "an array of tables (`[[routes]]`)");
            return Vec::new();
        };
        // Sized up front: a route is large, and moving a file's routes as the vector grows
        // showed in profiles.
        let mut routes = Vec::with_capacity(items.len());
        for item in items.iter() {
            if let Some(table) = self.table(item, "a table (`[[routes]]`)") {
                routes.push(self.read_route(table, self.span(item.span())));
            }
        }
        routes
    }

    fn read_route(&mut self, table: &DeTable<'_>, span: Span) -> RawRoute {
        let mut r = RawRoute {
            span,
            rejected: Rejected::default(),
            name: None,
            description: None,
            enabled: None,
            priority: None,
            log: None,
            matcher: None,
            action: None,
        };
        for (key, value) in table.iter() {
            let before = self.diags.len();
            match key.get_ref().as_ref() {
                "name" => r.name = self.string(value),
                "description" => r.description = self.string(value),
                "enabled" => r.enabled = self.bool(value),
                "priority" => r.priority = self.int(value),
                "log" => r.log = self.bool(value),
                "match" => {
                    if let Some(t) = self.table(value, "a table (`[routes.match]`)") {
                        r.matcher = Some(self.read_match(t, self.span(value.span())));
                    }
                }
                "action" => {
                    if let Some(t) = self.table(value, "a table (`[routes.action]`)") {
                        r.action = Some(self.read_action(t, self.span(value.span())));
                    }
                }
                _ => self.unknown(key, ROUTE_KEYS, "[[routes]]"),
            }
            self.note_rejected(before, key, &mut r.rejected);
        }
        r
    }

    fn read_match(&mut self, table: &DeTable<'_>, span: Span) -> RawMatch {
        let mut m = RawMatch {
            span,
            rejected: Rejected::default(),
            ports: None,
            protocol: None,
            domains: None,
            addresses: None,
        };
        for (key, value) in table.iter() {
            let before = self.diags.len();
            match key.get_ref().as_ref() {
                "ports" => m.ports = self.ports(value),
                "protocol" => m.protocol = self.string(value),
                "domains" => m.domains = self.string_list(value),
                "addresses" => m.addresses = self.string_list(value),
                _ => self.unknown(key, MATCH_KEYS, "[routes.match]"),
            }
            self.note_rejected(before, key, &mut m.rejected);
        }
        m
    }

    fn read_action(&mut self, table: &DeTable<'_>, span: Span) -> RawAction {
        let mut a = RawAction {
            span,
            rejected: Rejected::default(),
            kind: None,
            forwarding_engine: None,
            targets: None,
            affinity: None,
            security: None,
            nftables: None,
            tls: None,
            redirect: None,
            userspace: None,
        };
        for (key, value) in table.iter() {
            let before = self.diags.len();
            let span = self.span(value.span());
            match key.get_ref().as_ref() {
                "type" => a.kind = self.string(value),
                "forwarding_engine" => a.forwarding_engine = self.string(value),
                "affinity" => a.affinity = self.string(value),
                "targets" => a.targets = self.targets(value),
                "security" => {
                    if let Some(t) = self.table(value, "a table (`[routes.action.security]`)") {
                        a.security = Some(self.read_security(t, span));
                    }
                }
                "nftables" => {
                    if let Some(t) = self.table(value, "a table (`[routes.action.nftables]`)") {
                        a.nftables = Some(self.read_nftables(t, span));
                    }
                }
                "tls" => {
                    if let Some(t) = self.table(value, "a table (`[routes.action.tls]`)") {
                        a.tls = Some(self.read_tls(t, span));
                    }
                }
                "redirect" => {
                    if let Some(t) = self.table(value, "a table (`[routes.action.redirect]`)") {
                        a.redirect = Some(self.read_redirect(t, span));
                    }
                }
                "userspace" => {
                    if let Some(t) = self.table(value, "a table (`[routes.action.userspace]`)") {
                        a.userspace = Some(self.read_userspace(t, span));
                    }
                }
                _ => self.unknown(key, ACTION_KEYS, "[routes.action]"),
            }
            self.note_rejected(before, key, &mut a.rejected);
        }
        a
    }

    fn targets(&mut self, value: &Value<'_>) -> Option<Sp<Vec<RawTarget>>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, "an array of `{ host, port }` tables");
            return None;
        };
        let targets = items
            .iter()
            .filter_map(|item| {
                let table = self.table(item, "a `{ host, port }` table")?;
                let mut t = RawTarget {
                    span: self.span(item.span()),
                    rejected: Rejected::default(),
                    host: None,
                    port: None,
                    weight: None,
                };
                for (key, value) in table.iter() {
                    let before = self.diags.len();
                    match key.get_ref().as_ref() {
                        "host" => t.host = self.string(value),
                        "port" => t.port = self.port(value),
                        "weight" => t.weight = self.int(value),
                        _ => self.unknown(key, TARGET_KEYS, "a target"),
                    }
                    self.note_rejected(before, key, &mut t.rejected);
                }
                Some(t)
            })
            .collect();
        Some(Sp::new(targets, self.span(value.span())))
    }

    fn read_userspace(&mut self, table: &DeTable<'_>, span: Span) -> RawUserspace {
        let mut u = RawUserspace {
            span,
            send_proxy_protocol: None,
            accept_proxy_protocol: None,
        };
        for (key, value) in table.iter() {
            match key.get_ref().as_ref() {
                "send_proxy_protocol" => u.send_proxy_protocol = self.bool(value),
                "accept_proxy_protocol" => u.accept_proxy_protocol = self.string_list(value),
                _ => self.unknown(key, USERSPACE_KEYS, "[routes.action.userspace]"),
            }
        }
        u
    }

    fn read_security(&mut self, table: &DeTable<'_>, span: Span) -> RawSecurity {
        let mut s = RawSecurity {
            span,
            ip_allow_list: None,
            ip_block_list: None,
            max_connections: None,
            rate_limit: None,
        };
        for (key, value) in table.iter() {
            match key.get_ref().as_ref() {
                "ip_allow_list" => s.ip_allow_list = self.string_list(value),
                "ip_block_list" => s.ip_block_list = self.string_list(value),
                "max_connections" => s.max_connections = self.int(value),
                "rate_limit" => s.rate_limit = self.string(value),
                _ => self.unknown(key, SECURITY_KEYS, "[routes.action.security]"),
            }
        }
        s
    }

    fn read_nftables(&mut self, table: &DeTable<'_>, span: Span) -> RawNftables {
        let mut n = RawNftables {
            span,
            preserve_source_ip: None,
            max_rate: None,
            priority: None,
            use_ip_sets: None,
            use_advanced_nat: None,
        };
        for (key, value) in table.iter() {
            match key.get_ref().as_ref() {
                "preserve_source_ip" => n.preserve_source_ip = self.bool(value),
                "max_rate" => n.max_rate = self.string(value),
                "priority" => n.priority = self.int(value),
                "use_ip_sets" => n.use_ip_sets = self.bool(value),
                "use_advanced_nat" => n.use_advanced_nat = self.bool(value),
                _ => self.unknown(key, NFTABLES_KEYS, "[routes.action.nftables]"),
            }
        }
        n
    }

    fn read_tls(&mut self, table: &DeTable<'_>, span: Span) -> RawTls {
        let mut t = RawTls {
            span,
            rejected: Rejected::default(),
            mode: None,
            certificate: None,
            ca: None,
            insecure_skip_verify: None,
        };
        for (key, value) in table.iter() {
            let before = self.diags.len();
            match key.get_ref().as_ref() {
                "mode" => t.mode = self.string(value),
                "ca" => t.ca = self.string(value),
                "insecure_skip_verify" => t.insecure_skip_verify = self.bool(value),
                "certificate" => {
                    if let Some(c) = self.table(value, "a `{ cert, key }` table") {
                        let mut cert = RawCertificate {
                            span: self.span(value.span()),
                            rejected: Rejected::default(),
                            cert: None,
                            key: None,
                        };
                        for (key, value) in c.iter() {
                            let before = self.diags.len();
                            match key.get_ref().as_ref() {
                                "cert" => cert.cert = self.string(value),
                                "key" => cert.key = self.string(value),
                                _ => self.unknown(key, CERT_KEYS, "a certificate"),
                            }
                            self.note_rejected(before, key, &mut cert.rejected);
                        }
                        t.certificate = Some(cert);
                    }
                }
                _ => self.unknown(key, TLS_KEYS, "[routes.action.tls]"),
            }
            self.note_rejected(before, key, &mut t.rejected);
        }
        t
    }

    fn read_redirect(&mut self, table: &DeTable<'_>, span: Span) -> RawRedirect {
        let mut r = RawRedirect {
            span,
            rejected: Rejected::default(),
            to: None,
            status: None,
        };
        for (key, value) in table.iter() {
            let before = self.diags.len();
            match key.get_ref().as_ref() {
                "to" => r.to = self.string(value),
                "status" => r.status = self.int(value),
                _ => self.unknown(key, REDIRECT_KEYS, "[routes.action.redirect]"),
            }
            self.note_rejected(before, key, &mut r.rejected);
        }
        r
    }

    /// Remembers `key` as rejected when reading its value reported something.
    fn note_rejected(&self, before: usize, key: &Spanned<Cow<'_, str>>, rejected: &mut Rejected) {
        if self.diags.len() > before {
            rejected.0.push(key.get_ref().to_string());
        }
    }

    // ---- typed readers -------------------------------------------------------------

    fn table<'a, 'i>(&mut self, value: &'a Value<'i>, expected: &str) -> Option<&'a DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong_type(value, expected);
                None
            }
        }
    }

    fn string(&mut self, value: &Value<'_>) -> Option<Sp<String>> {
        match value.get_ref() {
            DeValue::String(s) => Some(Sp::new(s.to_string(), self.span(value.span()))),
            _ => {
                self.wrong_type(value, "a string");
                None
            }
        }
    }

    /// A string, or an integer kept as its source text with its radix prefix (for
    /// `ct_mark_mask = 0xff0000`).
    fn string_or_int(&mut self, value: &Value<'_>) -> Option<Sp<String>> {
        match value.get_ref() {
            DeValue::Integer(i) => {
                let prefix = match i.radix() {
                    16 => "0x",
                    8 => "0o",
                    2 => "0b",
                    _ => "",
                };
                Some(Sp::new(
                    format!("{prefix}{}", i.as_str()),
                    self.span(value.span()),
                ))
            }
            _ => self.string(value),
        }
    }

    fn int(&mut self, value: &Value<'_>) -> Option<Sp<i64>> {
        match value.get_ref() {
            DeValue::Integer(i) => match parse_int(i.as_str(), i.radix()) {
                Some(n) => Some(Sp::new(n, self.span(value.span()))),
                None => {
                    self.diags.push(
                        Diagnostic::error("E004", self.span(value.span()), "integer out of range")
                            .label("too large")
                            .help("use a value that fits in 64 bits"),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(value, "an integer");
                None
            }
        }
    }

    fn bool(&mut self, value: &Value<'_>) -> Option<Sp<bool>> {
        match value.get_ref() {
            DeValue::Boolean(b) => Some(Sp::new(*b, self.span(value.span()))),
            _ => {
                self.wrong_type(value, "`true` or `false`");
                None
            }
        }
    }

    fn port(&mut self, value: &Value<'_>) -> Option<Sp<RawPort>> {
        let span = self.span(value.span());
        match value.get_ref() {
            DeValue::Integer(_) => self
                .int(value)
                .map(|n| Sp::new(RawPort::Int(n.value), span)),
            DeValue::String(s) => Some(Sp::new(RawPort::Str(s.to_string()), span)),
            _ => {
                self.wrong_type(value, "a port number or a `\"from-to\"` string");
                None
            }
        }
    }

    /// `ports = 80`, `ports = "8000-8010"` or a list of both.
    fn ports(&mut self, value: &Value<'_>) -> Option<Sp<Vec<Sp<RawPort>>>> {
        let span = self.span(value.span());
        match value.get_ref() {
            DeValue::Array(items) => {
                let ports = items.iter().filter_map(|item| self.port(item)).collect();
                Some(Sp::new(ports, span))
            }
            _ => self.port(value).map(|p| Sp::new(vec![p], span)),
        }
    }

    fn string_list(&mut self, value: &Value<'_>) -> Option<Vec<Sp<String>>> {
        match value.get_ref() {
            DeValue::Array(items) => Some(items.iter().filter_map(|i| self.string(i)).collect()),
            _ => {
                self.wrong_type(value, "an array of strings");
                None
            }
        }
    }

    fn wrong_type(&mut self, value: &Value<'_>, expected: &str) {
        let found = match value.get_ref() {
            DeValue::String(_) => "a string",
            DeValue::Integer(_) => "an integer",
            DeValue::Float(_) => "a float",
            DeValue::Boolean(_) => "a boolean",
            DeValue::Datetime(_) => "a date-time",
            DeValue::Array(_) => "an array",
            DeValue::Table(_) => "a table",
        };
        self.diags.push(
            Diagnostic::error(
                "E004",
                self.span(value.span()),
                format!("expected {expected}, found {found}"),
            )
            .label(format!("this is {found}"))
            .help(format!("write {expected} here")),
        );
    }

    fn unknown(&mut self, key: &Spanned<Cow<'_, str>>, known: &[&str], section: &str) {
        let name = key.get_ref().as_ref();
        let span = self.span(key.span());
        let mut diag =
            Diagnostic::error("E003", span, format!("unknown key `{name}` in {section}"))
                .label("unknown key");
        let suggestion = known
            .iter()
            .map(|k| (strsim::jaro_winkler(name, k), *k))
            .filter(|(score, _)| *score > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        diag = if let Some((_, k)) = suggestion {
            diag.help(format!("did you mean `{k}`?"))
        } else if let Some((section, _)) = SECTIONS.iter().find(|(_, keys)| keys.contains(&name)) {
            diag.help(format!("`{name}` belongs in {section}"))
        } else {
            diag.help(format!("known keys here: {}", known.join(", ")))
        };
        self.diags.push(diag);
    }
}

fn parse_int(text: &str, radix: u32) -> Option<i64> {
    let digits: String = text.chars().filter(|c| *c != '_').collect();
    i64::from_str_radix(&digits, radix).ok()
}
