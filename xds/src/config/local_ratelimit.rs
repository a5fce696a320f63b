//! `envoy.filters.http.local_ratelimit`: a token bucket per filter config.
//!
//! As in Envoy, the limiter lives with its config: the filter's own config has one bucket,
//! each route's or virtual host's override has its own, and a new config version starts with
//! a full bucket. The bucket is lock-free and refills lazily on the request path, in whole
//! `fill_interval` steps, exactly as Envoy's timer-driven refill would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sentinel_proto::pb::envoy::extensions::filters::http::local_ratelimit::v3 as pb;

use super::route::HeaderAdd;
use super::{duration, route, ConfigError, Result, TryCollectExact};

pub const TYPE: &str = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// Envoy's token bucket, refilled in whole intervals.
#[derive(Debug)]
pub struct TokenBucket {
    pub max_tokens: u64,
    pub tokens_per_fill: u64,
    pub fill_interval: Duration,
    /// Tokens left, and the number of intervals already credited, packed in one word so one
    /// compare-and-swap updates both: high 32 bits intervals, low 32 bits tokens.
    state: AtomicU64,
    epoch: Instant,
}

impl TokenBucket {
    fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> Self {
        Self {
            max_tokens: max_tokens as u64,
            tokens_per_fill: tokens_per_fill as u64,
            fill_interval,
            state: AtomicU64::new(max_tokens as u64),
            epoch: Instant::now(),
        }
    }

    /// Takes one token; false when the bucket is empty. `remaining` gets what is left.
    pub fn try_take(&self, now: Instant) -> (bool, u64) {
        let intervals = (now.saturating_duration_since(self.epoch).as_nanos()
            / self.fill_interval.as_nanos().max(1)) as u64;
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (credited, tokens) = (current >> 32, current & 0xffff_ffff);
            let tokens = if intervals > credited {
                (tokens + (intervals - credited) * self.tokens_per_fill).min(self.max_tokens)
            } else {
                tokens
            };
            let credited = credited.max(intervals) & 0xffff_ffff;
            let (ok, left) = if tokens > 0 {
                (true, tokens - 1)
            } else {
                (false, 0)
            };
            let next = (credited << 32) | left;
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return (ok, left),
                Err(actual) => current = actual,
            }
        }
    }

    /// Time until the next refill, for `x-ratelimit-reset`.
    pub fn reset_after(&self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos();
        let interval = self.fill_interval.as_nanos().max(1);
        Duration::from_nanos((interval - elapsed % interval) as u64)
    }
}

