//! Comparing a response (or a failure) with a request's expectations. Every mismatch is
//! reported as `what: expected X, got Y`, so a report line says exactly what differs.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

use crate::case::{BodyExpect, ErrorKind, Expect, HeaderExpect, HeaderRule, Seen};
use crate::client::{Failure, Response};

/// Checks one outcome; `Err` lists every mismatch, `; `-separated.
pub fn check(expect: &Expect, outcome: &Result<Response, Failure>) -> Result<(), String> {
    let resp = match (outcome, expect.error) {
        (Err(Failure::Connect(_)), Some(_)) | (Err(_), Some(ErrorKind::Any)) => return Ok(()),
        (Err(f), Some(ErrorKind::Connect)) => {
            return Err(format!("expected the connection to be refused, got {f}"))
        }
        (Err(f), None) => return Err(f.to_string()),
        (Ok(r), Some(kind)) => {
            return Err(format!(
                "expected {} error, got status {} ({})",
                match kind {
                    ErrorKind::Connect => "a connect",
                    ErrorKind::Any => "an",
                },
                r.status,
                describe_source(r)
            ))
        }
        (Ok(r), None) => r,
    };
    let mut errors = Vec::new();
    if expect.lowercase_names == Some(true) {
        let upper: Vec<&String> = resp
            .raw_names
            .iter()
            .filter(|n| n.bytes().any(|b| b.is_ascii_uppercase()))
            .collect();
        if !upper.is_empty() {
            errors.push(format!("header names not lowercase: {upper:?}"));
        }
    }
    if let Some(want) = &expect.interim {
        if *want != resp.interim {
            errors.push(format!(
                "informational answers: expected {want:?}, got {:?}",
                resp.interim
            ));
        }
    }
    if let (Some(want), Some(got)) = (expect.closed, resp.closed) {
        if want != got {
            errors.push(format!(
                "connection: expected it {}, but it {}",
                if want { "closed" } else { "kept open" },
                if got { "closed" } else { "stayed open" }
            ));
        }
    }
    if let Some(status) = expect.status {
        if resp.status != status {
            errors.push(format!(
                "status: expected {status}, got {} ({}; body {})",
                resp.status,
                describe_source(resp),
                short(&resp.body)
            ));
        }
    }
    if let Some(want) = &expect.upstream {
        let got = resp.upstream();
        let ok = match got.as_deref() {
            None => want == "none",
            Some(g) => g == want,
        };
        if !ok {
            errors.push(format!(
                "upstream: expected {want}, got {}",
                got.as_deref().unwrap_or("none")
            ));
        }
    }
    for (name, want) in &expect.headers {
        if let Err(e) = header(want, &resp.lines(name)) {
            errors.push(format!("response header {name}: {e}"));
        }
    }
    if let Some(want) = &expect.body {
        if let Err(e) = body(want, &resp.body) {
            errors.push(format!("body: {e}"));
        }
    }
    if let Some(seen) = &expect.seen {
        if let Err(e) = check_seen(seen, resp) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn describe_source(r: &Response) -> String {
    match r.upstream() {
        Some(u) => format!("from upstream {u}"),
        None => "local answer".into(),
    }
}

fn short(s: &str) -> String {
    const MAX: usize = 120;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}...")
    }
}

