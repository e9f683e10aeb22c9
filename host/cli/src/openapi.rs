//! The management API's OpenAPI 3.1 document, generated (utoipa) from the
//! handlers' annotations and the shapes below, served at
//! `/runtime/webhooks/durabletask/openapi.json`.
//!
//! The shapes are the JSON the handlers write with `json!`; the test suite
//! checks real responses against this document, so the two cannot drift.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};

/// An instance's status, as Durable Functions' status query answers it.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceStatus {
    /// The orchestration.
    pub name: String,
    /// The instance id.
    pub instance_id: String,
    /// Where it stands.
    pub runtime_status: RuntimeStatus,
    /// Its input (omitted with `showInput=false`; listings show it only
    /// with `showInput=true`).
    #[schema(required = false)]
    pub input: Value,
    /// What the orchestration last set with `set_custom_status`.
    pub custom_status: Value,
    /// Its output once completed; the error once failed.
    pub output: Value,
    /// When it was created (RFC 3339, milliseconds, UTC).
    #[schema(format = DateTime)]
    pub created_time: String,
    /// When it last changed.
    #[schema(format = DateTime)]
    pub last_updated_time: String,
    /// Its history (with `showHistory=true`), oldest first.
    #[schema(required = false)]
    pub history_events: Vec<HistoryEvent>,
    /// The instance that started it, for a sub-orchestration.
    #[schema(required = false)]
    pub parent_instance_id: String,
    /// The schedule and tick that started it, if a schedule did.
    #[schema(required = false)]
    pub scheduled_by: ScheduledBy,
}

/// An entity as the entity listing answers it.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entity {
    /// Its name and key.
    pub entity_id: EntityIdBody,
    /// When its last operation ran.
    pub last_operation_time: String,
    /// Whether it has state.
    pub exists: bool,
    /// The orchestration instance holding its lock, if one does.
    pub locked_by: Option<String>,
    /// Operations and lock requests waiting for the lock.
    pub queued: u64,
    /// Operations run so far.
    pub operations: u64,
    /// Its state (with fetchState).
    #[schema(required = false)]
    pub state: Option<Value>,
    /// What waits for its lock, in order (with fetchState): `kind`
    /// (`operation` or `lock`), `operation`, `from` (the sending
    /// orchestration instance).
    #[schema(required = false)]
    pub queue: Option<Vec<Value>>,
}

/// An entity's id.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntityIdBody {
    /// The name, lowercase.
    pub name: String,
    /// The key.
    pub key: String,
}

/// What cleaning entity storage did.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntityClean {
    /// Entities without state, lock or queue, deleted.
    pub empty_entities_removed: u64,
    /// Locks whose orchestration had ended, released.
    pub orphaned_locks_released: u64,
}

/// A schedule as the schedule routes answer it.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Schedule {
    /// Its name.
    pub name: String,
    /// `manifest` (changed by deploys) or `api` (made at run time).
    pub origin: String,
    /// The definition: name, cron, timezone, orchestration, input,
    /// overlap, catchUp, catchUpWindowMs, jitterMs, startAt, endAt, paused.
    pub definition: Value,
    /// Paused: no tick fires.
    pub paused: bool,
    /// Why it was paused.
    pub pause_reason: Option<String>,
    /// The next five fire times (none while paused or once ended).
    pub next_fire_times: Vec<String>,
    /// The next tick not yet looked at (kept while paused).
    pub next_tick: Option<String>,
    /// A tick waiting for the last run to end (`buffer_one`).
    pub buffered_tick: Option<String>,
    /// The instance it started last.
    pub last_instance_id: Option<String>,
    /// Totals since it was created.
    pub counts: ScheduleCounts,
    /// Recent runs and decisions, newest first.
    pub recent_runs: Vec<ScheduleRun>,
    /// What a trigger did (only in a trigger's answer).
    #[schema(required = false)]
    pub triggered: Option<Triggered>,
}

/// A schedule's totals.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleCounts {
    /// Instances started.
    pub started: u64,
    /// Ticks skipped by the overlap policy.
    pub skipped: u64,
    /// Ticks missed (the catch-up policy).
    pub missed: u64,
}

/// One of a schedule's recent runs.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleRun {
    /// The tick (or the time of a client's action).
    pub tick: String,
    /// When it was decided.
    pub at: String,
    /// started, skipped, buffered, terminated_previous, missed, paused or resumed.
    pub decision: String,
    /// The instance it started.
    pub instance_id: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

/// What a trigger did.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Triggered {
    /// What became of the tick.
    pub decision: String,
    /// The instance it started.
    pub instance_id: Option<String>,
}

/// A deleted schedule.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeletedSchedule {
    /// Its name.
    pub name: String,
    /// Always true.
    pub deleted: bool,
}

