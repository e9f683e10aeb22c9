//! Fan-out/fan-in: start many activities at once, wait for all of them,
//! aggregate. The host runs them in parallel on its activity pool; each
//! result is recorded as it comes, so a crash loses none of them.

use duro_sdk::{OrchestrationContext, Result, when_all};

/// Squares 1..=n in n parallel activities and sums the squares.
async fn fan_out_fan_in(ctx: OrchestrationContext) -> Result<i64> {
    let n: i64 = ctx.input()?;
    let squares = when_all((1..=n).map(|i| ctx.call_activity::<_, i64>("Square", &i))).await;
    squares.into_iter().sum()
}

duro_sdk::export_orchestrations! {
    "FanOutFanIn" => fan_out_fan_in,
}
