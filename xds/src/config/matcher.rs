//! String, regex, header and query matchers, compiled once at config time.

use regex::Regex;
use sentinel_proto::pb::envoy::config::route::v3 as route_pb;
use sentinel_proto::pb::envoy::r#type::matcher::v3 as matcher_pb;

use super::{ConfigError, Result};

/// A compiled RE2-style regex with Envoy's full-match semantics.
pub fn full_regex(m: &matcher_pb::RegexMatcher, path: &str) -> Result<Regex> {
    compile_regex(&m.regex, true, path)
}

/// Compiles a regex; `anchored` wraps it for a full match as Envoy's `safe_regex` does.
pub fn compile_regex(pattern: &str, anchored: bool, path: &str) -> Result<Regex> {
    let source = if anchored {
        format!("^(?:{pattern})$")
    } else {
        pattern.to_string()
    };
    regex::RegexBuilder::new(&source)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ConfigError::new(path, format!("invalid regex: {e}")))
}

/// `envoy.type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct StringMatcher {
    pub kind: StringMatch,
    pub ignore_case: bool,
}

impl StringMatcher {
    pub fn from_proto(m: &matcher_pb::StringMatcher, path: &str) -> Result<Self> {
        use matcher_pb::string_matcher::MatchPattern as P;
        let lower = |s: &String| {
            if m.ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            }
        };
        let kind = match &m.match_pattern {
            Some(P::Exact(s)) => StringMatch::Exact(lower(s)),
            Some(P::Prefix(s)) => StringMatch::Prefix(lower(s)),
            Some(P::Suffix(s)) => StringMatch::Suffix(lower(s)),
            Some(P::Contains(s)) => StringMatch::Contains(lower(s)),
            Some(P::SafeRegex(r)) => {
                StringMatch::Regex(full_regex(r, &format!("{path}.safe_regex"))?)
            }
            Some(P::Custom(_)) => {
                return Err(ConfigError::new(path, "custom matchers are not supported"))
            }
            None => return Err(ConfigError::new(path, "match_pattern is required")),
        };
        Ok(Self {
            kind,
            ignore_case: m.ignore_case,
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        let owned;
        let v = if self.ignore_case && !matches!(self.kind, StringMatch::Regex(_)) {
            owned = value.to_ascii_lowercase();
            owned.as_str()
        } else {
            value
        };
        match &self.kind {
            StringMatch::Exact(s) => v == s,
            StringMatch::Prefix(s) => v.starts_with(s.as_str()),
            StringMatch::Suffix(s) => v.ends_with(s.as_str()),
            StringMatch::Contains(s) => v.contains(s.as_str()),
            StringMatch::Regex(r) => r.is_match(v),
        }
    }
}

/// How a header's value is tested.
#[derive(Debug, Clone)]
pub enum HeaderMatch {
    /// Present (true) or absent (false).
    Present(bool),
    String(StringMatcher),
    /// `[start, end)` over the value parsed as an integer.
    Range(i64, i64),
}

/// `envoy.config.route.v3.HeaderMatcher`.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    /// Lower-cased header name.
    pub name: String,
    pub kind: HeaderMatch,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

impl HeaderMatcher {
    pub fn from_proto(m: &route_pb::HeaderMatcher, path: &str) -> Result<Self> {
        use route_pb::header_matcher::HeaderMatchSpecifier as S;
        if m.name.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.name"),
                "header name is required",
            ));
        }
        let plain = |kind| StringMatcher {
            kind,
            ignore_case: false,
        };
        #[allow(deprecated)]
        let kind = match &m.header_match_specifier {
            None => HeaderMatch::Present(true),
            Some(S::PresentMatch(p)) => HeaderMatch::Present(*p),
            Some(S::ExactMatch(s)) => HeaderMatch::String(plain(StringMatch::Exact(s.clone()))),
            Some(S::PrefixMatch(s)) => HeaderMatch::String(plain(StringMatch::Prefix(s.clone()))),
            Some(S::SuffixMatch(s)) => HeaderMatch::String(plain(StringMatch::Suffix(s.clone()))),
            Some(S::ContainsMatch(s)) => {
                HeaderMatch::String(plain(StringMatch::Contains(s.clone())))
            }
            Some(S::SafeRegexMatch(r)) => HeaderMatch::String(plain(StringMatch::Regex(
                full_regex(r, &format!("{path}.safe_regex_match"))?,
            ))),
            Some(S::RangeMatch(r)) => HeaderMatch::Range(r.start, r.end),
            Some(S::StringMatch(s)) => HeaderMatch::String(StringMatcher::from_proto(
                s,
                &format!("{path}.string_match"),
            )?),
        };
        Ok(Self {
            name: m.name.to_ascii_lowercase(),
            kind,
            invert: m.invert_match,
            treat_missing_as_empty: m.treat_missing_header_as_empty,
        })
    }

    /// `values` are the header's values, one per header line (none when absent). As in
    /// Envoy, the matcher holds when any one value matches.
    pub fn matches<'a>(&self, values: impl IntoIterator<Item = &'a str>) -> bool {
        let mut values = values.into_iter().peekable();
        let present = values.peek().is_some();
        let one = |v: &str| match &self.kind {
            HeaderMatch::Present(_) => true,
            HeaderMatch::String(s) => s.matches(v),
            HeaderMatch::Range(start, end) => {
                v.parse::<i64>().is_ok_and(|n| n >= *start && n < *end)
            }
        };
        let matched = match (&self.kind, present) {
            (HeaderMatch::Present(want), _) => present == *want,
            (_, false) if self.treat_missing_as_empty => one(""),
            (_, false) => return false,
            (_, true) => values.any(one),
        };
        matched != self.invert
    }
}

/// `envoy.config.route.v3.QueryParameterMatcher`.
#[derive(Debug, Clone)]
pub struct QueryMatcher {
    pub name: String,
    /// None: the parameter must be present.
    pub value: Option<StringMatcher>,
}

impl QueryMatcher {
    pub fn from_proto(m: &route_pb::QueryParameterMatcher, path: &str) -> Result<Self> {
        use route_pb::query_parameter_matcher::QueryParameterMatchSpecifier as S;
        let value = match &m.query_parameter_match_specifier {
            Some(S::StringMatch(s)) => Some(StringMatcher::from_proto(
                s,
                &format!("{path}.string_match"),
            )?),
            Some(S::PresentMatch(true)) | None => None,
            Some(S::PresentMatch(false)) => {
                return Err(ConfigError::new(
                    format!("{path}.present_match"),
                    "must be true",
                ))
            }
        };
        Ok(Self {
            name: m.name.clone(),
            value,
        })
    }

    /// `value` is the parameter's first value (Envoy uses the first), None when absent.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (value, &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(m)) => m.matches(v),
        }
    }
}
