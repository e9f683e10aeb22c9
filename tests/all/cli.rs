//! The `duro` command line against a running host, and `duro serve`
//! refusing components that do not fit their world.

use std::process::Command;

use crate::host::{Host, duro_binary, refusal};

/// Run the `duro` CLI against `host`: success, stdout, stderr.
pub fn duro(host: &Host, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(duro_binary())
        .arg("--host")
        .arg(format!("http://{}", host.address))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn cli_starts_inspects_raises_and_purges() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path());

    let (ok, out, err) = duro(
        &host,
        &["start", "Workflow", "--input", "\"cli\"", "--id", "cli-1"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "started cli-1");

    host.poll("/runtime/webhooks/durabletask/instances/cli-1", |r| {
        r.json()["runtimeStatus"] == "Running"
    });
    let (ok, out, _) = duro(&host, &["status", "cli-1"]);
    assert!(ok);
    assert!(out.contains("runtimeStatus    Running"), "{out}");

    let (ok, out, _) = duro(&host, &["list"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("INSTANCE"), "{out}");
    assert!(
        lines[1].starts_with("cli-1") && lines[1].contains("Workflow"),
        "{out}"
    );

    // Waiting on a running instance gives up after the time asked.
    let (ok, out, _) = duro(&host, &["status", "cli-1", "--wait", "50"]);
    assert!(ok);
    assert!(out.contains("runtimeStatus    Running"), "{out}");

    let (ok, _, err) = duro(&host, &["raise", "cli-1", "Workflow", "--payload", "1"]);
    assert!(ok, "{err}");
    // ... and answers as soon as it has finished.
    let (ok, out, _) = duro(&host, &["status", "cli-1", "--wait", "--json"]);
    assert!(ok);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["runtimeStatus"], "Completed");

    let (ok, _, err) = duro(&host, &["raise", "cli-1", "Workflow"]);
    assert!(!ok);
    assert!(err.contains("410") && err.contains("Completed"), "{err}");
    let (ok, _, err) = duro(&host, &["status", "nobody"]);
    assert!(!ok);
    assert!(
        err.contains("404") && err.contains("no instance with id `nobody`"),
        "{err}"
    );
    let (ok, _, err) = duro(&host, &["start", "Workflow", "--input", "{oops"]);
    assert!(!ok);
    assert!(
        err.contains("--input") && err.contains("not valid JSON"),
        "{err}"
    );
    let (ok, out, _) = duro(&host, &["purge", "cli-1"]);
    assert!(ok);
    assert_eq!(out.trim(), "purged cli-1");
}

/// `--async-threads` sizes the host's async runtime: a host on one
/// thread, or on three, serves the scenario through its own triggers; 0
/// is refused before anything starts, naming the flag.
#[test]
fn the_async_runtime_takes_the_threads_it_is_given() {
    for threads in ["1", "3"] {
        let dir = tempfile::tempdir().unwrap();
        let manifest = crate::host::scenario_manifest(dir.path(), "");
        let host = Host::start_with_env(
            &manifest,
            &dir.path().join("duro.db"),
            &[("DURO_ASYNC_THREADS", threads)],
            &[],
        );
        let started = host.get("/api/start/threads");
        assert_eq!(started.status, 200, "{threads}: {}", started.body);
        let stopped = host.get("/api/stop/threads");
        assert_eq!(stopped.status, 200, "{threads}: {}", stopped.body);
        host.poll("/api/check/threads", |r| {
            r.json()["runtimeStatus"] == "Completed"
        });
    }
    let stderr = refusal(Command::new(duro_binary()).args(["--async-threads", "0", "serve"]));
    assert!(stderr.contains("--async-threads"), "{stderr}");
}

