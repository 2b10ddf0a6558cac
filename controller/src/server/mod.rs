//! `drover serve`: the gRPC server (mutual TLS) and the HTTP listener.
//!
//! Shutdown is one tree: [`run`] takes the root token; each subsystem (the TLS accept loop,
//! agent sessions, the HTTP listener, the background loops) gets a child of it, and every
//! task the server starts is on one `TaskTracker`, so `run` returns only once they all
//! ended (then the last contacts are flushed). A signal only cancels the root.
//!
//! - [`tls`]: rustls config and the accept loop exposing the peer chain to handlers.
//! - [`auth`]: per-call identity checks (revocation included).
//! - [`enrollment`], [`agent_control`], [`admin`]: the three services.
//! - [`sessions`]: live agent streams, closable at once on revocation.
//! - [`http`]: the status pages, `/metrics` and `/healthz`.

pub mod admin;
pub mod agent_control;
pub mod attempts;
pub mod auth;
pub mod catch_panic;
pub mod drains;
pub mod enrollment;
pub mod http;
pub mod images;
mod replica;
pub mod session_reads;
pub mod sessions;
pub mod state;
pub mod status;
pub mod tls;

use std::sync::Arc;

use drover_proto::v1;
use time::{Duration, OffsetDateTime};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::datadir::DataDir;
use crate::files;
use crate::pki::ca::Ca;
use crate::pki::{PkiError, policy};
use crate::store::postgres::{DatabaseUrl, PgStore};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// How long a shutdown waits for the server's tasks (a session ending mid-way through a
/// GitLab call) before it flushes and returns anyway.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What `drover serve` runs with: the data dir and the lock held on it for the server's
/// life (from [`DataDir::lock`]), the tunables, and the listeners, already bound.
#[derive(Debug)]
pub struct ServeConfig {
    /// The data dir.
    pub dir: DataDir,
    /// The data dir's lock, released when [`run`] returns.
    pub lock: crate::datadir::DataDirLock,
    /// Tunables.
    pub options: ServerOptions,
    /// The gRPC listener (agents and admins, mutual TLS).
    pub grpc: TcpListener,
    /// The HTTP listener (status pages, `/metrics`, `/healthz`).
    pub http: TcpListener,
}

