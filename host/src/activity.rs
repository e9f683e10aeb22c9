//! Activities: components of the `activity` world, instantiated per attempt
//! with the real WASI clocks and randomness (no files, network or
//! environment yet), under a time budget and the guest memory limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Store, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::engine::{Engine, budget_ticks, guest_limits};
use crate::replay::{HostTrouble, is_host_trouble};

mod bindings {
    wasmtime::component::bindgen!({
        world: "activity",
        path: "../guest-sdk/wit",
        exports: { default: async },
    });
}

use bindings::{Activity, ActivityPre};

pub use bindings::exports::duro::workflow::activities::ActivityInfo;

/// Runs activities from prepared components.
pub struct ActivityHost {
    engine: Engine,
    linker: Linker<ActivityState>,
    pres: Mutex<HashMap<String, ActivityPre<ActivityState>>>,
}

impl ActivityHost {
    /// A host for activity components on `engine`.
    pub fn new(engine: Engine) -> anyhow::Result<Self> {
        let mut linker = Linker::new(engine.wasmtime());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(ActivityHost {
            engine,
            linker,
            pres: Mutex::default(),
        })
    }

    /// Check that a component is an activity component, and keep it ready.
    pub fn prepare(&self, digest: &str, component: &Component) -> anyhow::Result<()> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .and_then(ActivityPre::new)
            .map_err(|e| {
                anyhow::anyhow!(
                    "it is not a duro activity component (the `activity` world, \
                     importing only WASI): {e:?}"
                )
            })?;
        self.pres
            .lock()
            .expect("pre cache poisoned")
            .insert(digest.to_string(), pre);
        Ok(())
    }

    /// One attempt of activity `name` of component `digest`, stopped after
    /// `budget` (computing) or 1.5 x `budget` (waiting): its output or
    /// its error (a trap or a budget overrun is the attempt's error), or
    /// host trouble (the attempt did not run and is not counted).
    pub async fn run(
        &self,
        digest: &str,
        budget: Duration,
        name: &str,
        input: &str,
        info: &ActivityInfo,
    ) -> Result<Result<String, String>, HostTrouble> {
        let pre = self
            .pres
            .lock()
            .expect("pre cache poisoned")
            .get(digest)
            .cloned()
            .ok_or_else(|| HostTrouble(format!("activity component {digest} is not prepared")))?;
        let state = ActivityState {
            wasi: WasiCtx::builder()
                .allow_ip_name_lookup(false)
                .allow_tcp(false)
                .allow_udp(false)
                .build(),
            table: ResourceTable::new(),
            limits: guest_limits(),
        };
        let mut store = Store::new(self.engine.wasmtime(), state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(budget_ticks(budget));
        let guest: Activity = match pre.instantiate_async(&mut store).await {
            Ok(guest) => guest,
            Err(e) if is_host_trouble(&e) => {
                return Err(HostTrouble(format!(
                    "the activity could not be instantiated: {e:#}"
                )));
            }
            Err(e) => {
                return Ok(Err(format!(
                    "the activity could not be instantiated: {e:#}"
                )));
            }
        };
        // The epoch stops a guest computing; the wall clock one that waits
        // outside wasm.
        let input = input.to_string();
        let call = guest
            .duro_workflow_activities()
            .call_run(&mut store, name, &input, info);
        let wall_clock = budget + budget / 2;
        Ok(match tokio::time::timeout(wall_clock, call).await {
            Err(_) => Err(format!("the activity did not finish within {wall_clock:?}")),
            Ok(Err(trap)) => Err(match trap.downcast_ref::<wasmtime::Trap>() {
                Some(wasmtime::Trap::Interrupt) => {
                    format!("the activity ran for more than {budget:?} and was stopped")
                }
                _ => format!("the activity trapped: {trap:?}"),
            }),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Ok(Ok(output))) => match serde_json::from_str::<serde_json::Value>(&output) {
                Ok(_) => Ok(output),
                Err(e) => Err(format!("the activity's output {output:?} is not JSON: {e}")),
            },
        })
    }
}

/// The store data of one activity attempt.
pub struct ActivityState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for ActivityState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
