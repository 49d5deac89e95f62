//! `autohealer man`: the manual page, in roff, generated from the clap definitions (with the
//! same help text as `--help`), so the page and the binary cannot disagree.

use std::io;
use std::path::Path;

use clap::CommandFactory;

use super::Cli;

/// autohealer(1), in roff.
pub fn page() -> Vec<u8> {
    let mut page = Vec::new();
    // Rendering into memory cannot fail.
    // Without `help`, as in the pages `write_all` writes: `--help` is each page's own option.
    let command = Cli::command().disable_help_subcommand(true);
    let _ = clap_mangen::Man::new(command).render(&mut page);
    page
}

/// Writes autohealer.1 and one page per subcommand (autohealer-run.1, ...), which autohealer(1)
/// refers to, into `dir`, which must exist.
pub fn write_all(dir: &Path) -> io::Result<()> {
    clap_mangen::generate_to(Cli::command(), dir).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!(
                "cannot write the manual pages into {}: {err}",
                dir.display()
            ),
        )
    })
}
