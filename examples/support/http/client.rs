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

/// The rate limit of the recommended stack's bucket, in attempts per second, for all the clients
/// of a run together: a ceiling the examples' load stays under, there to bound what a client can
/// send (retries and hedges included) whatever its callers do. Each of `n` clients gets 1/n.
pub const CLIENT_RATE: f64 = 1000.0;
/// The bucket's burst, for all the clients of a run together (each of `n` gets 1/n).
pub const CLIENT_BURST: f64 = 100.0;

/// How a client's token bucket is made. Each client (each `x-client-id`) is a process of its
/// own with a bucket of its own, so a client slows down for its own throttles only; one bucket
/// shared by many clients would take every client's 429s as separate congestion events and cut
/// again and again.
#[derive(Debug, Clone)]
pub enum BucketSpec {
    /// This one bucket, shared by every client built from the stack.
    Shared(TokenBucket),
    /// A fixed rate and burst.
    Fixed { rate: f64, burst: f64 },
    /// The AWS SDKs' adaptive rate, unlimited until the first throttle, never above `max_rate`.
    Adaptive { max_rate: f64 },
}

impl BucketSpec {
    /// The same bucket sized for one of `clients` clients sharing the whole (a shared bucket
    /// stays as it is).
    pub fn share(&self, clients: u64) -> Self {
        let n = clients.max(1) as f64;
        match self.clone() {
            BucketSpec::Shared(bucket) => BucketSpec::Shared(bucket),
            BucketSpec::Fixed { rate, burst } => BucketSpec::Fixed {
                rate: rate / n,
                burst: (burst / n).max(1.0),
            },
            BucketSpec::Adaptive { max_rate } => BucketSpec::Adaptive {
                max_rate: max_rate / n,
            },
        }
    }

    /// A new bucket (`name="http_client"`: every client's bucket writes the same series), or
    /// the shared one.
    pub fn make(&self) -> Result<TokenBucket, BoxError> {
        let builder = TokenBucket::builder("http_client");
        Ok(match *self {
            BucketSpec::Shared(ref bucket) => bucket.clone(),
            BucketSpec::Fixed { rate, burst } => builder.rate(rate).capacity(burst).build()?,
            BucketSpec::Adaptive { max_rate } => builder
                .adaptive(AdaptiveRate::aws().max_rate(max_rate).build()?)
                .build()?,
        })
    }
}

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
    /// The client's token bucket: every attempt (retries and hedges included) takes a token.
    /// Each client [`build`](Self::build) or [`build_clients`](Self::build_clients) makes gets
    /// a new bucket, unless the spec is [`BucketSpec::Shared`].
    pub bucket: Option<BucketSpec>,
    /// Each attempt's timeout, just above the transport.
    pub attempt: Option<Duration>,
}

/// One client built by [`ClientStack::build_clients`]: its stack, and its own bucket.
pub struct BuiltClient {
    pub service: HttpClient,
    pub bucket: Option<TokenBucket>,
}

impl ClientStack {
    /// metrics → overall timeout 1 s → retry with a shared budget → hedge → token bucket
    /// (1000/s, burst 100) → per-attempt timeout 400 ms.
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
                HedgeLayer::builder("http_client")
                    .classifier(HttpClassifier)
                    .build()?,
            ),
            bucket: Some(BucketSpec::Fixed {
                rate: CLIENT_RATE,
                burst: CLIENT_BURST,
            }),
            attempt: Some(Duration::from_millis(400)),
        })
    }

    /// The recommended stack with the AWS SDKs' adaptive rate on the bucket: unlimited until
    /// the first 429/503, then cut to 0.7 x the measured rate at each congestion event and grown
    /// back along CUBIC, never above [`CLIENT_RATE`].
    pub fn with_adaptive_bucket() -> Result<Self, BoxError> {
        Ok(ClientStack {
            bucket: Some(BucketSpec::Adaptive {
                max_rate: CLIENT_RATE,
            }),
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

    /// Builds one client over `transport`:
    /// metrics → overall timeout → retry (budget) → hedge → token bucket → attempt timeout.
    pub fn build(&self, transport: HttpClient) -> Result<HttpClient, BoxError> {
        let bucket = self.bucket.as_ref().map(BucketSpec::make).transpose()?;
        self.build_with(transport, bucket.as_ref())
    }

    /// Builds `clients` clients over one `transport`, each with a bucket of its own sized for
    /// 1/`clients` of the whole ([`BucketSpec::share`]). The meter, retry budget and hedge
    /// stay shared: the meter sees all the callers, and the budget and hedge bound extra load
    /// as ratios of the requests, so sharing them changes little.
    pub fn build_clients(
        &self,
        transport: HttpClient,
        clients: u64,
    ) -> Result<Vec<BuiltClient>, BoxError> {
        (0..clients.max(1))
            .map(|_| {
                let bucket = self
                    .bucket
                    .as_ref()
                    .map(|spec| spec.share(clients).make())
                    .transpose()?;
                Ok(BuiltClient {
                    service: self.build_with(transport.clone(), bucket.as_ref())?,
                    bucket,
                })
            })
            .collect()
    }

    fn build_with(
        &self,
        transport: HttpClient,
        bucket: Option<&TokenBucket>,
    ) -> Result<HttpClient, BoxError> {
        let mut svc = transport;
        if let Some(attempt) = self.attempt {
            svc = wrap(svc, TimeoutLayer::new(attempt)?);
        }
        if let Some(bucket) = bucket {
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

/// A GET of `url`. A GET is idempotent by its method already; the marker also lets a stack
/// with a stricter `idempotent_if` rule resend it.
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
