//! `stratum-bench`: load generator, receiver and measurements against the real `stratum`
//! binary and a real PostgreSQL. Every scenario prints its figures and ends with one line
//! of JSON (`{"scenario": …}`); `summarize` turns such lines into a table.
//!
//! These are measurements, not tests: nothing here asserts a speed.

mod audit_chain;
mod engine;
mod fanout;
mod harness;
mod hot_tenant;
mod latency;
mod receiver;
mod summarize;
mod throughput;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "stratum-bench", about = "Stratum benchmarks (print figures)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// End-to-end deliveries per second from a backlog enqueued with SQL.
    Throughput(throughput::Args),
    /// Event -> receipt latency at a steady rate of real API calls.
    Latency(latency::LatencyArgs),
    /// One event fanned out to 1,000 webhooks.
    Fanout(fanout::FanoutArgs),
    /// Latency of normal webhooks with and without one 10 s receiver beside them.
    Isolation(latency::IsolationArgs),
    /// Percentiles of one tenant create (change + audit + event + fan-out), no worker.
    TenantCreate(fanout::TenantCreateArgs),
    /// One tenant PATCHed at a fixed rate: API latency, statuses, deliveries, lost updates.
    HotTenant(hot_tenant::HotTenantArgs),
    /// API write rate with audit sealing on vs off, and the sealing lag.
    AuditChain(audit_chain::AuditChainArgs),
    /// Live delivery latency without and during a 100,000-event replay.
    Replay(latency::ReplayArgs),
    /// Issue 11's table at the binary's default delivery settings: every row with the
    /// machine's busy share, the CPU split, and lost/duplicated deliveries.
    Engine(engine::EngineArgs),
    /// Reads the scenarios' JSON summary lines (files, or stdin) and prints a table.
    Summarize {
        /// Files holding the output of scenarios; stdin when none.
        files: Vec<std::path::PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Cmd::Throughput(a) => throughput::run(a).await,
            Cmd::Latency(a) => latency::run_latency(a).await,
            Cmd::Fanout(a) => fanout::run_fanout(a).await,
            Cmd::Isolation(a) => latency::run_isolation(a).await,
            Cmd::TenantCreate(a) => fanout::run_tenant_create(a).await,
            Cmd::HotTenant(a) => hot_tenant::run_hot_tenant(a).await,
            Cmd::AuditChain(a) => audit_chain::run(a).await,
            Cmd::Replay(a) => latency::run_replay(a).await,
            Cmd::Engine(a) => engine::run(a).await,
            Cmd::Summarize { files } => summarize::run(&files),
        }
    })
}
