//! TOML paths and source positions: turns a byte span or a key path into a line number so
//! every error and warning names where it comes from.

use std::fmt;

use toml::de::{DeTable, DeValue};

/// One step of a path into a TOML document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A path into a TOML document, e.g. `runners[0].docker.image`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TomlPath(pub Vec<Segment>);

impl TomlPath {
    /// The path of the `[[runners]]` table number `index`.
    pub fn runner(index: usize) -> Self {
        TomlPath(vec![Segment::Key("runners".into()), Segment::Index(index)])
    }

    /// This path with `key` appended.
    pub fn key(&self, key: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Segment::Key(key.to_string()));
        TomlPath(v)
    }

    /// From the path `serde_ignored` reports for an unknown key.
    pub(crate) fn from_ignored(path: &serde_ignored::Path<'_>) -> Self {
        fn walk(p: &serde_ignored::Path<'_>, out: &mut Vec<Segment>) {
            match p {
                serde_ignored::Path::Root => {}
                serde_ignored::Path::Seq { parent, index } => {
                    walk(parent, out);
                    out.push(Segment::Index(*index));
                }
                serde_ignored::Path::Map { parent, key } => {
                    walk(parent, out);
                    out.push(Segment::Key(key.clone()));
                }
                serde_ignored::Path::Some { parent }
                | serde_ignored::Path::NewtypeStruct { parent }
                | serde_ignored::Path::NewtypeVariant { parent } => walk(parent, out),
            }
        }
        let mut out = Vec::new();
        walk(path, &mut out);
        TomlPath(out)
    }
}

impl fmt::Display for TomlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Byte offset → 1-based (line, column); column counts characters.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let mut line = 1;
    let mut line_start = 0;
    for (i, b) in text.as_bytes().iter().enumerate().take(offset) {
        if *b == b'\n' {
            line += 1;
            line_start = i + 1;
        }
    }
    let col = text
        .get(line_start..offset)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Where a path sits: the (line, column) of its value when the whole path exists and holds
/// a plain value, else of its key (or, failing that, of its closest existing parent's key).
pub(crate) fn position_of(
    text: &str,
    root: &DeTable<'_>,
    path: &TomlPath,
) -> Option<(usize, usize)> {
    let mut table: Option<&DeTable<'_>> = Some(root);
    let mut value: Option<&DeValue<'_>> = None;
    let mut best: Option<usize> = None;
    // The value span of the whole path, when it exists and is not a table.
    let mut plain: Option<usize> = None;
    for seg in &path.0 {
        plain = None;
        match seg {
            Segment::Key(k) => {
                let Some((key, v)) =
                    table.and_then(|t| t.iter().find(|(key, _)| key.get_ref().as_ref() == k))
                else {
                    break;
                };
                best = Some(key.span().start);
                value = Some(v.get_ref());
                table = v.get_ref().as_table();
                plain = table.is_none().then(|| v.span().start);
            }
            Segment::Index(n) => {
                let Some(item) = value.and_then(|v| v.as_array()).and_then(|a| a.get(*n)) else {
                    break;
                };
                // An array-of-tables item's span covers its header `[[runners]]`.
                best = Some(item.span().start);
                value = Some(item.get_ref());
                table = item.get_ref().as_table();
            }
        }
    }
    plain.or(best).map(|off| line_col(text, off))
}

/// The line of [`position_of`].
pub(crate) fn line_of(text: &str, root: &DeTable<'_>, path: &TomlPath) -> Option<usize> {
    position_of(text, root, path).map(|(line, _)| line)
}

/// The deepest key path whose value's source span holds byte `offset`: the key of a value
/// the deserializer refused.
pub(crate) fn path_at(root: &DeTable<'_>, offset: usize) -> Option<TomlPath> {
    fn walk(
        v: &DeValue<'_>,
        span: std::ops::Range<usize>,
        offset: usize,
        here: &mut Vec<Segment>,
        best: &mut Option<(usize, TomlPath)>,
    ) {
        if span.contains(&offset) && best.as_ref().is_none_or(|(len, _)| span.len() <= *len) {
            *best = Some((span.len(), TomlPath(here.clone())));
        }
        match v {
            DeValue::Table(t) => {
                for (k, item) in t.iter() {
                    here.push(Segment::Key(k.get_ref().to_string()));
                    walk(item.get_ref(), item.span(), offset, here, best);
                    here.pop();
                }
            }
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    here.push(Segment::Index(i));
                    walk(item.get_ref(), item.span(), offset, here, best);
                    here.pop();
                }
            }
            _ => {}
        }
    }
    let mut best = None;
    let mut here = Vec::new();
    for (k, item) in root.iter() {
        here.push(Segment::Key(k.get_ref().to_string()));
        walk(item.get_ref(), item.span(), offset, &mut here, &mut best);
        here.pop();
    }
    best.map(|(_, p)| p)
}

/// The value at `path`, if present.
pub(crate) fn value_at<'a, 'i>(root: &'a DeTable<'i>, path: &TomlPath) -> Option<&'a DeValue<'i>> {
    let mut table: Option<&DeTable<'i>> = Some(root);
    let mut value: Option<&DeValue<'i>> = None;
    for seg in &path.0 {
        match seg {
            Segment::Key(k) => {
                let (_, v) = table?.iter().find(|(key, _)| key.get_ref().as_ref() == k)?;
                value = Some(v.get_ref());
                table = v.get_ref().as_table();
            }
            Segment::Index(n) => {
                let item = value?.as_array()?.get(*n)?;
                value = Some(item.get_ref());
                table = item.get_ref().as_table();
            }
        }
    }
    value
}
