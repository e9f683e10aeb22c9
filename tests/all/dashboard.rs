//! The dashboard in a real browser: headless Chromium over WebDriver
//! (Debian's `chromium` and `chromium-driver`) lists, filters, opens an
//! instance, raises its event until it completes, and terminates another;
//! a screenshot of each page is kept (printed path) to look at.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::host::Host;

const API: &str = "/runtime/webhooks/durabletask";
const KEY: &str = "dash-key";

/// chromedriver on a free loopback port, stopped on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver, or None (the test is skipped) when the machine has none
/// and DURO_REQUIRE_BROWSER is not set.
fn driver() -> Option<Driver> {
    let binary = std::env::var("DURO_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = match Command::new(&binary)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var_os("DURO_REQUIRE_BROWSER").is_none(),
                "DURO_REQUIRE_BROWSER is set but {binary} cannot start: {e}"
            );
            eprintln!("skipped: no {binary} ({e}); apt-get install chromium chromium-driver");
            return None;
        }
    };
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(driver)
}

async fn browser(driver: &Driver) -> Client {
    let mut options = json!({
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--window-size=1280,1100"],
    });
    if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = "/usr/bin/chromium".into();
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session")
}

/// Where the screenshots go.
fn artifacts() -> PathBuf {
    let dir = std::env::var_os("DURO_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
        .join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    let path = artifacts().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Click the element `css` selects.
async fn click(client: &Client, css: &str) {
    on_fresh(client, css, |element| async move { element.click().await }).await;
}

/// Type `text` into the element `css` selects.
async fn type_into(client: &Client, css: &str, text: &str) {
    on_fresh(client, css, |element| async move {
        element.send_keys(text).await
    })
    .await;
}

/// Do `act` to the element `css` selects, finding it again if the page
/// re-rendered it in between (the dashboard refreshes its tables while
/// the test acts, and a slow machine widens that window).
async fn on_fresh<F, Fut>(client: &Client, css: &str, act: F)
where
    F: Fn(fantoccini::elements::Element) -> Fut,
    Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
{
    let deadline = Instant::now() + crate::support::PATIENCE;
    loop {
        let element = client.find(Locator::Css(css)).await.unwrap();
        match act(element).await {
            Ok(()) => return,
            Err(e)
                if format!("{e:?}").contains("StaleElementReference")
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{css}: {e:?}"),
        }
    }
}

/// Wait until `script` (a JS expression) is true in the page.
async fn until(client: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + crate::support::PATIENCE;
    loop {
        let value = client
            .execute(&format!("return !!({script});"), vec![])
            .await
            .unwrap();
        if value == json!(true) {
            return;
        }
        if Instant::now() > deadline {
            screenshot(client, "failure").await;
            panic!("the page never showed {what} ({script})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_drives_instances_in_a_real_browser() {
    let Some(driver) = driver() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let host = Host::start_with(
        &manifest,
        &dir.path().join("duro.db"),
        &["--admin-key", KEY],
    );
    let bearer = format!("Bearer {KEY}");
    let key = [("authorization", bearer.as_str())];
    for (name, id, input) in [
        ("Workflow", "order-1", json!("order-1")),
        ("Workflow", "order-2", json!("order-2")),
        ("Workflow", "other-1", json!("other-1")),
        (
            "WorkflowWithTimeout",
            "timed-1",
            json!({ "name": "t", "timeout_ms": 600000 }),
        ),
    ] {
        let started = host.request(
            "POST",
            &format!("{API}/orchestrators/{name}/{id}"),
            Some(&input.to_string()),
            &key,
        );
        assert_eq!(started.status, 202, "{}", started.body);
    }
    // The page is behind the key like the API it calls.
    assert_eq!(host.get("/dashboard/").status, 401);
    let base = format!("http://{}/dashboard/?code={KEY}", host.address);

    let client = browser(&driver).await;
    client.goto(&base).await.unwrap();
    until(
        &client,
        "the instances",
        r##"document.querySelectorAll("#instances tr[data-id]").length === 4
           && document.querySelector('tr[data-id="timed-1"] [data-status="Running"]')"##,
    )
    .await;
    screenshot(&client, "1-list").await;

    // Keyboard: "/" jumps to the filters; filter by id prefix with Enter.
    type_into(&client, "body", "/").await;
    let focused = client
        .execute("return document.activeElement.id;", vec![])
        .await
        .unwrap();
    assert_eq!(focused, json!("filter-name"));
    type_into(&client, "#filter-prefix", "order-\u{E007}").await; // WebDriver's Enter
    until(
        &client,
        "only order-*",
        r##"location.hash.includes("prefix=order-")
           && document.querySelectorAll("#instances tr[data-id]").length === 2
           && !document.querySelector('tr[data-id="other-1"]')"##,
    )
    .await;
    screenshot(&client, "2-filtered").await;

    // Paging: twelve more instances, ten a page.
    for n in 0..12 {
        host.request(
            "POST",
            &format!("{API}/orchestrators/Workflow/bulk-{n:02}"),
            Some("\"bulk\""),
            &key,
        );
    }
    client
        .goto(&format!("{base}#/?prefix=bulk-&top=10"))
        .await
        .unwrap();
    until(
        &client,
        "a first page of ten",
        r##"document.querySelectorAll("#instances tr[data-id]").length === 10
           && !document.getElementById("next").disabled
           && document.getElementById("prev").disabled"##,
    )
    .await;
    click(&client, "#next").await;
    until(
        &client,
        "the second page",
        r##"document.querySelectorAll("#instances tr[data-id]").length === 2
           && document.querySelector('tr[data-id="bulk-11"]')
           && document.getElementById("next").disabled"##,
    )
    .await;
    screenshot(&client, "2b-second-page").await;
    click(&client, "#prev").await;
    until(
        &client,
        "the first page again",
        r##"document.querySelector('tr[data-id="bulk-00"]')"##,
    )
    .await;
    client
        .goto(&format!("{base}#/?prefix=order-"))
        .await
        .unwrap();
    until(
        &client,
        "order-1",
        r##"document.querySelector('tr[data-id="order-1"] a')"##,
    )
    .await;

    // Open order-1, raise its event through the form, see it complete.
    click(&client, r##"tr[data-id="order-1"] a"##).await;
    until(
        &client,
        "order-1 running",
        r##"document.querySelector('#status [data-status="Running"]')
           && document.querySelector('#history tr[data-event="ExecutionStarted"]')"##,
    )
    .await;
    screenshot(&client, "3-instance").await;
    type_into(&client, "#event-name", "Workflow").await;
    type_into(&client, "#event-payload", "\"approved\"").await;
    click(&client, "#raise-submit").await;
    until(
        &client,
        "the confirmation",
        "document.getElementById('confirm').open",
    )
    .await;
    click(&client, "#confirm-ok").await;
    until(
        &client,
        "order-1 completed",
        r##"document.querySelector('#status [data-status="Completed"]')
           && document.getElementById("output").textContent.includes("Workflow for order-1 stopped")
           && document.querySelector('#history tr[data-event="EventRaised"]')"##,
    )
    .await;
    screenshot(&client, "4-completed").await;

    // The timed instance shows its pending timer.
    client
        .goto(&format!("{base}#/instances/timed-1"))
        .await
        .unwrap();
    until(
        &client,
        "the pending timer",
        r##"document.querySelector('#open-tasks li[data-kind="timer"]')"##,
    )
    .await;
    screenshot(&client, "5-pending-timer").await;

    // Back to the list, open order-2 and terminate it (with a reason).
    client
        .goto(&format!("{base}#/instances/order-2"))
        .await
        .unwrap();
    until(
        &client,
        "order-2 running",
        r##"document.querySelector('#status [data-status="Running"]')
           && !document.getElementById("action-terminate").disabled"##,
    )
    .await;
    click(&client, "#action-terminate").await;
    until(
        &client,
        "the confirmation",
        "document.getElementById('confirm').open",
    )
    .await;
    type_into(&client, "#confirm-reason", "from the dashboard").await;
    screenshot(&client, "6-confirm-terminate").await;
    click(&client, "#confirm-ok").await;
    until(
        &client,
        "order-2 terminated",
        r##"document.querySelector('#status [data-status="Terminated"]')"##,
    )
    .await;
    screenshot(&client, "7-terminated").await;
    let status = host.request("GET", &format!("{API}/instances/order-2"), None, &key);
    assert_eq!(status.json()["runtimeStatus"], "Terminated");
    assert_eq!(status.json()["output"], "from the dashboard");

    // Live: a change made elsewhere shows up without a reload.
    client.goto(&base).await.unwrap();
    until(
        &client,
        "the list",
        r##"document.querySelector('tr[data-id="other-1"]')"##,
    )
    .await;
    host.request(
        "POST",
        &format!("{API}/instances/other-1/raiseEvent/Workflow"),
        Some("1"),
        &key,
    );
    until(
        &client,
        "other-1 completed without a reload",
        r##"document.querySelector('tr[data-id="other-1"] [data-status="Completed"]')"##,
    )
    .await;
    client.close().await.unwrap();
}

/// The schedules page in a real browser: the manifest's schedules listed
/// with their next fire, paused and resumed with a confirmation and a
/// reason, triggered (the run shows, linked to its instance, which links
/// back to its schedule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_pauses_resumes_and_triggers_schedules() {
    let Some(driver) = driver() else { return };
    let dir = tempfile::tempdir().unwrap();
    let guests = duro_tests::TEST_GUESTS;
    let manifest = crate::host::scenario_manifest(
        dir.path(),
        &format!(
            "[[orchestration]]\nname = \"Counter\"\ncomponent = {guests:?}\n\
             [[schedule]]\nname = \"nightly\"\ncron = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\n\
             orchestration = \"Counter\"\ninput = 3\n"
        ),
    );
    let host = Host::start_with(
        &manifest,
        &dir.path().join("duro.db"),
        &["--admin-key", KEY],
    );
    // The schedule routes are behind the admin key like the rest.
    assert_eq!(host.get(&format!("{API}/schedules")).status, 401);
    let refused = host.request(
        "POST",
        &format!("{API}/schedules/nightly/pause"),
        Some(""),
        &[],
    );
    assert_eq!(refused.status, 401, "{}", refused.body);
    let base = format!("http://{}/dashboard/?code={KEY}", host.address);
    let client = browser(&driver).await;
    client.goto(&format!("{base}#/schedules")).await.unwrap();
    until(
        &client,
        "the schedule, active",
        r##"document.querySelector('tr[data-schedule="nightly"] [data-state="active"]')
           && document.querySelector('tr[data-schedule="nightly"]').textContent.includes("30 2 * * * (Europe/Berlin)")"##,
    )
    .await;
    screenshot(&client, "8-schedules").await;

    // Pause, with a reason, after the confirmation.
    click(&client, "#schedule-pause-nightly").await;
    until(
        &client,
        "the confirmation",
        "document.getElementById('confirm').open",
    )
    .await;
    type_into(&client, "#confirm-reason", "holiday").await;
    click(&client, "#confirm-ok").await;
    until(
        &client,
        "the schedule, paused",
        r##"document.querySelector('tr[data-schedule="nightly"] [data-state="paused"]')
           && !document.getElementById("schedule-resume-nightly").disabled"##,
    )
    .await;
    let bearer = format!("Bearer {KEY}");
    let key = [("authorization", bearer.as_str())];
    let shown = host
        .request("GET", &format!("{API}/schedules/nightly"), None, &key)
        .json();
    assert_eq!(shown["pauseReason"], "holiday", "{shown}");

    // Cancelling the dialog changes nothing; confirming resumes.
    click(&client, "#schedule-resume-nightly").await;
    until(
        &client,
        "the confirmation",
        "document.getElementById('confirm').open",
    )
    .await;
    click(&client, "#confirm-cancel").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shown = host
        .request("GET", &format!("{API}/schedules/nightly"), None, &key)
        .json();
    assert_eq!(shown["paused"], true, "cancelled: {shown}");
    click(&client, "#schedule-resume-nightly").await;
    until(
        &client,
        "the confirmation",
        "document.getElementById('confirm').open",
    )
    .await;
    click(&client, "#confirm-ok").await;
    until(
        &client,
        "the schedule, active again",
        r##"document.querySelector('tr[data-schedule="nightly"] [data-state="active"]')"##,
    )
    .await;

    // Its page: the next five fire times; a trigger starts a run, linked.
    click(&client, r##"tr[data-schedule="nightly"] a"##).await;
    until(
        &client,
        "five fire times",
        r##"document.querySelectorAll("#next-fires li").length === 5"##,
    )
    .await;
    click(&client, "#schedule-trigger-nightly").await;
    until(
        &client,
        "the confirmation",
        "document.getElementById('confirm').open",
    )
    .await;
    click(&client, "#confirm-ok").await;
    until(
        &client,
        "the started run",
        r##"document.querySelector('#runs tr[data-decision="started"] a')"##,
    )
    .await;
    screenshot(&client, "9-schedule").await;
    click(&client, r##"#runs tr[data-decision="started"] a"##).await;
    until(
        &client,
        "the run's instance, scheduled by nightly",
        r##"document.getElementById("scheduled-by")
           && document.getElementById("scheduled-by").textContent === "nightly"
           && document.querySelector('#status [data-status="Completed"]')"##,
    )
    .await;
    screenshot(&client, "10-scheduled-instance").await;
    client.close().await.unwrap();
}

/// The entity pages in a real browser: the list with state and lock
/// holder, and an entity's page with its state and what waits for its
/// lock, linked to the orchestration that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_entities_their_lock_and_queue() {
    let Some(driver) = driver() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::entities::entity_manifest(dir.path());
    let host = Host::start_with(
        &manifest,
        &dir.path().join("duro.db"),
        &["--admin-key", KEY],
    );
    let key = [("authorization", &*format!("Bearer {KEY}"))];
    // The entity routes are behind the admin key like the rest.
    assert_eq!(host.get(&format!("{API}/entities")).status, 401);
    let post = |path: &str, body: &str| {
        let reply = host.request("POST", &format!("{API}{path}"), Some(body), &key);
        assert_eq!(reply.status, 202, "{path}: {}", reply.body);
    };
    post("/entities/Account/shown?op=deposit", "40");
    post("/orchestrators/HoldLock/holder-ui", "\"shown\"");
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    while host
        .request(
            "GET",
            &format!("{API}/entities/account/shown?showDetails=true"),
            None,
            &key,
        )
        .json()["lockedBy"]
        != "holder-ui"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was not taken"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    post("/entities/Account/shown?op=deposit", "2");
    let base = format!("http://{}/dashboard/?code={KEY}", host.address);
    let client = browser(&driver).await;
    client.goto(&format!("{base}#/entities")).await.unwrap();
    until(
        &client,
        "the entity, locked",
        r##"document.querySelector('tr[data-entity="account/shown"]')
           && document.querySelector('tr[data-entity="account/shown"]').textContent.includes("holder-ui")"##,
    )
    .await;
    screenshot(&client, "11-entities").await;
    click(&client, r##"tr[data-entity="account/shown"] a"##).await;
    until(
        &client,
        "the entity's page: state, holder, the waiting deposit",
        r##"document.getElementById("entity-state")
           && document.getElementById("entity-state").textContent.trim() === "40"
           && document.getElementById("entity-locked-by")
           && document.getElementById("entity-locked-by").textContent === "holder-ui"
           && document.getElementById("entity-queue").textContent.includes("deposit")"##,
    )
    .await;
    screenshot(&client, "12-entity").await;
    post("/instances/holder-ui/raiseEvent/Release", "null");
    until(
        &client,
        "the deposit ran once the lock was released",
        r##"document.getElementById("entity-state").textContent.trim() === "42"
           && document.getElementById("entity-summary").textContent.includes("nobody")"##,
    )
    .await;
    click(&client, "#back-entities").await;
    until(
        &client,
        "back to the list",
        r##"document.querySelector('tr[data-entity="account/shown"]')"##,
    )
    .await;
    client.close().await.unwrap();
}
