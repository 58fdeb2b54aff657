//! docs/USAGE.md's CLI reference, generated from the clap definitions ([`markdown`]) so it
//! cannot drift: `bin/tests/usage_doc.rs` fails when the file differs, and
//! `GUILDNET_BLESS=1 cargo test -p guildnet-bin --test usage_doc` rewrites it.

use crate::cli_args::Cli;
use clap::{Command, CommandFactory};

/// The line before the generated reference in docs/USAGE.md.
pub const BEGIN: &str =
    "<!-- BEGIN GENERATED CLI REFERENCE (guildnet_bin::usage; do not edit by hand) -->";
/// The line after it.
pub const END: &str = "<!-- END GENERATED CLI REFERENCE -->";

/// The reference: one section per command with its `--help` text (env values hidden so the
/// text does not depend on the environment; the global options only in the first section).
pub fn markdown() -> String {
    let mut cmd = Cli::command().term_width(100);
    cmd.build();
    let mut out = String::new();
    section(&cmd, "guildnet", 2, &mut out);
    out
}

/// The options every command takes; shown once, in the top section.
const GLOBAL: [&str; 5] = ["url", "token", "context", "json", "output"];

fn section(cmd: &Command, path: &str, depth: usize, out: &mut String) {
    let mut c = cmd.clone().mut_args(|a| a.hide_env_values(true));
    if depth > 2 {
        for id in GLOBAL {
            if c.get_arguments().any(|a| a.get_id() == id) {
                c = c.mut_arg(id, |a| a.hide(true));
            }
        }
    }
    let help = c.render_long_help().to_string();
    let hashes = "#".repeat(depth.min(4) + 1);
    out.push_str(&format!("{hashes} `{path}`\n\n```text\n"));
    for line in help.trim_end().lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str("```\n\n");
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        section(sub, &format!("{path} {}", sub.get_name()), depth + 1, out);
    }
}

/// `doc` with the text between [`BEGIN`] and [`END`] replaced by `generated`; `None` when a
/// marker is missing.
pub fn splice(doc: &str, generated: &str) -> Option<String> {
    let b = doc.find(BEGIN)? + BEGIN.len();
    let e = doc[b..].find(END)? + b;
    Some(format!("{}\n\n{}{}", &doc[..b], generated, &doc[e..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let doc = format!("top\n{BEGIN}\nold\n{END}\nbottom\n");
        let new = splice(&doc, "new\n").unwrap();
        assert_eq!(new, format!("top\n{BEGIN}\n\nnew\n{END}\nbottom\n"));
        assert_eq!(splice(&new, "new\n").unwrap(), new);
        assert!(splice("no markers", "x").is_none());
    }

    #[test]
    fn every_command_has_a_section() {
        let md = markdown();
        for c in [
            "`guildnet schedule`",
            "`guildnet login`",
            "`guildnet context add`",
            "`guildnet org bootstrap`",
        ] {
            assert!(md.contains(c), "{c} missing");
        }
        assert!(!md.contains("`guildnet help`"));
    }
}
