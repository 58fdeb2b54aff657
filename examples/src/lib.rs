//! GuildNet examples (issue #9). Placeholder until the examples land.
