//! Durable entities, the guest half: [`EntityId`], the [`EntityContext`] an
//! operation gets (typed state, signals, orchestration starts), the glue
//! `export_entities!` calls, and the [`CriticalSection`] guard an
//! orchestration holds while it has entities locked.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::entity_bindings::duro::workflow::entity_context as host;
use crate::entity_bindings::duro::workflow::types::LogLevel;
use crate::entity_bindings::exports::duro::workflow::operations::OperationResult;
use crate::error::{Error, Result};

/// The id of an entity: its name (compared in lowercase, as in Durable
/// Functions) and its key.
///
/// ```
/// let id = duro_sdk::EntityId::new("Counter", "apples");
/// assert_eq!(id.to_string(), "@counter@apples");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId {
    /// The entity name, lowercase.
    pub name: String,
    /// The key.
    pub key: String,
}

impl EntityId {
    /// The entity `name` (any case) with `key`.
    ///
    /// ```
    /// let account = duro_sdk::EntityId::new("Account", "42");
    /// assert_eq!((account.name.as_str(), account.key.as_str()), ("account", "42"));
    /// ```
    pub fn new(name: &str, key: &str) -> Self {
        EntityId {
            name: name.to_lowercase(),
            key: key.to_string(),
        }
    }
}

impl std::fmt::Display for EntityId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "@{}@{}", self.name, self.key)
    }
}

/// What an entity operation gets: its entity's id and state, and the one
/// way it has to affect others (signals and orchestration starts, sent
/// only if the operation succeeds).
///
/// The state is typed: `S` is read from the stored JSON before the
/// operation (or `S::default()` when the entity has none) and written back
/// after it if the operation changed it (or the entity had one).
///
/// ```no_run
/// use duro_sdk::{EntityContext, Result};
/// fn add(ctx: &mut EntityContext<i64>, amount: i64) -> Result<i64> {
///     *ctx.state_mut() += amount;
///     Ok(*ctx.state())
/// }
/// duro_sdk::export_entities! {
///     "Counter": i64 => { "add" => add },
/// }
/// # fn main() {}
/// ```
pub struct EntityContext<S> {
    id: EntityId,
    state: S,
    existed: bool,
    written: bool,
    deleted: bool,
}

impl<S: Default> EntityContext<S> {
    /// The entity this operation runs on.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut duro_sdk::EntityContext<i64>) {
    /// let key = ctx.entity_id().key.clone();
    /// ctx.log(&format!("operating on {key}"));
    /// # }
    /// ```
    pub fn entity_id(&self) -> &EntityId {
        &self.id
    }

    /// The state (its default if the entity has none).
    ///
    /// ```no_run
    /// # fn f(ctx: &mut duro_sdk::EntityContext<i64>) -> i64 {
    /// *ctx.state()
    /// # }
    /// ```
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The state, to change it: it is stored once the operation succeeds.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut duro_sdk::EntityContext<i64>) {
    /// *ctx.state_mut() += 1;
    /// # }
    /// ```
    pub fn state_mut(&mut self) -> &mut S {
        self.written = true;
        self.deleted = false;
        &mut self.state
    }

    /// Replace the state.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut duro_sdk::EntityContext<i64>) {
    /// ctx.set_state(0);
    /// # }
    /// ```
    pub fn set_state(&mut self, state: S) {
        *self.state_mut() = state;
    }

    /// Whether the entity has a state (it had one, or this operation set
    /// one).
    ///
    /// ```no_run
    /// # fn f(ctx: &mut duro_sdk::EntityContext<i64>) {
    /// if !ctx.has_state() { ctx.set_state(100); }
    /// # }
    /// ```
    pub fn has_state(&self) -> bool {
        (self.existed || self.written) && !self.deleted
    }

    /// Delete the state: the entity reads as not existing afterwards (and
    /// may be cleaned up once nothing else holds it).
    ///
    /// ```no_run
    /// # fn f(ctx: &mut duro_sdk::EntityContext<i64>) {
    /// ctx.delete_state();
    /// # }
    /// ```
    pub fn delete_state(&mut self) {
        self.state = S::default();
        self.deleted = true;
    }
}

impl<S> EntityContext<S> {
    /// Send `operation` with `input` to another entity (or this one), one
    /// way, once this operation commits.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut duro_sdk::EntityContext<i64>) {
    /// ctx.signal_entity(&duro_sdk::EntityId::new("Audit", "counters"), "record", &1);
    /// # }
    /// ```
    pub fn signal_entity<I: Serialize>(&self, entity: &EntityId, operation: &str, input: &I) {
        let json = serde_json::to_string(input).unwrap_or_else(|_| "null".into());
        host::signal_entity(&entity.name, &entity.key, operation, &json);
    }

