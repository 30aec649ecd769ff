//! Read-model math: each lead's journey through the funnel, folded from its
//! events, and the figures marketing and sales share — the funnel, the
//! conversion rates and velocity, and lead quality — computed from journeys.
//!
//! The exact definitions are in `docs/read-models.md`; this module is their
//! implementation. A [`Journey`] keeps every stage entry with its business
//! time, so a window can be applied to any of them later (period and cohort
//! views) and historical stage dates are never lost. Everything here is
//! pure: the projector stores journeys, the query service loads them and
//! calls these functions.

use std::collections::BTreeMap;

use crate::{LeadId, Money, Stage, Timestamp};

/// What a lead event means for its journey, without any personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JourneyStep {
    Captured {
        source: String,
        campaign: String,
        persona: String,
    },
    /// `assignee` is empty when the hand-off was not routed at once.
    Qualified {
        assignee: String,
    },
    Assigned {
        assignee: String,
    },
    Accepted {
        owner: String,
    },
    Rejected {
        reason: String,
    },
    Won {
        amount: Option<Money>,
    },
    Lost {
        reason: String,
    },
    FeedbackRecorded {
        rating: u8,
    },
    /// The lead's personal data was erased; a journey holds none, so it
    /// keeps counting as it was.
    Erased,
}

/// One entry of a lead into a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageEntry {
    pub stage: Stage,
    /// Business time (`occurred_at`).
    pub at: Timestamp,
    /// When the log recorded it (later than `at` for imported history).
    pub recorded_at: Timestamp,
}

/// A lead's path through the funnel: the attributes reports group by and
/// every stage it entered, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journey {
    pub lead_id: LeadId,
    pub source: String,
    pub campaign: String,
    pub persona: String,
    /// The owner at acceptance; empty while never accepted.
    pub owner: String,
    /// Every stage entry, the capture first; never empty.
    pub entries: Vec<StageEntry>,
    pub won_amount: Option<Money>,
    /// One per rejection, in order.
    pub rejection_reasons: Vec<String>,
    pub lost_reason: Option<String>,
    /// One per feedback event, 1 to 5.
    pub ratings: Vec<u8>,
    /// Who the lead was routed to, and when (qualifications with an
    /// assignee, reassignments), in order.
    pub assignments: Vec<(Timestamp, String)>,
}

impl Journey {
    /// The journey a capture starts; `None` for any other first step.
    pub fn start(lead_id: LeadId, at: Timestamp, recorded_at: Timestamp, step: &JourneyStep) -> Option<Self> {
        let JourneyStep::Captured { source, campaign, persona } = step else { return None };
        Some(Self {
            lead_id,
            source: source.clone(),
            campaign: campaign.clone(),
            persona: persona.clone(),
            owner: String::new(),
            entries: vec![StageEntry { stage: Stage::Captured, at, recorded_at }],
            won_amount: None,
            rejection_reasons: Vec::new(),
            lost_reason: None,
            ratings: Vec::new(),
            assignments: Vec::new(),
        })
    }

    /// Folds a later step in (a second capture changes nothing).
    pub fn apply(&mut self, at: Timestamp, recorded_at: Timestamp, step: &JourneyStep) {
        let entered = match step {
            JourneyStep::Captured { .. } => None,
            JourneyStep::Assigned { assignee } => {
                self.assignments.push((at, assignee.clone()));
                None
            }
            JourneyStep::Qualified { assignee } => {
                if !assignee.is_empty() {
                    self.assignments.push((at, assignee.clone()));
                }
                Some(Stage::Mql)
            }
            JourneyStep::Accepted { owner } => {
                self.owner = owner.clone();
                Some(Stage::Sql)
            }
            JourneyStep::Rejected { reason } => {
                self.rejection_reasons.push(reason.clone());
                Some(Stage::Rejected)
            }
            JourneyStep::Won { amount } => {
                self.won_amount = amount.clone();
                Some(Stage::Won)
            }
            JourneyStep::Lost { reason } => {
                self.lost_reason = Some(reason.clone());
                Some(Stage::Lost)
            }
            JourneyStep::FeedbackRecorded { rating } => {
                self.ratings.push(*rating);
                None
            }
            JourneyStep::Erased => None,
        };
        if let Some(stage) = entered {
            self.entries.push(StageEntry { stage, at, recorded_at });
        }
    }

