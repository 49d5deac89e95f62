//! `autohealer completions` and `autohealer man` (SPEC §10): generated from the clap
//! definitions, loaded by a real bash and rendered by a real groff where one is installed.

use std::process::Command;

use crate::util::{binary, run_cli};

/// The subcommands `autohealer help` lists, so a new one is checked without editing this test.
fn subcommands() -> Vec<String> {
    let (code, stdout, stderr) = run_cli(&["help"]);
    assert_eq!(code, 0, "{stderr}");
    let listed: Vec<String> = stdout
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect();
    for expected in ["run", "check", "send", "completions", "man"] {
        assert!(listed.iter().any(|n| n == expected), "{stdout}");
    }
    listed
}

/// A program on PATH, if installed.
fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn completion_scripts_name_every_subcommand() {
    let names = subcommands();
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, stderr) = run_cli(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {stderr}");
        for name in &names {
            assert!(script.contains(name.as_str()), "{shell} lacks {name}");
        }
        // Options of the default subcommand are offered too.
        assert!(script.contains("shutdown-timeout"), "{shell}");
    }
    let (code, _, stderr) = run_cli(&["completions", "tcsh"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("possible values: bash, zsh, fish"),
        "{stderr}"
    );
}

/// Runs `script` in a real bash after loading the completion script, and returns its stdout.
fn bash_with_completion(script: &str) -> String {
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <(\"$0\" completions bash) || exit 9\n{script}"
        ))
        .arg(binary())
        .output()
        .expect("run bash");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn bash_loads_the_completion_and_completes() {
    let registered = bash_with_completion("complete -p autohealer");
    assert!(
        registered.contains("-F _autohealer") && registered.trim_end().ends_with(" autohealer"),
        "{registered}"
    );
    // Completing `autohealer ch` offers `check`; `autohealer completions ` offers the shells.
    let complete = |words: &str, cword: usize| {
        bash_with_completion(&format!(
            "COMP_WORDS=({words}); COMP_CWORD={cword}; \
             _autohealer autohealer \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        ))
    };
    assert_eq!(complete("autohealer ch", 1).trim(), "check");
    let shells = complete("autohealer completions ''", 2);
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.lines().any(|l| l == shell), "{shells}");
    }
}

#[test]
fn zsh_and_fish_scripts_parse_where_those_shells_are_installed() {
    for (shell, check) in [("zsh", ["-n"]), ("fish", ["--no-execute"])] {
        if !installed(shell) {
            eprintln!("SKIPPED: {shell} is not installed");
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script");
        std::fs::write(&path, run_cli(&["completions", shell]).1).unwrap();
        let output = Command::new(shell).args(check).arg(&path).output().unwrap();
        assert!(output.status.success(), "{shell}: {output:?}");
    }
}

/// Renders a roff page with groff, failing on any warning, and returns its text; without groff,
/// checks the page's roff structure instead and returns the raw page.
fn render(page: &str) -> String {
    assert!(
        page.contains(".TH autohealer") || page.contains(".TH autohealer\\-"),
        "{page}"
    );
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH OPTIONS"] {
        assert!(page.contains(section), "{section} missing:\n{page}");
    }
    if !installed("groff") {
        eprintln!("SKIPPED: groff is not installed; checked the roff structure only");
        return page.to_string();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("page.1");
    std::fs::write(&path, page).unwrap();
    let output = Command::new("groff")
        // -P -cbou: plain text, without bold or underline overstrikes.
        .args(["-man", "-Tutf8", "-ww", "-P", "-cbou"])
        .arg(&path)
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "", "groff warned");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_man_page_renders_and_names_every_subcommand() {
    let (code, page, stderr) = run_cli(&["man"]);
    assert_eq!(code, 0, "{stderr}");
    let text = render(&page);
    for name in subcommands() {
        assert!(
            text.contains(&format!("autohealer-{name}(1)"))
                || text.contains(&format!("autohealer\\-{name}(1)")),
            "{name}:\n{text}"
        );
    }
}

#[test]
fn man_dir_writes_a_page_per_subcommand_with_its_options() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let (code, stdout, stderr) = run_cli(&["man", "--dir", &out]);
    assert_eq!((code, stdout.as_str()), (0, ""), "{stderr}");
    let mut names = vec!["autohealer.1".to_string()];
    names.extend(subcommands().iter().map(|n| format!("autohealer-{n}.1")));
    for name in &names {
        let page = std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        render(&page);
    }
    let run = render(&std::fs::read_to_string(dir.path().join("autohealer-run.1")).unwrap());
    for option in ["--shutdown-timeout", "AUTOHEALER_LISTEN"] {
        assert!(run.contains(option), "{option}:\n{run}");
    }

    let (code, _, stderr) = run_cli(&["man", "--dir", "/nonexistent/dir"]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("autohealer: cannot write the manual pages into /nonexistent/dir: "),
        "{stderr}"
    );
}
