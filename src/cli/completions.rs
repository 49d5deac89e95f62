//! `autohealer completions bash|zsh|fish`: a completion script generated from the same clap
//! definitions that parse the command line, so it can never offer an option that does not exist.

use clap::CommandFactory;

use super::Cli;

/// The shells a script is generated for (SPEC §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Shell {
    fn generator(self) -> clap_complete::Shell {
        match self {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// The completion script for `shell`. Built in memory: clap_complete panics when its writer
/// fails, and stdout may be a closed pipe.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut command = Cli::command();
    let name = command.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell.generator(), &mut command, name, &mut script);
    script
}
