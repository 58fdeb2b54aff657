//! Human-readable output of the CLI: tables with AGE columns and the `task` view.

use chrono::{DateTime, Utc};
use guildnet_core::api::TaskDetail;
use guildnet_core::model::{Agent, Task};
use guildnet_core::orchestrator::retention::DiskUsage;
use std::fmt::Write as _;

/// A duration as kubectl prints ages: `45s`, `3m12s`, `2h5m`, `3d4h`, `400d`.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        match s % 60 {
            0 => format!("{m}m"),
            r => format!("{m}m{r}s"),
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        match h % 24 {
            0 => format!("{d}d"),
            r => format!("{d}d{r}h"),
        }
    } else {
        format!("{d}d")
    }
}

/// How long ago `t` was, at `now`.
pub fn age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    human_duration((now - t).num_seconds())
}

/// The task list: ID, STATUS, ORG, AGENT, AGE (since created) and the task's first words.
pub fn tasks_table(tasks: &[Task], now: DateTime<Utc>) -> String {
    let mut out = format!(
        "{:<34} {:<10} {:<16} {:<22} {:<7} TASK\n",
        "ID", "STATUS", "ORG", "AGENT", "AGE"
    );
    for t in tasks {
        let _ = writeln!(
            out,
            "{:<34} {:<10} {:<16} {:<22} {:<7} {}",
            t.id,
            t.status.to_string(),
            t.org.to_string(),
            t.agent.as_ref().map(|a| a.as_str()).unwrap_or("-"),
            age(t.created_at, now),
            one_line(&t.task, 40)
        );
    }
    out
}

/// The agent list: NAME, ORG, TASK, AGE (since registered) and LAST SEEN.
pub fn agents_table(agents: &[Agent], now: DateTime<Utc>) -> String {
    let mut out = format!(
        "{:<22} {:<16} {:<34} {:<7} LAST SEEN\n",
        "NAME", "ORG", "TASK", "AGE"
    );
    for a in agents {
        let _ = writeln!(
            out,
            "{:<22} {:<16} {:<34} {:<7} {} ago",
            a.name.to_string(),
            a.org.to_string(),
            a.task_id.as_ref().map(|t| t.as_str()).unwrap_or("-"),
            age(a.registered_at, now),
            age(a.last_seen_at, now)
        );
    }
    out
}

/// One task as labelled lines: status and outcome first, then times, context, workload and the
/// task text, and the command that prints its log.
pub fn task_view(d: &TaskDetail, now: DateTime<Utc>) -> String {
    let t = &d.task;
    let mut out = String::new();
    let mut field = |k: &str, v: String| {
        let _ = writeln!(out, "{:<10} {v}", format!("{k}:"));
    };
    field("Task", t.id.to_string());
    field("Org", t.org.to_string());
    let mut status = t.status.to_string();
    if let Some(c) = t.exit_code {
        let _ = write!(status, " (exit code {c})");
    }
    field("Status", status);
    if let Some(r) = &t.reason {
        field("Reason", r.clone());
    }
    if let Some(w) = &d.waiting {
        field("Waiting", w.clone());
    }
    field(
        "Agent",
        t.agent
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    if let Some(h) = &t.agent_hint {
        field("Hint", h.clone());
    }
    let plural = if t.claims == 1 { "" } else { "s" };
    field(
        "Attempt",
        format!("{} ({} claim{plural})", t.attempt, t.claims),
    );
    field("Created", stamp(t.created_at, now));
    if let Some(s) = t.started_at {
        field("Started", stamp(s, now));
    }
    if let Some(f) = t.finished_at {
        let took = t.started_at.unwrap_or(t.created_at);
        field(
            "Finished",
            format!(
                "{} (took {})",
                stamp(f, now),
                human_duration((f - took).num_seconds())
            ),
        );
    }
    if let Some(r) = &t.context.repo {
        let at = r
            .git_ref
            .as_deref()
            .map(|g| format!(" @ {g}"))
            .unwrap_or_default();
        field("Repo", format!("{}{at}", r.url));
    }
    if !t.context.files.is_empty() {
        let names: Vec<&str> = t.context.files.iter().map(|f| f.path.as_str()).collect();
        field("Files", names.join(", "));
    }
    if let Some(pr) = &t.pr_url {
        field("PR", pr.clone());
    }
    for a in &t.artifacts {
        field("Artifact", format!("{} ({}): {}", a.name, a.kind, a.uri));
    }
    if let Some(w) = &d.workload {
        let phase = w
            .phase
            .as_deref()
            .map(|p| format!(" {p}"))
            .unwrap_or_default();
        field("Workload", format!("{}{phase}", w.resource));
        for l in w.conditions.iter().chain(&w.pods).chain(&w.events) {
            field("", l.clone());
        }
    }
    out.push_str("Text:\n");
    for l in t.task.lines() {
        let _ = writeln!(out, "    {l}");
    }
    let follow = if t.status.is_terminal() { "" } else { " -f" };
    let _ = write!(out, "\nLog: guildnet logs {}{follow}\n", t.id);
    out
}

/// Bytes as `512 B`, `3.4 KiB`, `12.0 MiB`, `1.2 GiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

/// `guildnet disk`.
pub fn disk_view(d: &DiskUsage) -> String {
    let mut out = String::new();
    let dir = |p: &Option<String>| p.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "{:<11} {:>10}  {}",
        "state dir:",
        human_bytes(d.state_dir_bytes),
        dir(&d.state_dir)
    );
    let _ = writeln!(
        out,
        "{:<11} {:>10}",
        "database:",
        human_bytes(d.database_bytes)
    );
    let _ = writeln!(
        out,
        "{:<11} {:>10}  {} ({} workspaces)",
        "workspaces:",
        human_bytes(d.workspaces_bytes),
        dir(&d.workspaces_dir),
        d.workspaces
    );
    let _ = match d.retention_secs {
        Some(s) => writeln!(
            out,
            "retention:  finished tasks are removed {} after they finish",
            human_duration(s as i64)
        ),
        None => writeln!(
            out,
            "retention:  off (finished tasks are kept; `guildnet up --retention 30d` or `guildnet prune --older-than 30d`)"
        ),
    };
    out
}

fn stamp(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "{} ({} ago)",
        t.format("%Y-%m-%d %H:%M:%S UTC"),
        age(t, now)
    )
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.chars().map(|c| if c == '\n' { ' ' } else { c }).collect();
    if flat.chars().count() > max {
        let mut cut: String = flat.chars().take(max - 1).collect();
        cut.push('…');
        cut
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (192, "3m12s"),
            (60 * 45, "45m"),
            (3600 * 5 + 60 * 7, "5h7m"),
            (3600 * 20, "20h"),
            (86_400 * 3 + 3600 * 4, "3d4h"),
            (86_400 * 400, "400d"),
            (-5, "0s"),
        ];
        for (s, want) in cases {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn bytes_read_like_du_h() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 + 400), "3.4 KiB");
        assert_eq!(human_bytes(12 * 1024 * 1024), "12.0 MiB");
        assert_eq!(human_bytes(5 << 40), "5.0 TiB");
    }

    #[test]
    fn long_task_text_is_cut_on_one_line() {
        assert_eq!(one_line("a\nb", 40), "a b");
        let long = "x".repeat(50);
        let cut = one_line(&long, 40);
        assert_eq!(cut.chars().count(), 40);
        assert!(cut.ends_with('…'));
    }
}
