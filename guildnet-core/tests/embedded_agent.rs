//! An agent embedded in another program (a custom orchestrator running agents as tasks, a test
//! harness) must leave that program's own child processes alone: the orphan sweep that ends a
//! runner's leftovers only runs when the agent owns its process (`harden_self`).

use guildnet_core::agent::process::kill_orphans;
use std::time::Duration;

#[tokio::test]
async fn the_orphan_sweep_spares_the_host_programs_children() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let killed = kill_orphans(Duration::from_millis(300)).await;
    assert_eq!(killed, 0);
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the host's child was killed"
    );
    let _ = child.kill();
    let _ = child.wait();
}
