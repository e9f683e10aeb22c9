//! HTTP triggers: `wasi:http/incoming-handler` components, instantiated per
//! request, with the durable client as their one duro import.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Store, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::engine::{Engine, budget_ticks, guest_limits};
use crate::model::{InstanceQuery, RuntimeStatus, canonical_json};
use crate::runtime::{Runtime, RuntimeError};

mod bindings {
    wasmtime::component::bindgen!({
        world: "trigger",
        path: "../../guest-sdk/wit",
        imports: {
            "duro:workflow/client": async,
            "duro:workflow/schedules": async,
            "duro:workflow/entities": async,
        },
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:random": wasmtime_wasi::p2::bindings::random,
            "wasi:cli": wasmtime_wasi::p2::bindings::cli,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        },
        require_store_data_send: true,
    });
}

use bindings::duro::workflow::client as wit;
use bindings::duro::workflow::entities as entities_wit;

/// Header naming the function a request is for.
pub const FUNCTION_HEADER: &str = "duro-function";
/// Header carrying every route parameter, names as the route spells them,
/// as an `application/x-www-form-urlencoded` list (any value fits).
pub const PARAMS_HEADER: &str = "duro-params";
/// Prefix of the headers that carry route parameters one by one, for
/// guests built with SDKs older than [`PARAMS_HEADER`] (names lower-cased,
/// values that are not valid header values left out).
pub const PARAM_PREFIX: &str = "duro-param-";

/// Serves HTTP functions from trigger components.
pub struct Triggers {
    engine: Engine,
    linker: Linker<TriggerState>,
    pres: Mutex<HashMap<String, ProxyPre<TriggerState>>>,
    runtime: Arc<Runtime>,
    budget: Duration,
}

impl Triggers {
    /// Triggers whose durable client acts on `runtime`.
    pub fn new(engine: Engine, runtime: Arc<Runtime>, budget: Duration) -> anyhow::Result<Self> {
        let mut linker = Linker::new(engine.wasmtime());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        bindings::duro::workflow::schedules::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        bindings::duro::workflow::entities::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        wit::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        wasmtime_wasi_config::add_to_linker(&mut linker, |s: &mut TriggerState| {
            wasmtime_wasi_config::WasiConfig::from(&s.config)
        })
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(Triggers {
            engine,
            linker,
            pres: Mutex::default(),
            runtime,
            budget,
        })
    }

    /// Forget the prepared components whose digest `keep` does not hold.
    pub fn retain(&self, keep: &std::collections::HashSet<String>) {
        (self.pres.lock().expect("pre cache poisoned")).retain(|digest, _| keep.contains(digest));
    }

    /// The engine the triggers' components are compiled by.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Check that a component is an HTTP trigger, and keep it ready.
    pub fn prepare(&self, digest: &str, component: &Component) -> anyhow::Result<()> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .and_then(ProxyPre::new)
            .map_err(|e| {
                anyhow::anyhow!(
                    "it is not an HTTP trigger (a wasi:http/incoming-handler component \
                     importing at most duro:workflow/client): {e:?}"
                )
            })?;
        self.pres
            .lock()
            .expect("pre cache poisoned")
            .insert(digest.to_string(), pre);
        Ok(())
    }

    /// Run `function` of the prepared component `digest` on a request.
    pub async fn handle(
        &self,
        digest: &str,
        function: &str,
        params: &[(String, String)],
        variables: &[(String, String)],
        mut request: hyper::Request<axum::body::Body>,
        trace: Option<crate::trace::TraceContext>,
    ) -> anyhow::Result<hyper::Response<HyperOutgoingBody>> {
        let pre = self
            .pres
            .lock()
            .expect("pre cache poisoned")
            .get(digest)
            .cloned()
            .context("trigger component not prepared")?;
        let headers = request.headers_mut();
        headers.insert(FUNCTION_HEADER, function.parse()?);
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        for (name, value) in params {
            let legacy =
                hyper::header::HeaderName::from_bytes(format!("{PARAM_PREFIX}{name}").as_bytes());
            if let (Ok(legacy), Ok(value)) = (legacy, hyper::header::HeaderValue::from_str(value)) {
                headers.insert(legacy, value);
            }
        }
        headers.insert(PARAMS_HEADER, encoded.parse()?);
        let state = TriggerState {
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            hooks: DenyOutbound,
            table: ResourceTable::new(),
            limits: guest_limits(),
            runtime: self.runtime.clone(),
            trace,
            config: variables.iter().cloned().collect(),
        };
        let mut store = Store::new(self.engine.wasmtime(), state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(budget_ticks(self.budget));
        let request = request.map(|body| {
            http_body_util::BodyExt::map_err(body, |_| {
                wasmtime_wasi_http::Error::from(ErrorCode::HttpProtocolError)
            })
        });
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut task = AbortOnDrop(Some(tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        })));
        match receiver.await {
            Ok(Ok(response)) => {
                // The guest goes on streaming the body of its response.
                task.0.take();
                Ok(response)
            }
            Ok(Err(code)) => anyhow::bail!("the trigger answered with an error: {code:?}"),
            Err(_) => match task.0.take().expect("task still held").await {
                Ok(Ok(())) => anyhow::bail!("the trigger returned without a response"),
                Ok(Err(trap)) => {
                    self.engine.count_trap(&trap, "http");
                    anyhow::bail!("the trigger trapped: {trap:?}")
                }
                Err(e) => anyhow::bail!("the trigger task failed: {e}"),
            },
        }
    }
}

