//! The trace context of the request a task serves, as an opaque string (a W3C
//! `traceparent`, written by the HTTP adapter), so the events the request makes keep a
//! reference to it without any domain crate knowing about tracing.

tokio::task_local! {
    static CURRENT: Option<String>;
}

/// Runs `f` with `context` as the task's trace context.
pub async fn scope<F: std::future::Future>(context: Option<String>, f: F) -> F::Output {
    CURRENT.scope(context, f).await
}

/// The trace context of the running task, if a request set one.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scoped_only_inside() {
        assert_eq!(current(), None);
        let inside = scope(Some("00-ab-cd-01".to_owned()), async { current() }).await;
        assert_eq!(inside.as_deref(), Some("00-ab-cd-01"));
        assert_eq!(current(), None);
    }
}
