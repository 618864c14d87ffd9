//! Where each value of a rule file sits: a map from key paths (`on.webhook.path`,
//! `tests.0.name`) to line and column, and the YAML problems serde does not report
//! precisely (duplicate keys, several documents).

use std::collections::{HashMap, HashSet};

use yaml_rust2::Event;
use yaml_rust2::parser::Parser;
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in a file: line and column, both starting at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_marker(marker: &Marker) -> Pos {
        // The scanner counts lines from 1 and columns from 0.
        Pos {
            line: marker.line(),
            column: marker.col() + 1,
        }
    }
}

/// How a scalar was written; a block scalar's content starts on the line after its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Quoted,
    Block,
}

/// The position of one key and of its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub key: Pos,
    pub value: Pos,
    /// `None` for mappings and sequences.
    pub style: Option<Style>,
}

/// Positions of every key path of one YAML document, and the problems found on the way.
#[derive(Debug, Default)]
pub struct Spans {
    entries: HashMap<String, Entry>,
    /// Duplicate keys and similar, each with the position of the offending key.
    pub problems: Vec<(Pos, String)>,
}

impl Spans {
    /// Indexes a YAML text. A syntax error is returned with its position; the serde pass
    /// reports it too, so callers usually keep only one of the two.
    pub fn index(text: &str) -> Result<Spans, (Pos, String)> {
        let mut walker = Walker {
            parser: Parser::new_from_str(text),
            spans: Spans::default(),
            documents: 0,
        };
        walker.stream()?;
        Ok(walker.spans)
    }

    /// The entry at a dotted path such as `on.webhook.path` or `tests.1.event`.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// The value position at a path, or the closest enclosing key that exists, so that a
    /// problem is always shown somewhere near where it belongs.
    pub fn value_or_parent(&self, path: &str) -> Pos {
        let mut current = path;
        loop {
            if let Some(entry) = self.entries.get(current) {
                return entry.value;
            }
            match current.rfind('.') {
                Some(cut) => current = &current[..cut],
                None => return Pos { line: 1, column: 1 },
            }
        }
    }

    /// The key position at a path, falling back like [`Spans::value_or_parent`].
    pub fn key_or_parent(&self, path: &str) -> Pos {
        match self.entries.get(path) {
            Some(entry) => entry.key,
            None => self.value_or_parent(path),
        }
    }
}

struct Walker<'a> {
    parser: Parser<std::str::Chars<'a>>,
    spans: Spans,
    documents: usize,
}

type Step = Result<(Event, Marker), (Pos, String)>;

