//! A panic in a gRPC call becomes that call's `internal` status, logged with the method
//! and the panic message, while the server keeps serving: a bug that one bad request
//! reaches fails that request only; it never takes the controller, and with it every agent
//! session, down. The server's one tower layer ([`crate::metrics::rpc::RpcErrorsLayer`])
//! runs every call through [`settle`]. (This needs `panic = "unwind"`, which the
//! workspace's release profile keeps for that reason.)

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tonic::codegen::http;

/// The panic payload as text (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

fn internal<B: Default>(method: &str, payload: &(dyn std::any::Any + Send)) -> http::Response<B> {
    tracing::error!(
        method,
        panic = panic_message(payload),
        "bug: a call panicked; it was answered with an internal error"
    );
    tonic::Status::internal(format!(
        "controller bug in {method}: the call failed; see the controller log"
    ))
    .into_http()
}

/// The answer to a call to `method`: `call` is what starting it gave (caught with
/// `std::panic::catch_unwind`), its future is awaited catching panics too.
pub async fn settle<F, RB, E>(
    method: &str,
    call: std::thread::Result<F>,
) -> Result<http::Response<RB>, E>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    RB: Default,
{
    match call {
        Err(payload) => Ok(internal(method, payload.as_ref())),
        Ok(fut) => match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(result) => result,
            Err(payload) => Ok(internal(method, payload.as_ref())),
        },
    }
}

#[cfg(test)]
mod tests {
    use drover_proto::v1;
    use tonic::{Code, Request, Response, Status};

    /// Panics on the token "panic", answers otherwise.
    struct Fragile;

    #[tonic::async_trait]
    impl v1::enrollment_server::Enrollment for Fragile {
        async fn enroll(
            &self,
            req: Request<v1::EnrollRequest>,
        ) -> Result<Response<v1::EnrollResponse>, Status> {
            let token = req.into_inner().token;
            let seconds: i64 = token.parse().unwrap_or(1);
            // The class of bug issue 15 found: arithmetic on a value from the request.
            let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds);
            Ok(Response::new(v1::EnrollResponse {
                agent_id: at.year().to_string(),
                ..Default::default()
            }))
        }
    }

    /// A real tonic server over TCP with the server's layer: the panicking call gets `internal`, the
    /// next call on the same connection is answered.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_panicking_call_fails_alone() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(crate::metrics::rpc::RpcErrorsLayer {
                    metrics: crate::metrics::Metrics::new(),
                })
                .add_service(v1::enrollment_server::EnrollmentServer::new(Fragile))
                .serve_with_incoming(incoming),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = v1::enrollment_client::EnrollmentClient::new(channel);
        let enroll = |token: &str| v1::EnrollRequest {
            token: token.into(),
            ..Default::default()
        };
        let err = client
            .enroll(enroll(&i64::MAX.to_string()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{err:?}");
        assert!(
            err.message().contains("/drover.v1.Enrollment/Enroll"),
            "{err:?}"
        );
        for _ in 0..3 {
            let ok = client.enroll(enroll("60")).await.unwrap().into_inner();
            assert!(!ok.agent_id.is_empty());
        }
        server.abort();
    }

    /// The layer only helps if a panic unwinds: the release profile must not abort.
    #[test]
    fn release_profile_unwinds() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let manifest: toml::Table = toml::from_str(&text).unwrap();
        let panic = manifest["profile"]["release"]
            .get("panic")
            .and_then(|v| v.as_str())
            .unwrap_or("unwind");
        assert_eq!(panic, "unwind", "[profile.release] panic in {path}");
    }
}
