//! Monitor: an eternal loop that polls something on a timer until a
//! condition holds. Each cycle ends with `continue_as_new`, so the history
//! stays one cycle long however long the monitor runs.

use std::time::Duration;

use duro_sdk::{OrchestrationContext, Result};
use serde_json::{Value, json};

/// Polls `url` through the `Poll` activity every `interval_ms` until it
/// answers `done`. Input `{"url", "interval_ms", "polls"}` (`polls`, the
/// cycles so far, is carried from one execution to the next).
async fn monitor(ctx: OrchestrationContext) -> Result<Value> {
    let state: Value = ctx.input()?;
    let polls = state["polls"].as_u64().unwrap_or(0) + 1;
    let answer: String = ctx.call_activity("Poll", &state["url"]).await?;
    if answer.trim() == "done" {
        return Ok(json!({ "polls": polls }));
    }
    ctx.set_custom_status(&json!({ "polls": polls, "last": answer.trim() }));
    let interval = state["interval_ms"].as_u64().unwrap_or(1000);
    ctx.sleep(Duration::from_millis(interval)).await;
    let mut next = state.clone();
    next["polls"] = polls.into();
    ctx.continue_as_new(&next);
    Ok(json!({ "polls": polls }))
}

duro_sdk::export_orchestrations! {
    "Monitor" => monitor,
}
