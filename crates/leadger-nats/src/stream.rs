//! The JetStream stream the relay publishes to, created or updated at
//! start-up so a new deployment needs no manual `nats` commands.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, StorageType};

use crate::cloudevent::EVENT_SUBJECT_PREFIX;

/// The configurable part of the event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    pub name: String,
    /// 1 on a single server; 3 on a cluster for durability.
    pub replicas: usize,
    /// How long messages are kept; zero keeps them forever.
    pub max_age: Duration,
    /// How long JetStream remembers message ids to drop repeated publishes.
    pub duplicate_window: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            name: "LEADS_V1_EVENTS".to_string(),
            replicas: 1,
            max_age: Duration::ZERO,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

impl StreamSettings {
    pub fn to_config(&self) -> Config {
        Config {
            name: self.name.clone(),
            description: Some("leadger's lead events, one message per log position, in log order".to_string()),
            subjects: vec![format!("{EVENT_SUBJECT_PREFIX}.>")],
            storage: StorageType::File,
            num_replicas: self.replicas,
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            allow_direct: true,
            ..Config::default()
        }
    }
}
