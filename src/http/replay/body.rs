//! The replayable body and the handle the retry and hedge layers read.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use metrics::Counter;

use crate::error::BoxError;

/// The most a [`ReplayBody`] keeps by default: 64 KiB, as Linkerd's proxy does.
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;

/// A request body that can be cloned and sent again; see the [module docs](super).
///
/// Every clone reads the whole body from its start: first what the copies before it kept, then
/// the rest of the original stream. Clones are cheap (one reference count).
pub struct ReplayBody<B> {
    shared: Arc<Shared<B>>,
    /// The next kept chunk this clone has not read.
    pos: usize,
    /// Whether this clone has been handed the trailers (or learned there are none).
    done: bool,
    /// This clone's slot in the waiters, when it waits on the original stream.
    id: u64,
}

/// Why a copy of a request could not be sent in full: the body outgrew its limit (or failed)
/// after an earlier copy had read past this one. The copy ahead of it carries the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotReplayable;

impl fmt::Display for NotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the request body can no longer be replayed (it outgrew the replay limit or failed)",
        )
    }
}

impl std::error::Error for NotReplayable {}

/// Tells whether a request's body can still be sent again. [`ReplayBodyLayer`](super::ReplayBodyLayer)
/// puts one in each request's extensions, where the retry and hedge layers find it.
#[derive(Clone)]
pub struct ReplayHandle {
    state: Arc<dyn Replayable>,
}

impl ReplayHandle {
    /// True while every byte the body has produced is still kept (or it has produced none).
    pub fn is_replayable(&self) -> bool {
        self.state.is_replayable()
    }
}

impl fmt::Debug for ReplayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayHandle")
            .field("replayable", &self.is_replayable())
            .finish()
    }
}

trait Replayable: Send + Sync {
    fn is_replayable(&self) -> bool;
}

struct Shared<B> {
    state: Mutex<State<B>>,
    wakers: Arc<WakeAll>,
    next_id: AtomicU64,
    limit: usize,
    abandoned_too_large: Counter,
    abandoned_error: Counter,
}

struct State<B> {
    /// The original stream; `None` once it has ended or failed.
    source: Option<Pin<Box<B>>>,
    /// What the stream has produced so far, while it fits the limit.
    kept: Vec<Bytes>,
    kept_bytes: usize,
    /// How many chunks the stream has produced in all (kept or not).
    produced: usize,
    trailers: Option<HeaderMap>,
    /// Set once the stream outgrew the limit or failed: nothing more is kept.
    abandoned: bool,
}

impl<B: Send> Replayable for Shared<B> {
    fn is_replayable(&self) -> bool {
        !lock(&self.state).abandoned
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while the lock was held leaves the state consistent (each update is one field).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B> ReplayBody<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    /// Wraps `body`, keeping up to `limit` bytes for replay. `name` labels the abandoned counter.
    pub(super) fn new(body: B, limit: usize, too_large: Counter, error: Counter) -> Self {
        // A body that says it is larger than the limit is never kept at all.
        let too_big = body.size_hint().lower() > limit as u64;
        if too_big {
            too_large.increment(1);
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                source: Some(Box::pin(body)),
                kept: Vec::new(),
                kept_bytes: 0,
                produced: 0,
                trailers: None,
                abandoned: too_big,
            }),
            wakers: Arc::new(WakeAll::default()),
            next_id: AtomicU64::new(1),
            limit,
            abandoned_too_large: too_large,
            abandoned_error: error,
        });
        ReplayBody {
            shared,
            pos: 0,
            done: false,
            id: 0,
        }
    }

    /// The handle that tells whether this body can still be replayed.
    pub fn handle(&self) -> ReplayHandle {
        ReplayHandle {
            state: self.shared.clone(),
        }
    }
}

impl<B> ReplayBody<B> {
    /// True while every byte the body has produced is still kept.
    pub fn is_replayable(&self) -> bool {
        !lock(&self.shared.state).abandoned
    }
}

