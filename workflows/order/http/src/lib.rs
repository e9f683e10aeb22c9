//! `POST /api/orders` (body `{"id", "amount"}`) starts an order and answers
//! `202` with the URLs to follow it; `POST /api/orders/{id}/payment-webhook`
//! is where the payment service confirms the charge.

use duro_http::{DurableClient, Request, Response};
use serde_json::{Value, json};

fn start(req: &Request, client: &DurableClient) -> Response {
    let Ok(order) = req.json::<Value>() else {
        return Response::json(400, &json!({ "error": "the body is not JSON" }));
    };
    if !order["id"].is_string() || !order["amount"].is_u64() {
        let error = "an order is {\"id\": string, \"amount\": cents}";
        return Response::json(400, &json!({ "error": error }));
    }
    match client.start_new("Order", None, &order) {
        Ok(id) => client.create_check_status_response(req, &id),
        Err(e) => Response::error(&e),
    }
}

fn webhook(req: &Request, client: &DurableClient) -> Response {
    let id = req.param("id").unwrap_or_default();
    let event: Value = req.json().unwrap_or(Value::Null);
    match client.raise_event(id, "PaymentConfirmed", &event) {
        Ok(()) => Response::json(202, &json!({ "id": id })),
        Err(e) => Response::error(&e),
    }
}

duro_http::export_http_functions! {
    "StartOrder" => start,
    "PaymentWebhook" => webhook,
}
