//! The host as an attacker meets it: a real `duro serve`, driven black-box
//! over raw sockets. Each test is one class of attack from `SECURITY.md`:
//! a web page in the user's browser, a holder of a function key, a hostile
//! client, a guest asking for strange times, a local user, a second host.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::host::{Host, duro_binary, history_count, refused_serve, sample, try_request};
use crate::support::PATIENCE;

const API: &str = "/runtime/webhooks/durabletask";

/// A manifest of the scenario plus the test guests' `Echo` on `route`.
fn echo_manifest(dir: &Path, route: &str, auth: &str) -> std::path::PathBuf {
    let guests = duro_tests::TEST_GUESTS_HTTP;
    crate::host::scenario_manifest(
        dir,
        &format!(
            "[[http]]\nname = \"Echo\"\nroute = {route:?}\nmethods = [\"GET\", \"POST\"]\n\
             auth = {auth:?}\ncomponent = {guests:?}\n\
             [[http]]\nname = \"Panic\"\nroute = \"/panic\"\ncomponent = {guests:?}\n"
        ),
    )
}

fn instance_count(host: &Host, key: &[(&str, &str)]) -> usize {
    let listed = host.request("GET", &format!("{API}/instances"), None, key);
    assert_eq!(listed.status, 200, "{}", listed.body);
    listed.json().as_array().unwrap().len()
}

