//! Spans, diagnostics and their one renderer.
//!
//! Every finding of every layer is a [`Diagnostic`]: a stable code, a message, a primary
//! label at a byte span of one source file, optional secondary labels (a conflict points at
//! both routes) and a one-line help. Line and column are computed only when rendering, from
//! the [`SourceMap`] that owns the file texts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use annotate_snippets::{Level, Renderer, Snippet};
use serde::Serialize;

/// Index of a file in the [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub(crate) usize);

/// A byte range inside one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    pub file: FileId,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub(crate) fn new(file: FileId, range: std::ops::Range<usize>) -> Self {
        Self {
            file,
            start: range.start,
            end: range.end,
        }
    }
}

/// A value together with where it was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sp<T> {
    pub value: T,
    #[serde(skip)]
    pub span: Span,
}

impl<T> Sp<T> {
    pub(crate) fn new(value: T, span: Span) -> Self {
        Self { value, span }
    }
}

/// One loaded route file. `text` is what annotations quote; a file that is not UTF-8 keeps
/// its valid prefix so that the error can still point at the first bad byte.
#[derive(Debug)]
pub struct SourceFile {
    pub path: String,
    pub text: String,
    /// Byte offsets of the starts of lines, built on first use: line and column of a span
    /// cost a binary search, not a scan of the file, however many diagnostics there are.
    line_starts: std::sync::OnceLock<Vec<usize>>,
}

impl SourceFile {
    fn line_starts(&self) -> &[usize] {
        self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.text.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        })
    }

    /// 0-based line index of a byte offset, and the byte range of that line (without its
    /// `\n`).
    fn line_of(&self, offset: usize) -> (usize, std::ops::Range<usize>) {
        let starts = self.line_starts();
        let index = starts.partition_point(|&s| s <= offset).saturating_sub(1);
        (index, self.line_range(index))
    }

    fn line_range(&self, index: usize) -> std::ops::Range<usize> {
        let starts = self.line_starts();
        let start = starts[index];
        let end = starts
            .get(index + 1)
            .map_or(self.text.len(), |next| next - 1);
        start..end.max(start)
    }
}

/// All files of one run, in the order they were loaded.
#[derive(Debug, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub(crate) fn add(&mut self, path: String, text: String) -> FileId {
        self.files.push(SourceFile {
            path,
            text,
            line_starts: std::sync::OnceLock::new(),
        });
        FileId(self.files.len() - 1)
    }

    pub fn file(&self, id: FileId) -> &SourceFile {
        &self.files[id.0]
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, span: Span) -> (usize, usize) {
        let file = self.file(span.file);
        let offset = floor_char_boundary(&file.text, span.start.min(file.text.len()));
        let (index, line) = file.line_of(offset);
        let col = file.text[line.start..offset.max(line.start)]
            .chars()
            .count()
            + 1;
        (index + 1, col)
    }

    /// `path:line:col` of a span (the path with control characters escaped).
    pub fn location(&self, span: Span) -> String {
        let (line, col) = self.line_col(span);
        format!("{}:{line}:{col}", escape(&self.file(span.file).path))
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Characters that change how a terminal or a reader takes the text around them: bidi
/// embeddings, overrides and isolates, the marks LRM/RLM/ALM, zero-width spaces and joiners,
/// the line and paragraph separators and the byte-order mark. Refused in names, dropped
/// from nft comments, escaped wherever we echo text.
pub fn is_bidi_or_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
    )
}

/// Whether `c` must not reach a terminal as it is: control characters (C0 but `\n` and
/// `\t`, DEL, C1) and [`is_bidi_or_invisible`].
pub fn is_unsafe_char(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || is_bidi_or_invisible(c)
}

