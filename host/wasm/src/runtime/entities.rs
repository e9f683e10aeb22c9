//! Durable entities in the runtime: an entity's episode (its messages run
//! through `entity::process` on its component, one commit for the batch),
//! and the client operations on entities (register, signal, read, list,
//! clean).

use super::{Inner, Runtime, RuntimeError, RuntimeResult};
use crate::entity::{EntityId, EntityRecord, Operation};
use crate::entity_host::Effects;
use crate::model::{InboxEntry, Instance, InstanceQuery, Message, Millis};
use crate::replay::HostTrouble;
use crate::store::EpisodeCommit;

/// An entity as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityView {
    /// Its id.
    pub id: EntityId,
    /// Its state, as JSON (none: it has none).
    pub state: Option<String>,
    /// The orchestration instance holding its lock, if one does.
    pub locked_by: Option<String>,
    /// Operations and lock requests waiting for the lock.
    pub queued: usize,
    /// What waits, in order: (`operation` or `lock`, the operation's name,
    /// the orchestration instance that sent it, if one did).
    pub queue: Vec<(&'static str, Option<String>, Option<String>)>,
    /// Operations run so far.
    pub operations: u64,
    /// When the last one ran (its creation time before the first).
    pub last_operation_at: Millis,
}

impl EntityView {
    fn of(instance: &Instance) -> Option<Self> {
        let id = EntityId::parse(&instance.id)?;
        let record = EntityRecord::read(instance.output.as_deref());
        Some(EntityView {
            id,
            state: record.state,
            locked_by: record.lock.map(|holder| holder.instance),
            queued: record.queue.len(),
            queue: record
                .queue
                .iter()
                .map(|message| match message {
                    Message::EntityOperation {
                        operation,
                        caller,
                        holder,
                        ..
                    } => (
                        "operation",
                        Some(operation.clone()),
                        (caller.as_ref().map(|c| c.instance.clone()))
                            .or_else(|| holder.as_ref().map(|h| h.instance.clone())),
                    ),
                    Message::EntityLock { holder, .. } => {
                        ("lock", None, Some(holder.instance.clone()))
                    }
                    _ => ("other", None, None),
                })
                .collect(),
            operations: record.operations,
            last_operation_at: record.last_operation_at.max(instance.created_at),
        })
    }
}

