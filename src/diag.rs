//! Spans, diagnostics and their one renderer.
//!
//! Every finding of every layer is a [`Diagnostic`]: a stable code, a message, a primary
//! label at a byte span of one source file, optional secondary labels (a conflict points at
//! both routes) and a one-line help. Line and column are computed only when rendering, from
//! the [`SourceMap`] that owns the file texts.

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
}

/// All files of one run, in the order they were loaded.
#[derive(Debug, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub(crate) fn add(&mut self, path: String, text: String) -> FileId {
        self.files.push(SourceFile { path, text });
        FileId(self.files.len() - 1)
    }

    pub fn file(&self, id: FileId) -> &SourceFile {
        &self.files[id.0]
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, span: Span) -> (usize, usize) {
        let text = &self.file(span.file).text;
        let offset = floor_char_boundary(text, span.start.min(text.len()));
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    /// `path:line:col` of a span.
    pub fn location(&self, span: Span) -> String {
        let (line, col) = self.line_col(span);
        format!("{}:{line}:{col}", self.file(span.file).path)
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
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

/// Renders all diagnostics in one format. Text is rustc-like; JSON is one document with a
/// stable schema; github is one workflow annotation per line.
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
    for diag in diags {
        let level = match diag.severity {
            Severity::Error => Level::Error,
            Severity::Warning => Level::Warning,
        };
        let mut snippets = Vec::new();
        let mut labels = vec![(&diag.primary, level)];
        labels.extend(diag.secondary.iter().map(|l| (l, Level::Info)));
        // One snippet per file, files in order of first mention.
        let mut files: Vec<FileId> = Vec::new();
        for (label, _) in &labels {
            if !files.contains(&label.span.file) {
                files.push(label.span.file);
            }
        }
        // A file with no text (one that could not be read) has nothing to quote; its path
        // is in the message.
        for file in files {
            let source = sources.file(file);
            if source.text.is_empty() {
                continue;
            }
            let mut snippet = Snippet::source(&source.text)
                .origin(&source.path)
                .line_start(1)
                .fold(true);
            for (label, level) in labels.iter().filter(|(l, _)| l.span.file == file) {
                snippet = snippet.annotation(
                    level
                        .span(clamp(&source.text, label.span))
                        .label(&label.text),
                );
            }
            snippets.push(snippet);
        }
        let title = level.title(&diag.message).id(diag.code).snippets(snippets);
        let message = match &diag.help {
            Some(help) => title.footer(Level::Help.title(help)),
            None => title,
        };
        let _ = writeln!(out, "{}\n", renderer.render(message));
    }
    out
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

#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    severity: Severity,
    code: &'a str,
    message: &'a str,
    file: &'a str,
    line: usize,
    column: usize,
    label: &'a str,
    help: Option<&'a str>,
    related: Vec<JsonRelated<'a>>,
}

#[derive(Serialize)]
struct JsonRelated<'a> {
    file: &'a str,
    line: usize,
    column: usize,
    label: &'a str,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    errors: usize,
    warnings: usize,
    diagnostics: Vec<JsonDiagnostic<'a>>,
}

fn render_json(sources: &SourceMap, diags: &[Diagnostic]) -> String {
    let diagnostics = diags
        .iter()
        .map(|d| {
            let (line, column) = sources.line_col(d.primary.span);
            JsonDiagnostic {
                severity: d.severity,
                code: d.code,
                message: &d.message,
                file: &sources.file(d.primary.span.file).path,
                line,
                column,
                label: &d.primary.text,
                help: d.help.as_deref(),
                related: d
                    .secondary
                    .iter()
                    .map(|l| {
                        let (line, column) = sources.line_col(l.span);
                        JsonRelated {
                            file: &sources.file(l.span.file).path,
                            line,
                            column,
                            label: &l.text,
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
/// escaped as the runner expects (`%`, CR, LF; and `,` `:` inside properties).
fn render_github(sources: &SourceMap, diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diags {
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
            escape_property(&sources.file(d.primary.span.file).path),
            d.code,
            escape_data(&message)
        );
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

    #[test]
    fn github_escapes_newlines_and_property_separators() {
        assert_eq!(escape_data("a\nb%"), "a%0Ab%25");
        assert_eq!(escape_property("c:/x,y"), "c%3A/x%2Cy");
    }
}
