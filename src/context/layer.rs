use tower_layer::Layer;

use super::Scope;

/// Runs the inner service (the handler) inside the scope of each request's
/// [`RequestContext`](super::RequestContext), so the calls it makes inherit its deadline.
///
/// Put it innermost in a server stack, just above the handler, so the scope holds the deadline
/// every layer above has settled on; see the [module docs](super).
///
/// ```
/// use backstop::context::ScopeLayer;
/// use tower::ServiceBuilder;
///
/// let handler = ServiceBuilder::new()
///     .layer(ScopeLayer::new())
///     .service_fn(|_req: http::Request<()>| async {
///         // Every client call made here inherits the request's deadline.
///         Ok::<_, backstop::BoxError>(http::Response::new(()))
///     });
/// # let _ = handler;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ScopeLayer {
    _priv: (),
}

impl ScopeLayer {
    /// The layer. It has nothing to configure: the request says what the scope holds.
    pub fn new() -> Self {
        ScopeLayer::default()
    }
}

impl<S> Layer<S> for ScopeLayer {
    type Service = Scope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Scope::new(inner)
    }
}