#[test]
fn a_web_page_cannot_drive_or_read_the_management_api() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path());
    let start = format!("{API}/orchestrators/Workflow");

    // A cross-site form or `text/plain` fetch: no CORS preflight, so a
    // browser sends it; refused whatever it carries.
    let page = host.request(
        "POST",
        &start,
        Some("\"evil\""),
        &[
            ("content-type", "text/plain"),
            ("origin", "https://evil.example"),
        ],
    );
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.error().contains("Origin"), "{}", page.body);
    let plain = host.request(
        "POST",
        &start,
        Some("\"evil\""),
        &[("content-type", "text/plain")],
    );
    assert_eq!(plain.status, 415, "{}", plain.body);
    let form = host.request(
        "POST",
        &format!("{API}/deploy"),
        Some("manifest=x"),
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(form.status, 415, "{}", form.body);
    let fetch_metadata = host.request("POST", &start, None, &[("sec-fetch-site", "cross-site")]);
    assert_eq!(fetch_metadata.status, 403, "{}", fetch_metadata.body);

    // DNS rebinding: the page's own name pointed at 127.0.0.1. Reads and
    // writes are refused by name.
    let rebound = raw(
        &host.address,
        &format!(
            "GET {API}/instances HTTP/1.1\r\nhost: attacker.example\r\nconnection: close\r\n\r\n"
        ),
    );
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    assert!(
        rebound.contains("not one of this host's names"),
        "{rebound}"
    );
    for path in ["/metrics", "/dashboard/", &format!("{API}/openapi.json")] {
        let rebound = raw(
            &host.address,
            &format!("GET {path} HTTP/1.1\r\nhost: attacker.example\r\nconnection: close\r\n\r\n"),
        );
        assert!(rebound.starts_with("HTTP/1.1 403"), "{path}: {rebound}");
    }
    assert_eq!(instance_count(&host, &[]), 0, "nothing was started");

    // The host's own page, on its own name, works; JSON from it too.
    let own = host.request(
        "POST",
        &start,
        Some("\"own\""),
        &[("origin", &format!("http://{}", host.address))],
    );
    assert_eq!(own.status, 202, "{}", own.body);
    // Its links name the listener, not whatever Host the client sent.
    let by_name = raw(
        &host.address,
        &format!(
            "POST {start} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ),
    );
    assert!(by_name.starts_with("HTTP/1.1 202"), "{by_name}");
    assert!(
        by_name.contains(&format!(
            "location: http://{}{API}/instances/",
            host.address
        )),
        "{by_name}"
    );

    // The dashboard cannot be framed, sniffed or scripted from elsewhere.
    let dashboard = host.get("/dashboard/");
    assert_eq!(dashboard.status, 200);
    let csp = dashboard
        .header("content-security-policy")
        .unwrap_or_default();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(dashboard.header("x-frame-options"), Some("DENY"));
    assert_eq!(dashboard.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(dashboard.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(
        host.get("/dashboard/app.js").header("x-frame-options"),
        Some("DENY")
    );
}

#[test]
fn a_function_key_opens_its_routes_and_nothing_else_and_no_key_reaches_a_guest() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = echo_manifest(dir.path(), "/echo/{thing}", "function");
    let host = Host::start_with(
        &manifest,
        &dir.path().join("duro.db"),
        &["--function-key", "fn-key", "--admin-key", "admin-key"],
    );
    let function_key = [("x-functions-key", "fn-key")];
    let admin = [("authorization", "Bearer admin-key")];

    // Whoever may call a function may not deploy, start, read or scrape.
    let upload = json!({ "manifest": "", "components": {} }).to_string();
    for (method, path, body) in [
        (
            "POST",
            format!("{API}/deploy?dryRun=true"),
            Some(upload.as_str()),
        ),
        (
            "POST",
            format!("{API}/orchestrators/Workflow"),
            Some("\"x\""),
        ),
        ("GET", format!("{API}/instances"), None),
        ("GET", "/metrics".to_string(), None),
        ("GET", format!("{API}/openapi.json"), None),
        ("GET", "/dashboard/".to_string(), None),
    ] {
        let by_header = host.request(method, &path, body, &function_key);
        assert_eq!(by_header.status, 401, "{method} {path}: {}", by_header.body);
        assert!(
            by_header.error().contains("admin key"),
            "{}",
            by_header.body
        );
        let sep = if path.contains('?') { '&' } else { '?' };
        let by_code = host.request(method, &format!("{path}{sep}code=fn-key"), body, &[]);
        assert_eq!(
            by_code.status, 401,
            "{method} {path}?code: {}",
            by_code.body
        );
        let admitted = host.request(method, &path, body, &admin);
        assert_ne!(admitted.status, 401, "{method} {path}: {}", admitted.body);
    }
    // ... and the admin key travels in Durable Functions' places too.
    assert_eq!(
        host.get(&format!("{API}/instances?code=admin-key")).status,
        200
    );

    // The function's route takes the function key, not nothing.
    assert_eq!(host.get("/echo/x").status, 401);
    // Neither key, in any of the places it may travel, reaches the guest;
    // another `code` (an OAuth callback's) and other tokens do.
    for headers in [
        vec![
            ("x-functions-key", "fn-key"),
            ("authorization", "Bearer admin-key"),
        ],
        vec![
            ("x-functions-key", "fn-key"),
            ("x-duro-admin-key", "admin-key"),
        ],
    ] {
        let echo = host.request("GET", "/echo/x?q=1", None, &headers);
        assert_eq!(echo.status, 200, "{}", echo.body);
        assert!(
            !echo.body.contains("fn-key") && !echo.body.contains("admin-key"),
            "{}",
            echo.body
        );
    }
    let echo = host.get("/echo/x?code=fn-key&q=2");
    assert_eq!(echo.status, 200, "{}", echo.body);
    assert!(!echo.body.contains("fn-key"), "{}", echo.body);
    assert_eq!(echo.json()["query"], "2");
    let mut with_theirs = function_key.to_vec();
    with_theirs.push(("authorization", "Bearer someone-elses"));
    let echo = host.request("GET", "/echo/x?code=oauth-code", None, &with_theirs);
    assert_eq!(echo.json()["code"], "oauth-code", "{}", echo.body);
    assert!(echo.body.contains("someone-elses"), "{}", echo.body);

    // The two keys may not be one.
    let refused = refused_serve(
        "127.0.0.1:0",
        &manifest,
        &dir.path().join("other.db"),
        &["--function-key", "same", "--admin-key", "same"],
    );
    assert!(refused.contains("are the same"), "{refused}");
}

#[test]
fn without_an_admin_key_the_host_listens_on_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    // Refused before anything binds, so no test ever listens beyond
    // loopback.
    for listen in ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"] {
        let stderr = refused_serve(listen, &manifest, &dir.path().join("duro.db"), &[]);
        assert!(
            stderr.contains("--admin-key") && stderr.contains("DURO_ADMIN_KEY"),
            "{stderr}"
        );
    }
}

