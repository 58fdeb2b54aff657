//! Retention and disk use: finished tasks (Succeeded, Failed, Cancelled) older than a
//! configured age are removed with their log lines, their events, their agents' records and
//! their local workspaces, by a background job and on request (`POST /admin/prune`); `GET /admin/disk`
//! tells how much the state dir, the database and the workspaces take.
//!
//! The audit log stays (history), and records each prune. The job runs on one replica at a time
//! ([`crate::store::StateStore::lead`]). The SQLite and PostgreSQL stores implement the
//! removal; a store that does not answers 501 to a prune and the job logs a warning.

use super::error::ApiError;
use super::http::{AdminAuth, ApiJson};
use super::service::Orchestrator;
use crate::names::TaskId;
use crate::state_dir::StatePaths;
use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use std::path::Path;
use std::time::Duration;

/// Tasks removed per store call (each call is one transaction).
const PRUNE_BATCH: usize = 500;

pub use crate::api::{DiskUsage, PruneReport, PruneRequest};

/// Parses an age: a number with a unit, `90s`, `45m`, `12h`, `30d`, `2w` (a bare number is
/// seconds).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not an age: a number with s, m, h, d or w, e.g. 30d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use s, m, h, d or w")),
    };
    n.checked_mul(mult)
        .filter(|secs| *secs <= 100 * 365 * 86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long (at most 100 years)"))
}

/// Bytes of the regular files under `dir` (symbolic links are not followed); 0 if missing.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

/// Disk use of `paths` and the workspaces under `workspaces` (walks the directories: call it
/// off the async threads).
pub fn disk_usage(
    paths: &StatePaths,
    workspaces: Option<&Path>,
    retention: Option<Duration>,
) -> DiskUsage {
    let db = paths.orchestrator_db();
    let database_bytes = ["", "-wal", "-shm"]
        .iter()
        .filter_map(|s| {
            let mut p = db.clone().into_os_string();
            p.push(s);
            std::fs::metadata(p).ok().map(|m| m.len())
        })
        .sum();
    let count = workspaces
        .and_then(|ws| std::fs::read_dir(ws).ok())
        .map(|r| r.flatten().filter(|e| e.path().is_dir()).count() as u64)
        .unwrap_or(0);
    DiskUsage {
        state_dir: Some(paths.root().display().to_string()),
        state_dir_bytes: dir_bytes(paths.root()),
        database_bytes,
        workspaces_dir: workspaces.map(|w| w.display().to_string()),
        workspaces_bytes: workspaces.map(dir_bytes).unwrap_or(0),
        workspaces: count,
        retention_secs: retention.map(|r| r.as_secs()),
    }
}

/// Removes the local workspace of each task (if any) under `root`; returns (removed, bytes).
fn remove_workspaces(root: &Path, ids: &[TaskId]) -> (u64, u64) {
    let (mut n, mut bytes) = (0, 0);
    for id in ids {
        let dir = root.join(id.as_str());
        if !dir.is_dir() {
            continue;
        }
        let b = dir_bytes(&dir);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                n += 1;
                bytes += b;
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "retention: cannot remove a workspace")
            }
        }
    }
    (n, bytes)
}

impl Orchestrator {
    /// Removes the tasks that finished before `before`, their logs, agents and local
    /// workspaces.
    pub async fn prune_finished(&self, before: DateTime<Utc>) -> Result<PruneReport, ApiError> {
        let mut report = PruneReport {
            before,
            ..Default::default()
        };
        loop {
            let ids = self.store().prune_finished(before, PRUNE_BATCH).await?;
            report.tasks += ids.len() as u64;
            if let Some(root) = self.config().workspaces_root.clone() {
                let batch = ids.clone();
                let (n, b) = tokio::task::spawn_blocking(move || remove_workspaces(&root, &batch))
                    .await
                    .unwrap_or_default();
                report.workspaces += n;
                report.workspace_bytes += b;
            }
            if ids.len() < PRUNE_BATCH {
                break;
            }
        }
        if report.tasks > 0 {
            tracing::info!(
                tasks = report.tasks,
                workspaces = report.workspaces,
                bytes = report.workspace_bytes,
                before = %before,
                "retention: removed finished tasks"
            );
        }
        Ok(report)
    }

    /// Starts the retention job when a retention age is configured: a prune every
    /// `min(age / 4, 1 h)` (at least every second). Abort the handle to stop it.
    pub fn spawn_retention(&self) -> Option<tokio::task::JoinHandle<()>> {
        let age = self.config().retention?;
        let every = (age / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match me.store().lead("retention").await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "retention: cannot tell which replica leads");
                        continue;
                    }
                }
                let before =
                    Utc::now() - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
                if let Err(e) = me.prune_finished(before).await {
                    tracing::warn!(error = %e, "retention pass failed");
                }
            }
        }))
    }
}

/// Removes finished tasks older than `olderThanSecs`, with their logs, agents and workspaces.
#[utoipa::path(post, path = "/admin/prune", tag = "admin", request_body = PruneRequest,
    security(("admin" = [])),
    responses((status = 200, body = PruneReport), (status = 400, body = super::error::ErrorBody),
        (status = 501, body = super::error::ErrorBody)))]
pub async fn prune(
    State(o): State<Orchestrator>,
    _: AdminAuth,
    ApiJson(req): ApiJson<PruneRequest>,
) -> Result<Json<PruneReport>, ApiError> {
    let age = chrono::Duration::try_seconds(req.older_than_secs as i64)
        .filter(|_| req.older_than_secs <= i64::MAX as u64 / 1000)
        .ok_or_else(|| ApiError::invalid("olderThanSecs", "too large"))?;
    Ok(Json(o.prune_finished(Utc::now() - age).await?))
}

/// Disk use of the state dir, the database and the local workspaces.
#[utoipa::path(get, path = "/admin/disk", tag = "admin", security(("admin" = [])),
    responses((status = 200, body = DiskUsage)))]
pub async fn disk(
    State(o): State<Orchestrator>,
    _: AdminAuth,
) -> Result<Json<DiskUsage>, ApiError> {
    let retention = o.config().retention;
    let Some(paths) = o.config().state_paths.clone() else {
        return Ok(Json(DiskUsage {
            retention_secs: retention.map(|r| r.as_secs()),
            ..Default::default()
        }));
    };
    let ws = o.config().workspaces_root.clone();
    let usage = tokio::task::spawn_blocking(move || disk_usage(&paths, ws.as_deref(), retention))
        .await
        .map_err(|e| ApiError::internal(format!("disk usage task failed: {e}")))?;
    Ok(Json(usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_age("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_age("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_age("2w").unwrap(), Duration::from_secs(14 * 86_400));
        for bad in ["", "d", "3y", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dir_bytes_counts_files_and_skips_links() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/one"), [0u8; 10]).unwrap();
        std::fs::write(d.path().join("a/b/two"), [0u8; 32]).unwrap();
        std::os::unix::fs::symlink("/usr", d.path().join("link")).unwrap();
        assert_eq!(dir_bytes(d.path()), 42);
        assert_eq!(dir_bytes(&d.path().join("missing")), 0);
    }
}
