//! An order, as a real app would take one: charge the card through a
//! payment service (an activity, over HTTPS, with a secret key, retried with
//! backoff), wait for the payment service's webhook to confirm the charge or
//! give up after a timeout, then notify the customer (another activity).
//! The orchestration itself reads no variable and makes no request: what may
//! change or fail lives in the activities.

use std::time::Duration;

use duro_sdk::{OrchestrationContext, Result, RetryPolicy};
use serde_json::{Value, json};

/// `{"id", "amount", "webhook_timeout_ms"?}` → `{"order", "charge",
/// "outcome": "paid" | "unconfirmed", "notified"}`.
async fn order(ctx: OrchestrationContext) -> Result<Value> {
    let order: Value = ctx.input()?;
    // A payment service that is down or answers 5xx is tried again: 4
    // attempts, 0.5 s, 1 s, 2 s apart.
    let retry = RetryPolicy {
        backoff_coefficient: 2.0,
        ..RetryPolicy::new(4, Duration::from_millis(500))
    };
    let charge: Value = ctx
        .call_activity_with_retry("Charge", &order, retry)
        .await?;
    ctx.set_custom_status(&"waiting for the payment webhook");
    let timeout = Duration::from_millis(order["webhook_timeout_ms"].as_u64().unwrap_or(3_600_000));
    let confirmed = ctx
        .wait_for_external_event_with_timeout::<Value>("PaymentConfirmed", timeout)
        .await?;
    let outcome = if confirmed.is_some() {
        "paid"
    } else {
        "unconfirmed"
    };
    ctx.set_custom_status(&outcome);
    let notified: Value = ctx
        .call_activity(
            "Notify",
            &json!({ "order": order["id"], "outcome": outcome }),
        )
        .await?;
    Ok(json!({ "order": order["id"], "charge": charge, "outcome": outcome, "notified": notified }))
}

duro_sdk::export_orchestrations! {
    "Order" => order,
}
