//! Name validators: any string is accepted or refused without panicking; an accepted name is a
//! DNS label that survives a JSON round trip, and a task id's agent names are valid too.
#![no_main]

use guildnet_core::names::{AgentName, OrgName, TaskId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(o) = OrgName::new(s) {
        assert!(!o.as_str().is_empty() && o.as_str().len() <= 63, "{s:?}");
        assert!(
            o.as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{s:?}"
        );
        let j = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<OrgName>(&j).unwrap(), o);
    }
    if let Ok(a) = AgentName::new(s) {
        assert!(!a.as_str().contains(['/', '.', '\0']), "{s:?}");
    }
    if let Ok(t) = TaskId::new(s) {
        for attempt in [1, 2, u32::MAX] {
            let agent = t.agent_name(attempt);
            assert!(AgentName::new(agent.as_str()).is_ok(), "{agent}");
        }
    }
    // The task id an agent token claims to belong to is only ever a valid task id.
    if let Some(id) = guildnet_core::orchestrator::task_of_agent_token(s) {
        assert!(TaskId::new(id.as_str()).is_ok());
    }
    let _ = serde_json::from_slice::<AgentName>(data);
});