/// Run an entity's episode: every message waiting (after those its record
/// deferred) one at a time on its component, each operation's state change
/// kept only if it succeeded; the record, the answers, the signals, the
/// lock requests passed on and the orchestrations started, in one commit.
pub(super) fn episode(
    inner: &Inner,
    mut instance: Instance,
    inbox: Vec<InboxEntry>,
    mut commit: EpisodeCommit,
) -> anyhow::Result<EpisodeCommit> {
    commit.consumed = inbox.iter().map(|entry| entry.id).collect();
    let Some(id) = EntityId::parse(&instance.id) else {
        // An id that names no entity: nothing can run its messages.
        return Ok(commit);
    };
    let now = inner.config.clock.now();
    let mut record = EntityRecord::read(instance.output.as_deref());
    let registered = || {
        (inner.entity_registry.read().expect("registry poisoned"))
            .get(&id.name)
            .cloned()
    };
    let mut digest = registered();
    if digest.is_none() && !*inner.activities_open.borrow() {
        // The app's components are still being registered (a restart):
        // its entity may be among them. Wait for them here rather than
        // back off (an episode thread waits only while the host starts).
        let mut open = inner.activities_open.subscribe();
        // The timeout's timer belongs to the runtime: enter it first.
        let _runtime = inner.handle.enter();
        let opened = matches!(
            inner.handle.block_on(tokio::time::timeout(
                std::time::Duration::from_secs(10),
                open.wait_for(|open| *open),
            )),
            Ok(Ok(_))
        );
        digest = registered();
        if digest.is_none() && !opened {
            anyhow::bail!("entity `{}` is not registered yet", id.name);
        }
    }
    let mut session = None;
    let mut trouble: Option<HostTrouble> = None;
    let mut signals: Vec<(String, Message)> = Vec::new();
    let mut starts = Vec::new();
    let limits = &inner.config.limits;
    let run = |state: &mut Option<String>, operation: &Operation| -> Result<String, String> {
        if trouble.is_some() {
            return Err("not run".into());
        }
        let Some(digest) = &digest else {
            return Err(format!("no entity named `{}` is registered", id.name));
        };
        if session.is_none() {
            let opened = open_session(inner, digest, &id, now);
            match opened {
                Ok(opened) => session = Some(opened),
                Err(e) => return Err(format!("entity `{}` cannot run: {e:#}", id.name)),
            }
        }
        let session = session.as_mut().expect("opened above");
        let (ran, effects) = match session.run(operation, state.as_ref()) {
            Ok(ran) => ran,
            Err(e) => {
                trouble = Some(e);
                return Err("not run".into());
            }
        };
        let (after, output) = ran?;
        // Everything the operation would store, each within the payload
        // limit, or the operation fails whole.
        let sent_inputs = effects
            .signals
            .iter()
            .filter_map(|(to, message)| match message {
                Message::EntityOperation { input, .. } => {
                    Some((format!("a signal to {to}"), input))
                }
                _ => None,
            });
        let start_inputs = (effects.starts.iter()).map(|start| {
            (
                format!("the input of orchestration `{}`", start.name),
                &start.input,
            )
        });
        let payloads = [("the operation's output".to_string(), &output)]
            .into_iter()
            .chain(after.iter().map(|a| ("the entity's state".to_string(), a)))
            .chain(sent_inputs)
            .chain(start_inputs);
        for (what, payload) in payloads {
            limits.check_payload(&what, payload)?;
        }
        *state = after;
        let Effects {
            signals: sent,
            starts: started,
        } = effects;
        signals.extend(sent);
        starts.extend(started.into_iter().map(|start| {
            let mut started = Instance::pending(
                start.id,
                start.name,
                start.input,
                start.component,
                now,
                None,
            );
            started.trace_parent = instance.trace_parent.clone();
            started
        }));
        Ok(output)
    };
    let messages: Vec<Message> = inbox.into_iter().map(|entry| entry.message).collect();
    let mut sent = Vec::new();
    let operations_before = record.operations;
    let processed = crate::entity::process(
        &mut record,
        messages,
        now,
        limits.entity_queue,
        run,
        &mut sent,
    );
    let dropped = processed.dropped;
    commit.new_timers = (processed.timers.into_iter())
        .map(|(task, fire_at)| crate::model::Timer {
            instance: instance.id.clone(),
            task,
            fire_at,
            execution: instance.execution_id.clone(),
        })
        .collect();
    if dropped > 0 {
        tracing::warn!(
            entity = %id,
            "{dropped} signals dropped: the entity is locked and its queue is full \
             (--max-entity-queue, --max-entity-queue-bytes)"
        );
    }
    if let Some(trouble) = trouble {
        return Err(trouble.into());
    }
    inner
        .metrics
        .entity_operations
        .inc_by(record.operations - operations_before);
    sent.extend(signals);
    commit.sent = sent;
    commit.started = starts;
    instance.output = Some(record.to_json());
    instance.updated_at = now;
    // The entity's version: one more per episode.
    instance.history_len = commit.expected.history_len + 1;
    commit.instance = instance;
    Ok(commit)
}

/// A session on the entity's component, compiled from the store if this
/// host has not compiled it yet.
fn open_session<'a>(
    inner: &'a Inner,
    digest: &str,
    id: &EntityId,
    now: Millis,
) -> anyhow::Result<crate::entity_host::Session<'a>> {
    let component = match inner.engine.cached(digest) {
        Some(component) => component,
        None => {
            let bytes = (inner.handle)
                .block_on(inner.store.component(digest))?
                .ok_or_else(|| anyhow::anyhow!("component {digest} is missing from the store"))?;
            inner.engine.component(digest, &bytes)?
        }
    };
    let orchestrations = inner.registry.read().expect("registry poisoned").clone();
    inner
        .entity_host
        .session(digest, &component, id.clone(), now, orchestrations)
}

impl Runtime {
    /// Store a component, check that it is an entity component, and make
    /// it the one that runs the operations of `entities` (names, any case).
    /// Returns its digest.
    pub async fn register_entities(
        &self,
        bytes: Vec<u8>,
        entities: &[&str],
    ) -> RuntimeResult<String> {
        let digest = self
            .store_component(bytes, |inner, digest, component| {
                inner.entity_host.prepare(digest, component)
            })
            .await?;
        let mut registry = self
            .inner
            .entity_registry
            .write()
            .expect("registry poisoned");
        for name in entities {
            registry.insert(name.to_lowercase(), digest.clone());
        }
        Ok(digest)
    }

    /// Forget the entities whose names `names` does not hold (an app
    /// deployed without them): their operations fail from now on, and
    /// clients' signals to them are refused.
    pub fn retain_entities(&self, names: &[&str]) {
        let keep: std::collections::HashSet<String> =
            names.iter().map(|name| name.to_lowercase()).collect();
        (self
            .inner
            .entity_registry
            .write()
            .expect("registry poisoned"))
        .retain(|name, _| keep.contains(name));
    }

    /// Compile `bytes` and check that it is an entity component, storing
    /// nothing.
    pub async fn check_entity_component(&self, bytes: Vec<u8>) -> RuntimeResult<()> {
        self.checked_component(bytes, |inner, digest, component| {
            inner.entity_host.prepare(digest, component)
        })
        .await
        .map(|_| ())
    }

