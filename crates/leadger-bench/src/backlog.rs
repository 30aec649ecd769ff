//! Filling an empty log before a benchmark reads it: funnel leads through a
//! running `leadger serve` until the log holds at least a given number of
//! events (one per successful command). `nats` publishes such a backlog,
//! `rebuild` replays it into the read models.

use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::cpu::{CpuUse, WatchedProcesses};
use crate::funnel;
use crate::load::{self, LevelLength, LevelPlan, RunNaming};
use crate::server::LeadgerServer;

/// How to load a backlog.
pub struct BacklogPlan {
    /// At least this many events in the log afterwards.
    pub events: u64,
    pub clients: usize,
    pub connections: usize,
    pub seed: u64,
    pub max_errors: u64,
}

/// The log a benchmark found when it started.
#[derive(Debug, Clone, Serialize)]
pub struct Backlog {
    pub events: u64,
    pub leads: u64,
    pub clients: usize,
    pub seconds: f64,
    pub commands_per_second: f64,
    pub errors: u64,
    /// CPU use while the backlog was loaded.
    pub cpu: CpuUse,
}

/// Funnel leads, `plan.clients` at a time, through `server` (whose log is
/// empty) until the log holds at least `plan.events` events. `backend` names
/// the run in the progress lines on stderr.
pub async fn load(
    server: &LeadgerServer,
    plan: &BacklogPlan,
    backend: &str,
    naming: &Arc<RunNaming>,
    watched: &WatchedProcesses,
) -> anyhow::Result<Backlog> {
    let leads = leads_for_events(plan.seed, plan.events);
    let level_plan = LevelPlan {
        clients: plan.clients,
        connections: plan.connections,
        length: LevelLength::Leads(leads),
        seed: plan.seed,
        max_errors: plan.max_errors,
    };
    eprintln!("{backend}: loading a backlog of {} events ({leads} leads)…", plan.events);
    let level = load::run_level(&server.endpoint(), &level_plan, naming, watched).await.context("load the backlog")?;
    for (code, errors) in &level.errors {
        eprintln!("backlog: {} × {code}, e.g. {:?}", errors.count, errors.first_message);
    }
    if level.stopped_by_errors {
        bail!("the backlog load stopped after {} failed commands", level.error_count());
    }
    eprintln!("{backend}: backlog of {} events at {:.0} commands/s", level.commands, level.commands_per_second);
    level.cpu.warn_if_disturbed("the backlog load");
    Ok(Backlog {
        // The log was empty and every successful command appended one event.
        events: level.commands,
        leads,
        clients: plan.clients,
        seconds: level.seconds,
        commands_per_second: level.commands_per_second,
        errors: level.error_count(),
        cpu: level.cpu,
    })
}

/// The fewest leads, numbered from 0 as a level numbers them, whose journeys
/// add up to at least `events` commands.
fn leads_for_events(seed: u64, events: u64) -> u64 {
    let mut commands = 0;
    let mut leads = 0;
    while commands < events {
        commands += funnel::journey(seed, leads).len() as u64;
        leads += 1;
    }
    leads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enough_leads_for_the_backlog_and_no_more() {
        let leads = leads_for_events(1, 1000);
        let commands = |leads: u64| (0..leads).map(|lead| funnel::journey(1, lead).len() as u64).sum::<u64>();
        assert!(commands(leads) >= 1000);
        assert!(commands(leads - 1) < 1000);
        // About 1.4 commands per lead.
        assert!((650..=760).contains(&leads), "{leads} leads");
    }
}
