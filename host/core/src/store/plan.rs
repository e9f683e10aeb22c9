//! What a commit means, decided once for every backend: an episode, an
//! instance's creation, a message, an activity's end, a purge become lists
//! of typed [`Write`]s, in order. A backend only says each write in its
//! dialect (SQL text, driver calls, locking) and batches them as it likes;
//! it never decides what an episode writes.
//!
//! ```
//! use duro_core::model::{HistoryEvent, Instance, RuntimeStatus};
//! use duro_core::store::plan::{Write, episode};
//! use duro_core::store::{EpisodeCommit, Version};
//!
//! let before = Instance::pending("i".into(), "W".into(), "1".into(), "c".into(), 5, None);
//! let mut after = before.clone();
//! after.status = RuntimeStatus::Completed;
//! after.history_len = 3;
//! let commit = EpisodeCommit {
//!     expected: Version::of(&before),
//!     unread_inbox: false,
//!     instance: after,
//!     reset_history: false,
//!     new_events: vec![HistoryEvent::OrchestratorStarted { timestamp: 9 }],
//!     consumed: vec![1],
//!     new_timers: vec![],
//!     cancelled_timers: vec![],
//!     new_activities: vec![],
//!     new_children: vec![],
//!     follow_up: vec![],
//!     sent: vec![],
//!     started: vec![],
//!     created: None,
//! };
//! let writes = episode(&commit);
//! assert!(matches!(writes[0], Write::Guard { .. }));
//! // A finished instance leaves no timer or activity behind.
//! assert!(writes.iter().any(|w| matches!(w, Write::DropScheduledWork { .. })));
//! ```

use crate::model::{
    ActivityCall, HistoryEvent, Instance, Message, Millis, RuntimeStatus, Timer, child_result,
};
use crate::schedule::ScheduleRow;
use crate::store::{EpisodeCommit, ScheduleCommit, Version};