/// The schedule and tick that started an instance.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduledBy {
    /// The schedule's name.
    pub schedule: String,
    /// The tick (RFC 3339, milliseconds, UTC).
    #[schema(format = DateTime)]
    pub tick: String,
}

/// An instance's runtime status: its schema lists the names of
/// `duro_core`'s statuses (`RuntimeStatus::ALL`), so a status added there
/// is documented without a second list to keep.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct RuntimeStatus(pub crate::model::RuntimeStatus);

impl utoipa::PartialSchema for RuntimeStatus {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("An instance's runtime status."))
            .enum_values(Some(crate::model::RuntimeStatus::ALL.map(|s| s.as_str())))
            .into()
    }
}

impl ToSchema for RuntimeStatus {}

/// One history event: its type and time, and the fields of that type.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEvent {
    /// `ExecutionStarted`, `TaskScheduled`, `EventRaised`, `TimerFired`,
    /// `ExecutionCompleted`, ...
    pub event_type: String,
    /// When it was recorded.
    #[schema(format = DateTime)]
    pub timestamp: String,
}

/// The links of a started instance (`CreateCheckStatusResponse`).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckStatusLinks {
    /// The instance id.
    pub id: String,
    /// `GET` its status.
    pub status_query_get_uri: String,
    /// `POST` an event (replace `{eventName}`).
    pub send_event_post_uri: String,
    /// `POST` to terminate it.
    pub terminate_post_uri: String,
    /// `POST` to suspend it.
    pub suspend_post_uri: String,
    /// `POST` to resume it.
    pub resume_post_uri: String,
    /// `DELETE` to purge it.
    pub purge_history_delete_uri: String,
}

/// Every error: the same message under the key duro reads and the two
/// keys the Durable Functions clients read.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// The same, for Durable Functions clients.
    #[serde(rename = "Message")]
    pub message: String,
    /// The same, for Durable Functions clients.
    #[serde(rename = "ExceptionMessage")]
    pub exception_message: String,
}

/// What an instance waits on.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PendingWork {
    /// Scheduled calls not completed yet: each with `task`, `kind`
    /// (`createTimer`, `callActivity`, `callSubOrchestration`) and that
    /// call's fields (`fireTime` for a timer).
    pub tasks: Vec<PendingTask>,
    /// Messages waiting for the next episode, oldest first; each has a
    /// `type` (`EventRaised`, `TimerFired`, `ActivityDone`, `Terminate`, ...).
    pub inbox: Vec<InboxMessage>,
}

/// A scheduled call not completed yet.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct PendingTask {
    /// The call's sequence number.
    pub task: u32,
    /// What it is.
    pub kind: String,
}

/// A message waiting in an inbox.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct InboxMessage {
    /// What it is.
    #[serde(rename = "type")]
    pub kind: String,
}

/// How many instances a purge deleted.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PurgeResult {
    /// At least one (none is a 404).
    pub instances_deleted: u64,
}

/// The component an upgraded instance runs on from now on.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradeResult {
    /// The instance.
    pub instance_id: String,
    /// `sha256:<hex>` of its component.
    pub component: String,
}

/// An app uploaded for a deploy.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppUpload {
    /// The manifest's text (`duro.toml`).
    pub manifest: String,
    /// Each component the manifest names, by its path as written there,
    /// base64-encoded.
    pub components: std::collections::HashMap<String, String>,
}

/// What a deploy found and did.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeployReport {
    /// True when nothing was changed.
    pub dry_run: bool,
    /// Every orchestration of the app.
    pub orchestrations: Vec<DeployedOrchestration>,
    /// Orchestrations served before and not in this app.
    pub removed: Vec<String>,
    /// Every in-flight instance of a changed orchestration, replayed.
    pub instances: Vec<CheckedInstance>,
}

/// One orchestration of a deploy.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployedOrchestration {
    /// Its name.
    pub name: String,
    /// The component new instances started on before (null: new).
    pub from: Option<String>,
    /// The component they start on after.
    pub to: String,
    /// Whether its code changed.
    pub changed: bool,
}

/// One in-flight instance replayed against the new version.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckedInstance {
    /// The instance.
    pub instance_id: String,
    /// Its orchestration.
    pub orchestration: String,
    /// The component it ran on.
    pub from: String,
    /// The component it was replayed against.
    pub to: String,
    /// Whether its whole history replayed.
    pub compatible: bool,
    /// Where it did not (null when compatible).
    pub divergence: Option<Divergence>,
    /// Whether the deploy moved it.
    pub moved: bool,
}

/// The first history event a new version does not reproduce.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Divergence {
    /// Its position in the history (0 is `ExecutionStarted`).
    pub event: u64,
    /// The scheduling call involved, if any.
    pub task: Option<u32>,
    /// What the history recorded.
    pub expected: String,
    /// What the new code did instead.
    pub actual: String,
}

