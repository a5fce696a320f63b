//! Envoy's `retry_policy`: which failures are retried, and the back-off between attempts.
//!
//! Pingora retries an attempt when the error it ends with is marked retriable; the hooks in
//! `proxy.rs` mark errors (and retriable upstream statuses) through [`should_retry`].

use std::time::Duration;

use sentinel_xds::config::route::RetryPolicy;

/// What went wrong with one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Could not connect at all.
    Connect,
    /// The connection was reset or closed before a response.
    Reset,
    /// The per-try timeout expired.
    Timeout,
    /// The upstream answered with this status.
    Status(u16),
}

/// Whether `failure` on attempt number `attempt` (1-based) is retried under `policy`.
pub fn should_retry(policy: &RetryPolicy, attempt: u32, failure: Failure) -> bool {
    if attempt > policy.num_retries {
        return false;
    }
    let on = &policy.on;
    match failure {
        Failure::Connect => on.connect_failure || on.five_xx || on.gateway_error || on.reset,
        Failure::Reset => on.reset || on.five_xx || on.gateway_error,
        Failure::Timeout => on.five_xx || on.gateway_error || on.reset,
        Failure::Status(s) => {
            (on.five_xx && (500..600).contains(&s))
                || (on.gateway_error && matches!(s, 502..=504))
                || (on.retriable_4xx && s == 409)
                || (on.retriable_status_codes && policy.retriable_status_codes.contains(&s))
        }
    }
}

/// Envoy's fully jittered exponential back-off before retry number `retry` (1-based).
pub fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let factor = (1u64 << retry.saturating_sub(1).min(20)) as u32;
    let ceiling = policy
        .base_interval
        .saturating_mul(factor)
        .min(policy.max_interval);
    ceiling.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_xds::config::route::RetryOn;

    fn policy(on: RetryOn) -> RetryPolicy {
        RetryPolicy {
            on,
            num_retries: 2,
            per_try_timeout: None,
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
            retriable_status_codes: vec![418],
        }
    }

    #[test]
    fn conditions_follow_envoy() {
        let gw = policy(RetryOn {
            gateway_error: true,
            ..Default::default()
        });
        assert!(should_retry(&gw, 1, Failure::Status(503)));
        assert!(!should_retry(&gw, 1, Failure::Status(500)));
        assert!(should_retry(&gw, 2, Failure::Connect));
        assert!(
            !should_retry(&gw, 3, Failure::Connect),
            "num_retries bounds the attempts"
        );
        let codes = policy(RetryOn {
            retriable_status_codes: true,
            ..Default::default()
        });
        assert!(should_retry(&codes, 1, Failure::Status(418)));
        assert!(!should_retry(&codes, 1, Failure::Reset));
        let b = backoff(&gw, 10);
        assert!(b <= Duration::from_millis(250));
    }
}
