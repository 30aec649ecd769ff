//! The report of an `all` run: `docs/benchmarks.md` and its charts, written
//! from the results alone, so that every figure in it is one the harness
//! measured. The targets are checked here, against the same results, and
//! each says "met" or "missed"; a scenario that was skipped says "not
//! measured". The analysis of the misses, which needs a person and a
//! profiler, lives in `docs/benchmark-analysis.md`, which this report links.

use std::fmt::Write as _;

use crate::all::AllResults;
use crate::measure::LevelResult;
use crate::rebuild::mib;
use crate::report::{delay_table, markdown_table, rebuild_table, throughput_table};
use crate::svg::{Chart, Series};

const NOT_MEASURED: &str = "not measured";

/// One target: what it asks, what was measured, and whether it holds.
struct Target {
    name: &'static str,
    goal: String,
    measured: Option<String>,
    met: Option<bool>,
}

impl Target {
    fn new(name: &'static str, goal: impl Into<String>, figure: Option<(String, bool)>) -> Self {
        let (measured, met) = figure.map_or((None, None), |(text, met)| (Some(text), Some(met)));
        Self { name, goal: goal.into(), measured, met }
    }
}

fn level_at(levels: &[LevelResult], clients: usize) -> Option<&LevelResult> {
    levels.iter().find(|level| level.clients == clients)
}

fn best_rate(levels: &[LevelResult]) -> f64 {
    levels.iter().map(|level| level.commands_per_second).fold(0.0, f64::max)
}

fn targets(r: &AllResults<'_>) -> Vec<Target> {
    let pg64 = level_at(&r.grpc_postgres.levels, 64);
    let echo_best = r.echo.as_deref().map(best_rate);
    let best_peer =
        r.peers.iter().map(|p| p.events_per_second).fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
    let store = r.store.as_ref();
    let best_batched = store
        .map(|s| s.raw_inserts.iter().filter(|i| i.plan.batch > 1).map(|i| i.commands_per_second).fold(0.0, f64::max));
    let worst_freshness = r
        .freshness
        .as_ref()
        .and_then(|f| f.result.read_models.iter().max_by(|a, b| a.delay_ms.p99.total_cmp(&b.delay_ms.p99)));
    let mut targets = vec![
        Target::new(
            "Commands over gRPC, PostgreSQL, 64 clients",
            "≥ 20,000 commands/s",
            pg64.map(|l| (format!("{:.0} commands/s", l.commands_per_second), l.commands_per_second >= 20_000.0)),
        ),
        Target::new(
            "… and half of the echo service's best rate",
            echo_best.map_or_else(|| NOT_MEASURED.to_string(), |e| format!("≥ {:.0} commands/s", e / 2.0)),
            pg64.zip(echo_best).map(|(l, e)| {
                (
                    format!("{:.0} commands/s ({:.2} of echo)", l.commands_per_second, l.commands_per_second / e),
                    l.commands_per_second >= e / 2.0,
                )
            }),
        ),
        Target::new(
            "Store layer in process vs the best peer, 64 writers",
            "≥ 5× the best peer",
            store.zip(best_peer).map(|(s, p)| {
                let ratio = s.store.events_per_second / p;
                (format!("{:.0} vs {p:.0} events/s: {ratio:.1}×", s.store.events_per_second), ratio >= 5.0)
            }),
        ),
        Target::new(
            "Store layer in process vs batched raw inserts",
            "≥ 50 % of the best batched raw rate",
            store.zip(best_batched).map(|(s, b)| {
                let share = s.store.events_per_second / b;
                (format!("{:.0} vs {b:.0} commands/s: {:.0} %", s.store.events_per_second, share * 100.0), share >= 0.5)
            }),
        ),
        Target::new(
            "… and vs batched raw inserts one transaction at a time",
            "≥ 50 % (as above, with positions in commit order)",
            store.and_then(|s| {
                let serial = s.raw_inserts.iter().find(|i| i.plan.batch > 1 && i.plan.writers == 1)?;
                let share = s.store.events_per_second / serial.commands_per_second;
                Some((
                    format!(
                        "{:.0} vs {:.0} commands/s: {:.0} %",
                        s.store.events_per_second,
                        serial.commands_per_second,
                        share * 100.0
                    ),
                    share >= 0.5,
                ))
            }),
        ),
        Target::new(
            "p99 command latency at half the best rate",
            "≤ 10 ms",
            r.freshness.as_ref().map(|f| {
                let p99 = f.result.command_latency_ms.p99;
                (format!("{p99:.2} ms at {:.0} commands/s", f.result.commands_per_second), p99 <= 10.0)
            }),
        ),
        Target::new(
            "Projection freshness p99 (worst read model)",
            "≤ 100 ms",
            worst_freshness.map(|m| (format!("{:.1} ms ({})", m.delay_ms.p99, m.read_model), m.delay_ms.p99 <= 100.0)),
        ),
        Target::new(
            "Rebuild of the read models",
            "≥ 200,000 events/s",
            r.rebuild
                .as_ref()
                .map(|b| (format!("{:.0} events/s", b.events_per_second), b.events_per_second >= 200_000.0)),
        ),
    ];
    if let Some(nats) = &r.nats {
        for delay in &nats.delays {
            targets.push(Target::new(
                "NATS commit-to-consumer p99",
                format!("≤ 50 ms ({})", delay.relay),
                Some((format!("{:.1} ms", delay.delay_ms.p99), delay.delay_ms.p99 <= 50.0)),
            ));
        }
        targets.push(Target::new(
            "NATS relay vs raw JetStream publishing",
            "≥ 50 %",
            Some((
                format!(
                    "{:.0} vs {:.0} msg/s: {:.0} %",
                    nats.relay_messages_per_second,
                    nats.raw_messages_per_second,
                    nats.relay_to_raw * 100.0
                ),
                nats.relay_to_raw >= 0.5,
            )),
        ));
    } else {
        targets.push(Target::new("NATS", "commit-to-consumer p99 ≤ 50 ms; relay ≥ 50 % of raw", None));
    }
    targets.push(Target::new(
        "Server peak RSS under scenario 1 (PostgreSQL)",
        "≤ 150 MiB",
        r.grpc_postgres
            .server_peak_rss_kib
            .map(|kib| (format!("{:.1} MiB", mib(kib as f64)), mib(kib as f64) <= 150.0)),
    ));
    targets
}

