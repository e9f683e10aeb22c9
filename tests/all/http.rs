//! The scenario and the management API over real HTTP, against a real
//! `duro serve` process.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::host::{Host, sample};

const API: &str = "/runtime/webhooks/durabletask";

#[test]
fn the_scenario_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path());

    let started = host.get("/api/start/alpha");
    assert_eq!(started.status, 200, "{}", started.body);
    let id = started.json()["id"].as_str().unwrap().to_string();

    let check = host.poll("/api/check/alpha", |r| {
        r.status == 200 && r.json()["runtimeStatus"] == "Running"
    });
    assert_eq!(check.status, 200, "{}", check.body);
    let status = check.json();
    assert_eq!(status["instanceId"], id.as_str());
    assert_eq!(status["name"], "Workflow");
    assert_eq!(status["input"], "alpha");
    assert_eq!(status["runtimeStatus"], "Running");
    assert!(
        status["createdTime"].as_str().unwrap().ends_with('Z'),
        "{status}"
    );

    let stop = host.get("/api/stop/alpha");
    assert_eq!(stop.status, 200, "{}", stop.body);
    assert_eq!(stop.json()["instanceId"], id.as_str());

    let done = host.poll("/api/check/alpha", |r| {
        r.json()["runtimeStatus"] == "Completed"
    });
    assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
    assert_eq!(done.json()["output"], "Workflow for alpha stopped");

    for path in ["/api/check/nobody", "/api/stop/nobody"] {
        let missing = host.get(path);
        assert_eq!(missing.status, 404, "{path}: {}", missing.body);
        assert!(missing.error().contains("\"nobody\""), "{}", missing.body);
    }
    let no_route = host.get("/api/nowhere");
    assert_eq!(no_route.status, 404);
    assert_eq!(no_route.error(), "no route matches this path");
    let bad_param = host.get("/api/check/%FF");
    assert_eq!(bad_param.status, 400);
    assert!(bad_param.error().contains("UTF-8"), "{}", bad_param.body);
    let wrong_method = host.post("/api/start/alpha", "");
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.error(), "this route does not take POST");
}

#[test]
fn start_status_raise_and_finish_with_durable_functions_codes() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path());

    let started = host.post(&format!("{API}/orchestrators/Workflow"), "\"beta\"");
    assert_eq!(started.status, 202, "{}", started.body);
    let body = started.json();
    let id = body["id"].as_str().unwrap().to_string();
    let status_uri = format!("http://{}{API}/instances/{id}", host.address);
    assert_eq!(started.header("location"), Some(status_uri.as_str()));
    assert!(started.header("retry-after").is_some());
    assert_eq!(body["statusQueryGetUri"], status_uri.as_str());
    assert_eq!(body["purgeHistoryDeleteUri"], status_uri.as_str());
    for key in [
        "sendEventPostUri",
        "terminatePostUri",
        "suspendPostUri",
        "resumePostUri",
    ] {
        assert!(
            body[key].as_str().unwrap().starts_with(&status_uri),
            "{key}: {body}"
        );
    }

    let path = format!("{API}/instances/{id}");
    let running = host.poll(&path, |r| r.json()["runtimeStatus"] == "Running");
    assert_eq!(running.status, 202);
    let status = running.json();
    for key in [
        "name",
        "instanceId",
        "runtimeStatus",
        "input",
        "customStatus",
        "output",
        "createdTime",
        "lastUpdatedTime",
    ] {
        assert!(status.get(key).is_some(), "{key} missing from {status}");
    }
    assert_eq!(status["input"], "beta");
    assert!(status["createdTime"].as_str().unwrap().ends_with('Z'));
    let hidden = host.get(&format!("{path}?showInput=false")).json();
    assert!(hidden.get("input").is_none(), "{hidden}");
    assert_eq!(host.get(&format!("{path}?showInput=maybe")).status, 400);

    let raised = host.post(&format!("{path}/raiseEvent/Workflow"), "{\"by\":\"test\"}");
    assert_eq!(raised.status, 202, "{}", raised.body);
    let done = host.poll(&path, |r| r.status == 200);
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.json()["runtimeStatus"], "Completed");

    let with_history = host.get(&format!("{path}?showHistory=true&showHistoryOutput=true"));
    let events = with_history.json()["historyEvents"]
        .as_array()
        .unwrap()
        .clone();
    let kinds: Vec<_> = events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"ExecutionStarted"));
    assert_eq!(kinds.last(), Some(&"ExecutionCompleted"));
    assert!(events.iter().any(|e| e["eventType"] == "EventRaised"
        && e["name"] == "Workflow"
        && e["payload"] == json!({ "by": "test" })));
    assert_eq!(
        events.last().unwrap()["output"],
        "Workflow for beta stopped"
    );
    let no_output = host.get(&format!("{path}?showHistory=true")).json();
    assert!(
        no_output["historyEvents"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .get("output")
            .is_none()
    );

    let late = host.post(&format!("{path}/raiseEvent/Workflow"), "1");
    assert_eq!(late.status, 410, "{}", late.body);
    assert!(late.error().contains("Completed"), "{}", late.body);
}

