//! `duro new` and `duro build`: a new app's crates from templates (an
//! orchestration, an activity, an HTTP function, a manifest), and an app's
//! guests built for wasm32-wasip2 and placed where its manifest expects them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Where this duro's guest SDK was when it was built.
fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-sdk")
}

/// Create the app `name` in the directory `name`, its guest crates depending
/// on the SDK at `sdk` (default: the SDK of the checkout duro was built
/// from).
pub fn new_app(name: &str, sdk: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "`{name}` is not a usable app name: lower-case letters, digits, - and _, starting with a letter"
        );
    }
    let root = PathBuf::from(name);
    if root.exists() {
        bail!("{} exists already", root.display());
    }
    let sdk = sdk.unwrap_or_else(default_sdk);
    let sdk = std::fs::canonicalize(&sdk).with_context(|| {
        format!(
            "the duro guest SDK is not at {}: pass --sdk PATH (a duro checkout's guest-sdk folder)",
            sdk.display()
        )
    })?;
    let crate_name = name.replace('_', "-");
    let file_stem = name.replace('-', "_");
    let fill = |text: &str| {
        text.replace("{crate}", &crate_name)
            .replace("{stem}", &file_stem)
            .replace("{sdk}", &sdk.display().to_string())
    };
    let files: &[(&str, &str)] = &[
        ("Cargo.toml", WORKSPACE),
        (".cargo/config.toml", CARGO_CONFIG),
        (".gitignore", "/target\n/components\n/.duro\n"),
        ("duro.toml", MANIFEST),
        ("orchestrations/Cargo.toml", ORCHESTRATIONS_TOML),
        ("orchestrations/src/lib.rs", ORCHESTRATIONS_RS),
        ("activities/Cargo.toml", ACTIVITIES_TOML),
        ("activities/src/lib.rs", ACTIVITIES_RS),
        ("http/Cargo.toml", HTTP_TOML),
        ("http/src/lib.rs", HTTP_RS),
    ];
    for (path, template) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in a folder"))
            .with_context(|| format!("creating {}", path.display()))?;
        std::fs::write(&path, fill(template))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(root)
}

/// Build the guests of the app whose manifest is `manifest` (`cargo build
/// --release --target wasm32-wasip2` in its folder) and copy each component
/// the manifest names from the build's output to where it names it.
pub fn build_app(manifest: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("cannot read the manifest {}", manifest.display()))?;
    let parsed: crate::manifest::Manifest = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("manifest {}: {e}", manifest.display()))?;
    let dir = manifest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(dir)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .status()
        .context("running cargo (is Rust installed?)")?;
    if !status.success() {
        bail!(
            "cargo build failed in {} (is the target installed? rustup target add wasm32-wasip2)",
            dir.display()
        );
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"))
        .join("wasm32-wasip2/release");
    let components = parsed
        .orchestration
        .iter()
        .map(|o| &o.component)
        .chain(parsed.activity.iter().map(|a| &a.component))
        .chain(parsed.http.iter().map(|h| &h.component));
    let mut placed: Vec<PathBuf> = Vec::new();
    for component in components {
        let destination = dir.join(component);
        if placed.contains(&destination) {
            continue;
        }
        let file = component
            .file_name()
            .with_context(|| format!("component {} has no file name", component.display()))?;
        let built = target.join(file);
        if !built.exists() {
            bail!(
                "the manifest names {}, but the build made no {} (its crate's name, with _ for -, must match)",
                component.display(),
                built.display()
            );
        }
        if let Some(parent) = destination.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&built, &destination)
            .with_context(|| format!("copying {} to {}", built.display(), destination.display()))?;
        placed.push(destination);
    }
    Ok(placed)
}

const WORKSPACE: &str = r#"# A duro app: orchestrations, activities and HTTP functions, each a
# wasm component. `duro build` builds them into components/; `duro serve`
# serves them as duro.toml says.
[workspace]
members = ["orchestrations", "activities", "http"]
resolver = "3"
"#;

const CARGO_CONFIG: &str = r#"# duro instantiates a fresh guest per call and resets what it touched:
# a small stack keeps that cheap.
[target.wasm32-wasip2]
rustflags = ["-C", "link-arg=-zstack-size=131072"]
"#;

const MANIFEST: &str = r#"# Values the host supplies: DURO_VAR_GREETING, a --variables file, or
# --var greeting=...; `secret = true` keeps one out of logs and histories.
[variables]
greeting = { default = "hello" }

[[orchestration]]
name = "Hello"
component = "components/{stem}_orchestrations.wasm"

[[activity]]
name = "Greet"
component = "components/{stem}_activities.wasm"
variables = ["greeting"]

[[http]]
name = "Hello"
route = "/api/hello/{name}"
component = "components/{stem}_http.wasm"
"#;

const ORCHESTRATIONS_TOML: &str = r#"[package]
name = "{crate}-orchestrations"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
duro-sdk = { path = "{sdk}" }
"#;

const ORCHESTRATIONS_RS: &str = r#"//! Orchestrations: deterministic code, replayed from its history. Do the
//! work in activities.

use duro_sdk::{OrchestrationContext, Result};

async fn hello(ctx: OrchestrationContext) -> Result<String> {
    let name: String = ctx.input()?;
    ctx.call_activity("Greet", &name).await
}

duro_sdk::export_orchestrations! {
    "Hello" => hello,
}
"#;

const ACTIVITIES_TOML: &str = r#"[package]
name = "{crate}-activities"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
duro-sdk = { path = "{sdk}" }
"#;

const ACTIVITIES_RS: &str = r#"//! Activities: the work. They run at least once per call: keep them
//! idempotent.

/// Greets with the `greeting` variable (duro.toml's `[variables]`).
fn greet(name: String) -> duro_sdk::Result<String> {
    let greeting = duro_sdk::variable("greeting")
        .ok_or_else(|| duro_sdk::Error::msg("the greeting variable is not set"))?;
    Ok(format!("{greeting} {name}"))
}

duro_sdk::export_activities! {
    "Greet" => greet,
}
"#;

const HTTP_TOML: &str = r#"[package]
name = "{crate}-http"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
duro-http = { path = "{sdk}/http" }
serde_json = "1"
"#;

const HTTP_RS: &str = r#"//! HTTP functions: `GET /api/hello/{name}` starts a `Hello` instance.

use duro_http::{DurableClient, Request, Response};
use serde_json::json;

fn hello(req: &Request, client: &DurableClient) -> Response {
    let name = req.param("name").unwrap_or_default();
    match client.start_new("Hello", None, &name) {
        Ok(id) => Response::json(202, &json!({ "id": id })),
        Err(e) => Response::error(&e),
    }
}

duro_http::export_http_functions! {
    "Hello" => hello,
}
"#;