    /// [`signal_entity`](Self::signal_entity), run by the target no
    /// earlier than `at`.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut duro_sdk::EntityContext<i64>) {
    /// let later = ctx.current_time() + std::time::Duration::from_secs(60);
    /// ctx.signal_entity_at(&duro_sdk::EntityId::new("Counter", "x"), later, "add", &1);
    /// # }
    /// ```
    pub fn signal_entity_at<I: Serialize>(
        &self,
        entity: &EntityId,
        at: SystemTime,
        operation: &str,
        input: &I,
    ) {
        let json = serde_json::to_string(input).unwrap_or_else(|_| "null".into());
        let at = crate::context::epoch_millis(at);
        host::signal_entity_at(&entity.name, &entity.key, operation, &json, at);
    }

    /// Start the orchestration `name` with `input` once this operation
    /// commits, under `instance_id` (a fresh id when none is given): the
    /// id. An id a live instance holds starts nothing.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut duro_sdk::EntityContext<i64>) -> duro_sdk::Result<()> {
    /// let id = ctx.start_new_orchestration("Notify", None, &"limit reached")?;
    /// ctx.log(&format!("started {id}"));
    /// # Ok(()) }
    /// ```
    pub fn start_new_orchestration<I: Serialize>(
        &self,
        name: &str,
        instance_id: Option<&str>,
        input: &I,
    ) -> Result<String> {
        let json = serde_json::to_string(input)
            .map_err(|e| Error::msg(format!("the input cannot be serialized: {e}")))?;
        host::start_orchestration(name, instance_id, &json).map_err(Error::msg)
    }

    /// The time of the episode running the operation.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut duro_sdk::EntityContext<i64>) {
    /// let _now = ctx.current_time();
    /// # }
    /// ```
    pub fn current_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(host::current_time())
    }

    /// Log at info level.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut duro_sdk::EntityContext<i64>) {
    /// ctx.log("added");
    /// # }
    /// ```
    pub fn log(&self, message: &str) {
        host::log(LogLevel::Info, message);
    }
}

/// Run one operation function: the state read, the input decoded, the
/// function called, the output and the state after encoded.
pub fn run_operation<S, I, O>(
    id: EntityId,
    state: Option<String>,
    input: &str,
    operation: impl FnOnce(&mut EntityContext<S>, I) -> Result<O>,
) -> std::result::Result<OperationResult, String>
where
    S: Serialize + DeserializeOwned + Default,
    I: DeserializeOwned,
    O: Serialize,
{
    let existed = state.is_some();
    let state: S = match &state {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| format!("the state of {id} ({json}) does not fit: {e}"))?,
        None => S::default(),
    };
    let input: I = serde_json::from_str(input)
        .map_err(|e| format!("the operation input {input} does not fit: {e}"))?;
    let mut ctx = EntityContext {
        id,
        state,
        existed,
        written: false,
        deleted: false,
    };
    let output = operation(&mut ctx, input).map_err(|e| e.to_string())?;
    let output = serde_json::to_string(&output)
        .map_err(|e| format!("the operation output cannot be serialized: {e}"))?;
    let state = if ctx.has_state() {
        Some(
            serde_json::to_string(&ctx.state)
                .map_err(|e| format!("the state cannot be serialized: {e}"))?,
        )
    } else {
        None
    };
    Ok(OperationResult { state, output })
}

/// The built-in `delete` operation (for entities that define none): the
/// state goes.
pub fn delete_operation() -> OperationResult {
    OperationResult {
        state: None,
        output: "null".into(),
    }
}

/// The locks an orchestration holds on entities, from
/// [`OrchestrationContext::lock_entities`](crate::OrchestrationContext::lock_entities):
/// while it lives, only this orchestration's operations run on them;
/// dropping it (or ending the orchestration) releases them.
///
/// ```no_run
/// # async fn f(ctx: duro_sdk::OrchestrationContext) -> duro_sdk::Result<()> {
/// use duro_sdk::EntityId;
/// let (from, to) = (EntityId::new("Account", "a"), EntityId::new("Account", "b"));
/// let section = ctx.lock_entities(&[from.clone(), to.clone()]).await?;
/// let balance: i64 = ctx.call_entity(&from, "get", &()).await?;
/// if balance >= 10 {
///     ctx.call_entity::<_, ()>(&from, "add", &-10).await?;
///     ctx.call_entity::<_, ()>(&to, "add", &10).await?;
/// }
/// drop(section);
/// # Ok(()) }
/// ```
#[must_use = "the locks are released when the critical section is dropped"]
pub struct CriticalSection {
    _private: (),
}

impl CriticalSection {
    pub(crate) fn new() -> Self {
        CriticalSection { _private: () }
    }
}

impl Drop for CriticalSection {
    fn drop(&mut self) {
        crate::context::unlock_entities();
    }
}
