//! Errors of the bindings and their Python exception classes (defined in `guildnet/errors.py`
//! so they can also derive from the builtin `ConnectionError`, `TimeoutError` and `ValueError`).

use guildnet_core::client::ClientError;
use guildnet_core::names::ValidationError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// Everything that can go wrong in a binding call, before it becomes a Python exception.
#[derive(Debug)]
pub(crate) enum Error {
    /// An error from the orchestrator client (HTTP status, transport, decoding, URL).
    Client(ClientError),
    /// A value given by the caller is invalid (checked before any request).
    Invalid {
        /// The argument at fault.
        field: String,
        /// Why.
        message: String,
    },
    /// `wait()` ran out of time.
    Timeout(String),
    /// Anything else (state dir, runtime start).
    Other(String),
    /// The runtime could not start.
    Runtime(String),
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        Error::Client(e)
    }
}

impl From<ValidationError> for Error {
    fn from(e: ValidationError) -> Self {
        Error::Invalid {
            field: e.field.to_owned(),
            message: e.to_string(),
        }
    }
}

/// The exception class for an HTTP status.
fn class_for_status(status: u16) -> &'static str {
    match status {
        401 | 403 => "AuthError",
        404 => "NotFoundError",
        409 => "ConflictError",
        400 | 413 | 415 | 422 => "InvalidInputError",
        _ => "GuildNetError",
    }
}

/// What the Python exception is built from.
struct Parts {
    class: &'static str,
    message: String,
    status: Option<u16>,
    code: Option<String>,
    field: Option<String>,
}

impl Error {
    fn parts(self) -> Parts {
        let plain = |class, message| Parts {
            class,
            message,
            status: None,
            code: None,
            field: None,
        };
        match self {
            Error::Client(ClientError::Api {
                status,
                code,
                message,
                field,
            }) => Parts {
                class: class_for_status(status),
                message,
                status: Some(status),
                code: Some(code),
                field,
            },
            Error::Client(e @ ClientError::Transport { .. }) => {
                plain("GuildNetConnectionError", e.to_string())
            }
            Error::Client(e @ ClientError::BadUrl(_)) => Parts {
                field: Some("url".into()),
                ..plain("InvalidInputError", e.to_string())
            },
            Error::Client(e @ ClientError::Decode { .. }) => plain("GuildNetError", e.to_string()),
            Error::Invalid { field, message } => Parts {
                field: Some(field),
                ..plain("InvalidInputError", message)
            },
            Error::Timeout(m) => plain("GuildNetTimeoutError", m),
            Error::Other(m) | Error::Runtime(m) => plain("GuildNetError", m),
        }
    }

    /// The Python exception: an instance of the class from `guildnet.errors` with `message`,
    /// `status`, `code` and `field` set.
    pub(crate) fn into_py_err(self, py: Python<'_>) -> PyErr {
        let p = self.parts();
        let built = py
            .import("guildnet.errors")
            .and_then(|m| m.getattr(p.class))
            .and_then(|cls| cls.call1((p.message.clone(), p.status, p.code, p.field)));
        match built {
            Ok(exc) => PyErr::from_value(exc),
            // The Python half is missing (the extension imported on its own): still raise.
            Err(_) => PyRuntimeError::new_err(p.message),
        }
    }
}

/// Shorthand for an invalid argument.
pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_classes() {
        assert_eq!(class_for_status(401), "AuthError");
        assert_eq!(class_for_status(403), "AuthError");
        assert_eq!(class_for_status(404), "NotFoundError");
        assert_eq!(class_for_status(409), "ConflictError");
        assert_eq!(class_for_status(422), "InvalidInputError");
        assert_eq!(class_for_status(413), "InvalidInputError");
        assert_eq!(class_for_status(500), "GuildNetError");
    }

    #[test]
    fn transport_and_validation_errors_keep_their_context() {
        let p = Error::from(ClientError::Transport {
            url: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        })
        .parts();
        assert_eq!(p.class, "GuildNetConnectionError");
        assert!(p.message.contains("127.0.0.1:1"), "{}", p.message);
        assert_eq!(p.status, None);

        let v = guildnet_core::names::OrgName::new("Bad_Org").unwrap_err();
        let p = Error::from(v).parts();
        assert_eq!(p.class, "InvalidInputError");
        assert_eq!(p.field.as_deref(), Some("org"));
        assert!(p.message.contains("lowercase"), "{}", p.message);

        let p = Error::from(ClientError::Api {
            status: 404,
            code: "not_found".into(),
            message: "task t1 not found".into(),
            field: None,
        })
        .parts();
        assert_eq!(
            (p.class, p.status, p.code.as_deref()),
            ("NotFoundError", Some(404), Some("not_found"))
        );
    }
}
