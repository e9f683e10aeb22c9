//! The `entity` world as the host binds it: an episode's operations run one
//! call each on one instance of the entity's component, in a deterministic
//! sandbox (the episode's clock, no network, no files), and each call's
//! signals and orchestration starts are collected for its commit.

use std::collections::HashMap;
use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use crate::engine::{CountedLimits, Engine, budget_ticks};
use crate::entity::{EntityId, Operation};
use crate::model::{Message, Millis, canonical_json_text, fresh_id};
use crate::replay::{HostTrouble, is_host_trouble};

mod bindings {
    wasmtime::component::bindgen!({
        world: "entity",
        path: "../../guest-sdk/wit",
        imports: { default: trappable },
    });
}

use bindings::duro::workflow::entity_context as ctx;
use bindings::duro::workflow::types::LogLevel;
use bindings::{Entity, EntityPre};

/// Runs entity operations from prepared components.
pub struct EntityHost {
    engine: Engine,
    linker: Linker<EntityState>,
    pres: crate::engine::Prepared<EntityPre<EntityState>>,
    budget: Duration,
}

/// An orchestration an operation asked to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The orchestration.
    pub name: String,
    /// Its component.
    pub component: String,
    /// Its instance id.
    pub id: String,
    /// Its input, canonical JSON.
    pub input: String,
}

/// What an operation sent: signals to entities (instance id, message) and
/// orchestrations to start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Signals, in order.
    pub signals: Vec<(String, Message)>,
    /// Starts, in order.
    pub starts: Vec<Start>,
}

/// How one operation ended: the state after and the output, or its error;
/// what it sent counts only if it succeeded.
pub type Ran = Result<(Option<String>, String), String>;

impl EntityHost {
    /// A host for entity components on `engine`; each operation may run
    /// for `budget`.
    pub fn new(engine: Engine, budget: Duration) -> anyhow::Result<Self> {
        let mut linker = Linker::new(engine.wasmtime());
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        crate::replay::sleep_on_the_episode_clock(&mut linker)?;
        Entity::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(EntityHost {
            engine,
            linker,
            pres: Default::default(),
            budget,
        })
    }

    /// Check that `component` is an entity component, and keep it ready.
    pub fn prepare(&self, digest: &str, component: &Component) -> anyhow::Result<()> {
        self.pre(digest, component).map(drop)
    }

    /// Forget the prepared components whose digest `keep` does not hold.
    pub fn retain(&self, keep: &std::collections::HashSet<String>) {
        self.pres.retain(keep);
    }

    fn pre(&self, digest: &str, component: &Component) -> anyhow::Result<EntityPre<EntityState>> {
        self.pres.get_or_prepare(digest, || {
            self.linker
                .instantiate_pre(component)
                .and_then(EntityPre::new)
                .map_err(|e| anyhow::anyhow!("component {digest} is not a duro entity: {e:?}"))
        })
    }

    /// A session that runs operations on `entity` at episode time `now`
    /// with the component `digest`; `orchestrations` names the components
    /// of the orchestrations an operation may start.
    pub fn session(
        &self,
        digest: &str,
        component: &Component,
        entity: EntityId,
        now: Millis,
        orchestrations: HashMap<String, String>,
    ) -> anyhow::Result<Session<'_>> {
        Ok(Session {
            host: self,
            pre: self.pre(digest, component)?,
            guest: None,
            entity,
            now,
            orchestrations,
        })
    }
}

/// Operations of one episode of one entity, on one instance (made on the
/// first, made again after a trap).
pub struct Session<'a> {
    host: &'a EntityHost,
    pre: EntityPre<EntityState>,
    guest: Option<(Store<EntityState>, Entity)>,
    entity: EntityId,
    now: Millis,
    orchestrations: HashMap<String, String>,
}

impl Session<'_> {
    /// Run `operation` on `state`: how it ended and what it sent. The
    /// host's own trouble (no room for an instance) is an error: the
    /// episode is retried.
    pub fn run(
        &mut self,
        operation: &Operation,
        state: Option<&String>,
    ) -> Result<(Ran, Effects), HostTrouble> {
        if self.guest.is_none() {
            let state = EntityState::new(self.now, self.orchestrations.clone());
            let mut store = Store::new(self.host.engine.wasmtime(), state);
            store.limiter(|s| &mut s.limits);
            store.epoch_deadline_trap();
            store.set_epoch_deadline(budget_ticks(self.host.budget));
            match self.pre.instantiate(&mut store) {
                Ok(guest) => self.guest = Some((store, guest)),
                Err(e) if is_host_trouble(&e) => {
                    return Err(HostTrouble(format!(
                        "the entity could not be instantiated: {e:#}"
                    )));
                }
                Err(e) => {
                    let error = format!("the entity could not be instantiated: {e:#}");
                    return Ok((Err(error), Effects::default()));
                }
            }
        }
        let (store, guest) = self.guest.as_mut().expect("instantiated above");
        store.set_epoch_deadline(budget_ticks(self.host.budget));
        store.data_mut().effects = Effects::default();
        let called = guest.duro_workflow_operations().call_run(
            &mut *store,
            &self.entity.name,
            &self.entity.key,
            &operation.name,
            &operation.input,
            state,
        );
        let effects = std::mem::take(&mut store.data_mut().effects);
        match called {
            Ok(Ok(result)) => Ok((Ok((result.state, result.output)), effects)),
            Ok(Err(error)) => Ok((Err(error), Effects::default())),
            Err(trap) => {
                self.host.engine.count_trap(&trap, "entity");
                // A trapped instance cannot be entered again.
                self.guest = None;
                let error = if crate::engine::trap_kind(&trap) == "deadline" {
                    format!(
                        "the operation ran for more than {:?} and was stopped",
                        self.host.budget
                    )
                } else {
                    format!("the operation trapped: {trap:?}")
                };
                Ok((Err(error), Effects::default()))
            }
        }
    }
}

