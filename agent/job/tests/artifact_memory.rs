//! A job author controls the files an artifact archive is built from: a large file that is
//! hard-linked must be streamed into the zip, gzip or raw upload like any other, never read
//! whole into the agent's memory. Measured with a counting allocator, so this binary holds
//! one test (tests in parallel would share the count).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use drover_job::artifacts::archive::{write_gzip, write_raw, write_zip};
use drover_job::artifacts::{ProjectEntry, ProjectTar};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes allocated at the peak of `f` above what was live before it.
fn peak_during(f: impl FnOnce()) -> usize {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}

const BIG: usize = 48 << 20;
/// Far below the file, far above copy and deflate buffers.
const LIMIT: usize = 12 << 20;

/// A tar like Docker's archive of `/builds/g/proj`: `proj/big` (BIG bytes) and the hard link
/// `proj/big-link` to it.
fn hardlinked_tar(dir: &std::path::Path) -> ProjectTar {
    let path = dir.join("project.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "proj/", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(BIG as u64);
    // Varied bytes, so the content is not one repeated block.
    let content = (0..BIG as u64).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8);
    let reader = std::io::Cursor::new(content.collect::<Vec<u8>>());
    b.append_data(&mut h, "proj/big", reader).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_mode(0o644);
    h.set_size(0);
    b.append_link(&mut h, "proj/big-link", "proj/big").unwrap();
    b.into_inner().unwrap().flush().unwrap();
    ProjectTar::new(path, "proj")
}

/// The entries of `tar` named in `paths`.
fn chosen(tar: &ProjectTar, paths: &[&str]) -> Vec<ProjectEntry> {
    let mut entries = tar.entries().unwrap();
    entries.retain(|e| paths.contains(&e.path.as_str()));
    entries
}

#[test]
fn hard_linked_artifacts_are_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let tar = hardlinked_tar(dir.path());
    let links = chosen(&tar, &["big-link"]);
    assert_eq!(links.len(), 1);

    let zip_path = dir.path().join("out.zip");
    let peak = peak_during(|| {
        let out = std::fs::File::create(&zip_path).unwrap();
        write_zip(&tar, &chosen(&tar, &["big", "big-link"]), out).unwrap();
    });
    eprintln!("zip of a {BIG}-byte file and its hard link: peak {peak} bytes");
    assert!(peak < LIMIT, "zip: peak {peak} bytes for a {BIG}-byte link");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
    assert_eq!(zip.by_name("big-link").unwrap().size(), BIG as u64);
    let mut link = zip.by_name("big-link").unwrap();
    let copied = std::io::copy(&mut link, &mut std::io::sink()).unwrap();
    assert_eq!(copied, BIG as u64);
    drop(link);

    let peak = peak_during(|| {
        let out = std::fs::File::create(dir.path().join("out.gz")).unwrap();
        assert_eq!(write_gzip(&tar, &links, out).unwrap(), 1);
    });
    assert!(
        peak < LIMIT,
        "gzip: peak {peak} bytes for a {BIG}-byte link"
    );

    let raw_path = dir.path().join("out.raw");
    let peak = peak_during(|| {
        let out = std::fs::File::create(&raw_path).unwrap();
        assert_eq!(write_raw(&tar, &links, out).unwrap(), "big-link");
    });
    assert!(peak < LIMIT, "raw: peak {peak} bytes for a {BIG}-byte link");
    assert_eq!(std::fs::metadata(&raw_path).unwrap().len(), BIG as u64);

    // A plain (not linked) file in raw format was read whole as well.
    let peak = peak_during(|| {
        let out = std::fs::File::create(&raw_path).unwrap();
        write_raw(&tar, &chosen(&tar, &["big"]), out).unwrap();
    });
    assert!(peak < LIMIT, "raw: peak {peak} bytes for a {BIG}-byte file");
}
