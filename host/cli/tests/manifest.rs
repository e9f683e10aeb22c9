//! `duro serve` refuses bad manifests before it listens, with a message that
//! names the problem. Each `tests/ui/NAME.toml` is a manifest and
//! `NAME.err` the expected error (regenerate with `DURO_BLESS=1`).

use std::path::Path;
use std::process::Command;

#[test]
fn bad_manifests_are_refused_with_their_problem_named() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let scratch = tempfile::tempdir().unwrap();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty());
    for manifest in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_duro"))
            .current_dir(&dir)
            .args(["serve", "--listen", "127.0.0.1:0", "--manifest"])
            .arg(manifest.file_name().unwrap())
            .arg("--database")
            .arg(scratch.path().join("duro.db"))
            .output()
            .unwrap();
        assert!(
            !output.status.success(),
            "{} was accepted",
            manifest.display()
        );
        assert!(output.stdout.is_empty(), "{} listened", manifest.display());
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let golden = manifest.with_extension("err");
        if std::env::var_os("DURO_BLESS").is_some() {
            std::fs::write(&golden, format!("{stderr}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} is missing (DURO_BLESS=1)", golden.display()));
        assert_eq!(stderr, expected.trim(), "{}", manifest.display());
    }
}