/// One write of a commit. Each names the instance rows it touches; a
/// backend runs a commit's writes in order, in one transaction, and the
/// commit fails whole if one of them fails.
#[derive(Debug, Clone, PartialEq)]
pub enum Write<'a> {
    /// Lock the instance's row and refuse the commit (`Conflict`) unless
    /// the instance is still at `expected`, on a backend whose leases are
    /// stored, not leased to another host and, if `unread_inbox`, no
    /// message waits in its inbox ([`EpisodeCommit::unread_inbox`]);
    /// `NotFound` if it is gone.
    Guard {
        /// The instance.
        id: &'a str,
        /// The version the commit was computed from.
        expected: &'a Version,
        /// The episode did not read the inbox: it must be empty.
        unread_inbox: bool,
    },
    /// Delete the instance's whole history (a continue-as-new).
    ClearHistory {
        /// The instance.
        id: &'a str,
    },
    /// Delete the instance's timers and activity rows: the execution that
    /// scheduled them has ended (finished, or continued as new), and
    /// nothing waits for them.
    DropScheduledWork {
        /// The instance.
        id: &'a str,
    },
    /// Start a new execution of the instance with another input.
    NewExecution {
        /// The instance.
        id: &'a str,
        /// The new input, as JSON.
        input: &'a str,
        /// The new execution's id.
        execution_id: &'a str,
    },
    /// Append `events` to the history, the first at position `first_seq`,
    /// each stamped `at`.
    AppendEvents {
        /// The instance.
        id: &'a str,
        /// The position of the first.
        first_seq: u64,
        /// The events, in order.
        events: &'a [HistoryEvent],
        /// Their timestamp.
        at: Millis,
    },
    /// Delete these inbox messages of the instance (taken by the episode).
    Consume {
        /// The instance.
        id: &'a str,
        /// Their inbox ids.
        messages: &'a [i64],
    },
    /// Store the instance row's new state (status, output, custom status,
    /// `updated_at`, history length) and give its lease back; it is ready
    /// again if messages it can take wait (a suspended instance takes only
    /// control messages).
    UpdateInstance {
        /// The row after the episode.
        instance: &'a Instance,
    },
    /// Create these timers (or move one of the same task).
    PutTimers {
        /// The timers, all of the same instance.
        timers: &'a [Timer],
    },
    /// Delete these timers of the instance (cancelled).
    CancelTimers {
        /// The instance.
        id: &'a str,
        /// Their tasks.
        tasks: &'a [u32],
    },
    /// Add activity rows for these calls, due at `at`.
    ScheduleActivities {
        /// The calls.
        calls: &'a [ActivityCall],
        /// When they are due.
        at: Millis,
    },
    /// Create an instance: its row (pending, ready), its `ExecutionStarted`
    /// event and its start message, all stamped with its `created_at`. An
    /// instance with the same id that has finished is deleted first, with
    /// all it owns; a live one makes the write fail (`AlreadyExists`).
    Create {
        /// The new instance.
        instance: &'a Instance,
        /// The start was carried into the episode this commit applies
        /// next ([`EpisodeCommit::created`]), which took it: no start
        /// message is stored, and the episode's writes make the row ready
        /// or not.
        start_taken: bool,
    },
    /// [`Write::Create`] for a sub-orchestration or an orchestration an
    /// entity starts: if its id is taken by a live instance, it is not
    /// created (the commit goes on), and `if_taken` goes to its parent.
    CreateChild {
        /// The child (its `parent` set for a sub-orchestration).
        child: &'a Instance,
        /// The message that tells the parent the call failed, if it has one.
        if_taken: Option<Message>,
        /// When that message is sent.
        at: Millis,
    },
    /// Create, change or delete a schedule's row: create it when
    /// `expected` is none (`ScheduleExists` if the name is taken); else
    /// only if it is still at `expected` (`ScheduleChanged`), then store
    /// `row` with the version bumped, or delete it when `row` is none.
    PutSchedule {
        /// The schedule.
        name: &'a str,
        /// The version read.
        expected: Option<u64>,
        /// The row after.
        row: Option<&'a ScheduleRow>,
        /// Its time.
        at: Millis,
    },
    /// A run a schedule started has ended: if it is the schedule's last
    /// run, the row's version is bumped (a round computed while it ran is
    /// refused and runs again), and a tick buffered behind it falls due
    /// at `at`.
    ScheduledRunEnded {
        /// The schedule.
        schedule: &'a str,
        /// The run.
        id: &'a str,
        /// When it ended.
        at: Millis,
    },
    /// Create an entity's row (running, an empty record, no history) if it
    /// has none: a message for it follows.
    EnsureEntity {
        /// The row to insert.
        row: Box<Instance>,
    },
    /// Put `message` into the inbox of the instance, stamped `at`, if the
    /// instance exists (it may have been purged), and make it ready if it
    /// can take the message now.
    Push {
        /// The instance.
        id: &'a str,
        /// The message.
        message: Message,
        /// Its timestamp.
        at: Millis,
    },
}

