//! docs/USAGE.md's CLI reference is the one clap generates: this fails when a flag or command
//! changed without the doc. `GUILDNET_BLESS=1 cargo test -p guildnet-bin --test usage_doc`
//! rewrites the generated part.

use guildnet_bin::usage;

#[test]
fn usage_md_matches_the_cli() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/USAGE.md");
    let doc = std::fs::read_to_string(path).expect("docs/USAGE.md");
    let want = usage::splice(&doc, &usage::markdown()).expect("the markers in docs/USAGE.md");
    if want == doc {
        return;
    }
    if std::env::var_os("GUILDNET_BLESS").is_some() {
        std::fs::write(path, &want).expect("write docs/USAGE.md");
        eprintln!("docs/USAGE.md rewritten");
        return;
    }
    let first = doc
        .lines()
        .zip(want.lines())
        .position(|(a, b)| a != b)
        .unwrap_or(doc.lines().count().min(want.lines().count()));
    panic!(
        "docs/USAGE.md is out of date (first difference at line {}): run \
         `GUILDNET_BLESS=1 cargo test -p guildnet-bin --test usage_doc`\nexpected: {:?}\nfound:    {:?}",
        first + 1,
        want.lines().nth(first),
        doc.lines().nth(first)
    );
}
