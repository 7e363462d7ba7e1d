//! The `brood` command's argument parsing as a library, so that the fuzz targets (`fuzz/`)
//! and the property tests reach it without running the binary. The binary (`main.rs`) keeps
//! its own copy of the modules; this crate only compiles `run` a second time.

// Only the parsing half of `run` is used here. (`mod run;` finds `run.rs` or `run/mod.rs`,
// the same module file the binary compiles.)
#[allow(dead_code, reason = "only the parsing half of `run` is used here")]
mod run;

#[doc(hidden)]
pub mod fuzzing {
    //! Entry points for fuzzing; not an API.

    use clap::Parser;

    /// `brood run` alone, as clap parses it inside the binary.
    #[derive(Parser, Debug)]
    #[command(name = "brood-run")]
    struct Run {
        #[command(flatten)]
        args: super::run::RunArgs,
    }

    /// Parses the arguments after `brood run` with the binary's own definitions and value
    /// parsers (`--stdio N=SPEC`, `--timeout`, `--uid`, ...): the parsed options (their
    /// `Debug` form) or clap's error message.
    pub fn run_args<I, T>(args: I) -> Result<String, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let argv = std::iter::once(std::ffi::OsString::from("brood-run"))
            .chain(args.into_iter().map(Into::into));
        Run::try_parse_from(argv)
            .map(|r| format!("{:?}", r.args))
            .map_err(|e| e.to_string())
    }
}