#[test]
fn a_compiled_code_cache_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let cache = dir.path().join("shared-cache");
    std::fs::create_dir(&cache).unwrap();
    for mode in [0o777, 0o775, 0o1777] {
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(mode)).unwrap();
        let stderr = refused_serve(
            "127.0.0.1:0",
            &manifest,
            &dir.path().join("duro.db"),
            &["--cache-dir", cache.to_str().unwrap()],
        );
        assert!(
            stderr.contains("may be written by its group or by others"),
            "mode {mode:o}: {stderr}"
        );
    }
    // Owned by another user (when the tests run as root, which may chown).
    let root = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    };
    if root {
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&cache, Some(65534), Some(65534)).unwrap();
        let stderr = refused_serve(
            "127.0.0.1:0",
            &manifest,
            &dir.path().join("duro.db"),
            &["--cache-dir", cache.to_str().unwrap()],
        );
        assert!(stderr.contains("belongs to user 65534"), "{stderr}");
    }
    // A fresh one is made private.
    let fresh = dir.path().join("fresh/cache");
    let host = Host::spawn(
        Command::new(duro_binary()),
        &manifest,
        &dir.path().join("duro.db"),
        &["--cache-dir", fresh.to_str().unwrap()],
    );
    assert_eq!(host.get("/api/start/cached").status, 200);
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// Send `request` on a fresh connection and read the answer to the end.
fn raw(address: &str, request: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn slow_and_stalled_clients_do_not_starve_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = echo_manifest(dir.path(), "/echo/{thing}", "anonymous");
    let host = Host::start_with(
        &manifest,
        &dir.path().join("duro.db"),
        &["--header-timeout-ms", "2000", "--body-timeout-ms", "2000"],
    );
    raise_fd_limit(2_500);
    // 1,000 clients that send half a request head and stall, and 900 that
    // send a head promising a body that never comes (more than the 800
    // calls an app route runs at once).
    let mut stalled = Vec::new();
    for n in 0..1000 {
        let mut stream = TcpStream::connect(&host.address).unwrap();
        stream
            .write_all(format!("GET /api/check/{n} HTTP/1.1\r\nhost: ").as_bytes())
            .unwrap();
        stalled.push(stream);
    }
    for _ in 0..900 {
        let mut stream = TcpStream::connect(&host.address).unwrap();
        stream
            .write_all(
                format!(
                    "POST /echo/up HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{",
                    host.address
                )
                .as_bytes(),
            )
            .unwrap();
        stalled.push(stream);
    }
    // Everyone else is served meanwhile: app routes and the API.
    let started = host.get("/api/start/meanwhile");
    assert_eq!(started.status, 200, "{}", started.body);
    let echo = host.post("/echo/meanwhile", "{\"n\": 1}");
    assert_eq!(echo.status, 200, "{}", echo.body);
    assert_eq!(host.get(&format!("{API}/instances")).status, 200);

    // The stalled ones are cut off: the heads with the connection closed,
    // the uploads with an answer that says why.
    let deadline = Instant::now() + PATIENCE;
    let (mut heads, mut uploads) = (0, 0);
    for (n, stream) in stalled.iter_mut().enumerate() {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left)).unwrap();
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        assert!(read.is_ok(), "connection {n} was still open: {read:?}");
        let answer = String::from_utf8_lossy(&answer);
        if n < 1000 {
            heads += 1;
            // hyper answers a head that timed out with 408, or just closes.
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
                "{answer}"
            );
        } else {
            uploads += 1;
            assert!(
                answer.starts_with("HTTP/1.1 408") || answer.starts_with("HTTP/1.1 400"),
                "{answer}"
            );
        }
    }
    assert_eq!((heads, uploads), (1000, 900));

    // A keep-alive connection left idle is closed too.
    let mut idle = TcpStream::connect(&host.address).unwrap();
    idle.write_all(
        format!(
            "GET /api/check/x HTTP/1.1\r\nhost: {}\r\n\r\n",
            host.address
        )
        .as_bytes(),
    )
    .unwrap();
    idle.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut all = Vec::new();
    assert!(
        idle.read_to_end(&mut all).is_ok(),
        "the idle connection stayed open"
    );
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 404"));
}

