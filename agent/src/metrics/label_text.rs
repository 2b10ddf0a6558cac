//! Label values that may hold any text. prometheus-client writes label values as they are,
//! but the text format needs `\`, `"` and newlines escaped: a runner named
//! `say "hi"` would otherwise break the whole scrape. Runner names are free text (as in
//! gitlab-runner), so every label value that can come from a config goes through here.

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// A label value, escaped when encoded (Prometheus text format: `\\`, `\"`, `\n`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelText(pub String);

impl LabelText {
    /// The text, unescaped.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for LabelText {
    fn from(s: String) -> Self {
        LabelText(s)
    }
}

impl From<&str> for LabelText {
    fn from(s: &str) -> Self {
        LabelText(s.to_string())
    }
}

impl EncodeLabelValue for &LabelText {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        <LabelText as EncodeLabelValue>::encode(*self, encoder)
    }
}

impl EncodeLabelValue for LabelText {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}
