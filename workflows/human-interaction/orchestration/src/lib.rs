//! Human interaction: ask a person, wait for their answer for a while, and
//! escalate when it does not come. The wait is a durable timer: the
//! instance costs nothing but rows while it waits, for minutes or weeks.

use std::time::Duration;

use duro_sdk::{OrchestrationContext, Result};
use serde_json::Value;

/// Sends the request for approval, waits for the `Approve` event (a bool)
/// for `{"timeout_ms"}` (a day by default), and escalates if none came.
async fn approval(ctx: OrchestrationContext) -> Result<String> {
    let request: Value = ctx.input()?;
    let timeout = Duration::from_millis(request["timeout_ms"].as_u64().unwrap_or(86_400_000));
    let _: String = ctx
        .call_activity("RequestApproval", &ctx.instance_id())
        .await?;
    ctx.set_custom_status(&"waiting for approval");
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
    "Approval" => approval,
}
