//! The example client: hyper-util's client behind backstop's client stack.

use std::time::Duration;

use backstop::BoxError;
use backstop::classify::HttpClassifier;
use backstop::hedge::{HedgeCopy, HedgeLayer};
use backstop::metrics::{LittleLayer, LittleMeter};
use backstop::retry::{Idempotent, RetryBudget, RetryLayer};
use backstop::timeout::TimeoutLayer;
use backstop::timeout::headers::send_deadline;
use backstop::token_bucket::{AdaptiveRate, TokenBucket, TokenBucketLayer};
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

/// The header naming a hedged request's copy (`0` for the first, `1` for the duplicate), written
/// from the hedge layer's [`HedgeCopy`] marker so the server can count duplicates.
pub const HEDGE_HEADER: &str = "backstop-hedge";

/// hyper-util's pooled HTTP/1 client, writing each request's deadline into `grpc-timeout`
/// (and `backstop-timeout-ms`) and its hedge marker into [`HEDGE_HEADER`] just before it leaves.
/// (The retry layer writes `backstop-attempt` itself.)
pub fn transport() -> HttpClient {
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http::<Full<Bytes>>();
    BoxCloneSyncService::new(
        client
            .map_request(send_deadline::<Full<Bytes>>)
            .map_request(|mut req: ClientRequest| {
                if let Some(HedgeCopy(copy)) = req.extensions().get::<HedgeCopy>().copied() {
                    req.headers_mut()
                        .insert(HEDGE_HEADER, http::HeaderValue::from(u16::from(copy)));
                }
                req
            })
            .map_err(BoxError::from),
    )
}

/// The client-wide rate limit of the recommended stack, in attempts per second: a ceiling the
/// examples' load stays under, there to bound what one client can send (retries and hedges
/// included) whatever its callers do.
pub const CLIENT_RATE: f64 = 1000.0;
/// The bucket's burst.
pub const CLIENT_BURST: f64 = 100.0;

/// The client stack's settings; `None` leaves a layer out.
pub struct ClientStack {
    /// Little's-law meter at the top (what the caller sees).
    pub meter: Option<LittleMeter>,
    /// The whole call's timeout, retries included.
    pub overall: Option<Duration>,
    /// The retry budget shared by every request of this client.
    pub budget: Option<RetryBudget>,
    /// One duplicate of a slow request (at most 5% extra), below the retry.
    pub hedge: Option<HedgeLayer<HttpClassifier>>,
    /// The client's one token bucket: every attempt (retries and hedges included) takes a token.
    pub bucket: Option<TokenBucket>,
    /// Each attempt's timeout, just above the transport.
    pub attempt: Option<Duration>,
}

impl ClientStack {
    /// metrics → overall timeout 1 s → retry with a shared budget → hedge → adaptive token
    /// bucket → per-attempt timeout 400 ms.
    pub fn recommended() -> Result<Self, BoxError> {
        Ok(ClientStack {
            meter: Some(
                LittleMeter::builder("http_client")
                    .window(Duration::from_secs(1))
                    .build()?,
            ),
            overall: Some(Duration::from_secs(1)),
            budget: Some(RetryBudget::builder("http_client").build()?),
            hedge: Some(
                HedgeLayer::builder()
                    .name("http_client")
                    .classifier(HttpClassifier)
                    .build()?,
            ),
            bucket: Some(
                TokenBucket::builder("http_client")
                    .rate(CLIENT_RATE)
                    .capacity(CLIENT_BURST)
                    .build()?,
            ),
            attempt: Some(Duration::from_millis(400)),
        })
    }

    /// The recommended stack with the AWS SDKs' adaptive rate on the bucket: unlimited until
    /// the first 429/503, then cut to 0.7 x the measured rate at each one and grown back along
    /// CUBIC.
    pub fn with_adaptive_bucket() -> Result<Self, BoxError> {
        Ok(ClientStack {
            bucket: Some(
                TokenBucket::builder("http_client")
                    .adaptive(AdaptiveRate::aws().build()?)
                    .build()?,
            ),
            ..Self::recommended()?
        })
    }

    /// Only the timeouts: the overall one (what a caller will wait) and none per attempt.
    pub fn plain(overall: Duration) -> Self {
        ClientStack {
            meter: None,
            overall: Some(overall),
            budget: None,
            hedge: None,
            bucket: None,
            attempt: None,
        }
    }

    /// Builds the stack over `transport`:
    /// metrics → overall timeout → retry (budget) → hedge → token bucket → attempt timeout.
    pub fn build(&self, transport: HttpClient) -> Result<HttpClient, BoxError> {
        let mut svc = transport;
        if let Some(attempt) = self.attempt {
            svc = wrap(svc, TimeoutLayer::new(attempt)?);
        }
        if let Some(bucket) = &self.bucket {
            let layer = TokenBucketLayer::builder(bucket.clone())
                .classifier(HttpClassifier)
                .build()?;
            svc = wrap(svc, layer);
        }
        if let Some(hedge) = &self.hedge {
            svc = wrap(svc, hedge.clone());
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