/// One version of an orchestration.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrchestrationVersion {
    /// The orchestration.
    pub orchestration: String,
    /// `sha256:<hex>` of the component.
    pub component: String,
    /// Whether new instances start on it.
    pub current: bool,
    /// In-flight instances running on it.
    pub in_flight: u64,
}

macro_rules! control_operation {
    ($name:ident, $verb:literal, $summary:literal, $ok:literal) => {
        #[utoipa::path(
            post,
            path = concat!("/runtime/webhooks/durabletask/instances/{id}/", $verb),
            summary = $summary,
            params(
                ("id" = String, Path, description = "Instance id"),
                ("reason" = Option<String>, Query, description = "Recorded with the operation"),
            ),
            responses(
                (status = 202, description = $ok),
                (status = 404, description = "No such instance", body = ErrorBody),
                (status = 410, description = "The instance has finished", body = ErrorBody),
            ),
            tag = "instances",
        )]
        #[allow(dead_code)]
        fn $name() {}
    };
}

control_operation!(
    terminate,
    "terminate",
    "Terminate an instance",
    "Terminated (durably recorded)"
);
control_operation!(
    suspend,
    "suspend",
    "Suspend an instance",
    "Suspended; events raised meanwhile wait"
);
control_operation!(resume, "resume", "Resume a suspended instance", "Resumed");

#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/instances/{id}/restart",
    summary = "Start an instance again with its original input",
    params(
        ("id" = String, Path, description = "Instance id"),
        ("restartWithNewInstanceId" = Option<bool>, Query, description = "Under a new id (default true) or its own, which must have finished"),
    ),
    responses(
        (status = 202, description = "Started", body = CheckStatusLinks),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Same id, still live", body = ErrorBody),
    ),
    tag = "instances",
)]
#[allow(dead_code)]
fn restart() {}

#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/instances/{id}/upgrade",
    summary = "Move a live instance to its orchestration's deployed version, after replaying its history on it",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "Moved (or already there)", body = UpgradeResult),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Its history diverges on the new version; nothing changed", body = ErrorBody),
        (status = 410, description = "The instance has finished", body = ErrorBody),
    ),
    tag = "instances",
)]
#[allow(dead_code)]
fn upgrade() {}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "duro management API",
        description = "Durable Functions' HTTP API for orchestration instances, with duro's extensions (name and input filters, long polls, upgrades, deploys).",
    ),
    paths(
        crate::api::start,
        crate::api::start_with_id,
        crate::api::status,
        crate::api::list,
        crate::api::raise_event,
        crate::api::pending,
        terminate,
        suspend,
        resume,
        restart,
        upgrade,
        crate::api::purge_one,
        crate::api::purge_many,
        crate::deploy::deploy,
        crate::deploy::versions,
        crate::api::metrics,
        crate::api::openapi,
        crate::schedules_api::list,
        crate::schedules_api::create,
        crate::schedules_api::show,
        crate::schedules_api::update,
        crate::schedules_api::remove,
        crate::schedules_api::act,
        crate::entities_api::signal,
        crate::entities_api::read,
        crate::entities_api::list_all,
        crate::entities_api::list_named,
        crate::entities_api::clean,
    ),
    modifiers(&Gate),
    tags(
        (name = "instances", description = "Start, query and drive orchestration instances"),
        (name = "deploys", description = "Hot deploys checked by replay"),
        (name = "schedules", description = "Orchestrations started on a cron"),
        (name = "entities", description = "Durable entities: signal, read, list, clean"),
        (name = "host", description = "The host itself"),
    ),
)]
pub struct ManagementApi;

/// What the management plane's gate (`plane.rs`) adds to every route: the
/// admin key as a bearer token, and the answers of a refusal.
struct Gate;

impl utoipa::Modify for Gate {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
        };
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.description = Some(
            "The admin key (`--admin-key`); also accepted as the x-duro-admin-key or \
             x-functions-key header or the code query parameter. Without an admin key \
             the host serves this API on loopback only."
                .into(),
        );
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("adminKey", SecurityScheme::Http(bearer));
        openapi.security = Some(vec![SecurityRequirement::new(
            "adminKey",
            Vec::<String>::new(),
        )]);
        let refusals = [
            (
                "401",
                "No admin key, or a wrong one (a function key never opens this API)",
            ),
            (
                "403",
                "A Host that is not one of the host's names, or a cross-site Origin on a write",
            ),
            (
                "413",
                "A body, input, payload or reason past its limit (named in the message)",
            ),
            ("415", "A write whose body is not application/json"),
        ];
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                for (code, description) in refusals {
                    let response = ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorBody")))
                                .build(),
                        )
                        .build();
                    operation
                        .responses
                        .responses
                        .entry(code.to_string())
                        .or_insert(RefOr::T(response));
                }
            }
        }
    }
}

/// The document as JSON.
pub fn document() -> Value {
    serde_json::to_value(ManagementApi::openapi()).expect("the OpenAPI document is JSON")
}
