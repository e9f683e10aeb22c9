//! The orchestrations of the scenario in DESIGN.md, plus two variations on
//! waiting: `WorkflowWithTimeout` (an event or a timer, whichever comes
//! first) and `FirstOf` (the first of several named events).
//!
//! Build: `cargo build --release --target wasm32-wasip2 -p scenario`; the
//! host loads `scenario.wasm` as named in `workflows/scenario/duro.toml`.

use std::time::Duration;

use duro_sdk::{Either, OrchestrationContext, Result, select, when_any};
use serde::{Deserialize, Serialize};

/// Waits for the event `Workflow`, as in the Durable Functions sample.
async fn workflow(ctx: OrchestrationContext) -> Result<String> {
    let input: String = ctx.input()?;
    ctx.log(&format!("Starting workflow for {input}"));
    let _payload: serde_json::Value = ctx.wait_for_external_event("Workflow").await?;
    ctx.log(&format!("Workflow for {input} is stopping"));
    Ok(format!("Workflow for {input} stopped"))
}

/// Input of `WorkflowWithTimeout`.
#[derive(Deserialize)]
struct TimeoutInput {
    name: String,
    timeout_ms: u64,
}

/// Output of `WorkflowWithTimeout`: which of the two came first.
#[derive(Serialize)]
struct TimeoutOutput {
    name: String,
    outcome: &'static str,
    payload: Option<serde_json::Value>,
}

/// Waits for the event `Workflow` or a timer, whichever comes first.
async fn workflow_with_timeout(ctx: OrchestrationContext) -> Result<TimeoutOutput> {
    let input: TimeoutInput = ctx.input()?;
    ctx.set_custom_status(&"waiting");
    let event = ctx.wait_for_external_event::<serde_json::Value>("Workflow");
    let timer = ctx.sleep(Duration::from_millis(input.timeout_ms));
    let output = match select(event, timer).await {
        Either::Left(payload) => TimeoutOutput {
            name: input.name,
            outcome: "event",
            payload: Some(payload?),
        },
        Either::Right(()) => TimeoutOutput {
            name: input.name,
            outcome: "timeout",
            payload: None,
        },
    };
    ctx.set_custom_status(&output.outcome);
    Ok(output)
}

/// Output of `FirstOf`.
#[derive(Serialize)]
struct FirstOfOutput {
    event: String,
    payload: serde_json::Value,
}

/// Waits for the first of the events named in its input (a list of names).
async fn first_of(ctx: OrchestrationContext) -> Result<FirstOfOutput> {
    let names: Vec<String> = ctx.input()?;
    let waits = names
        .iter()
        .map(|name| ctx.wait_for_external_event::<serde_json::Value>(name));
    let (index, payload) = when_any(waits).await;
    Ok(FirstOfOutput {
        event: names[index].clone(),
        payload: payload?,
    })
}

duro_sdk::export_orchestrations! {
    "Workflow" => workflow,
    "WorkflowWithTimeout" => workflow_with_timeout,
    "FirstOf" => first_of,
}
