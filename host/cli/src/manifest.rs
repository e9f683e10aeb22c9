//! The app manifest (`duro.toml`): as written (serde, unknown keys refused),
//! then resolved (paths made absolute, files read, routes checked) before
//! anything binds a socket.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// The manifest as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Orchestrations, each in a component.
    #[serde(default)]
    pub orchestration: Vec<OrchestrationEntry>,
    /// HTTP functions, each on a route.
    #[serde(default)]
    pub http: Vec<HttpEntry>,
    /// Activities, each in a component.
    #[serde(default)]
    pub activity: Vec<ActivityEntry>,
    /// Variables the host supplies values for, by name.
    #[serde(default)]
    pub variables: std::collections::BTreeMap<String, VariableDecl>,
    /// Orchestrations started on a cron.
    #[serde(default)]
    pub schedule: Vec<crate::schedule::ScheduleSpec>,
    /// Durable entities, each in a component.
    #[serde(default)]
    pub entity: Vec<EntityEntry>,
}

/// `[[entity]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityEntry {
    /// The entity name clients and orchestrations address it by (any case:
    /// entity names are compared in lowercase, as in Durable Functions).
    pub name: String,
    /// Component file, relative to the manifest.
    pub component: PathBuf,
}

/// One entry of `[variables]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    /// Its value when the host supplies none.
    pub default: Option<String>,
    /// The host must supply a value (or `duro serve` refuses to start).
    #[serde(default)]
    pub required: bool,
    /// Its value is a secret: never logged, redacted from activity results.
    #[serde(default)]
    pub secret: bool,
}

/// `[[activity]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityEntry {
    /// The name orchestrations call it by.
    pub name: String,
    /// Component file, relative to the manifest.
    pub component: PathBuf,
    /// How long one attempt may run (default: the host's activity budget).
    pub timeout_ms: Option<u64>,
    /// The most linear memory one attempt may use, in MiB (1 to 256; default
    /// 256). Growing past it traps the attempt, a failed attempt.
    pub max_memory_mb: Option<u64>,
    /// Where it may send HTTP requests: `http://host:port`, `*` for any host
    /// or port (default: nowhere).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// The variables it may read.
    #[serde(default)]
    pub variables: Vec<String>,
}

/// An activity ready to register.
#[derive(Debug, Clone)]
pub struct ResolvedActivity {
    /// Its name.
    pub name: String,
    /// Component path.
    pub component: PathBuf,
    /// Its limits and allowlist (and, once bound, its variables).
    pub options: crate::activity::ActivityOptions,
    /// The variables it may read.
    pub variable_names: Vec<String>,
}

/// `[[orchestration]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrchestrationEntry {
    /// The name clients start it by.
    pub name: String,
    /// Component file, relative to the manifest.
    pub component: PathBuf,
    /// Where its `ctx.call_http` requests may go: `http://host:port`, `*`
    /// for any host or port (default: nowhere).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

/// Who may call an HTTP function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthLevel {
    /// Anyone.
    Anonymous,
    /// Callers presenting the host's function key (`x-functions-key` header
    /// or `code` query parameter).
    Function,
}

/// `[[http]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpEntry {
    /// The function name, passed to the component.
    pub name: String,
    /// Route template, e.g. `/api/start/{input}`.
    pub route: String,
    /// Methods served (default: GET).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Who may call it (default: anonymous).
    #[serde(default = "default_auth")]
    pub auth: AuthLevel,
    /// Component file, relative to the manifest.
    pub component: PathBuf,
    /// The variables it may read.
    #[serde(default)]
    pub variables: Vec<String>,
}

fn default_methods() -> Vec<String> {
    vec!["GET".into()]
}

fn default_auth() -> AuthLevel {
    AuthLevel::Anonymous
}

/// A manifest with every path resolved and every component read.
#[derive(Debug)]
pub struct ResolvedApp {
    /// Orchestration name → component bytes' path.
    pub orchestrations: Vec<(String, PathBuf)>,
    /// Orchestration name → where its `ctx.call_http` requests may go.
    pub http_allowed: Vec<(String, Vec<crate::activity::AllowedHost>)>,
    /// HTTP functions.
    pub http: Vec<ResolvedHttp>,
    /// Activities.
    pub activities: Vec<ResolvedActivity>,
    /// Component path → bytes.
    pub files: HashMap<PathBuf, Vec<u8>>,
    /// `[variables]`, as declared.
    pub variables: std::collections::BTreeMap<String, VariableDecl>,
    /// `[[schedule]]`, checked.
    pub schedules: Vec<crate::schedule::ScheduleSpec>,
    /// Entity name (lowercase) → component path.
    pub entities: Vec<(String, PathBuf)>,
}