#[test]
fn past_the_connection_cap_a_client_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let host = Host::start_with(
        &manifest,
        &dir.path().join("duro.db"),
        &["--max-connections", "20"],
    );
    let held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&host.address).unwrap())
        .collect();
    // Past the cap: a 503 that says why, and the connection closed.
    let mut refused = None;
    for _ in 0..50 {
        match try_request(&host.address, "GET", "/api/check/x", None, &[]) {
            Ok(reply) if reply.status == 503 => {
                refused = Some(reply);
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let refused = refused.expect("a request past the cap was answered 503");
    assert!(
        refused.error().contains("20 connections"),
        "{}",
        refused.body
    );
    drop(held);
    let served = host.poll("/api/check/x", |r| r.status != 503);
    assert_eq!(served.status, 404, "{}", served.body);
}

#[test]
fn a_timer_too_far_to_count_waits_and_never_fires_early() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path());
    for (id, ms) in [
        ("u64-max", json!(u64::MAX)),
        ("i64-max", json!(i64::MAX)),
        ("far", json!(1u64 << 62)),
    ] {
        let started = host.post(
            &format!("{API}/orchestrators/WorkflowWithTimeout/{id}"),
            &json!({ "name": id, "timeout_ms": ms }).to_string(),
        );
        assert_eq!(started.status, 202, "{}", started.body);
        let pending = host.poll(&format!("{API}/instances/{id}/pending"), |r| {
            r.status == 200 && r.body.contains("9999-12-31")
        });
        assert!(
            pending.body.contains("9999-12-31T23:59:59.999Z"),
            "{id}: {}",
            pending.body
        );
    }
    // Given every chance to fire, none has.
    std::thread::sleep(Duration::from_millis(500));
    for id in ["u64-max", "i64-max", "far"] {
        let status = host.get(&format!("{API}/instances/{id}?showHistory=true"));
        assert_eq!(
            status.json()["runtimeStatus"],
            "Running",
            "{id}: {}",
            status.body
        );
        assert_eq!(
            history_count(&status.json(), "TimerFired"),
            0,
            "{}",
            status.body
        );
        // The event still ends it.
        let raised = host.post(
            &format!("{API}/instances/{id}/raiseEvent/Workflow"),
            "\"go\"",
        );
        assert_eq!(raised.status, 202);
    }
    for id in ["u64-max", "i64-max", "far"] {
        let done = host.poll(&format!("{API}/instances/{id}"), |r| r.status == 200);
        assert_eq!(done.json()["output"]["outcome"], "event", "{}", done.body);
    }
}

#[test]
fn routes_that_validate_serve_and_routes_that_cannot_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A literal `:id` segment, and a camel-case parameter.
    let guests = duro_tests::TEST_GUESTS_HTTP;
    let manifest = crate::host::scenario_manifest(
        dir.path(),
        &format!(
            "[[http]]\nname = \"Echo\"\nroute = \"/users/{{userId}}/:id\"\ncomponent = {guests:?}\n"
        ),
    );
    let host = Host::start_with(&manifest, &dir.path().join("duro.db"), &[]);
    let echo = host.request(
        "GET",
        "/users/Ada%0ALovelace/:id",
        None,
        &[
            ("duro-param-userid", "forged"),
            ("duro-params", "userId=forged&admin=true"),
            ("duro-function", "Other"),
        ],
    );
    assert_eq!(echo.status, 200, "{}", echo.body);
    let seen = echo.json();
    // Its own name, case kept; a value no header could carry; nothing forged.
    assert_eq!(
        seen["params"],
        json!({ "userId": "Ada\nLovelace" }),
        "{seen}"
    );
    assert!(
        !echo.body.contains("forged") && !echo.body.contains("Other"),
        "{seen}"
    );

    // Routes the router cannot serve side by side are a deploy error, not
    // a dropped connection (and a start-up error: tests/ui).
    let bad = "[[http]]\nname = \"A\"\nroute = \"/api/{x}\"\ncomponent = \"h.wasm\"\n\
               [[http]]\nname = \"B\"\nroute = \"/api/{y}\"\nmethods = [\"PUT\"]\ncomponent = \"h.wasm\"\n";
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.encode(std::fs::read(guests).unwrap());
    let upload = json!({ "manifest": bad, "components": { "h.wasm": bytes } }).to_string();
    let refused = host.post(&format!("{API}/deploy?dryRun=true"), &upload);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.error().contains("`B`") && refused.error().contains("/api/{y}"),
        "{}",
        refused.body
    );
    assert_eq!(host.get("/api/start/still-up").status, 200);
}

