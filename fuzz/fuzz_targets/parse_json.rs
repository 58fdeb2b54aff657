//! Every request body type through the orchestrator's JSON parser: any bytes give a value or a
//! 4xx error naming a field or the problem, never a panic or a 5xx.
#![no_main]

use guildnet_core::orchestrator::api::{
    ClaimRequest, CompleteRequest, CreateOrgRequest, EditorRequest, HeartbeatRequest, LogRequest,
    RegisterRequest, ScheduleRequest,
};
use guildnet_core::orchestrator::http::parse_json;
use guildnet_core::orchestrator::ApiError;
use libfuzzer_sys::fuzz_target;

fn check<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
    match parse_json::<T>(data) {
        Ok(v) => Some(v),
        Err(ApiError { status, .. }) => {
            assert!(status.is_client_error(), "{status} for {data:?}");
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(req) = check::<ScheduleRequest>(data) {
        // A parsed request's context is validated next; that must not panic either.
        let _ = req.org.as_str();
        let ctx = guildnet_core::context::TaskContext {
            repo: req.repo,
            files: req.files,
        };
        let _ = ctx.validate();
    }
    let _ = check::<CreateOrgRequest>(data);
    let _ = check::<RegisterRequest>(data);
    let _ = check::<ClaimRequest>(data);
    let _ = check::<HeartbeatRequest>(data);
    let _ = check::<LogRequest>(data);
    let _ = check::<CompleteRequest>(data);
    let _ = check::<EditorRequest>(data);
    let _ = check::<guildnet_core::orchestrator::bootstrap::OrgBootstrapRequest>(data);
    let _ = check::<guildnet_core::orchestrator::bootstrap::KubeconfigRequest>(data);
});
