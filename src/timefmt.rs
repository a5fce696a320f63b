//! RFC 3339 timestamps, for the admin page and for ext_proc's `request.time`, without a
//! date crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// How the fraction of a second is written.
pub(crate) enum Fraction {
    /// Always three digits, then `Z` (the admin page).
    Millis,
    /// As absl's RFC3339_full, which Envoy's CEL `print` uses: up to nine digits with the
    /// trailing zeros dropped (none for a whole second), then `+00:00`.
    Trimmed,
}

pub(crate) fn rfc3339(t: SystemTime, fraction: Fraction) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let tail = match fraction {
        Fraction::Millis => format!(".{:03}Z", d.subsec_millis()),
        Fraction::Trimmed => {
            let nanos = format!("{:09}", d.subsec_nanos());
            let digits = nanos.trim_end_matches('0');
            let dot = if digits.is_empty() { "" } else { "." };
            format!("{dot}{digits}+00:00")
        }
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{tail}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats() {
        let t = UNIX_EPOCH + Duration::new(1_795_948_011, 457_036_000);
        assert_eq!(
            rfc3339(t, Fraction::Trimmed),
            "2026-11-29T10:26:51.457036+00:00"
        );
        assert_eq!(rfc3339(t, Fraction::Millis), "2026-11-29T10:26:51.457Z");
        let whole = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(
            rfc3339(whole, Fraction::Trimmed),
            "2000-02-29T00:00:00+00:00"
        );
    }
}
