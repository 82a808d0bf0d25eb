//! The command's one error type, its exit codes, and how masse's errors map to them.

use std::fmt;

use crate::output::one_line;

/// Process exit codes, as documented in `masse --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Success.
    Ok = 0,
    /// Any other failure (I/O, protocol, a lost connection).
    Failure = 1,
    /// Bad usage: unknown flag, malformed name, pattern, URL or address.
    Usage = 2,
    /// No live peer has that name.
    NotFound = 3,
    /// The peer refused the stream, answered as someone else, or did not authorize us.
    Refused = 4,
    /// The registry cannot be reached or fails.
    Registry = 5,
    /// Something did not answer in time.
    Timeout = 6,
    /// Interrupted (Ctrl-C) while a `connect` stream was open.
    Interrupted = 130,
}

impl Exit {
    /// The code handed to the operating system.
    pub(crate) fn code(self) -> i32 {
        self as i32
    }
}

/// A failure the command reports as one line, `masse: <message>`, and an exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CliError {
    /// How the process exits.
    pub(crate) exit: Exit,
    /// What went wrong, on one line.
    pub(crate) message: String,
}

impl CliError {
    /// An error with `exit` and `message` (newlines are folded into one line).
    pub(crate) fn new(exit: Exit, message: impl AsRef<str>) -> Self {
        CliError {
            exit,
            message: one_line(message.as_ref()),
        }
    }

    /// A usage error (exit 2).
    pub(crate) fn usage(message: impl AsRef<str>) -> Self {
        Self::new(Exit::Usage, message)
    }

    /// Any other failure (exit 1).
    pub(crate) fn failure(message: impl AsRef<str>) -> Self {
        Self::new(Exit::Failure, message)
    }

    /// Prefixes the message with what was being done: `"<what>: <message>"`.
    pub(crate) fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<masse::Error> for CliError {
    fn from(e: masse::Error) -> Self {
        CliError::new(exit_for(&e), e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        let exit = if e.kind() == std::io::ErrorKind::TimedOut {
            Exit::Timeout
        } else {
            Exit::Failure
        };
        CliError::new(exit, e.to_string())
    }
}

/// The exit code for one of masse's errors.
pub(crate) fn exit_for(e: &masse::Error) -> Exit {
    use masse::Error as E;
    match e.root() {
        E::NotFound { .. } => Exit::NotFound,
        E::Refused { .. } | E::WrongPeer { .. } | E::Unauthorized { .. } | E::NameTaken { .. } => {
            Exit::Refused
        }
        E::RegistryUnavailable { .. } | E::Registry { .. } | E::RegistryUnauthorized { .. } => {
            Exit::Registry
        }
        E::Timeout { .. } => Exit::Timeout,
        E::InvalidName { .. }
        | E::InvalidPattern { .. }
        | E::InvalidAddress { .. }
        | E::Config(_) => Exit::Usage,
        E::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => Exit::Timeout,
        _ => Exit::Failure,
    }
}

/// The `EXIT CODES` section of `masse --help`.
pub(crate) const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    other failure (I/O error, protocol error, connection lost)
  2    usage: unknown flag, malformed name, namespace, pattern, URL or address
  3    no live peer has that name
  4    the peer refused the stream (wrong peer, no such service, busy) or is unauthorized
  5    the registry is unreachable, failing or refused the credentials
  6    timed out
  130  interrupted (Ctrl-C) while `connect` had a stream open";

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use masse::{Error, RefuseCode};

    use super::*;

    fn boxed(msg: &str) -> masse::BoxError {
        Arc::new(std::io::Error::other(msg.to_owned()))
    }

    #[test]
    fn masse_errors_map_to_documented_codes() {
        let cases: Vec<(Error, Exit)> = vec![
            (
                Error::NotFound {
                    namespace: "default".into(),
                    name: "nobody".into(),
                },
                Exit::NotFound,
            ),
            (
                Error::Refused {
                    code: RefuseCode::NoSuchService,
                    reason: "x".into(),
                },
                Exit::Refused,
            ),
            (
                Error::WrongPeer {
                    expected: "a".into(),
                    actual: "b".into(),
                },
                Exit::Refused,
            ),
            (
                Error::Unauthorized {
                    reason: "bad key".into(),
                },
                Exit::Refused,
            ),
            (
                Error::RegistryUnavailable {
                    backend: "redis",
                    source: boxed("connection refused"),
                },
                Exit::Registry,
            ),
            (
                Error::Registry {
                    backend: "redis",
                    source: boxed("NOPERM"),
                },
                Exit::Registry,
            ),
            (
                Error::Timeout {
                    what: masse::Operation::Connect,
                    after: Duration::from_secs(5),
                },
                Exit::Timeout,
            ),
            (Error::Config("ttl too short".into()), Exit::Usage),
            (Error::protocol("garbage"), Exit::Failure),
            (Error::Closed("node"), Exit::Failure),
            (
                Error::Io(Arc::new(std::io::Error::from(
                    std::io::ErrorKind::ConnectionReset,
                ))),
                Exit::Failure,
            ),
        ];
        let wrapped: Vec<(Error, Exit)> = cases
            .iter()
            .map(|(e, want)| {
                let e = e.clone().in_connect(
                    "billing-7",
                    Some(&"tcp://127.0.0.1:4100"),
                    masse::ConnectStep::Handshake,
                );
                (e, *want)
            })
            .collect();
        for (e, want) in cases.into_iter().chain(wrapped) {
            assert_eq!(exit_for(&e), want, "{e}");
            assert_eq!(CliError::from(e).exit, want);
        }
        let bad_name = masse::PeerName::new("bad name").unwrap_err();
        assert_eq!(exit_for(&bad_name), Exit::Usage);
        let bad_pattern = masse::Pattern::new("[a").unwrap_err();
        assert_eq!(exit_for(&bad_pattern), Exit::Usage);
    }

    #[test]
    fn codes_are_the_documented_numbers() {
        let all = [
            (Exit::Ok, 0),
            (Exit::Failure, 1),
            (Exit::Usage, 2),
            (Exit::NotFound, 3),
            (Exit::Refused, 4),
            (Exit::Registry, 5),
            (Exit::Timeout, 6),
            (Exit::Interrupted, 130),
        ];
        for (exit, code) in all {
            assert_eq!(exit.code(), code);
            assert!(
                EXIT_CODES_HELP.contains(&format!("\n  {code} ")),
                "exit code {code} is not documented"
            );
        }
    }

    #[test]
    fn messages_are_one_line_with_context() {
        let e = CliError::failure("first\nsecond\r\n third ").context("connecting to x");
        assert_eq!(e.message, "connecting to x: first; second; third");
        assert_eq!(e.exit, Exit::Failure);
        let io = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(CliError::from(io).exit, Exit::Timeout);
    }
}
