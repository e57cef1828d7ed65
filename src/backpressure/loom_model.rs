//! A loom model of the queue gate: loom runs every interleaving of the lock-free path (admit
//! with a compare-and-swap, release with a `fetch_sub`) against the locked one (a request
//! starting to wait, a release handing its slot over) and fails if a waiter is stranded (loom
//! reports the deadlock), a slot is granted twice, or a permit is lost.
//!
//! Run: `RUSTFLAGS="--cfg backstop_loom" cargo test --lib backpressure::loom_model`. No
//! shedding, so no clock decides anything: loom needs every replay of a schedule to branch
//! the same way.

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use loom::thread;

use super::gate::{Admission, Config, Gate, Permit, Turn};

fn gate(limit: usize, max_waiting: usize) -> Arc<Gate> {
    let config = Config {
        limit,
        max_waiting,
        shedding: None,
    };
    Arc::new(Gate::new(config, "loom"))
}

/// Wakes a parked loom thread (loom's own `block_on` needs its `futures` feature).
struct Unpark(thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls until ready, parked between polls: a waiter nobody wakes is a deadlock loom reports.
fn block_on<T>(mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> T {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

/// A slot, at once or after waiting (parked until woken); `None` if refused.
fn admit(gate: &Arc<Gate>) -> Option<Permit> {
    match gate.acquire_at(|| None, 2) {
        Admission::Run(permit) => Some(permit),
        Admission::Refused(_) => None,
        Admission::Wait(mut ticket) => block_on(|cx| match ticket.poll_turn(cx) {
            Turn::Granted(permit) => Poll::Ready(Some(permit)),
            Turn::Shed => Poll::Ready(None),
            Turn::Wait(_) => Poll::Pending,
        }),
    }
}

/// The only slot is released while another request arrives: whichever way they interleave,
/// the newcomer is served (never left waiting with the slot free) and the slot comes back.
#[test]
fn a_release_racing_an_arrival_never_strands_it() {
    loom::model(|| {
        let g = gate(1, 1);
        let held = admit(&g).expect("the slot is free");
        let arrival = {
            let g = g.clone();
            thread::spawn(move || admit(&g).is_some())
        };
        drop(held);
        assert!(arrival.join().unwrap(), "served");
        let stats = g.stats();
        assert_eq!((stats.in_flight, stats.waiting), (0, 0));
        assert_eq!((stats.admitted, stats.rejected), (2, 0));
    });
}

/// Two requests at once on one slot with room for one waiter: both are served, one after the
/// other, and the fast path is open again afterwards.
#[test]
fn two_arrivals_on_one_slot_are_both_served_in_turn() {
    loom::model(|| {
        let g = gate(1, 1);
        let in_use = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (g, in_use) = (g.clone(), in_use.clone());
                thread::spawn(move || {
                    let permit = admit(&g).expect("room to wait");
                    let before = in_use.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    assert_eq!(before, 0, "the slot was granted twice");
                    in_use.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    drop(permit);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let stats = g.stats();
        assert_eq!((stats.in_flight, stats.waiting, stats.admitted), (0, 0, 2));
        assert!(matches!(g.acquire_at(|| None, 2), Admission::Run(_)));
    });
}
