//! Property: parsing never panics, whatever the input, and errors always name the file.

use drover_proto::spec::{SpecError, parse_config, parse_size};
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

    /// Sizes (`[runners.docker] memory`, `serve --min-disk-free`): never a panic; whole
    /// sizes in a unit mean what they say.
    #[test]
    fn sizes_never_panic(
        text in "[0-9.]{0,30} ?[kKmMgGtTpPiIbB]{0,3}|.{0,30}",
        n in 0u64..8192,
        unit in proptest::sample::select(vec![
            ("", 0u32), ("b", 0), ("k", 10), ("KiB", 10), ("mb", 20), ("MiB", 20), ("g", 30),
            ("GiB", 30), ("t", 40), ("p", 50),
        ]),
    ) {
        if let Ok(bytes) = parse_size(&text) {
            prop_assert!(bytes <= drover_proto::spec::size::MAX_SIZE);
        }
        prop_assert_eq!(parse_size(&format!("{n}{}", unit.0)), Ok(n << unit.1));
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
