//! The one Lua script that keeps a client's fleet-wide bucket in Redis, and the checks on what
//! it answers.

use std::time::Duration;

/// Grants a lease of up to `want` tokens from a token bucket, atomically, on Redis's clock.
///
/// KEYS[1]: the client's bucket, a hash of `t` (Redis time of the last update, µs) and `n`
/// (tokens, fractional). KEYS[2]: the processes serving the client, a sorted set of process ids
/// scored by their last call (µs). ARGV: µs per token, burst, tokens wanted, requests the caller
/// admitted on its local share since its last call (charged now), the caller's id, how long a
/// silent process still counts as live (ms).
///
/// It answers `{granted, wait_us, live}`: `wait_us` (when fewer than wanted were granted) is
/// how long until the bucket holds `want` again, `live` how many processes called for this
/// client within the liveness window. Both keys expire when dropping them changes nothing: the
/// bucket when it would be full again, the set when its last process went silent.
pub(super) const LEASE_SCRIPT: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local debt = tonumber(ARGV[4])
local live_ms = tonumber(ARGV[6])
local state = redis.call('HMGET', KEYS[1], 't', 'n')
local t = tonumber(state[1])
local n = tonumber(state[2])
if t == nil or n == nil then
  t = now
  n = burst
end
if now > t then
  n = math.min(burst, n + (now - t) / interval)
  t = now
end
n = n - debt
local granted = 0
if n >= 1 then
  granted = math.min(want, math.floor(n))
end
n = n - granted
local wait = 0
if granted < want then
  wait = math.ceil((want - n) * interval)
end
redis.call('HSET', KEYS[1], 't', string.format('%.0f', t), 'n', string.format('%.6f', n))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil((burst - n) * interval / 1000) + 1000))
redis.call('ZADD', KEYS[2], string.format('%.0f', now), ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.0f', now - live_ms * 1000))
redis.call('PEXPIRE', KEYS[2], string.format('%.0f', live_ms))
local live = redis.call('ZCARD', KEYS[2])
return {granted, wait, live}
";

/// What one lease call brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lease {
    pub(super) granted: u32,
    /// Zero when the whole lease was granted.
    pub(super) wait: Duration,
    pub(super) live: u32,
}

/// The longest wait an answer may carry: longer is not something this script computes for any
/// quota the builder accepts, so it is read as garbage.
const MAX_WAIT_US: i64 = 1 << 52;

/// Checks the script's answer: anything but three integers in range is garbage (a different
/// script under our key, a proxy answering something else) and counts as a failed call.
pub(super) fn parse(reply: &[i64], want: u32) -> Result<Lease, String> {
    let [granted, wait, live] = reply else {
        return Err(format!("expected 3 integers, got {reply:?}"));
    };
    if !(0..=i64::from(want)).contains(granted) {
        return Err(format!("granted {granted} outside [0, {want}]"));
    }
    if !(0..=MAX_WAIT_US).contains(wait) || (*granted < i64::from(want)) != (*wait > 0) {
        return Err(format!(
            "wait {wait} µs does not fit granted {granted} of {want}"
        ));
    }
    if !(1..=i64::from(u32::MAX)).contains(live) {
        return Err(format!("live processes {live} not at least 1"));
    }
    Ok(Lease {
        granted: *granted as u32,
        wait: Duration::from_micros(*wait as u64),
        live: *live as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sound_answers_parse() {
        assert_eq!(
            parse(&[4, 0, 2], 4),
            Ok(Lease {
                granted: 4,
                wait: Duration::ZERO,
                live: 2
            })
        );
        assert_eq!(
            parse(&[1, 1500, 3], 4).unwrap().wait,
            Duration::from_micros(1500)
        );
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            &[][..],
            &[1, 0][..],
            &[1, 0, 1, 0][..],
            &[5, 0, 1][..],       // more than asked
            &[-1, 10, 1][..],     // negative grant
            &[2, 0, 1][..],       // short grant without a wait
            &[4, 10, 1][..],      // full grant with a wait
            &[0, -5, 1][..],      // negative wait
            &[0, 1 << 60, 1][..], // absurd wait
            &[4, 0, 0][..],       // nobody live, yet someone called
        ] {
            assert!(parse(bad, 4).is_err(), "{bad:?} accepted");
        }
    }
}
