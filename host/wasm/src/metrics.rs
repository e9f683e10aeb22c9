//! The host's metrics in the Prometheus text format: counters and
//! histograms updated where the work happens, encoded on each scrape.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label pairs, e.g. `[("outcome", "completed")]`.
pub type Labels = Vec<(&'static str, String)>;

/// Every metric the host keeps.
pub struct Metrics {
    registry: Registry,
    /// Episodes run, by how they ended.
    pub episodes: Family<Labels, Counter>,
    /// How long episodes took (replay and new steps).
    pub episode_seconds: Histogram,
    /// Events replayed by episodes that were not warm.
    pub replayed_events: Histogram,
    /// Recorded completions a replay handed over in batches (one
    /// `step-many` call for a run of them) rather than one call each.
    pub batched_completions: Counter,
    /// Messages stored by the commit of the episode they were carried
    /// into (one write instead of two), rather than into an inbox first.
    pub carried_messages: Counter,
    /// Instances created by the commit of their first episode, their start
    /// carried into it (one write instead of two).
    pub carried_starts: Counter,
    /// Instances other hosts finished that waiters here heard of at once
    /// (a shared database).
    pub foreign_finishes: Counter,
    /// Entity operations run (and committed or not).
    pub entity_operations: Counter,
    /// Episodes by whether their instance was warm (`hit`) or replayed.
    pub warm_instances: Family<Labels, Counter>,
    /// Episodes per commit.
    pub commit_batch: Histogram,
    /// How long commits took.
    pub commit_seconds: Histogram,
    /// Timers fired.
    pub timers_fired: Counter,
    /// Schedule ticks, by schedule and decision (started, skipped by the
    /// overlap policy, missed by the catch-up policy).
    pub schedule_ticks: Family<Labels, Counter>,
    /// Activity attempts, by activity and result.
    pub activity_attempts: Family<Labels, Counter>,
    /// HTTP function calls, by function and status.
    pub http_requests: Family<Labels, Counter>,
    /// Guest traps and limit hits, by kind (`deadline`, `memory`, `trap`)
    /// and by where (`orchestration`, `activity`, `http`).
    pub guest_traps: Family<Labels, Counter>,
    /// Stored instances by status, read from the store at each scrape.
    pub instances: Family<Labels, Gauge>,
    /// Entities stored, at the last scrape.
    pub entities: Gauge,
    /// Messages waiting in inboxes, at the last scrape.
    pub inbox_messages: Gauge,
    /// Durable timers not fired, at the last scrape.
    pub timers: Gauge,
    /// Timers due and not fired yet, at the last scrape.
    pub timers_due: Gauge,
    /// Activity calls not finished, at the last scrape.
    pub activities_pending: Gauge,
    /// Orchestration instances kept warm between episodes, at the last
    /// scrape.
    pub warm_instances_held: Gauge,
    /// Times the host gave back its caches after a quiet spell.
    pub memory_releases: Counter,
    /// Compiled components held in memory.
    pub compiled_components: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn seconds() -> Histogram {
    // 50 µs to about 3 s.
    Histogram::new(exponential_buckets(0.000_05, 3.0, 11))
}

impl Metrics {
    /// The metrics, registered and at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("duro");
        let episodes = Family::<Labels, Counter>::default();
        registry.register("episodes", "Episodes run, by outcome", episodes.clone());
        let episode_seconds = seconds();
        registry.register(
            "episode_seconds",
            "Episode duration (replay and new steps)",
            episode_seconds.clone(),
        );
        let replayed_events = Histogram::new(exponential_buckets(1.0, 4.0, 9));
        registry.register(
            "replayed_events",
            "History events replayed by an episode whose instance was not warm",
            replayed_events.clone(),
        );
        let batched_completions = Counter::default();
        registry.register(
            "batched_completions",
            "Recorded completions replayed in batches (one step-many call each run)",
            batched_completions.clone(),
        );
        let carried_messages = Counter::default();
        registry.register(
            "carried_messages",
            "Messages stored by the commit of the episode they were carried into",
            carried_messages.clone(),
        );
        let foreign_finishes = Counter::default();
        registry.register(
            "foreign_finishes",
            "Instances other hosts finished, told to this host's waiters at once",
            foreign_finishes.clone(),
        );
        let carried_starts = Counter::default();
        registry.register(
            "carried_starts",
            "Instances created by the commit of their first episode",
            carried_starts.clone(),
        );
        let entity_operations = Counter::default();
        registry.register(
            "entity_operations",
            "Entity operations run",
            entity_operations.clone(),
        );
        let warm_instances = Family::<Labels, Counter>::default();
        registry.register(
            "warm_instance_episodes",
            "Episodes by whether their instance was warm",
            warm_instances.clone(),
        );
        let commit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "commit_batch_episodes",
            "Episodes committed together",
            commit_batch.clone(),
        );
        let commit_seconds = seconds();
        registry.register("commit_seconds", "Commit duration", commit_seconds.clone());
        let timers_fired = Counter::default();
        registry.register("timers_fired", "Timers fired", timers_fired.clone());
        let schedule_ticks = Family::<Labels, Counter>::default();
        registry.register(
            "schedule_ticks",
            "Schedule ticks by schedule and decision (started, skipped, missed)",
            schedule_ticks.clone(),
        );
        let activity_attempts = Family::<Labels, Counter>::default();
        registry.register(
            "activity_attempts",
            "Activity attempts, by activity and result",
            activity_attempts.clone(),
        );
        let http_requests = Family::<Labels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP function calls, by function and status",
            http_requests.clone(),
        );
        let guest_traps = Family::<Labels, Counter>::default();
        registry.register(
            "guest_traps",
            "Guest traps and limit hits, by kind and where",
            guest_traps.clone(),
        );
        let instances = Family::<Labels, Gauge>::default();
        registry.register(
            "instances",
            "Stored instances, by runtime status",
            instances.clone(),
        );
        let entities = Gauge::default();
        registry.register("entities", "Stored entities", entities.clone());
        let inbox_messages = Gauge::default();
        registry.register(
            "inbox_messages",
            "Messages waiting in inboxes",
            inbox_messages.clone(),
        );
        let timers = Gauge::default();
        registry.register("timers", "Durable timers not fired", timers.clone());
        let timers_due = Gauge::default();
        registry.register(
            "timers_due",
            "Durable timers due and not fired yet",
            timers_due.clone(),
        );
        let activities_pending = Gauge::default();
        registry.register(
            "activities_pending",
            "Activity calls not finished",
            activities_pending.clone(),
        );
        let warm_instances_held = Gauge::default();
        registry.register(
            "warm_instances_held",
            "Orchestration instances kept warm between episodes",
            warm_instances_held.clone(),
        );
        let memory_releases = Counter::default();
        registry.register(
            "memory_releases",
            "Times the host gave back its caches after a quiet spell",
            memory_releases.clone(),
        );
        let compiled_components = Gauge::default();
        registry.register(
            "compiled_components",
            "Compiled components held in memory (those no app or in-flight instance uses are dropped after a deploy)",
            compiled_components.clone(),
        );
        Metrics {
            compiled_components,
            warm_instances_held,
            memory_releases,
            guest_traps,
            instances,
            entities,
            inbox_messages,
            timers,
            timers_due,
            activities_pending,
            registry,
            episodes,
            episode_seconds,
            replayed_events,
            batched_completions,
            carried_messages,
            carried_starts,
            foreign_finishes,
            entity_operations,
            warm_instances,
            commit_batch,
            commit_seconds,
            timers_fired,
            schedule_ticks,
            activity_attempts,
            http_requests,
        }
    }

    /// The text exposition format (`text/plain; version=0.0.4` compatible).
    /// Set the store gauges from `counts`.
    pub fn set_counts(&self, counts: &crate::store::StoreCounts) {
        for status in crate::model::RuntimeStatus::ALL {
            let n = counts
                .instances
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| *n);
            self.instances
                .get_or_create(&vec![("status", status.as_str().to_string())])
                .set(n as i64);
        }
        self.entities.set(counts.entities as i64);
        self.inbox_messages.set(counts.inbox_messages as i64);
        self.timers.set(counts.timers as i64);
        self.timers_due.set(counts.timers_due as i64);
        self.activities_pending.set(counts.activities as i64);
    }

    /// Count a guest trap or limit hit.
    pub fn trap(&self, kind: &'static str, place: &'static str) {
        self.guest_traps
            .get_or_create(&vec![
                ("kind", kind.to_string()),
                ("where", place.to_string()),
            ])
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
