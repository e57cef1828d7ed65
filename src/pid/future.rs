/// The response future of [`Admission`](super::Admission): the inner call's, or an
/// `AdmissionDenied` refusal ready at once. The same future as the throttle layer's, since both
/// either run the request or refuse it.
pub type ResponseFuture<F> = crate::throttle::ResponseFuture<F>;