/// The writes of one episode's commit, in the order they are applied.
pub fn episode(commit: &EpisodeCommit) -> Vec<Write<'_>> {
    let instance = &commit.instance;
    let id = instance.id.as_str();
    let at = instance.updated_at;
    let mut writes = Vec::new();
    if let Some(created) = &commit.created {
        writes.push(Write::Create {
            instance: created,
            start_taken: true,
        });
    }
    writes.push(Write::Guard {
        id,
        expected: &commit.expected,
        unread_inbox: commit.unread_inbox,
    });
    let first_seq = if commit.reset_history {
        writes.push(Write::ClearHistory { id });
        writes.push(Write::DropScheduledWork { id });
        writes.push(Write::NewExecution {
            id,
            input: &instance.input,
            execution_id: &instance.execution_id,
        });
        0
    } else {
        commit.expected.history_len
    };
    if !commit.new_events.is_empty() {
        writes.push(Write::AppendEvents {
            id,
            first_seq,
            events: &commit.new_events,
            at,
        });
    }
    // Before the row: whether the instance stays ready is read after the
    // messages it took are gone.
    if !commit.consumed.is_empty() {
        writes.push(Write::Consume {
            id,
            messages: &commit.consumed,
        });
    }
    writes.push(Write::UpdateInstance { instance });
    if !commit.new_timers.is_empty() {
        writes.push(Write::PutTimers {
            timers: &commit.new_timers,
        });
    }
    if !commit.cancelled_timers.is_empty() {
        writes.push(Write::CancelTimers {
            id,
            tasks: &commit.cancelled_timers,
        });
    }
    if !commit.new_activities.is_empty() {
        writes.push(Write::ScheduleActivities {
            calls: &commit.new_activities,
            at,
        });
    }
    for child in &commit.new_children {
        let call = child.parent.as_ref();
        let if_taken = Message::ChildDone {
            task: call.map_or(0, |call| call.task),
            execution: call.map_or_else(
                || instance.execution_id.clone(),
                |call| call.execution.clone(),
            ),
            result: Err(format!(
                "sub-orchestration not started: an instance with id `{}` already exists and has not finished",
                child.id
            )),
        };
        writes.push(Write::CreateChild {
            child,
            if_taken: Some(if_taken),
            at,
        });
    }
    if instance.status.is_terminal() {
        if let Some(parent) = &instance.parent {
            writes.push(Write::Push {
                id: &parent.instance,
                message: Message::ChildDone {
                    task: parent.task,
                    execution: parent.execution.clone(),
                    result: child_result(instance),
                },
                at,
            });
        }
        writes.push(Write::DropScheduledWork { id });
        if let Some(scheduled) = &instance.scheduled_by {
            writes.push(Write::ScheduledRunEnded {
                schedule: &scheduled.schedule,
                id,
                at,
            });
        }
    }
    for message in &commit.follow_up {
        writes.push(Write::Push {
            id,
            message: message.clone(),
            at,
        });
    }
    for (to, message) in &commit.sent {
        writes.extend(ensure_entity(to, at));
        writes.push(Write::Push {
            id: to,
            message: message.clone(),
            at,
        });
    }
    writes.extend(commit.started.iter().map(|child| Write::CreateChild {
        child,
        if_taken: None,
        at,
    }));
    writes
}

/// The write that creates the row of the entity `id` names, if it names
/// one: a message to an entity creates it.
pub fn ensure_entity(id: &str, at: Millis) -> Option<Write<'static>> {
    crate::entity::EntityId::parse(id).map(|entity| Write::EnsureEntity {
        row: Box::new(crate::entity::new_row(&entity, at)),
    })
}

/// The writes that create an instance (see [`Write::Create`]).
pub fn creation(instance: &Instance) -> Vec<Write<'_>> {
    vec![Write::Create {
        instance,
        start_taken: false,
    }]
}

/// The writes of a schedule's change ([`ScheduleCommit`]): the previous
/// run told to terminate, the row (guarded by its version), then the
/// instances its ticks start.
pub fn schedule(commit: &ScheduleCommit) -> Vec<Write<'_>> {
    let mut writes = Vec::with_capacity(commit.starts.len() + 2);
    if let Some(previous) = &commit.terminate {
        writes.push(Write::Push {
            id: previous,
            message: Message::Terminate {
                reason: Some(format!(
                    "schedule `{}`: a newer run replaces it (overlap = terminate_previous)",
                    commit.name
                )),
            },
            at: commit.now,
        });
    }
    writes.push(Write::PutSchedule {
        name: &commit.name,
        expected: commit.expected,
        row: commit.row.as_ref(),
        at: commit.now,
    });
    writes.extend(commit.starts.iter().map(|instance| Write::Create {
        instance,
        start_taken: false,
    }));
    writes
}

/// The message a due timer becomes in its instance's inbox.
pub fn timer_fired(task: u32, fire_at: Millis, execution: String) -> Message {
    Message::TimerFired {
        task,
        fire_at,
        execution: Some(execution),
    }
}

/// The tables whose rows an instance owns, each with the column naming the
/// instance, in the order a purge deletes them (the instance row last):
/// one statement per table for a whole batch of instances.
pub const OWNED_ROWS: [(&str, &str); 5] = [
    ("history", "instance_id"),
    ("inbox", "instance_id"),
    ("timers", "instance_id"),
    ("activities", "instance_id"),
    ("instances", "id"),
];

