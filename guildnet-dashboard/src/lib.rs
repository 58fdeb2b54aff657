//! GuildNet dashboard (issue #6). Placeholder until the implementation lands.