/// The task running a guest, stopped (its store dropped) if the call is
/// given up before the guest answered, e.g. at the caller's wall-clock
/// deadline.
struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Triggers may not make outbound HTTP requests (no manifest grants it yet).
struct DenyOutbound;

impl WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Store data of one trigger invocation.
pub struct TriggerState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: DenyOutbound,
    table: ResourceTable,
    limits: StoreLimits,
    runtime: Arc<Runtime>,
    /// The request's trace: instances the call starts join it.
    trace: Option<crate::trace::TraceContext>,
    /// The variables this function may read.
    config: wasmtime_wasi_config::WasiConfigVariables,
}

impl WasiView for TriggerState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for TriggerState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

fn client_error(e: RuntimeError) -> wit::ClientError {
    if let RuntimeError::Store(store) = &e {
        // The driver's or SQL's words are for the operator's log, not for
        // a guest that may pass them on to whoever called it.
        tracing::warn!("durable client: {store}");
        let what = if store.is_retriable() {
            "the store is unavailable; try again"
        } else {
            "the store failed (the host's log has the cause)"
        };
        return wit::ClientError::Internal(what.into());
    }
    let message = e.to_string();
    match e {
        RuntimeError::NotFound(_) => wit::ClientError::NotFound(message),
        RuntimeError::AlreadyExists(_) => wit::ClientError::AlreadyExists(message),
        RuntimeError::Busy(_) | RuntimeError::ScheduleBusy(_) => {
            wit::ClientError::Internal(message)
        }
        RuntimeError::InvalidInstanceId { .. } => wit::ClientError::InvalidArgument(message),
        RuntimeError::Finished { .. } => wit::ClientError::Finished(message),
        RuntimeError::NotFinished { .. } => wit::ClientError::InvalidArgument(message),
        RuntimeError::UnknownOrchestration(_) => wit::ClientError::UnknownOrchestration(message),
        RuntimeError::TooLarge(_)
        | RuntimeError::InvalidEntityId(_)
        | RuntimeError::UnknownEntity(_)
        | RuntimeError::EntityInstance(_)
        | RuntimeError::InvalidSchedule(_)
        | RuntimeError::ScheduleFromManifest(_) => wit::ClientError::InvalidArgument(message),
        RuntimeError::NoSchedule(_) => wit::ClientError::NotFound(message),
        RuntimeError::ScheduleExists(_) => wit::ClientError::AlreadyExists(message),
        // Trying again later may help: the instance takes its messages.
        RuntimeError::InboxFull(_) => wit::ClientError::Internal(message),
        _ => wit::ClientError::Internal(message),
    }
}

fn wit_status(s: RuntimeStatus) -> wit::RuntimeStatus {
    match s {
        RuntimeStatus::Pending => wit::RuntimeStatus::Pending,
        RuntimeStatus::Running => wit::RuntimeStatus::Running,
        RuntimeStatus::Completed => wit::RuntimeStatus::Completed,
        RuntimeStatus::Failed => wit::RuntimeStatus::Failed,
        RuntimeStatus::Terminated => wit::RuntimeStatus::Terminated,
        RuntimeStatus::Suspended => wit::RuntimeStatus::Suspended,
        RuntimeStatus::ContinuedAsNew => wit::RuntimeStatus::ContinuedAsNew,
    }
}

fn model_status(s: wit::RuntimeStatus) -> RuntimeStatus {
    RuntimeStatus::ALL
        .into_iter()
        .find(|m| wit_status(*m) == s)
        .expect("every WIT status has a model status")
}

