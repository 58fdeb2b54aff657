//! `guildnet-dashboard`: placeholder until issue #6 lands.

fn main() -> std::process::ExitCode {
    eprintln!("guildnet-dashboard is not built yet (issue #6)");
    std::process::ExitCode::FAILURE
}
