//! A git HTTP server for tests, speaking git's smart protocol (so shallow clones and
//! protocol v2 work) by running `git http-backend` as a CGI behind axum, and requiring HTTP
//! basic auth `gitlab-ci-token:<token>` like GitLab does for job tokens.
//!
//! Repositories are bare repos under a temporary root (`<root>/<path>.git`), filled through
//! [`WorkRepo`], a working clone that commits and pushes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One request the server saw (for assertions: method, path and query, whether auth passed).
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub uri: String,
    pub authorized: bool,
}

#[derive(Clone)]
struct AppState {
    root: PathBuf,
    token: String,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
}

/// Serves the bare repositories under `root` on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    root: PathBuf,
    token: String,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = AppState { root, token, seen };
    let app = axum::Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::disable())
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("git test server")
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value.trim()) else {
        return false;
    };
    decoded == format!("gitlab-ci-token:{token}").as_bytes()
}

async fn handle(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ok = authorized(&headers, &state.token);
    if let Ok(mut seen) = state.seen.lock() {
        seen.push(SeenRequest {
            method: method.to_string(),
            uri: uri.to_string(),
            authorized: ok,
        });
    }
    if !ok {
        let mut resp = Response::new(Body::from("HTTP Basic: Access denied\n"));
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        resp.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Basic realm=\"GitLab\""),
        );
        return resp;
    }
    match run_backend(&state.root, &method, &uri, &headers, body).await {
        Ok(resp) => resp,
        Err(e) => {
            let mut resp = Response::new(Body::from(format!("git http-backend: {e:#}\n")));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp
        }
    }
}

async fn run_backend(
    root: &Path,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> anyhow::Result<Response> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "gitlab-ci-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("HTTP_GIT_PROTOCOL", header("git-protocol"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("spawn git http-backend")?;
    let mut stdin = child.stdin.take().context("http-backend stdin")?;
    let writer = tokio::spawn(async move {
        let r = stdin.write_all(&body).await;
        drop(stdin);
        r
    });
    let output = child
        .wait_with_output()
        .await
        .context("wait http-backend")?;
    writer
        .await
        .context("join body writer")?
        .context("write request body")?;
    let out = output.stdout;
    let (head_len, sep_len) = match find(&out, b"\r\n\r\n") {
        Some(i) => (i, 4),
        None => match find(&out, b"\n\n") {
            Some(i) => (i, 2),
            None => bail!(
                "no CGI header in http-backend output (stderr: {})",
                String::from_utf8_lossy(&output.stderr)
            ),
        },
    };
    let head = String::from_utf8_lossy(&out[..head_len]).into_owned();
    let mut resp = Response::new(Body::from(out[head_len + sep_len..].to_vec()));
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .context("CGI status")?;
            *resp.status_mut() = StatusCode::from_u16(code).context("CGI status code")?;
        } else if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    Ok(resp)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A running git server with its repositories.
pub struct GitServer {
    pub addr: SocketAddr,
    /// Requests seen so far.
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
    root: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl GitServer {
    /// Binds `127.0.0.1:0` and serves a fresh, empty root accepting `token`.
    pub async fn start(token: &str) -> anyhow::Result<GitServer> {
        let root = tempfile::tempdir().context("git server root")?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(serve(
            listener,
            root.path().join("repos"),
            token.to_string(),
            seen.clone(),
            shutdown.clone(),
        ));
        std::fs::create_dir_all(root.path().join("repos"))?;
        Ok(GitServer {
            addr,
            seen,
            root,
            shutdown,
        })
    }

    /// `http://127.0.0.1:<port>/<path>.git`, no credentials.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}.git", self.addr)
    }

    /// The URL GitLab puts in `git_info.repo_url`: with `gitlab-ci-token:<token>@`.
    pub fn url_with_token(&self, path: &str, token: &str) -> String {
        format!("http://gitlab-ci-token:{token}@{}/{path}.git", self.addr)
    }

    /// Creates the bare repo `<path>.git` and a working clone to fill it.
    pub fn create_repo(&self, path: &str) -> anyhow::Result<WorkRepo> {
        let bare = self.root.path().join("repos").join(format!("{path}.git"));
        std::fs::create_dir_all(&bare)?;
        git(&bare, &["init", "-q", "--bare", "-b", "main"])?;
        let work = self.root.path().join("work").join(path);
        std::fs::create_dir_all(&work)?;
        git(&work, &["init", "-q", "-b", "main"])?;
        git(&work, &["remote", "add", "origin", &bare.to_string_lossy()])?;
        Ok(WorkRepo { dir: work })
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A working clone of a served repository.
pub struct WorkRepo {
    pub dir: PathBuf,
}

impl WorkRepo {
    /// Writes `files` (path, content), commits everything, pushes `main`; returns the sha.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> anyhow::Result<String> {
        for (path, content) in files {
            let full = self.dir.join(path);
            if let Some(parent) = full.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&full, content)?;
        }
        git(&self.dir, &["add", "-A"])?;
        git(&self.dir, &["commit", "-q", "--allow-empty", "-m", message])?;
        git(&self.dir, &["push", "-q", "origin", "HEAD:refs/heads/main"])?;
        self.head()
    }

    /// The current commit.
    pub fn head(&self) -> anyhow::Result<String> {
        Ok(git(&self.dir, &["rev-parse", "HEAD"])?.trim().to_string())
    }

    /// Creates and pushes branch `name` at the current commit.
    pub fn branch(&self, name: &str) -> anyhow::Result<()> {
        git(&self.dir, &["branch", "-f", name])?;
        git(
            &self.dir,
            &[
                "push",
                "-q",
                "-f",
                "origin",
                &format!("{name}:refs/heads/{name}"),
            ],
        )?;
        Ok(())
    }

    /// Adds the repo served at `<relative_url>` (e.g. `../lib.git`, resolved against this
    /// repo's URL by clients) as a submodule at `path`, commits and pushes; returns the sha.
    pub fn add_submodule(&self, relative_url: &str, path: &str) -> anyhow::Result<String> {
        git(
            &self.dir,
            &[
                "-c",
                "protocol.file.allow=always",
                "submodule",
                "add",
                "-q",
                relative_url,
                path,
            ],
        )?;
        git(
            &self.dir,
            &[
                "-c",
                "protocol.file.allow=always",
                "submodule",
                "update",
                "--init",
                "--recursive",
                "-q",
            ],
        )?;
        self.commit(&[], &format!("add submodule {path}"))
    }
}

/// Runs `git args` in `dir` with a fixed identity and no user config; returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Drover Test")
        .env("GIT_AUTHOR_EMAIL", "test@drover.invalid")
        .env("GIT_COMMITTER_NAME", "Drover Test")
        .env("GIT_COMMITTER_EMAIL", "test@drover.invalid")
        .output()
        .with_context(|| format!("run git {args:?}"))?;
    if !out.status.success() {
        bail!(
            "git {args:?} in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
