//! The tower layer on the gRPC server: a panicking call is answered `internal`
//! ([`crate::server::catch_panic`]), and calls answered with an error status are counted
//! (`drover_rpc_errors_total{method,code}`). It reads the `grpc-status` response header,
//! which tonic sets for every error a handler returns before streaming (trailers-only
//! responses); errors in the trailers of a long stream are not counted.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tower::{Layer, Service};

use super::Metrics;

/// Wraps a service with [`RpcErrors`].
#[derive(Debug, Clone)]
pub struct RpcErrorsLayer {
    /// Where errors are counted.
    pub metrics: Metrics,
}

impl<S> Layer<S> for RpcErrorsLayer {
    type Service = RpcErrors<S>;

    fn layer(&self, inner: S) -> RpcErrors<S> {
        RpcErrors {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The counting service.
#[derive(Debug, Clone)]
pub struct RpcErrors<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, RB> Service<http::Request<B>> for RpcErrors<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let metrics = self.metrics.clone();
        let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.inner.call(req)));
        Box::pin(async move {
            let resp = crate::server::catch_panic::settle(&method, call).await?;
            if let Some(code) = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .filter(|c| *c != 0)
            {
                metrics.rpc_error(&method, tonic::Code::from_i32(code));
            }
            Ok(resp)
        })
    }
}
