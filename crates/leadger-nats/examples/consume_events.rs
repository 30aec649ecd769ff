//! A consumer of leadger's lead events on NATS JetStream: prints one line per
//! event (log position, `ce-type`, lead id, payload) and acks it.
//!
//! It shows the three things every consumer needs (docs/consuming-events.md):
//! a pull consumer with explicit acks, where to start (`--durable` resumes
//! where the last run acked; `--from-position` skips what was already
//! processed; `--only-new` starts at the stream's end), and dedupe by `ce-id`,
//! because JetStream delivers at least once.
//!
//! ```sh
//! cargo run -p leadger-nats --example consume_events -- \
//!     --url nats://127.0.0.1:4222 --durable crm-sync --from-position 0
//! ```

use std::collections::HashSet;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use clap::Parser;
use futures_util::StreamExt;

#[derive(Debug, Parser)]
#[command(about = "Print leadger's lead events from NATS JetStream, one line per event")]
struct Args {
    /// NATS server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// The JetStream stream leadger publishes to (`--nats-stream` of leadger).
    #[arg(long, default_value = "LEADS_V1_EVENTS")]
    stream: String,
    /// Durable consumer name: the server remembers what was acked, and a
    /// later run with the same name resumes there. Ephemeral when absent.
    #[arg(long)]
    durable: Option<String>,
    /// Skip (ack without printing) events whose `ce-leadposition` is at most P:
    /// what an earlier run already processed.
    #[arg(long, value_name = "P", default_value_t = 0)]
    from_position: u64,
    /// Only events published after the consumer is created (DeliverPolicy
    /// New) instead of the whole stream (DeliverPolicy All).
    #[arg(long, conflicts_with = "from_position")]
    only_new: bool,
    /// Which subjects to receive: `leads.v1.events.qualified.>` for one
    /// event type, `leads.v1.events.*.<lead_id>` for one lead.
    #[arg(long, default_value = "leads.v1.events.>")]
    subject_filter: String,
}

/// One lead event, as read from the CloudEvents headers.
struct LeadEvent<'a> {
    id: &'a str,
    position: u64,
    event_type: &'a str,
    lead_id: &'a str,
}

impl<'a> LeadEvent<'a> {
    /// None when a header is missing or malformed. The values read here are
    /// never percent-encoded (only a configured `ce-source` can be).
    fn from_headers(headers: &'a HeaderMap) -> Option<Self> {
        let header = |name: &str| headers.get(name).map(|value| value.as_str());
        Some(Self {
            id: header("ce-id")?,
            position: header("ce-leadposition")?.parse().ok()?,
            event_type: header("ce-type")?,
            lead_id: header("ce-subject")?,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = async_nats::connect(&args.url).await.with_context(|| format!("connect to {}", args.url))?;
    let jetstream = jetstream::new(client);
    let stream =
        jetstream.get_stream(&args.stream).await.with_context(|| format!("find the stream {}", args.stream))?;

    let config = consumer::pull::Config {
        durable_name: args.durable.clone(),
        deliver_policy: if args.only_new { consumer::DeliverPolicy::New } else { consumer::DeliverPolicy::All },
        ack_policy: consumer::AckPolicy::Explicit,
        filter_subject: args.subject_filter.clone(),
        ..Default::default()
    };
    // An existing durable keeps the configuration it was created with (and
    // its position); delete it (`nats consumer rm`) to start over.
    let consumer = match &args.durable {
        Some(name) => stream.get_or_create_consumer(name, config).await,
        None => stream.create_consumer(config).await,
    }
    .context("create the consumer")?;
    let mut messages = consumer.messages().await.context("pull messages")?;

    // Ids seen in this run. A long-running consumer would rather keep the
    // last position it processed (positions only grow) than a growing set.
    let mut seen = HashSet::new();
    loop {
        let message = tokio::select! {
            next = messages.next() => match next {
                Some(message) => message.context("receive a message")?,
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        };
        match message.headers.as_ref().and_then(LeadEvent::from_headers) {
            None => eprintln!("skipping a message on {} without valid ce-* headers", message.subject),
            Some(event) if event.position <= args.from_position => {}
            Some(event) if !seen.insert(event.id.to_string()) => {
                eprintln!("skipping event {} (position {}): delivered again", event.id, event.position);
            }
            Some(event) => {
                let payload = String::from_utf8_lossy(&message.payload);
                println!("{} {} {} {}", event.position, event.event_type, event.lead_id, payload);
            }
        }
        // Ack only after the event is handled: if this process dies first,
        // the server delivers it again (to this durable's next run).
        message.ack().await.map_err(anyhow::Error::from_boxed).context("ack")?;
    }
    Ok(())
}
