//! Deploys checked by replay: before a new version of an orchestration takes
//! over, every in-flight instance's history is replayed against it; the
//! compatible ones may move, the others finish on the version they started.

use std::collections::{BTreeMap, HashSet};

use wasmtime::component::Component;

use crate::model::{Instance, InstanceQuery, RuntimeStatus};
use crate::replay::Divergence;

use super::{Runtime, RuntimeError, RuntimeResult};
use crate::store::{StoreError, Version};

/// What a deploy does beyond checking.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeployMode {
    /// Check only: register nothing, move nothing.
    pub dry_run: bool,
    /// Move every in-flight instance whose history replays on the new
    /// version to it.
    pub upgrade_compatible: bool,
}

/// One orchestration of a deploy: the version new instances started on
/// before and the one they start on after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrchestrationChange {
    /// The orchestration.
    pub name: String,
    /// Its component before the deploy (none: a new orchestration).
    pub from: Option<String>,
    /// Its component after.
    pub to: String,
}

impl OrchestrationChange {
    /// Whether the deploy changes this orchestration's code.
    pub fn changed(&self) -> bool {
        self.from.as_deref() != Some(self.to.as_str())
    }
}

/// One in-flight instance of a changed orchestration, replayed against its
/// new version.
#[derive(Debug, Clone)]
pub struct InstanceCheck {
    /// The instance.
    pub instance_id: String,
    /// Its orchestration.
    pub orchestration: String,
    /// The component it runs on.
    pub from: String,
    /// The component it was checked against.
    pub to: String,
    /// Where its history stops replaying on `to` (none: compatible).
    pub divergence: Option<Divergence>,
    /// Whether the deploy moved it to `to`.
    pub moved: bool,
}

/// What a deploy found and did.
#[derive(Debug, Clone, Default)]
pub struct DeployReport {
    /// Every orchestration deployed, changed or not.
    pub orchestrations: Vec<OrchestrationChange>,
    /// Every in-flight instance of a changed orchestration not already on
    /// its new version, in orchestration then creation order.
    pub instances: Vec<InstanceCheck>,
    /// Orchestrations registered before and not in the deploy: no new
    /// instance starts on them; those in flight finish where they run.
    pub removed: Vec<String>,
}

/// One version of an orchestration the host knows: the deployed one, or one
/// an in-flight instance still runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrchestrationVersion {
    /// The orchestration.
    pub name: String,
    /// The component digest.
    pub component: String,
    /// Whether new instances start on it.
    pub current: bool,
    /// In-flight instances running on it.
    pub in_flight: usize,
}

/// Instances read per page while walking the in-flight ones.
const PAGE: usize = 500;

impl Runtime {
    /// Deploy orchestration components (each with the orchestrations it
    /// defines): replay every in-flight instance of a changed orchestration
    /// against its new component, then (unless `mode.dry_run`) make the new
    /// components the ones new instances start on and, with
    /// `mode.upgrade_compatible`, move the instances that replayed.
    pub async fn deploy(
        &self,
        components: Vec<(Vec<u8>, Vec<String>)>,
        mode: DeployMode,
    ) -> RuntimeResult<DeployReport> {
        let mut report = DeployReport::default();
        let deployed: Vec<&String> = components.iter().flat_map(|(_, names)| names).collect();
        report.removed = (self.inner.registry.read().expect("registry poisoned"))
            .keys()
            .filter(|name| !deployed.contains(name))
            .cloned()
            .collect();
        report.removed.sort();
        // Each component is hashed and compiled once, whatever the number
        // of instances replayed on it.
        let mut checked: Vec<(Instance, String, Component)> = Vec::new();
        for (bytes, names) in &components {
            let (digest, compiled) = self.check_orchestration_component(bytes.clone()).await?;
            for name in names {
                let change = OrchestrationChange {
                    name: name.clone(),
                    from: self.registered(name).ok(),
                    to: digest.clone(),
                };
                if change.changed() {
                    for instance in self.in_flight(Some(name)).await? {
                        if instance.component != digest {
                            checked.push((instance, digest.clone(), compiled.clone()));
                        }
                    }
                }
                report.orchestrations.push(change);
            }
        }
        // The version each instance was listed at: a move commits only if the
        // instance is still there (its history, read after, is the one checked).
        let mut listed: Vec<Version> = Vec::with_capacity(checked.len());
        for (instance, to, compiled) in checked {
            listed.push(Version::of(&instance));
            let divergence = (self
                .replay_on(instance.clone(), to.clone(), compiled)
                .await?)
                .err();
            report.instances.push(InstanceCheck {
                instance_id: instance.id,
                orchestration: instance.name,
                from: instance.component,
                to,
                divergence,
                moved: false,
            });
        }
        if mode.dry_run {
            return Ok(report);
        }
        for (bytes, names) in components {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            self.register(bytes, &names).await?;
        }
        {
            let mut registry = self.inner.registry.write().expect("registry poisoned");
            for name in &report.removed {
                registry.remove(name);
            }
        }
        if mode.upgrade_compatible {
            for (check, version) in report.instances.iter_mut().zip(listed) {
                if check.divergence.is_none() {
                    self.move_checked(check, version).await?;
                }
            }
        }
        Ok(report)
    }

