//! HTML building blocks. Everything that reaches a page goes through [`esc`] (hostnames,
//! labels and runner names come from agents).

use std::fmt::Write;

/// `s` with `& < > " '` escaped, safe in element text and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` percent-encoded for a query value or path segment (RFC 3986 unreserved kept).
pub fn url_enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;align-items:baseline;gap:16px}
header h1{font-size:20px;margin:0}header a{color:#fff;text-decoration:none}
header .meta{font-size:12px;color:#aab}
main{padding:16px 24px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:16px}
.card{background:#fff;border-radius:6px;padding:10px 16px;min-width:110px;box-shadow:0 1px 2px #0002;text-decoration:none;color:inherit}
.card .n{font-size:26px;font-weight:600}.card .l{font-size:12px;color:#667;text-transform:uppercase}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0002;border-radius:6px;overflow:hidden;margin-bottom:16px}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e6e8ee;font-size:14px;vertical-align:top}
th{background:#eef0f4;font-size:12px;text-transform:uppercase;color:#556}
td.mono,.mono{font-family:ui-monospace,monospace;font-size:13px}
.state{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}
.healthy{background:#2e9d57}.degraded{background:#d99a00}.lost{background:#c63b3b}.revoked{background:#777}
.unknown{background:#999}
form{margin-bottom:12px;display:flex;gap:8px;align-items:center;font-size:14px}
input,select,button{font-size:14px;padding:3px 6px}
h2{font-size:16px;margin:18px 0 8px}
ul.reasons{margin:0;padding-left:16px}
.muted{color:#778}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:12px;margin-bottom:16px}
svg.chart{background:#fff;border-radius:6px;box-shadow:0 1px 2px #0002}
";

/// A whole page: title, a meta refresh every `refresh_secs`, and `body`.
pub fn page(title: &str, refresh_secs: u32, generated: &str, home: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"{refresh_secs}\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{t}</title><style>{STYLE}</style></head><body>\
<header><h1><a href=\"{home}\">Drover</a></h1><span>{t}</span>\
<span class=\"meta\">generated {g}, refreshes every {refresh_secs}s</span></header>\
<main>{body}</main></body></html>\n",
        t = esc(title),
        g = esc(generated),
        home = esc(home),
    )
}

/// A state badge.
pub fn badge(state: &str) -> String {
    let class = match state {
        "healthy" | "degraded" | "lost" | "revoked" => state,
        _ => "unknown",
    };
    format!("<span class=\"state {class}\">{}</span>", esc(state))
}

/// A table with escaped header cells; `rows` cells are HTML already (escape them first).
pub fn table(id: &str, header: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    let mut out = format!("<table id=\"{}\"><thead><tr>", esc(id));
    for h in header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(
            out,
            "<tr><td colspan=\"{}\" class=\"muted\">{}</td></tr>",
            header.len(),
            esc(empty)
        );
    }
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(url_enc("site=lab & x/y"), "site%3Dlab%20%26%20x%2Fy");
    }

    #[test]
    fn badge_class_is_fixed() {
        assert_eq!(
            badge("\"><img>"),
            "<span class=\"state unknown\">&quot;&gt;&lt;img&gt;</span>"
        );
    }
}