    pub fn captured_at(&self) -> Timestamp {
        self.entries.first().map(|entry| entry.at).unwrap_or(Timestamp::MIN)
    }

    /// The stage the lead is in now.
    pub fn stage(&self) -> Stage {
        self.entries.last().map(|entry| entry.stage).unwrap_or(Stage::Captured)
    }

    /// When the lead last entered a stage.
    pub fn last_entry_at(&self) -> Timestamp {
        self.entries.last().map(|entry| entry.at).unwrap_or(Timestamp::MIN)
    }

    fn first_entry(&self, stage: Stage) -> Option<Timestamp> {
        self.entries.iter().find(|entry| entry.stage == stage).map(|entry| entry.at)
    }

    fn reached(&self, stage: Stage) -> bool {
        self.entries.iter().any(|entry| entry.stage == stage)
    }

    /// The first SQL entry that follows an MQL entry.
    fn first_sql_after_mql(&self) -> Option<Timestamp> {
        let first_mql = self.entries.iter().position(|entry| entry.stage == Stage::Mql)?;
        self.entries[first_mql..].iter().find(|entry| entry.stage == Stage::Sql).map(|entry| entry.at)
    }

    /// The grouping key of this lead; empty when it has no value.
    pub fn key(&self, group_by: Option<GroupBy>) -> &str {
        match group_by {
            None => "",
            Some(GroupBy::Source) => &self.source,
            Some(GroupBy::Campaign) => &self.campaign,
            Some(GroupBy::Persona) => &self.persona,
            Some(GroupBy::Owner) => &self.owner,
        }
    }
}

/// What reports group leads by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Source,
    Campaign,
    Persona,
    /// The owner at acceptance.
    Owner,
}

/// A half-open interval of business time, `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: Timestamp,
    pub to: Timestamp,
}

impl Window {
    pub const ALL_TIME: Self = Self { from: Timestamp::MIN, to: Timestamp::MAX };

    pub fn contains(&self, at: Timestamp) -> bool {
        self.from <= at && at < self.to
    }
}

/// A count per stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageCounts([u64; 6]);

impl StageCounts {
    pub fn get(&self, stage: Stage) -> u64 {
        self.0[stage_index(stage)]
    }

    fn add(&mut self, stage: Stage) {
        self.0[stage_index(stage)] += 1;
    }
}

fn stage_index(stage: Stage) -> usize {
    Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0)
}

/// The funnel of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunnelGroup {
    pub key: String,
    /// Leads in each stage now (all leads, not windowed).
    pub current: StageCounts,
    /// Leads that entered each stage at least once inside the window.
    pub period: StageCounts,
    /// Of the leads captured inside the window, those that ever reached each stage.
    pub cohort: StageCounts,
}

/// The funnel per group, groups in key order.
pub fn funnel<'a>(
    journeys: impl IntoIterator<Item = &'a Journey>,
    window: Window,
    group_by: Option<GroupBy>,
) -> Vec<FunnelGroup> {
    let mut groups: BTreeMap<String, FunnelGroup> = BTreeMap::new();
    for journey in journeys {
        let key = journey.key(group_by);
        let group = groups
            .entry(key.to_string())
            .or_insert_with(|| FunnelGroup { key: key.to_string(), ..FunnelGroup::default() });
        group.current.add(journey.stage());
        let in_cohort = window.contains(journey.captured_at());
        for stage in Stage::ALL {
            if journey.entries.iter().any(|entry| entry.stage == stage && window.contains(entry.at)) {
                group.period.add(stage);
            }
            if in_cohort && journey.reached(stage) {
                group.cohort.add(stage);
            }
        }
    }
    groups.into_values().collect()
}

/// Median and p90 of a sample of durations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DurationSummary {
    pub samples: u64,
    /// Seconds; absent for an empty sample.
    pub median_seconds: Option<f64>,
    pub p90_seconds: Option<f64>,
}

impl DurationSummary {
    /// Summarises durations given in microseconds.
    pub fn of(mut micros: Vec<i64>) -> Self {
        micros.sort_unstable();
        let seconds = |value: Option<i64>| value.map(|v| v as f64 / 1_000_000.0);
        Self {
            samples: micros.len() as u64,
            median_seconds: seconds(nearest_rank(&micros, 50)),
            p90_seconds: seconds(nearest_rank(&micros, 90)),
        }
    }
}

