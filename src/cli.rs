//! Envoy's command line, so the binary drops in where `envoy` was.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Serve,
    Validate,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub config_path: Option<PathBuf>,
    pub config_yaml: Option<String>,
    pub concurrency: usize,
    pub service_node: Option<String>,
    pub service_cluster: Option<String>,
    pub service_zone: Option<String>,
    pub log_level: String,
    pub drain_time: Duration,
    pub parent_shutdown_time: Duration,
    pub mode: Mode,
    pub base_id: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config_path: None,
            config_yaml: None,
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            service_node: None,
            service_cluster: None,
            service_zone: None,
            log_level: "info".into(),
            drain_time: Duration::from_secs(600),
            parent_shutdown_time: Duration::from_secs(900),
            mode: Mode::Serve,
            base_id: 0,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("PARSE ERROR: Argument: {0}\n             Couldn't find match for argument")]
    Unknown(String),
    #[error("PARSE ERROR: Argument: {0}\n             Missing a value for this argument!")]
    MissingValue(String),
    #[error("PARSE ERROR: Argument: {flag}\n             Couldn't read argument value from string '{value}'")]
    BadValue { flag: String, value: String },
    /// `--help` or `--version`: print this and exit 0.
    #[error("{0}")]
    Info(String),
}

const USAGE: &str =
    "USAGE: sentinel [-c <string>] [--config-yaml <string>] [--concurrency <uint32_t>] \
[--service-node <string>] [--service-cluster <string>] [--service-zone <string>] [-l <string>] \
[--drain-time-s <uint32_t>] [--parent-shutdown-time-s <uint32_t>] [--mode <serve|validate>] \
[--base-id <uint32_t>] [--version] [-h]";

/// Flags Envoy has that change nothing here (hot restart, log sinks we do not have).
const ACCEPTED_AND_IGNORED: &[&str] = &[
    "--restart-epoch",
    "--log-format",
    "--log-path",
    "--component-log-level",
    "--drain-strategy",
    "--file-flush-interval-msec",
    "--local-address-ip-version",
    "--socket-path",
    "--socket-mode",
];
const IGNORED_SWITCHES: &[&str] = &[
    "--disable-hot-restart",
    "--use-dynamic-base-id",
    "--log-format-escaped",
    "--enable-fine-grain-logging",
    "--allow-unknown-static-fields",
    "--reject-unknown-dynamic-fields",
    "--ignore-unknown-dynamic-fields",
];

impl Options {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, CliError> {
        let mut o = Options::default();
        let mut it = args.into_iter().skip(1).peekable();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            if flag == "-h" || flag == "--help" {
                return Err(CliError::Info(USAGE.to_string()));
            }
            if flag == "--version" {
                return Err(CliError::Info(format!(
                    "sentinel version: {}/envoy-compatible/RELEASE",
                    env!("CARGO_PKG_VERSION")
                )));
            }
            if IGNORED_SWITCHES.contains(&flag.as_str()) {
                continue;
            }
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| CliError::MissingValue(flag.clone()))
            };
            let number = |v: String| -> Result<u64, CliError> {
                v.parse().map_err(|_| CliError::BadValue {
                    flag: flag.clone(),
                    value: v,
                })
            };
            match flag.as_str() {
                "-c" | "--config-path" => o.config_path = Some(PathBuf::from(value()?)),
                "--config-yaml" => o.config_yaml = Some(value()?),
                "--concurrency" => o.concurrency = (number(value()?)? as usize).max(1),
                "--service-node" => o.service_node = Some(value()?),
                "--service-cluster" => o.service_cluster = Some(value()?),
                "--service-zone" => o.service_zone = Some(value()?),
                "-l" | "--log-level" => {
                    let v = value()?;
                    if ![
                        "trace", "debug", "info", "warning", "warn", "error", "critical", "off",
                    ]
                    .contains(&v.as_str())
                    {
                        return Err(CliError::BadValue { flag, value: v });
                    }
                    o.log_level = v;
                }
                "--drain-time-s" => o.drain_time = Duration::from_secs(number(value()?)?),
                "--parent-shutdown-time-s" => {
                    o.parent_shutdown_time = Duration::from_secs(number(value()?)?)
                }
                "--base-id" => o.base_id = number(value()?)? as u32,
                "--mode" => {
                    o.mode = match value()?.as_str() {
                        "serve" => Mode::Serve,
                        "validate" => Mode::Validate,
                        other => {
                            return Err(CliError::BadValue {
                                flag,
                                value: other.to_string(),
                            })
                        }
                    }
                }
                f if ACCEPTED_AND_IGNORED.contains(&f) => {
                    value()?;
                }
                _ => return Err(CliError::Unknown(arg)),
            }
        }
        Ok(o)
    }

    /// The `tracing` filter for `-l`.
    pub fn tracing_filter(&self) -> &'static str {
        match self.log_level.as_str() {
            "trace" => "trace",
            "debug" => "debug",
            "warning" | "warn" => "warn",
            "error" | "critical" => "error",
            "off" => "off",
            _ => "info",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, CliError> {
        Options::parse(
            std::iter::once("sentinel")
                .chain(args.iter().copied())
                .map(String::from),
        )
    }

    #[test]
    fn envoy_flags() {
        let o = parse(&[
            "-c",
            "b.yaml",
            "--concurrency",
            "2",
            "--service-node",
            "n",
            "-l",
            "debug",
            "--drain-time-s=1",
            "--mode",
            "validate",
            "--base-id",
            "3",
            "--disable-hot-restart",
        ])
        .unwrap();
        assert_eq!(o.config_path, Some(PathBuf::from("b.yaml")));
        assert_eq!(o.concurrency, 2);
        assert_eq!(o.service_node.as_deref(), Some("n"));
        assert_eq!(o.drain_time, Duration::from_secs(1));
        assert_eq!(o.mode, Mode::Validate);
    }

    #[test]
    fn unknown_flag_is_an_error() {
        assert_eq!(
            parse(&["--bogus"]).unwrap_err(),
            CliError::Unknown("--bogus".into())
        );
        assert!(matches!(
            parse(&["--concurrency", "x"]),
            Err(CliError::BadValue { .. })
        ));
        assert!(matches!(parse(&["-c"]), Err(CliError::MissingValue(_))));
    }
}