impl ResolvedApp {
    /// Whether a route needs the function key (`auth = "function"`).
    pub fn needs_function_key(&self) -> bool {
        self.http.iter().any(|h| h.auth == AuthLevel::Function)
    }

    /// Each component with the names of the entries (orchestrations, or
    /// activities) that `entries` pairs with it, in manifest order.
    pub fn by_component<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a PathBuf)>,
    ) -> Vec<(PathBuf, Vec<String>)> {
        let mut grouped: Vec<(PathBuf, Vec<String>)> = Vec::new();
        for (name, path) in entries {
            match grouped.iter_mut().find(|(p, _)| p == path) {
                Some((_, names)) => names.push(name.to_string()),
                None => grouped.push((path.clone(), vec![name.to_string()])),
            }
        }
        grouped
    }
}

/// An HTTP function ready to serve.
#[derive(Debug, Clone)]
pub struct ResolvedHttp {
    /// Function name.
    pub name: String,
    /// Route template.
    pub route: String,
    /// Upper-case methods.
    pub methods: Vec<String>,
    /// Who may call it.
    pub auth: AuthLevel,
    /// Component path.
    pub component: PathBuf,
    /// The variables it may read.
    pub variable_names: Vec<String>,
    /// Their values, once bound ([`ResolvedApp::bind_variables`]).
    pub variables: BoundVariables,
}

/// Variables with their values; shown (`Debug`) by name only, as values
/// may be secrets.
#[derive(Clone, Default)]
pub struct BoundVariables(pub Vec<(String, String)>);

impl std::fmt::Debug for BoundVariables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// An entry's `allowed_hosts`, parsed; the error names the manifest, the
/// entry and the host.
fn allowed_hosts(
    path: &Path,
    what: &str,
    hosts: &[String],
) -> anyhow::Result<Vec<crate::activity::AllowedHost>> {
    hosts
        .iter()
        .map(|host| host.parse())
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| anyhow::anyhow!("manifest {}: {what}: allowed_hosts: {e}", path.display()))
}

/// Check a route template: `/` segments of literals or `{name}` parameters.
fn check_route(route: &str) -> Result<String, String> {
    if !route.starts_with('/') {
        return Err("a route must start with `/`".into());
    }
    if route.starts_with("/runtime/") {
        return Err("routes under /runtime/ belong to the management API".into());
    }
    let mut shape = String::new();
    let mut seen = Vec::new();
    for segment in route.split('/').skip(1) {
        shape.push('/');
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("`{{{name}}}` is not a valid parameter name"));
            }
            if seen.contains(&name) {
                return Err(format!("parameter `{name}` appears twice"));
            }
            seen.push(name);
            shape.push_str("{}");
        } else if segment.contains(['{', '}', '*', '?', '#']) {
            return Err(format!(
                "segment `{segment}` is neither a literal nor `{{name}}`"
            ));
        } else {
            shape.push_str(segment);
        }
    }
    Ok(shape)
}