#[test]
fn bad_requests_get_a_json_error_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path());

    let unknown = host.get(&format!("{API}/instances/nope"));
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error(), "no instance with id `nope`");
    assert_eq!(
        host.post(&format!("{API}/instances/nope/raiseEvent/X"), "1")
            .status,
        404
    );
    assert_eq!(
        host.post(&format!("{API}/instances/nope/terminate"), "")
            .status,
        404
    );

    let no_such = host.post(&format!("{API}/orchestrators/NoSuch"), "1");
    assert_eq!(no_such.status, 400);
    assert!(no_such.error().contains("`NoSuch`"), "{}", no_such.body);

    let bad_json = host.post(&format!("{API}/orchestrators/Workflow"), "{not json");
    assert_eq!(bad_json.status, 400);
    assert!(
        bad_json.error().contains("not valid JSON"),
        "{}",
        bad_json.body
    );

    let long = "x".repeat(257);
    for id in [long.as_str(), "bad%01id", "a%23b", "a%3Fb", "a%5Cb"] {
        let reply = host.post(&format!("{API}/orchestrators/Workflow/{id}"), "1");
        assert_eq!(reply.status, 400, "{id}: {}", reply.body);
        assert!(
            reply.error().starts_with("invalid instance id"),
            "{}",
            reply.body
        );
    }

    let fixed = host.post(&format!("{API}/orchestrators/Workflow/fixed-1"), "\"one\"");
    assert_eq!(fixed.status, 202, "{}", fixed.body);
    assert_eq!(fixed.json()["id"], "fixed-1");
    let again = host.post(&format!("{API}/orchestrators/Workflow/fixed-1"), "\"two\"");
    assert_eq!(again.status, 409, "{}", again.body);
    let event_bad_json = host.post(&format!("{API}/instances/fixed-1/raiseEvent/Workflow"), "{");
    assert_eq!(event_bad_json.status, 400);
    assert!(
        event_bad_json.error().contains("event payload"),
        "{}",
        event_bad_json.body
    );
    // None of that touched the instance.
    let status = host.get(&format!("{API}/instances/fixed-1")).json();
    assert_eq!(status["input"], "one");
    assert_ne!(status["runtimeStatus"], "Completed");
    // Once it has finished, the id may be started again, as a new execution.
    host.post(&format!("{API}/instances/fixed-1/raiseEvent/Workflow"), "1");
    host.poll(&format!("{API}/instances/fixed-1"), |r| r.status == 200);
    let restarted = host.post(
        &format!("{API}/orchestrators/Workflow/fixed-1"),
        "\"three\"",
    );
    assert_eq!(restarted.status, 202, "{}", restarted.body);
    let status = host.poll(&format!("{API}/instances/fixed-1"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    assert_eq!(status.json()["input"], "three");
    let history = host
        .get(&format!("{API}/instances/fixed-1?showHistory=true"))
        .json();
    assert!(
        !history["historyEvents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["eventType"] == "ExecutionCompleted"),
        "the old execution's history is gone: {history}"
    );

    for query in [
        "runtimeStatus=Sleeping",
        "top=0",
        "top=abc",
        "createdTimeFrom=yesterday",
        "input=not-json",
        "newestFirst=maybe",
    ] {
        let reply = host.get(&format!("{API}/instances?{query}"));
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
    }
    let bad_token = host.request(
        "GET",
        &format!("{API}/instances"),
        None,
        &[("x-ms-continuation-token", "zz")],
    );
    assert_eq!(bad_token.status, 400);
}

#[test]
fn terminate_suspend_resume_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path());
    let start = |id: &str| {
        let r = host.post(
            &format!("{API}/orchestrators/Workflow/{id}"),
            &format!("\"{id}\""),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        host.poll(&format!("{API}/instances/{id}"), |r| {
            r.json()["runtimeStatus"] == "Running"
        });
    };

    start("t1");
    let terminated = host.post(&format!("{API}/instances/t1/terminate?reason=enough"), "");
    assert_eq!(terminated.status, 202);
    let status = host.poll(&format!("{API}/instances/t1"), |r| r.status == 200);
    assert_eq!(
        status.json()["runtimeStatus"],
        "Terminated",
        "{}",
        status.body
    );
    assert_eq!(status.json()["output"], "enough");
    assert_eq!(
        host.post(&format!("{API}/instances/t1/terminate"), "")
            .status,
        410
    );

    start("s1");
    assert_eq!(
        host.post(&format!("{API}/instances/s1/suspend?reason=wait"), "")
            .status,
        202
    );
    host.poll(&format!("{API}/instances/s1"), |r| {
        r.json()["runtimeStatus"] == "Suspended"
    });
    assert_eq!(
        host.post(&format!("{API}/instances/s1/raiseEvent/Workflow"), "1")
            .status,
        202
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let suspended = host.get(&format!("{API}/instances/s1"));
    assert_eq!(suspended.status, 202);
    assert_eq!(
        suspended.json()["runtimeStatus"],
        "Suspended",
        "events wait while suspended"
    );
    assert_eq!(
        host.post(&format!("{API}/instances/s1/resume"), "").status,
        202
    );
    let resumed = host.poll(&format!("{API}/instances/s1"), |r| r.status == 200);
    assert_eq!(
        resumed.json()["runtimeStatus"],
        "Completed",
        "{}",
        resumed.body
    );

    let purged = host.request("DELETE", &format!("{API}/instances/s1"), None, &[]);
    assert_eq!(purged.status, 200);
    assert_eq!(purged.json()["instancesDeleted"], 1);
    assert_eq!(host.get(&format!("{API}/instances/s1")).status, 404);
    assert_eq!(
        host.request("DELETE", &format!("{API}/instances/s1"), None, &[])
            .status,
        404
    );

    // A running instance is not purged (412, as Durable Functions).
    start("r1");
    let refused = host.request("DELETE", &format!("{API}/instances/r1"), None, &[]);
    assert_eq!(refused.status, 412, "{}", refused.body);
    assert!(
        refused.error().contains("only a finished instance"),
        "{}",
        refused.body
    );
    assert_eq!(refused.json()["Message"], refused.json()["error"]);
    assert_eq!(refused.json()["ExceptionMessage"], refused.json()["error"]);
    // Bulk purge needs createdTimeFrom, as Durable Functions does.
    let unbounded = host.request("DELETE", &format!("{API}/instances"), None, &[]);
    assert_eq!(unbounded.status, 400, "{}", unbounded.body);
    assert!(
        unbounded.error().contains("createdTimeFrom"),
        "{}",
        unbounded.body
    );
    // Bulk purge takes finished instances only (t1), not running ones.
    let bulk = host.request(
        "DELETE",
        &format!("{API}/instances/?createdTimeFrom=2000-01-01T00:00:00Z"),
        None,
        &[],
    );
    assert_eq!(bulk.status, 200, "{}", bulk.body);
    assert_eq!(bulk.json()["instancesDeleted"], 1);
    assert_eq!(host.get(&format!("{API}/instances/t1")).status, 404);
    assert_eq!(host.get(&format!("{API}/instances/r1")).status, 202);
}

#[test]
fn listing_pages_through_more_instances_than_a_page_holds() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path());
    for i in 0..7 {
        let r = host.post(&format!("{API}/orchestrators/Workflow/page-{i}"), "\"p\"");
        assert_eq!(r.status, 202);
    }
    host.post(&format!("{API}/orchestrators/Workflow/other"), "\"o\"");

    let pages = host.pages(&format!("{API}/instances?instanceIdPrefix=page-&top=3"), 10);
    assert!(pages.iter().all(|page| page.len() <= 3));
    let mut seen: Vec<String> = pages
        .iter()
        .flatten()
        .map(|i| i["instanceId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(pages.len(), 3);
    seen.sort();
    let expected: Vec<String> = (0..7).map(|i| format!("page-{i}")).collect();
    assert_eq!(seen, expected);

    let all = host.poll(
        &format!("{API}/instances?runtimeStatus=Running&top=100"),
        |r| r.json().as_array().unwrap().len() == 8,
    );
    assert_eq!(all.json().as_array().unwrap().len(), 8, "{}", all.body);
    let by_name = host.get(&format!(
        "{API}/instances?name=Workflow&runtimeStatus=Running,Pending"
    ));
    assert_eq!(by_name.json().as_array().unwrap().len(), 8);
    let future = host.get(&format!(
        "{API}/instances?createdTimeFrom=2999-01-01T00:00:00Z"
    ));
    assert_eq!(future.json(), json!([]));
    let none_done = host.get(&format!("{API}/instances?runtimeStatus=Completed"));
    assert_eq!(none_done.json(), json!([]));
}

#[test]
fn function_routes_need_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(
        dir.path(),
        &format!(
            "[[http]]\nname = \"Check\"\nroute = \"/secure/check/{{input}}\"\nauth = \"function\"\ncomponent = {:?}\n",
            duro_tests::SCENARIO_HTTP
        ),
    );
    let host = Host::start_with(
        &manifest,
        &dir.path().join("duro.db"),
        &["--function-key", "s3cret"],
    );
    let denied = host.get("/secure/check/x");
    assert_eq!(denied.status, 401);
    assert!(denied.error().contains("function key"));
    assert_eq!(host.get("/secure/check/x?code=wrong").status, 401);
    assert_eq!(host.get("/secure/check/x?code=s3cret").status, 404);
    let with_header = host.request(
        "GET",
        "/secure/check/x",
        None,
        &[("x-functions-key", "s3cret")],
    );
    assert_eq!(with_header.status, 404, "authorized, and no such instance");

    // `anonymous` app routes stay open (no such instance: the guest's 404).
    let open = host.get("/api/check/k");
    assert_eq!(open.status, 404, "{}", open.body);
    assert!(
        open.error().contains("no Workflow instance"),
        "{}",
        open.body
    );
}

#[test]
fn status_links_percent_encode_the_instance_id() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path());
    let started = host.post(&format!("{API}/orchestrators/Workflow/a%20b%25c"), "\"x\"");
    assert_eq!(started.status, 202, "{}", started.body);
    assert_eq!(started.json()["id"], "a b%c");
    let location = started.header("location").unwrap().to_string();
    assert!(location.ends_with("/instances/a%20b%25c"), "{location}");
    let path = location.split_once(&host.address).unwrap().1;
    let status = host.get(path);
    assert_eq!(status.status, 202, "{}", status.body);
    assert_eq!(status.json()["instanceId"], "a b%c");
    assert!(
        started.json()["sendEventPostUri"]
            .as_str()
            .unwrap()
            .contains("/instances/a%20b%25c/raiseEvent/")
    );
}

