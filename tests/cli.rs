//! The binary's command line, as scripts and orchestrators use it.

use std::process::Command;

fn sentinel(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(args)
        .output()
        .expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn validate_accepts_the_examples() {
    for f in ["examples/bootstrap.yaml", "examples/bootstrap-delta.yaml"] {
        let path = format!("{}/{f}", env!("CARGO_MANIFEST_DIR"));
        let (code, text) = sentinel(&["--mode", "validate", "-c", &path]);
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("OK"), "{text}");
    }
}

#[test]
fn validate_names_the_broken_field() {
    let yaml = "static_resources: { clusters: [ { name: c, connect_timeout: soon } ] }";
    let (code, text) = sentinel(&["--mode", "validate", "--config-yaml", yaml]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("static_resources.clusters[0].connect_timeout"),
        "{text}"
    );
    // A static resource that converts but is not valid config.
    let yaml = "static_resources: { clusters: [ { name: c, type: STATIC, lb_policy: MAGLEV } ] }";
    let (code, text) = sentinel(&["--mode", "validate", "--config-yaml", yaml]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("c: lb_policy: MAGLEV is not supported"),
        "{text}"
    );
}

#[test]
fn unknown_flags_and_missing_config_fail() {
    assert_eq!(sentinel(&["--no-such-flag"]).0, 1);
    let (code, text) = sentinel(&["--mode", "validate"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(sentinel(&["--version"]).0, 0);
}
