//! Property: parsing never panics, whatever the input, and errors always name the file.

use drover_proto::spec::{SpecError, parse_config};
use proptest::prelude::*;

const SEED: &str = include_str!("fixtures/every_key.toml");

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC*") {
        check(&text);
    }

    #[test]
    fn toml_like_text_never_panics(text in "([a-z_\\[\\]=\"\\. 0-9#\n-]){0,200}") {
        check(&text);
    }

    #[test]
    fn mutated_fixture_never_panics(cut in 0usize..SEED.len(), insert in "\\PC{0,8}") {
        let mut s = SEED.to_string();
        let cut = (0..=cut).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        s.insert_str(cut, &insert);
        check(&s);
        let truncated: String = SEED.chars().take(cut).collect();
        check(&truncated);
    }
}

fn check(text: &str) {
    match parse_config(text, "fuzz.toml") {
        Ok(_) => {}
        Err(SpecError::Syntax { file, line, .. }) => {
            assert_eq!(file, "fuzz.toml");
            assert!(line >= 1 && line <= text.lines().count().max(1) + 1);
        }
        Err(SpecError::Invalid { file, .. } | SpecError::TooLarge { file, .. }) => {
            assert_eq!(file, "fuzz.toml")
        }
    }
}

#[test]
fn deeply_nested_values_do_not_overflow_the_stack() {
    for depth in [100, 10_000, 200_000] {
        let text = format!("a = {}{}\n", "[".repeat(depth), "]".repeat(depth));
        let _ = drover_proto::spec::parse_config(&text, "deep.toml");
        let text = format!("a = {}1{}\n", "{ b = ".repeat(depth), " }".repeat(depth));
        let _ = drover_proto::spec::parse_config(&text, "deep.toml");
    }
}
