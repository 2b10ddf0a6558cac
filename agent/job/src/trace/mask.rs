//! Streaming replacement of secret values by `[MASKED]`, correct when a value is split
//! across writes.

/// What a secret value is replaced with.
pub const MASKED: &[u8] = b"[MASKED]";

/// Replaces every occurrence of any secret in a byte stream by [`MASKED`].
///
/// Invariant: bytes that could be the start of a secret are held back (at most the longest
/// secret's length minus one) until more data shows whether they are, or until
/// [`Masker::finish`]. Where secrets overlap, the longest match at the earliest position
/// wins.
pub struct Masker {
    /// Secret values, longest first, no empties, no duplicates.
    secrets: Vec<Vec<u8>>,
    /// `starts[b]`: some secret begins with byte `b`. Output is scanned for these bytes
    /// only, so text without them costs one table lookup a byte.
    starts: [bool; 256],
    /// Unmasked input not yet decided.
    pending: Vec<u8>,
}

impl Default for Masker {
    fn default() -> Self {
        Masker::new(std::iter::empty::<&[u8]>())
    }
}

impl Masker {
    /// A masker for `secrets` (empty values are ignored).
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut v: Vec<Vec<u8>> = secrets
            .into_iter()
            .map(|s| s.as_ref().to_vec())
            .filter(|s| !s.is_empty())
            .collect();
        v.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        v.dedup();
        let mut starts = [false; 256];
        for s in &v {
            starts[usize::from(s[0])] = true;
        }
        Masker {
            secrets: v,
            starts,
            pending: Vec::new(),
        }
    }

    /// Feeds `input`; appends what is decided (masked) to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.secrets.is_empty() {
            out.extend_from_slice(input);
            return;
        }
        self.pending.extend_from_slice(input);
        self.drain(out, false);
    }

    /// Ends the stream: appends everything still held back, masked.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.drain(out, true);
    }

    /// Bytes currently held back.
    pub fn held_back(&self) -> usize {
        self.pending.len()
    }

    fn drain(&mut self, out: &mut Vec<u8>, at_end: bool) {
        let p = std::mem::take(&mut self.pending);
        let mut i = 0;
        let mut plain_start = 0;
        while i < p.len() {
            // No secret starts before the next candidate byte: nothing to mask or hold back.
            match p[i..].iter().position(|&b| self.starts[usize::from(b)]) {
                Some(skip) => i += skip,
                None => {
                    i = p.len();
                    break;
                }
            }
            let rest = &p[i..];
            if !at_end
                && self
                    .secrets
                    .iter()
                    .any(|s| s.len() > rest.len() && s.starts_with(rest))
            {
                // Could still become a (longer) secret: decide when more data arrives.
                break;
            }
            match self.secrets.iter().find(|s| rest.starts_with(s)) {
                Some(s) => {
                    out.extend_from_slice(&p[plain_start..i]);
                    out.extend_from_slice(MASKED);
                    i += s.len();
                    plain_start = i;
                }
                None => i += 1,
            }
        }
        out.extend_from_slice(&p[plain_start..i]);
        self.pending = p[i..].to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(secrets: &[&str], chunks: &[&str]) -> String {
        let mut m = Masker::new(secrets.iter().map(|s| s.as_bytes()));
        let mut out = Vec::new();
        for c in chunks {
            m.push(c.as_bytes(), &mut out);
        }
        m.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_whole_values() {
        assert_eq!(run(&["s3cr3t"], &["a s3cr3t b"]), "a [MASKED] b");
        assert_eq!(run(&["s3cr3t"], &["s3cr3ts3cr3t"]), "[MASKED][MASKED]");
    }

    #[test]
    fn masks_values_split_across_writes() {
        assert_eq!(run(&["s3cr3t"], &["x s3c", "r3t y"]), "x [MASKED] y");
        assert_eq!(
            run(&["s3cr3t"], &["s", "3", "c", "r", "3", "t"]),
            "[MASKED]"
        );
    }

    #[test]
    fn holds_back_only_a_possible_prefix() {
        let mut m = Masker::new(["abcdef"]);
        let mut out = Vec::new();
        m.push(b"hello abc", &mut out);
        assert_eq!(out, b"hello ");
        assert_eq!(m.held_back(), 3);
        m.push(b"xyz", &mut out);
        assert_eq!(out, b"hello abcxyz");
        assert_eq!(m.held_back(), 0);
    }

    #[test]
    fn prefix_at_end_of_stream_is_flushed_unmasked() {
        assert_eq!(run(&["abcdef"], &["x abc"]), "x abc");
    }

    #[test]
    fn longest_overlapping_secret_wins() {
        assert_eq!(run(&["abc", "abcdef"], &["abc", "def"]), "[MASKED]");
        assert_eq!(run(&["abc", "abcdef"], &["abc", "dx"]), "[MASKED]dx");
        assert_eq!(run(&["bcd", "abc"], &["abcd"]), "[MASKED]d");
    }

    #[test]
    fn false_start_then_real_secret() {
        assert_eq!(run(&["aab"], &["a", "aab"]), "a[MASKED]");
        assert_eq!(run(&["abab"], &["ab", "abab"]), "[MASKED]ab");
    }

    proptest! {
        /// However the output is cut into writes, the result equals masking it in one go,
        /// and a secret never survives.
        #[test]
        fn chunking_does_not_matter(
            secret in "[a-c]{3,6}",
            text in "[a-d ]{0,60}",
            cuts in proptest::collection::vec(0usize..60, 0..8),
        ) {
            let whole = run(&[&secret], &[&text]);
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c <= text.len()).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts {
                chunks.push(&text[last..c]);
                last = c;
            }
            chunks.push(&text[last..]);
            let split = run(&[&secret], &chunks);
            prop_assert_eq!(&split, &whole);
            prop_assert!(!split.contains(&secret));
        }
    }
}
