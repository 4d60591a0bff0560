//! `blazectl completions SHELL` and `blazectl man`: shell completions and
//! a man page, made from the same definitions that parse the arguments,
//! so they never drift from the tool. Neither needs a running agent.

use clap::CommandFactory as _;

use super::Cli;

/// Prints the completion script for `shell`, e.g.
/// `blazectl completions bash > /etc/bash_completion.d/blazectl`.
pub(crate) fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "blazectl", &mut std::io::stdout());
    Ok(())
}

/// Prints the man page in roff, e.g. `blazectl man > blazectl.1`.
pub(crate) fn man() -> anyhow::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
    Ok(())
}