#[test]
fn live_instances_cannot_be_purged_in_bulk() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path());
    for id in ["live-1", "live-2"] {
        let started = host.post(&format!("{API}/orchestrators/Workflow/{id}"), "\"x\"");
        assert_eq!(started.status, 202);
    }
    host.poll(&format!("{API}/instances/live-2"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    let from = "2000-01-01T00:00:00Z";
    for statuses in [
        "Running",
        "Pending,Running",
        "Completed,Suspended",
        "Running,Terminated",
    ] {
        let refused = host.request(
            "DELETE",
            &format!("{API}/instances?createdTimeFrom={from}&runtimeStatus={statuses}"),
            None,
            &[],
        );
        assert_eq!(refused.status, 400, "{statuses}: {}", refused.body);
        assert!(
            refused.error().contains("only finished instances"),
            "{}",
            refused.body
        );
    }
    for id in ["live-1", "live-2"] {
        let status = host.get(&format!("{API}/instances/{id}"));
        assert_eq!(status.json()["runtimeStatus"], "Running", "{}", status.body);
    }
    // The default purges the finished ones only.
    let raised = host.post(
        &format!("{API}/instances/live-1/raiseEvent/Workflow"),
        "\"x\"",
    );
    assert_eq!(raised.status, 202);
    host.poll(&format!("{API}/instances/live-1"), |r| r.status == 200);
    let purged = host.request(
        "DELETE",
        &format!("{API}/instances?createdTimeFrom={from}"),
        None,
        &[],
    );
    assert_eq!(purged.json()["instancesDeleted"], 1, "{}", purged.body);
    assert_eq!(host.get(&format!("{API}/instances/live-2")).status, 202);
}

#[test]
fn an_episode_that_panics_in_the_host_is_retried_not_stranded() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let host = Host::start_with_env(
        &manifest,
        &dir.path().join("duro.db"),
        &[("DURO_FAULT_EPISODE_PANICS", "unlucky:2")],
        &[],
    );
    let started = host.post(&format!("{API}/orchestrators/Workflow/unlucky"), "\"u\"");
    assert_eq!(started.status, 202);
    // The first two episodes panic; the third (after the backoff) runs.
    let running = host.poll(&format!("{API}/instances/unlucky"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    assert_eq!(
        running.json()["runtimeStatus"],
        "Running",
        "{}",
        running.body
    );
    let raised = host.post(
        &format!("{API}/instances/unlucky/raiseEvent/Workflow"),
        "\"go\"",
    );
    assert_eq!(raised.status, 202);
    let done = host.poll(&format!("{API}/instances/unlucky"), |r| r.status == 200);
    assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
    // Others were never held up, and the panics are counted.
    assert_eq!(host.get("/api/start/lucky").status, 200);
    let metrics = host.get("/metrics").body;
    assert!(
        metrics.contains("duro_episodes_total{outcome=\"host_panic\"} 2"),
        "{metrics}"
    );
}

#[test]
fn a_second_host_on_one_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let first = Host::start_with(&manifest, &dir.path().join("duro.db"), &[]);
    let stderr = refused_serve(
        "127.0.0.1:0",
        &manifest,
        &dir.path().join("duro.db"),
        &["--cache-dir", duro_tests::COMPILE_CACHE],
    );
    assert!(
        stderr.contains(&format!("process {}", first.pid())),
        "{stderr}"
    );
    // Once the first is gone (even by kill -9), the file is free.
    first.kill();
    let again = Host::start_with(&manifest, &dir.path().join("duro.db"), &[]);
    assert_eq!(again.get("/api/start/again").status, 200);
}

#[test]
fn failures_are_reported_without_their_insides() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = echo_manifest(dir.path(), "/echo/{thing}", "anonymous");
    let host = Host::start_with(&manifest, &dir.path().join("duro.db"), &[]);
    let panicked = host.get("/panic");
    assert_eq!(panicked.status, 500);
    let message = panicked.error();
    assert!(
        message.contains("function `Panic` failed") && message.contains("incident"),
        "{message}"
    );
    assert!(
        !message.contains("deliberate panic") && !message.contains("wasm"),
        "{message}"
    );

    // A PostgreSQL URL's password never appears in what duro prints.
    for database in [
        "postgres://duro:hunter2@127.0.0.1:1/duro?password=hunter3&connect_timeout=1",
        "postgres://duro:hunter2@127.0.0.1:notaport/duro",
    ] {
        let stderr = refused_serve("127.0.0.1:0", &manifest, Path::new(database), &[]);
        assert!(
            !stderr.contains("hunter2") && !stderr.contains("hunter3"),
            "{stderr}"
        );
    }
}

