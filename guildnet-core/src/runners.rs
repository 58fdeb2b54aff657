//! Runner presets: the command templates for the coding CLIs people run as GuildNet agents,
//! with how each receives the task and which environment it needs.
//!
//! A preset is only a template (see the README's Runners section): the task text reaches the
//! runner on stdin and in `GUILDNET_TASK`, never on its command line; its working directory is
//! the checkout. API keys come from the orchestrator's secret agent environment
//! (`--agent-secret-file NAME=PATH` or `--agent-secret-env NAME`), never from the template.
//! This module owns the preset table and nothing else; choosing a runner per org or per task is
//! [`crate::agent_settings`]'s job.

/// A runner preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerPreset {
    /// Name (`--runner-preset NAME`).
    pub name: &'static str,
    /// Where the CLI comes from (package registry and package name).
    pub package: &'static str,
    /// The command template.
    pub template: &'static str,
    /// How the task text reaches it.
    pub input: &'static str,
    /// Environment variables it needs; each entry lists alternatives (any one suffices).
    /// Empty for presets that need none.
    pub needs: &'static [&'static [&'static str]],
    /// Notes for the operator.
    pub notes: &'static str,
}

/// Every preset.
pub const PRESETS: &[RunnerPreset] = &[
    RunnerPreset {
        name: "claude-code",
        package: "npm @anthropic-ai/claude-code (command `claude`)",
        template: "claude -p --permission-mode acceptEdits --output-format text",
        input: "stdin (print mode `-p` without a prompt argument reads the prompt from stdin)",
        needs: &[&["ANTHROPIC_API_KEY"]],
        notes:
            "acceptEdits lets it edit files without asking; shell commands stay denied in print \
                mode unless allowed with --allowedTools. It refuses \
                --dangerously-skip-permissions as root: run the agent as a normal user.",
    },
    RunnerPreset {
        name: "codex",
        package: "npm @openai/codex (command `codex`)",
        template: "codex exec --sandbox workspace-write --skip-git-repo-check --ephemeral -",
        input: "stdin (`-` as the prompt argument)",
        needs: &[&["CODEX_API_KEY", "OPENAI_API_KEY"]],
        notes: "`codex exec` prints progress on stderr and the final message on stdout. Its \
                workspace-write sandbox needs Landlock/seccomp; where a container forbids them, \
                use a named runner with --sandbox danger-full-access (the pod is the sandbox).",
    },
    RunnerPreset {
        name: "gemini",
        package: "npm @google/gemini-cli (command `gemini`)",
        template: "gemini --yolo",
        input: "stdin (without a TTY the CLI runs headless and takes stdin as the prompt)",
        needs: &[&["GEMINI_API_KEY", "GOOGLE_API_KEY"]],
        notes: "--yolo approves every tool call (edits and shell commands).",
    },
    RunnerPreset {
        name: "opencode",
        package: "npm opencode-ai (command `opencode`)",
        template: "opencode run",
        input: "stdin (`opencode run` appends piped stdin to the message)",
        needs: &[&["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY"]],
        notes: "The provider and model come from opencode's config or --model provider/model \
                (add it in a named runner).",
    },
    RunnerPreset {
        name: "aider",
        package: "PyPI aider-chat (command `aider`)",
        template: "aider --message-file /dev/stdin --yes-always --no-auto-commits \
                   --no-check-update --no-analytics --no-pretty --no-show-model-warnings \
                   --no-suggest-shell-commands \
                   --chat-history-file {workspace}/.aider.chat.history.md \
                   --input-history-file {workspace}/.aider.input.history",
        input: "stdin (read as the message file)",
        needs: &[&[
            "OPENAI_API_KEY",
            "ANTHROPIC_API_KEY",
            "GEMINI_API_KEY",
            "OPENROUTER_API_KEY",
        ]],
        notes: "The model comes from AIDER_MODEL (aider reads every option from AIDER_* \
                variables); an OpenAI-compatible endpoint from OPENAI_API_BASE. The agent \
                commits aider's edits itself, hence --no-auto-commits. Its chat histories go \
                to the workspace, outside the checkout; aider adds `.aider*` to .gitignore (its \
                repo-map cache lives in the checkout), which then is part of the change.",
    },
    RunnerPreset {
        name: "script",
        package: "none (POSIX sh)",
        template: "sh -s",
        input: "stdin: the task text is the shell script",
        needs: &[],
        notes: "Runs whatever the task says: only for trusted schedulers.",
    },
    RunnerPreset {
        name: "echo",
        package: "none (cat)",
        template: "cat",
        input: "stdin, echoed to the log",
        needs: &[],
        notes: "Shows the pipeline end to end; changes nothing.",
    },
];

/// The preset called `name`.
pub fn preset(name: &str) -> Option<&'static RunnerPreset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// Names of every preset, comma-separated (for error messages).
pub fn preset_names() -> String {
    PRESETS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl RunnerPreset {
    /// The needed variables that `has` does not provide, one line per unmet need
    /// (`ANTHROPIC_API_KEY`, or `CODEX_API_KEY or OPENAI_API_KEY`).
    pub fn missing(&self, has: impl Fn(&str) -> bool) -> Vec<String> {
        self.needs
            .iter()
            .filter(|alts| !alts.iter().any(|n| has(n)))
            .map(|alts| alts.join(" or "))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_a_valid_template_without_task_text() {
        for p in PRESETS {
            let words = shell_words::split(p.template).unwrap();
            assert!(!words.is_empty(), "{}", p.name);
            // The task text never goes on a command line.
            assert!(!p.template.contains("GUILDNET_TASK"), "{}", p.name);
            assert!(preset(p.name).is_some());
        }
        assert!(preset("nope").is_none());
        assert!(preset_names().contains("aider"));
    }

    #[test]
    fn missing_lists_unmet_needs() {
        let codex = preset("codex").unwrap();
        assert_eq!(
            codex.missing(|_| false),
            vec!["CODEX_API_KEY or OPENAI_API_KEY".to_owned()]
        );
        assert!(codex.missing(|n| n == "OPENAI_API_KEY").is_empty());
        assert!(preset("script").unwrap().missing(|_| false).is_empty());
    }
}
