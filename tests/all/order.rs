//! The real-world example app (`workflows/order`) end to end, against a
//! payment service and a notification service that are HTTPS servers on
//! loopback signed by a CA this test makes: a charge that fails once and
//! is retried, the webhook, the notification; a payment service whose
//! certificate no trusted CA signed; the secret key nowhere but in the
//! request to the payment service.

use serde_json::{Value, json};

use crate::host::Host;
use crate::https::{Ca, https_service};

const API: &str = "/runtime/webhooks/durabletask";
const KEY: &str = "sk_test_4eC39HqLyjWDarjtT1zdp7dc";

/// The order app's manifest pointing at the built components, served with
/// the payment and notification services at these ports.
fn serve_order(
    dir: &std::path::Path,
    ca_file: &std::path::Path,
    payment: u16,
    notify: u16,
) -> Host {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("workflows/order/duro.toml")).unwrap();
    let text = text.replace("\"components/", &format!("\"{}/", duro_tests::GUEST_DIR));
    let manifest = dir.join("duro.toml");
    std::fs::write(&manifest, text).unwrap();
    let payment_url = format!("payment_url=https://localhost:{payment}/v1");
    let notify_url = format!("notify_url=https://localhost:{notify}/orders");
    Host::start_with_env(
        &manifest,
        &dir.join("duro.db"),
        &[("DURO_VAR_PAYMENT_KEY", KEY)],
        &[
            "--ca-file",
            ca_file.to_str().unwrap(),
            "--var",
            &payment_url,
            "--var",
            &notify_url,
        ],
    )
}

/// Start an order; its instance id.
fn place(host: &Host, order: Value) -> String {
    let started = host.post("/api/orders", &order.to_string());
    assert_eq!(started.status, 202, "{}", started.body);
    started.json()["id"].as_str().unwrap().to_string()
}

#[test]
fn an_order_is_charged_over_https_confirmed_and_notified() {
    let ca = Ca::new("duro order test CA");
    // The payment service fails the first attempt, then charges.
    let (payment, charges) = https_service(ca.sign(&["localhost"], false), false, |n| {
        if n == 1 {
            (503, "{\"error\": \"try again\"}".into())
        } else {
            (
                200,
                "{\"charge\": \"ch_1\", \"status\": \"pending\"}".into(),
            )
        }
    });
    let (notify, notifications) = https_service(ca.sign(&["localhost"], false), true, |_| {
        (204, String::new())
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path());
    let host = serve_order(dir.path(), &ca_file, payment, notify);

    let id = place(&host, json!({ "id": "o-1", "amount": 4200 }));
    let waiting = host.poll(&format!("{API}/instances/{id}"), |r| {
        r.json()["customStatus"] == "waiting for the payment webhook"
    });
    assert_eq!(
        waiting.json()["runtimeStatus"],
        "Running",
        "{}",
        waiting.body
    );
    let confirmed = host.post(
        &format!("/api/orders/{id}/payment-webhook"),
        "{\"charge\": \"ch_1\", \"status\": \"succeeded\"}",
    );
    assert_eq!(confirmed.status, 202, "{}", confirmed.body);
    let done = host.poll(&format!("{API}/instances/{id}"), |r| r.status == 200);
    let output = &done.json()["output"];
    assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
    assert_eq!(output["outcome"], "paid", "{output}");
    assert_eq!(output["charge"]["charge"], "ch_1", "{output}");

    // Two attempts, both with the secret key and one idempotency key.
    let charges = charges.lock().unwrap().clone();
    assert_eq!(charges.len(), 2, "{charges:?}");
    let header = |(headers, _): &(Vec<(String, String)>, String), name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    for charge in &charges {
        assert_eq!(header(charge, "authorization"), format!("Bearer {KEY}"));
        assert_eq!(
            serde_json::from_str::<Value>(&charge.1).unwrap()["amount"],
            4200
        );
    }
    assert_eq!(
        header(&charges[0], "idempotency-key"),
        header(&charges[1], "idempotency-key")
    );
    // The customer was told, over HTTP/2.
    let notifications = notifications.lock().unwrap().clone();
    assert_eq!(notifications.len(), 1);
    let told: Value = serde_json::from_str(&notifications[0].1).unwrap();
    assert_eq!(told, json!({ "order": "o-1", "outcome": "paid" }));

    // The key is nowhere the host shows.
    let history = host.get(&format!(
        "{API}/instances/{id}?showHistory=true&showHistoryOutput=true&showInput=true"
    ));
    assert!(!history.body.contains(KEY));
    assert!(!host.get("/metrics").body.contains(KEY));

    // A payment webhook that never comes: the order ends unconfirmed.
    let id = place(
        &host,
        json!({ "id": "o-2", "amount": 100, "webhook_timeout_ms": 200 }),
    );
    let done = host.poll(&format!("{API}/instances/{id}"), |r| r.status == 200);
    assert_eq!(
        done.json()["output"]["outcome"],
        "unconfirmed",
        "{}",
        done.body
    );

    // A bad order is refused by the HTTP function.
    assert_eq!(host.post("/api/orders", "{\"id\": 1}").status, 400);
}

#[test]
fn a_payment_service_with_an_untrusted_certificate_is_never_sent_the_key() {
    let ca = Ca::new("duro order test CA");
    let impostor = Ca::new("an impostor");
    let (payment, charges) = https_service(impostor.sign(&["localhost"], false), false, |_| {
        (200, "{}".into())
    });
    let (notify, _) = https_service(ca.sign(&["localhost"], false), false, |_| {
        (204, String::new())
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path());
    let host = serve_order(dir.path(), &ca_file, payment, notify);
    let id = place(&host, json!({ "id": "o-3", "amount": 4200 }));
    // Four attempts (0.5 + 1 + 2 s of backoff), each refused at the handshake.
    let failed = host.poll(&format!("{API}/instances/{id}"), |r| r.status == 200);
    assert_eq!(failed.json()["runtimeStatus"], "Failed", "{}", failed.body);
    assert!(failed.body.contains("UnknownIssuer"), "{}", failed.body);
    assert!(
        charges.lock().unwrap().is_empty(),
        "the impostor got a request"
    );
    assert!(!failed.body.contains(KEY));
}
