//! `tokenkeeper completions` and `tokenkeeper man`: shell completions and
//! manual pages, generated from the same clap definitions that parse the
//! command line, so they never disagree with it.

use std::io::Write;

use clap_complete::Shell;

use crate::args::{CompletionsArgs, ManArgs, ShellArg};
use crate::error::CliError;

/// The name users type.
const BIN: &str = "tokenkeeper";

/// The completion script for `shell`.
pub(crate) fn completion_script(shell: ShellArg) -> Vec<u8> {
    let shell = match shell {
        ShellArg::Bash => Shell::Bash,
        ShellArg::Zsh => Shell::Zsh,
        ShellArg::Fish => Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut crate::command(), BIN, &mut out);
    out
}

pub(crate) fn completions(args: &CompletionsArgs) -> Result<(), CliError> {
    write_stdout(&completion_script(args.shell))
}

/// The command as the manual pages show it: built, so that every
/// subcommand knows its full name (`tokenkeeper watch`, page
/// `tokenkeeper-watch`) and carries the global options.
fn built_command() -> clap::Command {
    let mut cmd = crate::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// A manual page: the command's own (`None`), or a subcommand's.
pub(crate) fn man_page(subcommand: Option<&str>) -> Result<Vec<u8>, CliError> {
    let cmd = built_command();
    let page = match subcommand {
        None => cmd,
        Some(name) => cmd.find_subcommand(name).cloned().ok_or_else(|| {
            let names = cmd
                .get_subcommands()
                .map(|s| s.get_name())
                .collect::<Vec<_>>()
                .join(", ");
            CliError::usage(format!("no subcommand {name:?}; there are: {names}"))
        })?,
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .manual("tokenkeeper manual")
        .render(&mut out)
        .map_err(|e| CliError::other(format!("cannot render the manual page: {e}")))?;
    Ok(out)
}

pub(crate) fn man(args: &ManArgs) -> Result<(), CliError> {
    match &args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::other(format!("cannot create {}: {e}", dir.display())))?;
            let mut pages = vec![(None, format!("{BIN}.1"))];
            pages.extend(built_command().get_subcommands().map(|s| {
                (
                    Some(s.get_name().to_owned()),
                    format!("{BIN}-{}.1", s.get_name()),
                )
            }));
            for (subcommand, file) in pages {
                let path = dir.join(file);
                std::fs::write(&path, man_page(subcommand.as_deref())?).map_err(|e| {
                    CliError::other(format!("cannot write {}: {e}", path.display()))
                })?;
                println!("{}", path.display());
            }
            Ok(())
        }
        None => write_stdout(&man_page(args.subcommand.as_deref())?),
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::other(format!("cannot write to stdout: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand's name and long flags, from the clap definitions.
    fn subcommands_and_flags() -> Vec<(String, Vec<String>)> {
        built_command()
            .get_subcommands()
            .map(|sub| {
                let flags = sub
                    .get_arguments()
                    .filter(|a| !a.is_hide_set())
                    .filter_map(|a| a.get_long())
                    .map(|l| format!("--{l}"))
                    .collect::<Vec<_>>();
                (sub.get_name().to_owned(), flags)
            })
            .collect()
    }

    #[test]
    fn the_definitions_have_what_the_tests_look_for() {
        let all = subcommands_and_flags();
        let names: Vec<_> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "token",
                "login",
                "inspect",
                "watch",
                "demo",
                "simulate",
                "completions",
                "man"
            ]
        );
        let watch = &all
            .iter()
            .find(|(name, _)| name == "watch")
            .expect("a watch subcommand")
            .1;
        for flag in [
            "--sink",
            "--ca-file",
            "--client-cert",
            "--verbose",
            "--help",
        ] {
            assert!(watch.contains(&flag.to_owned()), "{flag} in {watch:?}");
        }
    }

    #[test]
    fn completions_name_every_subcommand_and_flag() {
        for shell in [ShellArg::Bash, ShellArg::Zsh, ShellArg::Fish] {
            let script = String::from_utf8(completion_script(shell)).expect("UTF-8");
            for (name, flags) in subcommands_and_flags() {
                assert!(
                    script.contains(&name),
                    "{shell:?} completions lack the subcommand {name}"
                );
                for flag in flags {
                    // fish writes `-l flag`, bash and zsh `--flag`.
                    let bare = flag.trim_start_matches('-');
                    let found = match shell {
                        ShellArg::Fish => script.contains(&format!("-l {bare}")),
                        _ => script.contains(&flag),
                    };
                    assert!(found, "{shell:?} completions lack {name} {flag}");
                }
            }
        }
        // Each script hooks itself up in its shell's own way.
        let bash = String::from_utf8(completion_script(ShellArg::Bash)).unwrap();
        assert!(bash.contains("complete -F _tokenkeeper"), "{bash}");
        let zsh = String::from_utf8(completion_script(ShellArg::Zsh)).unwrap();
        assert!(zsh.starts_with("#compdef tokenkeeper"), "{zsh}");
        let fish = String::from_utf8(completion_script(ShellArg::Fish)).unwrap();
        assert!(fish.contains("complete -c tokenkeeper"), "{fish}");
    }

    /// roff escapes a hyphen as `\-`; this is the text a reader sees.
    fn plain(roff: &[u8]) -> String {
        String::from_utf8(roff.to_vec())
            .expect("UTF-8")
            .replace("\\-", "-")
    }

    #[test]
    fn man_pages_name_every_subcommand_and_flag() {
        let main = plain(&man_page(None).unwrap());
        assert!(
            main.starts_with(".ie") || main.contains(".TH tokenkeeper 1"),
            "{main}"
        );
        for (name, flags) in subcommands_and_flags() {
            assert!(
                main.contains(&format!("tokenkeeper-{name}(1)")),
                "{name} in {main}"
            );
            let page = plain(&man_page(Some(&name)).unwrap());
            assert!(
                page.contains(&format!(".TH tokenkeeper-{name} 1")),
                "{page}"
            );
            assert!(page.contains(&format!("tokenkeeper {name}")), "{page}");
            for flag in flags {
                assert!(
                    page.contains(&flag),
                    "the {name} page lacks {flag}:\n{page}"
                );
            }
            // The examples of `--help` are on the page too.
            assert!(page.contains("Examples:"), "{name}: {page}");
        }
        assert!(man_page(Some("nonsense")).is_err());
    }
}
