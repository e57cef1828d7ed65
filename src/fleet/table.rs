//! The local side of the fleet store: per client, the leased tokens this process may spend
//! without asking Redis, and the state of its local share.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};

/// Locks guarding the table: enough that concurrent requests rarely meet on one.
pub(super) const SHARDS: usize = 64;

/// The most clients the local table may hold: 2²² entries.
pub(super) const MAX_KEYS: usize = 1 << 22;

/// One client, as this process sees it. Times are nanoseconds on the handle's clock.
#[derive(Debug, Default)]
pub(super) struct Entry {
    /// Requests seen while tracked: the entry with the fewest is the one a new client replaces.
    pub(super) hits: u32,
    /// Leased tokens left to spend.
    pub(super) tokens: u32,
    /// When the leased tokens lapse, spent or not.
    pub(super) lease_expires: u64,
    /// Redis said the bucket is dry: refuse until then (no call either).
    pub(super) dry_until: u64,
    /// Requests admitted on the local share while Redis was reachable, to be charged to the
    /// fleet's bucket at the next call.
    pub(super) debt: u32,
    /// Requests seen since the last call: with `last_call`, the recent rate a lease is sized
    /// from.
    pub(super) seen: u32,
    pub(super) last_call: u64,
    /// Calls answered for this client so far (0: no rate known yet).
    pub(super) calls: u32,
    /// The size of the last lease asked for.
    pub(super) want: u32,
    pub(super) in_flight: bool,
    /// Processes serving this client, as Redis last counted them (0: never asked).
    pub(super) live: u32,
    /// The local share's GCRA theoretical arrival time (0: a full bucket).
    pub(super) share_tat: u64,
}

/// The hasher of a map whose keys are fingerprints already.
#[derive(Default)]
pub(super) struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, Entry, BuildHasherDefault<Identity>>;

/// A table of at most `per_shard × SHARDS` clients, allocated at build: an insert never grows a
/// map past the capacity it was built with, so the request path does not allocate.
pub(super) struct LeaseTable {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl LeaseTable {
    pub(super) fn new(max_keys: usize) -> Self {
        let per_shard = max_keys.div_ceil(SHARDS).max(1);
        LeaseTable {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(HashMap::with_capacity_and_hasher(
                        per_shard,
                        Default::default(),
                    ))
                })
                .collect(),
            per_shard,
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    pub(super) fn shard(&self, fp: u64) -> MutexGuard<'_, Shard> {
        // The top bits pick the shard; the map hashes by the low bits (identity), so the two
        // choices stay independent.
        let shard = &self.shards[(fp >> 58) as usize % SHARDS];
        // A panic while holding the lock leaves plain numbers behind, still usable.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry of `fp`, inserted (replacing the least used entry of a full shard) if new.
    /// Returns whether a tracked client was forgotten to make room.
    pub(super) fn entry<'a>(
        &self,
        shard: &'a mut Shard,
        fp: u64,
        now: u64,
    ) -> (&'a mut Entry, bool) {
        let mut replaced = false;
        if !shard.contains_key(&fp) && shard.len() >= self.per_shard {
            // One-shot keys have 1 hit and replace each other; the clients that keep coming
            // back stay. An entry with a call in flight is kept so its answer finds it.
            let victim = shard
                .iter()
                .filter(|(_, e)| !e.in_flight)
                .min_by_key(|(_, e)| e.hits)
                .or_else(|| shard.iter().min_by_key(|(_, e)| e.hits))
                .map(|(k, _)| *k);
            if let Some(victim) = victim {
                shard.remove(&victim);
                replaced = true;
            }
        }
        let entry = shard.entry(fp).or_insert_with(|| Entry {
            last_call: now,
            ..Entry::default()
        });
        (entry, replaced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_72_bytes_with_its_key() {
        assert_eq!(std::mem::size_of::<(u64, Entry)>(), 72);
    }

    #[test]
    fn a_full_shard_replaces_its_least_used_client_and_never_grows() {
        let table = LeaseTable::new(SHARDS * 2);
        let mut shard = table.shard(0);
        let cap = shard.capacity();
        // Three fingerprints of shard 0 (top bits zero).
        let (busy, quiet, new) = (1, 2, 3);
        table.entry(&mut shard, busy, 0).0.hits = 10;
        table.entry(&mut shard, quiet, 0).0.hits = 1;
        let (_, replaced) = table.entry(&mut shard, new, 0);
        assert!(replaced);
        assert!(shard.contains_key(&busy) && shard.contains_key(&new));
        assert!(!shard.contains_key(&quiet));
        assert_eq!(shard.capacity(), cap, "no allocation on the request path");
    }
}
