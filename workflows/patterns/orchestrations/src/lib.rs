//! The Durable Functions application patterns, as duro orchestrations:
//! function chaining, fan-out/fan-in, the async HTTP API (any of these
//! started through the `Start` HTTP function), monitor, human interaction.

use std::time::Duration;

use duro_sdk::{OrchestrationContext, Result, when_all};
use serde_json::{Value, json};

/// Function chaining: three activities in sequence, each result feeding the
/// output.
async fn chaining(ctx: OrchestrationContext) -> Result<Vec<String>> {
    let mut greetings = Vec::new();
    for city in ["Tokyo", "Seattle", "London"] {
        greetings.push(ctx.call_activity("SayHello", &city).await?);
    }
    Ok(greetings)
}

/// Fan-out/fan-in: `input` activities at once, their results summed.
async fn fan_out_fan_in(ctx: OrchestrationContext) -> Result<i64> {
    let n: i64 = ctx.input()?;
    let squares = when_all((1..=n).map(|i| ctx.call_activity::<_, i64>("Square", &i))).await;
    squares.into_iter().sum()
}

/// The work behind the async HTTP API: one activity.
async fn job(ctx: OrchestrationContext) -> Result<String> {
    let input: String = ctx.input()?;
    ctx.call_activity("Process", &input).await
}

/// Monitor: poll a URL through an activity every `interval_ms` until it
/// answers `done`, continuing as new after each poll so the history stays
/// one cycle long. Input `{"url", "interval_ms", "polls"}`.
async fn monitor(ctx: OrchestrationContext) -> Result<Value> {
    let state: Value = ctx.input()?;
    let polls = state["polls"].as_u64().unwrap_or(0) + 1;
    let answer: String = ctx.call_activity("Poll", &state["url"]).await?;
    if answer.trim() == "done" {
        return Ok(json!({ "polls": polls }));
    }
    let interval = state["interval_ms"].as_u64().unwrap_or(1000);
    ctx.sleep(Duration::from_millis(interval)).await;
    let mut next = state.clone();
    next["polls"] = polls.into();
    ctx.continue_as_new(&next);
    Ok(json!({ "polls": polls }))
}

/// Human interaction: wait for `Approve` (a bool) for `input` ms, then
/// escalate through an activity.
async fn approval(ctx: OrchestrationContext) -> Result<String> {
    let timeout = Duration::from_millis(ctx.input()?);
    match ctx
        .wait_for_external_event_with_timeout::<bool>("Approve", timeout)
        .await?
    {
        Some(true) => Ok("approved".into()),
        Some(false) => Ok("rejected".into()),
        None => ctx.call_activity("Escalate", &ctx.instance_id()).await,
    }
}

duro_sdk::export_orchestrations! {
    "Chaining" => chaining,
    "FanOutFanIn" => fan_out_fan_in,
    "Job" => job,
    "Monitor" => monitor,
    "Approval" => approval,
}
