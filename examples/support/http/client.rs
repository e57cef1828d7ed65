//! The example client: hyper-util's client behind backstop's client stack.

use std::time::Duration;

use backstop::BoxError;
use backstop::classify::HttpClassifier;
use backstop::metrics::{LittleLayer, LittleMeter};
use backstop::retry::{Idempotent, RetryBudget, RetryLayer};
use backstop::timeout::TimeoutLayer;
use backstop::timeout::headers::send_deadline;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

/// The request type the client stack takes: a buffered body, so a retry can resend it.
pub type ClientRequest = Request<Full<Bytes>>;
/// Every stage of the client stack has this type.
pub type HttpClient = BoxCloneSyncService<ClientRequest, Response<Incoming>, BoxError>;

/// Applies `layer` to `svc` and brings the result back to [`HttpClient`].
pub fn wrap<L>(svc: HttpClient, layer: L) -> HttpClient
where
    L: Layer<HttpClient>,
    L::Service:
        Service<ClientRequest, Response = Response<Incoming>> + Clone + Send + Sync + 'static,
    <L::Service as Service<ClientRequest>>::Error: Into<BoxError>,
    <L::Service as Service<ClientRequest>>::Future: Send + 'static,
{
    BoxCloneSyncService::new(layer.layer(svc).map_err(Into::into))
}

/// hyper-util's pooled HTTP/1 client, writing each request's deadline into `grpc-timeout`
/// (and `backstop-timeout-ms`) just before it leaves.
pub fn transport() -> HttpClient {
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http::<Full<Bytes>>();
    BoxCloneSyncService::new(
        client
            .map_request(send_deadline::<Full<Bytes>>)
            .map_err(BoxError::from),
    )
}

/// The client stack's settings; `None` leaves a layer out.
pub struct ClientStack {
    /// Little's-law meter at the top (what the caller sees).
    pub meter: Option<LittleMeter>,
    /// The whole call's timeout, retries included.
    pub overall: Option<Duration>,
    /// The retry budget shared by every request of this client.
    pub budget: Option<RetryBudget>,
    /// Each attempt's timeout, just above the transport.
    pub attempt: Option<Duration>,
}

impl ClientStack {
    /// metrics → overall timeout 1 s → retry with a shared budget → per-attempt timeout 400 ms.
    pub fn recommended() -> Result<Self, BoxError> {
        Ok(ClientStack {
            meter: Some(
                LittleMeter::builder("http_client")
                    .window(Duration::from_secs(1))
                    .build()?,
            ),
            overall: Some(Duration::from_secs(1)),
            budget: Some(RetryBudget::builder("http_client").build()?),
            attempt: Some(Duration::from_millis(400)),
        })
    }

    /// Builds the stack over `transport`:
    /// metrics → overall timeout → retry (budget) → (hedge → token bucket →) attempt timeout.
    pub fn build(&self, transport: HttpClient) -> Result<HttpClient, BoxError> {
        let mut svc = transport;
        if let Some(attempt) = self.attempt {
            svc = wrap(svc, TimeoutLayer::new(attempt)?);
        }
        if let Some(budget) = &self.budget {
            let retry = RetryLayer::builder(budget.clone())
                .classifier(HttpClassifier)
                .build()?;
            svc = wrap(svc, retry);
        }
        if let Some(overall) = self.overall {
            svc = wrap(svc, TimeoutLayer::new(overall)?);
        }
        if let Some(meter) = &self.meter {
            svc = wrap(
                svc,
                LittleLayer::new(meter.clone()).with_classifier(HttpClassifier),
            );
        }
        Ok(svc)
    }
}

/// A GET of `url`, marked idempotent so the retry layer may resend it.
pub fn get(url: &str) -> ClientRequest {
    let mut req = Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("a valid URL");
    req.extensions_mut().insert(Idempotent);
    req
}

/// Fetches a page as text, with a plain client and a 5 s bound (used to scrape `/metrics`).
pub async fn fetch_text(url: &str) -> Result<String, BoxError> {
    use http_body_util::BodyExt;
    let mut client = transport();
    let res = tokio::time::timeout(Duration::from_secs(5), async {
        let res = client.ready().await?.call(get(url)).await?;
        Ok::<_, BoxError>(res.into_body().collect().await?.to_bytes())
    })
    .await??;
    Ok(String::from_utf8_lossy(&res).into_owned())
}
