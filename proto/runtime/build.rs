//! `DROVER_BUILD_VERSION`, when set at build time, becomes the version both binaries report
//! ([`drover_runtime::version`]); a value breaking `src/version_rule.rs` fails the build.

#[path = "src/version_rule.rs"]
mod version_rule;

fn main() {
    println!("cargo:rerun-if-env-changed=DROVER_BUILD_VERSION");
    let Some(value) = std::env::var_os("DROVER_BUILD_VERSION") else {
        return;
    };
    let Some(value) = value.to_str() else {
        eprintln!("error: DROVER_BUILD_VERSION is not UTF-8");
        std::process::exit(1);
    };
    if let Err(e) = version_rule::check(value) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    println!("cargo:rustc-env=DROVER_CHECKED_BUILD_VERSION={value}");
}
