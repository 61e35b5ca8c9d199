//! Retry policy: exponential backoff with full jitter, bounded in attempts
//! and in total time.
//!
//! Full jitter (a delay drawn uniformly from zero to the exponential cap)
//! spreads a batch of devices that booted together, so that a throttled
//! fleet does not retry in lockstep. The caller supplies the randomness,
//! which keeps this module deterministic under test.

/// Default number of attempts, the first included.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default delay cap of the first retry, in milliseconds.
pub const DEFAULT_BASE_DELAY_MS: u64 = 1_000;
/// Default longest single delay, in milliseconds.
pub const DEFAULT_MAX_DELAY_MS: u64 = 60_000;
/// Default bound on the time from the first attempt to the start of the
/// last one, in milliseconds.
pub const DEFAULT_MAX_TOTAL_MS: u64 = 300_000;

/// When and how often to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    /// Delay cap before the first retry, in milliseconds; it doubles with
    /// each further retry.
    pub base_delay_ms: u64,
    /// Longest single delay, in milliseconds.
    pub max_delay_ms: u64,
    /// No retry starts later than this after the first attempt, in
    /// milliseconds.
    pub max_total_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base_delay_ms: DEFAULT_BASE_DELAY_MS,
            max_delay_ms: DEFAULT_MAX_DELAY_MS,
            max_total_ms: DEFAULT_MAX_TOTAL_MS,
        }
    }
}

impl RetryPolicy {
    /// Returns the delay before the next attempt after `failed_attempts`
    /// attempts failed (1 after the first), `elapsed_ms` after the first
    /// attempt started, or `None` when the policy allows no more attempts.
    /// `random` is a uniformly distributed value.
    pub fn next_delay_ms(&self, failed_attempts: u32, elapsed_ms: u64, random: u64) -> Option<u64> {
        if failed_attempts == 0 || failed_attempts >= self.max_attempts {
            return None;
        }
        let doublings = failed_attempts.saturating_sub(1).min(63);
        let cap = self
            .base_delay_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_delay_ms);
        let delay = random % cap.saturating_add(1);
        if elapsed_ms.saturating_add(delay) > self.max_total_ms {
            return None;
        }
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay_ms: 100,
            max_delay_ms: 250,
            max_total_ms: 1_000,
        }
    }

    #[test]
    fn cap_doubles_then_saturates() {
        let policy = policy();
        let top = u64::MAX;
        assert_eq!(policy.next_delay_ms(1, 0, 100), Some(100));
        assert_eq!(policy.next_delay_ms(1, 0, top), Some(top % 101));
        assert_eq!(policy.next_delay_ms(2, 0, 200), Some(200));
        assert_eq!(policy.next_delay_ms(2, 0, 201), Some(0));
        assert_eq!(policy.next_delay_ms(3, 0, 250), Some(250));
        assert_eq!(policy.next_delay_ms(3, 0, 251), Some(0));
    }

    #[test]
    fn delay_never_exceeds_cap() {
        let policy = policy();
        for failed in 1..4 {
            for random in [0, 1, 99, 100, 101, 12_345, u64::MAX] {
                let delay = policy.next_delay_ms(failed, 0, random).unwrap();
                assert!(delay <= 250, "delay {delay} after {failed} failures");
            }
        }
    }

    #[test]
    fn attempts_are_bounded() {
        let policy = policy();
        assert_eq!(policy.next_delay_ms(0, 0, 5), None);
        assert!(policy.next_delay_ms(3, 0, 5).is_some());
        assert_eq!(policy.next_delay_ms(4, 0, 5), None);
        let single = RetryPolicy {
            max_attempts: 1,
            ..policy
        };
        assert_eq!(single.next_delay_ms(1, 0, 5), None);
    }

    #[test]
    fn total_time_is_bounded() {
        let policy = policy();
        assert_eq!(policy.next_delay_ms(1, 950, 60), None);
        assert_eq!(policy.next_delay_ms(1, 950, 50), Some(50));
        assert_eq!(policy.next_delay_ms(1, u64::MAX, 0), None);
    }
}