fn wit_instance(i: crate::model::Instance) -> wit::InstanceStatus {
    wit::InstanceStatus {
        instance_id: i.id,
        name: i.name,
        runtime_status: wit_status(i.status),
        input: i.input,
        output: i.output,
        custom_status: i.custom_status,
        created_time: i.created_at,
        last_updated_time: i.updated_at,
    }
}

fn parse_json(text: &str, what: &str) -> Result<serde_json::Value, wit::ClientError> {
    serde_json::from_str(text)
        .map_err(|e| wit::ClientError::InvalidArgument(format!("{what} is not JSON: {e}")))
}

impl bindings::duro::workflow::types::Host for TriggerState {}

impl wit::Host for TriggerState {
    async fn start_new(
        &mut self,
        name: String,
        instance_id: Option<String>,
        input: String,
    ) -> Result<String, wit::ClientError> {
        let input = parse_json(&input, "the input")?;
        self.runtime
            .start_new_traced(&name, instance_id, &input, self.trace)
            .await
            .map_err(client_error)
    }

    async fn get_status(
        &mut self,
        instance_id: String,
    ) -> Result<Option<wit::InstanceStatus>, wit::ClientError> {
        let instance = self
            .runtime
            .status(&instance_id)
            .await
            .map_err(client_error)?;
        Ok(instance.map(wit_instance))
    }

    async fn list_instances(
        &mut self,
        query: wit::InstanceQuery,
    ) -> Result<wit::InstancePage, wit::ClientError> {
        self.query_instances(wit::InstanceFilter {
            created_from: query.created_from,
            created_to: query.created_to,
            runtime_status: query.runtime_status,
            name: query.name,
            instance_id_prefix: query.instance_id_prefix,
            input: None,
            newest_first: false,
            page_size: query.page_size,
            continuation: query.continuation,
        })
        .await
    }

    async fn query_instances(
        &mut self,
        filter: wit::InstanceFilter,
    ) -> Result<wit::InstancePage, wit::ClientError> {
        let after = match &filter.continuation {
            Some(token) => Some(crate::runtime::decode_continuation(token).ok_or_else(|| {
                wit::ClientError::InvalidArgument(format!("continuation {token:?} is not valid"))
            })?),
            None => None,
        };
        let input = match &filter.input {
            Some(text) => Some(canonical_json(&parse_json(text, "the input filter")?)),
            None => None,
        };
        let limit = filter.page_size.unwrap_or(100).clamp(1, 1000) as usize;
        let (instances, continuation) = self
            .runtime
            .list_page(InstanceQuery {
                created_from: filter.created_from,
                created_to: filter.created_to,
                statuses: filter
                    .runtime_status
                    .into_iter()
                    .map(model_status)
                    .collect(),
                name: filter.name,
                id_prefix: filter.instance_id_prefix,
                input,
                limit,
                after,
                newest_first: filter.newest_first,
                skip_input: false,
                entities: false,
            })
            .await
            .map_err(client_error)?;
        Ok(wit::InstancePage {
            instances: instances.into_iter().map(wit_instance).collect(),
            continuation,
        })
    }

    async fn raise_event(
        &mut self,
        instance_id: String,
        event_name: String,
        payload: String,
    ) -> Result<(), wit::ClientError> {
        let payload = parse_json(&payload, "the event payload")?;
        self.runtime
            .raise_event(&instance_id, &event_name, &payload)
            .await
            .map_err(client_error)
    }

    async fn terminate(
        &mut self,
        instance_id: String,
        reason: Option<String>,
    ) -> Result<(), wit::ClientError> {
        self.runtime
            .terminate(&instance_id, reason)
            .await
            .map_err(client_error)
    }

    async fn suspend(
        &mut self,
        instance_id: String,
        reason: Option<String>,
    ) -> Result<(), wit::ClientError> {
        self.runtime
            .suspend(&instance_id, reason)
            .await
            .map_err(client_error)
    }

    async fn resume(
        &mut self,
        instance_id: String,
        reason: Option<String>,
    ) -> Result<(), wit::ClientError> {
        self.runtime
            .resume(&instance_id, reason)
            .await
            .map_err(client_error)
    }

    async fn purge(&mut self, instance_id: String) -> Result<bool, wit::ClientError> {
        self.runtime.purge(&instance_id).await.map_err(client_error)
    }
}

