//! Finds where in the TOML source a field was written, so that a value that deserialized fine but
//! failed validation is still reported as `file:line:column`. `toml` drops spans once it has
//! deserialized, so the source is parsed a second time with `toml_edit`, which keeps them.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

pub struct Locator {
    doc: Option<ImDocument<String>>,
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// `models[1].source` → Key(models), Index(1), Key(source).
fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

impl Locator {
    pub fn new(src: &str) -> Self {
        Self {
            doc: ImDocument::parse(src.to_string()).ok(),
        }
    }

    /// Byte range of the deepest part of `path` present in the file: the key when the last
    /// segment found is a key (the line a person looks at), else the element or table.
    pub fn span(&self, path: &str) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut best = None;
        let mut node = Node::Table(doc.as_table());
        for seg in segments(path) {
            if let Node::Item(Item::Table(t)) = node {
                node = Node::Table(t);
            }
            let is_index = matches!(seg, Seg::Index(_));
            match Self::step(&node, seg, &mut best) {
                Some(next) => node = next,
                None => return best,
            }
            if is_index {
                best = node.span().or(best);
            }
        }
        best
    }

    fn step<'a>(node: &Node<'a>, seg: Seg<'_>, best: &mut Option<Range<usize>>) -> Option<Node<'a>> {
        match (*node, seg) {
            (Node::Table(t), Seg::Key(k)) => {
                if let Some(span) = t.key(k).and_then(|k| k.span()) {
                    *best = Some(span);
                }
                t.get(k).map(Node::Item)
            }
            (Node::Item(Item::ArrayOfTables(a)), Seg::Index(i)) => a.get(i).map(Node::Table),
            (Node::Item(Item::Value(v)), seg) | (Node::Value(v), seg) => match (v, seg) {
                (Value::Array(a), Seg::Index(i)) => a.get(i).map(Node::Value),
                (Value::InlineTable(t), Seg::Key(k)) => {
                    if let Some(span) = t.key(k).and_then(|k| k.span()) {
                        *best = Some(span);
                    }
                    t.get(k).map(Node::Value)
                }
                _ => None,
            },
            _ => None,
        }
    }
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Table(&'a Table),
    Item(&'a Item),
    Value(&'a Value),
}

impl Node<'_> {
    fn span(&self) -> Option<Range<usize>> {
        match self {
            Node::Table(t) => t.span(),
            Node::Item(i) => i.span(),
            Node::Value(v) => v.span(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::line_column;

    fn line(src: &str, path: &str) -> Option<usize> {
        Locator::new(src).span(path).map(|s| line_column(src, s.start).0)
    }

    #[test]
    fn finds_keys_in_tables_arrays_of_tables_and_inline_arrays() {
        let src =
            "[server]\nport = 0\n\n[[models]]\nid = \"a\"\n\n[[models]]\nid = \"b\"\nsource = \"x\"\n\n\
                   [[routes]]\nname = \"auto\"\ntiers = [\"a\",\n  \"c\"]\n";
        assert_eq!(line(src, "server.port"), Some(2));
        assert_eq!(line(src, "models[1].source"), Some(9));
        assert_eq!(line(src, "models[0].id"), Some(5));
        assert_eq!(line(src, "routes[0].tiers[1]"), Some(14));
        // Absent: the deepest present part (the table) is named.
        assert_eq!(line(src, "server.host"), Some(1));
        assert_eq!(line(src, "engine.device"), None);
    }
}
