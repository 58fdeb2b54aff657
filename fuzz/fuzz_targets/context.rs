//! Task context validators: repo URLs, git refs and relative paths. Any input is accepted or
//! refused without panicking; an accepted path never escapes the workspace.
#![no_main]

use guildnet_core::context::{validate_ref, validate_rel_path, validate_repo_url, TaskContext};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = validate_repo_url(s);
        let _ = validate_ref(s);
        if validate_rel_path(s).is_ok() {
            assert!(!s.starts_with('/'), "{s:?}");
            assert!(!s.split(['/', '\\']).any(|c| c == ".."), "{s:?}");
            assert!(!s.contains('\0'), "{s:?}");
        }
    }
    if let Ok(ctx) = serde_json::from_slice::<TaskContext>(data) {
        let _ = ctx.validate();
    }
});
