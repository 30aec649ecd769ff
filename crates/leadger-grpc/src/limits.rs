//! Request size limit as `RESOURCE_EXHAUSTED`.
//!
//! tonic refuses a request over `max_decoding_message_size` from its length
//! prefix, before reading it, but reports `OUT_OF_RANGE`. This layer rewrites
//! that one status so clients get the code the API documents. Nothing else in
//! the service answers `OUT_OF_RANGE`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestSizeLayer {
    pub max_request_bytes: usize,
}

impl<S> Layer<S> for RequestSizeLayer {
    type Service = RequestSize<S>;

    fn layer(&self, inner: S) -> RequestSize<S> {
        RequestSize { inner, max_request_bytes: self.max_request_bytes }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RequestSize<S> {
    inner: S,
    max_request_bytes: usize,
}

const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequestSize<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let response = self.inner.call(request);
        let limit = self.max_request_bytes;
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            let too_large = headers.get("grpc-status").is_some_and(|s| s == OUT_OF_RANGE)
                && headers.get("grpc-message").is_some_and(|m| m.as_bytes().windows(9).any(|w| w == b"too%20lar"));
            if too_large {
                headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
                let message = format!("request%20is%20larger%20than%20the%20limit%20of%20{limit}%20bytes");
                if let Ok(value) = HeaderValue::from_str(&message) {
                    headers.insert("grpc-message", value);
                }
            }
            Ok(response)
        })
    }
}