    /// The id of entity `name` with `key`, or why it cannot be one.
    pub fn entity_id(name: &str, key: &str) -> RuntimeResult<EntityId> {
        EntityId::new(name, key).map_err(RuntimeError::InvalidEntityId)
    }

    /// Send `operation` with `input` to an entity, one way, to run no
    /// earlier than `at` if given: acknowledged once stored (the entity is
    /// created by its first message). The entity's name must be
    /// registered.
    pub async fn signal_entity(
        &self,
        id: &EntityId,
        operation: &str,
        input: &serde_json::Value,
        at: Option<Millis>,
    ) -> RuntimeResult<()> {
        let known = (self
            .inner
            .entity_registry
            .read()
            .expect("registry poisoned"))
        .contains_key(&id.name);
        if !known {
            return Err(RuntimeError::UnknownEntity(id.name.clone()));
        }
        if operation.is_empty() {
            return Err(RuntimeError::InvalidEntityId(
                "the operation name is empty".into(),
            ));
        }
        let input = input.to_string();
        let limits = &self.inner.config.limits;
        limits
            .check_payload(&format!("the input of operation `{operation}`"), &input)
            .and_then(|()| limits.check_payload("the operation name", operation))
            .map_err(RuntimeError::TooLarge)?;
        let message = Message::EntityOperation {
            operation: operation.to_string(),
            input,
            caller: None,
            holder: None,
            due: at,
        };
        self.send(&id.instance_id(), message).await
    }

    /// An entity as it stands, or none if it has never been sent anything
    /// (or was cleaned up).
    pub async fn entity(&self, id: &EntityId) -> RuntimeResult<Option<EntityView>> {
        let instance = self.inner.store.instance(&id.instance_id()).await?;
        Ok(instance.as_ref().and_then(EntityView::of))
    }

    /// One page of entities (of `name`, if given; whose key starts with
    /// `key_prefix`, if given) in id order, after `after` (an entity's
    /// instance id), and whether more follow.
    pub async fn list_entities(
        &self,
        name: Option<&str>,
        key_prefix: Option<&str>,
        after: Option<String>,
        limit: usize,
    ) -> RuntimeResult<(Vec<EntityView>, Option<String>)> {
        let prefix = match name {
            Some(name) => format!("@{}@{}", name.to_lowercase(), key_prefix.unwrap_or("")),
            None => "@".to_string(),
        };
        let limit = limit.clamp(1, 1000);
        let query = InstanceQuery {
            id_prefix: Some(prefix),
            limit: limit + 1,
            after: after.map(|id| (0, id)),
            entities: true,
            skip_input: true,
            ..Default::default()
        };
        let mut found = self.list(query).await?;
        let more = found.len() > limit;
        found.truncate(limit);
        let next = more.then(|| found.last().map(|i| i.id.clone())).flatten();
        Ok((found.iter().filter_map(EntityView::of).collect(), next))
    }

    /// Delete the entities that hold nothing (no state, no lock, nothing
    /// waiting) and release locks whose holder has ended or is gone.
    /// Returns (entities deleted, locks released).
    pub async fn clean_entities(&self) -> RuntimeResult<(usize, usize)> {
        let (mut deleted, mut released) = (0, 0);
        let mut query = InstanceQuery {
            id_prefix: Some("@".into()),
            limit: 500,
            entities: true,
            skip_input: true,
            ..Default::default()
        };
        loop {
            let page = self.list(query.clone()).await?;
            for instance in &page {
                let record = EntityRecord::read(instance.output.as_deref());
                if let Some(holder) = &record.lock {
                    let ended = match self.status(&holder.instance).await? {
                        None => true,
                        Some(orchestration) => {
                            orchestration.status.is_terminal()
                                || orchestration.execution_id != holder.execution
                        }
                    };
                    if ended {
                        self.release_orphaned_lock(&instance.id, holder.clone())
                            .await?;
                        released += 1;
                    }
                    continue;
                }
                if record.is_empty()
                    && (self.inner.store)
                        .purge_entity(&instance.id, instance.history_len)
                        .await?
                {
                    deleted += 1;
                }
            }
            match page.last() {
                Some(last) if page.len() == query.limit => {
                    query.after = Some((0, last.id.clone()));
                }
                _ => return Ok((deleted, released)),
            }
        }
    }

    /// Release the lock `holder` holds on entity `id`: an unlock from that
    /// holder, through the inbox like any other (a holder that no longer
    /// holds it changes nothing).
    async fn release_orphaned_lock(
        &self,
        id: &str,
        holder: crate::entity::LockHolder,
    ) -> RuntimeResult<()> {
        let now = self.inner.config.clock.now();
        self.inner
            .store
            .enqueue(id, &Message::EntityUnlock { holder }, now)
            .await?;
        self.inner.has_work(id);
        Ok(())
    }
}