impl<B> Clone for ReplayBody<B> {
    /// A copy that reads the body from its start.
    fn clone(&self) -> Self {
        ReplayBody {
            shared: self.shared.clone(),
            pos: 0,
            done: false,
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        self.shared.wakers.forget(self.id);
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayBody")
            .field("pos", &self.pos)
            .field("limit", &self.shared.limit)
            .finish_non_exhaustive()
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let shared = &*this.shared;
        let mut state = lock(&shared.state);
        // Replay what the copies ahead of this one kept.
        if this.pos < state.produced {
            if state.abandoned {
                this.done = true;
                return Poll::Ready(Some(Err(NotReplayable.into())));
            }
            let chunk = state.kept[this.pos].clone();
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(source) = state.source.as_mut() else {
            // The stream has ended: its trailers, if any, then the end.
            this.done = true;
            if state.abandoned && state.produced > this.pos {
                return Poll::Ready(Some(Err(NotReplayable.into())));
            }
            return Poll::Ready(state.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        };
        // This copy is ahead: read the original stream. It is polled with a waker that wakes
        // every copy waiting on it, so a copy that stops polling never strands the others.
        shared.wakers.register(this.id, cx.waker());
        let waker = Waker::from(shared.wakers.clone());
        let polled = source.as_mut().poll_frame(&mut Context::from_waker(&waker));
        let frame = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        let out = match frame {
            None => {
                state.source = None;
                this.done = true;
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                state.source = None;
                if !state.abandoned {
                    state.abandoned = true;
                    state.kept = Vec::new();
                    shared.abandoned_error.increment(1);
                }
                this.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    state.produced += 1;
                    this.pos = state.produced;
                    if !state.abandoned {
                        if state.kept_bytes + chunk.len() <= shared.limit {
                            state.kept_bytes += chunk.len();
                            state.kept.push(chunk.clone());
                        } else {
                            state.abandoned = true;
                            state.kept = Vec::new();
                            shared.abandoned_too_large.increment(1);
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(chunk))))
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        state.trailers = Some(trailers.clone());
                        // Trailers end the body for every copy.
                        state.source = None;
                        this.done = true;
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    // A frame kind http-body does not know yet: nothing to keep, skip it.
                    Err(_) => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                },
            },
        };
        drop(state);
        // What this copy read, the others may be waiting for.
        shared.wakers.wake_all();
        out
    }

    fn is_end_stream(&self) -> bool {
        if self.done {
            return true;
        }
        let state = lock(&self.shared.state);
        self.pos >= state.produced
            && state
                .source
                .as_ref()
                .map_or(state.trailers.is_none(), |s| s.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let state = lock(&self.shared.state);
        let unread: u64 = if state.abandoned {
            0
        } else {
            state.kept[self.pos.min(state.kept.len())..]
                .iter()
                .map(|c| c.len() as u64)
                .sum()
        };
        match &state.source {
            Some(source) if self.pos >= state.produced || !state.abandoned => {
                let mut hint = source.size_hint();
                hint.set_lower(hint.lower().saturating_add(unread));
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper.saturating_add(unread));
                }
                hint
            }
            Some(_) => SizeHint::default(),
            None => SizeHint::with_exact(unread),
        }
    }
}

/// The copies waiting on the original stream, woken together.
#[derive(Default)]
struct WakeAll {
    waiting: Mutex<Vec<(u64, Waker)>>,
}

impl WakeAll {
    fn register(&self, id: u64, waker: &Waker) {
        let mut waiting = lock(&self.waiting);
        match waiting.iter_mut().find(|(i, _)| *i == id) {
            Some((_, w)) => w.clone_from(waker),
            None => waiting.push((id, waker.clone())),
        }
    }

    fn forget(&self, id: u64) {
        let mut waiting = lock(&self.waiting);
        waiting.retain(|(i, _)| *i != id);
        // The original stream may hold the leaving copy's wake-up: pass it on.
        let others = std::mem::take(&mut *waiting);
        drop(waiting);
        others.into_iter().for_each(|(_, w)| w.wake());
    }

    fn wake_all(&self) {
        let waiting = std::mem::take(&mut *lock(&self.waiting));
        waiting.into_iter().for_each(|(_, w)| w.wake());
    }
}

impl Wake for WakeAll {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}