    /// Move an instance that replayed on `check.to`; if it took a step since
    /// it was checked, check it again (an `upgrade`).
    async fn move_checked(&self, check: &mut InstanceCheck, checked: Version) -> RuntimeResult<()> {
        let now = self.inner.config.clock.now();
        let moved = (self.inner.store)
            .set_component(&check.instance_id, &check.to, &checked, now)
            .await;
        match moved {
            Ok(()) => {
                check.moved = true;
                return Ok(());
            }
            // It took a step, finished or was purged: look again.
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let instance = match self.live(&check.instance_id).await {
            Ok(instance) => instance,
            // It finished (or was purged) meanwhile: it stays where it ran.
            Err(RuntimeError::Finished { .. } | RuntimeError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if instance.component != check.from {
            return Ok(());
        }
        let result = match self.upgrade(&check.instance_id).await {
            Err(RuntimeError::Finished { .. } | RuntimeError::NotFound(_)) => return Ok(()),
            other => other?,
        };
        match result {
            Ok(digest) => check.moved = digest == check.to,
            Err(divergence) => check.divergence = Some(divergence),
        }
        Ok(())
    }

    /// Compile `bytes` and check that it is an orchestration component,
    /// without storing or registering it. Returns its digest and the
    /// compiled component.
    async fn check_orchestration_component(
        &self,
        bytes: Vec<u8>,
    ) -> RuntimeResult<(String, Component)> {
        let (digest, _, compiled) = self
            .checked_component(bytes, |inner, digest, component| {
                inner.replayer.prepare(digest, component)
            })
            .await?;
        Ok((digest, compiled))
    }

    /// Every instance that has not finished, of `orchestration` or of all,
    /// oldest first.
    pub async fn in_flight(&self, orchestration: Option<&str>) -> RuntimeResult<Vec<Instance>> {
        let mut query = InstanceQuery {
            statuses: RuntimeStatus::ALL
                .into_iter()
                .filter(|s| !s.is_terminal())
                .collect(),
            name: orchestration.map(str::to_string),
            limit: PAGE,
            ..Default::default()
        };
        let mut all = Vec::new();
        loop {
            let page = self.list(query.clone()).await?;
            let full = page.len() == PAGE;
            query.after = page.last().map(|i| (i.created_at, i.id.clone()));
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// Drop the compiled and prepared components that no registered
    /// orchestration or activity, no in-flight instance and nothing in
    /// `also_keep` (the served HTTP functions) uses: after deploys, and
    /// after dry runs, which compile what they check. An instance of a
    /// dropped version that turns up later is compiled again from the
    /// store.
    pub async fn prune_components(&self, also_keep: &HashSet<String>) -> RuntimeResult<()> {
        let mut keep = also_keep.clone();
        keep.extend(
            (self.inner.registry.read().expect("registry poisoned"))
                .values()
                .cloned(),
        );
        keep.extend(
            (self
                .inner
                .activity_registry
                .read()
                .expect("activity registry poisoned"))
            .values()
            .map(|activity| activity.digest.clone()),
        );
        keep.extend(
            (self
                .inner
                .entity_registry
                .read()
                .expect("registry poisoned"))
            .values()
            .cloned(),
        );
        for (_, component, _) in self.inner.store.in_flight_versions().await? {
            keep.insert(component);
        }
        self.inner.replayer.retain(&keep);
        self.inner.activity_host.retain(&keep);
        self.inner.entity_host.retain(&keep);
        self.inner.engine.retain(&keep);
        Ok(())
    }

    /// The versions of each orchestration: the deployed one and every other
    /// one an in-flight instance still runs on, with how many do.
    pub async fn versions(&self) -> RuntimeResult<Vec<OrchestrationVersion>> {
        let mut versions: BTreeMap<(String, String), OrchestrationVersion> = BTreeMap::new();
        let registry = self
            .inner
            .registry
            .read()
            .expect("registry poisoned")
            .clone();
        for (name, digest) in registry {
            versions.insert(
                (name.clone(), digest.clone()),
                OrchestrationVersion {
                    name,
                    component: digest,
                    current: true,
                    in_flight: 0,
                },
            );
        }
        for (name, component, count) in self.inner.store.in_flight_versions().await? {
            versions
                .entry((name.clone(), component.clone()))
                .or_insert_with(|| OrchestrationVersion {
                    name,
                    component,
                    current: false,
                    in_flight: 0,
                })
                .in_flight += count as usize;
        }
        Ok(versions.into_values().collect())
    }

    /// Compile `bytes` and check that it is an activity component, without
    /// storing or registering it (a deploy checks every component before it
    /// changes anything).
    pub async fn check_activity_component(&self, bytes: Vec<u8>) -> RuntimeResult<()> {
        self.checked_component(bytes, |inner, digest, component| {
            inner.activity_host.prepare(digest, component)
        })
        .await
        .map(|_| ())
    }
}