#[derive(Debug)]
pub struct LocalRateLimit {
    pub stat_prefix: String,
    pub status: u16,
    /// None: no bucket (the filter is configured per route).
    pub bucket: Option<TokenBucket>,
    /// Share of requests the filter looks at, and of those it enforces on (millionths).
    pub enabled_per_million: u32,
    pub enforced_per_million: u32,
    pub request_headers_when_not_enforced: Vec<HeaderAdd>,
    pub response_headers: Vec<HeaderAdd>,
    pub x_ratelimit_headers: bool,
    /// gRPC clients see RESOURCE_EXHAUSTED instead of UNAVAILABLE.
    pub as_resource_exhausted: bool,
    /// Buckets for requests whose route `rate_limits` produce these descriptors.
    pub descriptors: Vec<DescriptorBucket>,
    /// The `rate_limits` stage this filter takes descriptors from.
    pub stage: u32,
    /// Also take from the default bucket when a descriptor bucket matched (true by default).
    pub always_consume_default: bool,
    /// `vh_rate_limits`: whether the virtual host's `rate_limits` make descriptors too.
    pub vh_rate_limits: VhRateLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhRateLimits {
    /// The virtual host's limits apply only when the route has none (the default).
    Override,
    Include,
    Ignore,
}

/// A descriptor (its entries, in order) and its own bucket.
#[derive(Debug)]
pub struct DescriptorBucket {
    pub entries: Vec<(String, String)>,
    pub bucket: TokenBucket,
}

fn fraction(
    f: Option<&sentinel_proto::pb::envoy::config::core::v3::RuntimeFractionalPercent>,
) -> u32 {
    f.map_or(0, route::fraction_per_million)
}

fn token_bucket(b: &sentinel_proto::pb::envoy::r#type::v3::TokenBucket) -> Result<TokenBucket> {
    let fill = b
        .fill_interval
        .as_ref()
        .map(|d| duration(d, "token_bucket.fill_interval"))
        .transpose()?
        .ok_or_else(|| ConfigError::new("token_bucket.fill_interval", "required"))?;
    if fill < Duration::from_millis(50) {
        return Err(ConfigError::new(
            "token_bucket.fill_interval",
            "must be at least 50ms",
        ));
    }
    let per_fill = b.tokens_per_fill.as_ref().map_or(1, |v| v.value);
    if per_fill == 0 {
        return Err(ConfigError::new(
            "token_bucket.tokens_per_fill",
            "must be greater than 0",
        ));
    }
    Ok(TokenBucket::new(b.max_tokens, per_fill, fill))
}

fn descriptor(
    d: &sentinel_proto::pb::envoy::extensions::common::ratelimit::v3::LocalRateLimitDescriptor,
) -> Result<DescriptorBucket> {
    if d.shadow_mode {
        return Err(ConfigError::new("shadow_mode", "not supported"));
    }
    if d.entries.is_empty() {
        return Err(ConfigError::new(
            "entries",
            "at least one entry is required",
        ));
    }
    let mut entries = Vec::with_capacity(d.entries.len());
    for (i, e) in d.entries.iter().enumerate() {
        if e.key.is_empty() || e.value.is_empty() {
            return Err(ConfigError::new(
                format!("entries[{i}]"),
                "key and value are required",
            ));
        }
        entries.push((e.key.clone(), e.value.clone()));
    }
    let bucket = d
        .token_bucket
        .as_ref()
        .ok_or_else(|| ConfigError::new("token_bucket", "required"))?;
    Ok(DescriptorBucket {
        entries,
        bucket: token_bucket(bucket)?,
    })
}

impl LocalRateLimit {
    pub fn from_proto(c: &pb::LocalRateLimit) -> Result<Self> {
        if c.stat_prefix.is_empty() {
            return Err(ConfigError::new("stat_prefix", "required"));
        }
        let bucket = c.token_bucket.as_ref().map(token_bucket).transpose()?;
        let status = match c.status.as_ref().map(|s| s.code) {
            None | Some(0) => 429,
            Some(code) if (400..600).contains(&code) => code as u16,
            Some(code) => {
                return Err(ConfigError::new(
                    "status.code",
                    format!("{code} is not an error status"),
                ))
            }
        };
        let adds = |v: &[sentinel_proto::pb::envoy::config::core::v3::HeaderValueOption],
                    f: &str| {
            v.iter()
                .enumerate()
                .map(|(i, o)| route::header_add(o, &format!("{f}[{i}]")))
                .try_collect_exact()
        };
        Ok(Self {
            stat_prefix: c.stat_prefix.clone(),
            status,
            bucket,
            enabled_per_million: fraction(c.filter_enabled.as_ref()),
            enforced_per_million: fraction(c.filter_enforced.as_ref()),
            request_headers_when_not_enforced: adds(
                &c.request_headers_to_add_when_not_enforced,
                "request_headers_to_add_when_not_enforced",
            )?,
            response_headers: adds(&c.response_headers_to_add, "response_headers_to_add")?,
            x_ratelimit_headers: c.enable_x_ratelimit_headers == 1,
            as_resource_exhausted: c.rate_limited_as_resource_exhausted,
            descriptors: c
                .descriptors
                .iter()
                .enumerate()
                .map(|(i, d)| descriptor(d).map_err(|e| e.within(&format!("descriptors[{i}]"))))
                .try_collect_exact()?,
            stage: c.stage,
            vh_rate_limits: match c.vh_rate_limits {
                1 => VhRateLimits::Include,
                2 => VhRateLimits::Ignore,
                _ => VhRateLimits::Override,
            },
            always_consume_default: c
                .always_consume_default_token_bucket
                .as_ref()
                .is_none_or(|b| b.value),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_in_whole_intervals() {
        let b = TokenBucket::new(2, 1, Duration::from_millis(100));
        let t0 = b.epoch;
        assert_eq!(b.try_take(t0), (true, 1));
        assert_eq!(b.try_take(t0), (true, 0));
        assert_eq!(b.try_take(t0 + Duration::from_millis(99)), (false, 0));
        assert_eq!(b.try_take(t0 + Duration::from_millis(100)), (true, 0));
        // Long idle: capped at max_tokens.
        assert_eq!(b.try_take(t0 + Duration::from_secs(10)), (true, 1));
    }
}
