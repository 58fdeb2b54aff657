//! Validated names taken from users: organizations, agents and task ids.
//!
//! Every name that later becomes a Kubernetes object name or a file name is a DNS-1123 label:
//! 1 to 63 characters of `[a-z0-9-]`, starting and ending with a letter or digit. Validation
//! happens at the edge (deserialization and constructors), so the rest of the code only ever
//! sees valid names.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why a user-supplied value was rejected, and which field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    /// The input field (JSON name) that holds the bad value.
    pub field: &'static str,
    /// A human-readable reason, never containing secret material.
    pub reason: String,
}

impl ValidationError {
    /// Builds an error for `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Longest DNS-1123 label.
pub const MAX_LABEL_LEN: usize = 63;

/// Checks that `value` is a DNS-1123 label; `field` names the input in the error.
pub fn validate_dns_label(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > MAX_LABEL_LEN {
        return Err(ValidationError::new(
            field,
            format!(
                "must be at most {MAX_LABEL_LEN} characters (got {})",
                value.chars().count()
            ),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(ValidationError::new(
            field,
            format!(
                "must contain only lowercase letters, digits and '-' (found {:?})",
                bad
            ),
        ));
    }
    let first = value.as_bytes()[0];
    let last = value.as_bytes()[value.len() - 1];
    if first == b'-' || last == b'-' {
        return Err(ValidationError::new(
            field,
            "must start and end with a letter or digit",
        ));
    }
    Ok(())
}

macro_rules! dns_name {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The JSON field name used in validation errors.
            pub const FIELD: &'static str = $field;

            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, ValidationError> {
                let value = value.into();
                validate_dns_label($field, &value)?;
                Ok(Self(value))
            }

            /// Validates `value`, naming `field` in the error instead of the default.
            pub fn parse_field(field: &'static str, value: &str) -> Result<Self, ValidationError> {
                validate_dns_label(field, value)?;
                Ok(Self(value.to_owned()))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .min_length(Some(1))
                    .max_length(Some(MAX_LABEL_LEN))
                    .pattern(Some("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
                    .description(Some(concat!(stringify!($name), ": a DNS-1123 label")))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

dns_name!(
    /// An organization name. It becomes a file name (`kube/<org>.config`) and a Kubernetes label.
    OrgName,
    "org"
);
dns_name!(
    /// An agent name. It becomes a Kubernetes object name and a process label.
    AgentName,
    "agent"
);
dns_name!(
    /// A task id, generated by the orchestrator (`t` + 32 hex digits) and accepted in paths.
    TaskId,
    "taskId"
);

dns_name!(
    /// One process of an agent, sent with its claim: a Deployment's replacement pod runs the
    /// same agent (name and token) in a new process, and the orchestrator tells it from a
    /// retried claim of the first one by this id.
    ProcessId,
    "process"
);

impl ProcessId {
    /// A fresh random id for this process: `p` followed by 32 lowercase hex digits.
    pub fn generate() -> Self {
        Self(format!("p{}", uuid::Uuid::new_v4().simple()))
    }
}

impl TaskId {
    /// A fresh task id: `t` followed by 32 lowercase hex digits, a UUIDv7 (the millisecond,
    /// then 74 random bits). Time-ordered ids land at the end of the store's id index, so a
    /// commit of many new tasks dirties a few index pages instead of one page per task.
    pub fn generate() -> Self {
        Self(format!("t{}", uuid::Uuid::now_v7().simple()))
    }

    /// The default agent name for attempt `attempt` of this task: `agent-<12 hex>-<attempt>`,
    /// from the id's last 12 characters (random in generated ids; their first ones are the
    /// time, shared by the ids of one millisecond).
    pub fn agent_name(&self, attempt: u32) -> AgentName {
        // Task ids are ASCII (`[a-z0-9-]`): any byte offset is a character boundary.
        let body = self.0.get(1..).unwrap_or("");
        let short = &body[body.len().saturating_sub(12)..];
        let short = if short.is_empty() { "x" } else { short };
        AgentName(format!("agent-{short}-{attempt}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "acme", "acme-2", "0rg", &"a".repeat(63)] {
            assert!(OrgName::new(ok).is_ok(), "{ok} should be valid");
        }
    }

    #[test]
    fn rejects_hostile_names() {
        let long = "a".repeat(64);
        for bad in [
            "", "../x", "x/..", "Acme", "-acme", "acme-", "a_b", "a.b", "é", &long, "a b", "a\0",
        ] {
            let err = OrgName::new(bad).expect_err(bad);
            assert_eq!(err.field, "org");
        }
    }

    #[test]
    fn deserialization_validates() {
        let err = serde_json::from_str::<OrgName>("\"../etc\"").unwrap_err();
        assert!(err.to_string().contains("invalid org"), "{err}");
        let ok: OrgName = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(ok.as_str(), "acme");
    }

    #[test]
    fn generated_ids_are_labels_and_agent_names_derive() {
        let id = TaskId::generate();
        assert!(TaskId::new(id.as_str()).is_ok());
        assert_eq!(id.as_str().len(), 33);
        let agent = id.agent_name(2);
        assert!(AgentName::new(agent.as_str()).is_ok());
        assert!(agent.as_str().ends_with("-2"));
        assert_ne!(id.agent_name(1), agent);
        // Ids made in the same millisecond still sort in order of creation and give distinct
        // agent names.
        let ids: Vec<TaskId> = (0..1000).map(|_| TaskId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
        let names: std::collections::HashSet<_> = ids.iter().map(|i| i.agent_name(1)).collect();
        assert_eq!(names.len(), ids.len());
        assert_eq!(
            TaskId::new("t1").unwrap().agent_name(1).as_str(),
            "agent-1-1"
        );
    }
}