#[test]
fn app_routes_limit_bodies_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let guests = duro_tests::TEST_GUESTS_HTTP;
    let manifest = crate::host::scenario_manifest(
        dir.path(),
        &format!(
            "[[http]]\nname = \"Echo\"\nroute = \"/echo/{{thing}}\"\nmethods = [\"POST\"]\ncomponent = {guests:?}\n\
             [[http]]\nname = \"Sleep\"\nroute = \"/sleep\"\ncomponent = {guests:?}\n"
        ),
    );
    // --trigger-budget-ms 1000 (see `Host::start_with`).
    let host = Host::start_with(&manifest, &dir.path().join("duro.db"), &[]);

    // Headers and the first part of a body, then nothing: the reply.
    let send_part = |content_length: usize, part: &str| {
        let mut stream = std::net::TcpStream::connect(&host.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        std::io::Write::write_all(
            &mut stream,
            format!(
                "POST /echo/part HTTP/1.1\r\nhost: {}\r\ncontent-length: {content_length}\r\n\r\n{part}",
                host.address
            )
            .as_bytes(),
        )
        .unwrap();
        let mut raw = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    };
    let refused = send_part(3 << 20, "xx");
    assert!(refused.starts_with("HTTP/1.1 413"), "{refused}");
    assert!(refused.contains("larger than"), "{refused}");

    // A client that sends half its body and stalls is cut off.
    let started = Instant::now();
    let reply = send_part(10, "{\"a\"");
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("did not arrive within"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A call that waits outside wasm is ended by the wall clock.
    let started = Instant::now();
    let slept = host.get("/sleep");
    assert_eq!(slept.status, 504, "{}", slept.body);
    assert!(slept.error().contains("did not answer within"));
    assert!(started.elapsed() < Duration::from_secs(10));

    let echo = host.post("/echo/fine", "{\"a\": 1}");
    assert_eq!(echo.status, 200, "{}", echo.body);
}

#[test]
fn triggers_see_their_request_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let guests = duro_tests::TEST_GUESTS_HTTP;
    let manifest = crate::host::scenario_manifest(
        dir.path(),
        &format!(
            "[[http]]\nname = \"Echo\"\nroute = \"/echo/{{thing}}\"\nmethods = [\"GET\", \"post\"]\ncomponent = {guests:?}\n\
             [[http]]\nname = \"Panic\"\nroute = \"/panic\"\ncomponent = {guests:?}\n\
             [[http]]\nname = \"Spin\"\nroute = \"/spin\"\ncomponent = {guests:?}\n\
             [[http]]\nname = \"Nobody\"\nroute = \"/nobody\"\ncomponent = {guests:?}\n"
        ),
    );
    let host = Host::start_with(&manifest, &dir.path().join("duro.db"), &[]);

    let echo = host.request(
        "POST",
        "/echo/a%20b?q=x%26y&other=1",
        Some("{\"n\": 1}"),
        &[("x-test", "hello")],
    );
    assert_eq!(echo.status, 200, "{}", echo.body);
    assert_eq!(echo.header("x-echo"), Some("yes"));
    let seen = echo.json();
    for (field, expected) in [
        ("method", json!("POST")),
        ("path", json!("/echo/a%20b")),
        ("param", json!("a b")),
        ("params", json!({ "thing": "a b" })),
        ("query", json!("x&y")),
        ("header", json!("hello")),
        ("body", json!({ "n": 1 })),
    ] {
        assert_eq!(seen[field], expected, "{field} in {seen}");
    }

    let panicked = host.get("/panic");
    assert_eq!(panicked.status, 500);
    assert!(
        panicked.error().contains("function `Panic` failed"),
        "{}",
        panicked.body
    );
    let spun = host.get("/spin");
    assert_eq!(spun.status, 500);
    assert!(
        spun.error().contains("function `Spin` failed"),
        "{}",
        spun.body
    );
    let nobody = host.get("/nobody");
    assert_eq!(nobody.status, 404);
    assert!(
        nobody.error().contains("no HTTP function named `Nobody`"),
        "{}",
        nobody.body
    );
    // The host is fine, and so is the app.
    assert_eq!(host.get("/api/start/after").status, 200);
}

