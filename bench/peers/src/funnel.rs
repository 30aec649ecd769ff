//! The sales funnel leadger's benchmark plays: which commands one lead goes
//! through, drawn from a seeded generator so a run is reproducible.
//!
//! A copy of `crates/leadger-bench/src/funnel.rs` in the main workspace (this
//! workspace must not depend on that one); the test `the_copy_matches_leadger`
//! in `main.rs` fails if the two ever draw different journeys.
//!
//! Each lead's journey depends only on the seed and the lead's number, never
//! on which writer task drives it or when.

/// Share of captured leads that marketing qualifies (MQL).
const MQL_SHARE: f64 = 0.15;
/// Share of MQLs that sales accepts (SQL); the others are rejected.
const ACCEPT_SHARE: f64 = 0.5;
/// Share of SQLs closed won; the others are closed lost.
const WON_SHARE: f64 = 0.25;
/// Share of leads that reached MQL on which sales leaves feedback.
const FEEDBACK_SHARE: f64 = 0.3;
/// Sales reps an MQL can be assigned to.
const SALES_REPS: u64 = 20;
const SOURCES: [&str; 4] = ["web", "event", "partner", "outbound"];
const PERSONAS: [&str; 3] = ["it-director-midmarket", "cfo-enterprise", "ops-lead-smb"];

/// One command of a lead's journey, with the values that vary between leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Capture { source: &'static str, persona: &'static str },
    Qualify { assignee: String, score: i32 },
    Accept,
    Reject,
    CloseWon { amount_minor: i64 },
    CloseLost,
    RecordFeedback { rating: i32 },
}

impl Step {
    /// The RPC name, for per-command counts.
    pub fn rpc(&self) -> &'static str {
        match self {
            Self::Capture { .. } => "CaptureLead",
            Self::Qualify { .. } => "QualifyLead",
            Self::Accept => "AcceptLead",
            Self::Reject => "RejectLead",
            Self::CloseWon { .. } | Self::CloseLost => "CloseLead",
            Self::RecordFeedback { .. } => "RecordFeedback",
        }
    }
}

/// The commands lead number `lead` goes through, in order.
pub fn journey(seed: u64, lead: u64) -> Vec<Step> {
    let mut draw = SplitMix64::new(seed ^ lead.wrapping_mul(0xA076_1D64_78BD_642F));
    let mut steps = vec![Step::Capture { source: draw.pick(&SOURCES), persona: draw.pick(&PERSONAS) }];
    if !draw.chance(MQL_SHARE) {
        return steps;
    }
    steps
        .push(Step::Qualify { assignee: format!("rep-{}", draw.below(SALES_REPS)), score: 60 + draw.below(41) as i32 });
    if draw.chance(ACCEPT_SHARE) {
        steps.push(Step::Accept);
        steps.push(if draw.chance(WON_SHARE) {
            Step::CloseWon { amount_minor: 100_000 + 100 * draw.below(100_000) as i64 }
        } else {
            Step::CloseLost
        });
    } else {
        steps.push(Step::Reject);
    }
    if draw.chance(FEEDBACK_SHARE) {
        steps.push(Step::RecordFeedback { rating: 1 + draw.below(5) as i32 });
    }
    steps
}

/// SplitMix64 (Steele, Lea and Flood): a tiny, well-mixed generator; plenty
/// for choosing funnel branches, and no dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform value in `[0, 1)` from the top 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }

    /// A value in `0..bound`; the modulo bias is negligible for small bounds.
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[self.below(choices.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(count: usize, of: usize) -> f64 {
        count as f64 / of as f64
    }

    #[test]
    fn a_journey_depends_only_on_seed_and_lead() {
        assert_eq!(journey(7, 42), journey(7, 42));
        let differing = (0..100).filter(|&lead| journey(7, lead) != journey(8, lead)).count();
        assert!(differing > 50, "seeds 7 and 8 gave {differing} different journeys of 100");
    }

    #[test]
    fn the_mix_follows_the_funnel() {
        let leads = 200_000;
        let journeys: Vec<Vec<Step>> = (0..leads).map(|lead| journey(1, lead)).collect();
        let count = |matches: fn(&Step) -> bool| journeys.iter().flatten().filter(|s| matches(s)).count();
        let mqls = count(|s| matches!(s, Step::Qualify { .. }));
        let sqls = count(|s| matches!(s, Step::Accept));
        let rejected = count(|s| matches!(s, Step::Reject));
        let won = count(|s| matches!(s, Step::CloseWon { .. }));
        let lost = count(|s| matches!(s, Step::CloseLost));
        let feedback = count(|s| matches!(s, Step::RecordFeedback { .. }));
        assert!(journeys.iter().all(|j| matches!(j[0], Step::Capture { .. })));
        assert!((share(mqls, leads as usize) - 0.15).abs() < 0.005, "MQL share {}", share(mqls, leads as usize));
        assert_eq!(sqls + rejected, mqls);
        assert!((share(sqls, mqls) - 0.5).abs() < 0.02, "accepted share {}", share(sqls, mqls));
        assert_eq!(won + lost, sqls);
        assert!((share(won, sqls) - 0.25).abs() < 0.02, "won share {}", share(won, sqls));
        assert!((share(feedback, mqls) - 0.3).abs() < 0.02, "feedback share {}", share(feedback, mqls));
    }

    #[test]
    fn values_stay_within_what_the_api_accepts() {
        for step in (0..10_000).flat_map(|lead| journey(3, lead)) {
            match step {
                Step::Qualify { score, .. } => assert!((60..=100).contains(&score)),
                Step::RecordFeedback { rating } => assert!((1..=5).contains(&rating)),
                Step::CloseWon { amount_minor } => assert!(amount_minor > 0),
                _ => {}
            }
        }
    }
}