/// Tunables of the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Lifetime of issued agent certificates.
    pub cert_ttl: Duration,
    /// Heartbeat interval told to agents.
    pub heartbeat_interval: std::time::Duration,
    /// Limits of `healthy` and the lease grace period.
    pub thresholds: crate::health::Thresholds,
    /// Who may read the status page and `/metrics`.
    pub http_auth: http::HttpAuth,
    /// The store on PostgreSQL (`--database`); `None`: SQLite in the data dir.
    pub database: Option<DatabaseUrl>,
    /// With `database`: the key-encryption key of the replicas' shared secrets
    /// (`--secrets-key-file`); `None`: `DATA_DIR/kek.key`.
    pub secrets_key_file: Option<std::path::PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            cert_ttl: policy::DEFAULT_AGENT_CERT_TTL,
            heartbeat_interval: std::time::Duration::from_secs(10),
            thresholds: crate::health::Thresholds::default(),
            http_auth: http::HttpAuth::Open,
            database: None,
            secrets_key_file: None,
        }
    }
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A data dir file could not be written or read.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// Which path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CA or a certificate failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The store failed to open.
    #[error("open store: {0}")]
    Store(#[from] StoreError),
    /// The secrets key failed to load.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    /// The replicas' shared secrets failed to open (nothing was written).
    #[error(transparent)]
    Shared(#[from] crate::replicas::shared_secrets::SharedSecretsError),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    /// The HTTP listener would be open to the network.
    #[error(transparent)]
    HttpAuth(#[from] http::auth::HttpAuthError),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// A background loop panicked: the controller stopped rather than run without it.
    #[error("{0} panicked (a bug; see the log above); the controller stopped")]
    TaskPanicked(&'static str),
}

/// Spawns on `tasks` a background loop the controller cannot run without (health sweeps,
/// the reconciliation tick). A call's panic fails that call only (see [`catch_panic`]); a
/// loop's panic cancels `shutdown` (the root), so the controller stops and its supervisor
/// restarts it, rather than serving on with the loop gone. The handle answers whether it
/// panicked.
fn spawn_essential<F>(
    tasks: &TaskTracker,
    name: &'static str,
    fut: F,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Option<&'static str>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let task = tasks.spawn(fut);
    tasks.spawn(async move {
        match task.await {
            Err(e) if e.is_panic() => {
                tracing::error!(
                    task = name,
                    "background task panicked; stopping the controller"
                );
                shutdown.cancel();
                Some(name)
            }
            _ => None,
        }
    })
}

fn io(
    action: &'static str,
    path: std::path::PathBuf,
) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Io {
        action,
        path,
        source,
    }
}

/// What [`prepare`] opened.
pub struct Prepared {
    /// The CA (the data dir's, or with PostgreSQL the replicas' shared one).
    pub ca: Ca,
    /// The store.
    pub store: Arc<dyn Store>,
    /// The secrets key.
    pub sealer: crate::secrets::Sealer,
    /// The PostgreSQL store, when there is one (the replicas' lease and fan-out).
    pub pg: Option<Arc<PgStore>>,
}

/// Prepares the data dir (0700, CA, store, admin credentials) without serving. Idempotent.
/// The store is SQLite in the data dir, with the CA and secrets key there too; or
/// PostgreSQL at `database`, holding the CA and secrets key every replica shares, sealed
/// under the key-encryption key at `kek` (default `DATA_DIR/kek.key`): then the data dir
/// gets `ca.crt` and an admin certificate from that CA, never the CA key.
pub fn prepare(
    dir: &DataDir,
    database: Option<&DatabaseUrl>,
    kek: Option<&std::path::Path>,
) -> Result<Prepared, ServerError> {
    files::create_private_dir(dir.root()).map_err(io("create", dir.root().to_path_buf()))?;
    if database.is_none() {
        files::create_private(&dir.db()).map_err(io("create", dir.db()))?;
    }
    make_files_private(dir)?;
    let prepared = match database {
        None => Prepared {
            ca: Ca::load_or_create(dir.root())?,
            store: Arc::new(SqliteStore::open(&dir.db())?),
            sealer: crate::secrets::Sealer::load_or_create(&dir.secrets_key())?,
            pg: None,
        },
        Some(url) => {
            tracing::info!(database = %url.redacted(), "store on PostgreSQL");
            let pg = Arc::new(PgStore::open(url)?);
            let kek = kek.map_or_else(|| dir.kek(), std::path::Path::to_path_buf);
            let shared = crate::replicas::shared_secrets::open(
                pg.as_ref(),
                &kek,
                dir.root(),
                &url.redacted(),
            )?;
            if shared.created {
                tracing::info!(key_file = %kek.display(), "stored the shared CA and secrets key, sealed under this key file: give every replica a copy of it (--secrets-key-file)");
            }
            let pem = shared.ca.cert_pem().as_bytes();
            if std::fs::read(dir.ca_cert()).ok().as_deref() != Some(pem) {
                drover_runtime::atomic_file::write(&dir.ca_cert(), pem, files::PUBLIC)
                    .map_err(io("write", dir.ca_cert()))?;
            }
            if dir.ca_key().exists() {
                tracing::warn!(file = %dir.ca_key().display(), "this CA key file is not used: the replicas' CA is in the database (sealed); remove the file");
            }
            let store: Arc<dyn Store> = pg.clone();
            Prepared {
                ca: shared.ca,
                store,
                sealer: shared.sealer,
                pg: Some(pg),
            }
        }
    };
    ensure_admin_cert(dir, &prepared.ca)?;
    Ok(prepared)
}

/// Keys and the store are the owner's only: the SQLite database is created 0600 (by
/// [`prepare`]) before SQLite opens it (its `-wal` and `-shm` files take its mode), and a key or store file that group
/// or others may read (an older install, a restore, a copy) is set back to 0600 with a
/// warning naming the file and its old mode. Fixed rather than refused: the fix is
/// certain, and a controller that will not start drops every agent session.
fn make_files_private(dir: &DataDir) -> Result<(), ServerError> {
    let db = dir.db().display().to_string();
    let files = [
        dir.ca_key(),
        dir.secrets_key(),
        dir.kek(),
        dir.admin_key(),
        dir.admin_cert(),
        dir.db(),
        format!("{db}-wal").into(),
        format!("{db}-shm").into(),
    ];
    for path in files {
        if let Some(old) =
            files::make_private(&path).map_err(io("set the mode of", path.clone()))?
        {
            tracing::warn!(
                file = %path.display(),
                old_mode = format!("{old:04o}"),
                "file was readable by group or others; set it to 0600"
            );
        }
    }
    Ok(())
}

/// Writes `admin.crt`/`admin.key` when missing, not from this CA, or expiring within 30 days.
fn ensure_admin_cert(dir: &DataDir, ca: &Ca) -> Result<(), ServerError> {
    let now = OffsetDateTime::now_utc();
    let current_ok = std::fs::read(dir.admin_cert())
        .ok()
        .filter(|_| dir.admin_key().exists())
        .and_then(|pem| {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateDer::from_pem_slice(&pem).ok()
        })
        .is_some_and(|der| {
            use x509_parser::prelude::FromDer;
            let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(&der) else {
                return false;
            };
            let ca_ok = x509_parser::certificate::X509Certificate::from_der(ca.cert_der())
                .ok()
                .is_some_and(|(_, c)| cert.verify_signature(Some(c.public_key())).is_ok());
            ca_ok
                && cert.validity().not_after.timestamp()
                    > (now + Duration::days(30)).unix_timestamp()
        });
    if current_ok {
        return Ok(());
    }
    let admin = policy::issue_admin(ca, "local", now)?;
    use secrecy::ExposeSecret;
    drover_runtime::atomic_file::write(
        &dir.admin_key(),
        admin.key_pem.expose_secret().as_bytes(),
        files::PRIVATE,
    )
    .map_err(io("write", dir.admin_key()))?;
    drover_runtime::atomic_file::write(
        &dir.admin_cert(),
        admin.cert.pem.as_bytes(),
        files::PRIVATE,
    )
    .map_err(io("write", dir.admin_cert()))?;
    Ok(())
}

/// Runs the controller until `shutdown` (the root token) is cancelled, holding the data
/// dir's lock until it returns; it returns once every task it started has ended.
pub async fn run(config: ServeConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    run_on(config, shutdown, TaskTracker::new()).await
}

/// [`run`] with its tasks on `tasks` (a test's, to see that none is left).
async fn run_on(
    config: ServeConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) -> Result<(), ServerError> {
    let ServeConfig {
        dir,
        lock: _lock,
        options,
        grpc,
        http,
    } = config;
    let dir = &dir;
    let Prepared {
        ca,
        store,
        sealer,
        pg,
    } = prepare(
        dir,
        options.database.as_ref(),
        options.secrets_key_file.as_deref(),
    )?;
    let server_cert = policy::issue_server(&ca, OffsetDateTime::now_utc())?;
    let tls_config = Arc::new(tls::server_config(&ca, &server_cert)?);
    let grpc_addr = grpc
        .local_addr()
        .map_err(io("read address of", dir.grpc_addr()))?;
    let http_addr = http
        .local_addr()
        .map_err(io("read address of", dir.http_addr()))?;

    options.http_auth.check_listener(http_addr)?;
    let replica = pg.as_ref().map(replica::Parts::new);
    let fenced = replica
        .as_ref()
        .map_or_else(|| store.clone(), |r| r.fenced.clone());
    let cluster = replica
        .as_ref()
        .map_or_else(crate::replicas::Cluster::solo, |r| r.cluster.clone());
    let mut health = crate::health::Health::new(
        store.clone(),
        Arc::new(crate::health::SystemClock),
        options.thresholds.clone(),
    )?;
    if replica.is_some() {
        health = health.in_cluster(
            replica::contacts_every(options.heartbeat_interval),
            fenced.clone(),
        );
    }
    let health = Arc::new(health);
    let metrics = crate::metrics::Metrics::new();
    let sessions = sessions::Sessions::default();
    if let Some(r) = &replica {
        sessions.publish_to(r.publisher.clone());
    }
    let upgrade_key = sealer.upgrade_key();
    let upgrade_fenced = fenced.clone();
    let fleet = Arc::new(
        crate::fleet::Fleet::new(
            store.clone(),
            sealer,
            Arc::new(crate::fleet::registrar::HttpRegistrar::new()),
            sessions.clone(),
        )
        .in_cluster(
            cluster.clone(),
            fenced,
            replica.as_ref().map(|_| {
                let health = health.clone();
                Arc::new(move || health.live()) as crate::fleet::Presence
            }),
        ),
    );
    let upgrades = Arc::new(crate::upgrade::Upgrades::new(
        store.clone(),
        upgrade_fenced,
        upgrade_key,
        sessions.clone(),
        {
            let fleet = fleet.clone();
            Arc::new(move || fleet.connected_agents())
        },
    ));
    let sessions_stop = shutdown.child_token();
    let (session_reads, session_reads_loop) =
        session_reads::SessionReads::new(store.clone(), sessions_stop.clone());
    tasks.spawn(session_reads_loop);
    let state = state::AppState {
        session_reads,
        upgrades: upgrades.clone(),
        store,
        ca: Arc::new(ca),
        sessions,
        fleet: fleet.clone(),
        cert_ttl: options.cert_ttl,
        heartbeat_interval: options.heartbeat_interval,
        shutdown: sessions_stop,
        tasks: tasks.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
        cluster: cluster.clone(),
        transfers: Arc::new(crate::images::Transfers::new(dir.root().join("spool"))),
    };

    let http_task = tasks.spawn(http::serve(
        http,
        http::HttpState {
            app: state.clone(),
            auth: Arc::new(options.http_auth.clone()),
        },
        shutdown.child_token(),
    ));
    let loops_stop = shutdown.child_token();
    let health_task = spawn_essential(
        &tasks,
        "health flush",
        health.clone().run_replica(loops_stop.clone()),
        shutdown.clone(),
    );
    // The health sweep, pruning, and the reconciliation tick (which retries what events
    // could not finish and advances rollouts whose agents went away) run on the leader:
    // alone, always; among replicas, while this one holds the lease.
    let reconcile_task = spawn_essential(
        &tasks,
        "leader loops",
        replica::leader_loops(
            cluster.watch(),
            health.clone(),
            fleet.clone(),
            upgrades,
            tasks.clone(),
            loops_stop.clone(),
        ),
        shutdown.clone(),
    );
    let mut replica_tasks = Vec::new();
    if let (Some(parts), Some(pg)) = (replica, pg) {
        replica_tasks = parts.start(pg, &state, loops_stop.clone(), shutdown.clone());
    }
    let incoming = tls::incoming(grpc, tls_config, shutdown.child_token(), tasks.clone());

    let grpc_addr_text = format!("{grpc_addr}\n");
    let http_addr_text = format!("{http_addr}\n");
    drover_runtime::atomic_file::write(&dir.grpc_addr(), grpc_addr_text.as_bytes(), files::PUBLIC)
        .map_err(io("write", dir.grpc_addr()))?;
    drover_runtime::atomic_file::write(&dir.http_addr(), http_addr_text.as_bytes(), files::PUBLIC)
        .map_err(io("write", dir.http_addr()))?;
    tracing::info!(
        grpc = %grpc_addr,
        http = %http_addr,
        ca_fingerprint = %state.ca.fingerprint(),
        data_dir = %dir.root().display(),
        "controller listening"
    );

    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .layer(crate::metrics::rpc::RpcErrorsLayer { metrics })
        .add_service(v1::enrollment_server::EnrollmentServer::new(
            enrollment::EnrollmentService {
                state: state.clone(),
                attempts: Default::default(),
            },
        ))
        .add_service(v1::agent_control_server::AgentControlServer::new(
            agent_control::AgentControlService {
                state: state.clone(),
            },
        ))
        .add_service(v1::admin_server::AdminServer::new(admin::AdminService {
            state: state.clone(),
        }))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await;
    // However the server ended, every subsystem ends with it.
    shutdown.cancel();
    // Only what this process wrote: a file rewritten since belongs to another controller.
    let _ = files::remove_if_unchanged(&dir.grpc_addr(), &grpc_addr_text);
    let _ = files::remove_if_unchanged(&dir.http_addr(), &http_addr_text);
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_WAIT, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = tasks.len(),
            "tasks still running after {}s; stopping without them",
            SHUTDOWN_WAIT.as_secs()
        );
    }
    // Sessions have ended: their disconnects and the last contacts reach the store.
    health.flush_all().await;
    match http_task.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "http server"),
        Err(e) => tracing::warn!(error = %e, "http server task"),
        Ok(Ok(())) => {}
    }
    for task in [health_task, reconcile_task]
        .into_iter()
        .chain(replica_tasks)
    {
        if let Ok(Some(name)) = task.await {
            return Err(ServerError::TaskPanicked(name));
        }
    }
    result?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    /// A background loop that panics stops the controller (its shutdown is cancelled), one
    /// that ends does not.
    #[tokio::test]
    async fn a_panicking_loop_stops_the_controller() {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let ended = super::spawn_essential(&tasks, "quiet loop", async {}, shutdown.clone());
        assert_eq!(ended.await.unwrap(), None);
        assert!(!shutdown.is_cancelled());
        let broken = super::spawn_essential(
            &tasks,
            "broken loop",
            async { panic!("the loop hit a bug") },
            shutdown.clone(),
        );
        assert_eq!(broken.await.unwrap(), Some("broken loop"));
        assert!(shutdown.is_cancelled());
    }

    /// A serve started in-process stops when its root token is cancelled, with every task
    /// it started ended: the HTTP listener that answered, the loops, the accept loop and a
    /// connection still in its TLS handshake.
    #[tokio::test(flavor = "multi_thread")]
    async fn cancelling_the_root_ends_every_task() {
        use std::time::Duration;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let tmp = tempfile::tempdir().unwrap();
        let dir = crate::datadir::DataDir::new(tmp.path().join("data"));
        crate::files::create_private_dir(dir.root()).unwrap();
        let lock = dir.lock().unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
        let config = super::ServeConfig {
            dir: dir.clone(),
            lock,
            options: super::ServerOptions::default(),
            grpc,
            http,
        };
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let serve = tokio::spawn(super::run_on(config, shutdown.clone(), tasks.clone()));

        // Serving: `/healthz` answers on a connection kept open.
        let mut web = tokio::net::TcpStream::connect(http_addr).await.unwrap();
        web.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 12];
        web.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200");
        // A client that connected and never starts its TLS handshake: its task is running
        // once the tracker counts one more task.
        let running = tasks.len();
        let _silent = tokio::net::TcpStream::connect(grpc_addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while tasks.len() <= running {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the handshake task starts");

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), serve)
            .await
            .expect("serve returns at once, not after the handshake timeout")
            .unwrap()
            .unwrap();
        assert!(tasks.is_closed());
        assert!(tasks.is_empty(), "{} tasks left", tasks.len());
        tokio::time::timeout(Duration::from_secs(1), tasks.wait())
            .await
            .expect("no task left to wait for");
        assert!(!dir.grpc_addr().exists(), "address files are removed");
    }
}