/// Why a guard with `unread_inbox` refuses its commit: messages wait
/// that the episode did not read ([`EpisodeCommit::unread_inbox`]).
pub fn unread_messages_wait(id: &str) -> crate::store::StoreError {
    crate::store::StoreError::Conflict {
        instance: id.to_string(),
        change: "messages wait in its inbox that the episode did not read".into(),
    }
}

/// Why a purge of an instance with this status is refused, if it is: only
/// a finished instance may be deleted (a live one's activities would be
/// orphaned and its parent would wait forever).
pub fn purge_refused(id: &str, status: RuntimeStatus) -> Option<crate::store::StoreError> {
    (!status.is_terminal()).then(|| crate::store::StoreError::NotFinished {
        id: id.to_string(),
        status,
    })
}

/// The statuses of instances that have not finished, as stored.
pub fn live_statuses() -> Vec<&'static str> {
    RuntimeStatus::ALL
        .into_iter()
        .filter(|s| !s.is_terminal())
        .map(RuntimeStatus::as_str)
        .collect()
}

/// The statuses of finished instances, as stored.
pub fn finished_statuses() -> Vec<&'static str> {
    RuntimeStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(RuntimeStatus::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ParentCall;

    fn commit(status: RuntimeStatus) -> EpisodeCommit {
        let before = Instance::pending("c".into(), "W".into(), "1".into(), "d".into(), 5, None);
        let mut after = before.clone();
        after.status = status;
        after.updated_at = 7;
        after.parent = Some(ParentCall {
            instance: "p".into(),
            execution: "pe".into(),
            task: 4,
        });
        EpisodeCommit {
            expected: Version::of(&before),
            unread_inbox: false,
            instance: after,
            reset_history: false,
            new_events: vec![HistoryEvent::OrchestratorStarted { timestamp: 7 }],
            consumed: vec![1, 2],
            new_timers: vec![],
            cancelled_timers: vec![3],
            new_activities: vec![],
            new_children: vec![],
            follow_up: vec![],
            sent: vec![],
            started: vec![],
            created: None,
        }
    }

    #[test]
    fn a_running_episode_guards_appends_consumes_then_updates() {
        let c = commit(RuntimeStatus::Running);
        let writes = episode(&c);
        let kinds: Vec<&str> = writes
            .iter()
            .map(|w| match w {
                Write::Guard { .. } => "guard",
                Write::AppendEvents { first_seq: 1, .. } => "append",
                Write::Consume { .. } => "consume",
                Write::UpdateInstance { .. } => "update",
                Write::CancelTimers { .. } => "cancel",
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["guard", "append", "consume", "update", "cancel"]);
    }

    #[test]
    fn a_finished_child_tells_its_parent_at_the_episodes_time() {
        let c = commit(RuntimeStatus::Completed);
        let writes = episode(&c);
        let told = writes.iter().find_map(|w| match w {
            Write::Push { id, message, at } => Some((*id, message.clone(), *at)),
            _ => None,
        });
        let (id, message, at) = told.expect("the parent is told");
        assert_eq!((id, at), ("p", 7));
        assert!(matches!(message, Message::ChildDone { task: 4, .. }));
        assert!(matches!(
            writes.last(),
            Some(Write::DropScheduledWork { id: "c" })
        ));
    }

    #[test]
    fn a_continue_as_new_starts_the_history_over() {
        let mut c = commit(RuntimeStatus::Running);
        c.reset_history = true;
        c.follow_up = vec![Message::Start];
        let writes = episode(&c);
        assert!(matches!(writes[1], Write::ClearHistory { .. }));
        assert!(matches!(writes[2], Write::DropScheduledWork { .. }));
        assert!(
            writes
                .iter()
                .any(|w| matches!(w, Write::AppendEvents { first_seq: 0, .. }))
        );
        assert!(matches!(
            writes.last(),
            Some(Write::Push {
                message: Message::Start,
                ..
            })
        ));
    }
}