/// The nearest-rank percentile of sorted samples: the smallest sample with
/// at least `percent` % of the samples at or below it. `None` when empty.
pub fn nearest_rank<T: Copy>(sorted: &[T], percent: u32) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as u64;
    let rank = (u64::from(percent) * n).div_ceil(100).max(1);
    sorted.get((rank - 1) as usize).copied()
}

/// Counts of a conversion cohort.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConversionCounts {
    pub captured: u64,
    pub reached_mql: u64,
    pub reached_sql: u64,
    /// Reached SQL after having been MQL (sales-sourced leads excluded).
    pub reached_sql_after_mql: u64,
    pub won: u64,
    pub lost: u64,
}

/// Rates of a cohort; absent where the denominator is zero.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ConversionRates {
    pub lead_to_mql: Option<f64>,
    pub mql_to_sql: Option<f64>,
    pub sql_to_won: Option<f64>,
    pub lead_to_won: Option<f64>,
}

fn rate(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

/// Time from one milestone to the next, over the leads that made the step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Velocity {
    pub captured_to_mql: DurationSummary,
    pub mql_to_sql: DurationSummary,
    pub sql_to_won: DurationSummary,
    pub captured_to_won: DurationSummary,
}

/// Conversion figures of one group of a cohort.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConversionGroup {
    pub key: String,
    pub counts: ConversionCounts,
    pub rates: ConversionRates,
    /// The sum of won amounts, per currency (minor units, saturating).
    pub won_amount: BTreeMap<String, i64>,
    pub velocity: Velocity,
    /// Completed stays per stage that has a next one (CAPTURED, MQL, SQL,
    /// REJECTED): from entering the stage to entering the next.
    pub time_in_stage: Vec<(Stage, DurationSummary)>,
}

/// The stages a lead can leave, in report order.
pub const STAGES_WITH_STAYS: [Stage; 4] = [Stage::Captured, Stage::Mql, Stage::Sql, Stage::Rejected];

/// Conversion rates of the leads captured inside `window`, per group.
pub fn conversion<'a>(
    journeys: impl IntoIterator<Item = &'a Journey>,
    window: Window,
    group_by: Option<GroupBy>,
) -> Vec<ConversionGroup> {
    #[derive(Default)]
    struct Samples {
        counts: ConversionCounts,
        won_amount: BTreeMap<String, i64>,
        captured_to_mql: Vec<i64>,
        mql_to_sql: Vec<i64>,
        sql_to_won: Vec<i64>,
        captured_to_won: Vec<i64>,
        stays: BTreeMap<usize, Vec<i64>>,
    }
    let mut groups: BTreeMap<String, Samples> = BTreeMap::new();
    for journey in journeys.into_iter().filter(|j| window.contains(j.captured_at())) {
        let samples = groups.entry(journey.key(group_by).to_string()).or_default();
        let captured = journey.captured_at().as_micros();
        let first_mql = journey.first_entry(Stage::Mql);
        let first_sql = journey.first_entry(Stage::Sql);
        let won = journey.first_entry(Stage::Won);
        let sql_after_mql = journey.first_sql_after_mql();
        let counts = &mut samples.counts;
        counts.captured += 1;
        counts.reached_mql += u64::from(first_mql.is_some());
        counts.reached_sql += u64::from(first_sql.is_some());
        counts.reached_sql_after_mql += u64::from(sql_after_mql.is_some());
        counts.won += u64::from(won.is_some());
        counts.lost += u64::from(journey.reached(Stage::Lost));
        if let (Some(_), Some(amount)) = (won, &journey.won_amount) {
            let sum = samples.won_amount.entry(amount.currency.as_str().to_string()).or_default();
            *sum = sum.saturating_add(amount.amount_minor);
        }
        if let Some(mql) = first_mql {
            samples.captured_to_mql.push(mql.as_micros() - captured);
        }
        if let (Some(mql), Some(sql)) = (first_mql, sql_after_mql) {
            samples.mql_to_sql.push(sql.as_micros() - mql.as_micros());
        }
        if let (Some(sql), Some(won)) = (first_sql, won) {
            samples.sql_to_won.push(won.as_micros() - sql.as_micros());
        }
        if let Some(won) = won {
            samples.captured_to_won.push(won.as_micros() - captured);
        }
        for pair in journey.entries.windows(2) {
            samples
                .stays
                .entry(stage_index(pair[0].stage))
                .or_default()
                .push(pair[1].at.as_micros() - pair[0].at.as_micros());
        }
    }
    groups
        .into_iter()
        .map(|(key, mut s)| {
            let c = s.counts;
            ConversionGroup {
                key,
                counts: c,
                rates: ConversionRates {
                    lead_to_mql: rate(c.reached_mql, c.captured),
                    mql_to_sql: rate(c.reached_sql_after_mql, c.reached_mql),
                    sql_to_won: rate(c.won, c.reached_sql),
                    lead_to_won: rate(c.won, c.captured),
                },
                won_amount: s.won_amount,
                velocity: Velocity {
                    captured_to_mql: DurationSummary::of(s.captured_to_mql),
                    mql_to_sql: DurationSummary::of(s.mql_to_sql),
                    sql_to_won: DurationSummary::of(s.sql_to_won),
                    captured_to_won: DurationSummary::of(s.captured_to_won),
                },
                time_in_stage: STAGES_WITH_STAYS
                    .iter()
                    .map(|&stage| (stage, DurationSummary::of(s.stays.remove(&stage_index(stage)).unwrap_or_default())))
                    .collect(),
            }
        })
        .collect()
}