impl TriggerState {
    /// Signal an entity for the guest, to run no earlier than `at`.
    async fn signal(
        &mut self,
        name: String,
        key: String,
        operation: String,
        input: String,
        at: Option<crate::model::Millis>,
    ) -> Result<(), wit::ClientError> {
        let id = Runtime::entity_id(&name, &key).map_err(client_error)?;
        let input: serde_json::Value = serde_json::from_str(&input).map_err(|e| {
            wit::ClientError::InvalidArgument(format!("the input is not JSON: {e}"))
        })?;
        self.runtime
            .signal_entity(&id, &operation, &input, at)
            .await
            .map_err(client_error)
    }
}

impl bindings::duro::workflow::entities::Host for TriggerState {
    async fn signal_entity(
        &mut self,
        name: String,
        key: String,
        operation: String,
        input: String,
    ) -> Result<(), wit::ClientError> {
        self.signal(name, key, operation, input, None).await
    }

    async fn signal_entity_at(
        &mut self,
        name: String,
        key: String,
        operation: String,
        input: String,
        at: u64,
    ) -> Result<(), wit::ClientError> {
        let at = at.min(crate::replay::LATEST_TIMER_MS);
        self.signal(name, key, operation, input, Some(at)).await
    }

    async fn read_entity_state(
        &mut self,
        name: String,
        key: String,
    ) -> Result<Option<String>, wit::ClientError> {
        let id = Runtime::entity_id(&name, &key).map_err(client_error)?;
        let entity = self.runtime.entity(&id).await.map_err(client_error)?;
        Ok(entity.and_then(|e| e.state))
    }

    async fn list_entities(
        &mut self,
        name: Option<String>,
        key_prefix: Option<String>,
        page_size: Option<u32>,
        continuation: Option<String>,
    ) -> Result<entities_wit::EntityPage, wit::ClientError> {
        if let Some(name) = &name {
            Runtime::entity_id(name, "k").map_err(client_error)?;
        }
        let limit = page_size.unwrap_or(100).clamp(1, 1000) as usize;
        let (found, continuation) = self
            .runtime
            .list_entities(name.as_deref(), key_prefix.as_deref(), continuation, limit)
            .await
            .map_err(client_error)?;
        Ok(entities_wit::EntityPage {
            entities: found
                .into_iter()
                .filter(|e| e.state.is_some())
                .map(|e| entities_wit::EntityStatus {
                    name: e.id.name,
                    key: e.id.key,
                    state: e.state,
                    locked_by: e.locked_by,
                    queued: e.queued as u32,
                    last_operation_time: e.last_operation_at,
                })
                .collect(),
            continuation,
        })
    }
}

impl bindings::duro::workflow::schedules::Host for TriggerState {
    async fn list_schedules(&mut self) -> Result<Vec<String>, wit::ClientError> {
        let rows = self.runtime.schedules().await.map_err(client_error)?;
        Ok(rows
            .iter()
            .map(|row| crate::schedule::to_json(row).to_string())
            .collect())
    }

    async fn get_schedule(&mut self, name: String) -> Result<Option<String>, wit::ClientError> {
        match self.runtime.schedule(&name).await {
            Ok(row) => Ok(Some(crate::schedule::to_json(&row).to_string())),
            Err(RuntimeError::NoSchedule(_)) => Ok(None),
            Err(e) => Err(client_error(e)),
        }
    }

    async fn create_schedule(&mut self, definition: String) -> Result<String, wit::ClientError> {
        let spec = serde_json::from_str(&definition).map_err(|e| {
            wit::ClientError::InvalidArgument(format!("the definition is not a schedule: {e}"))
        })?;
        let row = self
            .runtime
            .create_schedule(spec)
            .await
            .map_err(client_error)?;
        Ok(crate::schedule::to_json(&row).to_string())
    }

    async fn delete_schedule(&mut self, name: String) -> Result<(), wit::ClientError> {
        self.runtime
            .delete_schedule(&name)
            .await
            .map_err(client_error)
    }

    async fn pause_schedule(
        &mut self,
        name: String,
        reason: Option<String>,
    ) -> Result<(), wit::ClientError> {
        self.runtime
            .pause_schedule(&name, true, reason, false)
            .await
            .map(drop)
            .map_err(client_error)
    }

    async fn resume_schedule(
        &mut self,
        name: String,
        reason: Option<String>,
        catch_up: bool,
    ) -> Result<(), wit::ClientError> {
        self.runtime
            .pause_schedule(&name, false, reason, catch_up)
            .await
            .map(drop)
            .map_err(client_error)
    }

    async fn trigger_schedule(
        &mut self,
        name: String,
        reason: Option<String>,
    ) -> Result<Option<String>, wit::ClientError> {
        let triggered = self
            .runtime
            .trigger_schedule(&name, reason)
            .await
            .map_err(client_error)?;
        Ok(triggered.instance)
    }
}
