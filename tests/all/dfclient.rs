//! The real Durable Functions client drives duro unchanged: PyPI's
//! `azure-functions-durable`, installed into a virtualenv by this test as a
//! user would, runs `tests/dfclient/drive.py` against a real `duro serve`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::Host;

/// The admin key the host is started with and the client sends.
const KEY: &str = "df-admin-key";

/// The client version the test installs (the newest when this was written).
const CLIENT: &str = "azure-functions-durable==1.7.0";

/// A virtualenv with the client, made once per target directory.
fn venv() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dfclient-venv");
    let python = dir.join("bin/python");
    let marker = dir.join(format!("installed-{CLIENT}"));
    if marker.exists() {
        return python;
    }
    let made = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&dir)
        .status()
        .expect("python3 runs (the test installs the Durable Functions client with it)");
    assert!(made.success(), "python3 -m venv {} failed", dir.display());
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            CLIENT,
        ])
        .status()
        .unwrap();
    assert!(installed.success(), "pip install {CLIENT} failed");
    std::fs::write(&marker, "").unwrap();
    python
}

#[test]
fn the_durable_functions_python_client_drives_duro() {
    let python = venv();
    let dir = tempfile::tempdir().unwrap();
    // Behind an admin key, as a host reachable by others would be.
    let manifest = crate::entities::entity_manifest(dir.path());
    let host = Host::start_with(
        &manifest,
        &dir.path().join("duro.db"),
        &["--admin-key", KEY],
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("dfclient/drive.py");
    let output = Command::new(python)
        .arg(script)
        .arg(format!("http://{}", host.address))
        .arg(KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Durable Functions client failed against duro:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ok   signal_entity then read_entity_state"),
        "{stdout}"
    );
}