/// Lead quality of one group: sales' feedback loop to marketing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QualityGroup {
    pub key: String,
    /// Leads of the cohort in this group.
    pub leads: u64,
    /// Feedback events.
    pub feedback_count: u64,
    /// Mean rating over feedback events; absent without feedback.
    pub mean_rating: Option<f64>,
    /// Feedback events per rating 1..=5.
    pub rating_histogram: [u64; 5],
    /// Rejection events per reason code.
    pub rejection_reasons: BTreeMap<String, u64>,
    /// Leads lost, per lost reason code.
    pub lost_reasons: BTreeMap<String, u64>,
    /// Among leads that reached SQL: won and lost.
    pub accepted_won: u64,
    pub accepted_lost: u64,
    /// won / (won + lost) among accepted leads; absent when neither.
    pub win_rate: Option<f64>,
}

/// Lead quality of the leads captured inside `window`, per group.
pub fn quality<'a>(
    journeys: impl IntoIterator<Item = &'a Journey>,
    window: Window,
    group_by: Option<GroupBy>,
) -> Vec<QualityGroup> {
    let mut groups: BTreeMap<String, (QualityGroup, u64)> = BTreeMap::new();
    for journey in journeys.into_iter().filter(|j| window.contains(j.captured_at())) {
        let key = journey.key(group_by);
        let (group, rating_sum) = groups
            .entry(key.to_string())
            .or_insert_with(|| (QualityGroup { key: key.to_string(), ..QualityGroup::default() }, 0));
        group.leads += 1;
        for &rating in &journey.ratings {
            group.feedback_count += 1;
            *rating_sum += u64::from(rating);
            if let Some(bucket) = group.rating_histogram.get_mut(usize::from(rating.clamp(1, 5)) - 1) {
                *bucket += 1;
            }
        }
        for reason in &journey.rejection_reasons {
            *group.rejection_reasons.entry(reason.clone()).or_default() += 1;
        }
        if let Some(reason) = &journey.lost_reason {
            *group.lost_reasons.entry(reason.clone()).or_default() += 1;
        }
        if journey.reached(Stage::Sql) {
            group.accepted_won += u64::from(journey.reached(Stage::Won));
            group.accepted_lost += u64::from(journey.reached(Stage::Lost));
        }
    }
    groups
        .into_values()
        .map(|(mut group, rating_sum)| {
            group.mean_rating = (group.feedback_count > 0).then(|| rating_sum as f64 / group.feedback_count as f64);
            group.win_rate = rate(group.accepted_won, group.accepted_won + group.accepted_lost);
            group
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000;

    fn at(hours: i64) -> Timestamp {
        Timestamp::from_micros(1_800_000_000_000_000 + hours * HOUR).expect("in range")
    }

    fn journey(n: u128, source: &str, steps: &[(i64, JourneyStep)]) -> Journey {
        let capture = JourneyStep::Captured { source: source.into(), campaign: String::new(), persona: String::new() };
        let mut journey =
            Journey::start(LeadId::from_uuid(uuid::Uuid::from_u128(n)), at(0), at(0), &capture).expect("a capture");
        for (hours, step) in steps {
            journey.apply(at(*hours), at(*hours), step);
        }
        journey
    }

    #[test]
    fn nearest_rank_is_a_data_value() {
        assert_eq!(nearest_rank::<i64>(&[], 50), None);
        assert_eq!(nearest_rank(&[7], 50), Some(7));
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 50), Some(2));
        assert_eq!(nearest_rank(&[1, 2, 3, 4, 5], 50), Some(3));
        assert_eq!(nearest_rank(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90), Some(9));
        assert_eq!(nearest_rank(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 90), Some(10));
    }

    #[test]
    fn the_funnel_counts_what_leads_actually_entered() {
        let leads = [
            // Lost straight from capture: reached CAPTURED and LOST only.
            journey(1, "web", &[(2, JourneyStep::Lost { reason: "no-budget".into() })]),
            // Sales-sourced: SQL without MQL.
            journey(2, "web", &[(3, JourneyStep::Accepted { owner: "ae".into() })]),
            // Qualified twice inside the window: MQL counts once.
            journey(
                3,
                "",
                &[
                    (1, JourneyStep::Qualified { assignee: String::new() }),
                    (2, JourneyStep::Rejected { reason: "not-ready".into() }),
                    (30, JourneyStep::Qualified { assignee: String::new() }),
                ],
            ),
        ];
        let window = Window { from: at(0), to: at(24) };
        let groups = funnel(&leads, window, Some(GroupBy::Source));
        assert_eq!(groups.iter().map(|g| g.key.as_str()).collect::<Vec<_>>(), ["", "web"]);
        let web = &groups[1];
        assert_eq!(web.current.get(Stage::Lost), 1);
        assert_eq!(web.current.get(Stage::Sql), 1);
        assert_eq!(web.cohort.get(Stage::Mql), 0, "neither web lead was ever an MQL");
        assert_eq!(web.cohort.get(Stage::Sql), 1);
        let other = &groups[0];
        assert_eq!(other.period.get(Stage::Mql), 1, "the second MQL entry is outside the window");
        assert_eq!(other.current.get(Stage::Mql), 1);
        assert_eq!(other.period.get(Stage::Rejected), 1);
    }

    #[test]
    fn conversion_keeps_sales_sourced_leads_out_of_mql_to_sql() {
        let leads = [
            journey(
                1,
                "",
                &[
                    (1, JourneyStep::Qualified { assignee: String::new() }),
                    (3, JourneyStep::Accepted { owner: "ae".into() }),
                ],
            ),
            journey(
                2,
                "",
                &[(5, JourneyStep::Accepted { owner: "ae".into() }), (9, JourneyStep::Won { amount: None })],
            ),
            journey(3, "", &[(2, JourneyStep::Qualified { assignee: String::new() })]),
        ];
        let groups = conversion(&leads, Window::ALL_TIME, None);
        let c = groups[0].counts;
        assert_eq!((c.captured, c.reached_mql, c.reached_sql, c.reached_sql_after_mql, c.won), (3, 2, 2, 1, 1));
        assert_eq!(groups[0].rates.mql_to_sql, Some(0.5));
        assert_eq!(groups[0].rates.sql_to_won, Some(0.5));
        assert_eq!(groups[0].velocity.mql_to_sql.median_seconds, Some(2.0 * 3600.0));
        assert_eq!(groups[0].velocity.captured_to_won.median_seconds, Some(9.0 * 3600.0));
        let captured_stays = groups[0].time_in_stage[0].1;
        assert_eq!(captured_stays.samples, 3);
        assert_eq!(captured_stays.median_seconds, Some(2.0 * 3600.0), "samples 1 h, 2 h, 5 h");
    }

    #[test]
    fn rates_are_absent_without_a_denominator() {
        let groups = conversion(&[journey(1, "", &[])], Window::ALL_TIME, None);
        assert_eq!(groups[0].rates.mql_to_sql, None);
        assert_eq!(groups[0].rates.lead_to_mql, Some(0.0));
        assert!(quality(&[journey(1, "", &[])], Window::ALL_TIME, None)[0].mean_rating.is_none());
    }
}