/// Check that the routes can be served side by side, with the router the
/// server uses (matchit, as axum does): two routes of one shape whose
/// parameters are named differently, or a parameter where another route
/// has a different one, cannot. What validates here always serves.
fn check_routes_together(path: &Path, http: &[ResolvedHttp]) -> anyhow::Result<()> {
    let mut router = matchit::Router::new();
    let mut owners: HashMap<&str, &str> = HashMap::new();
    for function in http {
        if owners.contains_key(function.route.as_str()) {
            // Same route, other methods: served by one entry.
            continue;
        }
        if let Err(e) = router.insert(function.route.as_str(), ()) {
            let other = match &e {
                matchit::InsertError::Conflict { with } => owners
                    .get(with.as_str())
                    .map(|name| format!(" (`{name}`'s `{with}`)"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            bail!(
                "manifest {}: http function `{}`: route `{}` cannot be served beside the \
                 routes before it{other}: {e}; routes that share a shape must name their \
                 parameters alike",
                path.display(),
                function.name,
                function.route
            );
        }
        owners.insert(&function.route, &function.name);
    }
    Ok(())
}

/// Read, parse and resolve the manifest at `path`, reading its components
/// from paths relative to its folder.
pub fn load(path: &Path) -> anyhow::Result<ResolvedApp> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the manifest {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    resolve(path, &text, |component| {
        let full = base.join(component);
        let bytes = std::fs::read(&full)
            .with_context(|| format!("cannot read component {}", full.display()))?;
        Ok((full, bytes))
    })
}

/// The component paths a manifest names, as written in it (what `duro
/// deploy` uploads beside the manifest's text).
pub fn component_paths(path: &Path, text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let manifest: Manifest =
        toml::from_str(text).map_err(|e| anyhow::anyhow!("manifest {}: {e}", path.display()))?;
    let mut paths: Vec<PathBuf> = (manifest.orchestration.iter().map(|o| o.component.clone()))
        .chain(manifest.http.iter().map(|h| h.component.clone()))
        .chain(manifest.activity.iter().map(|a| a.component.clone()))
        .chain(manifest.entity.iter().map(|e| e.component.clone()))
        .collect();
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// Parse and resolve a manifest's `text` (`path` names it in errors);
/// `read` turns a component path as written into the key it is kept under
/// and its bytes.
pub fn resolve(
    path: &Path,
    text: &str,
    mut read_component: impl FnMut(&Path) -> anyhow::Result<(PathBuf, Vec<u8>)>,
) -> anyhow::Result<ResolvedApp> {
    let manifest: Manifest =
        toml::from_str(text).map_err(|e| anyhow::anyhow!("manifest {}: {e}", path.display()))?;
    let mut files = HashMap::new();
    let mut read = |component: &Path, what: &str| -> anyhow::Result<PathBuf> {
        let (key, bytes) = read_component(component)
            .map_err(|e| anyhow::anyhow!("manifest {}: {what}: {e:#}", path.display()))?;
        files.entry(key.clone()).or_insert(bytes);
        Ok(key)
    };
    let mut orchestrations = Vec::new();
    let mut http_allowed = Vec::new();
    for entry in &manifest.orchestration {
        let what = format!("orchestration `{}`", entry.name);
        if entry.name.trim().is_empty() {
            bail!(
                "manifest {}: an orchestration has an empty name",
                path.display()
            );
        }
        if orchestrations.iter().any(|(n, _)| *n == entry.name) {
            bail!("manifest {}: {what} is declared twice", path.display());
        }
        orchestrations.push((entry.name.clone(), read(&entry.component, &what)?));
        let allowed = allowed_hosts(path, &what, &entry.allowed_hosts)?;
        http_allowed.push((entry.name.clone(), allowed));
    }
    let mut http: Vec<ResolvedHttp> = Vec::new();
    let mut shapes: Vec<(String, String, String)> = Vec::new();
    for entry in &manifest.http {
        let what = format!("http function `{}`", entry.name);
        let shape = check_route(&entry.route).map_err(|e| {
            anyhow::anyhow!(
                "manifest {}: {what}: route `{}`: {e}",
                path.display(),
                entry.route
            )
        })?;
        if entry.methods.is_empty() {
            bail!("manifest {}: {what}: `methods` is empty", path.display());
        }
        let mut methods = Vec::new();
        for method in &entry.methods {
            let upper = method.to_ascii_uppercase();
            if !METHODS.contains(&upper.as_str()) {
                bail!(
                    "manifest {}: {what}: unknown method `{method}` (expected one of {})",
                    path.display(),
                    METHODS.join(", ")
                );
            }
            if let Some((_, _, other)) = shapes.iter().find(|(s, m, _)| *s == shape && *m == upper)
            {
                bail!(
                    "manifest {}: {what}: route {} {} is already served by `{other}`",
                    path.display(),
                    upper,
                    entry.route
                );
            }
            shapes.push((shape.clone(), upper.clone(), entry.name.clone()));
            methods.push(upper);
        }
        check_variable_names(path, &what, &entry.variables, &manifest.variables)?;
        http.push(ResolvedHttp {
            name: entry.name.clone(),
            route: entry.route.clone(),
            methods,
            auth: entry.auth,
            component: read(&entry.component, &what)?,
            variable_names: entry.variables.clone(),
            variables: BoundVariables::default(),
        });
    }
    check_routes_together(path, &http)?;
    let mut activities: Vec<ResolvedActivity> = Vec::new();
    for entry in &manifest.activity {
        let what = format!("activity `{}`", entry.name);
        if entry.name.trim().is_empty() {
            bail!("manifest {}: an activity has an empty name", path.display());
        }
        if activities.iter().any(|a| a.name == entry.name) {
            bail!("manifest {}: {what} is declared twice", path.display());
        }
        if entry.timeout_ms == Some(0) {
            bail!(
                "manifest {}: {what}: `timeout_ms` must be positive",
                path.display()
            );
        }
        let max_memory_mb = crate::engine::MAX_GUEST_MEMORY as u64 >> 20;
        if entry
            .max_memory_mb
            .is_some_and(|mb| mb == 0 || mb > max_memory_mb)
        {
            bail!(
                "manifest {}: {what}: `max_memory_mb` must be from 1 to {max_memory_mb}",
                path.display()
            );
        }
        let allowed_hosts = allowed_hosts(path, &what, &entry.allowed_hosts)?;
        check_variable_names(path, &what, &entry.variables, &manifest.variables)?;
        activities.push(ResolvedActivity {
            name: entry.name.clone(),
            component: read(&entry.component, &what)?,
            options: crate::activity::ActivityOptions {
                timeout: entry.timeout_ms.map(std::time::Duration::from_millis),
                max_memory: entry.max_memory_mb.map(|mb| (mb as usize) << 20),
                allowed_hosts,
                variables: Vec::new(),
                secrets: Vec::new(),
            },
            variable_names: entry.variables.clone(),
        });
    }
    for (name, declared) in &manifest.variables {
        if !valid_variable_name(name) {
            bail!(
                "manifest {}: variable `{name}`: a variable name is lower-case letters, digits \
                 and `_`, starting with a letter",
                path.display()
            );
        }
        if declared.required && declared.default.is_some() {
            bail!(
                "manifest {}: variable `{name}` is required and has a default: one or the other",
                path.display()
            );
        }
    }
    for (i, schedule) in manifest.schedule.iter().enumerate() {
        schedule
            .compile()
            .map_err(|e| anyhow::anyhow!("manifest {}: {e}", path.display()))?;
        let what = format!("schedule `{}`", schedule.name);
        if manifest.schedule[..i]
            .iter()
            .any(|s| s.name == schedule.name)
        {
            bail!("manifest {}: {what} is declared twice", path.display());
        }
        if !orchestrations
            .iter()
            .any(|(n, _)| *n == schedule.orchestration)
        {
            bail!(
                "manifest {}: {what}: no orchestration named `{}` is declared",
                path.display(),
                schedule.orchestration
            );
        }
    }
    let mut entities: Vec<(String, PathBuf)> = Vec::new();
    for entry in &manifest.entity {
        let what = format!("entity `{}`", entry.name);
        // A valid name with any key; the key here only completes the id.
        if let Err(problem) = duro_core::entity::EntityId::new(&entry.name, "k") {
            bail!("manifest {}: {what}: {problem}", path.display());
        }
        let name = entry.name.to_lowercase();
        if entities.iter().any(|(n, _)| *n == name) {
            bail!(
                "manifest {}: {what} is declared twice (entity names ignore case)",
                path.display()
            );
        }
        entities.push((name, read(&entry.component, &what)?));
    }
    Ok(ResolvedApp {
        entities,
        orchestrations,
        http_allowed,
        http,
        activities,
        files,
        variables: manifest.variables,
        schedules: manifest.schedule,
    })
}

fn valid_variable_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// An entry's `variables` must be declared in `[variables]`.
fn check_variable_names(
    path: &Path,
    what: &str,
    names: &[String],
    declared: &std::collections::BTreeMap<String, VariableDecl>,
) -> anyhow::Result<()> {
    for name in names {
        if !declared.contains_key(name) {
            bail!(
                "manifest {}: {what}: variable `{name}` is not declared in [variables]",
                path.display()
            );
        }
    }
    Ok(())
}

impl ResolvedApp {
    /// Give every activity and HTTP function the values of the variables
    /// it may read, from `supplied` (the host's: environment, file, flags)
    /// or the declared defaults; a required variable without a value is an
    /// error naming it and how to set it.
    pub fn bind_variables(
        &mut self,
        supplied: &std::collections::HashMap<String, String>,
    ) -> anyhow::Result<()> {
        let mut values = std::collections::HashMap::new();
        for (name, declared) in &self.variables {
            match supplied.get(name).or(declared.default.as_ref()) {
                Some(value) => {
                    values.insert(name.clone(), (value.clone(), declared.secret));
                }
                None if declared.required => bail!(
                    "variable `{name}` is required and has no value: set DURO_VAR_{}, put it \
                     in a --variables file, or pass --var {name}=VALUE",
                    name.to_ascii_uppercase()
                ),
                None => {}
            }
        }
        let pick = |names: &[String]| -> Vec<(String, String, bool)> {
            names
                .iter()
                .filter_map(|name| {
                    values
                        .get(name)
                        .map(|(value, secret)| (name.clone(), value.clone(), *secret))
                })
                .collect()
        };
        for activity in &mut self.activities {
            let picked = pick(&activity.variable_names);
            activity.options.secrets = (picked.iter())
                .filter(|(_, _, secret)| *secret)
                .map(|(_, value, _)| value.clone())
                .collect();
            activity.options.variables = (picked.into_iter())
                .map(|(name, value, _)| (name, value))
                .collect();
        }
        for function in &mut self.http {
            function.variables = BoundVariables(
                (pick(&function.variable_names).into_iter())
                    .map(|(name, value, _)| (name, value))
                    .collect(),
            );
        }
        Ok(())
    }
}
