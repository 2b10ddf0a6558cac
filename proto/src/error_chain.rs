//! An error and its causes as one line, for both binaries' logs and CLI errors.

/// `e` and its sources, `: `-joined, each cause once (a message already in the text, or an
/// empty one, is not repeated), so a log says "connection refused" rather than only "error
/// sending request", and never "refused (os error 111): refused (os error 111)".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        let msg = c.to_string();
        if !msg.is_empty() && !out.contains(&msg) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&msg);
        }
        cause = c.source();
    }
    out
}
