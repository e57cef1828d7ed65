//! The future both layers return: wait for a permit (or a refusal), make the inner service
//! ready, call it, and hand the permit to the response.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower_service::Service;

use super::gate::{Admission, Permit, Ticket, Turn};
use super::permit::Hold;
use crate::error::{BoxError, OverloadReason, Overloaded};

// The inner future is a type parameter of its own, not `S::Future`: a field typed by a
// projection through `S` makes rustc prove `S`'s `Service` bounds with erased lifetimes when
// it checks that a task holding this future is `Send`, which fails for a `BoxError` inner
// error (rust-lang/rust#64552; tests/spawn_send.rs).
#[pin_project]
pub(crate) struct Admit<S, F, Req, H> {
    #[pin]
    state: State<S, F, Req>,
    _hold: PhantomData<fn() -> H>,
}

#[pin_project(project = StateProj)]
enum State<S, F, Req> {
    Waiting {
        ticket: Ticket,
        // Boxed because only waiters need it: the fast path allocates nothing.
        sleep: Option<Pin<Box<Sleep>>>,
        service: Option<S>,
        request: Option<Req>,
    },
    Readying {
        permit: Option<Permit>,
        service: S,
        request: Option<Req>,
    },
    Running {
        #[pin]
        future: F,
        permit: Option<Permit>,
    },
    Refused {
        error: Option<Overloaded>,
    },
    Done,
}

impl<S, F, Req, H> Admit<S, F, Req, H> {
    /// Starts from what the gate decided. `service` is a clone of the layer's inner service: it
    /// is made ready only once the permit is ours, so waiting never holds a slot below us.
    pub(crate) fn new(admission: Admission, service: S, request: Req) -> Self {
        let state = match admission {
            Admission::Run(permit) => State::Readying {
                permit: Some(permit),
                service,
                request: Some(request),
            },
            Admission::Wait(ticket) => State::Waiting {
                ticket,
                sleep: None,
                service: Some(service),
                request: Some(request),
            },
            Admission::Refused(error) => State::Refused { error: Some(error) },
        };
        Admit {
            state,
            _hold: PhantomData,
        }
    }
}

impl<S, F, Req, H> Future for Admit<S, F, Req, H>
where
    S: Service<Req, Future = F>,
    F: Future<Output = Result<S::Response, S::Error>>,
    S::Error: Into<BoxError>,
    H: Hold<S::Response>,
{
    type Output = Result<H::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        let mut timer_fired = false;
        loop {
            match state.as_mut().project() {
                StateProj::Waiting {
                    ticket,
                    sleep,
                    service,
                    request,
                } => match ticket.poll_turn(cx) {
                    Turn::Granted(permit) => {
                        let (Some(service), Some(request)) = (service.take(), request.take())
                        else {
                            unreachable!("a waiting future keeps its service and request")
                        };
                        state.set(State::Readying {
                            permit: Some(permit),
                            service,
                            request: Some(request),
                        });
                    }
                    Turn::Shed => {
                        state.set(State::Done);
                        return Poll::Ready(Err(Overloaded::new(OverloadReason::Shed).into()));
                    }
                    Turn::Wait(None) => return Poll::Pending,
                    Turn::Wait(Some(at)) => {
                        if timer_fired {
                            // The timer said the time had come but the clock disagrees (it can
                            // lag by a tick); yield rather than spin.
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        let timer = arm(sleep, at);
                        if timer.poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        timer_fired = true;
                    }
                },
                StateProj::Readying {
                    permit,
                    service,
                    request,
                } => {
                    if let Err(e) = ready!(service.poll_ready(cx)) {
                        state.set(State::Done);
                        return Poll::Ready(Err(e.into()));
                    }
                    let permit = permit.take();
                    let request = request.take().expect("request is taken once");
                    let future = service.call(request);
                    state.set(State::Running { future, permit });
                }
                StateProj::Running { future, permit } => {
                    let result = ready!(future.poll(cx));
                    let permit = permit.take().expect("permit is taken once");
                    state.set(State::Done);
                    return Poll::Ready(match result {
                        Ok(response) => Ok(H::hold(response, permit)),
                        Err(e) => {
                            drop(permit);
                            Err(e.into())
                        }
                    });
                }
                StateProj::Refused { error } => {
                    let error = error.take().expect("polled after completion");
                    state.set(State::Done);
                    return Poll::Ready(Err(error.into()));
                }
                StateProj::Done => panic!("Admit polled after completion"),
            }
        }
    }
}

/// Points the waiter's timer at `at`, creating it on first use.
fn arm(sleep: &mut Option<Pin<Box<Sleep>>>, at: Instant) -> Pin<&mut Sleep> {
    match sleep {
        Some(timer) => {
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
        }
        None => *sleep = Some(Box::pin(sleep_until(at))),
    }
    sleep.as_mut().expect("armed above").as_mut()
}

impl<S, F, Req, H> std::fmt::Debug for Admit<S, F, Req, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting",
            State::Readying { .. } => "readying",
            State::Running { .. } => "running",
            State::Refused { .. } => "refused",
            State::Done => "done",
        };
        f.debug_struct("Admit").field("state", &state).finish()
    }
}
