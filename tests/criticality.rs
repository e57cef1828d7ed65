//! Criticality: ordered levels that travel with a request, on the wire and through a handler.

use backstop::BoxError;
use backstop::context::{
    self, ByCriticality, CRITICALITY_HEADER, Criticality, CriticalityOf, HasCriticality,
    RequestContext, SameCriticality, ScopeLayer, inherit_context, send_context,
};
use backstop::timeout::headers::GRPC_TIMEOUT_HEADER;
use tower::util::MapRequestLayer;
use tower::{ServiceBuilder, ServiceExt};

type Req = http::Request<()>;

fn tagged(c: Criticality) -> Req {
    let mut req = Req::new(());
    req.set_criticality(c);
    req
}

#[test]
fn levels_are_ordered_lowest_first_and_parse_either_spelling() {
    let mut sorted = Criticality::ALL;
    sorted.sort();
    assert_eq!(sorted, Criticality::ALL);
    assert_eq!(Criticality::Sheddable.index(), 0);
    assert_eq!(Criticality::CriticalPlus.index(), 3);
    for c in Criticality::ALL {
        assert_eq!(c.as_str().parse(), Ok(c));
        assert_eq!(c.as_header_value().parse(), Ok(c));
    }
    assert_eq!(" critical-plus ".parse(), Ok(Criticality::CriticalPlus));
    assert!("urgent".parse::<Criticality>().is_err());
    assert!("critical_plu".parse::<Criticality>().is_err());
    assert_eq!(Criticality::default(), Criticality::Critical);
}

#[test]
fn precedence_request_then_scope_then_default() {
    let by = ByCriticality::new(Criticality::SheddablePlus);
    // Outside any scope, an untagged request takes the layer's default.
    assert_eq!(by.criticality_of(&Req::new(())), Criticality::SheddablePlus);
    let scope = RequestContext::new().with_criticality(Criticality::CriticalPlus);
    scope.sync_scope(|| {
        assert_eq!(by.criticality_of(&Req::new(())), Criticality::CriticalPlus);
        assert_eq!(
            by.criticality_of(&tagged(Criticality::Sheddable)),
            Criticality::Sheddable,
            "the request's own tag wins over the scope"
        );
        // `SameCriticality` never looks.
        assert_eq!(
            SameCriticality.criticality_of(&tagged(Criticality::Sheddable)),
            Criticality::default()
        );
    });
}

#[tokio::test(start_paused = true)]
async fn nested_scopes_keep_the_inner_tag_and_inherit_the_outer_one() {
    let outer = RequestContext::new().with_criticality(Criticality::Critical);
    outer
        .scope(async {
            assert_eq!(context::current_criticality(), Some(Criticality::Critical));
            RequestContext::new()
                .scope(async {
                    assert_eq!(context::current_criticality(), Some(Criticality::Critical));
                })
                .await;
            RequestContext::new()
                .with_criticality(Criticality::Sheddable)
                .scope(async {
                    assert_eq!(context::current_criticality(), Some(Criticality::Sheddable));
                })
                .await;
            // A task spawned for the request keeps its criticality.
            let spawned = context::spawn(async { context::current_criticality() })
                .await
                .unwrap();
            assert_eq!(spawned, Some(Criticality::Critical));
        })
        .await;
    assert_eq!(context::current_criticality(), None);
}

/// A server that reads the header, opens the scope, and calls a client that writes the header:
/// the downstream request carries the inbound criticality, and the deadline alongside it.
#[tokio::test(start_paused = true)]
async fn criticality_crosses_a_handler_on_the_wire() {
    // The next server down reports the header it was sent.
    let client = ServiceBuilder::new()
        .layer(MapRequestLayer::new(send_context::<()>))
        .service_fn(|req: Req| async move {
            Ok::<_, BoxError>((
                req.headers()
                    .get(CRITICALITY_HEADER)
                    .map(|v| v.to_str().unwrap().to_owned()),
                req.headers().contains_key(GRPC_TIMEOUT_HEADER),
            ))
        });
    let server = |client: tower::util::BoxCloneService<_, _, BoxError>| {
        ServiceBuilder::new()
            .layer(MapRequestLayer::new(inherit_context::<()>))
            .layer(ScopeLayer::new())
            .service_fn(move |_req: Req| client.clone().oneshot(Req::new(())))
    };
    let client = tower::util::BoxCloneService::new(client);

    let mut inbound = Req::new(());
    inbound
        .headers_mut()
        .insert(CRITICALITY_HEADER, "sheddable_plus".parse().unwrap());
    inbound
        .headers_mut()
        .insert(GRPC_TIMEOUT_HEADER, "200m".parse().unwrap());
    let (seen, has_deadline) = server(client.clone()).oneshot(inbound).await.unwrap();
    assert_eq!(seen.as_deref(), Some("SHEDDABLE_PLUS"));
    assert!(has_deadline);

    // No tag inbound, none outbound: the next server applies its own default.
    let (seen, has_deadline) = server(client).oneshot(Req::new(())).await.unwrap();
    assert_eq!(seen, None);
    assert!(!has_deadline);
}

#[test]
fn an_explicit_tag_is_not_overwritten_by_the_header() {
    let mut req = tagged(Criticality::CriticalPlus);
    req.headers_mut()
        .insert(CRITICALITY_HEADER, "SHEDDABLE".parse().unwrap());
    let req = context::inherit_criticality(req);
    assert_eq!(req.criticality(), Some(Criticality::CriticalPlus));
    // A malformed header is no tag at all.
    let mut req = Req::new(());
    req.headers_mut()
        .insert(CRITICALITY_HEADER, "VERY".parse().unwrap());
    assert_eq!(context::inherit_criticality(req).criticality(), None);
}
