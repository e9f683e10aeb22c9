//! The OpenAPI document at `/runtime/webhooks/durabletask/openapi.json`
//! against real responses: every operation it lists is called, every
//! answer's status must be documented and its JSON body must validate
//! against the documented schema.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::host::{Host, Reply};

const API: &str = "/runtime/webhooks/durabletask";

/// The document and the operations the test has checked answers of.
struct Checker {
    document: Value,
    checked: BTreeSet<(String, String)>,
}

impl Checker {
    /// Check `reply` (to `method` on the path `template` names) against the
    /// document.
    fn check(&mut self, method: &str, template: &str, reply: &Reply) {
        let operation = &self.document["paths"][template][method];
        assert!(
            operation.is_object(),
            "{method} {template} is not in the document"
        );
        let status = reply.status.to_string();
        let response = &operation["responses"][&status];
        assert!(
            response.is_object(),
            "{method} {template} answered {status}, which the document does not list: {}",
            reply.body
        );
        if let Some(schema) = response["content"]["application/json"]["schema"].as_object() {
            let mut root = Value::Object(schema.clone());
            root["components"] = self.document["components"].clone();
            let validator = jsonschema::validator_for(&root)
                .unwrap_or_else(|e| panic!("{method} {template} {status}: bad schema: {e}"));
            let body: Value = serde_json::from_str(&reply.body).unwrap_or_else(|e| {
                panic!(
                    "{method} {template} {status}: body is not JSON ({e}): {}",
                    reply.body
                )
            });
            let errors: Vec<String> = validator
                .iter_errors(&body)
                .map(|e| format!("{e} at {}", e.instance_path))
                .collect();
            assert!(
                errors.is_empty(),
                "{method} {template} {status}: the body does not match the document: {errors:?}\n{}",
                reply.body
            );
        }
        self.checked
            .insert((method.to_string(), template.to_string()));
    }
}