impl Walker<'_> {
    fn next(&mut self) -> Step {
        self.parser
            .next_token()
            .map_err(|e| (Pos::from_marker(e.marker()), e.info().to_owned()))
    }

    fn stream(&mut self) -> Result<(), (Pos, String)> {
        loop {
            let (event, marker) = self.next()?;
            match event {
                Event::StreamEnd => return Ok(()),
                Event::DocumentStart => {
                    self.documents += 1;
                    if self.documents > 1 {
                        self.spans.problems.push((
                            Pos::from_marker(&marker),
                            "a rule file holds one rule, but a second YAML document \
                             starts here (`---`)"
                                .into(),
                        ));
                        return Ok(());
                    }
                    let (event, marker) = self.next()?;
                    self.node(event, marker, String::new(), None)?;
                }
                _ => {}
            }
        }
    }

    /// Reads one node whose first event is given, recording it at `path`.
    fn node(
        &mut self,
        event: Event,
        marker: Marker,
        path: String,
        key: Option<Pos>,
    ) -> Result<(), (Pos, String)> {
        let value = Pos::from_marker(&marker);
        let key = key.unwrap_or(value);
        match event {
            Event::Scalar(_, style, ..) => {
                let style = match style {
                    TScalarStyle::Plain => Style::Plain,
                    TScalarStyle::Literal | TScalarStyle::Folded => Style::Block,
                    _ => Style::Quoted,
                };
                self.record(path, key, value, Some(style));
            }
            Event::Alias(_) => self.record(path, key, value, Some(Style::Plain)),
            Event::SequenceStart(..) => {
                self.record(path.clone(), key, value, None);
                let mut index = 0usize;
                loop {
                    let (event, marker) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    self.node(event, marker, join(&path, &index.to_string()), None)?;
                    index += 1;
                }
            }
            Event::MappingStart(..) => {
                self.record(path.clone(), key, value, None);
                let mut seen: HashMap<String, Pos> = HashMap::new();
                let mut complex: HashSet<usize> = HashSet::new();
                loop {
                    let (event, marker) = self.next()?;
                    if matches!(event, Event::MappingEnd) {
                        break;
                    }
                    let key_pos = Pos::from_marker(&marker);
                    let name = match &event {
                        Event::Scalar(text, ..) => Some(text.clone()),
                        _ => None,
                    };
                    match name {
                        Some(name) => {
                            if let Some(first) = seen.get(&name) {
                                self.spans.problems.push((
                                    key_pos,
                                    format!(
                                        "duplicate key `{name}`: it is already set on line {}",
                                        first.line
                                    ),
                                ));
                            } else {
                                seen.insert(name.clone(), key_pos);
                            }
                            let (value_event, value_marker) = self.next()?;
                            self.node(
                                value_event,
                                value_marker,
                                join(&path, &name),
                                Some(key_pos),
                            )?;
                        }
                        None => {
                            // A mapping or sequence used as a key: serde refuses it with
                            // its own message; skip the key and its value here.
                            complex.insert(key_pos.line);
                            self.node(event, marker, join(&path, "?"), None)?;
                            let (value_event, value_marker) = self.next()?;
                            self.node(value_event, value_marker, join(&path, "?"), None)?;
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn record(&mut self, path: String, key: Pos, value: Pos, style: Option<Style>) {
        self.spans
            .entries
            .entry(path)
            .or_insert(Entry { key, value, style });
    }
}

fn join(path: &str, segment: &str) -> String {
    if path.is_empty() {
        segment.to_owned()
    } else {
        format!("{path}.{segment}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_block_scalars() {
        let text = "name: a\non:\n  webhook:\n    path: /x\nscript: |\n  let x = 1;\n";
        let spans = Spans::index(text).unwrap();
        let path = spans.get("on.webhook.path").unwrap();
        assert_eq!(path.key, Pos { line: 4, column: 5 });
        assert_eq!(
            path.value,
            Pos {
                line: 4,
                column: 11
            }
        );
        let script = spans.get("script").unwrap();
        assert_eq!(script.style, Some(Style::Block));
        assert_eq!(script.value, Pos { line: 6, column: 3 });
    }

    #[test]
    fn reports_duplicate_keys_at_the_second_one() {
        let text = "name: a\nvars:\n  x: 1\n  x: 2\n";
        let spans = Spans::index(text).unwrap();
        assert_eq!(spans.problems.len(), 1);
        let (pos, message) = &spans.problems[0];
        assert_eq!(*pos, Pos { line: 4, column: 3 });
        assert!(message.contains("duplicate key `x`"), "{message}");
        assert!(message.contains("line 3"), "{message}");
    }

    #[test]
    fn sequence_items_are_indexed() {
        let text = "tests:\n  - name: one\n  - name: two\n";
        let spans = Spans::index(text).unwrap();
        assert_eq!(spans.get("tests.1.name").unwrap().key.line, 3);
    }

    #[test]
    fn falls_back_to_the_closest_parent() {
        let text = "on:\n  webhook: {}\n";
        let spans = Spans::index(text).unwrap();
        assert_eq!(spans.value_or_parent("on.webhook.path").line, 2);
    }

    #[test]
    fn a_tab_is_a_positioned_error() {
        let err = Spans::index("name: a\non:\n\twebhook: {}\n").unwrap_err();
        assert_eq!(err.0.line, 3);
    }
}
