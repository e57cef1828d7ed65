//! A loom model of the token bucket's state word: loom runs every interleaving of the
//! compare-and-swap loops of `try_acquire`, `add` and `set_capacity` on one bucket and checks
//! that no token is granted twice, lost, or kept above the capacity.
//!
//! Run: `RUSTFLAGS="--cfg backstop_loom" cargo test --lib token_bucket::loom_model`
//! (`.ci/run` does). The buckets run on a manual clock that never moves: loom replays each
//! schedule and needs every run of it to take the same branches, which a real clock ticking
//! over a millisecond between two runs would break. The rate is 0, so every token comes from
//! the start or from `add`. Larger models hit loom's own modification-order assertion
//! (tokio-rs/loom#252), so these stay small.

use super::{Clock, TokenBucket};
use loom::thread;

fn bucket(capacity: f64) -> TokenBucket {
    let (clock, _frozen) = Clock::manual();
    TokenBucket::builder("loom")
        .capacity(capacity)
        .rate(0.0)
        .clock(clock)
        .build()
        .unwrap()
}

/// Two takers after one token, and a giver: the token is granted once, and the refund is
/// granted or kept, never both and never lost.
#[test]
fn grants_and_refunds_conserve_tokens() {
    loom::model(|| {
        let b = bucket(2.0);
        assert!(b.try_acquire(1));
        let takers: Vec<_> = (0..2)
            .map(|_| {
                let b = b.clone();
                thread::spawn(move || u32::from(b.try_acquire(1)))
            })
            .collect();
        b.add(1);
        let granted: u32 = takers.into_iter().map(|t| t.join().unwrap()).sum();
        let left = b.tokens();
        // One token was there, one came back: 2 in all, and the capacity (2) never caps it.
        assert_eq!(
            f64::from(granted) + left,
            2.0,
            "granted {granted}, left {left}"
        );
        assert!(granted >= 1, "a token was there throughout");
    });
}

/// A grant racing a capacity cut: the grant is never undone or doubled, and the cut really
/// drops what is above the new capacity (raising it again afterwards brings nothing back).
#[test]
fn a_capacity_cut_racing_a_grant_keeps_the_bound() {
    loom::model(|| {
        let b = bucket(4.0);
        let taker = {
            let b = b.clone();
            thread::spawn(move || b.try_acquire(1))
        };
        b.set_capacity(2.0);
        let granted = taker.join().unwrap();
        assert!(granted, "the bucket held a token throughout");
        b.set_capacity(4.0);
        let left = b.tokens();
        // Taken before the cut: min(3, 2) = 2 left; after it: 2 - 1 = 1.
        assert!(left == 1.0 || left == 2.0, "left {left}");
    });
}