#[test]
fn real_responses_match_the_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_with(
        &crate::entities::entity_manifest(dir.path()),
        &dir.path().join("duro.db"),
        &[],
    );
    let document = host.get(&format!("{API}/openapi.json"));
    assert_eq!(document.status, 200);
    let mut api = Checker {
        document: document.json(),
        checked: BTreeSet::new(),
    };
    assert_eq!(api.document["openapi"], "3.1.0");
    api.check("get", &format!("{API}/openapi.json"), &document);

    let instance = format!("{API}/instances/{{id}}");
    let start = format!("{API}/orchestrators/{{name}}");
    let start_id = format!("{API}/orchestrators/{{name}}/{{instance_id}}");
    let reply = host.post(&format!("{API}/orchestrators/Workflow"), "\"doc\"");
    assert_eq!(reply.status, 202);
    api.check("post", &start, &reply);
    let reply = host.post(&format!("{API}/orchestrators/Nope"), "1");
    assert_eq!(reply.status, 400);
    api.check("post", &start, &reply);
    for id in ["a", "b", "c"] {
        let reply = host.post(&format!("{API}/orchestrators/Workflow/{id}"), "\"doc\"");
        api.check("post", &start_id, &reply);
    }
    let reply = host.post(&format!("{API}/orchestrators/Workflow/a"), "\"doc\"");
    assert_eq!(reply.status, 409);
    api.check("post", &start_id, &reply);

    let running = host.poll(&format!("{API}/instances/a?showHistory=true"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    assert_eq!(running.status, 202);
    api.check("get", &instance, &running);
    let reply = host.get(&format!("{API}/instances/ghost"));
    assert_eq!(reply.status, 404);
    api.check("get", &instance, &reply);
    let reply = host.get(&format!("{API}/instances/a?waitForCompletion=soon"));
    assert_eq!(reply.status, 400);
    api.check("get", &instance, &reply);

    let pending = format!("{API}/instances/{{id}}/pending");
    let reply = host.get(&format!("{API}/instances/a/pending"));
    assert_eq!(reply.status, 200);
    api.check("get", &pending, &reply);
    let reply = host.get(&format!("{API}/instances/ghost/pending"));
    assert_eq!(reply.status, 404);
    api.check("get", &pending, &reply);
    let raise = format!("{API}/instances/{{id}}/raiseEvent/{{event}}");
    let reply = host.post(&format!("{API}/instances/a/raiseEvent/Workflow"), "\"doc\"");
    assert_eq!(reply.status, 202);
    api.check("post", &raise, &reply);
    let done = host.get(&format!(
        "{API}/instances/a?waitForCompletion=30000&showHistory=true&showHistoryOutput=true"
    ));
    assert_eq!(done.status, 200, "{}", done.body);
    api.check("get", &instance, &done);
    let reply = host.post(&format!("{API}/instances/a/raiseEvent/Workflow"), "1");
    assert_eq!(reply.status, 410);
    api.check("post", &raise, &reply);
    let reply = host.post(
        &format!("{API}/instances/b/raiseEvent/Workflow"),
        "{not json",
    );
    assert_eq!(reply.status, 400);
    api.check("post", &raise, &reply);

    let list = format!("{API}/instances");
    for query in [
        "",
        "?showInput=true&top=2",
        "?name=Workflow&input=%22doc%22",
    ] {
        let reply = host.get(&format!("{API}/instances{query}"));
        assert_eq!(reply.status, 200);
        api.check("get", &list, &reply);
    }
    let reply = host.get(&format!("{API}/instances?runtimeStatus=Sleepy"));
    assert_eq!(reply.status, 400);
    api.check("get", &list, &reply);

    for verb in ["suspend", "resume", "terminate"] {
        let template = format!("{API}/instances/{{id}}/{verb}");
        let reply = host.post(&format!("{API}/instances/b/{verb}?reason=doc"), "");
        assert_eq!(reply.status, 202, "{verb}: {}", reply.body);
        api.check("post", &template, &reply);
        host.poll(&format!("{API}/instances/b"), |r| {
            r.json()["runtimeStatus"] != "Running" || verb == "resume"
        });
    }
    let terminate = format!("{API}/instances/{{id}}/terminate");
    let reply = host.post(&format!("{API}/instances/ghost/terminate"), "");
    assert_eq!(reply.status, 404);
    api.check("post", &terminate, &reply);
    host.poll(&format!("{API}/instances/b"), |r| r.status == 200);
    let reply = host.post(&format!("{API}/instances/b/terminate"), "");
    assert_eq!(reply.status, 410);
    api.check("post", &terminate, &reply);

    let restart = format!("{API}/instances/{{id}}/restart");
    let reply = host.post(&format!("{API}/instances/a/restart"), "");
    assert_eq!(reply.status, 202);
    api.check("post", &restart, &reply);
    let reply = host.post(
        &format!("{API}/instances/c/restart?restartWithNewInstanceId=false"),
        "",
    );
    assert_eq!(reply.status, 409);
    api.check("post", &restart, &reply);

    let upgrade = format!("{API}/instances/{{id}}/upgrade");
    let reply = host.post(&format!("{API}/instances/c/upgrade"), "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    api.check("post", &upgrade, &reply);
    let reply = host.post(&format!("{API}/instances/a/upgrade"), "");
    assert_eq!(reply.status, 410);
    api.check("post", &upgrade, &reply);

    let reply = host.request("DELETE", &format!("{API}/instances/c"), None, &[]);
    assert_eq!(reply.status, 412);
    api.check("delete", &instance, &reply);
    let reply = host.request("DELETE", &format!("{API}/instances/a"), None, &[]);
    assert_eq!(reply.status, 200);
    api.check("delete", &instance, &reply);
    let reply = host.request("DELETE", &format!("{API}/instances/a"), None, &[]);
    assert_eq!(reply.status, 404);
    api.check("delete", &instance, &reply);
    let reply = host.request("DELETE", &format!("{API}/instances"), None, &[]);
    assert_eq!(reply.status, 400);
    api.check("delete", &list, &reply);
    let reply = host.request(
        "DELETE",
        &format!("{API}/instances?createdTimeFrom=2000-01-01T00:00:00Z"),
        None,
        &[],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    api.check("delete", &list, &reply);
    let reply = host.request(
        "DELETE",
        &format!("{API}/instances?createdTimeFrom=2000-01-01T00:00:00Z"),
        None,
        &[],
    );
    assert_eq!(reply.status, 404);
    api.check("delete", &list, &reply);

    let versions = format!("{API}/versions");
    let reply = host.get(&versions);
    assert_eq!(reply.status, 200);
    api.check("get", &versions, &reply);
    let deploy = format!("{API}/deploy");
    let upload = serde_json::to_string(
        &duro::deploy::AppUpload::read(&crate::host::scenario_manifest(dir.path(), "")).unwrap(),
    )
    .unwrap();
    let reply = host.post(&format!("{deploy}?dryRun=true"), &upload);
    assert_eq!(reply.status, 200, "{}", reply.body);
    api.check("post", &deploy, &reply);
    let reply = host.post(&deploy, &json!({ "manifest": "[" }).to_string());
    assert_eq!(reply.status, 400);
    api.check("post", &deploy, &reply);

    let reply = host.get("/metrics");
    assert_eq!(reply.status, 200);
    api.check("get", "/metrics", &reply);

    // Schedules.
    let schedules = format!("{API}/schedules");
    let one = format!("{API}/schedules/{{name}}");
    let act = format!("{API}/schedules/{{name}}/{{verb}}");
    let daily =
        json!({"name": "daily", "cron": "@daily", "orchestration": "Workflow", "input": "x"});
    for (body, status) in [
        (daily.clone(), 201),
        (daily.clone(), 409),
        (
            json!({"name": "bad", "cron": "@sometimes", "orchestration": "Workflow"}),
            400,
        ),
    ] {
        let reply = host.request("POST", &schedules, Some(&body.to_string()), &[]);
        assert_eq!(reply.status, status, "{}", reply.body);
        api.check("post", &schedules, &reply);
    }
    let reply = host.get(&schedules);
    assert_eq!(reply.status, 200);
    api.check("get", &schedules, &reply);
    for (name, status) in [("daily", 200), ("nope", 404)] {
        let reply = host.get(&format!("{schedules}/{name}"));
        assert_eq!(reply.status, status, "{}", reply.body);
        api.check("get", &one, &reply);
    }
    for (body, status) in [
        (json!({"cron": "@hourly", "orchestration": "Workflow"}), 200),
        (json!({"cron": "@hourly", "orchestration": "Nope"}), 400),
    ] {
        let reply = host.request(
            "PUT",
            &format!("{schedules}/daily"),
            Some(&body.to_string()),
            &[],
        );
        assert_eq!(reply.status, status, "{}", reply.body);
        api.check("put", &one, &reply);
    }
    for (verb, status) in [
        ("pause?reason=x", 200),
        ("resume?catchUp=maybe", 400),
        ("resume", 200),
        ("trigger", 200),
        ("fly", 404),
    ] {
        let reply = host.post(&format!("{schedules}/daily/{verb}"), "");
        assert_eq!(reply.status, status, "{verb}: {}", reply.body);
        api.check("post", &act, &reply);
    }
    for status in [200, 404] {
        let reply = host.request("DELETE", &format!("{schedules}/daily"), None, &[]);
        assert_eq!(reply.status, status, "{}", reply.body);
        api.check("delete", &one, &reply);
    }

    let entity = format!("{API}/entities/{{name}}/{{key}}");
    for (path, body, status) in [
        ("/entities/Counter/doc?op=add", "2", 202),
        ("/entities/Counter/doc", "2", 400),
        ("/entities/Nobody/doc?op=add", "2", 400),
    ] {
        let reply = host.post(&format!("{API}{path}"), body);
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        api.check("post", &entity, &reply);
    }
    let reply = host.poll(&format!("{API}/entities/counter/doc"), |r| r.status == 200);
    api.check("get", &entity, &reply);
    let reply = host.get(&format!("{API}/entities/counter/doc?showDetails=true"));
    api.check("get", &entity, &reply);
    let reply = host.get(&format!("{API}/entities/counter/never"));
    assert_eq!(reply.status, 404);
    api.check("get", &entity, &reply);
    let reply = host.get(&format!("{API}/entities?fetchState=true"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    api.check("get", &format!("{API}/entities"), &reply);
    let reply = host.get(&format!("{API}/entities/counter?keyPrefix=d"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    api.check("get", &format!("{API}/entities/{{name}}"), &reply);
    let reply = host.post(&format!("{API}/entities/clean"), "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    api.check("post", &format!("{API}/entities/clean"), &reply);

    // Every operation the document lists was called above.
    let documented: BTreeSet<(String, String)> = api.document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, operations)| {
            operations
                .as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let unchecked: Vec<_> = documented.difference(&api.checked).collect();
    assert!(unchecked.is_empty(), "never called: {unchecked:?}");
}
