//! The timeout's path allocates nothing beyond what the inner service does: counted with a
//! counting allocator on this thread, for a call and the poll that completes it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use backstop::BoxError;
use backstop::timeout::{Deadline, HasDeadline, TimeoutLayer};
use http::Request;
use tower::{Layer, Service, service_fn};

struct Counting;

thread_local! {
    // `const` and no destructor: reading it never allocates, so the allocator may use it.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations made on this thread by one ready call through `svc` and the poll that answers
/// it; the request is built before counting starts.
fn allocations_per_call<S: Service<Request<()>>>(svc: &mut S, req: Request<()>) -> u64
where
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let before = ALLOCS.with(Cell::get);
    assert!(svc.poll_ready(&mut cx).is_ready());
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(result) => {
            result.unwrap();
        }
        Poll::Pending => panic!("the inner service is ready at once"),
    }
    ALLOCS.with(Cell::get) - before
}

fn leaf() -> impl Service<Request<()>, Response = (), Error = BoxError> + Clone {
    service_fn(|_req: Request<()>| std::future::ready(Ok::<_, BoxError>(())))
}

fn requests() -> [(&'static str, Request<()>); 3] {
    let bare = Request::new(());
    let mut server = Request::new(());
    server.extensions_mut().insert(42u32);
    let mut with_deadline = Request::new(());
    with_deadline.set_deadline(Deadline::after(Duration::from_secs(5)));
    [
        ("no extensions", bare),
        ("an extension", server),
        ("a deadline", with_deadline),
    ]
}

#[test]
fn a_call_allocates_nothing_whatever_the_request_carries() {
    let mut svc = TimeoutLayer::new(Duration::from_secs(1))
        .unwrap()
        .layer(leaf());
    // Warm up whatever the first use of the thread-locals costs.
    allocations_per_call(&mut svc, Request::new(()));
    for (what, req) in requests() {
        assert_eq!(
            allocations_per_call(&mut svc, req),
            0,
            "request with {what}"
        );
    }
}

#[test]
fn the_opt_in_pays_for_the_extension_the_default_saves() {
    // The counter is live: writing the deadline into a bare request costs its map and entry.
    let mut svc = TimeoutLayer::builder()
        .timeout(Duration::from_secs(1))
        .always_write_deadline()
        .build()
        .unwrap()
        .layer(leaf());
    allocations_per_call(&mut svc, Request::new(()));
    let [(_, bare), (_, server), (_, with_deadline)] = requests();
    assert!(allocations_per_call(&mut svc, bare) >= 2);
    assert!(allocations_per_call(&mut svc, server) >= 1);
    assert_eq!(allocations_per_call(&mut svc, with_deadline), 0);
}