/// `text` with every [`is_unsafe_char`] written as `\u{1b}`: what we echo of route files,
/// kernel listings and state (names, values, source lines, comments, diffs) goes through
/// this, so that no escape sequence or bidi override reaches a terminal or a log raw.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    std::borrow::Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    if is_unsafe_char(c) {
        let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
    } else {
        out.push(c);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub span: Span,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub primary: Label,
    pub secondary: Vec<Label>,
    pub help: Option<String>,
    /// Quote no text of the file, only point at the place: for a file that is not TOML (or
    /// not UTF-8), which may be anything, a secret included.
    pub quote_span_only: bool,
}

impl Diagnostic {
    pub(crate) fn error(code: &'static str, span: Span, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            primary: Label {
                span,
                text: String::new(),
            },
            secondary: Vec::new(),
            help: None,
            quote_span_only: false,
        }
    }

    pub(crate) fn warning(code: &'static str, span: Span, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, span, message)
        }
    }

    pub(crate) fn label(mut self, text: impl Into<String>) -> Self {
        self.primary.text = text.into();
        self
    }

    pub(crate) fn also(mut self, span: Span, text: impl Into<String>) -> Self {
        self.secondary.push(Label {
            span,
            text: text.into(),
        });
        self
    }

    pub(crate) fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub(crate) fn quote_span_only(mut self) -> Self {
        self.quote_span_only = true;
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Sorts diagnostics by file, position, then code, and drops exact duplicates, so that
/// output is the same however the checks were ordered.
pub(crate) fn sort(diags: &mut Vec<Diagnostic>) {
    diags.sort_by(|a, b| {
        (a.primary.span, a.code, &a.message).cmp(&(b.primary.span, b.code, &b.message))
    });
    diags.dedup();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Github,
}

/// How many diagnostics the text and github formats print; the others are counted in one
/// closing line. A run's totals (`failed: N errors`) and the JSON document stay complete.
pub const MAX_PRINTED: usize = 50;

/// A source line longer than this (in characters) is shown as windows around its labels.
const MAX_LINE_CHARS: usize = 120;
/// Characters shown on each side of a label in a windowed line.
const WINDOW_CONTEXT: usize = 32;
/// At most this many characters of one label's text are shown.
const MAX_LABEL_CHARS: usize = 60;
/// Labels of one file further apart than this many lines are quoted in separate snippets,
/// so that the lines between them are not even looked at.
const MAX_SNIPPET_GAP: usize = 50;
/// Unlabelled lines this close to a label may be shown as context; farther ones are folded
/// away by the renderer and are not copied.
const CONTEXT_LINES: usize = 2;

/// Renders all diagnostics in one format. Text is rustc-like; JSON is one document with a
/// stable schema; github is one workflow annotation per line. Text and github print at
/// most [`MAX_PRINTED`] diagnostics; everything echoed has its control characters escaped.
pub fn render(sources: &SourceMap, diags: &[Diagnostic], format: Format, color: bool) -> String {
    match format {
        Format::Text => render_text(sources, diags, color),
        Format::Json => render_json(sources, diags),
        Format::Github => render_github(sources, diags),
    }
}

fn render_text(sources: &SourceMap, diags: &[Diagnostic], color: bool) -> String {
    let renderer = if color {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    let mut out = String::new();
    for diag in diags.iter().take(MAX_PRINTED) {
        out.push_str(&render_one(sources, diag, &renderer));
        out.push_str("\n\n");
    }
    if let Some(line) = not_shown(&diags[diags.len().min(MAX_PRINTED)..]) {
        let _ = writeln!(out, "{line} (`--format json` lists every one)\n");
    }
    out
}

/// `... and 4949 more errors and 2 more warnings`, or `None` when nothing is left out.
fn not_shown(rest: &[Diagnostic]) -> Option<String> {
    if rest.is_empty() {
        return None;
    }
    let errors = rest.iter().filter(|d| d.is_error()).count();
    let warnings = rest.len() - errors;
    let count = |n: usize, what: &str| format!("{n} more {what}{}", if n == 1 { "" } else { "s" });
    let parts: Vec<String> = [(errors, "error"), (warnings, "warning")]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| count(n, what))
        .collect();
    Some(format!("... and {}", parts.join(" and ")))
}

/// One diagnostic as rustc renders it. The quoted source is an excerpt built for this
/// diagnostic ([`Excerpt`]): escaped, windowed, only the lines that can be shown. The
/// renderer would compute the `-->` column from the excerpt, so each snippet's origin is a
/// placeholder that is replaced by the true `path:line:col` afterwards.
fn render_one(sources: &SourceMap, diag: &Diagnostic, renderer: &Renderer) -> String {
    let level = match diag.severity {
        Severity::Error => Level::Error,
        Severity::Warning => Level::Warning,
    };
    let mut labels = vec![(&diag.primary, level)];
    labels.extend(diag.secondary.iter().map(|l| (l, Level::Info)));
    let excerpts = excerpts(sources, &labels, diag.quote_span_only);
    let texts: Vec<String> = labels
        .iter()
        .map(|(l, _)| escape(&l.text).into_owned())
        .collect();
    let origins: Vec<String> = (0..excerpts.len())
        .map(|k| format!("\u{0}origin{k}\u{0}"))
        .collect();
    let snippets = excerpts.iter().zip(&origins).map(|(excerpt, origin)| {
        let mut snippet = Snippet::source(&excerpt.text)
            .origin(origin)
            .line_start(excerpt.line_start)
            .fold(true);
        for (label, range) in &excerpt.labels {
            snippet =
                snippet.annotation(labels[*label].1.span(range.clone()).label(&texts[*label]));
        }
        snippet
    });
    let message = escape(&diag.message);
    let help = diag.help.as_deref().map(escape);
    let title = level.title(&message).id(diag.code).snippets(snippets);
    let title = match &help {
        Some(help) => title.footer(Level::Help.title(help)),
        None => title,
    };
    let mut text = renderer.render(title).to_string();
    for (excerpt, origin) in excerpts.iter().zip(&origins) {
        text = replace_origin(&text, origin, &excerpt.location);
    }
    text
}

/// Replaces `origin:L:C` (the renderer's idea of the place) by `location`.
fn replace_origin(text: &str, origin: &str, location: &str) -> String {
    let Some(at) = text.find(origin) else {
        return text.to_owned();
    };
    let rest = &text[at + origin.len()..];
    let tail = rest
        .strip_prefix(':')
        .map(|r| r.trim_start_matches(|c: char| c.is_ascii_digit()))
        .and_then(|r| r.strip_prefix(':'))
        .map(|r| r.trim_start_matches(|c: char| c.is_ascii_digit()))
        .unwrap_or(rest);
    format!("{}{location}{tail}", &text[..at])
}

/// What one snippet quotes: consecutive lines of one file from `line_start`, with the
/// labels (index into the diagnostic's labels, byte range in `text`).
struct Excerpt {
    text: String,
    line_start: usize,
    labels: Vec<(usize, std::ops::Range<usize>)>,
    /// `path:line:col` of the snippet's first label.
    location: String,
}

/// The snippets of a diagnostic: per file (in order of first mention) and per cluster of
/// labels within [`MAX_SNIPPET_GAP`] lines, the primary label's first. A file with no text
/// (one that could not be read) has nothing to quote; its path is in the message.
fn excerpts(sources: &SourceMap, labels: &[(&Label, Level)], span_only: bool) -> Vec<Excerpt> {
    let mut files: Vec<FileId> = Vec::new();
    for (label, _) in labels {
        if !files.contains(&label.span.file) {
            files.push(label.span.file);
        }
    }
    let mut out = Vec::new();
    for file in files {
        let source = sources.file(file);
        if source.text.is_empty() {
            continue;
        }
        // (line index, label index, byte range clamped to that line)
        let mut placed: Vec<(usize, usize, std::ops::Range<usize>)> = labels
            .iter()
            .enumerate()
            .filter(|(_, (l, _))| l.span.file == file)
            .map(|(i, (l, _))| {
                let range = clamp(&source.text, l.span);
                let (line, bounds) = source.line_of(range.start);
                let end = range.end.min(bounds.end).max(range.start);
                (line, i, range.start..end)
            })
            .collect();
        let primary_line = placed[0].0;
        placed.sort_by_key(|(line, i, _)| (*line, *i));
        let mut clusters: Vec<Vec<(usize, usize, std::ops::Range<usize>)>> = Vec::new();
        for p in placed {
            match clusters.last_mut() {
                Some(c) if p.0 - c[c.len() - 1].0 <= MAX_SNIPPET_GAP => c.push(p),
                _ => clusters.push(vec![p]),
            }
        }
        let first = clusters
            .iter()
            .position(|c| c.iter().any(|p| p.0 == primary_line && p.1 == 0))
            .unwrap_or(0);
        let mine = clusters.remove(first);
        let ordered = std::iter::once(mine).chain(clusters);
        for cluster in ordered {
            out.push(excerpt(sources, file, cluster, span_only));
        }
    }
    out
}

/// The lines of one cluster of labels: labelled lines escaped and windowed, lines near a
/// label escaped and cut, the others (folded away by the renderer) left empty.
fn excerpt(
    sources: &SourceMap,
    file: FileId,
    mut cluster: Vec<(usize, usize, std::ops::Range<usize>)>,
    span_only: bool,
) -> Excerpt {
    let source = sources.file(file);
    // The snippet's first annotation gives its header: the primary label, else the first.
    cluster.sort_by_key(|(line, i, _)| (*i, *line));
    let head = cluster[0].clone();
    let location = sources.location(Span::new(file, head.2.clone()));
    let first_line = cluster.iter().map(|p| p.0).min().unwrap_or(0);
    let last_line = cluster.iter().map(|p| p.0).max().unwrap_or(0);
    let mut text = String::new();
    let mut labels = Vec::new();
    for line in first_line..=last_line {
        if line > first_line {
            text.push('\n');
        }
        let bounds = source.line_range(line);
        let line_text = &source.text[bounds.clone()];
        let here: Vec<&(usize, usize, std::ops::Range<usize>)> =
            cluster.iter().filter(|p| p.0 == line).collect();
        if !here.is_empty() {
            let marks: Vec<std::ops::Range<usize>> = here
                .iter()
                .map(|p| p.2.start - bounds.start..p.2.end - bounds.start)
                .collect();
            let (shown, ranges) = display_line(line_text, &marks, span_only);
            let base = text.len();
            text.push_str(&shown);
            for (p, r) in here.iter().zip(ranges) {
                labels.push((p.1, base + r.start..base + r.end));
            }
        } else if !span_only && cluster.iter().any(|p| p.0.abs_diff(line) <= CONTEXT_LINES) {
            text.push_str(&display_line(line_text, &[], false).0);
        }
    }
    // The renderer takes the annotations in the order given; the first names the snippet.
    labels.sort_by_key(|(i, _)| *i);
    Excerpt {
        text,
        line_start: first_line + 1,
        labels,
        location,
    }
}

/// One source line as shown: control characters escaped; a long line cut to windows around
/// `marks` (byte ranges within the line), joined by `...`; with `span_only`, nothing of the
/// line at all, only where the marks are. Returns the text and where each mark landed.
fn display_line(
    line: &str,
    marks: &[std::ops::Range<usize>],
    span_only: bool,
) -> (String, Vec<std::ops::Range<usize>>) {
    // Byte positions throughout, moved by characters: a line may be megabytes long.
    let back = |at: usize, chars: usize| {
        line[..at]
            .char_indices()
            .rev()
            .take(chars)
            .last()
            .map_or(at, |(i, _)| i)
    };
    let ahead = |at: usize, chars: usize| {
        line[at..]
            .char_indices()
            .nth(chars)
            .map_or(line.len(), |(i, _)| at + i)
    };
    let marks: Vec<(usize, usize)> = marks
        .iter()
        .map(|m| {
            let start = floor_char_boundary(line, m.start.min(line.len()));
            // Quoting only the span still quotes the file: show where, not what.
            let end = if span_only {
                start
            } else {
                floor_char_boundary(line, m.end.min(line.len()))
                    .max(start)
                    .min(ahead(start, MAX_LABEL_CHARS))
            };
            (start, end)
        })
        .collect();
    let short = line.len() <= MAX_LINE_CHARS || line.chars().count() <= MAX_LINE_CHARS;
    let mut windows: Vec<(usize, usize)> = if span_only {
        marks.clone()
    } else if short {
        vec![(0, line.len())]
    } else if marks.is_empty() {
        vec![(0, ahead(0, MAX_LINE_CHARS))]
    } else {
        marks
            .iter()
            .map(|&(s, e)| (back(s, WINDOW_CONTEXT), ahead(e, WINDOW_CONTEXT)))
            .collect()
    };
    windows.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(windows.len());
    for w in windows {
        match merged.last_mut() {
            Some(last) if w.0 <= last.1 => last.1 = last.1.max(w.1),
            _ => merged.push(w),
        }
    }
    let wanted: BTreeSet<usize> = marks.iter().flat_map(|&(s, e)| [s, e]).collect();
    let mut at: BTreeMap<usize, usize> = BTreeMap::new();
    let mut out = String::new();
    for &(a, b) in &merged {
        if a > 0 {
            out.push_str("...");
        }
        for (i, c) in line[a..b].char_indices() {
            if wanted.contains(&(a + i)) {
                at.insert(a + i, out.len());
            }
            push_escaped(&mut out, c);
        }
        at.entry(b).or_insert(out.len());
    }
    if !span_only && merged.last().is_some_and(|&(_, b)| b < line.len()) {
        out.push_str("...");
    }
    let ranges = marks
        .iter()
        .map(|&(s, e)| {
            let start = at.get(&s).copied().unwrap_or(out.len());
            let end = at.get(&e).copied().unwrap_or(start).max(start);
            start..end
        })
        .collect();
    (out, ranges)
}

/// A span made safe to annotate: inside the text, on character boundaries, at least one
/// character wide where the text allows it (an empty span renders no caret).
fn clamp(text: &str, span: Span) -> std::ops::Range<usize> {
    let start = floor_char_boundary(text, span.start.min(text.len()));
    let mut end = floor_char_boundary(text, span.end.min(text.len())).max(start);
    if end == start {
        end = text[start..]
            .chars()
            .next()
            .filter(|c| *c != '\n')
            .map_or(start, |c| start + c.len_utf8());
    }
    start..end
}

type Text<'a> = std::borrow::Cow<'a, str>;

#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    severity: Severity,
    code: &'a str,
    message: Text<'a>,
    file: Text<'a>,
    line: usize,
    column: usize,
    label: Text<'a>,
    help: Option<Text<'a>>,
    related: Vec<JsonRelated<'a>>,
}