#[test]
fn a_status_request_can_wait_for_completion() {
    let dir = tempfile::tempdir().unwrap();
    let host = std::sync::Arc::new(Host::start(dir.path()));
    let started = host.post(&format!("{API}/orchestrators/Workflow/waited"), "\"w\"");
    assert_eq!(started.status, 202, "{}", started.body);
    host.poll(&format!("{API}/instances/waited"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    // Not finished within the time asked: 202 with the running status.
    let early = host.get(&format!("{API}/instances/waited?waitForCompletion=100"));
    assert_eq!(early.status, 202, "{}", early.body);
    assert_eq!(early.json()["runtimeStatus"], "Running");
    // A long poll made while it runs answers when it finishes.
    let waiting = {
        let host = host.clone();
        std::thread::spawn(move || {
            host.get(&format!("{API}/instances/waited?waitForCompletion=30000"))
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let raised = host.post(&format!("{API}/instances/waited/raiseEvent/Workflow"), "1");
    assert_eq!(raised.status, 202);
    let done = waiting.join().unwrap();
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.json()["output"], "Workflow for w stopped");
    // Bad values and unknown instances.
    let bad = host.get(&format!("{API}/instances/waited?waitForCompletion=soon"));
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]
            .as_str()
            .unwrap()
            .contains("waitForCompletion")
    );
    let too_long = host.get(&format!(
        "{API}/instances/waited?waitForCompletion=99999999"
    ));
    assert_eq!(too_long.status, 400);
    let unknown = host.get(&format!("{API}/instances/nobody?waitForCompletion=50"));
    assert_eq!(unknown.status, 404);
}

#[test]
fn metrics_count_episodes_commits_and_function_calls() {
    let dir = tempfile::tempdir().unwrap();
    let guests = duro_tests::TEST_GUESTS;
    let manifest = crate::host::scenario_manifest(
        dir.path(),
        &format!(
            "[[orchestration]]\nname = \"Panics\"\ncomponent = {guests:?}\n\
             [[orchestration]]\nname = \"Hog\"\ncomponent = {guests:?}\n"
        ),
    );
    let host = Host::start_with(&manifest, &dir.path().join("duro.db"), &[]);
    let started = host.get("/api/start/metered");
    assert_eq!(started.status, 200, "{}", started.body);
    host.poll("/api/check/metered", |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    let stopped = host.get("/api/stop/metered");
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    host.poll("/api/check/metered", |r| {
        r.json()["runtimeStatus"] == "Completed"
    });
    assert_eq!(host.get("/api/check/nobody").status, 404);
    // A sleeper (a timer, not due), a trap and a memory limit hit.
    for (name, input) in [
        (
            "WorkflowWithTimeout",
            r#"{"name": "m", "timeout_ms": 600000}"#,
        ),
        ("Panics", "null"),
        ("Hog", "null"),
    ] {
        let id = name.to_lowercase();
        host.post(&format!("{API}/orchestrators/{name}/{id}"), input);
        host.poll(&format!("{API}/instances/{id}"), |r| {
            r.json()["runtimeStatus"] != "Pending"
        });
    }
    host.poll(&format!("{API}/instances/hog"), |r| r.status == 200);

    let page = host.get("/metrics");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        page.headers
    );
    let text = &page.body;
    // Every line is a comment or `name{labels} value`, and the page ends
    // as OpenMetrics says.
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a sample: {line:?}");
        assert!(line.starts_with("duro_"), "{line:?}");
    }
    // The scenario's instance waited then completed, the sleeper waited,
    // the other two failed.
    assert_eq!(
        sample(text, "duro_episodes_total", "{outcome=\"failed\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(text, "duro_episodes_total", "{outcome=\"waiting\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(text, "duro_episodes_total", "{outcome=\"completed\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(text, "duro_commit_seconds_count", "").unwrap() >= 2.0,
        "{text}"
    );
    assert!(
        sample(text, "duro_episode_seconds_count", "").unwrap() >= 2.0,
        "{text}"
    );
    // Function calls by name and status.
    let start = sample(
        text,
        "duro_http_requests_total",
        "{function=\"Start\",status=\"200\"}",
    );
    assert_eq!(start, Some(1.0), "{text}");
    let missing = sample(
        text,
        "duro_http_requests_total",
        "{function=\"Check\",status=\"404\"}",
    );
    assert_eq!(missing, Some(1.0), "{text}");
    // Gauges read from the store at the scrape.
    for (status, n) in [
        ("Completed", 1.0),
        ("Running", 1.0),
        ("Failed", 2.0),
        ("Suspended", 0.0),
    ] {
        let labels = format!("{{status=\"{status}\"}}");
        assert_eq!(
            sample(text, "duro_instances", &labels),
            Some(n),
            "{status}: {text}"
        );
    }
    assert_eq!(sample(text, "duro_timers", ""), Some(1.0), "{text}");
    assert_eq!(sample(text, "duro_timers_due", ""), Some(0.0), "{text}");
    assert_eq!(sample(text, "duro_inbox_messages", ""), Some(0.0), "{text}");
    assert_eq!(
        sample(text, "duro_activities_pending", ""),
        Some(0.0),
        "{text}"
    );
    // Guest traps by kind.
    for kind in ["trap", "memory"] {
        let labels = format!("{{kind=\"{kind}\",where=\"orchestration\"}}");
        assert_eq!(
            sample(text, "duro_guest_traps_total", &labels),
            Some(1.0),
            "{kind}: {text}"
        );
    }
    assert!(
        sample(
            text,
            "duro_http_requests_total",
            "{function=\"Check\",status=\"200\"}"
        )
        .unwrap()
            >= 2.0,
        "{text}"
    );
}

#[test]
fn warm_instances_hold_no_more_than_their_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let budget = [("DURO_WARM_INSTANCES", "128"), ("DURO_WARM_MEMORY_MB", "4")];
    let host = Host::start_with_env(&manifest, &dir.path().join("duro.db"), &budget, &[]);
    // A warm instance holds its guest's copy of an 800 KB input and the
    // row kept with it: at least 1.6 MB each, so 4 MiB keep at most two.
    let input = serde_json::to_string(&"x".repeat(800_000)).unwrap();
    let ids: Vec<String> = (0..6).map(|n| format!("heavy{n}")).collect();
    for id in &ids {
        let started = host.post(&format!("{API}/orchestrators/Workflow/{id}"), &input);
        assert_eq!(started.status, 202, "{}", started.body);
        host.poll(&format!("{API}/instances/{id}?showInput=false"), |r| {
            r.json()["runtimeStatus"] == "Running"
        });
    }
    let page = host.get("/metrics");
    let held = sample(&page.body, "duro_warm_instances_held", "").unwrap();
    assert!((1.0..=2.0).contains(&held), "{held} warm instances held");
    // Those dropped replay: every one still takes its event.
    for id in &ids {
        let raised = host.post(&format!("{API}/instances/{id}/raiseEvent/Workflow"), "1");
        assert_eq!(raised.status, 202, "{}", raised.body);
        let done = host.get(&format!(
            "{API}/instances/{id}?waitForCompletion=20000&showInput=false"
        ));
        assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
    }
}

#[test]
fn an_idle_host_drops_its_warm_instances_and_they_replay_on_their_next_event() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let host = Host::start_with_env(
        &manifest,
        &dir.path().join("duro.db"),
        &[("DURO_IDLE_RELEASE_MS", "300")],
        &[],
    );
    assert_eq!(host.get("/api/start/dozing").status, 200);
    host.poll("/api/check/dozing", |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    // Its warm instance goes once unused for the idle period, and the
    // store's caches once no episode ran for a whole one.
    let page = host.poll("/metrics", |r| {
        sample(&r.body, "duro_warm_instances_held", "") == Some(0.0)
            && sample(&r.body, "duro_memory_releases_total", "").unwrap_or(0.0) >= 1.0
    });
    assert_eq!(
        sample(&page.body, "duro_warm_instances_held", ""),
        Some(0.0),
        "{}",
        page.body
    );
    assert!(
        sample(&page.body, "duro_memory_releases_total", "").unwrap() >= 1.0,
        "{}",
        page.body
    );
    // The event still reaches it: its next episode replays the history.
    assert_eq!(host.get("/api/stop/dozing").status, 200);
    let done = host.poll("/api/check/dozing", |r| {
        r.json()["runtimeStatus"] == "Completed"
    });
    assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
    let page = host.get("/metrics");
    let episodes = |warm: &str| {
        sample(
            &page.body,
            "duro_warm_instance_episodes_total",
            &format!("{{warm=\"{warm}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        (episodes("hit"), episodes("miss")),
        (0.0, 2.0),
        "{}",
        page.body
    );
}

/// A raise for an instance that does not exist, or has finished, is
/// refused as it was before raises were carried into cold instances'
/// episodes: no retry (with its count kept per id, a timer and a warning)
/// for each id a client makes up.
#[test]
fn raises_for_missing_or_finished_instances_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = duro_tests::scenario_manifest(dir.path(), "");
    let log = dir.path().join("host.log");
    let host = Host::start_logging(
        &manifest,
        &dir.path().join("duro.db"),
        &[("DURO_CARRY_PATIENCE_MS", "10000")],
        &[],
        "debug",
        &log,
    );
    for n in 0..20 {
        let raised = host.post(&format!("{API}/instances/made-up-{n}/raiseEvent/X"), "1");
        assert_eq!(raised.status, 404, "{}", raised.body);
        assert!(raised.error().contains("made-up-"), "{}", raised.body);
    }
    let path = format!("{API}/orchestrators/Workflow/done");
    assert_eq!(host.post(&path, "\"x\"").status, 202);
    let raised = host.post(&format!("{API}/instances/done/raiseEvent/Workflow"), "1");
    assert_eq!(raised.status, 202, "{}", raised.body);
    host.poll(&format!("{API}/instances/done"), |r| r.status == 200);
    let late = host.post(&format!("{API}/instances/done/raiseEvent/Workflow"), "2");
    assert_eq!(late.status, 410, "{}", late.body);
    // A warning would be written as the refusal is answered, not after.
    std::thread::sleep(Duration::from_millis(300));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains("retrying"), "{logged}");
}