#[test]
fn serve_refuses_a_component_that_does_not_fit_its_world() {
    let dir = tempfile::tempdir().unwrap();
    // The orchestration component named as an HTTP trigger, and vice versa.
    let cases = [
        (
            format!(
                "[[http]]\nname = \"Start\"\nroute = \"/s\"\ncomponent = {:?}\n",
                duro_tests::SCENARIO
            ),
            "http function `Start`",
        ),
        (
            format!(
                "[[orchestration]]\nname = \"Workflow\"\ncomponent = {:?}\n",
                duro_tests::SCENARIO_HTTP
            ),
            "is not a duro orchestration",
        ),
        (
            format!(
                "[[entity]]\nname = \"Counter\"\ncomponent = {:?}\n",
                duro_tests::SCENARIO
            ),
            "is not a duro entity",
        ),
        (
            format!(
                "[[entity]]\nname = \"a@b\"\ncomponent = {:?}\n",
                duro_tests::TEST_ENTITIES
            ),
            "entity `a@b`: the entity name \"a@b\" contains `@`",
        ),
        (
            format!(
                "[[entity]]\nname = \"Counter\"\ncomponent = {e:?}\n\
                 [[entity]]\nname = \"counter\"\ncomponent = {e:?}\n",
                e = duro_tests::TEST_ENTITIES
            ),
            "entity `counter` is declared twice (entity names ignore case)",
        ),
    ];
    for (manifest, expected) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, manifest).unwrap();
        let output = Command::new(duro_binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--manifest"])
            .arg(&path)
            .arg("--database")
            .arg(dir.path().join("bad.db"))
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
        assert!(
            output.stdout.is_empty(),
            "nothing listened: {:?}",
            output.stdout
        );
    }
}

#[test]
fn serve_works_with_relative_paths_and_the_default_cache() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let host = Host::start_in(dir.path(), &manifest, "data/duro.db");
    assert_eq!(host.get("/api/start/rel").status, 200);
    assert!(dir.path().join("data/duro.db").exists());
    // The user's own cache directory, made private to them.
    use std::os::unix::fs::PermissionsExt as _;
    let cache = dir.path().join("home-cache/duro");
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{}", cache.display());
}

#[test]
fn cli_sends_the_admin_key_a_host_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::host::scenario_manifest(dir.path(), "");
    let host = Host::start_with(
        &manifest,
        &dir.path().join("duro.db"),
        &["--admin-key", "adm1n", "--function-key", "k3y"],
    );
    let (ok, _, err) = duro(&host, &["start", "Workflow", "--input", "\"x\""]);
    assert!(!ok);
    assert!(
        err.contains("401") && err.contains("needs the admin key"),
        "{err}"
    );
    // The function key is not the admin key.
    let (ok, _, err) = duro(&host, &["--admin-key", "k3y", "list"]);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, out, err) = duro(
        &host,
        &[
            "--admin-key",
            "adm1n",
            "start",
            "Workflow",
            "--input",
            "\"x\"",
            "--id",
            "keyed",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "started keyed");
    // From the environment, as `duro serve` reads it.
    let output = Command::new(duro_binary())
        .arg("--host")
        .arg(format!("http://{}", host.address))
        .args(["status", "keyed"])
        .env("DURO_ADMIN_KEY", "adm1n")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The author's loop on a fresh app: `duro new`, `duro build`, `duro serve`,
/// then a request to its HTTP function runs its orchestration and activity.
#[test]
fn duro_new_builds_and_serves_an_app() {
    let dir = tempfile::tempdir().unwrap();
    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
    let created = Command::new(duro_binary())
        .current_dir(dir.path())
        .args(["new", "hello", "--sdk"])
        .arg(&sdk)
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let app = dir.path().join("hello");
    let again = refusal(
        Command::new(duro_binary())
            .current_dir(dir.path())
            .args(["new", "hello"]),
    );
    assert!(again.contains("exists already"), "{again}");

    // A target dir of its own, kept between runs: the app's dependencies
    // compile once per machine.
    let built = Command::new(duro_binary())
        .current_dir(&app)
        .arg("build")
        .env(
            "CARGO_TARGET_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("duro-new-target"),
        )
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    assert!(app.join("components/hello_orchestrations.wasm").exists());

    let host = Host::start_in(&app, std::path::Path::new("duro.toml"), ".duro/duro.db");
    let started = host.get("/api/hello/world");
    assert_eq!(started.status, 202, "{}", started.body);
    let id = started.json()["id"].as_str().unwrap().to_string();
    let done = host.poll(
        &format!("/runtime/webhooks/durabletask/instances/{id}"),
        |r| r.status == 200,
    );
    assert_eq!(done.json()["output"], "hello world", "{}", done.body);
}
