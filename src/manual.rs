//! Shell completions and the `ldapsync(1)` man page, generated from the clap definitions in `cli`.
//!
//! `ldapsync completions bash|zsh|fish` and the hidden `ldapsync manpage` print them on stdout;
//! `scripts/package.sh` runs both to build the Debian package's assets, so they never drift from
//! the command line.

use std::io::Write;

use clap::{Arg, ValueEnum};
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

use crate::exit::ExitStatus;

/// The shells `ldapsync completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// The completion script for `shell`, from the command line's definition `cmd`.
pub fn completion_script(mut cmd: clap::Command, shell: CompletionShell) -> Vec<u8> {
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "ldapsync", &mut out);
    out
}

/// The exit status table of the man page (the codes are those of `cli`, `engine` and the shell).
const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success, including nothing to do."),
    (
        "1",
        "The run failed: the LDAP read (always, if it was incomplete), a sink, or the state file; \
         or a saved plan (sync --plan) no longer matches the directory or a ledger (nothing written).",
    ),
    (
        "2",
        "Usage or configuration error (the file, line and key are named on stderr).",
    ),
    (
        "3",
        "Held by a safety threshold: nothing was written to that sink (a dry run whose plan would \
         be held also exits 3). Review with sync --dry-run --save-plan FILE, then apply exactly that \
         plan with sync --plan FILE (or ldapsync approve --plan FILE for a running daemon), or run \
         sync --allow-deletes once.",
    ),
    ("4", "Some sinks succeeded and some failed."),
    (
        "130, 143",
        "Interrupted by SIGINT or SIGTERM (128 plus the signal number, as reported by the shell). \
         The daemon instead finishes the run in flight on either signal and exits 0.",
    ),
];

const FILES: &[(&str, &str)] = &[
    (
        "/etc/ldapsync/config.toml",
        "The configuration, unless --config or LDAPSYNC_CONFIG names another file.",
    ),
    (
        "/etc/ldapsync/credentials/",
        "Secrets loaded by the systemd unit with LoadCredential= into \
         /run/credentials/ldapsync.service/, where the configuration's *_file keys point.",
    ),
    (
        "/var/lib/ldapsync/state.db",
        "The SQLite state file ([state] path): ledgers, cursors and run history. A plan handed to \
         the daemon by ldapsync approve waits beside it as state.db.approved-plan.json (renamed \
         .applied or .rejected once handled).",
    ),
    (
        "/usr/share/doc/ldapsync/examples/config.toml",
        "Every configuration key, with its default.",
    ),
    (
        "/usr/share/doc/ldapsync/daemon.md",
        "Running ldapsync as a systemd service: credentials, metrics, reload, logs.",
    ),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "LDAPSYNC_CONFIG",
        "The configuration file when --config is not given (default /etc/ldapsync/config.toml).",
    ),
    (
        "RUST_LOG",
        "The log filter for stderr (default warn,ldapsync=info: ldapsync's own INFO lines, only \
         warnings from libraries), e.g. RUST_LOG=ldapsync=debug.",
    ),
];

/// The `ldapsync(1)` man page in roff, dated by `SOURCE_DATE_EPOCH` (reproducible builds; set by
/// `scripts/package.sh` to the last commit's time) or else today.
pub fn manpage(cmd: clap::Command) -> Vec<u8> {
    let date = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .unwrap_or_else(chrono::Utc::now)
        .format("%Y-%m-%d")
        .to_string();
    let man = clap_mangen::Man::new(cmd.clone())
        .title("LDAPSYNC")
        .date(date)
        .manual("ldapsync manual");
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = man.render_title(&mut out);
    let _ = man.render_name_section(&mut out);
    let _ = man.render_synopsis_section(&mut out);
    let _ = man.render_description_section(&mut out);
    let _ = man.render_options_section(&mut out);

    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut synopsis = vec![bold("ldapsync"), roman(" "), bold(sub.get_name())];
        let options: Vec<&Arg> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_positional())
            .collect();
        if !options.is_empty() {
            synopsis.push(roman(" ["));
            synopsis.push(italic("OPTIONS"));
            synopsis.push(roman("]"));
        }
        for arg in sub.get_positionals().filter(|a| !a.is_hide_set()) {
            synopsis.push(roman(" "));
            synopsis.push(italic(value_name(arg)));
        }
        roff.control("TP", []);
        roff.text(synopsis);
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            roff.text([roman(about.to_string())]);
        }
        let args: Vec<&Arg> = sub.get_arguments().filter(|a| !a.is_hide_set()).collect();
        if !args.is_empty() {
            roff.control("RS", []);
            for arg in args {
                render_arg(&mut roff, arg);
            }
            roff.control("RE", []);
        }
    }
    table(&mut roff, "EXIT STATUS", EXIT_STATUS);
    table(&mut roff, "ENVIRONMENT", ENVIRONMENT);
    table(&mut roff, "FILES", FILES);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "systemctl(1), journalctl(1), systemd.exec(5), systemd-creds(1); \
         /usr/share/doc/ldapsync/README.md",
    )]);
    let _ = roff.to_writer(&mut out);
    let _ = man.render_version_section(&mut out);
    // Each rendered piece starts with the same two-line apostrophe preamble: keep the first.
    let text = String::from_utf8_lossy(&out);
    let mut seen = std::collections::HashSet::new();
    let mut page = String::with_capacity(text.len());
    for line in text.lines() {
        let preamble = line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq");
        if preamble && !seen.insert(line.to_owned()) {
            continue;
        }
        page.push_str(line);
        page.push('\n');
    }
    page.into_bytes()
}

