//! Which of two build versions is newer, for the rule that a package installed after a
//! switch wins over an older upgraded binary. Versions are free text
//! (`drover_runtime::version_rule`); they compare as semver does where they look like it:
//! the dot-separated numbers before the first `-` or `+` compare as numbers (a missing one
//! is 0; a part that is no number compares as text after every number), then a release
//! is newer than any pre-release of it (`1.2.0` > `1.2.0-rc1`), then pre-releases compare
//! part by part the same way. Build metadata (`+...`) is ignored.

use std::cmp::Ordering;

/// `a` compared with `b`.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (core_a, pre_a) = split(a);
    let (core_b, pre_b) = split(b);
    cmp_parts(core_a, core_b).then_with(|| match (pre_a, pre_b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => cmp_parts(x, y),
    })
}

/// The core and the pre-release of `v` (build metadata dropped).
fn split(v: &str) -> (&str, Option<&str>) {
    let v = v.split('+').next().unwrap_or(v);
    match v.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (v, None),
    }
}

/// Dot-separated parts of `a` and `b`, one by one (a missing part is 0).
fn cmp_parts(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (x, y) => {
                let o = part(x.unwrap_or("0"), y.unwrap_or("0"));
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// One part: numbers numerically, a number before text, text as text.
fn part(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::compare;
    use std::cmp::Ordering::{Equal, Greater, Less};

    #[test]
    fn numbers_compare_as_numbers_and_a_release_beats_its_pre_release() {
        assert_eq!(compare("1.10.0", "1.9.3"), Greater);
        assert_eq!(compare("1.2", "1.2.0"), Equal);
        assert_eq!(compare("1.2.0", "1.2.0-rc1"), Greater);
        assert_eq!(
            compare("1.2.0-rc2", "1.2.0-rc10"),
            Greater,
            "text parts compare as text"
        );
        assert_eq!(compare("1.2.0-rc.2", "1.2.0-rc.10"), Less);
        assert_eq!(compare("0.1.0", "9.9.9-b"), Less);
        assert_eq!(compare("1.0.0+deb1", "1.0.0+deb2"), Equal);
        assert_eq!(compare("dev", "0.1"), Greater, "text after every number");
    }
}
