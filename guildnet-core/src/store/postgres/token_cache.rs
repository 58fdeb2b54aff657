//! Agent token hashes kept in memory, so that an agent request is authenticated without a read
//! of its own (every heartbeat, claim and log append presents the task's agent token).
//!
//! Measured without it: on two replicas behind nginx, the token read was one of the two
//! database round trips of a heartbeat and of a claim (docs/BENCHMARKS.md, issue 17's runs).
//!
//! **Staying right across replicas.** A task's token hash changes only when the task is
//! dispatched again (a new attempt gets a new token) and disappears when retention prunes the
//! task. Both writes send a notification in their own transaction, delivered at commit to every
//! replica's LISTEN connection (`guildnet_tokens`: the task id, or an empty payload for "forget
//! everything"); each replica drops what it was told. The replica that made the write also drops
//! the entry itself once the write returns, before it answers, so its own next request reads
//! the new hash. What this gives:
//! - on the replica that rotated a token, the old one is refused as soon as the rotation is
//!   acknowledged; on the others as soon as the notification arrives (milliseconds: the same
//!   order as a request that read the row just before the commit);
//! - while the LISTEN connection is down (and until it is back and the cache was emptied),
//!   nothing is kept or served from memory: every request reads the store, as without a cache;
//! - each entry lives at most [`TTL`], a bound on a stale entry should a notification be lost
//!   without the connection noticing it (a half-open TCP connection);
//! - a read that began before a drop does not put back what it read ([`TokenCache::generation`]
//!   is checked under the lock).
//!
//! A `HashMap` under a mutex, not a cache crate: the rules above (a generation per change, a
//! cache that is off while the connection is down) are the whole of the logic, and a lookup is
//! one hash and one short critical section, well below the read it replaces.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The NOTIFY channel of token rotations and prunes (payload: a task id, or empty for all).
pub(super) const TOKENS_CHANNEL: &str = "guildnet_tokens";

/// How long an entry is served before the store is read again.
pub(super) const TTL: Duration = Duration::from_secs(30);

/// Entries kept at most; past it the cache starts again from empty.
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
struct State {
    /// Whether notifications are being received, so entries may be kept.
    live: bool,
    /// Bumped by every change that could make a read in flight stale.
    generation: u64,
    entries: HashMap<String, (String, Instant)>,
}

/// Token hashes by task id, valid while the LISTEN connection of the store is up.
#[derive(Default)]
pub(super) struct TokenCache {
    state: Mutex<State>,
}

impl TokenCache {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    /// The cached hash of `task`, if the cache is live and holds a fresh one.
    pub(super) fn get(&self, task: &str) -> Option<String> {
        self.with(|s| {
            if !s.live {
                return None;
            }
            match s.entries.get(task) {
                Some((h, at)) if at.elapsed() < TTL => Some(h.clone()),
                _ => None,
            }
        })
    }

    /// The generation to pass to [`TokenCache::put`] after reading the store.
    pub(super) fn generation(&self) -> u64 {
        self.with(|s| s.generation)
    }

    /// Keeps `hash` for `task` if nothing changed since `generation` was taken and the cache
    /// is live.
    pub(super) fn put(&self, task: &str, hash: String, generation: u64) {
        self.with(|s| {
            if !s.live || s.generation != generation {
                return;
            }
            if s.entries.len() >= MAX_ENTRIES {
                s.entries.clear();
            }
            s.entries.insert(task.to_owned(), (hash, Instant::now()));
        })
    }

    /// Drops `task`'s entry (its token changed or the task is gone).
    pub(super) fn forget(&self, task: &str) {
        self.with(|s| {
            s.generation = s.generation.wrapping_add(1);
            s.entries.remove(task);
        })
    }

    /// Drops every entry.
    pub(super) fn forget_all(&self) {
        self.with(|s| {
            s.generation = s.generation.wrapping_add(1);
            s.entries.clear();
        })
    }

    /// What a notification on [`TOKENS_CHANNEL`] says: drop one task, or all (empty payload).
    pub(super) fn notified(&self, payload: &str) {
        if payload.is_empty() {
            self.forget_all()
        } else {
            self.forget(payload)
        }
    }

    /// Turns the cache on (notifications are received from now on) or off (the connection was
    /// lost); either way it starts from empty.
    pub(super) fn set_live(&self, live: bool) {
        self.with(|s| {
            s.generation = s.generation.wrapping_add(1);
            s.entries.clear();
            s.live = live;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_kept_or_served_until_notifications_are_received() {
        let c = TokenCache::default();
        let g = c.generation();
        c.put("t1", "h1".into(), g);
        assert_eq!(c.get("t1"), None);
        c.set_live(true);
        let g = c.generation();
        c.put("t1", "h1".into(), g);
        assert_eq!(c.get("t1").as_deref(), Some("h1"));
        c.set_live(false);
        assert_eq!(
            c.get("t1"),
            None,
            "the connection was lost: the cache is off and empty"
        );
        c.set_live(true);
        assert_eq!(c.get("t1"), None, "back on, it starts from empty");
    }

    #[test]
    fn a_read_that_began_before_a_rotation_does_not_put_back_the_old_hash() {
        let c = TokenCache::default();
        c.set_live(true);
        let before = c.generation();
        // The rotation commits and drops the entry while the read was in flight.
        c.forget("t1");
        c.put("t1", "old".into(), before);
        assert_eq!(c.get("t1"), None);
        let after = c.generation();
        c.put("t1", "new".into(), after);
        assert_eq!(c.get("t1").as_deref(), Some("new"));
    }

    #[test]
    fn notifications_drop_one_task_or_all() {
        let c = TokenCache::default();
        c.set_live(true);
        for t in ["a", "b", "c"] {
            let g = c.generation();
            c.put(t, format!("h-{t}"), g);
        }
        c.notified("b");
        assert_eq!(c.get("a").as_deref(), Some("h-a"));
        assert_eq!(c.get("b"), None);
        c.notified("");
        assert_eq!(c.get("a"), None);
        assert_eq!(c.get("c"), None);
    }
}
