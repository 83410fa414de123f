//! Program configurations for tests, built by the programs' own parsers.
//!
//! A test states only what it needs to differ from production (its
//! database, its stream, port 0, a token); every other setting is the
//! program's real default, read from its `clap` definition, so the harness
//! runs what an operator gets and cannot drift from `--help`.
//!
//! The process environment is ignored: a `ROWPIPE_*` variable in the
//! developer's shell, or one another test of the same binary sets, must not
//! change what a test runs with.

use std::ffi::OsString;

/// Parse `args` (without the program name) into `C`, with every setting not
/// given taking its default and no setting read from the environment.
pub fn parse<C, I, T>(args: I) -> anyhow::Result<C>
where
    C: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let command = C::command().mut_args(|arg| arg.env(None));
    let name = OsString::from(command.get_name());
    let matches = command
        .try_get_matches_from(std::iter::once(name).chain(args.into_iter().map(Into::into)))?;
    Ok(C::from_arg_matches(&matches)?)
}

#[cfg(test)]
mod tests {
    use rowpipe_upload::config::Config;

    #[test]
    fn unset_settings_take_the_programs_defaults_and_the_environment_is_ignored() {
        let defaults: Config = super::parse::<Config, _, &str>([]).expect("defaults parse");
        // SAFETY: the only test of this unit-test binary: no other thread
        // reads the environment meanwhile.
        unsafe { std::env::set_var("ROWPIPE_MAX_COLUMNS", "3") };
        let parsed: Config = super::parse(["--max-backlog", "7"]).expect("parse");
        assert_eq!(parsed.max_backlog, 7);
        assert_eq!(parsed.max_columns, defaults.max_columns);
        assert_ne!(parsed.max_columns, 3);
    }
}