/// The charts, by file name.
pub fn charts(r: &AllResults<'_>) -> Vec<(String, String)> {
    let categories: Vec<String> = r.grpc_postgres.levels.iter().map(|l| l.clients.to_string()).collect();
    let at_levels = |levels: &[LevelResult], value: fn(&LevelResult) -> f64| -> Vec<Option<f64>> {
        r.grpc_postgres.levels.iter().map(|l| level_at(levels, l.clients).map(value)).collect()
    };
    let mut throughput = vec![Series {
        name: "leadger, PostgreSQL".into(),
        values: at_levels(&r.grpc_postgres.levels, |l| l.commands_per_second),
    }];
    if let Some(sqlite) = &r.grpc_sqlite {
        throughput.push(Series {
            name: "leadger, SQLite".into(),
            values: at_levels(&sqlite.levels, |l| l.commands_per_second),
        });
    }
    if let Some(echo) = &r.echo {
        throughput
            .push(Series { name: "gRPC echo (limit)".into(), values: at_levels(echo, |l| l.commands_per_second) });
    }
    let mut charts = vec![(
        "throughput.svg".to_string(),
        Chart {
            title: "Commands/s over gRPC by concurrent clients",
            x_label: "concurrent clients",
            y_label: "commands/s",
            categories: categories.clone(),
            series: throughput,
        }
        .lines(),
    )];
    let mut latency_charts = vec![("latency-postgres.svg", "PostgreSQL", &r.grpc_postgres.levels)];
    if let Some(sqlite) = &r.grpc_sqlite {
        latency_charts.push(("latency-sqlite.svg", "SQLite", &sqlite.levels));
    }
    for (file, backend, levels) in latency_charts {
        let series = vec![
            Series { name: "p50".into(), values: at_levels(levels, |l| l.latency_ms.p50) },
            Series { name: "p99".into(), values: at_levels(levels, |l| l.latency_ms.p99) },
            Series { name: "p99.9".into(), values: at_levels(levels, |l| l.latency_ms.p99_9) },
        ];
        let title = format!("Command latency over gRPC, {backend}");
        charts.push((
            file.to_string(),
            Chart {
                title: &title,
                x_label: "concurrent clients",
                y_label: "milliseconds",
                categories: categories.clone(),
                series,
            }
            .bars(),
        ));
    }
    let mut names = Vec::new();
    let mut values = Vec::new();
    if let Some(store) = &r.store {
        names.push("leadger store layer".to_string());
        values.push(Some(store.store.events_per_second));
    }
    for peer in &r.peers {
        names.push(peer.peer.clone());
        values.push(Some(peer.events_per_second));
    }
    if let Some(store) = &r.store {
        for insert in &store.raw_inserts {
            names.push(format!("raw, {} per tx", insert.plan.batch));
            values.push(Some(insert.commands_per_second));
        }
    }
    if !names.is_empty() {
        let title = format!("Events/s in process on PostgreSQL, {} writers", r.parameters.writers);
        charts.push((
            "store-vs-peers.svg".to_string(),
            Chart {
                title: &title,
                x_label: "",
                y_label: "events (commands)/s",
                categories: names,
                series: vec![Series { name: "events/s".into(), values }],
            }
            .bars(),
        ));
    }
    charts
}