/// A header's field lines as one comparable value: the lines joined with `,` and the
/// whitespace around every comma dropped, so `a, b`, `a,b` and two lines `a` and `b` are the
/// same value, as RFC 9110 section 5.3 makes them. `None` when the header is absent.
fn normalize(lines: &[String]) -> Option<String> {
    if lines.is_empty() {
        return None;
    }
    Some(
        lines
            .join(",")
            .split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// How a header was received, for messages: `absent`, `"v"`, or every line.
fn show_lines(lines: &[String]) -> String {
    match lines {
        [] => "absent".into(),
        [one] => format!("{one:?}"),
        many => format!("{} lines {many:?}", many.len()),
    }
}

fn header(want: &HeaderExpect, lines: &[String]) -> Result<(), String> {
    let rule = match want {
        HeaderExpect::Equals(v) => HeaderRule {
            equals: Some(v.clone()),
            ..HeaderRule::default()
        },
        HeaderExpect::Rule(r) => r.clone(),
    };
    let got = normalize(lines);
    let got = got.as_deref();
    let shown = show_lines(lines);
    match (rule.present, got) {
        (Some(false), Some(_)) => return Err(format!("expected absent, got {shown}")),
        (Some(false), None) => return Ok(()),
        _ => {}
    }
    let needs_value = rule.present == Some(true)
        || rule.equals.is_some()
        || rule.contains.is_some()
        || rule.matches.is_some();
    let Some(got) = got else {
        return if needs_value {
            Err(match &rule.equals {
                Some(e) => format!("expected {e:?}, got absent"),
                None => "expected present, got absent".into(),
            })
        } else {
            Ok(())
        };
    };
    if let Some(e) = &rule.equals {
        if normalize(std::slice::from_ref(e)).as_deref() != Some(got) {
            return Err(format!("expected {e:?}, got {shown}"));
        }
    }
    if let Some(c) = &rule.contains {
        let needle = normalize(std::slice::from_ref(c)).unwrap_or_default();
        if !got.contains(needle.as_str()) {
            return Err(format!("expected to contain {c:?}, got {shown}"));
        }
    }
    // The regex sees the normalised value (no spaces around commas).
    if let Some(m) = &rule.matches {
        let re = Regex::new(&format!("^(?:{m})$")).map_err(|e| format!("bad regex {m:?}: {e}"))?;
        if !re.is_match(got) {
            return Err(format!("expected to match /{m}/, got {shown}"));
        }
    }
    Ok(())
}

fn body(want: &BodyExpect, got: &str) -> Result<(), String> {
    let (equals, contains) = match want {
        BodyExpect::Equals(e) => (Some(e), None),
        BodyExpect::Rule { equals, contains } => (equals.as_ref(), contains.as_ref()),
    };
    if let Some(e) = equals {
        if e != got {
            return Err(format!("expected {}, got {}", short(e), short(got)));
        }
    }
    if let Some(c) = contains {
        if !got.contains(c.as_str()) {
            return Err(format!("expected to contain {c:?}, got {}", short(got)));
        }
    }
    Ok(())
}

fn check_seen(seen: &Seen, resp: &Response) -> Result<(), String> {
    let echo: Value = serde_json::from_str(&resp.body).map_err(|_| {
        format!(
            "seen: the response is not an upstream echo ({}; body {})",
            describe_source(resp),
            short(&resp.body)
        )
    })?;
    let field = |k: &str| {
        echo.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let mut errors = Vec::new();
    let mut compare = |what: &str, want: &Option<String>| {
        if let Some(w) = want {
            let got = field(what);
            if *w != got {
                errors.push(format!("upstream saw {what}: expected {w:?}, got {got:?}"));
            }
        }
    };
    compare("method", &seen.method);
    compare("path", &seen.path);
    compare("host", &seen.host);
    compare("body", &seen.body);
    for (what, key, wants) in [
        ("header", "headers", &seen.headers),
        ("trailer", "trailers", &seen.trailers),
    ] {
        let got: BTreeMap<String, Vec<String>> = echo
            .get(key)
            .and_then(|h| serde_json::from_value(h.clone()).ok())
            .unwrap_or_default();
        for (name, want) in wants {
            let got = got
                .get(&name.to_ascii_lowercase())
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Err(e) = header(want, got) {
                errors.push(format!("upstream saw {what} {name}: {e}"));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Result<Response, Failure> {
        Ok(Response {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
            closed: None,
            interim: Vec::new(),
            raw_names: Vec::new(),
        })
    }

    fn expect(yaml: &str) -> Expect {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn status_upstream_headers_body() {
        let r = resp(
            200,
            &[("x-upstream", "a"), ("x-m", "1"), ("x-m", "2")],
            "hi",
        );
        assert!(check(&expect("{ status: 200, upstream: a, headers: { x-m: '1,2', x-n: { present: false } }, body: hi }"), &r).is_ok());
        let err = check(
            &expect("{ status: 404, upstream: none, body: { contains: zz } }"),
            &r,
        )
        .unwrap_err();
        assert!(err.contains("status: expected 404, got 200"), "{err}");
        assert!(err.contains("upstream: expected none, got a"), "{err}");
        assert!(err.contains("body: expected to contain"), "{err}");
        let err = check(&expect("{ headers: { x-id: { matches: '[0-9]+' } } }"), &r).unwrap_err();
        assert!(
            err.contains("expected present, got absent") || err.contains("got absent"),
            "{err}"
        );
    }

    #[test]
    fn lowercase_names_reads_the_raw_head() {
        let mut r = resp(200, &[("date", "x")], "").unwrap();
        r.raw_names = vec!["content-length".into(), "Date".into()];
        let err = check(&expect("{ lowercase_names: true }"), &Ok(r)).unwrap_err();
        assert!(err.contains("not lowercase: [\"Date\"]"), "{err}");
        let mut r = resp(200, &[], "").unwrap();
        r.raw_names = vec!["date".into()];
        assert!(check(&expect("{ lowercase_names: true }"), &Ok(r)).is_ok());
    }

    #[test]
    fn seen_reads_the_echo() {
        let body = r#"{"path":"/p?q=1","host":"h","method":"GET","headers":{"x-a":["b"]}}"#;
        let r = resp(200, &[("x-upstream", "a")], body);
        assert!(check(&expect("{ seen: { path: '/p?q=1', host: h, headers: { x-a: b, x-c: { present: false } } } }"), &r).is_ok());
        let err = check(&expect("{ seen: { path: /x } }"), &r).unwrap_err();
        assert!(
            err.contains("upstream saw path: expected \"/x\", got \"/p?q=1\""),
            "{err}"
        );
    }

    #[test]
    fn errors() {
        let refused: Result<Response, Failure> = Err(Failure::Connect("refused".into()));
        assert!(check(&expect("{ error: connect }"), &refused).is_ok());
        assert!(check(&expect("{ error: any }"), &refused).is_ok());
        assert!(check(&expect("{ status: 200 }"), &refused).is_err());
        let ok = resp(200, &[], "");
        assert!(check(&expect("{ error: connect }"), &ok).is_err());
    }
}