#[test]
fn a_sub_orchestration_always_gets_an_id_the_api_can_name() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::test_guest_manifest(dir.path(), "Parent");
    let host = Host::start_with(&manifest, &dir.path().join("duro.db"), &[]);
    // A child id the guest chose that no URL could name: the parent fails,
    // saying why, and no such child exists.
    for bad in ["a/b", &"c".repeat(257), "tab\there"] {
        let parent = format!("p-{}", bad.len());
        let call = json!({ "name": "Workflow", "id": bad, "input": "x" });
        let started = host.post(
            &format!("{API}/orchestrators/Parent/{parent}"),
            &call.to_string(),
        );
        assert_eq!(started.status, 202, "{}", started.body);
        let failed = host.poll(&format!("{API}/instances/{parent}"), |r| r.status == 200);
        assert_eq!(failed.json()["runtimeStatus"], "Failed", "{}", failed.body);
        assert!(failed.body.contains("is not valid"), "{}", failed.body);
    }
    assert_eq!(instance_count(&host, &[]), 3, "no child was created");
    // A parent whose id leaves no room for `:<task>` still names its child.
    let long = "p".repeat(256);
    let call = json!({ "name": "Workflow", "input": "x" });
    let started = host.post(
        &format!("{API}/orchestrators/Parent/{long}"),
        &call.to_string(),
    );
    assert_eq!(started.status, 202, "{}", started.body);
    let child = host.poll(
        &format!("{API}/instances?runtimeStatus=Running&name=Workflow"),
        |r| r.json().as_array().is_some_and(|a| !a.is_empty()),
    );
    let child_id = child.json()[0]["instanceId"].as_str().unwrap().to_string();
    assert!(
        child_id.len() <= 256 && child_id.ends_with(":0"),
        "{child_id}"
    );
    let raised = host.post(
        &format!("{API}/instances/{child_id}/raiseEvent/Workflow"),
        "\"go\"",
    );
    assert_eq!(raised.status, 202, "{}", raised.body);
    let done = host.poll(&format!("{API}/instances/{long}"), |r| r.status == 200);
    assert_eq!(done.json()["runtimeStatus"], "Completed", "{}", done.body);
}

#[test]
fn sizes_and_history_lengths_have_limits_that_name_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::test_guest_manifest(dir.path(), "Timers");
    let host = Host::start_with(
        &manifest,
        &dir.path().join("duro.db"),
        &[
            "--max-payload-bytes",
            "1000",
            "--max-history-events",
            "20",
            "--max-request-bytes",
            "4000",
        ],
    );
    let big = json!("x".repeat(1200)).to_string();
    // What a caller sends: an input, an event, a body past the request
    // limit, and the same through an HTTP function's durable client.
    let start = host.post(&format!("{API}/orchestrators/Workflow/big"), &big);
    assert_eq!(start.status, 413, "{}", start.body);
    assert!(
        start.error().contains("limit of 1000 bytes"),
        "{}",
        start.body
    );
    let huge = json!("x".repeat(5000)).to_string();
    let body = host.post(&format!("{API}/orchestrators/Workflow/huge"), &huge);
    assert_eq!(body.status, 413, "{}", body.body);
    assert!(body.error().contains("4000 bytes"), "{}", body.body);
    let app = host.get(&format!("/api/start/{}", "y".repeat(1200)));
    assert_ne!(app.status, 200, "{}", app.body);
    assert_eq!(instance_count(&host, &[]), 0);

    let ok = host.post(&format!("{API}/orchestrators/Workflow/small"), "\"s\"");
    assert_eq!(ok.status, 202);
    let event = host.post(&format!("{API}/instances/small/raiseEvent/Workflow"), &big);
    assert_eq!(event.status, 413, "{}", event.body);
    assert!(
        event.error().contains("payload of event `Workflow`"),
        "{}",
        event.body
    );

    // What a guest makes: an output past the limit fails its instance and
    // is not stored.
    let near = json!("z".repeat(990)).to_string();
    let started = host.post(&format!("{API}/orchestrators/Workflow/near"), &near);
    assert_eq!(started.status, 202, "{}", started.body);
    let raised = host.post(
        &format!("{API}/instances/near/raiseEvent/Workflow"),
        "\"go\"",
    );
    assert_eq!(raised.status, 202, "{}", raised.body);
    let failed = host.poll(&format!("{API}/instances/near"), |r| r.status == 200);
    assert_eq!(failed.json()["runtimeStatus"], "Failed", "{}", failed.body);
    assert!(
        failed.body.contains("output is") && failed.body.contains("limit of 1000"),
        "{}",
        failed.body
    );

    // A history that grows past its limit asks for continue-as-new.
    let started = host.post(&format!("{API}/orchestrators/Timers/long"), "5");
    assert_eq!(started.status, 202, "{}", started.body);
    for _ in 0..10 {
        let raised = host.post(&format!("{API}/instances/long/raiseEvent/Go"), "\"more\"");
        if raised.status == 410 {
            break;
        }
        assert_eq!(raised.status, 202, "{}", raised.body);
        std::thread::sleep(Duration::from_millis(50));
    }
    let failed = host.poll(&format!("{API}/instances/long"), |r| r.status == 200);
    assert_eq!(failed.json()["runtimeStatus"], "Failed", "{}", failed.body);
    assert!(failed.body.contains("continue-as-new"), "{}", failed.body);
    let history = host.get(&format!("{API}/instances/long?showHistory=true"));
    let events = history.json()["historyEvents"].as_array().unwrap().len();
    // The limit's 20, then the failure (an episode start and its end).
    assert!(events <= 22, "{events} events stored");
}