#[derive(Serialize)]
struct JsonRelated<'a> {
    file: Text<'a>,
    line: usize,
    column: usize,
    label: Text<'a>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    errors: usize,
    warnings: usize,
    diagnostics: Vec<JsonDiagnostic<'a>>,
}

/// Every diagnostic (the document's size is linear in the input; a program reads it),
/// strings escaped like the text format's.
fn render_json(sources: &SourceMap, diags: &[Diagnostic]) -> String {
    let diagnostics = diags
        .iter()
        .map(|d| {
            let (line, column) = sources.line_col(d.primary.span);
            JsonDiagnostic {
                severity: d.severity,
                code: d.code,
                message: escape(&d.message),
                file: escape(&sources.file(d.primary.span.file).path),
                line,
                column,
                label: escape(&d.primary.text),
                help: d.help.as_deref().map(escape),
                related: d
                    .secondary
                    .iter()
                    .map(|l| {
                        let (line, column) = sources.line_col(l.span);
                        JsonRelated {
                            file: escape(&sources.file(l.span.file).path),
                            line,
                            column,
                            label: escape(&l.text),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let report = JsonReport {
        errors: diags.iter().filter(|d| d.is_error()).count(),
        warnings: diags.iter().filter(|d| !d.is_error()).count(),
        diagnostics,
    };
    let mut out = serde_json::to_string_pretty(&report).unwrap_or_default();
    out.push('\n');
    out
}

/// GitHub workflow commands: `::error file=F,line=L,col=C,title=CODE::message`. Values are
/// escaped as the runner expects (`%`, CR, LF; and `,` `:` inside properties), after
/// control characters. At most [`MAX_PRINTED`], then one `::notice::` with the rest.
fn render_github(sources: &SourceMap, diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diags.iter().take(MAX_PRINTED) {
        let (line, col) = sources.line_col(d.primary.span);
        let kind = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut message = d.message.clone();
        if let Some(help) = &d.help {
            message.push_str("\nhelp: ");
            message.push_str(help);
        }
        let _ = writeln!(
            out,
            "::{kind} file={},line={line},col={col},title={}::{}",
            escape_property(&escape(&sources.file(d.primary.span.file).path)),
            d.code,
            escape_data(&escape(&message))
        );
    }
    if let Some(line) = not_shown(&diags[diags.len().min(MAX_PRINTED)..]) {
        let _ = writeln!(out, "::notice::{}", escape_data(&line));
    }
    out
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_not_bytes() {
        let mut map = SourceMap::default();
        let id = map.add("f.toml".into(), "a = 1\nné = \"x\"\n".into());
        let offset = "a = 1\nné = ".len();
        assert_eq!(map.line_col(Span::new(id, offset..offset + 1)), (2, 6));
    }

    /// A label far into a long line with an escape sequence before it: the line is
    /// windowed and escaped, and the header still gives the true column.
    #[test]
    fn long_lines_are_windowed_and_escaped_with_the_true_location() {
        let mut map = SourceMap::default();
        let line = format!("a = \"\u{1b}[2J{}\" # x = 1", "y".repeat(300));
        let offset = line.find('#').expect("a comment");
        let id = map.add("f.toml".into(), format!("{line}\n"));
        let diag =
            Diagnostic::error("E003", Span::new(id, offset..offset + 1), "bad \u{7}").label("here");
        let text = render(&map, &[diag], Format::Text, false);
        let col = line[..offset].chars().count() + 1;
        assert!(text.contains(&format!("--> f.toml:1:{col}\n")), "{text}");
        assert!(text.contains("bad \\u{7}"), "{text}");
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text}");
        assert!(text.lines().all(|l| l.len() < 160), "{text}");
        assert!(text.contains("...yyy"), "{text}");
    }

    #[test]
    fn only_fifty_diagnostics_are_printed() {
        let mut map = SourceMap::default();
        let id = map.add("f.toml".into(), "a\n".into());
        let diags: Vec<Diagnostic> = (0..60)
            .map(|_| Diagnostic::error("E003", Span::new(id, 0..1), "x"))
            .chain((0..3).map(|_| Diagnostic::warning("W001", Span::new(id, 0..1), "y")))
            .collect();
        let text = render(&map, &diags, Format::Text, false);
        assert_eq!(text.matches("error[E003]").count(), 50);
        assert!(
            text.contains("... and 10 more errors and 3 more warnings"),
            "{text}"
        );
        let github = render(&map, &diags, Format::Github, false);
        assert_eq!(github.lines().count(), 51, "{github}");
    }

    #[test]
    fn github_escapes_newlines_and_property_separators() {
        assert_eq!(escape_data("a\nb%"), "a%0Ab%25");
        assert_eq!(escape_property("c:/x,y"), "c%3A/x%2Cy");
    }
}
