//! The sizes and counts that callers and guests control: their defaults,
//! and the pure checks of a payload and of an episode against them.

use crate::replay::{Episode, Outcome};

/// Limits on what callers and guests may make the host store; see
/// `SECURITY.md` for each default and its setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest JSON value stored for an instance: an input, an event's
    /// payload, an output, a custom status, an activity's or a child's
    /// input, an activity's result, a reason.
    pub max_payload_bytes: usize,
    /// Most history events one execution may have; an orchestration that
    /// would pass it fails, saying to use continue-as-new (Temporal stops
    /// a workflow at 51,200 events for the same reason: a history replayed
    /// on every cold episode must stay bounded).
    pub max_history_events: u64,
    /// What may wait for a locked entity, in its record.
    pub entity_queue: crate::entity::QueueLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1 << 20,
            max_history_events: 50_000,
            entity_queue: Default::default(),
        }
    }
}

impl Limits {
    /// `Err` naming `what` and the limit if `payload` is larger than a
    /// payload may be.
    pub fn check_payload(&self, what: &str, payload: &str) -> Result<(), String> {
        if payload.len() > self.max_payload_bytes {
            Err(format!(
                "{what} is {} bytes, more than the limit of {} bytes",
                payload.len(),
                self.max_payload_bytes
            ))
        } else {
            Ok(())
        }
    }

    /// `text` cut to at most a payload's size (on a character boundary),
    /// for error messages a guest or an activity produced.
    pub fn truncate(&self, mut text: String) -> String {
        if text.len() > self.max_payload_bytes {
            let mut end = self.max_payload_bytes.saturating_sub(3);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("...");
        }
        text
    }

    /// Why `episode`, run on an execution with `history_len` events, may
    /// not be committed as it is, if a limit says so: the instance then
    /// fails with this message and nothing the episode produced is stored.
    pub fn broken_by(&self, episode: &Episode, history_len: u64) -> Option<String> {
        // Every payload the episode would store, as (what, whose, text);
        // the message is written only for one that is too large.
        let outcome = match &episode.outcome {
            Outcome::Completed(output) => Some(("the orchestration's output", None, output)),
            Outcome::ContinuedAsNew(input) => Some(("the continue-as-new input", None, input)),
            _ => None,
        };
        let custom = match &episode.custom_status {
            Some(Some(status)) => Some(("the custom status", None, status)),
            _ => None,
        };
        let activities = (episode.new_activities.iter())
            .map(|(_, name, input, _)| ("the input of activity", Some(name), input));
        let children = (episode.new_children.iter())
            .map(|(_, name, _, input)| ("the input of sub-orchestration", Some(name), input));
        let operations = (episode.sent.iter()).filter_map(|(to, message)| match message {
            crate::model::Message::EntityOperation { input, .. } => {
                Some(("the input of an operation on entity", Some(to), input))
            }
            _ => None,
        });
        let oversized = (outcome
            .into_iter()
            .chain(custom)
            .chain(activities)
            .chain(children)
            .chain(operations))
        .find(|(_, _, payload)| payload.len() > self.max_payload_bytes);
        if let Some((what, whose, payload)) = oversized {
            let what = match whose {
                Some(name) => format!("{what} `{name}`"),
                None => what.to_string(),
            };
            return self.check_payload(&what, payload).err();
        }
        let continued = matches!(episode.outcome, Outcome::ContinuedAsNew(_));
        let events = history_len.saturating_add(episode.appended.len() as u64);
        if !continued && events > self.max_history_events {
            return Some(format!(
                "this execution's history would have {events} events, more than the limit \
                 of {}: an orchestration that runs this long should continue-as-new \
                 (`ctx.continue_as_new`) to start a fresh history",
                self.max_history_events
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HistoryEvent;

    fn episode(outcome: Outcome) -> Episode {
        Episode {
            appended: Vec::new(),
            outcome,
            custom_status: None,
            new_timers: Vec::new(),
            cancelled_timers: Vec::new(),
            new_activities: Vec::new(),
            new_children: Vec::new(),
            unprocessed_events: Vec::new(),
            sent: Vec::new(),
            locks: Vec::new(),
        }
    }

    const SMALL: Limits = Limits {
        max_payload_bytes: 10,
        max_history_events: 5,
        entity_queue: crate::entity::QueueLimits {
            operations: 1,
            bytes: 10,
        },
    };

    #[test]
    fn each_payload_an_episode_stores_is_checked() {
        assert_eq!(
            SMALL.broken_by(&episode(Outcome::Completed("\"short\"".into())), 0),
            None
        );
        let long = "\"0123456789\"".to_string();
        let broken = SMALL
            .broken_by(&episode(Outcome::Completed(long.clone())), 0)
            .unwrap();
        assert!(
            broken.contains("output is 12 bytes, more than the limit of 10"),
            "{broken}"
        );
        assert!(
            SMALL
                .broken_by(&episode(Outcome::ContinuedAsNew(long.clone())), 0)
                .is_some()
        );
        let mut custom = episode(Outcome::Pending);
        custom.custom_status = Some(Some(long.clone()));
        assert!(
            SMALL
                .broken_by(&custom, 0)
                .unwrap()
                .contains("custom status")
        );
        let mut activity = episode(Outcome::Pending);
        activity
            .new_activities
            .push((1, "Charge".into(), long.clone(), None));
        assert!(
            SMALL
                .broken_by(&activity, 0)
                .unwrap()
                .contains("activity `Charge`")
        );
        let mut child = episode(Outcome::Pending);
        child
            .new_children
            .push((1, "Child".into(), "c".into(), long));
        assert!(
            SMALL
                .broken_by(&child, 0)
                .unwrap()
                .contains("sub-orchestration `Child`")
        );
    }

    #[test]
    fn a_history_past_its_limit_asks_for_continue_as_new() {
        let mut grows = episode(Outcome::Pending);
        grows.appended = vec![HistoryEvent::OrchestratorStarted { timestamp: 0 }; 2];
        assert_eq!(SMALL.broken_by(&grows, 3), None);
        let broken = SMALL.broken_by(&grows, 4).unwrap();
        assert!(
            broken.contains("6 events") && broken.contains("continue-as-new"),
            "{broken}"
        );
        // Continuing as new is the way out, however long the history was.
        let mut continues = episode(Outcome::ContinuedAsNew("null".into()));
        continues.appended = grows.appended.clone();
        assert_eq!(SMALL.broken_by(&continues, 100), None);
    }

    #[test]
    fn messages_are_cut_on_a_character_boundary() {
        assert_eq!(SMALL.truncate("short".into()), "short");
        assert_eq!(SMALL.truncate("ééééééé".into()), "ééé...");
    }
}
