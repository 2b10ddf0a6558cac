//! A throwaway PostgreSQL server for tests: `initdb` and `pg_ctl` of the installed
//! PostgreSQL in a temporary directory, listening on 127.0.0.1 on a free port with its unix
//! socket in that directory; stopped and removed on drop. PostgreSQL refuses to run as
//! root, so under root it runs as the `postgres` user (`runuser -u postgres --`).
//!
//! Without PostgreSQL binaries [`TestServer::start_or_skip`] fails the test under `CI` and
//! skips it, saying why, otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A running server; stopped and its directory removed on drop.
#[derive(Debug)]
pub struct TestServer {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// Where `initdb` and `pg_ctl` are: the newest `/usr/lib/postgresql/N/bin`, or `pg_config
/// --bindir`.
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((n, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    bin.join("initdb").exists().then_some(bin)
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl TestServer {
    /// Starts a server, or `None` (with the reason printed) when PostgreSQL is not
    /// installed and `CI` is unset; under `CI` a missing PostgreSQL fails the test.
    pub fn start_or_skip(test: &str) -> Option<TestServer> {
        if bin_dir().is_none() {
            let reason = "no PostgreSQL binaries (initdb, pg_ctl): apt-get install postgresql";
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
            assert!(!ci, "{test}: {reason}");
            eprintln!("skipping {test}: {reason}");
            return None;
        }
        Some(TestServer::start(None).unwrap_or_else(|e| panic!("{test}: start PostgreSQL: {e}")))
    }

    /// Starts a server; with `tls` (certificate and key PEM) it also accepts TLS.
    pub fn start(tls: Option<(&str, &str)>) -> Result<TestServer, String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let bin = bin_dir().ok_or("no PostgreSQL binaries")?;
        let dir = std::env::temp_dir().join(format!(
            "drover-pg-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut server = TestServer {
            dir,
            bin,
            port: free_port().map_err(|e| format!("free port: {e}"))?,
            as_postgres: is_root(),
        };
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            server.port,
            server.dir.display()
        );
        if let Some((cert, key)) = tls {
            write_private(&server.dir.join("server.crt"), cert)?;
            write_private(&server.dir.join("server.key"), key)?;
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                server.dir.display()
            ));
        }
        if server.as_postgres {
            server.run(
                "chown",
                &["-R", "postgres:", &server.dir.display().to_string()],
            )?;
        }
        let data = server.dir.join("data").display().to_string();
        let log = server.dir.join("log").display().to_string();
        let initdb = server.bin.join("initdb").display().to_string();
        server.run_pg(
            &initdb,
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let pg_ctl = server.bin.join("pg_ctl").display().to_string();
        if let Err(e) = server.run_pg(
            &pg_ctl,
            &["-D", &data, "-l", &log, "-w", "-o", &options, "start"],
        ) {
            let log = std::fs::read_to_string(server.dir.join("log")).unwrap_or_default();
            server.port = 0;
            return Err(format!("{e}\n{log}"));
        }
        Ok(server)
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let out = Command::new(program)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn run_pg(&self, program: &str, args: &[&str]) -> Result<(), String> {
        if self.as_postgres {
            let mut all = vec!["-u", "postgres", "--", program];
            all.extend_from_slice(args);
            self.run("runuser", &all)
        } else {
            self.run(program, args)
        }
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` as the `postgres` superuser, without TLS.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Creates a fresh database and returns its name.
    pub fn create_database(&self) -> Result<String, String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("drover_{}", SEQ.fetch_add(1, Ordering::Relaxed));
        self.execute(&format!("CREATE DATABASE {name}"))?;
        Ok(name)
    }

    /// Runs `sql` in the `postgres` database.
    pub fn execute(&self, sql: &str) -> Result<(), String> {
        self.execute_in("postgres", sql)
    }

    /// Runs `sql` in database `db`.
    pub fn execute_in(&self, db: &str, sql: &str) -> Result<(), String> {
        let url = self.url(db);
        let sql = sql.to_string();
        std::thread::spawn(move || {
            let mut c =
                postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())?;
            c.batch_execute(&sql).map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| "client thread panicked".to_string())?
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.port != 0 {
            let data = self.dir.join("data").display().to_string();
            let pg_ctl = self.bin.join("pg_ctl").display().to_string();
            let _ = self.run_pg(&pg_ctl, &["-D", &data, "-m", "immediate", "-w", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
