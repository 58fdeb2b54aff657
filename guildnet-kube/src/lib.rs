//! Kubernetes integration for GuildNet: the AgentTask CRD, its operator, per-cluster install manifests, the Kubernetes ClusterBackend and editor port-forward (issue #4).
//!
//! This crate is a placeholder in the workspace layout: it holds no code yet and exports nothing.
//! Its implementation lands with the issue named above.
