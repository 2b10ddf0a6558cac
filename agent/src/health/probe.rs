//! The [`HostProbe`] seam: memory, load and filesystem space of this host, with the real
//! implementation on `/proc` + `statvfs` and a fake.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Free and total bytes of one filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    pub total_bytes: u64,
    /// Bytes an unprivileged process may still write (`f_bavail`, not `f_bfree`: the
    /// reserved blocks are no use to Docker).
    pub free_bytes: u64,
}

/// Memory of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub total_bytes: u64,
    /// `MemAvailable`: what can be allocated without swapping (page cache counts as free).
    pub available_bytes: u64,
}

/// Load averages (runnable + uninterruptible tasks) over 1, 5 and 15 minutes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

/// A probe that failed, naming the file or path.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("statvfs {path}: {source}")]
    Statvfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads the host's resources. Blocking but cheap (a few small `/proc` reads and a
/// `statvfs`), so callers may call it from async code or a scrape.
pub trait HostProbe: Send + Sync + std::fmt::Debug {
    fn memory(&self) -> Result<Memory, ProbeError>;
    fn load(&self) -> Result<LoadAverage, ProbeError>;
    /// The filesystem holding `path`.
    fn disk(&self, path: &Path) -> Result<DiskSpace, ProbeError>;
}

/// The real probe. `proc_root` is `/proc` except in tests.
#[derive(Debug, Clone)]
pub struct ProcProbe {
    proc_root: PathBuf,
}

impl Default for ProcProbe {
    fn default() -> Self {
        ProcProbe {
            proc_root: PathBuf::from("/proc"),
        }
    }
}

impl ProcProbe {
    /// A probe reading `meminfo` and `loadavg` under `proc_root` instead of `/proc`.
    pub fn with_proc_root(proc_root: impl Into<PathBuf>) -> Self {
        ProcProbe {
            proc_root: proc_root.into(),
        }
    }

    fn read(&self, name: &str) -> Result<(PathBuf, String), ProbeError> {
        let path = self.proc_root.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            Err(source) => Err(ProbeError::Read { path, source }),
        }
    }
}

impl HostProbe for ProcProbe {
    fn memory(&self) -> Result<Memory, ProbeError> {
        let (path, text) = self.read("meminfo")?;
        parse_meminfo(&text).map_err(|reason| ProbeError::Parse { path, reason })
    }

    fn load(&self) -> Result<LoadAverage, ProbeError> {
        let (path, text) = self.read("loadavg")?;
        parse_loadavg(&text).map_err(|reason| ProbeError::Parse { path, reason })
    }