#[test]
fn an_instance_takes_at_most_its_cap_of_waiting_messages() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let host = Host::start_with(
        &manifest,
        &dir.path().join("duro.db"),
        &["--max-inbox-messages", "5"],
    );
    let started = host.post(&format!("{API}/orchestrators/Workflow/flooded"), "\"f\"");
    assert_eq!(started.status, 202);
    host.poll(&format!("{API}/instances/flooded"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    // Suspended, it takes nothing: events wait in its inbox until the cap.
    let suspended = host.post(&format!("{API}/instances/flooded/suspend"), "");
    assert_eq!(suspended.status, 202);
    host.poll(&format!("{API}/instances/flooded"), |r| {
        r.json()["runtimeStatus"] == "Suspended"
    });
    let mut refused = None;
    for n in 0..20 {
        let raised = host.post(
            &format!("{API}/instances/flooded/raiseEvent/Other"),
            &n.to_string(),
        );
        if raised.status == 429 {
            refused = Some(raised);
            break;
        }
        assert_eq!(raised.status, 202, "{}", raised.body);
    }
    let refused = refused.expect("the cap was reached");
    assert!(
        refused.error().contains("5 messages waiting"),
        "{}",
        refused.body
    );
    // A full inbox never keeps an instance from being resumed or stopped;
    // once it takes its messages, it takes more.
    let resumed = host.post(&format!("{API}/instances/flooded/resume"), "");
    assert_eq!(resumed.status, 202, "{}", resumed.body);
    let accepted = host.poll(&format!("{API}/instances/flooded/pending"), |r| {
        r.json()["inbox"]
            .as_array()
            .is_some_and(|inbox| inbox.len() < 5)
    });
    assert_eq!(accepted.status, 200);
}

/// The `duro_compiled_components` gauge of a host.
fn compiled_components(host: &Host) -> u64 {
    let metrics = host.get("/metrics").body;
    sample(&metrics, "duro_compiled_components", "")
        .map(|n| n as u64)
        .unwrap_or_else(|| panic!("no compiled-components gauge in {metrics}"))
}

#[test]
fn components_no_app_or_instance_uses_are_dropped() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path());
    let baseline = compiled_components(&host);
    assert!(baseline >= 2, "{baseline}");
    let encode =
        |path: &str| base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap());
    let manifest = "[[orchestration]]\nname = \"Workflow\"\ncomponent = \"o.wasm\"\n\
                    [[http]]\nname = \"Echo\"\nroute = \"/echo\"\ncomponent = \"h.wasm\"\n";
    let upload = json!({
        "manifest": manifest,
        "components": {
            "o.wasm": encode(duro_tests::SCENARIO),
            "h.wasm": encode(duro_tests::TEST_GUESTS_HTTP),
        },
    })
    .to_string();
    // Dry runs compile what they check, and keep none of it.
    for _ in 0..3 {
        let dry = host.post(&format!("{API}/deploy?dryRun=true"), &upload);
        assert_eq!(dry.status, 200, "{}", dry.body);
        assert_eq!(compiled_components(&host), baseline);
    }
    // A deploy keeps what it serves, and drops the HTTP component it
    // replaced (no instance runs on an HTTP function).
    let deployed = host.post(&format!("{API}/deploy"), &upload);
    assert_eq!(deployed.status, 200, "{}", deployed.body);
    assert_eq!(host.get("/echo").status, 200);
    assert_eq!(compiled_components(&host), baseline);
}

