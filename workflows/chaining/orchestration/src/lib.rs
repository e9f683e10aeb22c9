//! Function chaining: activities in sequence, each one's output feeding the
//! next. If the host dies between two of them, the instance resumes after
//! the last one recorded; none runs again.

use duro_sdk::{OrchestrationContext, Result};

/// Greets each city of the input (Tokyo, Seattle and London by default),
/// one activity after the other, and returns the greetings.
async fn chaining(ctx: OrchestrationContext) -> Result<Vec<String>> {
    let cities: Vec<String> = ctx
        .input::<Option<Vec<String>>>()?
        .unwrap_or_else(|| vec!["Tokyo".into(), "Seattle".into(), "London".into()]);
    let mut greetings = Vec::new();
    for city in cities {
        greetings.push(ctx.call_activity("SayHello", &city).await?);
    }
    Ok(greetings)
}

duro_sdk::export_orchestrations! {
    "Chaining" => chaining,
}
