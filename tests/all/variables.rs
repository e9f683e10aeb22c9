//! Variables and secrets: declared in the manifest, supplied by the host
//! (`DURO_VAR_<NAME>`, a `--variables` file, `--var`), read by activities
//! and HTTP functions through `wasi:config/store`, only those their entry
//! lists; a secret's value is found nowhere the host shows or stores.

use std::path::Path;

use serde_json::{Value, json};

use crate::host::{Host, refused_serve};

const API: &str = "/runtime/webhooks/durabletask";
const SECRET: &str = "sk_live_0123456789abcdef";

fn manifest(dir: &Path) -> std::path::PathBuf {
    let (guests, activities, http) = (
        duro_tests::TEST_GUESTS,
        duro_tests::TEST_ACTIVITIES,
        duro_tests::TEST_GUESTS_HTTP,
    );
    duro_tests::scenario_manifest(
        dir,
        &format!(
            "[[orchestration]]\nname = \"CallOne\"\ncomponent = {guests:?}\n\
             [[activity]]\nname = \"Variable\"\ncomponent = {activities:?}\n\
             variables = [\"stripe_key\", \"greeting\", \"region\"]\n\
             [[http]]\nname = \"Variable\"\nroute = \"/variable\"\ncomponent = {http:?}\n\
             variables = [\"greeting\"]\n\
             [variables]\n\
             stripe_key = {{ required = true, secret = true }}\n\
             greeting = {{ default = \"hello\" }}\n\
             region = {{ }}\n\
             tier = {{ default = \"gold\" }}\n"
        ),
    )
}

/// What the `Variable` activity saw of `name`, through an orchestration.
fn activity_sees(host: &Host, id: &str, name: &str) -> Value {
    let call = json!({ "name": "Variable", "input": name });
    let started = host.post(
        &format!("{API}/orchestrators/CallOne/{id}"),
        &call.to_string(),
    );
    assert_eq!(started.status, 202, "{}", started.body);
    let done = host.poll(&format!("{API}/instances/{id}"), |r| r.status == 200);
    done.json()["output"]["ok"].clone()
}

#[test]
fn activities_and_functions_read_their_variables_and_no_secret_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let file = dir.path().join("app.env");
    std::fs::write(&file, format!("STRIPE_KEY=\"{SECRET}\"\nregion=eu\n")).unwrap();
    // Everything the host logs, spans included, goes to a file to grep.
    let log = dir.path().join("host.log");
    let host = Host::start_logging(
        &manifest,
        &dir.path().join("duro.db"),
        &[("DURO_VAR_REGION", "us")],
        &[
            "--variables",
            file.to_str().unwrap(),
            "--var",
            "greeting=bonjour",
        ],
        "debug",
        &log,
    );

    // The file overrides the environment, a flag the file and the default.
    assert_eq!(activity_sees(&host, "region", "region")["value"], "eu");
    assert_eq!(
        activity_sees(&host, "greeting", "greeting")["value"],
        "bonjour"
    );
    // A variable the entry does not list is not there for it.
    assert_eq!(activity_sees(&host, "tier", "tier")["value"], Value::Null);
    // The secret reaches the activity, but what the activity returns is
    // recorded with the secret redacted.
    let seen = activity_sees(&host, "secret", "stripe_key");
    assert_eq!(seen["value"], "***", "{seen}");

    let function = host.get("/variable?name=greeting");
    assert_eq!(function.json()["value"], "bonjour", "{}", function.body);
    let not_listed = host.get("/variable?name=stripe_key");
    assert_eq!(
        not_listed.json()["value"],
        Value::Null,
        "{}",
        not_listed.body
    );

    // Nowhere the host shows or stores.
    for path in [
        format!("{API}/instances/secret?showHistory=true&showHistoryOutput=true&showInput=true"),
        format!("{API}/instances?showInput=true"),
        format!("{API}/instances/secret/pending"),
        "/metrics".to_string(),
        format!("{API}/versions"),
    ] {
        let answer = host.get(&path);
        assert!(!answer.body.contains(SECRET), "{path} shows the secret");
    }
    drop(host);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("DEBUG"), "the log is not at debug level");
    assert!(!logged.contains(SECRET), "the host's log shows the secret");
}

#[test]
fn a_required_variable_without_a_value_stops_the_host_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let stderr = refused_serve("127.0.0.1:0", &manifest, &dir.path().join("duro.db"), &[]);
    assert!(
        stderr.contains("variable `stripe_key` is required")
            && stderr.contains("DURO_VAR_STRIPE_KEY"),
        "{stderr}"
    );
    // From the environment, it starts.
    let host = Host::start_with_env(
        &manifest,
        &dir.path().join("duro.db"),
        &[("DURO_VAR_STRIPE_KEY", SECRET)],
        &[],
    );
    assert_eq!(host.get("/variable?name=greeting").json()["value"], "hello");
}