fn cell(value: Option<String>) -> String {
    value.unwrap_or_else(|| NOT_MEASURED.to_string())
}

/// The whole report.
pub fn markdown(r: &AllResults<'_>, charts: &str) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let memory =
        m.memory_total_kib.map_or_else(|| "unknown".into(), |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0));
    let commit = match (&r.revision.commit, r.revision.dirty) {
        (Some(commit), Some(true)) => format!("`{commit}` (with uncommitted changes)"),
        (Some(commit), _) => format!("`{commit}`"),
        (None, _) => "unknown".into(),
    };
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "This file is written by the benchmark harness (`crates/leadger-bench`), not by hand: every figure below is one it measured in a single run, \
         with the limits and the peers beside leadger on the same machine minutes apart. Run it again with:\n\n\
         ```sh\ncargo run --release -p leadger-bench -- all\n```\n\n\
         It installs what is missing (`tests/install-tools.sh`: PostgreSQL, the pinned nats-server), builds `leadger` and the peer driver (`bench/peers`), starts its own throwaway PostgreSQL clusters, SQLite files and nats-server, \
         and writes this file, its charts in `docs/{charts}/`, and the JSON of everything in \
         `target/bench/results.json`. Scenario sizes are flags (`--help`); `--skip` leaves scenarios out. The figures are not a test: nothing fails when one is low. \
         What the misses come from, with profiles, is in [benchmark-analysis.md](benchmark-analysis.md); the older, single-scenario runs are there too.\n"
    );
    let _ = writeln!(md, "## This run\n");
    let _ = writeln!(md, "- command: `{}`", r.command_line.join(" "));
    let _ = writeln!(md, "- code: commit {commit}; {}", r.tool);
    let _ = writeln!(
        md,
        "- machine: {} cores ({}), {memory} RAM, Linux {}; the load generator shares the cores with what it measures",
        m.cores,
        m.cpu_model.clone().unwrap_or_else(|| "unknown CPU".into()),
        m.kernel.clone().unwrap_or_else(|| "unknown".into())
    );
    let _ = writeln!(
        md,
        "- {}; databases on {}; {}",
        m.postgres_version.clone().unwrap_or_else(|| "PostgreSQL version unknown".into()),
        m.data_filesystem.clone().unwrap_or_else(|| "an unknown filesystem".into()),
        r.nats_server_version.as_ref().map_or_else(|| "nats-server not used".into(), |v| format!("nats-server {v}"))
    );
    let _ = writeln!(md, "- scenarios took {:.0} s (builds not counted)\n", r.run_seconds);
    let _ = writeln!(
        md,
        "The workload everywhere is the same sales funnel: each lead is captured; 15 % become MQL (assigned to one of 20 reps), half of those are accepted \
         and half rejected, a quarter of the SQLs are closed won and the rest lost, and 30 % of the leads that reached MQL get feedback: about 1.4 commands \
         per lead. Each lead's path comes from a seeded generator, so every scenario plays the same mix. Durability is PostgreSQL's default \
         (`fsync` and `synchronous_commit` on) and SQLite's WAL with `synchronous=FULL`: a command counts once it is committed.\n"
    );

    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| target | goal | measured | verdict |\n|---|---|---|---|");
    for t in targets(r) {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => NOT_MEASURED,
        };
        let _ = writeln!(md, "| {} | {} | {} | {verdict} |", t.name, t.goal, cell(t.measured));
    }
    md.push('\n');

    let _ = writeln!(md, "## 1. Commands over gRPC\n");
    let _ = writeln!(
        md,
        "The release `leadger serve` (with its projector) on a fresh database, driven by `--clients` tokio tasks over 4 HTTP/2 connections; each task drives \
         one lead at a time and waits for each answer. {} s warm-up, then {} s measured per level; all levels share one server and database. CPU columns are \
         cores kept busy, from `/proc`.\n",
        r.parameters.warmup_secs, r.parameters.duration_secs
    );
    let _ = writeln!(md, "![throughput]({charts}/throughput.svg)\n");
    let _ = writeln!(md, "### PostgreSQL\n\n{}", markdown_table(&r.grpc_postgres.levels));
    let _ = writeln!(md, "![latency, PostgreSQL]({charts}/latency-postgres.svg)\n");
    match &r.grpc_sqlite {
        Some(sqlite) => {
            let _ = writeln!(md, "### SQLite (the embedded default)\n\n{}", markdown_table(&sqlite.levels));
            let _ = writeln!(md, "![latency, SQLite]({charts}/latency-sqlite.svg)\n");
        }
        None => {
            let _ = writeln!(md, "### SQLite\n\n{NOT_MEASURED}\n");
        }
    }

    let _ = writeln!(md, "## 2. The limits beside it\n");
    let _ = writeln!(md, "### gRPC: an echo service\n");
    match &r.echo {
        Some(echo) => {
            let _ = writeln!(
                md,
                "`leadger-bench echo-server`: the same `LeadCommandService` on the same runtime (tokio, tonic, leadger's strict prost codec, TCP_NODELAY), \
                 answering each command at once with a result of the same shape, storing nothing; driven by the same load generator with the same messages. \
                 (The **server CPU** column is the echo process.)\n\n{}",
                markdown_table(echo)
            );
            let _ = writeln!(md, "| clients | leadger PostgreSQL / echo | leadger SQLite / echo |\n|--:|--:|--:|");
            for level in echo {
                let share = |levels: Option<&[LevelResult]>| {
                    levels.and_then(|l| level_at(l, level.clients)).map_or_else(
                        || "-".into(),
                        |l| format!("{:.2}", l.commands_per_second / level.commands_per_second),
                    )
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} |",
                    level.clients,
                    share(Some(&r.grpc_postgres.levels)),
                    share(r.grpc_sqlite.as_ref().map(|s| s.levels.as_slice()))
                );
            }
            md.push('\n');
        }
        None => {
            let _ = writeln!(md, "{NOT_MEASURED}\n");
        }
    }
    let _ = writeln!(md, "### PostgreSQL: raw inserts of leadger's rows\n");
    match &r.store {
        Some(store) => {
            let _ = writeln!(
                md,
                "After the in-process store run of scenario 3, every command's rows (its event, its lead's row, its idempotency receipt: {} rows) are read \
                 back and inserted raw into a fresh database with leadger's schema, in one statement of `UNNEST` inserts per transaction, as leadger's \
                 committer writes them, but with no lock, no decision and no encryption. Batch sizes: 1, leadger's own median batch in that run \
                 ({} commands), and 500. One transaction in flight at a time is what a log with positions in commit order allows (leadger's \
                 append lock serialises its batches); several at a time, in no order, are what the database takes.\n",
                crate::limits::ROWS_PER_COMMAND,
                store.median_batch
            );
            let _ = writeln!(
                md,
                "| commands per transaction | transactions at once | commands/s | rows/s | tx p50 ms | tx p99 ms | leadger store layer / this | leadger gRPC (64 clients) / this |\n|--:|--:|--:|--:|--:|--:|--:|--:|"
            );
            let pg64 = level_at(&r.grpc_postgres.levels, 64).map(|l| l.commands_per_second);
            for insert in &store.raw_inserts {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
                    insert.plan.batch,
                    insert.plan.writers,
                    insert.commands_per_second,
                    insert.rows_per_second,
                    insert.transaction_latency_ms.p50,
                    insert.transaction_latency_ms.p99,
                    store.store.events_per_second / insert.commands_per_second,
                    pg64.map_or_else(|| "-".into(), |rate| format!("{:.2}", rate / insert.commands_per_second)),
                );
            }
            md.push('\n');
        }
        None => {
            let _ = writeln!(md, "{NOT_MEASURED}\n");
        }
    }

    let _ = writeln!(md, "## 3. leadger's store layer and its peers, in process\n");
    let _ = writeln!(
        md,
        "Each driven in process through its own public API with the same lead aggregate and funnel, by {} concurrent writers (each plays one lead at a time, \
         one command after the other), on the same PostgreSQL cluster, each in a fresh database, {} s warm-up and {} s measured. leadger: a `CommandGateway` \
         in front of its group committer on `PostgresLog` (with its personal-data encryption). The peers (`bench/peers`, its own Cargo workspace since they \
         pin sqlx 0.8) commit one transaction per command, as their APIs do.\n",
        r.parameters.writers, r.parameters.warmup_secs, r.parameters.duration_secs
    );
    let _ = writeln!(
        md,
        "| store | crates | events/s | p50 ms | p99 ms | p99.9 ms | errors | retries | leadger / this |\n|---|---|--:|--:|--:|--:|--:|--:|--:|"
    );
    let store_rate = r.store.as_ref().map(|s| s.store.events_per_second);
    if let Some(store) = &r.store {
        let s = &store.store;
        let _ = writeln!(
            md,
            "| leadger store layer | leadger-store {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | - | 1.00 |",
            env!("CARGO_PKG_VERSION"),
            s.events_per_second,
            s.latency_ms.p50,
            s.latency_ms.p99,
            s.latency_ms.p99_9,
            s.errors
        );
    }
    for peer in &r.peers {
        let crates: Vec<String> = peer.crates.iter().map(|(name, version)| format!("{name} {version}")).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            peer.peer,
            crates.join(", "),
            peer.events_per_second,
            peer.latency_ms.p50,
            peer.latency_ms.p99,
            peer.latency_ms.p999,
            peer.errors.values().sum::<u64>(),
            peer.retries,
            store_rate.map_or_else(|| "-".into(), |rate| format!("{:.1}", rate / peer.events_per_second))
        );
    }
    if r.store.is_none() && r.peers.is_empty() {
        let _ = writeln!(md, "| {NOT_MEASURED} | | | | | | | | |");
    }
    for peer in &r.peers {
        for note in &peer.notes {
            let _ = writeln!(md, "\n- {}: {note}", peer.peer);
        }
    }
    let _ = writeln!(md, "\n![store vs peers]({charts}/store-vs-peers.svg)\n");

    let _ = writeln!(md, "## 4. Projection freshness\n");
    match &r.freshness {
        Some(f) => {
            let result = &f.result;
            let _ = writeln!(
                md,
                "A fresh PostgreSQL database and `leadger serve` with its projector, under an open-loop load of {} commands/s (half the best rate of \
                 scenario 1) for {:.0} s. A prober waits for the next acknowledged command and at once asks one read model (in turn) for its figures with \
                 `min_position` = that command's position; the delay runs from the acknowledgement to that answer, so it includes the query. Commands \
                 answered: {} ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms; {} failed.\n",
                result.rate,
                result.seconds,
                result.commands,
                result.commands_per_second,
                result.command_latency_ms.p50,
                result.command_latency_ms.p99,
                result.command_latency_ms.p99_9,
                result.errors
            );
            let _ = writeln!(
                md,
                "| read model | probes | delay p50 ms | delay p99 ms | delay max ms | query p50 ms | query p99 ms |\n|---|--:|--:|--:|--:|--:|--:|"
            );
            for model in &result.read_models {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    model.read_model,
                    model.probes,
                    model.delay_ms.p50,
                    model.delay_ms.p99,
                    model.delay_ms.max,
                    model.query_ms.p50,
                    model.query_ms.p99
                );
            }
            md.push('\n');
        }
        None => {
            let _ = writeln!(md, "{NOT_MEASURED}\n");
        }
    }

    let _ = writeln!(md, "## 5. Rebuild\n");
    match &r.rebuild {
        Some(b) => {
            let _ = writeln!(
                md,
                "`leadger project --rebuild` on a PostgreSQL log of {} events ({} leads, loaded through gRPC by {} clients at {:.0} commands/s); wall time from \
                 the process start to its exit, peak RSS from `VmHWM`.\n\n{}",
                b.backlog.events,
                b.backlog.leads,
                b.backlog.clients,
                b.backlog.commands_per_second,
                rebuild_table(b)
            );
        }
        None => {
            let _ = writeln!(md, "{NOT_MEASURED}\n");
        }
    }

    let _ = writeln!(md, "## 6. NATS publication\n");
    match &r.nats {
        Some(n) => {
            let _ = writeln!(
                md,
                "A PostgreSQL log of {} events is published to JetStream by a relay, and the same messages again by the bench's own async-nats client with the \
                 same window of acknowledgements in flight (the limit). Then an open-loop load runs while a consumer records when each event arrives.\n\n{}\n{}",
                n.backlog.events,
                throughput_table(n),
                delay_table(n)
            );
        }
        None => {
            let _ = writeln!(md, "{NOT_MEASURED}\n");
        }
    }

    let _ = writeln!(md, "## 7. Memory\n");
    let _ = writeln!(md, "| process | during | peak RSS |\n|---|---|--:|");
    let rss =
        |kib: Option<u64>| kib.map_or_else(|| NOT_MEASURED.to_string(), |kib| format!("{:.1} MiB", mib(kib as f64)));
    let _ = writeln!(
        md,
        "| `leadger serve` with its projector, PostgreSQL | scenario 1 | {} |",
        rss(r.grpc_postgres.server_peak_rss_kib)
    );
    let _ = writeln!(
        md,
        "| `leadger serve` with its projector, SQLite | scenario 1 | {} |",
        rss(r.grpc_sqlite.as_ref().and_then(|s| s.server_peak_rss_kib))
    );
    let _ = writeln!(
        md,
        "| `leadger serve` with its projector, PostgreSQL | scenario 4 | {} |",
        rss(r.freshness.as_ref().and_then(|f| f.server_peak_rss_kib))
    );
    let _ = writeln!(
        md,
        "| `leadger project --rebuild` (median of rounds) | scenario 5 | {} |",
        r.rebuild.as_ref().map_or_else(|| NOT_MEASURED.to_string(), |b| format!("{:.1} MiB", mib(b.peak_rss_kib)))
    );
    md
}
