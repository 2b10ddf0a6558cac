//! Output formats shared by read-only commands.

/// `-o table` (default) or `-o json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// Renders rows as left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// Cuts `s` to `max` characters, ending with `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
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
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let start: usize = widths.iter().take(state_col).map(|w| w + 2).sum();
    let mut out = String::new();
    for (n, line) in plain.lines().enumerate() {
        if n == 0 || n > rows.len() {
            out.push_str(line);
        } else {
            let state = &rows[n - 1][state_col];
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
}
