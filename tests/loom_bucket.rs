//! A loom model of the token bucket's state word: loom runs every interleaving of the
//! compare-and-swap loops of `try_acquire`, `add` and `set_capacity` on one bucket and checks
//! that no token is granted twice, lost, or held above the capacity.
//!
//! Run: `RUSTFLAGS="--cfg backstop_loom" cargo test --release --test loom_bucket`
//! (`.ci/run` does). The rate is 0, so the time each thread reads does not matter: every token
//! comes from the start or from `add`.
#![cfg(backstop_loom)]

use backstop::token_bucket::TokenBucket;
use loom::thread;

fn bucket(capacity: f64) -> TokenBucket {
    TokenBucket::new("loom", capacity, 0.0).unwrap()
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

/// A grant racing a capacity cut: the cut never leaves more than the new capacity, and the
/// grant is never undone or doubled.
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
        let left = b.tokens();
        assert!(granted, "the bucket held a token throughout");
        assert!(left <= 2.0, "{left} above the new capacity");
        // Taken before the cut: min(3, 2) = 2 left; after it: 2 - 1 = 1.
        assert!(left == 1.0 || left == 2.0, "left {left}");
    });
}
