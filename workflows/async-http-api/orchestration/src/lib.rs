//! The work behind the async HTTP API: long enough that a client should not
//! hold a connection open for it.

use duro_sdk::{OrchestrationContext, Result};

/// Validates the document, then processes it: two activities.
async fn job(ctx: OrchestrationContext) -> Result<String> {
    let document: String = ctx.input()?;
    let valid: String = ctx.call_activity("Validate", &document).await?;
    ctx.call_activity("Process", &valid).await
}

duro_sdk::export_orchestrations! {
    "Job" => job,
}
