//! Output formats shared by read-only commands.

/// `-o table` (default) or `-o json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// Whether `c` must not reach a terminal as itself: control characters (C0, DEL, C1: an
/// `ESC ] 0 ; ... BEL` retitles the terminal, other sequences move the cursor or clear the
/// screen) and the invisible bidirectional and zero-width formatting characters.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// `s` with every control or invisible formatting character written as an escape
/// (`\u{1b}`), so a value an agent or a spec chose (hostname, selector, error text) is
/// shown, never obeyed, by the admin's terminal. For human output only; JSON stays exact.
pub fn clean(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The one gate of human output: [`clean`] line by line, keeping line breaks and, when
/// `colour` is on, only the colour codes [`paint_state`] writes. Every table and text
/// report is printed through this.
pub fn human(text: &str, colour: bool) -> String {
    const SGR: [&str; 5] = ["\x1b[0m", "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[90m"];
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split('\n').enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let mut rest = line;
        while !rest.is_empty() {
            match rest.find('\x1b') {
                None => {
                    out.push_str(&clean(rest));
                    break;
                }
                Some(i) => {
                    out.push_str(&clean(&rest[..i]));
                    let tail = &rest[i..];
                    match SGR.iter().find(|c| colour && tail.starts_with(**c)) {
                        Some(code) => {
                            out.push_str(code);
                            rest = &tail[code.len()..];
                        }
                        None => {
                            out.push_str(&clean("\x1b"));
                            rest = &tail[1..];
                        }
                    }
                }
            }
        }
    }
    out
}

/// Prints `text` to stdout through [`human`]; a reader that went away is an error for
/// `main` to end on quietly (see [`drover_proto::stdout`]).
pub fn print(text: &str, colour: bool) -> std::io::Result<()> {
    drover_proto::stdout::write(&human(text, colour))
}

/// Renders rows as left-aligned columns separated by two spaces. Cells go through
/// [`clean`] first, so widths count what is shown.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<std::borrow::Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    // Padded by hand: a `{:<w$}` width over 65,535 panics, and a cell can be that long
    // (a token with thousands of labels).
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(c);
            if i + 1 < cells.len() {
                let pad = widths[i].saturating_sub(c.chars().count()) + 2;
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in &rows {
        line(row.iter().map(|c| c.as_ref()).collect(), &mut out);
    }
    out
}

/// `s` through [`clean`], cut to `max` characters, ending with `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    let s = clean(s);
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Whether stdout gets colours: a terminal, and `NO_COLOR` unset.
pub fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `text` (already padded) in the colour of lease state `state`, when `on`.
pub fn paint_state(state: &str, text: &str, on: bool) -> String {
    let code = match state {
        "healthy" | "applied" | "complete" => "32",
        "degraded" | "progressing" | "pushed" | "waiting" => "33",
        "lost" | "refused" | "halted" | "failed" => "31",
        _ => "90",
    };
    if on {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Like [`table`], with the column `state_col` coloured by its value when `colour` is on.
pub fn table_coloured(
    header: &[&str],
    rows: &[Vec<String>],
    state_col: usize,
    colour: bool,
) -> String {
    let plain = table(header, rows);
    if !colour {
        return plain;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(clean(cell).chars().count());
            }
        }
    }
    let start: usize = widths.iter().take(state_col).map(|w| w + 2).sum();
    let mut out = String::new();
    for (n, line) in plain.lines().enumerate() {
        if n == 0 || n > rows.len() {
            out.push_str(line);
        } else {
            let state = clean(&rows[n - 1][state_col]);
            let state = state.as_ref();
            let chars: Vec<char> = line.chars().collect();
            let end = (start + state.chars().count()).min(chars.len());
            let a: String = chars[..start.min(chars.len())].iter().collect();
            let b: String = chars[start.min(chars.len())..end].iter().collect();
            let c: String = chars[end..].iter().collect();
            out.push_str(&a);
            out.push_str(&paint_state(state, &b, true));
            out.push_str(&c);
        }
        out.push('\n');
    }
    out
}

/// `k=v,k=v` from a label map, sorted.
pub fn labels(map: &std::collections::HashMap<String, String>) -> String {
    let mut v: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    v.join(",")
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligns() {
        let t = super::table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }

    #[test]
    fn clips_and_colours() {
        assert_eq!(super::clip("abcdef", 4), "abc…");
        assert_eq!(super::clip("abc", 4), "abc");
        let rows = vec![vec!["a1".to_string(), "lost".to_string(), "x".to_string()]];
        let t = super::table_coloured(&["ID", "STATE", "R"], &rows, 1, true);
        assert_eq!(t, "ID  STATE  R\na1  \x1b[31mlost\x1b[0m   x\n");
        let plain = super::table_coloured(&["ID", "STATE", "R"], &rows, 1, false);
        assert_eq!(plain, "ID  STATE  R\na1  lost   x\n");
    }

    #[test]
    fn huge_cells_do_not_panic() {
        // A token with ~9,000 labels made a column wider than a format width may be.
        let wide = "k=v,".repeat(20_000);
        let t = super::table(
            &["LABELS", "STATUS"],
            &[vec![wide.clone(), "active".into()]],
        );
        assert!(t.lines().nth(1).unwrap().starts_with(&wide));
        assert!(t.lines().nth(1).unwrap().ends_with("  active"));
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        let host = "box\x1b]0;pwned\x07\x1b[2J\u{202e}gpj.exe\r\nfake line";
        let t = super::table(
            &["HOSTNAME", "STATE"],
            &[vec![host.into(), "healthy".into()]],
        );
        assert!(
            !t.contains('\x1b') && !t.contains('\x07') && !t.contains('\r'),
            "{t:?}"
        );
        assert!(!t.contains('\u{202e}'), "{t:?}");
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(
            t.contains("box\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{202e}gpj.exe\\r\\nfake line"),
            "{t}"
        );
        // The gate keeps line breaks and, with colour on, only our own colour codes.
        let host = "box\x1b]0;pwned\x07\x1b[2J";
        let text = format!("a \x1b[31mlost\x1b[0m {host}\nnext");
        let on = super::human(&text, true);
        assert!(
            on.starts_with("a \x1b[31mlost\x1b[0m box\\u{1b}]0;"),
            "{on:?}"
        );
        assert_eq!(on.matches('\x1b').count(), 2, "{on:?}");
        assert_eq!(on.lines().count(), 2, "{on:?}");
        let off = super::human(&text, false);
        assert!(!off.contains('\x1b'), "{off:?}");
        assert_eq!(super::clean("plain text ü"), "plain text ü");
        assert_eq!(super::clip("a\nb\x1bc", 80), "a\\nb\\u{1b}c");
    }
}
