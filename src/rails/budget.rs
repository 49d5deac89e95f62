//! The global budget (SPEC §9 "Budget"): at most `max` exec and webhook actions within any
//! `within`, across all workflows. Log-only actions are free. The brake that stops an alert
//! storm from restarting half the host.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::map::Budget;

/// A budget that just ran out, for the CRIT `budget exhausted` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetExhausted {
    pub max: u32,
    pub within: Duration,
    /// How long from now until the oldest spent action leaves the window.
    pub open_for: Duration,
}

/// The actions spent in the current window, and whether the budget has tripped since it last
/// had room (so each trip gets one record).
#[derive(Debug, Default)]
pub struct BudgetState {
    /// When each counted action started, oldest first; never more than the largest `max`.
    pub spent: VecDeque<Instant>,
    pub tripped: bool,
}

impl BudgetState {
    /// Whether one more action fits in `budget` at `now`. `Err(Some(_))` when this refusal
    /// trips the budget, `Err(None)` when it had already tripped.
    pub fn check(&mut self, budget: Budget, now: Instant) -> Result<(), Option<BudgetExhausted>> {
        self.roll(budget, now);
        if self.spent.len() < budget.max as usize {
            self.tripped = false;
            return Ok(());
        }
        if std::mem::replace(&mut self.tripped, true) {
            return Err(None);
        }
        // Full: the oldest action that counts leaves the window first.
        let oldest = self.spent.front().copied().unwrap_or(now);
        Err(Some(BudgetExhausted {
            max: budget.max,
            within: budget.within,
            open_for: (oldest + budget.within).saturating_duration_since(now),
        }))
    }

    /// Counts one action started at `now` (after `check` said it fits).
    pub fn spend(&mut self, now: Instant) {
        self.spent.push_back(now);
    }

    /// Actions that still fit in `budget` at `now`.
    pub fn remaining(&self, budget: Budget, now: Instant) -> u32 {
        let counted = self
            .spent
            .iter()
            .rev()
            .take_while(|at| now < **at + budget.within)
            .count();
        budget.max.saturating_sub(counted as u32)
    }

    /// Drops the actions that left the window: one started at `t` counts while `now < t + within`.
    fn roll(&mut self, budget: Budget, now: Instant) {
        while self
            .spent
            .front()
            .is_some_and(|at| now >= *at + budget.within)
        {
            self.spent.pop_front();
        }
        // A reload may have lowered `max`: the oldest beyond it can never matter again.
        while self.spent.len() > budget.max as usize {
            self.spent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Budget = Budget {
        max: 2,
        within: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn the_window_rolls_over_at_its_exact_end() {
        let mut state = BudgetState::default();
        let start = Instant::now();
        for _ in 0..2 {
            state.check(BUDGET, start).unwrap();
            state.spend(start);
        }
        assert_eq!(state.remaining(BUDGET, start), 0);
        let tripped = state.check(BUDGET, start).unwrap_err().unwrap();
        assert_eq!(
            tripped,
            BudgetExhausted {
                max: 2,
                within: Duration::from_secs(60),
                open_for: Duration::from_secs(60),
            }
        );
        assert_eq!(state.check(BUDGET, start), Err(None), "one record per trip");
        let just_before = start + Duration::from_secs(60) - Duration::from_nanos(1);
        assert_eq!(state.check(BUDGET, just_before), Err(None));
        let end = start + Duration::from_secs(60);
        assert_eq!(state.remaining(BUDGET, end), 2);
        assert_eq!(state.check(BUDGET, end), Ok(()), "the window rolled over");
        state.spend(end);
        state.check(BUDGET, end).unwrap();
        state.spend(end);
        assert!(
            state.check(BUDGET, end).unwrap_err().is_some(),
            "a new trip, a new record"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_max_after_a_reload_applies_at_once() {
        let mut state = BudgetState::default();
        let now = Instant::now();
        for _ in 0..2 {
            state.check(BUDGET, now).unwrap();
            state.spend(now);
        }
        let one = Budget { max: 1, ..BUDGET };
        assert!(state.check(one, now).is_err());
        assert_eq!(state.spent.len(), 1);
        assert_eq!(state.remaining(one, now), 0);
    }
}