/// The store data of an entity session.
pub struct EntityState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: CountedLimits,
    now: Millis,
    orchestrations: HashMap<String, String>,
    effects: Effects,
}

impl EntityState {
    fn new(now: Millis, orchestrations: HashMap<String, String>) -> Self {
        let wasi = WasiCtx::builder()
            .wall_clock(FixedClock(now))
            .monotonic_clock(FixedClock(now))
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        EntityState {
            wasi,
            table: ResourceTable::new(),
            limits: CountedLimits::default(),
            now,
            orchestrations,
            effects: Effects::default(),
        }
    }
}

impl WasiView for EntityState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The episode's time, as WASI's clocks read it inside an entity.
struct FixedClock(Millis);

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0.saturating_mul(1_000_000)
    }
}

impl EntityState {
    /// Keep a signal the operation sends (to run no earlier than `at`).
    fn signal(
        &mut self,
        name: String,
        key: String,
        operation: String,
        input: String,
        at: Option<Millis>,
    ) -> wasmtime::Result<()> {
        let entity = EntityId::new(&name, &key)
            .map_err(|e| wasmtime::Error::msg(format!("signal-entity: {e}")))?;
        if serde_json::from_str::<serde_json::Value>(&input).is_err() {
            return Err(wasmtime::Error::msg(format!(
                "signal-entity({name:?}, {key:?}, {operation:?}): the input {input:?} is not JSON"
            )));
        }
        self.effects.signals.push((
            entity.instance_id(),
            Message::EntityOperation {
                operation,
                input,
                caller: None,
                holder: None,
                due: at,
            },
        ));
        Ok(())
    }
}

impl bindings::duro::workflow::types::Host for EntityState {}

impl ctx::Host for EntityState {
    fn current_time(&mut self) -> wasmtime::Result<u64> {
        Ok(self.now)
    }

    fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        match level {
            LogLevel::Trace => tracing::trace!(target: "duro::guest", "{message}"),
            LogLevel::Debug => tracing::debug!(target: "duro::guest", "{message}"),
            LogLevel::Info => tracing::info!(target: "duro::guest", "{message}"),
            LogLevel::Warn => tracing::warn!(target: "duro::guest", "{message}"),
            LogLevel::Error => tracing::error!(target: "duro::guest", "{message}"),
        }
        Ok(())
    }

    fn signal_entity(
        &mut self,
        name: String,
        key: String,
        operation: String,
        input: String,
    ) -> wasmtime::Result<()> {
        self.signal(name, key, operation, input, None)
    }

    fn signal_entity_at(
        &mut self,
        name: String,
        key: String,
        operation: String,
        input: String,
        at: u64,
    ) -> wasmtime::Result<()> {
        let at = at.min(crate::replay::LATEST_TIMER_MS);
        self.signal(name, key, operation, input, Some(at))
    }

    fn start_orchestration(
        &mut self,
        name: String,
        instance_id: Option<String>,
        input: String,
    ) -> wasmtime::Result<Result<String, String>> {
        let Some(component) = self.orchestrations.get(&name).cloned() else {
            return Ok(Err(format!(
                "no orchestration named `{name}` is registered"
            )));
        };
        if serde_json::from_str::<serde_json::Value>(&input).is_err() {
            return Ok(Err(format!("the input {input:?} is not JSON")));
        }
        let id = instance_id.unwrap_or_else(fresh_id);
        if let Some(problem) = crate::model::instance_id_problem(&id) {
            return Ok(Err(format!("instance id {id:?} is not valid: {problem}")));
        }
        if crate::entity::is_entity(&id) {
            return Ok(Err(format!(
                "instance id {id:?} is not valid: ids that begin with `@` name entities"
            )));
        }
        self.effects.starts.push(Start {
            name,
            component,
            id: id.clone(),
            input: canonical_json_text(input),
        });
        Ok(Ok(id))
    }
}