#[test]
fn a_client_that_stops_reading_its_answer_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = echo_manifest(dir.path(), "/echo/{thing}", "anonymous");
    // The guest's own budget is long: what cuts the client off must be the
    // write deadline.
    let host = Host::spawn(
        Command::new(duro_binary()),
        &manifest,
        &dir.path().join("duro.db"),
        &[
            "--cache-dir",
            duro_tests::COMPILE_CACHE,
            "--trigger-budget-ms",
            "60000",
            "--max-request-bytes",
            "33554432",
            "--write-timeout-ms",
            "1000",
        ],
    );
    // An answer far larger than the sockets' buffers, which the client
    // never reads until the host must have given up on it.
    let body = json!("y".repeat(24 << 20)).to_string();
    let mut stream = TcpStream::connect(&host.address).unwrap();
    stream
        .write_all(
            format!(
                "POST /echo/big HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n\r\n",
                host.address,
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    // Others are served meanwhile.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        assert_eq!(host.get("/api/check/none").status, 404);
        std::thread::sleep(Duration::from_millis(200));
    }
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let head = String::from_utf8_lossy(&answer[..answer.len().min(512)]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        answer.len() < body.len(),
        "the whole answer ({} bytes) was kept for a client that did not read",
        answer.len()
    );
}

#[test]
fn a_listing_reads_inputs_only_when_it_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path());
    let input = json!({ "name": "x".repeat(1000), "timeout_ms": 600_000 });
    let started = host.post(
        &format!("{API}/orchestrators/WorkflowWithTimeout/listed"),
        &input.to_string(),
    );
    assert_eq!(started.status, 202);
    // Running: its output and status are small, its input is not.
    host.poll(&format!("{API}/instances/listed"), |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    let plain = host.get(&format!("{API}/instances"));
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert!(plain.json()[0].get("input").is_none(), "{}", plain.body);
    assert!(
        plain.body.len() < 1000,
        "the input was sent: {}",
        plain.body.len()
    );
    let shown = host.get(&format!("{API}/instances?showInput=true"));
    assert_eq!(shown.json()[0]["input"], input, "{}", shown.body);
    // A filter on the input still finds it.
    let filtered = host.get(&format!(
        "{API}/instances?input={}",
        duro::cli::encode(&input.to_string())
    ));
    assert_eq!(
        filtered.json().as_array().unwrap().len(),
        1,
        "{}",
        filtered.body
    );
}

#[test]
fn an_oversized_request_head_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path());
    let head = format!(
        "GET /api/check/x HTTP/1.1\r\nhost: {}\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        host.address,
        "a".repeat(70_000)
    );
    let mut stream = TcpStream::connect(&host.address).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = stream.write_all(head.as_bytes());
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let many: String = (0..200).map(|n| format!("x-h{n}: v\r\n")).collect();
    let answer = raw(
        &host.address,
        &format!(
            "GET /api/check/x HTTP/1.1\r\nhost: {}\r\n{many}connection: close\r\n\r\n",
            host.address
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(host.get("/api/check/x").status, 404);
}

/// Raise this process's file-descriptor limit to the hard limit, and skip
/// nothing silently: fail if even that holds fewer than `needed`.
fn raise_fd_limit(needed: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let _ = setrlimit(Resource::Nofile, raised);
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    assert!(
        now >= needed,
        "this test needs {needed} file descriptors; the limit is {now}"
    );
}

#[test]
fn a_long_history_is_streamed_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::test_guest_manifest(dir.path(), "Timers");
    let host = Host::start_with(&manifest, &dir.path().join("duro.db"), &[]);
    // 300 timers scheduled and fired: some 600 events, several pages.
    let started = host.post(&format!("{API}/orchestrators/Timers/long"), "300");
    assert_eq!(started.status, 202, "{}", started.body);
    let status = host.poll(&format!("{API}/instances/long?showHistory=true"), |r| {
        r.status == 202 && history_count(&r.json(), "TimerFired") == 300
    });
    let json = status.json();
    assert_eq!(json["instanceId"], "long");
    assert_eq!(json["runtimeStatus"], "Running");
    let events = json["historyEvents"].as_array().unwrap();
    assert!(events.len() > 600, "{}", events.len());
    assert_eq!(events[0]["eventType"], "ExecutionStarted", "{}", events[0]);
    assert_eq!(history_count(&json, "TimerFired"), 300);
    // The answer is chunked, not built whole.
    assert_eq!(status.header("transfer-encoding"), Some("chunked"));
    let raised = host.post(&format!("{API}/instances/long/raiseEvent/Go"), "\"stop\"");
    assert_eq!(raised.status, 202);
    let done = host.poll(
        &format!("{API}/instances/long?showHistory=true&showHistoryOutput=true"),
        |r| r.status == 200,
    );
    let events = done.json()["historyEvents"].as_array().unwrap().clone();
    assert_eq!(
        events.last().unwrap()["eventType"],
        "ExecutionCompleted",
        "{}",
        done.body.len()
    );
    assert_eq!(events.last().unwrap()["output"], 300);
}
