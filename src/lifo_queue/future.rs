/// The response future of [`LifoQueue`](super::LifoQueue): the same future as the backpressure
/// layer's, since both wait at the same gate. It waits for a slot (or fails at once with
/// `QueueFull`, or later with `Shed`), then runs the request. Dropping it while it waits leaves
/// the queue at once; dropping it while it runs frees the slot.
pub type ResponseFuture<S, F, Req, H> = crate::backpressure::ResponseFuture<S, F, Req, H>;