    fn disk(&self, path: &Path) -> Result<DiskSpace, ProbeError> {
        let st = rustix::fs::statvfs(path).map_err(|e| ProbeError::Statvfs {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        let frsize = if st.f_frsize > 0 {
            st.f_frsize
        } else {
            st.f_bsize
        };
        Ok(DiskSpace {
            total_bytes: st.f_blocks.saturating_mul(frsize),
            free_bytes: st.f_bavail.saturating_mul(frsize),
        })
    }
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo` (values in kB).
pub fn parse_meminfo(text: &str) -> Result<Memory, String> {
    let mut total = None;
    let mut available = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key.trim() {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            _ => continue,
        };
        let mut words = rest.split_whitespace();
        let value = words.next().unwrap_or_default();
        let kib: u64 = value
            .parse()
            .map_err(|_| format!("{key}: {value:?} is not a number"))?;
        let factor = match words.next() {
            Some("kB") => 1024,
            None => 1,
            Some(u) => return Err(format!("{key}: unknown unit {u:?}")),
        };
        *slot = Some(kib.saturating_mul(factor));
    }
    Ok(Memory {
        total_bytes: total.ok_or("no MemTotal line")?,
        available_bytes: available.ok_or("no MemAvailable line")?,
    })
}

/// The three load averages of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Result<LoadAverage, String> {
    let mut words = text.split_whitespace();
    let mut next = |what: &str| -> Result<f64, String> {
        let w = words.next().ok_or(format!("no {what} load average"))?;
        w.parse()
            .map_err(|_| format!("{what} load average {w:?} is not a number"))
    };
    Ok(LoadAverage {
        one: next("1-minute")?,
        five: next("5-minute")?,
        fifteen: next("15-minute")?,
    })
}

/// A probe answering what it was given; anything not given fails like a missing file.
#[derive(Debug, Clone, Default)]
pub struct FakeProbe {
    pub memory: Option<Memory>,
    pub load: Option<LoadAverage>,
    pub disks: HashMap<PathBuf, DiskSpace>,
}

impl FakeProbe {
    pub fn with_memory(mut self, m: Memory) -> Self {
        self.memory = Some(m);
        self
    }

    pub fn with_load(mut self, l: LoadAverage) -> Self {
        self.load = Some(l);
        self
    }

    pub fn with_disk(mut self, path: impl Into<PathBuf>, d: DiskSpace) -> Self {
        self.disks.insert(path.into(), d);
        self
    }
}

fn missing(path: &str) -> ProbeError {
    ProbeError::Read {
        path: PathBuf::from(path),
        source: std::io::ErrorKind::NotFound.into(),
    }
}

impl HostProbe for FakeProbe {
    fn memory(&self) -> Result<Memory, ProbeError> {
        self.memory.ok_or_else(|| missing("/proc/meminfo"))
    }

    fn load(&self) -> Result<LoadAverage, ProbeError> {
        self.load.ok_or_else(|| missing("/proc/loadavg"))
    }

    fn disk(&self, path: &Path) -> Result<DiskSpace, ProbeError> {
        self.disks
            .get(path)
            .copied()
            .ok_or_else(|| ProbeError::Statvfs {
                path: path.to_path_buf(),
                source: std::io::ErrorKind::NotFound.into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       16318508 kB\nMemFree:         1203292 kB\nMemAvailable:    9876544 kB\nBuffers:          412312 kB\nHugePages_Total:       0\n";

    #[test]
    fn meminfo_fixture() {
        assert_eq!(
            parse_meminfo(MEMINFO).unwrap(),
            Memory {
                total_bytes: 16318508 * 1024,
                available_bytes: 9876544 * 1024
            }
        );
    }

    #[test]
    fn meminfo_errors_name_the_line() {
        let e = parse_meminfo("MemTotal: 10 kB\n").unwrap_err();
        assert!(e.contains("MemAvailable"), "{e}");
        let e = parse_meminfo("MemTotal: ten kB\nMemAvailable: 1 kB\n").unwrap_err();
        assert!(e.contains("MemTotal") && e.contains("ten"), "{e}");
    }

    #[test]
    fn loadavg_fixture() {
        let l = parse_loadavg("0.52 1.25 2.00 3/812 123456\n").unwrap();
        assert_eq!(
            l,
            LoadAverage {
                one: 0.52,
                five: 1.25,
                fifteen: 2.0
            }
        );
        assert!(parse_loadavg("0.5\n").unwrap_err().contains("5-minute"));
        assert!(parse_loadavg("x 1 2").unwrap_err().contains("\"x\""));
    }

    #[test]
    fn proc_probe_reads_fixture_files_and_names_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("meminfo"), MEMINFO).unwrap();
        let p = ProcProbe::with_proc_root(dir.path());
        assert_eq!(p.memory().unwrap().total_bytes, 16318508 * 1024);
        let e = p.load().unwrap_err().to_string();
        assert!(e.contains("loadavg"), "{e}");
    }

    #[test]
    fn real_statvfs_of_a_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = ProcProbe::default().disk(dir.path()).unwrap();
        assert!(d.total_bytes > 0 && d.free_bytes <= d.total_bytes, "{d:?}");
        let e = ProcProbe::default()
            .disk(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
