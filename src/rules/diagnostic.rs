//! Problems found in rule files, with the file, rule, line and column, printed the way
//! a compiler prints them: the offending line with a marker under it.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use codespan_reporting::diagnostic::{Diagnostic as Report, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in one file.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file the position refers to: the rule file, or its `script_file`.
    pub file: PathBuf,
    /// The rule's name, once it is known.
    pub rule: Option<String>,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// What to do about it, when there is something useful to say.
    pub help: Option<String>,
    #[serde(skip)]
    pub source: Option<Arc<str>>,
}

impl Diagnostic {
    pub fn error(file: impl Into<PathBuf>, line: usize, column: usize, message: String) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: file.into(),
            rule: None,
            line: line.max(1),
            column: column.max(1),
            message,
            help: None,
            source: None,
        }
    }

    pub fn warning(file: impl Into<PathBuf>, line: usize, column: usize, message: String) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, line, column, message)
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_source(mut self, source: Arc<str>) -> Self {
        self.source = Some(source);
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The multi-line form: message, `--> file:line:col`, the source line and a marker.
    pub fn render(&self) -> String {
        let Some(source) = &self.source else {
            return format!("{self}\n");
        };
        let file = SimpleFile::new(self.file.display().to_string(), source.as_ref());
        let range = self.byte_range(source);
        let mut report = match self.severity {
            Severity::Error => Report::error(),
            Severity::Warning => Report::warning(),
        }
        .with_message(&self.message)
        .with_labels(vec![Label::primary((), range)]);
        let mut notes = Vec::new();
        if let Some(rule) = &self.rule {
            notes.push(format!("rule: {rule}"));
        }
        if let Some(help) = &self.help {
            notes.push(format!("help: {help}"));
        }
        report = report.with_notes(notes);
        let config = term::Config::default();
        term::emit_into_string(&config, &file, &report).unwrap_or_else(|_| format!("{self}\n"))
    }

    /// The byte range of the marked token: from the column to the end of the word there,
    /// at least one character, never past the line.
    fn byte_range(&self, source: &str) -> std::ops::Range<usize> {
        let mut offset = 0usize;
        let mut line_text = "";
        for (index, line) in source.split_inclusive('\n').enumerate() {
            if index + 1 == self.line {
                line_text = line.trim_end_matches(['\n', '\r']);
                break;
            }
            offset += line.len();
        }
        if line_text.is_empty() && offset >= source.len() {
            let end = source.len();
            return end.saturating_sub(1)..end;
        }
        let start_in_line = line_text
            .char_indices()
            .nth(self.column.saturating_sub(1))
            .map(|(i, _)| i)
            .unwrap_or(line_text.len());
        let rest = &line_text[start_in_line..];
        let word = rest
            .char_indices()
            .find(|(_, c)| c.is_whitespace() || matches!(c, ':' | ',' | '(' | ')' | ';'))
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let start = offset + start_in_line;
        let len = if word == 0 {
            rest.chars().next().map(char::len_utf8).unwrap_or(0)
        } else {
            word
        };
        start..start + len
    }
}

impl fmt::Display for Diagnostic {
    /// The one-line form, for logs and status pages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {level}",
            self.file.display(),
            self.line,
            self.column
        )?;
        if let Some(rule) = &self.rule {
            write!(f, " in rule {rule}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, " ({help})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_source_line_with_a_marker() {
        let source: Arc<str> = Arc::from("name: a\nscirpt: x\n");
        let mut d = Diagnostic::error("rules/a.yaml", 2, 1, "unknown key `scirpt`".into())
            .with_help("did you mean `script`?")
            .with_source(source);
        d.rule = Some("a".into());
        let text = d.render();
        assert!(text.contains("rules/a.yaml:2:1"), "{text}");
        assert!(text.contains("scirpt: x"), "{text}");
        assert!(text.contains("^^^^^^"), "{text}");
        assert!(text.contains("did you mean `script`?"), "{text}");
    }

    #[test]
    fn one_line_form_names_file_rule_and_position() {
        let mut d = Diagnostic::error("r.yaml", 3, 7, "bad".into());
        d.rule = Some("x".into());
        assert_eq!(d.to_string(), "r.yaml:3:7: error in rule x: bad");
    }

    #[test]
    fn positions_past_the_end_do_not_panic() {
        let d = Diagnostic::error("r.yaml", 99, 99, "bad".into()).with_source(Arc::from("a\n"));
        assert!(d.render().contains("bad"));
    }
}