/// One `.TP` entry per row, under a `.SH` heading.
fn table(roff: &mut Roff, heading: &str, rows: &[(&str, &str)]) {
    roff.control("SH", [heading]);
    for (term, text) in rows {
        roff.control("TP", []);
        roff.text([bold(*term)]);
        roff.text([roman(*text)]);
    }
}

fn value_name(arg: &Arg) -> String {
    match arg.get_value_names() {
        Some(names) => names.join(" "),
        None => arg.get_id().as_str().to_uppercase(),
    }
}

/// One option or positional argument of a command: its flags, value, help, values and default.
fn render_arg(roff: &mut Roff, arg: &Arg) {
    let mut head: Vec<Inline> = Vec::new();
    if let Some(short) = arg.get_short() {
        head.push(bold(format!("-{short}")));
        head.push(roman(", "));
    }
    if let Some(long) = arg.get_long() {
        head.push(bold(format!("--{long}")));
        if arg.get_action().takes_values() {
            head.push(roman(" "));
            head.push(italic(value_name(arg)));
        }
    } else {
        head.push(italic(value_name(arg)));
    }
    roff.control("TP", []);
    roff.text(head);
    let mut body = Vec::new();
    if let Some(help) = arg.get_long_help().or_else(|| arg.get_help()) {
        body.push(roman(help.to_string()));
    }
    // Flags (`--dry-run`) take no value: their implied true/false is not worth listing.
    if arg.get_action().takes_values() {
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_owned())
            .collect();
        if !values.is_empty() {
            body.push(roman(format!(" [values: {}]", values.join(", "))));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() {
            body.push(roman(format!(" [default: {}]", defaults.join(","))));
        }
    }
    if !body.is_empty() {
        roff.text(body);
    }
}

/// Writes `bytes` to stdout; the exit code of `ldapsync completions` and `ldapsync manpage`.
pub fn print(bytes: &[u8]) -> ExitStatus {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            ExitStatus::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::CommandFactory;

    #[test]
    fn manpage_has_the_commands_and_the_reference_sections() {
        let page = String::from_utf8(manpage(Cli::command())).unwrap();
        assert_eq!(page.matches(".ds Aq").count(), 2, "{page}");
        assert!(page.contains("\n.TH LDAPSYNC 1 "), "{page}");
        for needle in [
            ".SH COMMANDS",
            ".SH \"EXIT STATUS\"",
            ".SH ENVIRONMENT",
            ".SH FILES",
            "/etc/ldapsync/config.toml",
            "/var/lib/ldapsync/state.db",
            "LDAPSYNC_CONFIG",
            "RUST_LOG",
            r"\-\-dry\-run",
            r"\-\-allow\-deletes",
            "130, 143",
        ] {
            assert!(page.contains(needle), "missing {needle:?} in:\n{page}");
        }
        for command in ["sync", "daemon", "check", "status", "completions"] {
            assert!(
                page.contains(&format!("\\fBldapsync\\fR \\fB{command}\\fR")),
                "missing command {command} in:\n{page}"
            );
        }
        assert!(!page.contains("manpage"), "the hidden command is listed");
    }

    #[test]
    fn completions_name_the_commands() {
        for shell in [
            CompletionShell::Bash,
            CompletionShell::Zsh,
            CompletionShell::Fish,
        ] {
            let script = String::from_utf8(completion_script(Cli::command(), shell)).unwrap();
            for word in ["ldapsync", "sync", "dry-run", "allow-deletes", "status"] {
                assert!(script.contains(word), "{shell:?}: missing {word:?}");
            }
        }
    }
}
