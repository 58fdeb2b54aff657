//! The orchestrator API's bodies: they live on the ground floor, in [`crate::api`]; this path
//! stays for code written against it.

pub use crate::api::*;
