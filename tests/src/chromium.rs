//! Headless Chromium for the status page tests: find it, dump a page's DOM, take a
//! screenshot. Without Chromium a test skips with the reason, and fails under `CI`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Chromium binary on `PATH`, if any.
pub fn find() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// The Chromium binary, or `None` after saying why the caller skips (a failure under `CI`).
pub fn find_or_skip(what: &str) -> Option<PathBuf> {
    let bin = find();
    if bin.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed (Debian package `chromium`; tests/run.sh installs it)"
        );
        eprintln!(
            "SKIPPED {what}: no chromium/chromium-browser/google-chrome on PATH (apt-get install chromium); set CI=true to make this a failure"
        );
    }
    bin
}

/// Runs headless Chromium with `args` (60 s at most) in profile dir `profile`; returns its
/// stdout.
pub fn run(bin: &Path, profile: &Path, args: &[String]) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut out = child.stdout.take().expect("chromium stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            assert!(status.success(), "chromium {args:?} failed: {status}");
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("chromium {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().expect("chromium output")
}

/// Screenshots `url` into `png` (1280 × `height`); returns the PNG's bytes.
pub fn screenshot(bin: &Path, profile: &Path, url: &str, png: &Path, height: u32) -> Vec<u8> {
    let _ = std::fs::remove_file(png);
    run(
        bin,
        profile,
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size=1280,{height}"),
            url.to_string(),
        ],
    );
    let bytes = std::fs::read(png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
    bytes
}
