//! The activity loop: claims activity rows that are due, runs each attempt
//! on the activity host (a bounded number at once), and records its end: a
//! retry later (a new due time on the row) or the result in the instance's
//! inbox.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use super::Inner;
use crate::model::Message;
use crate::store::{ActivityFinish, ActivityWork};

pub(super) async fn activity_loop(inner: Arc<Inner>, mut stopped: watch::Receiver<bool>) {
    let mut open = inner.activities_open.subscribe();
    tokio::select! {
        _ = open.wait_for(|open| *open) => {}
        _ = stopped.changed() => return,
    }
    let slots = Arc::new(Semaphore::new(inner.config.activity_concurrency.max(1)));
    loop {
        if *stopped.borrow() {
            return;
        }
        let free = slots.available_permits();
        if free > 0 {
            let now = inner.config.clock.now();
            let lease_until = now + super::CLAIM_LEASE_MS;
            match inner.store.claim_activities(free, now, lease_until).await {
                Ok(claimed) => {
                    for work in claimed {
                        let permit = slots.clone().acquire_owned().await.expect("open");
                        let inner = inner.clone();
                        tokio::spawn(async move {
                            let _permit = permit;
                            attempt(&inner, work).await;
                            inner.activities.notify_one();
                        });
                    }
                }
                Err(e) => tracing::error!("claiming activities failed: {e}"),
            }
        }
        let next = inner.store.next_activity_due().await;
        let wait = inner.wait_for(next, "activities");
        tokio::select! {
            _ = inner.activities.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// Run one attempt in a span of its instance's trace (when spans are made:
/// exported, or logged at debug level).
async fn attempt(inner: &Arc<Inner>, work: ActivityWork) {
    use tracing::Instrument as _;
    let span = tracing::debug_span!(
        "activity",
        activity = %work.call.name,
        instance = %work.call.instance,
        task = work.call.task,
        attempt = work.attempt,
        trace_id = tracing::field::Empty,
    );
    if !span.is_disabled() {
        let trace = match inner.store.instance(&work.call.instance).await {
            Ok(Some(instance)) => crate::trace::instance_trace(&instance),
            _ => crate::trace::TraceContext::root(),
        };
        crate::trace::join(&span, &*inner.config.trace_link, || trace);
    }
    run_attempt(inner, work).instrument(span).await
}

/// Run one attempt and record how it ended.
async fn run_attempt(inner: &Arc<Inner>, work: ActivityWork) {
    let started = inner.config.clock.now();
    if work.call.name == crate::durable_http::ACTIVITY {
        let result = durable_http(inner, &work).await;
        return finish(inner, work, started, result).await;
    }
    let registered = inner
        .activity_registry
        .read()
        .expect("registry poisoned")
        .get(&work.call.name)
        .cloned();
    let result = match registered {
        None => Err(format!(
            "no activity named `{}` is registered",
            work.call.name
        )),
        Some(activity) => {
            match inner
                .activity_host
                .run(
                    &activity.digest,
                    &activity.options,
                    inner.config.activity_budget,
                    &work.call.name,
                    &work.call.input,
                    &crate::activity::ActivityInfo {
                        instance_id: work.call.instance.clone(),
                        task: work.call.task,
                        attempt: work.attempt,
                    },
                )
                .await
            {
                Ok(result) => result,
                Err(trouble) => {
                    // Not the activity's fault, not an attempt: the row stays
                    // due and is claimed again after a pause.
                    tracing::warn!(activity = %work.call.name, "{trouble}; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let now = inner.config.clock.now();
                    let finish = ActivityFinish::Retry {
                        attempt: work.attempt,
                        run_at: now,
                        first_at: work.first_at.unwrap_or(started),
                    };
                    let what = format!("putting activity `{}` back", work.call.name);
                    let _ = inner
                        .until_stored(&what, || {
                            inner.store.finish_activity(
                                work.id,
                                &work.call.instance,
                                finish.clone(),
                                now,
                            )
                        })
                        .await;
                    return;
                }
            }
        }
    };
    let outcome = if result.is_ok() {
        "completed"
    } else {
        "failed"
    };
    inner
        .metrics
        .activity_attempts
        .get_or_create(&vec![
            ("activity", work.call.name.clone()),
            ("result", outcome.to_string()),
        ])
        .inc();
    finish(inner, work, started, result).await;
}

/// The built-in `ctx.call_http` activity, with the calling orchestration's
/// allowlist.
async fn durable_http(inner: &Arc<Inner>, work: &ActivityWork) -> Result<String, String> {
    let orchestration = match inner.store.instance(&work.call.instance).await {
        Ok(Some(instance)) => instance.name,
        _ => {
            return Err(format!(
                "call_http: instance `{}` is gone",
                work.call.instance
            ));
        }
    };
    let allowed = inner
        .http_allowed
        .read()
        .expect("allowlist poisoned")
        .get(&orchestration)
        .cloned()
        .unwrap_or_default();
    crate::durable_http::call(
        &work.call.input,
        &allowed,
        &inner.config.tls,
        inner.config.activity_budget,
    )
    .await
}

/// Record how an attempt ended: a retry later, or the result.
async fn finish(
    inner: &Arc<Inner>,
    work: ActivityWork,
    started: crate::model::Millis,
    result: Result<String, String>,
) {
    let limits = &inner.config.limits;
    // A result too large to store is the attempt's error; an error is cut
    // to a payload's size.
    let result = match result {
        Ok(output) => limits
            .check_payload(
                &format!("the result of activity `{}`", work.call.name),
                &output,
            )
            .map(|()| output),
        Err(error) => Err(limits.truncate(error)),
    };
    let first_at = work.first_at.unwrap_or(started);
    let now = inner.config.clock.now();
    let retry =
        match &result {
            Ok(_) => None,
            Err(_) => work.call.retry.as_ref().and_then(|policy| {
                policy.delay_before(work.attempt + 1, now.saturating_sub(first_at))
            }),
        };
    let finish = match (result, retry) {
        (Err(error), Some(delay)) => {
            tracing::info!(activity = %work.call.name, attempt = work.attempt, "failed, retrying in {delay} ms: {error}");
            ActivityFinish::Retry {
                attempt: work.attempt + 1,
                run_at: now.saturating_add(delay),
                first_at,
            }
        }
        (result, _) => ActivityFinish::Done(Message::ActivityDone {
            task: work.call.task,
            execution: work.call.execution.clone(),
            result,
            attempts: work.attempt,
        }),
    };
    let done = matches!(finish, ActivityFinish::Done(_));
    let what = format!("recording an attempt of activity `{}`", work.call.name);
    let recorded = inner
        .until_stored(&what, || {
            inner
                .store
                .finish_activity(work.id, &work.call.instance, finish.clone(), now)
        })
        .await;
    match recorded {
        // The instance has a message: run its episode.
        Ok(()) if done => inner.has_work(&work.call.instance),
        Ok(()) => {}
        // Stopping: the row's lease runs out and the activity runs again
        // on whichever host claims it (at least once).
        Err(e) => tracing::error!(activity = %work.call.name, "{what} failed: {e}"),
    }
}
